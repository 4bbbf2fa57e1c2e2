//! The worker that runs `ApprovalWorkflow` and `DecisionLogWorkflow`: what
//! `approvals worker --config FILE` calls.

use std::future::Future;
use std::sync::Arc;

use approvals_core::EngineEvents;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

use crate::client::{self, BoxError};
use crate::expiry::{ExpiryActivities, Uncounted};
use crate::settings::TemporalSettings;
use crate::workflow::{ApprovalWorkflow, DecisionLogWorkflow};

/// [`run_worker_with_events`] with expiries counted nowhere (tests, tools).
pub async fn run_worker(
    settings: TemporalSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    run_worker_with_events(settings, Arc::new(Uncounted), shutdown).await
}

/// Polls `settings.task_queue` (and the decision log's own queue) until `shutdown` resolves, then drains gracefully (in-flight
/// workflow tasks finish, the sticky queue is released so another worker takes over at once).
/// Every approval a workflow on this worker expires is reported to `events`
/// ([`EngineEvents::expired`]) once, from the `count_expiry` local activity.
///
/// The returned future is `!Send` (the SDK's worker is): drive it on the main task
/// (`#[tokio::main]` / `Runtime::block_on`), never with `tokio::spawn`. It must run inside a
/// tokio runtime, which it also uses for its own connection.
pub async fn run_worker_with_events(
    settings: TemporalSettings,
    events: Arc<dyn EngineEvents>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let runtime = Runtime::from_current_tokio(Default::default())?;
    let client = client::connect(&settings).await?;
    let approvals = WorkerOptions::new(settings.task_queue.clone())
        .register_workflow::<ApprovalWorkflow>()?
        // Builds before the decision log had a queue of its own started its executions here:
        // a backlog from then (a worker outage, old API instances during the rollout) would
        // fail its tasks for ever on a worker that does not know the type.
        .register_workflow::<DecisionLogWorkflow>()?
        .register_activities(ExpiryActivities::new(events))
        .sticky_queue_schedule_to_start_timeout(settings.sticky_queue_timeout)
        .build();
    // The decision log's executions on a queue of their own (see
    // `TemporalSettings::decision_log_task_queue`); one task each, nothing to keep sticky.
    let decision_log = WorkerOptions::new(settings.decision_log_task_queue())
        .register_workflow::<DecisionLogWorkflow>()?
        .build();
    let mut approvals = Worker::new(&runtime, client.clone(), approvals)?;
    let mut decision_log = Worker::new(&runtime, client, decision_log)?;
    let stops = [approvals.shutdown_handle(), decision_log.shutdown_handle()];
    let run = futures_util::future::try_join(approvals.run(), decision_log.run());
    let mut run = std::pin::pin!(run);
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        result = &mut run => return result.map(drop).map_err(Into::into),
        () = &mut shutdown => {
            tracing::info!(task_queue = %settings.task_queue, "worker draining");
            for stop in &stops {
                stop();
            }
        }
    }
    run.await.map(drop).map_err(Into::into)
}
