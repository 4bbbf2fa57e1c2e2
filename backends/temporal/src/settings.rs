//! What the Temporal backend and worker need from the service's configuration.

use std::time::Duration;

use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, Url};

/// `[temporal]` in the service's configuration, plus deadlines.
#[derive(Debug, Clone)]
pub struct TemporalSettings {
    /// The frontend's gRPC address, e.g. `http://127.0.0.1:7233`.
    pub address: String,
    pub namespace: String,
    pub task_queue: String,
    /// Deadline of every single client call (start, describe, update, one list page).
    pub call_timeout: Duration,
    /// Deadline of a call that walks a visibility query to its end (`list`, `audit`,
    /// `pending_stats`): they read every matching execution (see DESIGN.md).
    pub scan_timeout: Duration,
    /// Worker only: how long a task for a workflow cached by a dead worker waits before another
    /// worker may take it (the SDK's default is 10 s).
    pub sticky_queue_timeout: Duration,
    /// Shown in the Temporal UI and history as the caller.
    pub identity: String,
    /// Merge this process's own recent writes into visibility results (list, audit, stats,
    /// scan), which the server updates asynchronously. See `recent.rs` and DESIGN.md.
    pub read_your_writes: bool,
}

impl TemporalSettings {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            namespace: "default".into(),
            task_queue: "approvals".into(),
            call_timeout: Duration::from_secs(5),
            scan_timeout: Duration::from_secs(30),
            sticky_queue_timeout: Duration::from_secs(10),
            identity: format!("approvals@{}", std::process::id()),
            read_your_writes: true,
        }
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects a namespace-bound client. Must run on the tokio runtime that will use it (the
/// connection's background tasks live there).
pub(crate) async fn connect(settings: &TemporalSettings) -> Result<Client, BoxError> {
    let url = Url::parse(&settings.address)?;
    let options = ConnectionOptions::new(url)
        .identity(settings.identity.clone())
        .connect_timeout(settings.call_timeout)
        .build();
    let connection = tokio::time::timeout(settings.call_timeout, Connection::connect(options))
        .await
        .map_err(|_| format!("connecting to {} timed out", settings.address))??;
    Ok(Client::new(
        connection,
        ClientOptions::new(settings.namespace.clone()).build(),
    )?)
}
