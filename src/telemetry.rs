//! Logging: pretty for a terminal, JSON for production; `RUST_LOG` overrides the filter.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber; a second call (tests start many apps) is a no-op.
pub fn init(settings: &LogSettings) {
    // `RUST_LOG=warning` reads as a target's name, and silently logged nothing at all.
    let filter = match std::env::var("RUST_LOG") {
        // Set but empty (compose's `${RUST_LOG:-}`, a chart's ""): as if unset. As a filter
        // it logged errors only, without a word, hiding every warning.
        Ok(wanted) if wanted.trim().is_empty() => EnvFilter::new(&settings.filter),
        Ok(wanted) => match crate::config::check_env_log_filter(&wanted) {
            Ok(()) => EnvFilter::new(wanted),
            Err(why) => {
                eprintln!(
                    "approvals: RUST_LOG ignored, log.filter {:?} used instead: {why}",
                    settings.filter
                );
                EnvFilter::new(&settings.filter)
            }
        },
        Err(_) => EnvFilter::new(&settings.filter),
    };
    // Colour codes only where a terminal shows them, never into files or pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
