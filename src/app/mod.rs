//! The application layer: every use case of the service, whatever surface calls it.
//!
//! [`Approvals`] owns the rules — who may do what in which tenant, what the policy sees, how a
//! repeated `request_id` is answered, which deadline an approval gets — and the metrics and
//! logs each use case emits. The HTTP handlers (`api`), the CLI and every surface to come call
//! it; none of them talks to an engine or the policy directly.
//!
//! Dependencies point one way: surfaces → `app` → (`policy`, `auth`, `metrics`, the engine
//! contract in `approvals-core`). `app` knows no engine by name and no HTTP type.

mod error;
mod evaluators;
mod events;
mod figures;
mod limits;
mod live;
mod policy_admin;
mod recent_ids;
mod refusals;
mod review;
mod single_flight;
mod submit;
mod tenant_policies;

use std::sync::Arc;

use approvals_core::{ApprovalBackend, BackendError, TenantId};
use evaluators::Evaluators;
use single_flight::{Answer, SingleFlight};
use tokio_util::sync::CancellationToken;

pub use error::AppError;
pub use events::EngineMetrics;
pub use limits::InputLimits;
pub use live::{LiveEvent, LiveKind, LiveStream};
pub use policy_admin::{policy_tag, PolicyView, Precondition, Uploaded, MAX_BUNDLE_FILES};
pub use recent_ids::RecentIds;
pub use review::{AuditQuery, ListQuery, MAX_REASON_CHARS};
pub use submit::{SubmitRequest, Submitted};
pub use tenant_policies::{TenantPolicies, DEFAULT_BUNDLES_KEPT};

use crate::auth::{Permission, Principal};
use crate::config::ApprovalSettings;
use crate::decision_log::DecisionLog;
use crate::metrics::{ErrorSource, MetricsHandle};

/// The service's use cases. Cheap to share (`Arc`); one per running service.
pub struct Approvals {
    engine: Arc<dyn ApprovalBackend>,
    /// Which policy answers for each tenant (its own bundle, or the platform default).
    policies: Arc<TenantPolicies>,
    /// Bundle validations run one at a time.
    uploads: Arc<tokio::sync::Semaphore>,
    /// Tenants with an upload waiting for its turn or being validated on this instance: one
    /// each, so that one tenant's burst of uploads cannot fill the queue ahead of the others.
    uploading: Arc<std::sync::Mutex<std::collections::HashSet<TenantId>>>,
    /// Bundles refused lately: the same upload again is answered at once.
    refusals: Arc<refusals::RecentRefusals>,
    settings: ApprovalSettings,
    limits: InputLimits,
    /// Where policy evaluations run: threads of their own, never the request workers.
    evaluators: Evaluators,
    metrics: MetricsHandle,
    /// Cancelled on shutdown: long-polls answer at once so the drain is quick.
    shutdown: CancellationToken,
    /// Where recorded audit events are copied to (a SIEM), never waited for.
    decision_log: DecisionLog,
    /// Live event streams open on this instance, per tenant (bounded).
    live_streams: live::LiveStreams,
    /// Set at SIGTERM: `/readyz` answers 503 from then on, while requests are still served
    /// for `server.shutdown_delay`.
    draining: std::sync::atomic::AtomicBool,
    /// `/readyz`'s engine probe: one in flight, shared by the callers waiting for it.
    /// `/readyz`'s engine probe, the failure kept as its message (`single_flight`).
    readiness: SingleFlight<Result<(), String>>,
    /// The `/metrics` text (`single_flight`).
    metrics_text: SingleFlight<axum::body::Bytes>,
    /// Store writes running to their end on tasks of their own (`to_the_end`): the drain
    /// waits for them, or an event one offers after the decision log stopped is dropped.
    writes: tokio_util::task::TaskTracker,
}

