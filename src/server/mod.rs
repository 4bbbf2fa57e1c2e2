//! The HTTP server loop: HTTP/1.1 and HTTP/2 connections with limits no client can talk its
//! way past.
//!
//! `axum::serve` has no header-read timeout, no cap on connections and no bound on what a
//! client may buffer in the server: connections that never finish their headers pile up until
//! the process runs out of file descriptors and memory. Here every connection holds a permit
//! of `server.max_connections` (at it a new connection takes an idle one's place,
//! `occupants`, or is closed at once when none is idle, so the listen backlog never fills),
//! its headers must arrive within `server.header_read_timeout` (which
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
mod occupants;

pub(crate) use activity::{holding, Claim};
pub(crate) use due::{EndsWhen, HoldsCallerPlace};

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Request;
use axum::routing::future::RouteFuture;
use axum::Router;
use futures_util::future::{self, Either};
use futures_util::{FutureExt, TryFutureExt};
use hyper::body::Incoming;
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
use occupants::Occupants;

/// The connection a request arrived on, in its extensions: the API's admission and the
/// inbox's session check mark a known caller's request on it (`Activity::claim`), which keeps
/// the connection from being asked to make way while the request is in flight.
#[derive(Clone)]
pub(crate) struct ArrivedOn(Arc<Activity>);

impl ArrivedOn {
    pub(crate) fn claim(&self) -> Claim {
        self.0.claim()
    }
}

/// Adds [`ArrivedOn`] to each request `app` serves on the connection of `activity`.
fn arrived_on<S>(
    app: S,
    activity: &Arc<Activity>,
) -> tower::util::MapRequest<S, impl Fn(Request<Incoming>) -> Request<Incoming> + Clone> {
    let activity = Arc::clone(activity);
    tower::util::MapRequest::new(app, move |mut request: Request<Incoming>| {
        request
            .extensions_mut()
            .insert(ArrivedOn(Arc::clone(&activity)));
        request
    })
}

