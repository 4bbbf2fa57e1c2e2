//! What engines do by themselves (Redis' sweeper recording expiries), counted like the use
//! cases count theirs.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use approvals_core::{
    Approval, AuditEntry, BackendError, EngineEvents, FailureLog, RepeatedFailure, Timestamp,
};

use super::chain;
use crate::decision_log::DecisionLog;

/// Records an engine's own expiries and chore passes in the service's metrics.
pub struct EngineMetrics {
    /// Whether this engine is the one the service answers from. A dual soak's secondary
    /// expires its own copies of the primary's approvals: counting them would count each
    /// expiry twice, and its failures are the dual backend's to report.
    answering: bool,
    /// Each chore's failures: a chore that fails every 250 ms while Redis is down is logged
    /// when it starts failing, once a minute with a count, and when it recovers, not on every
    /// pass (the metric counts each).
    failing: Mutex<HashMap<&'static str, RepeatedFailure>>,
    /// Where the expiries this engine records are shipped too, like the events of requests.
    decision_log: Option<DecisionLog>,
}

impl EngineMetrics {
    /// For the engine the service answers from.
    pub fn answering() -> Self {
        Self {
            answering: true,
            failing: Mutex::default(),
            decision_log: None,
        }
    }

    /// Ships the expiries it records to `log` (a SIEM's copy of the audit lacked them).
    pub fn shipping_to(self, log: DecisionLog) -> Self {
        Self {
            decision_log: Some(log),
            ..self
        }
    }

    /// For a dual soak's secondary: logged, not counted.
    pub fn secondary() -> Self {
        Self {
            answering: false,
            failing: Mutex::default(),
            decision_log: None,
        }
    }

    /// What to log about this pass of `chore`.
    fn log_of(&self, chore: &'static str, failed: bool) -> FailureLog {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        let state = failing.entry(chore).or_default();
        if failed {
            state.failed()
        } else {
            state.succeeded()
        }
    }
}

impl EngineEvents for EngineMetrics {
    fn expired(&self, approval: &Approval, recorded_at: Timestamp) {
        if self.answering {
            crate::metrics::expired(approval, recorded_at);
            if let Some(log) = &self.decision_log {
                log.offer(&AuditEntry::expired(approval, recorded_at));
            }
        }
    }

    fn chore_finished(&self, chore: &'static str, result: Result<usize, &BackendError>) {
        if self.answering {
            crate::metrics::chore_run(chore, result.is_ok());
        }
        let log = self.log_of(chore, result.is_err());
        match result {
            Ok(n) if chore == "adopt" && n > 0 => {
                tracing::info!(adopted = n, "adopted ADR v1 records")
            }
            Ok(_) => {
                if let FailureLog::Recovered { failures } = log {
                    tracing::info!(chore, failures, "engine chore succeeds again");
                }
            }
            Err(error) if self.answering => {
                crate::metrics::backend_error(error, crate::metrics::ErrorSource::Chore);
                match log {
                    FailureLog::Started => tracing::warn!(chore, error = %chain(error),
                        "engine chore failing; retrying (logged again once a minute while it fails)"),
                    FailureLog::StillFailing { failures } => tracing::warn!(chore, failures,
                        error = %chain(error), "engine chore still failing"),
                    FailureLog::Quiet | FailureLog::Recovered { .. } => {}
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
    fn each_chore_has_its_own_failure_log() {
        let events = EngineMetrics::answering();
        assert_eq!(events.log_of("sweep", true), FailureLog::Started);
        assert_eq!(events.log_of("sweep", true), FailureLog::Quiet);
        assert_eq!(events.log_of("adopt", true), FailureLog::Started);
        assert_eq!(
            events.log_of("sweep", false),
            FailureLog::Recovered { failures: 2 }
        );
        assert_eq!(events.log_of("sweep", false), FailureLog::Quiet);
    }
}
