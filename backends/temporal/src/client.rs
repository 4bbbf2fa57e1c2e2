//! The connection every Temporal client of this crate (backend, worker) starts from.

use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, Url};

use crate::settings::TemporalSettings;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
