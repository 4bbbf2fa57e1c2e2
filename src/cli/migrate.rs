//! `approvals migrate --from redis --to temporal` (and back, for a rollback): builds both
//! engines from one configuration file and runs a [`Migration`] between them, with a progress
//! bar on a terminal or a log line every few seconds otherwise, then prints the reconciliation
//! report. Exit 0: both sides hold the same records; 1: differences remain (listed by id) or a
//! backend failed; 2: unusable configuration.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use approvals_core::{BackendError, TenantId};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{EngineKind, CONFIG_VAR};
use crate::engines::{self, EngineError};
use crate::migration::{Migration, Plan};

use super::EXIT_CONFIG;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// TOML configuration file (both engines' sections are read).
    #[arg(long, env = CONFIG_VAR)]
    config: Option<PathBuf>,
    /// The engine to read from.
    #[arg(long, value_enum)]
    from: EngineKind,
    /// The engine to write to.
    #[arg(long, value_enum)]
    to: EngineKind,
    /// Only this tenant (repeatable); every tenant when absent.
    #[arg(long = "tenant", value_name = "TENANT")]
    tenants: Vec<String>,
    /// Approvals in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Read both sides and report what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: MigrateArgs) -> ExitCode {
    let mut settings = match super::load_settings(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&settings.log);
    settings.warn_of_overridden_file_keys();
    // The copy reads records back by id and scans visibility, never its own listings: the
    // remembered-writes overlay would only hold every imported record in memory (30 s' worth,
    // tens of thousands at import speed) and be searched on every write.
    settings.temporal.read_your_writes = false;
    if args.from == args.to {
        return config_error("--from and --to name the same engine: nothing to migrate");
    }
    let tenants = match parse_tenants(&args.tenants) {
        Ok(tenants) => tenants,
        Err(error) => return config_error(error),
    };
    let plan = Plan {
        tenants,
        concurrency: usize::from(args.concurrency),
        dry_run: args.dry_run,
        // Whatever `backend.kind` (a dual soak, or one engine): the engine that answers.
        target_answers: settings.backend.answering() == args.to,
    };
    // Which stores it reaches: run where the service's file and environment are not (a host
    // outside the stack), it reaches the defaults on localhost, and says so here, before a
    // connect that fails there.
    tracing::info!(from = ?args.from, to = ?args.to, ?plan,
        redis = %without_credentials(&settings.redis.url),
        temporal = %settings.temporal.address, namespace = %settings.temporal.namespace,
        "migration started");
    let (source, target) = match (
        engines::connect(args.from, &settings).await,
        engines::connect(args.to, &settings).await,
    ) {
        (Ok(source), Ok(target)) => (source, target),
        (Err(error), _) | (_, Err(error)) => return connect_failed(&error),
    };
    let progress = progress_bar();
    let logger = (progress.is_hidden()).then(|| tokio::spawn(log_progress(progress.clone())));
    let result = Migration::new(source, target, plan, progress.clone())
        .run()
        .await;
    progress.finish_and_clear();
    if let Some(logger) = logger {
        logger.abort();
    }
    let report = result;
    if let Some(error) = &report.stopped_by {
        tracing::error!(%error, "migration stopped");
        eprintln!(
            "approvals: migration stopped: {error}\n\
             it is safe to run the same command again: records already copied are skipped"
        );
    }
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => eprintln!("approvals: {error}"),
        }
    } else {
        print!("{report}");
    }
    tracing::info!(
        imported = report.imported,
        already_present = report.already_present,
        differences = report.differences_total,
        failed = report.failed.len(),
        stopped_early = report.stopped_early,
        "migration finished"
    );
    // A dry run reports the differences a real run would remove: that is its purpose. Records
    // it could not read are another matter: a dry run against a target that is down, or over
    // values no run can copy (they need a person), must not pass as a pre-flight check.
    let dry_run_done = report.dry_run
        && report.failed.is_empty()
        && !report.stopped_early
        && report.unreadable.source.is_empty()
        && report.unreadable.target.is_empty();
    if report.is_reconciled() || dry_run_done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse_tenants(names: &[String]) -> Result<BTreeSet<TenantId>, String> {
    names
        .iter()
        .map(|name| TenantId::parse(name).map_err(|e| format!("--tenant {name:?}: {e}")))
        .collect()
}

/// A backend that does not answer now is a failure to retry (1), as the cutover runbook's
/// re-run loop expects; what no retry mends (an engine this build lacks, an evicting Redis) is
/// configuration (2).
fn connect_failed(error: &EngineError) -> ExitCode {
    match error {
        EngineError::Connect {
            source: BackendError::Unavailable { .. } | BackendError::Timeout(_),
            ..
        } => {
            eprintln!("approvals: {}", crate::app::chain(error));
            ExitCode::FAILURE
        }
        _ => config_error(crate::app::chain(error)),
    }
}

fn config_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("approvals: {error}");
    ExitCode::from(EXIT_CONFIG)
}

/// A spinner with counts on a terminal; hidden (log lines instead) when stderr is a pipe.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}: {pos} approvals ({per_sec})")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

async fn log_progress(progress: ProgressBar) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.tick().await;
    loop {
        every.tick().await;
        tracing::info!(
            phase = %progress.message(),
            approvals = progress.position(),
            "migration progress"
        );
    }
}

/// `redis://user:secret@host:6379/0` as `redis://host:6379/0`: where it points, for a log line,
/// without the password. (The Redis client parsed it to connect, so it parses here too.)
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            // A `unix://` URL carries its credentials in the query (`?db=0&pass=…`).
            parsed.set_query(None);
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

#[cfg(test)]
mod credential_tests {
    use super::without_credentials;

    #[test]
    fn a_logged_store_address_keeps_no_password() {
        assert_eq!(
            without_credentials("redis://approvals:s3cr@t@redis:6379/0"),
            "redis://redis:6379/0"
        );
        assert_eq!(
            without_credentials("rediss://redis:6380/1"),
            "rediss://redis:6380/1"
        );
        assert_eq!(
            without_credentials("unix:///run/redis.sock?db=0&user=a&pass=hunter2"),
            "unix:///run/redis.sock"
        );
    }
}
