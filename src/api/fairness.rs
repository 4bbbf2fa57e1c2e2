//! No one caller can take the instance from the others: each bearer token may have at most
//! `limits.max_requests_per_caller` requests and `limits.max_long_polls_per_caller` decision
//! long-polls in flight at once; past either, `429 too_many_requests` with `Retry-After`
//! (counted by the admission middleware, `admission.rs`).
//!
//! Callers are told apart by a digest of their bearer token (however the header spells it; of
//! the whole `Authorization` value when it holds none), before authentication: a flood of
//! made-up tokens costs one short-lived entry per request in flight (the map only holds
//! callers with something in flight), and each is answered `401` at once anyway.
//! Requests without the header (health probes, scrapes) are not counted here; the inbox counts
//! a session's requests against the token it signed in with (`ui::per_session`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::ApiError;

/// What one caller has in flight.
#[derive(Debug, Default, Clone, Copy)]
struct InFlight {
    requests: usize,
    long_polls: usize,
}

#[derive(Debug)]
pub struct CallerSlots {
    max_requests: usize,
    max_long_polls: usize,
    in_flight: Mutex<HashMap<[u8; 32], InFlight>>,
}

/// A request's place in its caller's count; given back when the request is answered.
pub struct Slot {
    slots: Arc<CallerSlots>,
    caller: [u8; 32],
    long_poll: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_flight = self.slots.lock();
        if let Some(counts) = in_flight.get_mut(&self.caller) {
            if self.long_poll {
                counts.long_polls -= 1;
            } else {
                counts.requests -= 1;
            }
            if counts.requests == 0 && counts.long_polls == 0 {
                in_flight.remove(&self.caller);
            }
        }
    }
}

impl CallerSlots {
    pub fn new(max_requests: usize, max_long_polls: usize) -> Arc<Self> {
        Arc::new(Self {
            max_requests,
            max_long_polls,
            in_flight: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], InFlight>> {
        // Counts only; a panicking holder leaves them as they were.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request of `caller` (a digest of its token), or refuses it.
    pub fn try_acquire(
        self: &Arc<Self>,
        caller: [u8; 32],
        long_poll: bool,
    ) -> Result<Slot, ApiError> {
        let mut in_flight = self.lock();
        let counts = in_flight.entry(caller).or_default();
        let (count, max) = if long_poll {
            (&mut counts.long_polls, self.max_long_polls)
        } else {
            (&mut counts.requests, self.max_requests)
        };
        if *count >= max {
            if counts.requests == 0 && counts.long_polls == 0 {
                in_flight.remove(&caller);
            }
            return Err(ApiError::TooManyRequests {
                in_flight: max,
                long_polls: long_poll,
            });
        }
        *count += 1;
        Ok(Slot {
            slots: self.clone(),
            caller,
            long_poll,
        })
    }
}
