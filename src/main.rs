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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime cannot start")
        .block_on(cli.run())
}
