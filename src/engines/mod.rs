//! The one place that turns `[backend]` into engines: Redis, Temporal, or both side by side
//! (`dual`). Nothing else in the service names an engine's type.
//!
//! Serving needs the engine and whatever it runs by itself ([`start`]: Redis' chores, for
//! whichever side Redis is on); moving records needs the engine alone ([`connect`]).

pub mod dual;

use std::sync::{Arc, Mutex};

use approvals_core::{BackendError, EngineEvents, PolicyStore, RecordTransfer};
use approvals_redis::{Chores, RedisBackend};

use crate::config::{BackendChoice, EngineKind, Settings, TenantStoreKind};

/// What `backend.kind = "temporal"` (and `approvals worker`) say in a build without the
/// `temporal` feature.
pub const TEMPORAL_NOT_BUILT: &str = "this build does not include the Temporal backend; \
     build with `cargo build --release --features temporal`";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect the {engine} engine")]
    Connect {
        engine: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("{0}")]
    NotBuilt(String),
    /// A setting no retry mends (a Temporal namespace that does not exist).
    #[error("{0}")]
    Misconfigured(String),
    /// The store would lose approvals (Redis evicting keys).
    #[error("the {engine} engine cannot keep approvals safely")]
    Unsafe {
        engine: &'static str,
        #[source]
        source: approvals_redis::EvictingRedis,
    },
    /// A store this service cannot run on (Redis in cluster mode, or too old).
    #[error("the {engine} engine cannot run on this server")]
    Unsupported {
        engine: &'static str,
        #[source]
        source: approvals_redis::UnsupportedRedis,
    },
}

/// The configured backend, serving: its engines connected and their chores running.
pub struct RunningEngine {
    pub backend: Arc<dyn RecordTransfer>,
    /// Where tenants' policy bundles (and, beside them, webhooks) live: the Redis engine when
    /// it answers (`redis`, or `dual` with Redis primary), never a best-effort secondary,
    /// whose outage must not stop submits. With Temporal answering, the Redis at `redis.url`
    /// if `tenant_store.kind = "redis"`, else none: every tenant gets the platform default.
    pub policy_store: Option<Arc<dyn PolicyStore>>,
    chores: Vec<Chores>,
    /// A dual secondary's, started once it could be connected after start-up.
    late_chores: Arc<Mutex<Vec<Chores>>>,
}

impl RunningEngine {
    /// Stops the engines' chores, letting a pass in progress finish.
    pub async fn stop(self) {
        let late = std::mem::take(&mut *lock(&self.late_chores));
        for chores in self.chores.into_iter().chain(late) {
            chores.stop().await;
        }
    }
}

