//! The HTTP server loop: HTTP/1.1 connections with limits no client can talk its way past.
//!
//! `axum::serve` has no header-read timeout, no cap on connections and no bound on what a
//! client may buffer in the server: connections that never finish their headers pile up until
//! the process runs out of file descriptors and memory. Here every connection holds a permit
//! of `server.max_connections` (beyond it a new connection is closed at once, so the listen
//! backlog never fills), its headers must arrive within `server.header_read_timeout` (which
//! also closes keep-alive connections idle that long), and its read buffer is bounded by
//! `server.max_header_bytes`. A connection whose writes make no progress for
//! `server.write_timeout` (a client that stopped reading) is closed: hyper has no write
//! deadline, and such a client would otherwise keep its permit, and hold up a shutdown, for as
//! long as it likes. On shutdown the loop stops accepting and every connection finishes its
//! in-flight request and closes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures_util::FutureExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

use crate::config::ServerSettings;

/// Serves `app` on `listener` until `shutdown` resolves, then waits (up to `grace`) for the
/// connections to finish their in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_header_size(settings.max_header_bytes)
        .max_buf_size(settings.max_header_bytes)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused_at_capacity = false;
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, usually: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if !refused_at_capacity {
                tracing::warn!(
                    max = settings.max_connections,
                    "server.max_connections reached: closing new connections"
                );
            }
            refused_at_capacity = true;
            drop(stream);
            continue;
        };
        refused_at_capacity = false;
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        // Only writes: an idle read is a keep-alive or a long-poll, bounded by the header-read
        // and request timeouts.
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(settings.write_timeout));
        let connection = builder.serve_connection(TokioIo::new(Box::pin(stream)), service);
        // `map`, not an `async move` block: a block stores the connection twice (captured,
        // then awaited), which doubled each connection's task to 7 kB.
        let connection = graceful.watch(connection).map(move |ended| {
            // A client that vanishes or breaks the protocol ends only its own connection.
            if let Err(error) = ended {
                tracing::debug!(%error, "connection ended");
            }
            drop(permit);
        });
        tokio::spawn(connection);
    }
    drop(listener);
    graceful.shutdown().await;
}
