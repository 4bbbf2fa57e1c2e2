//! `approvals dev`: the newcomer's first command.
//!
//! Starts a `redis-server` child on a free port with its data (AOF) in a local folder, mints
//! an agent, a reviewer and an admin token for a demo tenant, prints them with copy-paste curl
//! commands, and serves until ctrl-c, stopping the child.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;

use crate::auth::{self, Role};
use crate::config::Settings;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Folder for the dev Redis data.
    #[arg(long, default_value = ".approvals-dev")]
    data_dir: PathBuf,
    /// The demo tenant.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Policy folder.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

pub async fn run(args: DevArgs) -> ExitCode {
    let mut settings = Settings::default();
    settings.log.filter = "info,approvals=info".into();
    crate::telemetry::init(&settings.log);
    if let Err(error) = std::fs::create_dir_all(&args.data_dir) {
        eprintln!(
            "approvals dev: cannot create {}: {error}",
            args.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(error) => {
            eprintln!("approvals dev: no free port: {error}");
            return ExitCode::FAILURE;
        }
    };
    let data_dir = std::fs::canonicalize(&args.data_dir).unwrap_or(args.data_dir.clone());
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--loglevel", "warning"])
        .arg("--dir")
        .arg(&data_dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "approvals dev: redis-server is not installed; install it with \
                 `sudo apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)"
            );
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("approvals dev: cannot start redis-server: {error}");
            return ExitCode::FAILURE;
        }
    };
    settings.redis.url = format!("redis://127.0.0.1:{port}/0");
    settings.server.listen = args.listen;
    settings.policy.dir = args.policies.clone();
    let tenant = args.tenant.as_str();
    let (agent, agent_entry) = auth::mint(tenant, Role::Agent, "demo-agent");
    let (reviewer, reviewer_entry) = auth::mint(tenant, Role::Reviewer, "demo-reviewer");
    let (admin, admin_entry) = auth::mint(tenant, Role::Admin, "demo-admin");
    settings.auth.tokens = vec![agent_entry, reviewer_entry, admin_entry];
    if let Err(reason) = settings.auth.tokens.iter().try_for_each(|t| t.validate()) {
        eprintln!("approvals dev: --tenant: {reason}");
        return ExitCode::from(2);
    }
    wait_for_redis(&settings.redis.url).await;

    let base = format!("http://{}", args.listen);
    println!(
        "\napprovals dev: redis-server on port {port} (data in {dir}), API on {base}\n\n\
         tokens for tenant {tenant:?} (new on every start; paste these into another shell):\n\n  \
         export AGENT={agent}\n  export REVIEWER={reviewer}\n  export ADMIN={admin}\n\n\
         then submit, list and accept:\n\n  \
         curl -s -X POST {base}/v1/tenants/{tenant}/approvals -H \"Authorization: Bearer $AGENT\" \\\n    \
         -H 'content-type: application/json' \\\n    \
         -d '{{\"request_id\":\"req-1\",\"action\":{{\"type\":\"document_read\",\"resource\":\"finance/q3-report\"}}}}'\n\n  \
         curl -s {base}/v1/tenants/{tenant}/approvals -H \"Authorization: Bearer $REVIEWER\"\n\n  \
         curl -s -X POST {base}/v1/tenants/{tenant}/approvals/req-1/accept -H \"Authorization: Bearer $REVIEWER\" \\\n    \
         -H 'content-type: application/json' -d '{{\"reason\":\"looks fine\"}}'\n\n\
         ctrl-c stops the service and redis-server.\n",
        dir = data_dir.display(),
    );
    let code = super::run_app(settings).await;
    let _ = child.kill().await;
    code
}

/// redis-server takes a moment to listen; the service would cope, but the first curl
/// should not meet a 503.
async fn wait_for_redis(url: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    for _ in 0..100 {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
