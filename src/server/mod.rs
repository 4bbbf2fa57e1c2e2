//! The HTTP server loop: HTTP/1.1 and HTTP/2 connections with limits no client can talk its
//! way past.
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
//!
//! HTTP/2 is spoken with prior knowledge (h2c: there is no TLS here to negotiate it), so that a
//! proxy or an agent fleet's client can multiplex many long-polls on one connection: an HTTP/1
//! connection carries one request at a time and costs hyper two 8 kB buffers, however idle.
//! The protocol is told from the connection's first bytes, within the header-read timeout. An
//! HTTP/2 connection carries at most `server.max_streams_per_connection` requests at once, and
//! its client must answer a ping after half the header-read timeout of silence within the other
//! half (a stalled handshake does not, and is closed). One with no request in flight for the
//! header-read timeout is closed as an idle HTTP/1 keep-alive is (`activity`); one holding an
//! answer past its end that it cannot send (a live event stream whose client grants no window)
//! is closed `server.write_timeout` later (`due`).

mod activity;
mod closing;
mod due;

pub(crate) use activity::holding;
pub(crate) use due::EndsWhen;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::future::RouteFuture;
use axum::Router;
use futures_util::future::{self, Either};
use futures_util::{FutureExt, TryFutureExt};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::MapFuture;

use crate::config::ServerSettings;
use activity::Activity;
use closing::Closing;

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The two protocols' connection settings, shared by every connection.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Also how long a new connection has to show which protocol it speaks.
    header_read_timeout: Duration,
    write_timeout: Duration,
}

impl Protocols {
    fn new(settings: &ServerSettings) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_header_size(settings.max_header_bytes)
            .max_buf_size(settings.max_header_bytes)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.max_streams_per_connection)
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            // A ping after half the header-read timeout of silence, to be answered within the
            // other half, or the connection is closed: a stalled handshake too, while a live
            // client keeps its connection however long its long-polls wait.
            .keep_alive_interval(settings.header_read_timeout / 2)
            .keep_alive_timeout(settings.header_read_timeout / 2);
        Self {
            http1,
            http2,
            header_read_timeout: settings.header_read_timeout,
            write_timeout: settings.write_timeout,
        }
    }

    /// Serves one connection until it ends (or, after `stopping`, its in-flight requests do).
    fn serve(
        self: &Arc<Self>,
        stream: TcpStream,
        app: Router,
        stopping: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let protocols = Arc::clone(self);
        // Combinators, not an `async move` block: a block stores the connection twice
        // (captured, then awaited), which doubled each connection's task to 7 kB.
        first_bytes(stream, self.header_read_timeout, stopping.clone()).then(move |found| {
            let Some((stream, speaks_http2)) = found else {
                return Either::Right(future::ready(()));
            };
            let mut stream = TimeoutStream::new(stream);
            // Only writes: an idle read is a keep-alive or a long-poll, bounded by the
            // header-read and request timeouts (HTTP/1) or by the pings (HTTP/2).
            stream.set_write_timeout(Some(protocols.write_timeout));
            let stream = TokioIo::new(Box::pin(stream));
            Either::Left(if speaks_http2 {
                // Each request counts as in use until its answer's body is sent or dropped;
                // the connection is closed after `header_read_timeout` without any. One whose
                // answer is past its end and still not sent is dropped (`due`).
                let activity = Activity::new();
                let counting = Arc::clone(&activity);
                let abort = CancellationToken::new();
                let aborting = abort.clone();
                let grace = protocols.write_timeout;
                let app = MapFuture::new(app, move |answer: RouteFuture<Infallible>| {
                    let in_use = counting.enter();
                    let aborting = aborting.clone();
                    answer.map_ok(move |response| {
                        let watched = due::watch(&response, grace, &aborting);
                        response.map(|body| activity::holding(body, (in_use, watched)))
                    })
                });
                let connection = protocols
                    .http2
                    .serve_connection(stream, TowerToHyperService::new(app));
                let idle = activity.idle_for(protocols.header_read_timeout);
                let until = future::select(Box::pin(stopping.cancelled_owned()), Box::pin(idle));
                let abort = abort.cancelled_owned();
                Either::Left(Closing::new(connection, until.map(drop), abort).map(ended))
            } else {
                // A blocked write ends an HTTP/1 answer (the write deadline): nothing to abort.
                let connection = protocols
                    .http1
                    .serve_connection(stream, TowerToHyperService::new(app));
                let closing =
                    Closing::new(connection, stopping.cancelled_owned(), future::pending());
                Either::Right(closing.map(ended))
            })
        })
    }
}

/// A client that vanishes or breaks the protocol ends only its own connection.
fn ended(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended");
    }
}

/// Which protocol the connection speaks, from its first bytes (`true`: HTTP/2), or `None` if it
/// closed, said too little within `within` or the server is `stopping`. Peeks: the bytes stay
/// for the protocol to read.
async fn first_bytes(
    stream: TcpStream,
    within: Duration,
    stopping: CancellationToken,
) -> Option<(TcpStream, bool)> {
    tokio::select! {
        found = protocol_of(&stream, within) => found.map(|http2| (stream, http2)),
        () = stopping.cancelled() => None,
    }
}

async fn protocol_of(stream: &TcpStream, within: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = [0u8; HTTP2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut seen))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if !HTTP2_PREFACE.starts_with(&seen[..n]) {
            return Some(false);
        }
        if n == HTTP2_PREFACE.len() {
            return Some(true);
        }
        // Part of the preface so far. `peek` answers at once while those bytes wait, so look
        // again after a pause rather than spin.
        let next = tokio::time::Instant::now() + pause;
        if next >= deadline {
            return None;
        }
        tokio::time::sleep_until(next).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits (up to `grace`) for the
/// connections to finish their in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let connections = TaskTracker::new();
    let protocols = Arc::new(Protocols::new(settings));
    // Tells every connection to finish its in-flight requests and close (and ends the wait
    // for a new connection's first bytes).
    let stopping = CancellationToken::new();
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
        let connection = protocols
            .serve(stream, app.clone(), stopping.clone())
            .map(move |()| drop(permit));
        connections.spawn(connection);
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}