/// A list of chores holds no invariant a panicking holder could break.
fn lock(chores: &Mutex<Vec<Chores>>) -> std::sync::MutexGuard<'_, Vec<Chores>> {
    chores
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connects what `settings.backend` names and starts the engines' chores. `answering` hears
/// of what the engine the service answers from does by itself; `following` of a dual soak's
/// secondary.
pub async fn start(
    settings: &Settings,
    answering: Arc<dyn EngineEvents>,
    following: Arc<dyn EngineEvents>,
) -> Result<RunningEngine, EngineError> {
    let mut chores = Vec::new();
    let late_chores = Arc::default();
    let mut policy_store = None;
    let backend: Arc<dyn RecordTransfer> = match settings.backend {
        BackendChoice::Redis => {
            let engine = Engine::connect(EngineKind::Redis, settings, false).await?;
            chores.extend(engine.start_chores(settings, answering));
            policy_store = engine.policy_store();
            engine.transfer()
        }
        BackendChoice::Temporal => {
            let engine = Engine::connect(EngineKind::Temporal, settings, false).await?;
            chores.extend(engine.start_chores(settings, answering));
            engine.transfer()
        }
        BackendChoice::Dual {
            primary,
            secondary_timeout,
        } => {
            if cfg!(not(feature = "temporal")) {
                // Checked before connecting anything: half a dual backend would be a silent
                // `redis`.
                return Err(EngineError::NotBuilt(format!(
                    "backend.kind = \"dual\" runs Redis and Temporal side by side: \
                     {TEMPORAL_NOT_BUILT}"
                )));
            }
            let first = Engine::connect(primary, settings, false).await?;
            chores.extend(first.start_chores(settings, answering));
            policy_store = first.policy_store();
            let secondary = primary.other();
            // Nothing lists or audits the secondary: a Temporal one keeping its own writes
            // for visibility's lag only cost memory and a lock per mirrored write.
            let settings = &{
                let mut settings = settings.clone();
                settings.temporal.read_your_writes = false;
                settings
            };
            // The secondary is best-effort, at start-up too: one that cannot be used within
            // its deadline (unreachable, hung, or refused: a Redis that evicts keys) is
            // connected on use, and the primary serves meanwhile. Waiting for it under its
            // engine's own deadline (`temporal.call_timeout`) kept every instance of a rollout
            // unready for a secondary's sake.
            let connecting = Engine::connect(secondary, settings, false);
            let dual = match tokio::time::timeout(secondary_timeout, connecting).await {
                Ok(Ok(engine)) => {
                    chores.extend(engine.start_chores(settings, following));
                    dual::DualBackend::new(first.transfer(), engine.transfer(), secondary_timeout)
                }
                failed => {
                    let why = match failed {
                        Ok(Err(error)) => crate::app::chain(&error),
                        _ => format!(
                            "no answer within backend.secondary_timeout ({secondary_timeout:?})"
                        ),
                    };
                    tracing::warn!(
                        error = why,
                        secondary = secondary.as_str(),
                        "dual: the secondary cannot be used yet; the primary serves alone \
                         meanwhile, and the secondary is connected again every few seconds"
                    );
                    let settings = settings.clone();
                    let started = Arc::clone(&late_chores);
                    let connect: dual::Connector = Box::new(move || {
                        let (settings, following) = (settings.clone(), following.clone());
                        let started = Arc::clone(&started);
                        Box::pin(async move {
                            match Engine::connect(secondary, &settings, false).await {
                                Ok(engine) => {
                                    // Kept running: dropped, a Redis secondary's sweeper and
                                    // adoption stopped at once, and its records lapsed
                                    // unrecorded.
                                    if let Some(more) = engine.start_chores(&settings, following) {
                                        lock(&started).push(more);
                                    }
                                    Ok(engine.transfer())
                                }
                                Err(EngineError::Connect { source, .. }) => Err(source),
                                Err(other) => Err(BackendError::unavailable(
                                    "connect",
                                    crate::app::chain(&other),
                                )),
                            }
                        })
                    });
                    let first = first.transfer();
                    dual::DualBackend::connecting(
                        first,
                        secondary.as_str(),
                        connect,
                        secondary_timeout,
                    )
                }
            };
            Arc::new(dual)
        }
    };
    if settings.tenant_store.kind == TenantStoreKind::Redis && policy_store.is_none() {
        // Temporal answers, and tenants keep their own settings in Redis all the same. Only
        // the store is used: no approvals are parked there, so no chores run.
        policy_store = Engine::connect(EngineKind::Redis, settings, false)
            .await?
            .policy_store();
    }
    Ok(RunningEngine {
        backend,
        policy_store,
        chores,
        late_chores,
    })
}

/// One engine (`redis` or `temporal`) from its section of the settings, whatever
/// `backend.kind` says, without chores: what `approvals migrate` reads and writes.
pub async fn connect(
    kind: EngineKind,
    settings: &Settings,
) -> Result<Arc<dyn RecordTransfer>, EngineError> {
    Ok(Engine::connect(kind, settings, true).await?.transfer())
}

/// A connected engine of a known type.
enum Engine {
    Redis(Arc<RedisBackend>),
    #[cfg(feature = "temporal")]
    Temporal(Arc<approvals_temporal::TemporalBackend>),
}

/// A `temporal.namespace` the server does not have, or one without the `TenantId` search
/// attribute, is an error (for `approvals migrate`, no retry mends it: it would exit 1,
/// "re-run", for ever; the service logs it, answers 503 and is not ready).
///
/// A settled approval lives on Temporal as long as the namespace keeps closed executions,
/// whatever `approvals.decided_retention` and `expired_retention` say: shorter, and a decided
/// or expired approval answers 404 before the contract's time. Said at start (a namespace's
/// retention is the Temporal operator's to change, not this service's).
#[cfg(feature = "temporal")]
async fn check_namespace(
    backend: &approvals_temporal::TemporalBackend,
    settings: &Settings,
) -> Result<(), EngineError> {
    let wanted = settings
        .approvals
        .decided_retention
        .max(settings.approvals.expired_retention);
    let namespace = &settings.temporal.namespace;
    match backend.describe_namespace().await {
        Ok(approvals_temporal::Namespace::Missing) => {
            return Err(EngineError::Misconfigured(format!(
                "the Temporal server has no namespace {namespace:?} (temporal.namespace): \
                 create it (`temporal operator namespace create --namespace {namespace}`) or \
                 name an existing one"
            )))
        }
        Ok(approvals_temporal::Namespace::Exists {
            retention: Some(kept),
        }) if kept < wanted => tracing::warn!(
            namespace = %settings.temporal.namespace,
            namespace_retention = %humantime::format_duration(kept),
            configured = %humantime::format_duration(wanted),
            "the Temporal namespace keeps settled approvals shorter than approvals.decided_retention / expired_retention: they answer 404 sooner"
        ),
        Ok(_) => {}
        // Unreachable now: the calls that need it say so, and are retried.
        Err(error) => {
            tracing::debug!(%error, "namespace not checked");
            return Ok(());
        }
    }
    // Without it the server refuses every workflow start: every submit would answer 503.
    match backend.has_tenant_attribute().await {
        Ok(Some(false)) => Err(EngineError::Misconfigured(format!(
            "the Temporal namespace {namespace:?} has no search attribute {attribute} \
             (create it: `temporal operator search-attribute create --namespace {namespace} \
             --name {attribute} --type Keyword`)",
            attribute = approvals_temporal::TENANT_ATTRIBUTE
        ))),
        Ok(Some(true)) => Ok(()),
        Ok(None) => {
            tracing::warn!("the server refuses to list the namespace's search attributes; TenantId not checked");
            Ok(())
        }
        Err(error) => {
            tracing::warn!(%error, "cannot list the namespace's search attributes; TenantId not checked");
            Ok(())
        }
    }
}

