//! Which compiled policy answers for each tenant, kept in step with the policy store.
//!
//! Every instance polls the store's tenant states (one call) every `policy.reload_interval`
//! and, for a tenant whose generation changed, compiles the bundles it names (once per
//! version: compiled bundles are cached) and swaps them in atomically. A request holds the
//! gates it started with, so an activation never fails or splits a request; an approval keeps
//! the `policy_version` it was parked under because that is written into its record.
//!
//! Until the first poll has succeeded an instance does not know which tenants have their own
//! bundle, so submits answer 503 `backend_unavailable` instead of silently using the platform
//! default.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvals_core::{BackendError, PolicyState, PolicyStore, TenantId};
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::policy::sandbox::Sandbox;
use crate::policy::{PolicyFile, PolicyGate};

/// The policies a tenant's submits are evaluated with.
pub struct Gates {
    /// Decides.
    pub active: Arc<PolicyGate>,
    /// Evaluated beside it, never deciding (shadow evaluation).
    pub candidate: Option<Arc<PolicyGate>>,
    /// Whether `active` is the tenant's own bundle (not the platform default).
    pub own: bool,
}

/// What this instance holds for a tenant that has a state in the store.
#[derive(Clone)]
struct Loaded {
    /// The generation `gates` were built from.
    generation: u64,
    /// `None`: the tenant's own bundle could not be loaded yet, and nothing was loaded before:
    /// its submits answer 503 rather than get the platform default.
    gates: Option<Arc<Gates>>,
    /// Whether `gates` are all the state names: `false` after a failed load (the gates kept are
    /// an older generation's, or lack the candidate), so the next poll tries again.
    complete: bool,
    /// What failed last (the generation and why) and when that was last logged and counted:
    /// the next poll tries again, and logs and counts only a failure that is not this one, or
    /// this one again every [`SAY_AGAIN_AFTER`] (see [`said`]).
    failed: Option<(String, std::time::Instant)>,
}

impl Loaded {
    /// Whether these gates are the ones `state` names, all loaded. The versions are compared,
    /// not only the generation: a Redis failover that lost the last activation, made again
    /// under the same generation, or a hand edit that did not bump it, names others.
    fn serves(&self, state: &PolicyState) -> bool {
        let Some(gates) = self.gates.as_ref().filter(|_| self.complete) else {
            return false;
        };
        let active = match &state.active {
            Some(version) => gates.own && gates.active.version() == version,
            None => !gates.own,
        };
        self.generation == state.generation
            && active
            && gates.candidate.as_ref().map(|c| c.version()) == state.candidate.as_deref()
    }
}

/// Logs (with `say`) and counts the failure `reason`, unless `previous` did so lately: a poll
/// every 250 ms logged it 4 times a second per tenant and instance, and logging it only once
/// let the hourly alert on the count clear while the tenant still had no policy. What to keep
/// in [`Loaded::failed`].
fn said(
    previous: Option<&Loaded>,
    reason: String,
    say: impl FnOnce(),
) -> (String, std::time::Instant) {
    let lately = previous
        .and_then(|l| l.failed.as_ref())
        .filter(|(said, at)| *said == reason && at.elapsed() < SAY_AGAIN_AFTER)
        .map(|(_, at)| *at);
    let at = lately.unwrap_or_else(|| {
        say();
        metrics::counter!("approvals_policy_reloads_total", "outcome" => "failed").increment(1);
        std::time::Instant::now()
    });
    (reason, at)
}

/// How often a load that keeps failing the same way is logged and counted again.
const SAY_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a bundle that does not compile here is not tried again.
const RETRY_FAILED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a stored bundle is not loaded.
enum LoadFailure {
    /// The store did not hand it over (it failed, or lacks the bundle for now): tried again
    /// at the next poll. Held for 10 s like a broken bundle, a Redis blip kept a tenant's
    /// submits at 503 that long.
    Store(String),
    /// It does not compile or is not what its version says: the same on every try.
    Bundle(String),
}

/// `policy.max_stored_bundles`' default.
pub const DEFAULT_BUNDLES_KEPT: usize = 100;

