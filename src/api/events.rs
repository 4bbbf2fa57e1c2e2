//! `GET /v1/tenants/{tenant}/events`: live events as Server-Sent Events (`text/event-stream`).
//!
//! One SSE event per approval parked, decided or expired in the tenant, on any instance:
//! `event:` names what happened, `id:` is the audit event id (a reconnecting `EventSource`
//! sends it back as `Last-Event-ID` and resumes right after it), `data:` is the audit event as
//! `GET …/audit` returns it. A stream opened without `Last-Event-ID` first sends an `id:` of
//! its start, so a reconnect before any event misses nothing either. The first read happens before the answer, so a refused caller, a
//! bad id or a backend that is down is a problem document, not a broken stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::{CancellationToken, DropGuard};
use utoipa::IntoParams;

use super::extract::{ApiQuery, Caller, TenantPath};
use super::{ApiError, AppState};
use crate::app::{AppError, Approvals, LiveEvent, LiveStream};
use crate::auth::{Permission, Principal};
use crate::server::EndsWhen;
use approvals_core::TenantId;

/// The longest `Last-Event-ID` accepted (ids this service hands out are far shorter).
const MAX_EVENT_ID: usize = 256;

/// What a reconnecting client waits before it tries again (the SSE `retry:` field).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event id, for clients that cannot set the `Last-Event-ID` header (the
    /// header wins when both are given).
    #[param(nullable = false, min_length = 1, max_length = 256)]
    pub last_event_id: Option<String>,
}

/// Live events of a tenant: `parked`, `decided`, `expired` (reviewers and admins).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = inline(approvals_core::TenantId), Path), EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, min_length = 1, max_length = 256, description = "Resume after this event id (sent by a reconnecting EventSource)")),
    responses((status = 200, content(
            (String = "text/event-stream", example = "event: parked\nid: 1764759600000-0\ndata: {\"event_id\":\"1764759600000-0\",\"kind\":\"submitted\",…}\n\n")
        )),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem),
        (status = 429, description = "too_many_streams: this tenant (or this caller) has as many live streams open as it may", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let header = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| AppError::InvalidOption("Last-Event-ID: not text".into()))?
                .to_owned(),
        ),
    };
    stream(
        state,
        &caller,
        &tenant,
        header.or(query.last_event_id),
        None,
    )
    .await
}

/// Resolves when the caller may no longer read the stream (an inbox session that ended).
pub(crate) type Revoked = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The SSE answer for `caller`'s stream of `tenant`, resuming after `last_event_id` (the
/// inbox's `/ui/events` too: a browser's `EventSource` cannot send a bearer token), ending
/// after `approvals.events_max_duration`, or when `revoked` resolves if sooner.
pub(crate) async fn stream(
    state: AppState,
    caller: &Principal,
    tenant: &TenantId,
    last_event_id: Option<String>,
    revoked: Option<Revoked>,
) -> Result<Response, ApiError> {
    if let Some(id) = &last_event_id {
        if id.is_empty() || id.len() > MAX_EVENT_ID {
            return Err(AppError::InvalidOption(format!(
                "Last-Event-ID: 1 to {MAX_EVENT_ID} characters, an event id this stream sent"
            ))
            .into());
        }
    }
    let (mut stream, first) = state
        .app
        .open_live(caller, tenant, last_event_id)
        .await
        .map_err(|e| match e {
            // An id the engine cannot read as a position is the client's mistake.
            AppError::InvalidOption(_) => {
                AppError::InvalidOption("Last-Event-ID: not an event id of this tenant".into())
            }
            other => other,
        })?;
    let over = CancellationToken::new();
    tokio::spawn(end_in_time(
        state.app.clone(),
        revoked.unwrap_or_else(|| Box::pin(std::future::pending())),
        over.clone(),
        stream.take_place(),
    ));
    let live = Live {
        shows_trials: caller.may(Permission::Audit, tenant),
        state,
        stream,
        queued: first.into(),
        more: false,
        unshown_pages: 0,
        greeted: false,
        over: over.clone(),
        _ends: over.clone().drop_guard(),
    };
    let events = futures_util::stream::unfold(live, Live::next);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    // nginx buffers what it proxies unless told otherwise: events (and the keep-alives that
    // hold the connection open) would wait in its buffer.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    // The server closes the connection of a stream past its end that it cannot send.
    response.extensions_mut().insert(EndsWhen(over));
    Ok(response)
}

/// Ends a stream (cancels `over`) after `approvals.events_max_duration` (its last tenth drawn
/// at random: the streams a deploy's clients opened together reconnected together, every time,
/// in one wave of resumed audit reads), at shutdown or when `revoked` resolves, and gives back
/// its `place` among the open streams then. A timer of its
/// own: a stream checks `over` only when it is read, and over HTTP/2 it may never be read again
/// (hyper stops while a frame waits for window the client does not grant). Returns early when
/// the stream is dropped, which cancels `over` too.
async fn end_in_time(
    app: Arc<Approvals>,
    revoked: Revoked,
    over: CancellationToken,
    place: impl Send + 'static,
) {
    tokio::select! {
        () = tokio::time::sleep(app.live_max_duration().mul_f64(rand::random_range(0.9..=1.0))) => {}
        () = app.shutting_down() => {}
        () = revoked => {}
        () = over.cancelled() => {}
    }
    over.cancel();
    drop(place);
}

