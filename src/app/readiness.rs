//! `/readyz`'s engine probe, one at a time per instance: a caller that arrives while a probe is
//! in flight takes that probe's answer. Anyone may ask `/readyz` (it carries no credentials, so
//! no caller's limits count it), and on Redis each probe is a round trip with a write: a flood
//! of them took the engine's in-flight places from every tenant's calls, and filled the AOF.
//!
//! No answer is kept past the probe that gave it: a probe that starts after a change (Redis
//! full, an outage) sees it, as an orchestrator checking again expects.

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use approvals_core::BackendError;

#[derive(Default)]
pub(super) struct SharedProbe {
    /// Held by the caller probing now; the others wait for its answer.
    turn: tokio::sync::Mutex<()>,
    last: Mutex<Last>,
}

struct Last {
    /// Probes finished so far: a caller takes the last answer only if one finished after it
    /// arrived (that probe was in flight then, or began since).
    finished: u64,
    /// The last probe's answer; the failure as its message (`BackendError` is not `Clone`).
    outcome: Result<(), String>,
}

/// A probe's answer, as the caller that ran it got it, or as the others share it.
pub(super) enum Probed {
    Ran(Result<(), BackendError>),
    Shared(Result<(), String>),
}

impl SharedProbe {
    pub(super) async fn run<F>(&self, probe: impl FnOnce() -> F) -> Probed
    where
        F: Future<Output = Result<(), BackendError>>,
    {
        let arrived = self.last().finished;
        let _turn = self.turn.lock().await;
        {
            let last = self.last();
            if last.finished > arrived {
                return Probed::Shared(last.outcome.clone());
            }
        }
        // Dropped mid-probe (the client went away), the turn passes on with no answer kept:
        // the next caller probes.
        let outcome = probe().await;
        let mut last = self.last();
        last.finished += 1;
        last.outcome = outcome.as_ref().map(|_| ()).map_err(|e| super::chain(e));
        Probed::Ran(outcome)
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Last> {
        // Two plain fields written together: nothing a panicking holder could leave half-done.
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Last {
    fn default() -> Self {
        Self {
            finished: 0,
            outcome: Ok(()),
        }
    }
}