impl Approvals {
    pub fn new(
        engine: Arc<dyn ApprovalBackend>,
        policies: Arc<TenantPolicies>,
        settings: ApprovalSettings,
        limits: InputLimits,
        metrics: MetricsHandle,
        shutdown: CancellationToken,
        decision_log: DecisionLog,
    ) -> Self {
        let concurrency = match limits.policy_concurrency {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        // Start-up: a process that cannot start a few threads cannot serve either.
        let evaluators = Evaluators::start(concurrency).expect("policy evaluation threads");
        Self {
            engine,
            policies,
            uploads: Arc::new(tokio::sync::Semaphore::new(1)),
            uploading: Arc::default(),
            refusals: Arc::default(),
            settings,
            limits,
            evaluators,
            metrics,
            shutdown,
            decision_log,
            live_streams: live::LiveStreams::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            readiness: SingleFlight::new(Ok(())),
            metrics_text: SingleFlight::new(axum::body::Bytes::new()),
            writes: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Waits, at most `budget`, for the store writes still running after their requests
    /// ended (a `408` leaves its write running). False if some were still running.
    pub async fn writes_finished(&self, budget: std::time::Duration) -> bool {
        self.writes.close();
        tokio::time::timeout(budget, self.writes.wait())
            .await
            .is_ok()
    }

    /// The bounds on what a submit may carry (`[limits]`).
    pub fn input_limits(&self) -> &InputLimits {
        &self.limits
    }

    /// The engine's short name (`redis`, `temporal`, `dual`), for logs and `/readyz`.
    pub fn engine_kind(&self) -> &'static str {
        self.engine.kind()
    }

    /// Ready when the engine answers and the tenants' policies have been read once. Until
    /// then every submit answers 503 (the policy to apply is unknown): with Temporal answering
    /// and a Redis tenant store that was down at start, `/readyz` said ready all the same.
    pub async fn ready(&self) -> Result<(), AppError> {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            // Not the engine's fault: neither pinged nor counted as its error.
            return Err(AppError::ShuttingDown);
        }
        let kept = |answered: &Result<(), BackendError>| {
            answered.as_ref().map(|_| ()).map_err(|e| chain(e))
        };
        match self.readiness.run(|| self.engine.ping(), kept).await {
            Answer::Ran(answered) => {
                self.metrics.set_backend_up(answered.is_ok());
                answered.map_err(|e| self.engine_failed_in(e, ErrorSource::Readiness))?;
            }
            // Counted and logged once, by the caller that probed.
            Answer::Shared(Err(reason)) => {
                return Err(AppError::Unavailable(BackendError::unavailable(
                    "ping", reason,
                )));
            }
            Answer::Shared(Ok(())) => {}
        }
        if !self.policies.synced() {
            return Err(AppError::Unavailable(BackendError::unavailable(
                "policy_states",
                "the tenants' policies have not been read yet",
            )));
        }
        Ok(())
    }

    /// From now on `/readyz` says not ready: the load balancer stops sending here.
    pub fn begin_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// `/metrics`' text, shared with the callers that ask while it is rendered
    /// (`single_flight`).
    pub async fn metrics_text(&self) -> axum::body::Bytes {
        let render = || async { axum::body::Bytes::from(self.render_metrics()) };
        match self
            .metrics_text
            .run(render, axum::body::Bytes::clone)
            .await
        {
            Answer::Ran(text) | Answer::Shared(text) => text,
        }
    }

    /// `/metrics`: the recorder, the latest pending figures and the engine's own status.
    fn render_metrics(&self) -> String {
        let mut text = self.metrics.render(&self.engine.status());
        // `/readyz`'s other condition: an instance whose backend answers but that never read
        // the tenants' policies (a tenant store down beside a Temporal engine) answered 503
        // with no figure saying why, and a rolling deploy stalled on it without a page.
        text.push_str(&format!(
            "# HELP approvals_policies_synced Whether this instance has read the tenants' policies since it started (/readyz answers 503 until it has).\n\
             # TYPE approvals_policies_synced gauge\napprovals_policies_synced {}\n",
            u8::from(self.policies.synced())
        ));
        text
    }

    /// Refuses unless `caller` may do `permission` in `tenant`.
    fn authorize(
        &self,
        caller: &Principal,
        permission: Permission,
        tenant: &TenantId,
    ) -> Result<(), AppError> {
        if caller.may(permission, tenant) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "{} ({}) may not do this in tenant {tenant}",
                caller.subject,
                caller.role.as_str()
            )))
        }
    }

    /// Counts and logs an engine failure where it happened, and says what it means to the
    /// caller. The engine's own words go to the log, never to the client.
    fn engine_failed(&self, error: BackendError) -> AppError {
        self.engine_failed_in(error, ErrorSource::Request)
    }

    /// As [`Self::engine_failed`], counted under `source`.
    fn engine_failed_in(&self, error: BackendError, source: ErrorSource) -> AppError {
        match error {
            BackendError::InvalidCursor => {
                AppError::InvalidOption("cursor: not a cursor this service handed out".into())
            }
            // A background task logs its failures itself, once a minute while they last: a
            // line per failed call here would flood the log every pass.
            BackendError::Unavailable { .. } | BackendError::Timeout(_) => {
                crate::metrics::backend_error(&error, source);
                if matches!(source, ErrorSource::Chore) {
                    tracing::debug!(error = %chain(&error), "engine call failed");
                } else {
                    tracing::warn!(error = %chain(&error), "engine call failed");
                }
                AppError::Unavailable(error)
            }
            BackendError::Corrupt { .. } => {
                crate::metrics::backend_error(&error, source);
                if matches!(source, ErrorSource::Chore) {
                    tracing::debug!(error = %chain(&error), "engine returned unreadable data");
                } else {
                    tracing::error!(error = %chain(&error), "engine returned unreadable data");
                }
                AppError::Internal(error.into())
            }
        }
    }
}

impl Approvals {
    /// Runs `write` (a store write on the engine and what must follow it: the decision log,
    /// the counters) to its end on a task of its own, in the request's span, even if the
    /// request that awaits it is dropped meanwhile (its deadline, `408`, or its client gone).
    /// Cut there, a write Redis had already taken landed, but its event never reached the
    /// decision log and was never counted.
    async fn to_the_end<T, Write>(
        &self,
        write: impl FnOnce(Arc<dyn ApprovalBackend>, DecisionLog) -> Write,
    ) -> Result<T, AppError>
    where
        T: Send + 'static,
        Write: std::future::Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        use tracing::Instrument as _;
        let write = write(self.engine.clone(), self.decision_log.clone());
        let result = match self.writes.spawn(write.in_current_span()).await {
            Ok(result) => result,
            Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
            // The runtime is shutting down.
            Err(failed) => Err(BackendError::unavailable("write", failed)),
        };
        result.map_err(|e| self.engine_failed(e))
    }
}

/// An error with its sources, `outer: inner: innermost`, for a log line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
