//! What engines do by themselves (Redis' sweeper recording expiries), counted like the use
//! cases count theirs.

use approvals_core::{Approval, BackendError, EngineEvents, Timestamp};

use super::chain;

/// Records an engine's own expiries and chore passes in the service's metrics.
pub struct EngineMetrics {
    /// Whether this engine is the one the service answers from. A dual soak's secondary
    /// expires its own copies of the primary's approvals: counting them would count each
    /// expiry twice, and its failures are the dual backend's to report.
    answering: bool,
}

impl EngineMetrics {
    /// For the engine the service answers from.
    pub fn answering() -> Self {
        Self { answering: true }
    }

    /// For a dual soak's secondary: logged, not counted.
    pub fn secondary() -> Self {
        Self { answering: false }
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
        match result {
            Ok(n) if chore == "adopt" && n > 0 => {
                tracing::info!(adopted = n, "adopted ADR v1 records")
            }
            Ok(_) => {}
            Err(error) if self.answering => {
                crate::metrics::backend_error(error);
                tracing::warn!(chore, error = %chain(error), "engine chore failed; retrying");
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
