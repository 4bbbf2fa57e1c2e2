//! No one caller can take the instance from the others: each bearer token may have at most
//! `limits.max_requests_per_caller` requests and `limits.max_long_polls_per_caller` decision
//! long-polls in flight at once; past either, `429 too_many_requests` with `Retry-After`.
//!
//! Callers are told apart by a digest of their `Authorization` header, before authentication:
//! a flood of made-up tokens costs one short-lived entry per request in flight (the map only
//! holds callers with something in flight), and each is answered `401` at once anyway.
//! Requests without the header (health probes, scrapes, the inbox) are not counted here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

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
struct Slot {
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

    fn try_acquire(self: &Arc<Self>, caller: [u8; 32], long_poll: bool) -> Result<Slot, ApiError> {
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

/// Middleware: counts the request against its caller, or answers `429`.
pub async fn per_caller(
    State(slots): State<Arc<CallerSlots>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(authorization) = request.headers().get(AUTHORIZATION) else {
        return next.run(request).await;
    };
    let caller: [u8; 32] = Sha256::digest(authorization.as_bytes()).into();
    let long_poll = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str().ends_with("/decision"));
    match slots.try_acquire(caller, long_poll) {
        Ok(_slot) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}
