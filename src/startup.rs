//! Building the application from settings, serving it, and draining it on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use approvals_core::{ApprovalBackend, BackendError};
use approvals_redis::{RedisBackend, RedisSettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::Authenticator;
use crate::config::{BackendKind, Settings, REDIS_TTL_COMFORT};
use crate::metrics::MetricsHandle;
use crate::policy::{PolicyError, PolicyGate};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// What `backend.kind = "temporal"` (and `approvals worker`) say in a build without the
/// `temporal` feature.
pub const TEMPORAL_NOT_BUILT: &str = "this build does not include the Temporal backend; \
     build with `cargo build --release --features temporal`";

/// The one place that turns `backend.kind` into a backend.
pub async fn build_backend(settings: &Settings) -> Result<Arc<dyn ApprovalBackend>, StartupError> {
    match settings.backend.kind {
        // Checked before connecting anything: half a dual backend would be a silent `redis`.
        #[cfg(not(feature = "temporal"))]
        BackendKind::Dual => Err(StartupError::Unsupported(format!(
            "backend.kind = \"dual\" runs Redis and Temporal side by side: {TEMPORAL_NOT_BUILT}"
        ))),
        #[cfg(feature = "temporal")]
        BackendKind::Dual => {
            use crate::dual::{Connector, DualBackend};
            let (primary, secondary) = match settings.backend.primary {
                Some(BackendKind::Redis) => (BackendKind::Redis, BackendKind::Temporal),
                Some(BackendKind::Temporal) => (BackendKind::Temporal, BackendKind::Redis),
                // Settings::load refuses these; settings built in code may not have been loaded.
                _ => {
                    return Err(StartupError::Unsupported(
                        "backend.kind = \"dual\" needs backend.primary = \"redis\" or \
                         \"temporal\""
                            .into(),
                    ))
                }
            };
            let deadline = settings.backend.secondary_timeout;
            let primary = build_engine(primary, settings).await?;
            // The secondary is best-effort, at start-up too: unreachable, it is connected on use.
            let dual = match build_engine(secondary, settings).await {
                Ok(engine) => DualBackend::new(primary, engine, deadline),
                Err(error) => {
                    tracing::warn!(
                        %error,
                        secondary = secondary.as_str(),
                        "dual: the secondary is unreachable; the primary serves alone meanwhile"
                    );
                    let settings = settings.clone();
                    let connect: Connector = Box::new(move || {
                        let settings = settings.clone();
                        Box::pin(async move {
                            build_engine(secondary, &settings)
                                .await
                                .map_err(|e| match e {
                                    StartupError::Backend(e) => e,
                                    other => BackendError::Unavailable(other.to_string()),
                                })
                        })
                    });
                    DualBackend::connecting(primary, secondary.as_str(), connect, deadline)
                }
            };
            Ok(Arc::new(dual))
        }
        engine => build_engine(engine, settings).await,
    }
}

/// One engine (`redis` or `temporal`) from its section of the settings, whatever
/// `backend.kind` says: `build_backend` uses it, and so do `dual` and `approvals migrate`, which
/// need both.
pub async fn build_engine(
    kind: BackendKind,
    settings: &Settings,
) -> Result<Arc<dyn ApprovalBackend>, StartupError> {
    match kind {
        BackendKind::Redis => {
            let approvals = &settings.approvals;
            let redis = RedisSettings {
                call_timeout: settings.redis.call_timeout,
                pool_size: settings.redis.pool_size,
                decided_retention: approvals.decided_retention,
                expired_retention: approvals.expired_retention,
                default_ttl: approvals.default_ttl,
                ..RedisSettings::new(settings.redis.url.clone())
            };
            Ok(Arc::new(RedisBackend::connect(redis)?))
        }
        #[cfg(feature = "temporal")]
        BackendKind::Temporal => {
            let backend =
                approvals_temporal::TemporalBackend::connect(temporal_settings(settings)).await?;
            Ok(Arc::new(backend))
        }
        #[cfg(not(feature = "temporal"))]
        BackendKind::Temporal => Err(StartupError::Unsupported(format!(
            "backend.kind = \"temporal\" needs the Temporal backend: {TEMPORAL_NOT_BUILT}"
        ))),
        BackendKind::Dual => Err(StartupError::Unsupported(
            "\"dual\" is a pairing of two engines, not an engine".into(),
        )),
    }
}

/// The Temporal client's and worker's settings from `[temporal]`.
#[cfg(feature = "temporal")]
pub fn temporal_settings(settings: &Settings) -> approvals_temporal::TemporalSettings {
    let temporal = &settings.temporal;
    approvals_temporal::TemporalSettings {
        namespace: temporal.namespace.clone(),
        task_queue: temporal.task_queue.clone(),
        call_timeout: temporal.call_timeout,
        scan_timeout: temporal.scan_timeout,
        sticky_queue_timeout: temporal.sticky_queue_timeout,
        ..approvals_temporal::TemporalSettings::new(temporal.address.clone())
    }
}

/// A bound, ready-to-serve application.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let policy = PolicyGate::load(&settings.policy.dir)?;
        tracing::info!(dir = %settings.policy.dir.display(), version = policy.version(), "policy loaded");
        let backend = build_backend(&settings).await?;
        warn_about_long_ttls(&settings);
        let mut ttls: Vec<_> = settings
            .approvals
            .tenant_ttl
            .iter()
            .map(|(t, d)| (t.clone(), *d))
            .collect();
        ttls.push(("*".to_owned(), settings.approvals.default_ttl));
        let state = AppState {
            backend,
            policy: Arc::new(policy),
            auth: Arc::new(Authenticator::new(&settings.auth.tokens)),
            approvals: Arc::new(settings.approvals.clone()),
            body_limit: settings.server.body_limit,
            shutdown: CancellationToken::new(),
            metrics: MetricsHandle::new(settings.approvals.max_ttl(), ttls),
        };
        let addr = settings.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        Ok(Self {
            listener,
            state,
            settings,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops taking connections, answers parked
    /// long-polls, and gives in-flight requests `server.shutdown_grace` to finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            state,
            settings,
        } = self;
        let stop = state.shutdown.clone();
        let approvals = &settings.approvals;
        let background = [
            tokio::spawn(crate::background::sweeper(
                state.backend.clone(),
                approvals.sweep_interval,
                stop.clone(),
            )),
            tokio::spawn(crate::background::pending_stats(
                state.backend.clone(),
                state.metrics.clone(),
                approvals.stats_interval,
                stop.clone(),
            )),
            tokio::spawn(crate::background::adopter(
                state.backend.clone(),
                approvals.adopt_interval,
                stop.clone(),
            )),
        ];
        tracing::info!(addr = %listener.local_addr()?, backend = state.backend.kind(), "serving");
        let app = api::router(state);
        let signalled = stop.clone();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            signalled.cancel();
        });
        let grace = settings.server.shutdown_grace;
        let served = tokio::spawn(async move { serve.await });
        // The drain gets `grace` once shutdown begins; past it, the process stops anyway.
        let result = tokio::select! {
            joined = served => joined.map_err(std::io::Error::other)?,
            () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
                Ok(())
            }
        };
        stop.cancel();
        for task in background {
            let _ = task.await;
        }
        tracing::info!("stopped");
        result
    }
}

fn warn_about_long_ttls(settings: &Settings) {
    if settings.backend.kind != BackendKind::Redis {
        return;
    }
    let long = std::iter::once((
        "approvals.default_ttl".to_owned(),
        settings.approvals.default_ttl,
    ))
    .chain(
        settings
            .approvals
            .tenant_ttl
            .iter()
            .map(|(t, d)| (format!("approvals.tenant_ttl.{t}"), *d)),
    );
    for (key, ttl) in long.filter(|(_, ttl)| *ttl > REDIS_TTL_COMFORT) {
        tracing::warn!(
            key,
            ttl = %humantime::format_duration(ttl),
            "a TTL above 72h on the Redis backend: approvals this long-lived are what the Temporal \
             backend is for (docs/adr/0001-redis-ttl-approval-queue.md, reversal triggers)"
        );
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
