//! `approvals dev`: the newcomer's first command.
//!
//! Starts a `redis-server` child on a free port with its data (AOF) in a local folder, mints
//! an agent, a reviewer and an admin token for a demo tenant, prints them with copy-paste curl
//! commands, and serves until ctrl-c, stopping the child.
//!
//! The data folder keeps the tokens beside the data (`demo-tokens.json`), so a restart serves
//! the same demo with the same tokens; deleting the folder starts clean. One `approvals dev` at
//! a time holds the folder (two redis-servers appending to one AOF would corrupt it), and its
//! redis-server dies with it however it ends, `kill -9` included, so none is left holding it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::auth::{self, Role, TokenEntry};
use crate::config::Settings;

/// The policy the service ships, for `approvals dev` run outside a checkout.
const BUNDLED_POLICY: [(&str, &str); 2] = [
    (
        "approvals.rego",
        include_str!("../../policies/approvals.rego"),
    ),
    (
        "approvals_test.rego",
        include_str!("../../policies/approvals_test.rego"),
    ),
];

/// Where the demo's tokens are kept, inside the data folder.
const TOKENS_FILE: &str = "demo-tokens.json";

/// Locked (`flock`) by the `approvals dev` using the data folder, for as long as it runs; the
/// kernel lets go of it when the process ends, however it ends.
const LOCK_FILE: &str = "dev.lock";

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Folder for the dev Redis data and the demo tokens (kept across restarts; delete the
    /// folder to start clean).
    #[arg(long, default_value = ".approvals-dev")]
    data_dir: PathBuf,
    /// The demo tenant.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Policy folder (`.rego` files defining `data.approvals.decision`). Default: `./policies`
    /// when it exists (a checkout), else the bundled default policy.
    #[arg(long)]
    policies: Option<PathBuf>,
}

/// The demo tokens as kept in the data folder: plain text, like the printed exports, for a
/// local demo only (the file is readable by its owner alone).
#[derive(Serialize, Deserialize)]
struct DemoTokens {
    tenant: String,
    agent: String,
    reviewer: String,
    admin: String,
    /// Signs inbox sessions, kept so that they survive a restart of the demo. Random: derived
    /// from the admin token, it could be computed from the token digest every session cookie
    /// carries, and cookies for anyone minted with it. (A file from before it existed gets
    /// one at its next start.)
    #[serde(default = "random_secret")]
    session_secret: String,
}

fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl DemoTokens {
    fn mint(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            agent: auth::mint(tenant, Role::Agent, "demo-agent").0,
            reviewer: auth::mint(tenant, Role::Reviewer, "demo-reviewer").0,
            admin: auth::mint(tenant, Role::Admin, "demo-admin").0,
            session_secret: random_secret(),
        }
    }

    /// The tokens of an earlier start for the same tenant, if the folder has them.
    fn kept(data_dir: &Path, tenant: &str) -> Option<Self> {
        let text = std::fs::read_to_string(data_dir.join(TOKENS_FILE)).ok()?;
        serde_json::from_str::<Self>(&text)
            .ok()
            .filter(|t| t.tenant == tenant)
    }

    fn keep(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = data_dir.join(TOKENS_FILE);
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let mut file = std::fs::OpenOptions::new();
        file.write(true).create(true).truncate(true);
        // Created readable by its owner alone, not made so after the tokens are in it.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
        std::io::Write::write_all(&mut file.open(&path)?, text.as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    fn entries(&self) -> Vec<TokenEntry> {
        [
            (&self.agent, Role::Agent, "demo-agent"),
            (&self.reviewer, Role::Reviewer, "demo-reviewer"),
            (&self.admin, Role::Admin, "demo-admin"),
        ]
        .into_iter()
        .map(|(token, role, subject)| TokenEntry {
            subject: subject.to_owned(),
            tenant: self.tenant.clone(),
            role,
            sha256: auth::digest_hex(token),
        })
        .collect()
    }
}

/// The policy folder to serve: the one asked for, `./policies` in a checkout, or the bundled
/// default written into the data folder.
fn policy_dir(asked: Option<&Path>, data_dir: &Path) -> Result<(PathBuf, &'static str), String> {
    let has_rego = |dir: &Path| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "rego"))
        })
    };
    if let Some(dir) = asked {
        return if has_rego(dir) {
            Ok((dir.to_path_buf(), "--policies"))
        } else {
            Err(format!(
                "--policies {}: no .rego files there; pass a folder of Rego files that define \
                 data.approvals.decision, or leave --policies out for the bundled default",
                dir.display()
            ))
        };
    }
    let checkout = Path::new("policies");
    if has_rego(checkout) {
        return Ok((checkout.to_path_buf(), "./policies"));
    }
    let bundled = data_dir.join("policies");
    std::fs::create_dir_all(&bundled).map_err(|e| format!("{}: {e}", bundled.display()))?;
    for (name, text) in BUNDLED_POLICY {
        let path = bundled.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok((bundled, "the bundled default"))
}

