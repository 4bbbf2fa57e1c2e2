//! The service's background loops: expiry sweeper, pending figures, ADR v1 adoption.
//!
//! Each runs on every instance; the backend makes that safe (the sweeper's expiry script is
//! idempotent, adoption is compare-and-set). Each stops when `shutdown` is cancelled.

use std::sync::Arc;
use std::time::Duration;

use approvals_core::{ApprovalBackend, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::metrics::MetricsHandle;

/// Calls `step` every `interval` until shutdown.
async fn every<F, Fut>(interval: Duration, shutdown: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => step().await,
        }
    }
}

/// Records expiries as their deadlines pass.
pub async fn sweeper(
    backend: Arc<dyn ApprovalBackend>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    every(interval, shutdown, || async {
        let now = Timestamp::now();
        let result = backend.expire_due(now).await;
        crate::metrics::sweeper_run(&result, now);
        match result {
            Ok(expired) if expired.is_empty() => {}
            Ok(expired) => tracing::info!(expired = expired.len(), "recorded expiries"),
            Err(error) => {
                crate::metrics::backend_error(&error);
                tracing::warn!(%error, "expiry sweep failed; retrying");
            }
        }
    })
    .await;
}

/// Keeps the pending gauges and age histogram at most `interval` old.
pub async fn pending_stats(
    backend: Arc<dyn ApprovalBackend>,
    metrics: MetricsHandle,
    interval: Duration,
    shutdown: CancellationToken,
) {
    every(interval, shutdown, || async {
        let started = std::time::Instant::now();
        match backend
            .pending_stats(metrics.age_bounds(), Timestamp::now())
            .await
        {
            Ok(stats) => {
                metrics.set_pending(stats, started.elapsed());
                metrics.set_backend_up(true);
            }
            Err(error) => {
                metrics.set_backend_up(false);
                crate::metrics::backend_error(&error);
                tracing::warn!(%error, "could not recompute pending figures");
            }
        }
    })
    .await;
}

/// Adopts records written by the ADR v1 service, at start-up and then periodically.
pub async fn adopter(
    backend: Arc<dyn ApprovalBackend>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    every(interval, shutdown, || async {
        match backend.adopt_foreign_records().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(adopted = n, "adopted ADR v1 records"),
            Err(error) => {
                crate::metrics::backend_error(&error);
                tracing::warn!(%error, "adopting ADR v1 records failed; retrying");
            }
        }
    })
    .await;
}