pub struct TenantPolicies {
    default: Arc<Gates>,
    store: Option<Arc<dyn PolicyStore>>,
    /// Tenants with a state in the store.
    loaded: ArcSwap<HashMap<TenantId, Loaded>>,
    /// Compiled bundles by (tenant, version): activating a version seen before is a swap.
    compiled: Mutex<HashMap<(TenantId, String), Arc<PolicyGate>>>,
    /// Bundles that did not compile, by (tenant, version), with when and why: tried again
    /// after [`RETRY_FAILED_AFTER`], not on every poll (each try compiles and runs a trial
    /// evaluation, under the sync lock every admin change waits for).
    failed: Mutex<HashMap<(TenantId, String), (std::time::Instant, String)>>,
    synced: AtomicBool,
    /// One sync at a time: two overlapping ones (a poll's and an admin change's) could
    /// otherwise store the older states last, serving a superseded policy until the next poll.
    syncing: tokio::sync::Mutex<()>,
    budget: usize,
    /// `policy.confirm_allows`, for every tenant's gates.
    confirm_allows: bool,
    /// Versions a tenant keeps besides those its state names (`policy.max_stored_bundles`).
    bundles_kept: usize,
    /// Where tenants' bundles are evaluated; `None`: in this process.
    sandbox: Option<Arc<Sandbox>>,
    /// How long the store must stay unreadable before that is counted as a failed reload
    /// ([`STORE_DOWN_COUNTED_AFTER`]).
    store_down_counted_after: Duration,
}

/// A store unreadable for less than this is not counted as a failed reload: with the engine's
/// own Redis as the store, a failover of a few seconds counted, and the hourly alert on the
/// count stood for an hour over an outage `ApprovalsNotReady` had already paged for.
pub const STORE_DOWN_COUNTED_AFTER: Duration = Duration::from_secs(30);

impl TenantPolicies {
    pub fn new(
        default: Arc<PolicyGate>,
        store: Option<Arc<dyn PolicyStore>>,
        budget: usize,
    ) -> Self {
        Self {
            default: Arc::new(Gates {
                active: default,
                candidate: None,
                own: false,
            }),
            // Without a store there is nothing to wait for.
            synced: AtomicBool::new(store.is_none()),
            store,
            loaded: ArcSwap::from_pointee(HashMap::new()),
            compiled: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            syncing: tokio::sync::Mutex::new(()),
            budget,
            confirm_allows: true,
            bundles_kept: DEFAULT_BUNDLES_KEPT,
            sandbox: None,
            store_down_counted_after: STORE_DOWN_COUNTED_AFTER,
        }
    }

    /// Where tenants' bundles are evaluated and validated; `None`: in this process.
    pub fn sandbox(&self) -> Option<Arc<Sandbox>> {
        self.sandbox.clone()
    }

    /// Evaluates tenants' bundles in `sandbox`'s child processes.
    pub fn isolating_in(mut self, sandbox: Option<Arc<Sandbox>>) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Whether tenants' gates confirm an `allow` on the interpreter
    /// ([`PolicyGate::confirming_allows`]).
    pub fn confirming_allows(mut self, confirm: bool) -> Self {
        self.confirm_allows = confirm;
        self
    }

    /// Counts a store unreadable for `after` (and longer) as a failed reload.
    pub fn counting_store_outages_after(mut self, after: Duration) -> Self {
        self.store_down_counted_after = after;
        self
    }

    /// Keeps `count` versions per tenant besides those its state names (at least one).
    pub fn keeping_bundles(mut self, count: usize) -> Self {
        self.bundles_kept = count.max(1);
        self
    }

    pub fn store(&self) -> Option<&Arc<dyn PolicyStore>> {
        self.store.as_ref()
    }

    pub fn bundles_kept(&self) -> usize {
        self.bundles_kept
    }

    pub fn default_gate(&self) -> &Arc<PolicyGate> {
        &self.default.active
    }

