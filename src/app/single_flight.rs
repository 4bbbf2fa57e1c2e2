//! One call at a time, its answer shared with the callers that arrive while it runs. For what
//! anyone may ask without credentials (no caller's limits count it) and what costs too much to
//! run once per ask in a flood: `/readyz`'s engine probe (on Redis a round trip with a write,
//! which took the engine's in-flight places from every tenant's calls and filled the AOF) and
//! the `/metrics` render (it walks every series, and kept every core rendering).
//!
//! No answer is kept past the call that gave it: a caller takes the last answer only if that
//! call finished after it arrived (it was in flight then, or began since), so a call that
//! starts after a change (Redis full, an outage) sees it.

use std::future::Future;
use std::sync::{Mutex, PoisonError};

pub(super) struct SingleFlight<T> {
    /// Held by the caller running the call now; the others wait for its answer.
    turn: tokio::sync::Mutex<()>,
    /// Calls finished so far, and what the last one left for the others.
    last: Mutex<(u64, T)>,
}

/// A call's answer, as the caller that ran it got it, or as the others share it.
pub(super) enum Answer<R, T> {
    Ran(R),
    Shared(T),
}

impl<T: Clone> SingleFlight<T> {
    /// `unset` is never answered: it stands until the first call finishes.
    pub(super) fn new(unset: T) -> Self {
        Self {
            turn: tokio::sync::Mutex::new(()),
            last: Mutex::new((0, unset)),
        }
    }

    /// Runs `call`, or shares the answer of the one that finished since this caller arrived;
    /// `keep` is what a call's answer leaves for the others (the answer itself may not be
    /// `Clone`).
    pub(super) async fn run<R, F>(
        &self,
        call: impl FnOnce() -> F,
        keep: impl FnOnce(&R) -> T,
    ) -> Answer<R, T>
    where
        F: Future<Output = R>,
    {
        let arrived = self.last().0;
        let _turn = self.turn.lock().await;
        {
            let last = self.last();
            if last.0 > arrived {
                return Answer::Shared(last.1.clone());
            }
        }
        // Dropped mid-call (the client went away), the turn passes on with no answer kept:
        // the next caller runs it.
        let answer = call().await;
        let mut last = self.last();
        *last = (last.0 + 1, keep(&answer));
        Answer::Ran(answer)
    }

    fn last(&self) -> std::sync::MutexGuard<'_, (u64, T)> {
        // Written whole: nothing a panicking holder could leave half-done.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
