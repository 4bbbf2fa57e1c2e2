//! The pending figures from visibility: every running approval workflow, grouped by tenant.

use std::collections::BTreeMap;
use std::time::Duration;

use approvals_core::{BackendError, PendingStats, Status, TenantId, TenantPending, Timestamp};

use crate::backend::{TemporalBackend, WORKFLOW_TYPE};

pub(crate) async fn pending_stats(
    backend: &TemporalBackend,
    bounds: &[Duration],
    now: Timestamp,
) -> Result<PendingStats, BackendError> {
    let query = format!("WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'");
    let mut per_tenant: BTreeMap<TenantId, TenantPending> = BTreeMap::new();
    let stored = backend.visible_as_stored("stats", query).await?;
    // Still running and pending past its deadline as the workflow itself says: its timer has
    // not closed it (no worker polls, or workflow tasks keep failing). Read before this
    // process's recent writes are merged in: those add settled records (an expiry a reviewer
    // or a waiter met), which read as overdue by hours for 30 s.
    let overdue = stored
        .iter()
        .map(|row| &row.approval)
        .filter(|a| a.status == Status::Pending && a.expires_at <= now)
        .map(|a| a.expires_at.elapsed_at(now))
        .max()
        .unwrap_or(Duration::ZERO);
    for row in backend.overlaid(stored, |_| true, now) {
        let approval = row.approval;
        if approval.status != Status::Pending {
            continue;
        }
        let age = approval.submitted_at.elapsed_at(now);
        let entry = per_tenant
            .entry(approval.tenant.clone())
            .or_insert_with(|| TenantPending {
                tenant: approval.tenant.clone(),
                count: 0,
                age_sum_seconds: 0.0,
                oldest_age_seconds: 0.0,
                le: vec![0; bounds.len()],
            });
        entry.count += 1;
        entry.age_sum_seconds += age.as_secs_f64();
        entry.oldest_age_seconds = entry.oldest_age_seconds.max(age.as_secs_f64());
        for (slot, bound) in entry.le.iter_mut().zip(bounds) {
            if age <= *bound {
                *slot += 1;
            }
        }
    }
    Ok(PendingStats {
        tenants: per_tenant.into_values().collect(),
        overdue_seconds: overdue.as_secs_f64(),
    })
}