    /// Whether the tenants' policies have been read at least once (always, without a store).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The gates for `tenant` as of now.
    pub fn gates(&self, tenant: &TenantId) -> Result<Arc<Gates>, AppError> {
        if !self.synced.load(Ordering::Acquire) {
            // Start-up's read of the store failed and no poll has succeeded since: the store
            // is what is missing, as for any other call that cannot reach it.
            return Err(AppError::Unavailable(BackendError::unavailable(
                "policy_states",
                "the tenants' policies have not been read yet",
            )));
        }
        match self.loaded.load().get(tenant) {
            None => Ok(self.default.clone()),
            Some(Loaded {
                gates: Some(gates), ..
            }) => Ok(gates.clone()),
            Some(Loaded { gates: None, .. }) => Err(AppError::PolicyNotLoaded),
        }
    }

    /// Whether this instance runs all of `state` for `tenant`: its generation, active bundle
    /// and candidate (the versions too: a version activated again under the same generation,
    /// after a failover lost a write, was said to run here before it was loaded).
    pub fn runs(&self, tenant: &TenantId, state: &PolicyState) -> bool {
        match self.loaded.load().get(tenant) {
            // Nothing loaded for it: the platform default, which a state naming none means.
            None => state.active.is_none() && state.candidate.is_none(),
            Some(loaded) => loaded.serves(state),
        }
    }

    /// The generation this instance runs for `tenant` (0: none loaded).
    pub fn generation(&self, tenant: &TenantId) -> u64 {
        self.loaded
            .load()
            .get(tenant)
            .filter(|l| l.gates.is_some())
            .map_or(0, |l| l.generation)
    }

