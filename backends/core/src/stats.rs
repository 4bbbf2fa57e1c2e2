//! What is pending right now, per tenant: the input of the pending gauges and age histogram.

use crate::TenantId;

/// Pending figures for every tenant that has had approvals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingStats {
    pub tenants: Vec<TenantPending>,
    /// How far past its deadline the most overdue pending approval is whose expiry the engine
    /// has not recorded yet, in seconds (0 when none is): its sweeper or timers are behind.
    pub overdue_seconds: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantPending {
    pub tenant: TenantId,
    pub count: u64,
    /// Sum of the ages of the pending approvals, in seconds.
    pub age_sum_seconds: f64,
    /// Age of the oldest pending approval, in seconds (0 when none is pending).
    pub oldest_age_seconds: f64,
    /// Cumulative: `le[i]` approvals are at most `bounds[i]` old (the bounds the caller asked for).
    pub le: Vec<u64>,
}
