//! Real services for tests, each on a free port of its own and stopped when dropped.
//!
//! Tests never share a server they mutate, so they run in parallel; no mocks stand in for
//! Redis or Temporal. [`temporal_server`] only manages the `temporal` dev server process: it
//! does not depend on the Temporal SDK, so Redis-only builds of the tests stay light.
//! [`process`] runs the service's own binary as a child process (log lines, signals, drain).

mod redis_server;

pub use redis_server::RedisServer;
pub mod alertmanager_server;
pub mod process;
pub mod prometheus_server;
pub mod temporal_server;

use std::net::TcpListener;

/// A port nobody listens on right now. The OS may hand it out again before the caller binds
/// it, so servers started on it retry on a bind failure.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A tool the tests run: `$<env_var>`, else `.tools/bin/<name>` in the workspace (or an
/// ancestor of it; `scripts/test.sh` installs them there), else `<name>` on PATH.
pub fn tool(env_var: &str, name: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return path.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join(".tools/bin").join(name))
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| name.into())
}
