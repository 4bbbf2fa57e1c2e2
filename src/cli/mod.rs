//! The `approvals` command line: `serve`, `worker`, `healthcheck`, `migrate`, `token new`,
//! `dev`, `policy`.

mod dev;
mod healthcheck;
mod migrate;
mod policy;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::auth::{self, Role};
use crate::config::{LogFormat, Settings, CONFIG_VAR};
use crate::startup::{shutdown_signal, Application};

/// Exit status for unusable configuration (the operating contract).
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "approvals",
    version,
    about = "Policy-gated human approvals for AI agents"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API, the expiry sweeper and the metrics.
    Serve {
        /// TOML configuration file.
        #[arg(long, env = CONFIG_VAR)]
        config: Option<PathBuf>,
    },
    /// Run the Temporal worker (needs a build with `--features temporal`): polls
    /// `temporal.task_queue`, drains on SIGTERM, serves /healthz, /readyz, /metrics on
    /// `worker.listen`.
    Worker {
        /// TOML configuration file.
        #[arg(long, env = CONFIG_VAR)]
        config: Option<PathBuf>,
    },
    /// Exit 0 when this instance's `/readyz` (where the configuration says it listens)
    /// answers 200: a container HEALTHCHECK that follows `server.listen` or `worker.listen`.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Copy every approval from one engine to the other (`--from redis --to temporal`, or
    /// back for a rollback), then reconcile both sides and report every difference by id.
    Migrate(migrate::MigrateArgs),
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Try it out: a local redis-server, demo tokens, and the API on localhost.
    Dev(dev::DevArgs),
    /// Test, evaluate and publish policy bundles.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// The service's own child: evaluates tenants' bundles under a memory limit, reading
    /// requests on standard input (ADR-0019).
    #[command(hide = true)]
    PolicySandbox {
        /// Address-space limit, in bytes.
        #[arg(long)]
        memory_limit: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a fresh token; prints it once and the config entry holding only its digest (add
    /// the entry under the config's `[[auth.tokens]]`; the service never stores the token).
    New {
        /// The tenant the token may act for, e.g. `acme`; `*` for a platform admin (role
        /// `admin` only), who may act for every tenant.
        #[arg(long)]
        tenant: String,
        /// What the token may do: `agent` submits and reads its approvals, `reviewer` lists
        /// and decides, `admin` also reads the audit and manages the tenant's policy.
        #[arg(long, value_enum)]
        role: Role,
        /// Who holds it (a person or an agent's name): recorded as `submitted_by` or
        /// `decided_by` and in the audit, and a reviewer may not decide what the same
        /// subject submitted.
        #[arg(long)]
        subject: String,
        /// Print one JSON object (`token`, `subject`, `tenant`, `role`, `sha256`) instead of
        /// text, for scripts.
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    pub async fn run(self) -> ExitCode {
        match self.command {
            Command::Serve { config } => serve(config).await,
            Command::Worker { config } => worker(config).await,
            Command::Token {
                command:
                    TokenCommand::New {
                        tenant,
                        role,
                        subject,
                        json,
                    },
            } => token_new(&tenant, role, &subject, json),
            Command::Healthcheck(args) => healthcheck::run(args).await,
            Command::Migrate(args) => migrate::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Policy { command } => policy::run(command).await,
            Command::PolicySandbox { memory_limit } => crate::policy::sandbox::serve(memory_limit),
        }
    }

    /// Runs the commands that need no async runtime (the policy sandbox: a small child, whose
    /// memory limit the runtime's threads would count against), or gives the CLI back.
    pub fn run_without_runtime(self) -> Result<ExitCode, Self> {
        match self.command {
            Command::PolicySandbox { memory_limit } => {
                Ok(crate::policy::sandbox::serve(memory_limit))
            }
            _ => Err(self),
        }
    }
}

/// The configuration, or exit status 2 with the reason on standard error.
fn load_settings(config: Option<&std::path::Path>) -> Result<Settings, ExitCode> {
    Settings::load(config).map_err(|error| {
        eprintln!("approvals: {}", crate::app::chain(&error));
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn serve(config: Option<PathBuf>) -> ExitCode {
    let settings = match load_settings(config.as_deref()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&settings.log);
    settings.warn_of_overridden_file_keys();
    run_app(settings).await
}

/// `approvals worker`: runs on this (the main) task, since the worker's future is `!Send`.
#[cfg(feature = "temporal")]
async fn worker(config: Option<PathBuf>) -> ExitCode {
    let settings = match load_settings(config.as_deref()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&settings.log);
    settings.warn_of_overridden_file_keys();
    match crate::worker::run(&settings, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let at_startup = error.at_startup();
            let error = crate::app::chain(&error);
            tracing::error!(%error, "worker stopped");
            eprintln!("approvals: {error}");
            if at_startup {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(not(feature = "temporal"))]
async fn worker(_config: Option<PathBuf>) -> ExitCode {
    eprintln!(
        "approvals: `approvals worker` runs the Temporal worker: {}",
        crate::engines::TEMPORAL_NOT_BUILT
    );
    ExitCode::from(EXIT_CONFIG)
}

/// Builds and serves until SIGTERM or ctrl-c.
async fn run_app(settings: Settings) -> ExitCode {
    // Said once: as a log line where logs are collected (JSON), as a sentence for a person.
    let json_logs = settings.log.format == LogFormat::Json;
    // Before the build, which may take a while (a Temporal connect, the first policy read): a
    // SIGTERM meanwhile then stops the instance once built, instead of killing it outright.
    let signalled = shutdown_signal();
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(error) => {
            let error = crate::app::chain(&error);
            if json_logs {
                tracing::error!(%error, "cannot start");
            } else {
                eprintln!("approvals: {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match app.run_until(signalled).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("approvals: {error}");
            ExitCode::FAILURE
        }
    }
}

fn token_new(tenant: &str, role: Role, subject: &str, json: bool) -> ExitCode {
    let (token, entry) = auth::mint(tenant, role, subject);
    if let Err(reason) = entry.validate() {
        eprintln!("approvals: {reason}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if json {
        let minted = serde_json::json!({
            "token": token,
            "subject": entry.subject,
            "tenant": entry.tenant,
            "role": entry.role.as_str(),
            "sha256": entry.sha256,
        });
        println!("{minted}");
        return ExitCode::SUCCESS;
    }
    println!("token (shown once; give it to {subject}):\n  {token}\n");
    println!("config entry (add to your config file):\n");
    println!("{}", token_toml(&entry));
    ExitCode::SUCCESS
}

/// The entry as TOML, its strings quoted by the `toml` crate: Rust's `{:?}` writes some
/// characters (combining marks, variation selectors, DEL) as `\u{…}`, which TOML refuses, and a
/// pasted entry for `José` (decomposed) stopped the service at start-up.
fn token_toml(entry: &auth::TokenEntry) -> String {
    let quoted = |text: &str| toml::Value::String(text.to_owned()).to_string();
    format!(
        "[[auth.tokens]]\nsubject = {}\ntenant = {}\nrole = {}\nsha256 = {}\n",
        quoted(&entry.subject),
        quoted(&entry.tenant),
        quoted(entry.role.as_str()),
        quoted(&entry.sha256)
    )
}
