//! Whether a connection is in use, so that one left idle can be closed: an HTTP/2 connection
//! after the header-read timeout, and any connection when a new one needs its place
//! (`occupants`).
//!
//! hyper closes an idle HTTP/1 keep-alive connection after the header-read timeout, but an
//! HTTP/2 connection whose client answers the server's pings stays open for ever: idle
//! clients could keep every slot of `server.max_connections`. A request counts as in use
//! until its answer has been sent to the end (a live event stream's too), not only until the
//! handler returns.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

/// Requests of one connection whose answers are not fully sent, and since when it has had none.
pub(super) struct Activity {
    in_flight: AtomicUsize,
    /// Those of them that hold a known caller's place (`Claim`): the rest (no token, an unknown
    /// one, a sign-in form) may be cut short when the connection's place is wanted.
    claimed: AtomicUsize,
    /// Whether any request has arrived: one that never had any has no answer to finish.
    served: AtomicBool,
    /// Milliseconds after `opened` at which the last request in flight finished.
    idle_since_ms: AtomicU64,
    opened: Instant,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            claimed: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
        })
    }

    /// Counts a request in flight until the guard (carried by its answer's body, [`holding`]) is
    /// dropped.
    pub(super) fn enter(self: &Arc<Self>) -> InUse {
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InUse(Arc::clone(self))
    }

    /// Whether no request is in flight (none yet, or every answer sent).
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Whether a request of a known caller (a token's or a live session's) is in flight.
    pub(super) fn holds_caller(&self) -> bool {
        self.claimed.load(Ordering::Acquire) > 0
    }

    /// Marks a request in flight as a known caller's until the guard is dropped.
    pub(super) fn claim(self: &Arc<Self>) -> Claim {
        self.claimed.fetch_add(1, Ordering::AcqRel);
        Claim(Arc::clone(self))
    }

    /// When the connection was seated.
    pub(super) fn opened(&self) -> Instant {
        self.opened
    }

    /// Whether a request has ever arrived on the connection.
    pub(super) fn has_served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// When the connection last became idle, or `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.opened + Duration::from_millis(ms))
    }

    /// Resolves once the connection has had no request in flight for `limit`.
    pub(super) async fn idle_for(self: Arc<Self>, limit: Duration) {
        let mut check_at = Instant::now() + limit;
        loop {
            tokio::time::sleep_until(check_at).await;
            let now = Instant::now();
            check_at = match self.idle_since() {
                Some(since) if since + limit <= now => return,
                Some(since) => since + limit,
                None => now + limit,
            };
        }
    }
}

/// One request in flight (see [`Activity::enter`]).
pub(super) struct InUse(Arc<Activity>);

impl Drop for InUse {
    fn drop(&mut self) {
        // The time first: a check between the two then sees a busy connection, never an
        // idle one with an old time.
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A known caller's request in flight on its connection (see [`Activity::claim`]).
pub(crate) struct Claim(Arc<Activity>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.claimed.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `body`, holding `held` until the body has been sent to its end or dropped: a request's
/// place in flight (here, and the caller's slot in `api::admission`) lasts as long as its
/// answer, not only until the handler returns.
pub(crate) fn holding<T: Send + Sync + 'static>(body: Body, held: T) -> Body {
    Body::new(body.map_frame(move |frame| {
        let _held = &held;
        frame
    }))
}
