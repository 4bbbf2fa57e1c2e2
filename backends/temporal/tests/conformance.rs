//! The shared conformance suite against a real Temporal dev server (one per test binary) and an
//! in-process worker.

mod support;

use std::sync::Arc;

use approvals_core::RecordTransfer;
use approvals_temporal::TemporalBackend;

/// A backend client on this test's runtime, talking to the binary's server and worker. No
/// sweeper: the workflows expire themselves.
async fn temporal_backend() -> (Arc<dyn RecordTransfer>, ()) {
    let settings = tokio::task::spawn_blocking(support::settings)
        .await
        .expect("dev server");
    let backend = TemporalBackend::connect(settings).await.expect("backend");
    (Arc::new(backend), ())
}

approvals_core::conformance_tests!(temporal_backend);
