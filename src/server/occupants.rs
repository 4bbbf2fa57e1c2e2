//! Who holds the places of `server.max_connections`, so that at the cap a new connection can
//! take the place of one with no request in flight instead of being turned away.
//!
//! Turning the newcomer away let one host with no token hold every place: connections that
//! send nothing (or half a header, or a `/healthz` every few seconds) keep theirs for the
//! header-read timeout, and opening them faster than that locked every agent and reviewer out.
//! Now the connection seated longest among those with nothing in flight is asked to close
//! (at once: it is idle) and the newcomer takes its place. Such a flood must then replace every
//! place faster than a client sends its request after connecting, which at 10,000 places is
//! far beyond one host.
//!
//! When none is idle, the one seated longest whose requests in flight are nobody's (no token,
//! an unknown one, a sign-in form) is asked instead, and cut short after a moment: a sign-in
//! whose body never comes, or an HTTP/2 answer its client grants no window, kept such a
//! connection busy for the request or write timeout, and opening them faster than that from
//! one host with no token closed every newcomer. A connection with a known caller's request in
//! flight (a token's, a live session's; each caller's are bounded, `api::fairness`) is never
//! asked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::activity::Activity;

#[derive(Default)]
pub(super) struct Occupants {
    /// By arrival: the first idle one found is the one seated longest.
    seated: Mutex<BTreeMap<u64, Occupant>>,
    next_id: AtomicU64,
}

struct Occupant {
    activity: Arc<Activity>,
    /// Cancelled to ask the connection to close.
    leave: CancellationToken,
}

/// One connection's place: its permit, and its entry among the occupants, both given up when
/// the connection ends.
pub(super) struct Seat {
    occupants: Arc<Occupants>,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Occupants {
    /// Seats a connection holding `permit`: its activity (what is in flight on it) and the
    /// token it closes on when asked to make way.
    pub(super) fn seat(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
    ) -> (Seat, Arc<Activity>, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (activity, leave) = (Activity::new(), CancellationToken::new());
        self.seated().insert(
            id,
            Occupant {
                activity: Arc::clone(&activity),
                leave: leave.clone(),
            },
        );
        let seat = Seat {
            occupants: Arc::clone(self),
            id,
            _permit: permit,
        };
        (seat, activity, leave)
    }

    /// Asks the connection seated longest with nothing in flight (and not asked already) to
    /// close, or else the one seated longest with nobody's requests in flight; `false` when
    /// every connection has a known caller's request in flight.
    pub(super) fn make_way(&self) -> bool {
        let seated = self.seated();
        let askable = || seated.values().filter(|o| !o.leave.is_cancelled());
        let leaving = askable()
            .find(|o| o.activity.is_idle())
            .or_else(|| askable().find(|o| !o.activity.holds_caller()));
        match leaving {
            Some(occupant) => {
                occupant.leave.cancel();
                true
            }
            None => false,
        }
    }

    fn seated(&self) -> MutexGuard<'_, BTreeMap<u64, Occupant>> {
        // Entries are inserted and removed whole: nothing a panicking holder leaves half-done.
        self.seated.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.occupants.seated().remove(&self.id);
    }
}
