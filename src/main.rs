//! `approvals`: one binary for the service and its operator commands (see `cli`).

use std::process::ExitCode;

use clap::Parser;

// The request path allocates many small, short-lived objects across threads (JSON values,
// policy inputs, headers); mimalloc measured faster than glibc's malloc for that here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // An empty APPROVALS_CONFIG (compose's `${APPROVALS_CONFIG:-}`, a chart's "") means no
    // file, as an empty variable means unset everywhere else; clap stopped every command
    // asking for a `--config` value the operator never passed. Still one thread here.
    if std::env::var_os(approvals::config::CONFIG_VAR).is_some_and(|v| v.is_empty()) {
        std::env::remove_var(approvals::config::CONFIG_VAR);
    }
    let cli = match approvals::cli::Cli::parse().run_without_runtime() {
        Ok(code) => return code,
        Err(cli) => cli,
    };
    // Start-up: without a runtime nothing can run.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime cannot start");
    let code = runtime.block_on(cli.run());
    // Dropping a runtime waits for its blocking tasks without limit: a decision-log write to
    // a stdout nobody reads (a stalled log shipper) kept a drained service from exiting until
    // it was killed. (Validations and compiles run on threads of their own, not waited for.)
    runtime.shutdown_timeout(EXIT_GRACE);
    code
}

/// How long blocking work still running after the command ended may hold up the exit.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
