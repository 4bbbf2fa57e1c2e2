//! Building the application from settings, serving it, and draining it on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::app::{Approvals, EngineMetrics, TenantPolicies};
use crate::auth::Authenticator;
use crate::config::{BackendChoice, Settings, REDIS_TTL_COMFORT};
use crate::decision_log::DecisionLog;
use crate::engines::{EngineError, RunningEngine};
use crate::metrics::MetricsHandle;
use crate::policy::{PolicyError, PolicyGate};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("webhooks: {0}")]
    Notifications(String),
    #[error("policy.sandbox: {0}")]
    Sandbox(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where tenants' bundles are evaluated: children of `policy.sandbox.binary`, or of this very
/// binary; `None` when the sandbox is off.
///
/// One child is started and tried before serving: a sandbox that cannot work (a wrong
/// `binary`, another version of it, a memory limit too small to start in) stops the service
/// with the reason. Otherwise every tenant's bundle failed closed and every upload was refused
/// as `policy_invalid`, sending compliance teams to debug bundles that were fine, while
/// `/readyz` stayed green.
async fn sandbox(
    settings: &crate::config::SandboxSettings,
    used: bool,
) -> Result<Option<Arc<crate::policy::sandbox::Sandbox>>, StartupError> {
    if !settings.enabled {
        tracing::warn!("policy.sandbox.enabled = false: tenants' bundles run in this process, where one that allocates without bound can stop it (ADR-0019)");
        return Ok(None);
    }
    let binary = match &settings.binary {
        Some(binary) => binary.clone(),
        // The running binary itself, not its path: a deploy that removes or replaces the file
        // before the restart left every later child unstartable, or of another version.
        None if cfg!(target_os = "linux") => "/proc/self/exe".into(),
        None => std::env::current_exe()
            .map_err(|e| StartupError::Sandbox(format!("this binary's path: {e}")))?,
    };
    let sandbox = Arc::new(crate::policy::sandbox::Sandbox::new(
        binary,
        settings.memory_limit_mib.saturating_mul(1 << 20),
    ));
    // No tenant bundles here (Temporal without a Redis tenant store): nothing runs in one.
    if !used {
        return Ok(Some(sandbox));
    }
    let tried = sandbox.clone();
    let probe = tokio::task::spawn_blocking(move || tried.probe())
        .await
        .map_err(|e| e.to_string())
        .and_then(|probed| probed);
    if let Err(reason) = probe {
        return Err(StartupError::Sandbox(format!(
            "a child of binary = {} with memory_limit_mib = {} does not work: {reason}",
            sandbox.binary.display(),
            settings.memory_limit_mib
        )));
    }
    Ok(Some(sandbox))
}

/// A bound, ready-to-serve application.
pub struct Application {
    listener: TcpListener,
    /// `server.metrics_listen`'s, when set.
    metrics_listener: Option<TcpListener>,
    app: Arc<Approvals>,
    policies: Arc<TenantPolicies>,
    /// The decision log's shipping task, when a sink is configured, and what stops it: only
    /// once the requests have drained, which record events until their last moment.
    shipping: Option<tokio::task::JoinHandle<()>>,
    shipping_stop: CancellationToken,
    engine: RunningEngine,
    state: AppState,
    settings: Settings,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // Before anything can be counted: the engine's chores start below, and a sweeper's
        // first pass records a restart's backlog of expiries at once.
        crate::metrics::install_recorder();
        // Before the first policy sync too: a bundle that fails to load there made its failure
        // counter's series start at 1, no increase, and ApprovalsPolicyReloadFailed waited for
        // the next failure, five minutes later.
        crate::metrics::rare_failures_at_zero();
        // The ports before the engine: an instance that cannot listen must not start its
        // chores first. Its sweeper's first pass recorded a restart's backlog of expiries, and
        // the process then exited before shipping or counting them (no other instance ever
        // would: only the one that records an expiry ships it).
        let addr = settings.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let metrics_listener = match settings.server.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?,
            ),
            None => None,
        };
        let policy = PolicyGate::load(&settings.policy.dir)?
            .with_budget(settings.limits.policy_instructions)
            .confirming_allows(settings.policy.confirm_allows);
        tracing::info!(dir = %settings.policy.dir.display(), version = policy.version(), "policy loaded");
        let sandbox = sandbox(&settings.policy.sandbox, settings.keeps_tenant_policies()).await?;
        let shipping_stop = CancellationToken::new();
        let (decision_log, shipping) =
            DecisionLog::start(&settings.decision_log, shipping_stop.clone());
        let engine = crate::engines::start(
            &settings,
            Arc::new(EngineMetrics::answering().shipping_to(decision_log.clone())),
            Arc::new(EngineMetrics::secondary()),
        )
        .await
        // No shipping task left behind by an engine that did not start.
        .inspect_err(|_| shipping_stop.cancel())?;
        warn_about_long_ttls(&settings);
        for caution in settings.cautions() {
            tracing::warn!("{caution}");
        }
        if settings.auth.tokens.is_empty() {
            tracing::warn!(
                "no [[auth.tokens]] configured: every /v1 call will answer 401 \
                 (mint one with `approvals token new`)"
            );
        }
        let mut ttls: Vec<_> = settings
            .approvals
            .tenant_ttl
            .iter()
            .map(|(t, d)| (t.clone(), *d))
            .collect();
        ttls.push(("*".to_owned(), settings.approvals.default_ttl));
        let shutdown = CancellationToken::new();
        let policies = Arc::new(
            TenantPolicies::new(
                Arc::new(policy),
                engine.policy_store.clone(),
                settings.limits.policy_instructions,
            )
            .keeping_bundles(settings.policy.max_stored_bundles)
            .confirming_allows(settings.policy.confirm_allows)
            .isolating_in(sandbox),
        );
        // Before serving: a tenant with its own bundle must never be answered by the default.
        // If the store cannot be read now, submits answer 503 until the reload loop succeeds.
        if let Err(error) = policies.sync().await {
            tracing::warn!(error = %crate::app::chain(&error),
                "cannot read the tenants' policies yet; submits answer 503 until it can");
        }
        let app = Arc::new(Approvals::new(
            engine.backend.clone(),
            policies.clone(),
            settings.approvals.clone(),
            settings.limits.clone(),
            MetricsHandle::new(settings.approvals.max_ttl(), ttls).with_engine(
                settings.backend.kind(),
                match &settings.backend {
                    BackendChoice::Dual { primary, .. } => primary.as_str(),
                    _ => "",
                },
            ),
            shutdown.clone(),
            decision_log,
        ));
        // Webhooks live beside the tenants' bundles, in Redis: only where that store exists.
        let notifier = match &engine.policy_store {
            Some(_) => {
                let store = crate::notify::store::Store::connect(
                    &settings.redis.url,
                    settings.redis.call_timeout,
                )
                .await
                .map_err(|e| StartupError::Notifications(e.to_string()))?;
                Some(Arc::new(crate::notify::Notifier::new(
                    store,
                    app.clone(),
                    settings.notifications.clone(),
                    settings.ui.public_url.clone(),
                )))
            }
            None => None,
        };
        let state = AppState::new(crate::api::Services {
            app: app.clone(),
            auth: Arc::new(Authenticator::new(&settings.auth.tokens)),
            body_limit: settings.server.body_limit,
            bundle_limit: settings.policy.max_bundle_bytes,
            metrics_elsewhere: settings.server.metrics_listen.is_some(),
            request_timeout: settings.server.request_timeout,
            access_log: settings.server.access_log,
            notifier: notifier.clone(),
            caller_slots: crate::api::CallerSlots::new(
                settings.limits.max_requests_per_caller,
                settings.limits.max_long_polls_per_caller,
            ),
        });
        Ok(Self {
            listener,
            metrics_listener,
            app,
            policies,
            shipping,
            shipping_stop,
            engine,
            state,
            settings,
            shutdown,
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
            metrics_listener,
            app,
            policies,
            shipping,
            shipping_stop,
            engine,
            state,
            settings,
            shutdown: stop,
        } = self;
        let reloads =
            tokio::spawn(policies.keep_in_sync(settings.policy.reload_interval, stop.clone()));
        let figures = {
            let app = app.clone();
            let interval = settings.approvals.stats_interval;
            tokio::spawn(async move { app.keep_figures_fresh(interval).await })
        };
        let notifications = match (&state.notifier, settings.notifications.enabled) {
            (Some(notifier), true) => Some(tokio::spawn(notifier.clone().run(stop.clone()))),
            _ => None,
        };
        tracing::info!(addr = %listener.local_addr()?, backend = app.engine_kind(), "serving");
        if settings.ui.enabled && settings.ui.session_secret.is_none() {
            tracing::warn!(
                "ui.session_secret is not set: inbox sign-ins end when this instance restarts \
                 and are not valid on other instances (set it, the same on every instance)"
            );
        }
        // Served with the API's connection limits, through the drain (a scrape then still
        // sees it), until the API has stopped.
        let metrics_stop = CancellationToken::new();
        let metrics_served = metrics_listener.map(|listener| {
            let (router, server, stop) = (
                api::metrics_router(state.clone()),
                settings.server.clone(),
                metrics_stop.clone(),
            );
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving /metrics (server.metrics_listen)");
            }
            tokio::spawn(async move {
                crate::server::serve(listener, router, &server, stop.cancelled_owned()).await;
            })
        });
        let app_handle = app.clone();
        let app = api::router(state, &settings.ui);
        let signalled = stop.clone();
        let server = settings.server.clone();
        let grace = server.shutdown_grace;
        let delay = server.shutdown_delay;
        let draining = app_handle.clone();
        let cut_requests = CancellationToken::new();
        let cut_short = cut_requests.clone();
        let served = tokio::spawn(async move {
            let shutdown = async move {
                shutdown.await;
                draining.begin_draining();
                if !delay.is_zero() {
                    // New connections still come while the load balancer catches up: refused,
                    // they would be errors its health checks never saw. A second signal (an
                    // operator's ctrl-c) cuts the delay short.
                    tracing::info!(
                        ?delay,
                        "shutting down: not ready; serving for server.shutdown_delay"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown_signal() => {
                            tracing::info!("a second signal: the drain begins now");
                        }
                    }
                }
                // Listened for from before the drain begins (a listener hears only signals
                // sent after it exists): one sent right after this line must not be lost.
                let second = shutdown_signal();
                tokio::spawn(async move {
                    second.await;
                    cut_short.cancel();
                });
                tracing::info!("shutting down: draining in-flight requests");
                signalled.cancel();
            };
            crate::server::serve(listener, app, &server, shutdown).await;
        });
        // The drain gets `grace` once shutdown begins; past it, the process stops anyway. A
        // signal during the drain (an operator's ctrl-c) ends it at once: the handlers stay
        // installed, so it was swallowed, and only SIGKILL cut a stuck drain short, before
        // the decision log was flushed. Listened for only once the drain is about to begin
        // (`cut_short`): the signal that began it is not heard again.
        let result = tokio::select! {
            joined = served => joined.map_err(std::io::Error::other),
            () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
                Ok(())
            }
            () = cut_requests.cancelled() => {
                tracing::warn!("a second signal: in-flight requests are cut short");
                Ok(())
            }
        };
        stop.cancel();
        metrics_stop.cancel();
        if let Some(metrics_served) = metrics_served {
            // A scrape finishes at once; a connection that does not is not waited for long
            // (it had a whole `grace` again, past the exit time the README promises).
            let _ = tokio::time::timeout(METRICS_DRAIN.min(grace), metrics_served).await;
        }
        let _ = figures.await;
        // Webhook attempts and store writes still in flight end side by side: one after the
        // other they overran the kill time the README promises.
        let webhooks_done = async {
            let Some(mut notifications) = notifications else {
                return;
            };
            // Attempts in flight finish within their own timeout; past that (and a margin for
            // the lock release), the deliveries left are leased and retried by another instance.
            let budget = settings.notifications.request_timeout + Duration::from_secs(3);
            if tokio::time::timeout(budget, &mut notifications)
                .await
                .is_err()
            {
                notifications.abort();
                tracing::warn!(
                    ?budget,
                    "webhook deliveries still in flight at shutdown; they are retried when \
                     their lease runs out"
                );
            }
        };
        // Writes whose request ended first (a `408`) offer their event when they land: the
        // shipping must still be running then. Each is bounded by its engine's call deadline,
        // so that long (and never past the grace again) is enough.
        let writes = (settings
            .redis
            .call_timeout
            .max(settings.temporal.call_timeout)
            + Duration::from_secs(1))
        .min(grace);
        let writes_done = async {
            if !app_handle.writes_finished(writes).await {
                tracing::warn!(
                    ?writes,
                    "store writes still running at shutdown; their events are not shipped"
                );
            }
        };
        tokio::join!(webhooks_done, writes_done);
        let _ = reloads.await;
        // The engine's chores before the shipping: its sweeper records expiries until it
        // stops, and those offered to a stopped log were dropped (counted `stopped`).
        engine.stop().await;
        // The requests and the chores are done (or out of time): no event comes after this.
        shipping_stop.cancel();
        if let Some(shipping) = shipping {
            let _ = shipping.await;
        }
        tracing::info!("stopped");
        result
    }
}

/// How long the metrics listener's connections may take to finish at shutdown.
const METRICS_DRAIN: Duration = Duration::from_secs(2);

fn warn_about_long_ttls(settings: &Settings) {
    if !settings.backend.uses_redis() {
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

/// Resolves on SIGTERM or ctrl-c (SIGINT).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    // Both registered now, not when first polled: a signal that arrives while the service
    // starts (a Temporal connect may take `call_timeout`) must stop it once built, not kill it
    // with the default action (or, as PID 1 in a container, be ignored until then).
    #[cfg(unix)]
    let mut signals = [
        tokio::signal::unix::SignalKind::terminate(),
        tokio::signal::unix::SignalKind::interrupt(),
    ]
    .map(|kind| tokio::signal::unix::signal(kind).ok());
    async move {
        #[cfg(unix)]
        {
            let [terminate, interrupt] = &mut signals;
            tokio::select! {
                () = received(terminate.as_mut()) => {}
                () = received(interrupt.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves when `signal` arrives; never if it could not be registered.
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