    /// Reads every tenant's state and swaps in what changed. A bundle that cannot be read or
    /// compiled leaves that tenant on what it had, or unanswered (503) if it had nothing, never
    /// on the platform default; a candidate that cannot be loaded is left out, the active
    /// bundle still served. Both are logged, counted and retried on the next poll. The store
    /// being unreachable is an error.
    pub async fn sync(&self) -> Result<(), BackendError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _turn = self.syncing.lock().await;
        let states = store.states().await?;
        self.forget_unused(&states);
        let current = self.loaded.load_full();
        let mut next: HashMap<TenantId, Loaded> = HashMap::with_capacity(states.len());
        let mut changed = false;
        for (tenant, state) in states {
            let previous = current.get(&tenant);
            let state = match state {
                Ok(state) => state,
                Err(reason) => {
                    // Never the platform default in its place: what this instance serves for
                    // the tenant stays (none: its submits answer 503) until the state reads.
                    let failed = said(previous, format!("state: {reason}"), || {
                        tracing::error!(%tenant, %reason,
                            "tenant policy state unreadable; keeping the policy in use (none: its submits answer 503)");
                    });
                    changed = true;
                    let kept = Loaded {
                        generation: previous.map_or(0, |l| l.generation),
                        gates: previous.and_then(|l| l.gates.clone()),
                        complete: false,
                        failed: Some(failed),
                    };
                    next.insert(tenant, kept);
                    continue;
                }
            };
            if let Some(loaded) = previous.filter(|l| l.serves(&state)) {
                next.insert(tenant, loaded.clone());
                continue;
            }
            changed = true;
            let generation = state.generation;
            match self.build(store.as_ref(), &tenant, &state).await {
                Ok((gates, candidate_failure)) => {
                    let failed = candidate_failure.map(|(version, error)| {
                        let reason =
                            format!("generation {generation}: candidate {version}: {error}");
                        said(previous, reason, || {
                            tracing::error!(%tenant, candidate = %version, %error,
                                "candidate policy not loaded; the active one is served without it");
                        })
                    });
                    if previous
                        .is_none_or(|l| l.generation != state.generation || l.gates.is_none())
                        || failed.is_none()
                    {
                        tracing::info!(
                            %tenant, generation = state.generation,
                            active = gates.active.version(),
                            candidate = gates.candidate.as_ref().map(|c| c.version()),
                            "tenant policy loaded"
                        );
                        metrics::counter!("approvals_policy_reloads_total", "outcome" => "loaded")
                            .increment(1);
                    }
                    let gates = Some(Arc::new(gates));
                    next.insert(
                        tenant,
                        Loaded {
                            generation,
                            gates,
                            complete: failed.is_none(),
                            failed,
                        },
                    );
                }
                Err(error) => {
                    let failed = said(
                        previous,
                        format!("generation {generation}: {error}"),
                        || {
                            tracing::error!(%tenant, generation, %error,
                            "tenant policy not loaded; keeping the one in use (none: its submits answer 503)");
                        },
                    );
                    let kept = Loaded {
                        generation: previous.map_or(0, |l| l.generation),
                        gates: previous.and_then(|l| l.gates.clone()),
                        complete: false,
                        failed: Some(failed),
                    };
                    next.insert(tenant, kept);
                }
            }
        }
        if changed || next.len() != current.len() {
            self.loaded.store(Arc::new(next));
        }
        self.synced.store(true, Ordering::Release);
        Ok(())
    }

    async fn build(
        &self,
        store: &dyn PolicyStore,
        tenant: &TenantId,
        state: &PolicyState,
    ) -> Result<(Gates, Option<(String, String)>), String> {
        let active = match &state.active {
            Some(version) => self.compiled(store, tenant, version).await?,
            None => self.default.active.clone(),
        };
        // A trial never decides, so one that cannot be loaded must not keep the active bundle
        // (or a later activation) out: left out, and tried again on the next poll.
        let (candidate, candidate_failure) = match &state.candidate {
            Some(version) => match self.compiled(store, tenant, version).await {
                Ok(gate) => (Some(gate), None),
                Err(error) => (None, Some((version.clone(), error))),
            },
            None => (None, None),
        };
        let gates = Gates {
            active,
            candidate,
            own: state.active.is_some(),
        };
        Ok((gates, candidate_failure))
    }

    /// `version` of `tenant`'s bundles, compiled (from the cache when it was before).
    pub async fn compiled(
        &self,
        store: &dyn PolicyStore,
        tenant: &TenantId,
        version: &str,
    ) -> Result<Arc<PolicyGate>, String> {
        let key = (tenant.clone(), version.to_owned());
        if let Some(gate) = self.cached(&key) {
            return Ok(gate);
        }
        if let Ok(failed) = self.failed.lock() {
            if let Some((at, reason)) = failed.get(&key) {
                if at.elapsed() < RETRY_FAILED_AFTER {
                    return Err(reason.clone());
                }
            }
        }
        let loaded = self.load(store, tenant, version).await;
        if let Ok(mut failed) = self.failed.lock() {
            failed.retain(|_, (at, _)| at.elapsed() < RETRY_FAILED_AFTER);
            match &loaded {
                Ok(gate) => {
                    failed.remove(&key);
                    if let Ok(mut cache) = self.compiled.lock() {
                        cache.insert(key, gate.clone());
                    }
                }
                Err(LoadFailure::Bundle(reason)) => {
                    failed.insert(key, (std::time::Instant::now(), reason.clone()));
                }
                Err(LoadFailure::Store(_)) => {}
            }
        }
        loaded.map_err(|(LoadFailure::Store(reason) | LoadFailure::Bundle(reason))| reason)
    }

    /// Reads and compiles `version` of `tenant`'s bundles.
    async fn load(
        &self,
        store: &dyn PolicyStore,
        tenant: &TenantId,
        version: &str,
    ) -> Result<Arc<PolicyGate>, LoadFailure> {
        let bundle = store
            .bundle(tenant, version)
            .await
            .map_err(|e| LoadFailure::Store(super::chain(&e)))?
            .ok_or_else(|| LoadFailure::Store(format!("bundle {version} is not in the store")))?;
        let files: Vec<PolicyFile> = bundle
            .files
            .into_iter()
            .map(|f| PolicyFile {
                relative: f.path,
                text: f.text,
            })
            .collect();
        let origin = format!("tenant {tenant}");
        let (budget, confirm) = (self.budget, self.confirm_allows);
        let sandbox = self.sandbox.clone();
        // Compiling is CPU work of some milliseconds: off the request workers, on a stack with
        // room for what the sandbox accepted. A sandboxed bundle's decision runs in children
        // only, its load-time trial included.
        let gate =
            crate::policy::stack::on_service_stack("policy-compile", move || match sandbox {
                Some(sandbox) => PolicyGate::from_files_untried(&files, &origin).map(|g| {
                    g.with_budget(budget)
                        .confirming_allows(confirm)
                        .isolated(sandbox, &files)
                }),
                None => PolicyGate::from_files(&files, &origin)
                    .map(|g| g.with_budget(budget).confirming_allows(confirm)),
            })
            .await
            .map_err(LoadFailure::Bundle)?
            .map_err(|e| LoadFailure::Bundle(e.to_string()))?;
        if gate.version() != version {
            return Err(LoadFailure::Bundle(format!(
                "bundle stored as {version} has the content of {}",
                gate.version()
            )));
        }
        Ok(Arc::new(gate))
    }

    /// Drops compiled bundles no tenant can reach without a new change: tenants that activate
    /// a new version on every commit would otherwise keep every one they ever ran. Kept: the
    /// active and candidate versions, and the one a rollback returns to.
    fn forget_unused(
        &self,
        states: &std::collections::BTreeMap<TenantId, Result<PolicyState, String>>,
    ) {
        // A tenant whose state cannot be read keeps its compiled bundles: what it is served.
        let unreadable: std::collections::HashSet<&TenantId> = states
            .iter()
            .filter(|(_, state)| state.is_err())
            .map(|(tenant, _)| tenant)
            .collect();
        let reachable: std::collections::HashSet<(&TenantId, &str)> = states
            .iter()
            .filter_map(|(tenant, state)| state.as_ref().ok().map(|state| (tenant, state)))
            .flat_map(|(tenant, state)| {
                let rollback = state.history.last().and_then(Option::as_deref);
                [
                    state.active.as_deref(),
                    state.candidate.as_deref(),
                    rollback,
                ]
                .into_iter()
                .flatten()
                .map(move |version| (tenant, version))
            })
            .collect();
        if let Ok(mut cache) = self.compiled.lock() {
            cache.retain(|(tenant, version), _| {
                unreadable.contains(tenant) || reachable.contains(&(tenant, version.as_str()))
            });
        }
    }

    #[cfg(test)]
    fn compiled_count(&self) -> usize {
        self.compiled.lock().map_or(0, |cache| cache.len())
    }

    fn cached(&self, key: &(TenantId, String)) -> Option<Arc<PolicyGate>> {
        self.compiled.lock().ok()?.get(key).cloned()
    }

    /// Polls the store until `stop`; logs when polling starts failing and when it recovers.
    pub async fn keep_in_sync(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        if self.store.is_none() {
            return;
        }
        // Since when the store cannot be read, and when that was last counted as a failed
        // reload (`said`'s pace): the hourly alert on the count stays on while it lasts,
        // without a count per poll, and a blip of a few seconds is not counted.
        let mut down_since: Option<std::time::Instant> = None;
        let mut counted: Option<std::time::Instant> = None;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // A sync in progress is dropped at shutdown (it stores nothing until it is done):
            // one waiting on a store that hangs held up the exit for its call deadlines.
            let synced = tokio::select! {
                _ = stop.cancelled() => return,
                synced = self.sync() => synced,
            };
            match synced {
                Ok(()) => {
                    if down_since.take().is_some() {
                        counted = None;
                        tracing::info!("tenant policies: the store answers again");
                    }
                }
                Err(error) => {
                    let since = *down_since.get_or_insert_with(|| {
                        tracing::warn!(error = %super::chain(&error),
                            "tenant policies: cannot read the store; serving the policies loaded last");
                        std::time::Instant::now()
                    });
                    if since.elapsed() >= self.store_down_counted_after
                        && counted.is_none_or(|at| at.elapsed() >= SAY_AGAIN_AFTER)
                    {
                        counted = Some(std::time::Instant::now());
                        metrics::counter!("approvals_policy_reloads_total", "outcome" => "failed")
                            .increment(1);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use approvals_core::{BundleSummary, Lifetimes, PutBundle, StoredBundle, Swap};
    use approvals_redis::{RedisBackend, RedisSettings};
    use approvals_testkit::RedisServer;
    use tokio::sync::{oneshot, Notify};

    use super::*;

    /// The real Redis store, except that the first poll's answer is held until the test lets
    /// it go: a poll that read the states, then was slow to compile and store them.
    struct SlowFirstPoll {
        store: Arc<RedisBackend>,
        hold: Mutex<Option<oneshot::Receiver<()>>>,
        read: Notify,
    }

    #[async_trait::async_trait]
    impl PolicyStore for SlowFirstPoll {
        async fn put_bundle(
            &self,
            t: &TenantId,
            b: &StoredBundle,
            keep: usize,
        ) -> Result<PutBundle, BackendError> {
            self.store.put_bundle(t, b, keep).await
        }
        async fn bundle(
            &self,
            t: &TenantId,
            v: &str,
        ) -> Result<Option<StoredBundle>, BackendError> {
            self.store.bundle(t, v).await
        }
        async fn bundles(&self, t: &TenantId) -> Result<Vec<BundleSummary>, BackendError> {
            self.store.bundles(t).await
        }
        async fn state(&self, t: &TenantId) -> Result<PolicyState, BackendError> {
            self.store.state(t).await
        }
        async fn swap_state(
            &self,
            t: &TenantId,
            expected: &PolicyState,
            next: &PolicyState,
        ) -> Result<Swap, BackendError> {
            self.store.swap_state(t, expected, next).await
        }
        async fn states(
            &self,
        ) -> Result<BTreeMap<TenantId, Result<PolicyState, String>>, BackendError> {
            let states = self.store.states().await;
            let held = self.hold.lock().unwrap().take();
            if let Some(release) = held {
                self.read.notify_one();
                let _ = release.await;
            }
            states
        }
    }

    fn default_gate() -> Arc<PolicyGate> {
        let file = PolicyFile {
            relative: "default.rego".into(),
            text: "package approvals\nimport rego.v1\ndecision := {\"decision\": \"allow\"}\n"
                .into(),
        };
        Arc::new(PolicyGate::from_files(&[file], "test").unwrap())
    }

    async fn bump(store: &RedisBackend, tenant: &TenantId) {
        let state = store.state(tenant).await.unwrap();
        let next = PolicyState {
            generation: state.generation + 1,
            ..state.clone()
        };
        assert_eq!(
            store.swap_state(tenant, &state, &next).await.unwrap(),
            Swap::Done
        );
    }

    /// Stores a bundle answering `answer`; its version.
    async fn store_bundle(store: &RedisBackend, tenant: &TenantId, answer: &str) -> String {
        let text = format!(
            "package approvals\nimport rego.v1\ndecision := {{\"decision\": \"{answer}\"}}\n"
        );
        let file = PolicyFile {
            relative: "p.rego".into(),
            text: text.clone(),
        };
        let version = PolicyGate::from_files(&[file], "test")
            .unwrap()
            .version()
            .to_owned();
        let bundle = StoredBundle {
            version: version.clone(),
            files: vec![approvals_core::BundleFile {
                path: "p.rego".into(),
                text,
            }],
            uploaded_by: "test".into(),
            uploaded_at: approvals_core::Timestamp::now(),
        };
        store.put_bundle(tenant, &bundle, 100).await.unwrap();
        version
    }

    /// A Redis of the test's own, and the policy store in it (the server runs while the
    /// first is held).
    async fn policy_store() -> (RedisServer, Arc<RedisBackend>) {
        let redis = RedisServer::start().await;
        let settings = RedisSettings::new(redis.url());
        let store = RedisBackend::connect(settings, Lifetimes::default()).unwrap();
        (redis, Arc::new(store))
    }

    async fn activate(store: &RedisBackend, tenant: &TenantId, version: &str) {
        let state = store.state(tenant).await.unwrap();
        let mut next = state.clone();
        next.generation += 1;
        next.history.push(state.active.clone());
        next.active = Some(version.to_owned());
        assert_eq!(
            store.swap_state(tenant, &state, &next).await.unwrap(),
            Swap::Done
        );
    }

    /// The compare-and-set refuses a state naming a version that is not stored: an upload's
    /// prune may delete one between an activation's check and its change.
    #[tokio::test]
    async fn a_state_naming_a_missing_bundle_is_not_written() {
        let (_redis, store) = policy_store().await;
        let tenant = TenantId::parse("pruned-meanwhile").unwrap();
        let stored = store_bundle(&store, &tenant, "allow").await;
        let state = store.state(&tenant).await.unwrap();
        let naming = |active: &str| PolicyState {
            generation: 1,
            active: Some(active.to_owned()),
            ..PolicyState::default()
        };
        let missing = format!("sha256:{}", "0".repeat(64));
        assert_eq!(
            store
                .swap_state(&tenant, &state, &naming(&missing))
                .await
                .unwrap(),
            Swap::MissingBundle(missing.clone())
        );
        assert_eq!(store.state(&tenant).await.unwrap(), state);
        assert_eq!(
            store
                .swap_state(&tenant, &state, &naming(&stored))
                .await
                .unwrap(),
            Swap::Done
        );
    }

    /// A state that names other versions under the generation this instance loaded (a Redis
    /// failover that lost the last activation, which was then made again; a hand edit that
    /// did not bump it) is loaded: comparing the generation alone kept the old bundle
    /// deciding on every instance that had loaded it, while restarted ones ran the new one.
    #[tokio::test]
    async fn other_versions_under_the_same_generation_are_loaded() {
        let (_redis, store) = policy_store().await;
        let tenant = TenantId::parse("failed-over").unwrap();
        let first = store_bundle(&store, &tenant, "allow").await;
        let second = store_bundle(&store, &tenant, "deny").await;
        let policies = TenantPolicies::new(default_gate(), Some(store.clone()), 0);
        activate(&store, &tenant, &first).await;
        policies.sync().await.unwrap();
        assert_eq!(policies.gates(&tenant).unwrap().active.version(), first);

        let state = store.state(&tenant).await.unwrap();
        let rewritten = PolicyState {
            active: Some(second.clone()),
            candidate: Some(first.clone()),
            ..state.clone()
        };
        assert_eq!(
            store.swap_state(&tenant, &state, &rewritten).await.unwrap(),
            Swap::Done
        );
        // Not yet loaded here: not said to run, though the generation is the same.
        assert!(!policies.runs(&tenant, &rewritten));
        policies.sync().await.unwrap();
        assert!(policies.runs(&tenant, &rewritten));
        let gates = policies.gates(&tenant).unwrap();
        assert_eq!(gates.active.version(), second);
        assert_eq!(
            gates.candidate.as_ref().map(|c| c.version()),
            Some(first.as_str())
        );
    }

    #[tokio::test]
    async fn compiled_bundles_no_tenant_can_reach_are_dropped() {
        let (_redis, store) = policy_store().await;
        let tenant = TenantId::parse("ci-activates").unwrap();
        let versions = [
            store_bundle(&store, &tenant, "allow").await,
            store_bundle(&store, &tenant, "deny").await,
            store_bundle(&store, &tenant, "require_approval").await,
        ];
        let policies = TenantPolicies::new(default_gate(), Some(store.clone()), 0);
        for version in &versions {
            activate(&store, &tenant, version).await;
            policies.sync().await.unwrap();
        }
        // The active version and the one a rollback returns to; not the first.
        assert_eq!(policies.compiled_count(), 2);
        assert!(policies
            .cached(&(tenant.clone(), versions[2].clone()))
            .is_some());
        assert!(policies
            .cached(&(tenant.clone(), versions[1].clone()))
            .is_some());
        assert!(policies.cached(&(tenant, versions[0].clone())).is_none());
    }

    /// A bundle that does not load is logged and counted once per generation and reason, not
    /// at every poll (4 a second per tenant and instance, for as long as it stays).
    #[tokio::test]
    async fn a_bundle_that_does_not_load_is_counted_once_not_at_every_poll() {
        let (_redis, store) = policy_store().await;
        let tenant = TenantId::parse("broken-bundle").unwrap();
        let broken = StoredBundle {
            version: format!("sha256:{}", "b".repeat(64)),
            files: vec![approvals_core::BundleFile {
                path: "p.rego".into(),
                text: "package approvals\nthis is not rego\n".into(),
            }],
            uploaded_by: "test".into(),
            uploaded_at: approvals_core::Timestamp::now(),
        };
        store.put_bundle(&tenant, &broken, 100).await.unwrap();
        activate(&store, &tenant, &broken.version).await;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let counts = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let policies = TenantPolicies::new(default_gate(), Some(store.clone()), 0);
        for _ in 0..5 {
            policies.sync().await.unwrap();
        }
        let failed = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("approvals_policy_reloads_total{outcome=\"failed\"} "))
                .map(str::to_owned)
        };
        assert_eq!(failed(&counts.render()).as_deref(), Some("1"));
        assert!(matches!(
            policies.gates(&tenant),
            Err(AppError::PolicyNotLoaded)
        ));
        // A new generation failing again is news.
        bump(&store, &tenant).await;
        policies.sync().await.unwrap();
        assert_eq!(failed(&counts.render()).as_deref(), Some("2"));
    }

    /// A store that cannot be read (the Redis tenant store beside a Temporal engine, down) is
    /// a failed reload, counted once per outage (and again every few minutes while it lasts),
    /// not at every poll: it was only logged, and nothing paged while policy changes and
    /// webhooks stopped.
    #[tokio::test]
    async fn a_store_that_cannot_be_read_is_counted_as_a_failed_reload() {
        let (mut redis, store) = policy_store().await;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let counts = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let policies = Arc::new(
            TenantPolicies::new(default_gate(), Some(store.clone()), 0)
                .counting_store_outages_after(Duration::from_millis(200)),
        );
        policies.sync().await.unwrap();
        redis.stop();
        let stop = CancellationToken::new();
        let syncing = tokio::spawn(
            policies
                .clone()
                .keep_in_sync(Duration::from_millis(20), stop.clone()),
        );
        let failed = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("approvals_policy_reloads_total{outcome=\"failed\"} "))
                .map(str::to_owned)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while failed(&counts.render()).is_none() {
            assert!(std::time::Instant::now() < deadline, "never counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Many polls later, still once.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(failed(&counts.render()).as_deref(), Some("1"));
        stop.cancel();
        syncing.await.unwrap();
    }

    #[tokio::test]
    async fn a_slow_poll_does_not_store_older_states_over_a_newer_sync() {
        let (_redis, store) = policy_store().await;
        let tenant = TenantId::parse("slow-poll").unwrap();
        bump(&store, &tenant).await;
        let (release, hold) = oneshot::channel();
        let slow = Arc::new(SlowFirstPoll {
            store: store.clone(),
            hold: Mutex::new(Some(hold)),
            read: Notify::new(),
        });
        let policies = Arc::new(TenantPolicies::new(default_gate(), Some(slow.clone()), 0));

        // The poll reads generation 1 and stalls; an admin change makes it 2 and syncs.
        let poll = tokio::spawn({
            let policies = policies.clone();
            async move { policies.sync().await }
        });
        slow.read.notified().await;
        bump(&store, &tenant).await;
        let mut admin = tokio::spawn({
            let policies = policies.clone();
            async move { policies.sync().await }
        });
        // Unserialised, the admin's sync finishes here and the poll then stores generation 1
        // over it; serialised, it waits for the poll.
        let early = tokio::time::timeout(Duration::from_millis(300), &mut admin).await;
        release.send(()).unwrap();
        poll.await.unwrap().unwrap();
        match early {
            Ok(finished) => finished,
            Err(_) => admin.await,
        }
        .unwrap()
        .unwrap();

        assert_eq!(policies.generation(&tenant), 2);
    }
}
