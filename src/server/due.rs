//! Answers whose body must end at a moment of its own (a live event stream: at its maximum
//! duration, at shutdown, at a sign-out), whether or not the connection still reads the body.
//!
//! Such a body ends itself the next time it is read, but over HTTP/2 it may not be read again:
//! hyper stops reading a body while a frame of it waits for flow-control window, and a client
//! that grants none (or no more) leaves the frame waiting for ever. Nothing is written, so the
//! socket's write deadline does not see it, and the request stays in flight, so the idle close
//! does not either: the stream, and its connection, would outlive its end and hold up a
//! shutdown for the whole grace. So a body still unfinished `server.write_timeout` after it was
//! due (what HTTP/1 gives a blocked write) closes its connection: hyper has no way to reset one
//! stream it no longer reads, and closing the connection ends them all (each stream's task sees
//! it closed and drops its body). Only a stream both due and stalled costs its connection's
//! other streams; a stalled stream before its end stalls only itself (ADR-0018).
//!
//! An answer built whole (a body of known length) that holds no caller's place (`/healthz`,
//! `/openapi.json`: no token), or only a made-up caller's (any token the service does not
//! know, on any path: a new caller for every made-up token), is due at once. hyper
//! takes such a body in one read as soon as the stream has window, so one still unread
//! `server.write_timeout` later is held by a client that grants none: it kept its request in flight for ever, and its connection
//! from the idle close and from making way, and enough such connections took every place of
//! `server.max_connections`. An answer that holds a known caller's place is bounded by those
//! places (a client that reads slowly on one connection, its window spent on an export, is
//! not cut off for it) until the server stops: then one built whole and still unsent
//! `server.write_timeout` later closes its connection too, or it held up the drain.

use std::time::Duration;

use axum::body::HttpBody as _;
use axum::response::Response;
use tokio_util::sync::{CancellationToken, DropGuard};

/// On a response: its body is due to end once this is cancelled.
#[derive(Clone)]
pub(crate) struct EndsWhen(pub(crate) CancellationToken);

/// On a response: it holds one of its caller's places until sent (`api::admission`), whether
/// its body was built whole before it was wrapped to hold that place, and whether the caller
/// is a known token's (only a known caller's places bound anything).
#[derive(Clone, Copy)]
pub(crate) struct HoldsCallerPlace {
    pub(crate) built_whole: bool,
    pub(crate) known_caller: bool,
}

/// If `response` says when its body ends ([`EndsWhen`]), or is built whole and holds no
/// caller's place (due now), or is built whole for a known caller (due when the server stops,
/// `stopping`), cancels `close` (the connection's) should the body not have ended `grace`
/// after that. Returns the guard the body must hold until it has ended, or been dropped.
pub(super) fn watch(
    response: &Response,
    grace: Duration,
    close: &CancellationToken,
    stopping: &CancellationToken,
) -> Option<DropGuard> {
    let due = match response.extensions().get::<EndsWhen>() {
        Some(ends) => ends.0.clone(),
        None if due_now(response) => {
            let now = CancellationToken::new();
            now.cancel();
            now
        }
        // At shutdown a whole answer still unsent is one its client does not take: the drain
        // waited for it for the whole grace period. (A streamed one, an audit export, is
        // still being made: the drain lets it finish.)
        None if built_whole(response) => stopping.clone(),
        None => return None,
    };
    let ended = CancellationToken::new();
    let watching = ended.clone();
    let close = close.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = watching.cancelled() => {}
            () = async { due.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::debug!(?grace, "an answer past its end is not sent: closing");
                close.cancel();
            }
        }
    });
    Some(ended.drop_guard())
}

/// Whether `response` is built whole and bounded by no caller's places: none held, or only a
/// made-up caller's. Not only a `401`: outside `/v1` a made-up token is answered as no token
/// is (`/healthz`, a `404`), and each such answer pinned its stream for ever.
fn built_whole(response: &Response) -> bool {
    response
        .extensions()
        .get::<HoldsCallerPlace>()
        .is_some_and(|held| held.built_whole)
}

fn due_now(response: &Response) -> bool {
    match response.extensions().get::<HoldsCallerPlace>() {
        None => response.body().size_hint().exact().is_some(),
        Some(held) => held.built_whole && !held.known_caller,
    }
}