/// Holds the data folder for this process, or says who holds it. The lock file keeps the
/// holder's pid for that message; the lock itself, not the file, is what counts.
fn hold_data_dir(data_dir: &Path) -> Result<Flock<File>, String> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(format!(
                "{} is in use by another approvals dev (pid {}); stop that one, or pass \
                 another folder with --data-dir",
                data_dir.display(),
                holder.trim()
            ));
        }
        Err((_, errno)) => return Err(format!("cannot lock {}: {errno}", path.display())),
    };
    let _ = held.set_len(0);
    let _ = write!(held, "{}", std::process::id());
    Ok(held)
}

/// Fails before anything starts or is printed when the API's address is taken.
fn check_listen(addr: SocketAddr) -> Result<(), String> {
    TcpListener::bind(addr).map(drop).map_err(|error| {
        format!("cannot listen on {addr}: {error}; pass another with --listen 127.0.0.1:PORT")
    })
}

pub async fn run(args: DevArgs) -> ExitCode {
    let mut settings = Settings::default();
    settings.log.filter = "info,approvals=info".into();
    crate::telemetry::init(&settings.log);
    settings.warn_of_overridden_file_keys();
    if let Err(reason) = check_listen(args.listen) {
        eprintln!("approvals dev: {reason}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = std::fs::create_dir_all(&args.data_dir) {
        eprintln!(
            "approvals dev: cannot create {}: {error}",
            args.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    // Held until this function returns, after the redis-server child is gone.
    let _data_dir_held = match hold_data_dir(&args.data_dir) {
        Ok(held) => held,
        Err(reason) => {
            eprintln!("approvals dev: {reason}");
            return ExitCode::FAILURE;
        }
    };
    let (policies, policy_origin) = match policy_dir(args.policies.as_deref(), &args.data_dir) {
        Ok(found) => found,
        Err(reason) => {
            eprintln!("approvals dev: {reason}");
            return ExitCode::from(2);
        }
    };
    let tenant = args.tenant.as_str();
    let (tokens, tokens_origin) = match DemoTokens::kept(&args.data_dir, tenant) {
        Some(tokens) => (tokens, "kept from the last start"),
        None => (DemoTokens::mint(tenant), "new"),
    };
    settings.auth.tokens = tokens.entries();
    if let Err(reason) = settings.auth.tokens.iter().try_for_each(|t| t.validate()) {
        eprintln!("approvals dev: --tenant: {reason}");
        return ExitCode::from(2);
    }
    if let Err(error) = tokens.keep(&args.data_dir) {
        eprintln!(
            "approvals dev: cannot keep the tokens in {}: {error}",
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
    let mut redis = tokio::process::Command::new("redis-server");
    redis
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
        // Its own words, where a failed start can quote them (to stdout they went nowhere).
        .arg("--logfile")
        .arg(data_dir.join(REDIS_LOG))
        .stdout(Stdio::null())
        .kill_on_drop(true);
    // A group of its own: a ctrl-c in the terminal goes to the whole foreground group, and
    // redis-server stopped at once while the service was still draining requests against it.
    // It is stopped after the service instead (`stop_redis`). Linux only, where it dies with
    // this process however that ends: elsewhere the terminal's signal is what stops it when
    // this process dies unhandled (a ctrl-c before the service starts, a closed terminal).
    #[cfg(target_os = "linux")]
    std::os::unix::process::CommandExt::process_group(redis.as_std_mut(), 0);
    crate::children::die_with_this_process(redis.as_std_mut());
    // The log is kept across starts: a failed start quotes only what this one wrote.
    let log = data_dir.join(REDIS_LOG);
    let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
    let child = redis.spawn();
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
    settings.policy.dir = policies.clone();
    // Inbox sessions survive a restart of the demo: their key is kept with the tokens.
    settings.ui.session_secret = Some(tokens.session_secret.clone());
    if let Err(reason) = wait_for_redis(&settings.redis.url, &mut child).await {
        // Its own last words say why, e.g. a kept AOF it cannot load.
        let said = std::fs::read(&log).unwrap_or_default();
        let said = String::from_utf8_lossy(said.get(log_start as usize..).unwrap_or_default());
        let last: Vec<&str> = said
            .lines()
            .filter(|line| !line.trim().is_empty())
            .rev()
            .take(5)
            .collect();
        eprintln!(
            "approvals dev: {reason}; its data is in {}; the end of {}:",
            data_dir.display(),
            log.display()
        );
        for line in last.iter().rev() {
            eprintln!("  {line}");
        }
        let _ = child.kill().await;
        return ExitCode::FAILURE;
    }

    let base = format!("http://{}", args.listen);
    println!(
        "\napprovals dev: redis-server on port {port} (data in {dir}), API on {base}, \
         policy from {policy_origin} ({policy_dir})\n\n\
         tokens for tenant {tenant:?}, {tokens_origin} (kept with the data; delete {dir} to \
         start clean). Paste these into another shell:\n\n  \
         export AGENT={agent}\n  export REVIEWER={reviewer}\n  export ADMIN={admin}\n\n\
         then submit, list and accept:\n\n  \
         curl -s -X POST {base}/v1/tenants/{tenant}/approvals -H \"Authorization: Bearer $AGENT\" \\\n    \
         -H 'content-type: application/json' \\\n    \
         -d '{{\"request_id\":\"req-1\",\"action\":{{\"type\":\"document_read\",\"resource\":\"finance/q3-report\"}}}}'\n\n  \
         curl -s {base}/v1/tenants/{tenant}/approvals -H \"Authorization: Bearer $REVIEWER\"\n\n  \
         curl -s -X POST {base}/v1/tenants/{tenant}/approvals/req-1/accept -H \"Authorization: Bearer $REVIEWER\" \\\n    \
         -H 'content-type: application/json' -d '{{\"reason\":\"looks fine\"}}'\n\n\
         or decide in the reviewers' inbox: open {base}/ui/ and sign in with the REVIEWER token.\n\n\
         ctrl-c stops the service and redis-server.\n",
        dir = data_dir.display(),
        policy_dir = policies.display(),
        agent = tokens.agent,
        reviewer = tokens.reviewer,
        admin = tokens.admin,
    );
    let code = super::run_app(settings).await;
    stop_redis(&mut child).await;
    code
}

/// redis-server's log, in the data folder.
const REDIS_LOG: &str = "redis.log";

/// Asks redis-server to shut down as it should (SIGTERM: it finishes the AOF's last write and
/// ends a rewrite in progress, leaving no temporary files), and kills it after 5 s.
async fn stop_redis(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let asked = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        if asked.is_ok()
            && tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Whether the redis-server that answered is `child`: another one that took the port between
/// its pick and the child's start (another `approvals dev`, a test suite's servers) answered
/// PING as well, and the demo ran on a stranger's data, without its kept AOF.
async fn its_own(
    conn: &mut redis::aio::MultiplexedConnection,
    child: &tokio::process::Child,
) -> Result<(), String> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .map_err(|e| format!("redis-server answered PING but not INFO: {e}"))?;
    let answered = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse::<u32>().ok());
    match (answered, child.id()) {
        (Some(answered), Some(ours)) if answered == ours => Ok(()),
        (answered, _) => Err(format!(
            "another redis-server (pid {}) answered on the port picked for this one: it was \
             taken in between; start again",
            answered.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string())
        )),
    }
}

/// redis-server takes a moment to listen; the service would cope, but the first curl
/// should not meet a 503. A redis-server that exits or never answers (a kept AOF it cannot
/// load, a port taken in between) is an error: the demo would answer 503 to everything.
async fn wait_for_redis(url: &str, child: &mut tokio::process::Child) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis url {url}: {e}"))?;
    // Five seconds to answer at all; while it answers LOADING (replaying a large kept AOF) it
    // is given as long as it takes.
    let mut unanswered = 0;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server stopped at start ({status})"));
        }
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            match redis::cmd("PING").query_async::<String>(&mut conn).await {
                Ok(_) => return its_own(&mut conn, child).await,
                Err(e) if e.code() == Some("LOADING") => unanswered = 0,
                Err(_) => unanswered += 1,
            }
        } else {
            unanswered += 1;
        }
        if unanswered >= 100 {
            return Err("redis-server did not answer within 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A redis-server already on the port picked (taken in between) is not taken for the
    /// demo's own.
    #[tokio::test]
    async fn another_redis_server_on_the_port_is_not_taken_for_ours() {
        let stranger = approvals_testkit::RedisServer::start().await;
        let mut ours = tokio::process::Command::new("sleep")
            .arg("5")
            .kill_on_drop(true)
            .spawn()
            .expect("a child");
        let error = wait_for_redis(&stranger.url(), &mut ours)
            .await
            .expect_err("a stranger");
        assert!(error.contains("another redis-server"), "{error}");
    }
}