impl Engine {
    /// `strict`: a Temporal namespace that does not exist is an error (`approvals migrate`: no
    /// re-run mends it); else it is logged and the service answers 503 until it exists.
    async fn connect(
        kind: EngineKind,
        settings: &Settings,
        strict: bool,
    ) -> Result<Self, EngineError> {
        // Only the Temporal namespace check reads it.
        #[cfg(not(feature = "temporal"))]
        let _ = strict;
        let failed = |source| EngineError::Connect {
            engine: kind.as_str(),
            source,
        };
        match kind {
            EngineKind::Redis => {
                let lifetimes = settings.approvals.lifetimes();
                let backend =
                    RedisBackend::connect(settings.redis.clone(), lifetimes).map_err(failed)?;
                refuse_unusable_redis(&backend, settings).await?;
                Ok(Self::Redis(Arc::new(backend)))
            }
            #[cfg(feature = "temporal")]
            EngineKind::Temporal => {
                let temporal = settings.temporal.clone();
                let backend = approvals_temporal::TemporalBackend::connect(temporal)
                    .await
                    .map_err(failed)?;
                match check_namespace(&backend, settings).await {
                    Err(error) if !strict => tracing::error!(
                        %error,
                        "Temporal calls answer 503, and /readyz fails, until this is mended"
                    ),
                    checked => checked?,
                }
                Ok(Self::Temporal(Arc::new(backend)))
            }
            #[cfg(not(feature = "temporal"))]
            EngineKind::Temporal => Err(EngineError::NotBuilt(format!(
                "backend.kind = \"temporal\" needs the Temporal backend: {TEMPORAL_NOT_BUILT}"
            ))),
        }
    }

    fn transfer(self) -> Arc<dyn RecordTransfer> {
        match self {
            Self::Redis(engine) => engine,
            #[cfg(feature = "temporal")]
            Self::Temporal(engine) => engine,
        }
    }

    fn policy_store(&self) -> Option<Arc<dyn PolicyStore>> {
        match self {
            Self::Redis(engine) => Some(engine.clone()),
            #[cfg(feature = "temporal")]
            Self::Temporal(_) => None,
        }
    }

    /// Starts what the engine runs by itself (Temporal's workflows need nothing) and has it
    /// report to `events`.
    fn start_chores(&self, settings: &Settings, events: Arc<dyn EngineEvents>) -> Option<Chores> {
        match self {
            Self::Redis(engine) => {
                Some(engine.start_chores(settings.approvals.chore_schedule(), events))
            }
            #[cfg(feature = "temporal")]
            Self::Temporal(engine) => {
                engine.report_unreadable_to(events);
                None
            }
        }
    }
}

/// A Redis this service cannot run on at all (cluster mode, before 7.0) is refused; so is one
/// that evicts keys, which loses approvals silently, unless the operator said otherwise (and
/// then it is said loudly). One that cannot be reached yet is checked again by every
/// readiness probe.
async fn refuse_unusable_redis(
    backend: &RedisBackend,
    settings: &Settings,
) -> Result<(), EngineError> {
    let facts = match backend.facts().await {
        Ok(facts) => facts,
        Err(error) => {
            tracing::warn!(
                error = %crate::app::chain(&error),
                "Redis is not reachable at start-up; readiness checks it (and its maxmemory-policy) \
                 until it is"
            );
            return Ok(());
        }
    };
    if let Some(source) = facts.unsupported {
        return Err(EngineError::Unsupported {
            engine: "redis",
            source,
        });
    }
    match facts.eviction_policy {
        Some(policy) if policy != "noeviction" => {
            if settings.redis.allow_eviction {
                tracing::error!(
                    %policy,
                    "redis.allow_eviction is set: this Redis may evict approvals, which are then \
                     lost without a trace"
                );
                Ok(())
            } else {
                Err(EngineError::Unsafe {
                    engine: "redis",
                    source: approvals_redis::EvictingRedis { policy },
                })
            }
        }
        _ => Ok(()),
    }
}
