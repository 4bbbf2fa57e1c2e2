//! Counting expiries: the one side effect of `ApprovalWorkflow` outside Temporal.
//!
//! When the workflow moves an approval to `expired` (its TTL timer fired, or a decision arrived
//! past the deadline), it runs the local activity [`ExpiryActivities::count_expiry`] once, in
//! the worker process, which reports the expiry to the [`EngineEvents`] handed to
//! [`crate::run_worker_with_events`] (the service passes its metrics, so the worker's `/metrics`
//! counts it like the Redis sweeper's expiries on the API's). A local activity's completion is
//! recorded in history as a marker: a replay (a worker restart, a cache eviction, a query on a
//! closed workflow) reads the marker and never runs the body again. The body can run twice only
//! if the worker dies after running it and before completing that workflow task (the task is
//! retried on another worker): at least once, in practice once.

use std::sync::Arc;
use std::time::Duration;

use approvals_core::{Approval, BackendError, EngineEvents, Timestamp};
use serde::{Deserialize, Serialize};
use temporalio_common::RetryPolicy;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::LocalActivityOptions;

use crate::record::ApprovalRecord;

/// The `ctx.patched` id guarding the expiry count: histories recorded before it replay without
/// the local activity (no marker, `patched` is false on replay), workflows started before it
/// and expiring after it are counted.
pub const COUNT_EXPIRY_PATCH: &str = "count-expiry";

/// The activity type in history (a stable name, not the Rust path).
pub const COUNT_EXPIRY_ACTIVITY: &str = "count_expiry";

/// What the local activity reports: the expired record and when the workflow expired it
/// (workflow time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpiryInput {
    pub approval: ApprovalRecord,
    pub recorded_at: Timestamp,
}

/// The worker's activities: reports what the workflows did to `events`.
pub struct ExpiryActivities {
    events: Arc<dyn EngineEvents>,
}

impl ExpiryActivities {
    pub fn new(events: Arc<dyn EngineEvents>) -> Self {
        Self { events }
    }
}

#[activities]
impl ExpiryActivities {
    /// Reports one expiry. Never fails: counting is best effort and must not fail the workflow.
    #[activity(name = COUNT_EXPIRY_ACTIVITY)]
    pub async fn count_expiry(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: ExpiryInput,
    ) -> Result<(), ActivityError> {
        let approval = Approval::from(input.approval);
        self.events.expired(&approval, input.recorded_at);
        Ok(())
    }
}

/// One attempt, a short deadline: a retry could count twice, and a count that does not happen
/// in a second is not worth holding the workflow task for.
pub fn count_expiry_options() -> LocalActivityOptions {
    LocalActivityOptions::builder()
        .start_to_close_timeout(Duration::from_secs(2))
        .schedule_to_close_timeout(Duration::from_secs(5))
        .retry_policy(RetryPolicy::builder().maximum_attempts(1).build())
        .build()
}

/// For a worker whose expiries nobody counts ([`crate::run_worker`]).
pub struct Uncounted;

impl EngineEvents for Uncounted {
    fn expired(&self, approval: &Approval, _recorded_at: Timestamp) {
        tracing::debug!(tenant = %approval.tenant, id = %approval.id, "expiry not counted");
    }

    fn chore_finished(&self, _chore: &'static str, _result: Result<usize, &BackendError>) {}

    fn unreadable(&self, _key: &str, _reason: &str) {}
}
