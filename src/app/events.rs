//! What engines do by themselves (Redis' sweeper recording expiries), counted like the use
//! cases count theirs.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use approvals_core::{Approval, BackendError, EngineEvents, Timestamp};

use super::chain;

/// Records an engine's own expiries and chore passes in the service's metrics.
pub struct EngineMetrics {
    /// Whether this engine is the one the service answers from. A dual soak's secondary
    /// expires its own copies of the primary's approvals: counting them would count each
    /// expiry twice, and its failures are the dual backend's to report.
    answering: bool,
    /// The chores failing now: a chore that fails every 250 ms while Redis is down is logged
    /// when it starts failing and when it recovers, not on every pass (the metric counts each).
    failing: Mutex<HashSet<&'static str>>,
}

impl EngineMetrics {
    /// For the engine the service answers from.
    pub fn answering() -> Self {
        Self {
            answering: true,
            failing: Mutex::default(),
        }
    }

    /// For a dual soak's secondary: logged, not counted.
    pub fn secondary() -> Self {
        Self {
            answering: false,
            failing: Mutex::default(),
        }
    }

    /// Whether `chore`'s failing state changed with this pass.
    fn changed(&self, chore: &'static str, failed: bool) -> bool {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if failed {
            failing.insert(chore)
        } else {
            failing.remove(chore)
        }
    }
}

impl EngineEvents for EngineMetrics {
    fn expired(&self, approval: &Approval, recorded_at: Timestamp) {
        if self.answering {
            crate::metrics::expired(approval, recorded_at);
        }
    }

    fn chore_finished(&self, chore: &'static str, result: Result<usize, &BackendError>) {
        if self.answering {
            crate::metrics::chore_run(chore, result.is_ok());
        }
        let changed = self.changed(chore, result.is_err());
        match result {
            Ok(n) if chore == "adopt" && n > 0 => {
                tracing::info!(adopted = n, "adopted ADR v1 records")
            }
            Ok(_) if changed => tracing::info!(chore, "engine chore succeeds again"),
            Ok(_) => {}
            Err(error) if self.answering => {
                crate::metrics::backend_error(error);
                if changed {
                    tracing::warn!(chore, error = %chain(error),
                        "engine chore failing; retrying (logged again when it recovers)");
                }
            }
            Err(error) => {
                tracing::debug!(chore, error = %chain(error), "secondary's chore failed");
            }
        }
    }

    fn unreadable(&self, _key: &str, _reason: &str) {
        // The engine logged the key; the count is what on-call watches.
        crate::metrics::unreadable_record(self.answering);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chore_failing_every_pass_is_a_change_only_twice() {
        let events = EngineMetrics::answering();
        let changes: Vec<bool> = [true, true, true, false, false, true]
            .into_iter()
            .map(|failed| events.changed("sweep", failed))
            .collect();
        assert_eq!(changes, [true, false, false, true, false, true]);
        assert!(events.changed("adopt", true), "each chore on its own");
    }
}
