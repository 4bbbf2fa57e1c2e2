//! `approvals worker` (feature `temporal`): runs the Temporal worker that executes
//! `ApprovalWorkflow` on the configured task queue, drains it on SIGTERM or ctrl-c, and serves
//! its own `/healthz`, `/readyz` and `/metrics` on `worker.listen`.
//!
//! Expiries happen in the workflows, so on Temporal it is the worker that counts them: its
//! `/metrics` exports `approvals_decisions_total{tenant,outcome="expired"}` and
//! `approvals_time_to_decision_seconds{tenant,outcome="expired"}` (and the expiry lag,
//! `approvals_sweeper_lag_seconds`), the names and labels the API instances export for Redis'
//! sweeper, so sums over both jobs mean the same on either engine. Counted only when Temporal
//! answers (`backend.kind = "temporal"`, or `"dual"` with Temporal primary): a dual soak's
//! secondary copies are counted by the primary's own expiries.
//!
//! The worker's future is `!Send` (the SDK's worker is), so it runs on the calling task (the
//! binary's main task); only the small HTTP server is spawned.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvals_core::ApprovalBackend;
use approvals_temporal::TemporalBackend;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::EngineMetrics;
use crate::config::{BackendChoice, EngineKind, Settings};
use crate::decision_log::DecisionLog;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Cannot start: the listen address (exit 2, as a config error).
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Cannot start: the Temporal frontend (exit 2, as a config error).
    #[error("cannot reach Temporal at {address}")]
    Connect {
        address: String,
        #[source]
        source: approvals_core::BackendError,
    },
    /// The worker failed while running.
    #[error("worker failed")]
    Run(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl WorkerError {
    /// Whether the worker never started (configuration or reachability, exit 2).
    pub fn at_startup(&self) -> bool {
        !matches!(self, Self::Run(_))
    }
}

struct Status {
    settings: approvals_temporal::TemporalSettings,
    /// A client of its own, for `/readyz` (`DescribeNamespace`).
    probe: TemporalBackend,
    draining: AtomicBool,
    started: Instant,
}

/// Runs the worker until `shutdown` resolves, then drains it and stops the HTTP server.
pub async fn run(
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let temporal = settings.temporal.clone();
    // Before anything can be counted.
    crate::metrics::install_recorder();
    // The expiries its workflows record go to the decision log, as the service's own do.
    let shipping_stop = CancellationToken::new();
    let (decision_log, shipping) =
        DecisionLog::start(&settings.decision_log, shipping_stop.clone());
    let events = match settings.backend {
        BackendChoice::Temporal
        | BackendChoice::Dual {
            primary: EngineKind::Temporal,
            ..
        } => EngineMetrics::answering().shipping_to(decision_log),
        BackendChoice::Redis
        | BackendChoice::Dual {
            primary: EngineKind::Redis,
            ..
        } => EngineMetrics::secondary(),
    };
    let addr = settings.worker.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WorkerError::Listen { addr, source })?;
    let listen: SocketAddr = listener.local_addr().unwrap_or(addr);
    let probe = TemporalBackend::connect(temporal.clone())
        .await
        .map_err(|source| WorkerError::Connect {
            address: temporal.address.clone(),
            source,
        })?;
    let status = Arc::new(Status {
        settings: temporal.clone(),
        probe,
        draining: AtomicBool::new(false),
        started: Instant::now(),
    });
    let stop_http = CancellationToken::new();
    let http = tokio::spawn(serve_http(listener, status.clone(), stop_http.clone()));
    tracing::info!(
        address = %temporal.address,
        namespace = %temporal.namespace,
        task_queue = %temporal.task_queue,
        %listen,
        "worker polling"
    );
    let draining = status.clone();
    let result =
        approvals_temporal::run_worker_with_events(temporal, Arc::new(events), async move {
            shutdown.await;
            tracing::info!("shutting down: draining the worker");
            draining.draining.store(true, Ordering::Relaxed);
        })
        .await;
    stop_http.cancel();
    let _ = http.await;
    // After the worker: its last expiries are queued by now (the log bounds its own drain).
    shipping_stop.cancel();
    if let Some(shipping) = shipping {
        let _ = shipping.await;
    }
    match result {
        Ok(()) => {
            tracing::info!("worker stopped");
            Ok(())
        }
        Err(error) => Err(WorkerError::Run(error)),
    }
}

async fn serve_http(listener: TcpListener, status: Arc<Status>, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(status);
    // The same connection limits as the service's API (their defaults).
    let limits = crate::config::ServerSettings::default();
    crate::server::serve(
        listener,
        app,
        &limits,
        async move { stop.cancelled().await },
    )
    .await;
}

/// `200` while the process runs.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `200` while polling and the Temporal frontend answers; `503` when draining or unreachable.
async fn readyz(State(status): State<Arc<Status>>) -> Response {
    if status.draining.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    match status.probe.ping().await {
        Ok(()) => Json(json!({
            "status": "ready",
            "task_queue": status.settings.task_queue,
        }))
        .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "detail": error.to_string()})),
        )
            .into_response(),
    }
}

/// How long a scrape of `/metrics` waits for the Temporal frontend to answer: under
/// Prometheus' default 10 s scrape timeout, and well above a busy frontend's answer (at 500 ms
/// a slow frontend read as every worker gone, and ApprovalsTemporalWorkerMissing paged while
/// they all polled).
const SCRAPE_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Prometheus text: the expiries its workflows recorded, whether it is up and draining, how
/// long it has run, what it polls.
async fn metrics(State(status): State<Arc<Status>>) -> Response {
    // A scrape must not wait on a slow frontend: past this the frontend counts as down.
    let ping = tokio::time::timeout(SCRAPE_PING_TIMEOUT, status.probe.ping()).await;
    let up = i32::from(matches!(ping, Ok(Ok(()))));
    let draining = i32::from(status.draining.load(Ordering::Relaxed));
    let mut out = crate::metrics::render_recorded();
    let _ = writeln!(out, "# HELP approvals_worker_info The worker's namespace and task queue.\n# TYPE approvals_worker_info gauge");
    let _ = writeln!(
        out,
        "approvals_worker_info{{namespace=\"{}\",task_queue=\"{}\"}} 1",
        escape(&status.settings.namespace),
        escape(&status.settings.task_queue)
    );
    let _ = writeln!(out, "# HELP approvals_backend_up Whether the Temporal frontend answered just now.\n# TYPE approvals_backend_up gauge\napprovals_backend_up {up}");
    let _ = writeln!(out, "# HELP approvals_worker_draining 1 once SIGTERM was received.\n# TYPE approvals_worker_draining gauge\napprovals_worker_draining {draining}");
    let _ = writeln!(
        out,
        "# HELP approvals_worker_uptime_seconds Seconds since the worker started.\n# TYPE approvals_worker_uptime_seconds gauge\napprovals_worker_uptime_seconds {}",
        status.started.elapsed().as_secs_f64()
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