/// How long a connection asked to make way may take to close by itself before it is dropped.
const LEAVE_GRACE: Duration = Duration::from_secs(1);

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
    /// `activity` counts its requests in flight; `leave` asks it to close as at shutdown (its
    /// place is wanted, `occupants`).
    fn serve(
        self: &Arc<Self>,
        stream: TcpStream,
        app: Router,
        stopping: CancellationToken,
        activity: Arc<Activity>,
        leave: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let protocols = Arc::clone(self);
        // Whole answers still unsent past it are closed (`due`).
        let stopped = stopping.clone();
        let until = {
            let leave = leave.clone();
            move || {
                let (stopping, leave) = (stopping.clone().cancelled_owned(), leave.clone());
                future::select(Box::pin(stopping), Box::pin(leave.cancelled_owned())).map(drop)
            }
        };
        // Asked to leave, a connection is asked to finish (`until`), and dropped if it still
        // holds no known caller's request then: at once if no request ever arrived (hyper
        // finishes an HTTP/1 connection only after a first answer), else after `LEAVE_GRACE`,
        // in which a finished answer's last bytes go out (an HTTP/2 goodbye waits for a client
        // that may never answer). Nobody's requests still in flight are cut short; a known
        // caller's (taken meanwhile) is finished.
        let unserved = {
            let activity = Arc::clone(&activity);
            leave.cancelled_owned().then(move |()| {
                let grace = match activity.has_served() {
                    true => LEAVE_GRACE,
                    false => Duration::ZERO,
                };
                tokio::time::sleep(grace).then(move |()| match activity.holds_caller() {
                    false => Either::Left(future::ready(())),
                    true => Either::Right(future::pending()),
                })
            })
        };
        // Combinators, not an `async move` block: a block stores the connection twice
        // (captured, then awaited), which doubled each connection's task to 7 kB.
        first_bytes(stream, self.header_read_timeout, until()).then(move |found| {
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
                let counting = Arc::clone(&activity);
                let abort = CancellationToken::new();
                let aborting = abort.clone();
                let grace = protocols.write_timeout;
                let app = MapFuture::new(app, move |answer: RouteFuture<Infallible>| {
                    let in_use = counting.enter();
                    let (aborting, stopped) = (aborting.clone(), stopped.clone());
                    answer.map_ok(move |response| {
                        let watched = due::watch(&response, grace, &aborting, &stopped);
                        response.map(|body| activity::holding(body, (in_use, watched)))
                    })
                });
                let app = arrived_on(app, &activity);
                let connection = protocols
                    .http2
                    .serve_connection(stream, TowerToHyperService::new(app));
                let idle = activity.idle_for(protocols.header_read_timeout);
                let until = future::select(Box::pin(until()), Box::pin(idle));
                let abort = future::select(Box::pin(abort.cancelled_owned()), Box::pin(unserved));
                Either::Left(Closing::new(connection, until.map(drop), abort.map(drop)).map(ended))
            } else {
                // Counted too, so that an idle keep-alive can make way (`occupants`); a
                // blocked write ends an HTTP/1 answer (the write deadline): nothing to abort.
                let counting = Arc::clone(&activity);
                let app = MapFuture::new(app, move |answer: RouteFuture<Infallible>| {
                    let in_use = counting.enter();
                    answer.map_ok(move |response| {
                        response.map(|body| activity::holding(body, in_use))
                    })
                });
                // The first request's head within the header-read timeout of the connection's
                // arrival: hyper's own timer starts only at its first read, after
                // `first_bytes` had waited, so a byte just before that deadline bought a
                // second whole timeout to trickle the rest in.
                let first_request = {
                    let activity = Arc::clone(&activity);
                    let deadline = activity.opened() + protocols.header_read_timeout;
                    tokio::time::sleep_until(deadline).then(move |()| match activity.has_served() {
                        false => Either::Left(future::ready(())),
                        true => Either::Right(future::pending()),
                    })
                };
                let app = arrived_on(app, &activity);
                let connection = protocols
                    .http1
                    .serve_connection(stream, TowerToHyperService::new(app));
                let abort = future::select(Box::pin(unserved), Box::pin(first_request));
                let closing = Closing::new(connection, until(), abort.map(drop));
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
/// closed, said too little within `within`, or was told to close (`until`). Peeks: the bytes
/// stay for the protocol to read.
async fn first_bytes(
    stream: TcpStream,
    within: Duration,
    until: impl Future<Output = ()>,
) -> Option<(TcpStream, bool)> {
    tokio::select! {
        found = protocol_of(&stream, within) => found.map(|http2| (stream, http2)),
        () = until => None,
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
    let occupants = Arc::new(Occupants::default());
    // What was last logged about reaching the cap (`true`: idle connections made way).
    let mut at_capacity = None;
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
        let _ = stream.set_nodelay(true);
        let seated = {
            let (occupants, protocols) = (Arc::clone(&occupants), Arc::clone(&protocols));
            let (app, stopping) = (app.clone(), stopping.clone());
            move |permit, stream| {
                let (seat, activity, leave) = occupants.seat(permit);
                protocols
                    .serve(stream, app, stopping, activity, leave)
                    .map(move |()| drop(seat))
            }
        };
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            at_capacity = None;
            connections.spawn(seated(permit, stream));
        } else if occupants.make_way() {
            // The idle connection asked to leave closes at once, or within `LEAVE_GRACE`;
            // its place is this one's. If it does not (a request arrived meanwhile), this one
            // gives up as a connection that says nothing does.
            warn_once(&mut at_capacity, true, settings.max_connections);
            let (permits, stopping) = (Arc::clone(&permits), stopping.clone());
            let within = protocols.header_read_timeout;
            connections.spawn(async move {
                let place = tokio::time::timeout(within, permits.acquire_owned());
                tokio::select! {
                    place = place => {
                        if let Ok(Ok(permit)) = place {
                            seated(permit, stream).await;
                        }
                    }
                    () = stopping.cancelled() => {}
                }
            });
        } else {
            warn_once(&mut at_capacity, false, settings.max_connections);
            drop(stream);
        }
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// Logs reaching `server.max_connections` once per change of what happens there, not once
/// per connection of a flood.
fn warn_once(last: &mut Option<bool>, made_way: bool, max: usize) {
    if *last == Some(made_way) {
        return;
    }
    *last = Some(made_way);
    if made_way {
        tracing::warn!(
            max,
            "server.max_connections reached: idle connections (or ones serving no known caller) close to make way for new ones"
        );
    } else {
        tracing::warn!(
            max,
            "server.max_connections reached, every connection busy with a known caller: closing new connections"
        );
    }
}
