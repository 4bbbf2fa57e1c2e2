//! `approvals`: one binary for the service and its operator commands (see `cli`).

use std::process::ExitCode;

use clap::Parser;

// The request path allocates many small, short-lived objects across threads (JSON values,
// policy inputs, headers); mimalloc measured faster than glibc's malloc for that here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    approvals::cli::Cli::parse().run().await
}
