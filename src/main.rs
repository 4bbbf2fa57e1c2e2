//! `approvals`: one binary for the service and its operator commands (see `cli`).

use std::process::ExitCode;

use clap::Parser;

// The request path allocates many small, short-lived objects across threads (JSON values,
// policy inputs, headers); mimalloc measured faster than glibc's malloc for that here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
    // a stdout nobody reads (a stalled log shipper), or an upload's validation still running,
    // kept a drained service from exiting until it was killed.
    runtime.shutdown_timeout(EXIT_GRACE);
    code
}

/// How long blocking work still running after the command ended may hold up the exit.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