/// Full pages of events a stream does not send (allow and deny verdicts, mostly) that it reads
/// in a row before it pauses for a poll interval. A reviewer may resume from an hour back: in
/// a tenant of mostly allowed actions that was thousands of reads back to back, before a byte
/// was sent, on every reconnect (the client's id never moved).
const UNSHOWN_PAGES_PER_POLL: usize = 10;

/// An open stream between reads: what was read and not sent yet.
struct Live {
    state: AppState,
    stream: LiveStream,
    queued: VecDeque<LiveEvent>,
    /// The last read returned a full page: read again at once.
    more: bool,
    /// Full pages read in a row with nothing in them to send (allow and deny verdicts, policy
    /// changes): see [`UNSHOWN_PAGES_PER_POLL`].
    unshown_pages: usize,
    /// The `retry:` advice went out.
    greeted: bool,
    /// Whether the caller may read the audit (an admin): only then do `parked` events carry
    /// a candidate policy's verdict (`details.shadow`). A reviewer or a bot reading the stream
    /// saw an unreleased policy's answers and reasons on every parked approval, which the
    /// audit and the policy endpoints keep to admins.
    shows_trials: bool,
    /// Cancelled at the stream's end ([`end_in_time`]): its maximum duration (no connection
    /// is held forever: the client reconnects with its `Last-Event-ID`, and may land on
    /// another instance), shutdown, or a sign-out.
    over: CancellationToken,
    /// Cancels `over` when the stream is dropped: [`end_in_time`] has nothing left to do.
    _ends: DropGuard,
}

/// An event's `data:` text: its JSON, with the line separators JSON leaves unescaped in text
/// (U+2028, U+2029, and U+0085 too) escaped. SSE breaks lines at CR and LF only, but readers
/// that split text with their language's line splitting (Python's `str.splitlines`, which
/// httpx's `iter_lines` uses) cut such a line in two: a reviewer's reason holding one stopped
/// those clients' streams at that event for good, every reconnect replaying it. The JSON read
/// is the same; those characters cannot occur outside a JSON string.
fn event_data(event: &impl serde::Serialize) -> serde_json::Result<String> {
    let json = serde_json::to_string(event)?;
    if !json.contains(['\u{2028}', '\u{2029}', '\u{85}']) {
        return Ok(json);
    }
    Ok(json
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
        .replace('\u{85}', "\\u0085"))
}

impl Live {
    /// The next SSE event; `None` ends the stream (shutdown, or a read failed: the client
    /// reconnects with its last id and misses nothing).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if !self.greeted {
            self.greeted = true;
            // With no `Last-Event-ID`, the greeting carries the stream's start as one: a
            // client whose stream ends before its first event resumes from there (an event
            // without data sets the client's last id all the same).
            let mut greeting = Event::default().retry(RECONNECT_AFTER);
            if let Some(id) = self.stream.start_id() {
                greeting = greeting.id(id);
            }
            return Some((Ok(greeting), self));
        }
        loop {
            // Checked before every event, not only between reads: a stream catching up on a
            // backlog (full pages, one after another) must still end at a sign-out, at
            // shutdown, or at its time. The client resumes from its last id, missing nothing.
            if self.over.is_cancelled() {
                return None;
            }
            if let Some(mut live) = self.queued.pop_front() {
                if !self.shows_trials {
                    if let Some(details) = live.event.details.as_object_mut() {
                        details.remove("shadow");
                    }
                }
                let event = match event_data(&live.event) {
                    Ok(data) => Event::default()
                        .event(live.kind.as_str())
                        .id(live.event.event_id.clone())
                        .data(data),
                    Err(_) => Event::default().comment("unserialisable event"),
                };
                return Some((Ok(event), self));
            }
            if !self.more {
                tokio::select! {
                    () = self.over.cancelled() => return None,
                    () = tokio::time::sleep(self.state.app.live_poll_interval()) => {}
                }
            }
            if self.over.is_cancelled() {
                return None;
            }
            // A read (a visibility scan on Temporal) may outlast the stream's end: ending then
            // is what keeps the server from closing the connection for an answer past its end.
            let read = tokio::select! {
                () = self.over.cancelled() => return None,
                read = self.state.app.read_live(&mut self.stream) => read,
            };
            match read {
                Ok((events, more)) => {
                    self.unshown_pages = if events.is_empty() && more {
                        self.unshown_pages + 1
                    } else {
                        0
                    };
                    self.queued.extend(events);
                    self.more = more;
                    if self.unshown_pages >= UNSHOWN_PAGES_PER_POLL {
                        // A pause, as between polls, and the client told how far the stream
                        // has read: its reconnect resumes there, not where it began.
                        self.unshown_pages = 0;
                        self.more = false;
                        if let Some(id) = self.stream.read_up_to() {
                            let progress = Event::default().id(id).comment("read up to here");
                            return Some((Ok(progress), self));
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(tenant = %self.stream.tenant(), %error, "live stream ends");
                    return None;
                }
            }
        }
    }
}
