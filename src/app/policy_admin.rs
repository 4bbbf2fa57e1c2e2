//! A tenant's compliance team manages its policy: uploads bundles (validated before they are
//! stored), activates one, rolls back, trials a candidate. Tenant admins and platform admins
//! only; every change is an audit event of kind `policy`.
//!
//! A change is a compare-and-set on the tenant's state in the store; every instance picks it
//! up on its next poll, and this one at once; the answer says whether it is in effect on the
//! instance that answered (`loaded_here`), which it is not when that instance cannot load it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use approvals_core::{
    AuditEntry, BackendError, BundleFile, BundleSummary, PolicyState, PolicyStore, PutBundle,
    StoredBundle, Swap, TenantId, Timestamp,
};
use serde_json::json;

use super::{AppError, Approvals};
use crate::auth::{Permission, Principal};
use crate::policy::sandbox::{Sandbox, ValidationStopped};
use crate::policy::testing::{validate_bundle, TestReport};
use crate::policy::PolicyFile;

pub use crate::policy::MAX_BUNDLE_FILES;
/// How a refusal whose validation was stopped (its deadline, the child's memory) begins.
const VALIDATION_STOPPED: &str = "the bundle's validation stopped";
/// How long a policy change waits for this instance to load it before answering.
const RELOAD_AFTER_A_CHANGE: std::time::Duration = std::time::Duration::from_secs(3);
/// Versions kept in a tenant's rollback history.
const HISTORY: usize = 50;
/// Reads of the state after a swap that was not answered (each bounded by the store's call
/// deadline) before answering that nothing is known.
const SWAP_READS_AFTER_NO_ANSWER: usize = 3;
/// Compare-and-set attempts before answering `policy_changed`.
const ATTEMPTS: usize = 5;

/// An accepted upload.
pub struct Uploaded {
    pub bundle: BundleSummary,
    /// `false` when the same version was uploaded before (nothing stored).
    pub created: bool,
    /// Versions deleted to keep the tenant within `policy.max_stored_bundles`.
    pub pruned: Vec<String>,
    pub tests: TestReport,
}

/// Which generations of the tenant's policy a change may apply to (HTTP's `If-Match`): a
/// change decided on a state read earlier, or a retried one, must not apply to a state that
/// moved since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Any state (no `If-Match`, or `*`).
    Any,
    /// One of these [`policy_tag`]s (none: nothing matches).
    OneOf(Vec<String>),
}

impl Precondition {
    fn holds(&self, state: &PolicyState) -> bool {
        match self {
            Self::Any => true,
            Self::OneOf(tags) => tags.contains(&policy_tag(state)),
        }
    }
}

/// What a tenant's policy state is known by (its entity tag, unquoted): its generation, and a
/// digest of the whole state. The generation alone named two states after a Redis failover
/// that lost a change (the next change took its generation again), and a change decided on
/// the lost one applied to the other.
pub fn policy_tag(state: &PolicyState) -> String {
    use sha2::{Digest, Sha256};
    // Plain data: serialising cannot fail.
    let digest = Sha256::digest(serde_json::to_vec(state).unwrap_or_default());
    let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{short}", state.generation)
}

/// A tenant's policy as it stands.
pub struct PolicyView {
    pub state: PolicyState,
    /// The version that answers: the tenant's active one, or the platform default's.
    pub effective_version: String,
    pub default_version: String,
    pub bundles: Vec<BundleSummary>,
    /// Whether the instance answering runs `state`'s generation for the tenant.
    pub loaded_here: bool,
}

impl Approvals {
    /// Refuses a caller that may not change `tenant`'s policy, or a service that keeps no
    /// tenant bundles: checked before an upload's body is read (up to 1 MiB), so that any
    /// token cannot have the service buffer bodies it will refuse anyway.
    pub fn may_upload_policy(&self, caller: &Principal, tenant: &TenantId) -> Result<(), AppError> {
        self.policy_store(caller, tenant).map(drop)
    }

    fn policy_store(
        &self,
        caller: &Principal,
        tenant: &TenantId,
    ) -> Result<&Arc<dyn PolicyStore>, AppError> {
        self.authorize(caller, Permission::ManagePolicy, tenant)?;
        self.policies.store().ok_or(AppError::PolicyStoreDisabled)
    }

    /// Validates and stores a bundle: it must compile, define `data.approvals.decision`, and
    /// pass its own tests. Refused bundles are not stored; the answer lists every message.
    pub async fn upload_policy(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        files: Vec<BundleFile>,
    ) -> Result<Uploaded, AppError> {
        let store = self.policy_store(caller, tenant)?.clone();
        check_files(&files)?;
        let mut policy_files: Vec<PolicyFile> = files
            .iter()
            .map(|f| PolicyFile {
                relative: f.path.clone(),
                text: f.text.clone(),
            })
            .collect();
        // In path order, as the version is computed (and the validation sorts them anyway).
        policy_files.sort_by(|a, b| a.relative.cmp(&b.relative));
        let uploaded = crate::policy::bundle_version(&policy_files);
        if let Some(errors) = self.refusals.of(tenant, &uploaded) {
            return Err(AppError::PolicyInvalid(errors));
        }
        let _slot = UploadSlot::take(&self.uploading, tenant)
            .ok_or_else(|| AppError::UploadInProgress(tenant.clone()))?;
        let origin = format!("upload to tenant {tenant}");
        let budget = self.limits.policy_instructions;
        // Compiling and running the tests is CPU work: off the request workers, one at a time
        // (uploads are rare; a burst of them must not take every core). The turn is held by
        // the validation itself, not by this request: a request that times out or is dropped
        // cannot stop the validation, and must not let the next one start beside it.
        let turn = self
            .uploads
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| AppError::Internal(e.into()))?;
        let sandbox = self.policies.sandbox();
        let validated = crate::policy::stack::on_service_stack("policy-validate", move || {
            let _turn = turn;
            validate(&policy_files, &origin, budget, sandbox.as_deref())
        })
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
        let (version, tests) = match validated {
            Err(AppError::PolicyInvalid(errors)) => {
                // Not a validation stopped by its deadline or the child's memory, nor a test
                // that ran out of time: a busy instance may have caused it, and a retry should
                // be judged afresh (remembered, it was refused for 10 minutes unrun).
                let by_load = |e: &String| {
                    e.starts_with(VALIDATION_STOPPED) || crate::policy::testing::depends_on_load(e)
                };
                if !errors.iter().any(by_load) {
                    self.refusals.remember(tenant, uploaded, errors.clone());
                }
                return Err(AppError::PolicyInvalid(errors));
            }
            other => other?,
        };
        let bundle = StoredBundle {
            version,
            files,
            uploaded_by: caller.subject.clone(),
            uploaded_at: Timestamp::now(),
        };
        let PutBundle { created, pruned } = store
            .put_bundle(tenant, &bundle, self.policies.bundles_kept())
            .await
            .map_err(|e| self.engine_failed(e))?;
        if !pruned.is_empty() {
            tracing::info!(%tenant, version = %bundle.version, ?pruned,
                "older policy bundles deleted to keep policy.max_stored_bundles");
        }
        // Every upload answered is an event, a repeat too (`created: false`): a retry after
        // the first attempt stored the bundle and then failed to record it (a Redis blip, the
        // request deadline) would otherwise leave the upload out of the audit for good.
        let details = json!({
            "files": bundle.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            "tests_passed": tests.passed(),
            "created": created,
            "pruned": pruned,
        });
        self.record_policy_event(AuditEntry::policy(
            tenant,
            &caller.subject,
            "uploaded",
            Some(&bundle.version),
            details,
        ))
        .await?;
        let summary = match created {
            true => BundleSummary::from(&bundle),
            // The first upload's facts stand.
            false => store
                .bundle(tenant, &bundle.version)
                .await
                .map_err(|e| self.engine_failed(e))?
                .as_ref()
                .map_or_else(|| BundleSummary::from(&bundle), BundleSummary::from),
        };
        Ok(Uploaded {
            bundle: summary,
            created,
            pruned,
            tests,
        })
    }

    /// The tenant's policy as a change just left it (`state`, the one it committed), without
    /// reading the state again: a read that fails after the commit must not answer 503 (a
    /// caller retrying without `If-Match` would apply the change twice), nor name a later
    /// generation than this change made. The bundle listing is best-effort for the same
    /// reason: empty when it cannot be read.
    pub async fn policy_view_after_change(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        state: PolicyState,
    ) -> Result<PolicyView, AppError> {
        let store = self.policy_store(caller, tenant)?;
        let bundles = store.bundles(tenant).await.unwrap_or_else(|error| {
            tracing::warn!(%tenant, error = %super::chain(&error),
                "policy changed; its bundles could not be listed in the answer");
            Vec::new()
        });
        Ok(self.view(tenant, state, bundles))
    }

    /// Which versions are active and on trial, for the answer to an upload that is stored
    /// already: read best-effort (neither, logged, when the read fails). Failed with 503 (or
    /// 500 for another version's unreadable summary, in the full view this was), a stored and
    /// audited upload looked refused, and its retry answered `created: false`, `pruned: []`.
    pub async fn policy_state_after_upload(
        &self,
        caller: &Principal,
        tenant: &TenantId,
    ) -> Result<PolicyState, AppError> {
        let store = self.policy_store(caller, tenant)?;
        Ok(store.state(tenant).await.unwrap_or_else(|error| {
            tracing::warn!(%tenant, error = %super::chain(&error),
                "bundle stored; whether it is active could not be read for the answer");
            PolicyState::default()
        }))
    }

    pub async fn policy_view(
        &self,
        caller: &Principal,
        tenant: &TenantId,
    ) -> Result<PolicyView, AppError> {
        let store = self.policy_store(caller, tenant)?;
        let state = store
            .state(tenant)
            .await
            .map_err(|e| self.engine_failed(e))?;
        let bundles = store
            .bundles(tenant)
            .await
            .map_err(|e| self.engine_failed(e))?;
        Ok(self.view(tenant, state, bundles))
    }

    /// `state` and `bundles` as the API shows them, with what is in effect.
    fn view(
        &self,
        tenant: &TenantId,
        state: PolicyState,
        bundles: Vec<BundleSummary>,
    ) -> PolicyView {
        let default_version = self.policies.default_gate().version().to_owned();
        PolicyView {
            loaded_here: self.policies.runs(tenant, &state),
            effective_version: state
                .active
                .clone()
                .unwrap_or_else(|| default_version.clone()),
            default_version,
            state,
            bundles,
        }
    }

    pub async fn policy_bundle(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        version: &str,
    ) -> Result<StoredBundle, AppError> {
        // The identifier first: a malformed one is the caller's mistake whoever calls (400).
        check_version(version)?;
        let store = self.policy_store(caller, tenant)?;
        store
            .bundle(tenant, version)
            .await
            .map_err(|e| self.engine_failed(e))?
            .ok_or_else(|| not_found(tenant, version))
    }

    /// Makes `version` the one that answers.
    pub async fn activate_policy(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        version: &str,
        precondition: &Precondition,
    ) -> Result<PolicyState, AppError> {
        self.require_bundle(caller, tenant, version).await?;
        self.change_policy(caller, tenant, precondition, "activated", |state| {
            let mut next = state.clone();
            if state.active.as_deref() != Some(version) {
                next.history.push(state.active.clone());
                trim(&mut next.history);
                next.active = Some(version.to_owned());
            }
            // A candidate that becomes active has nothing left to trial.
            if next.candidate.as_deref() == Some(version) {
                next.candidate = None;
            }
            Ok((next, Some(version.to_owned())))
        })
        .await
    }

    /// Returns to the version active before the current one (the platform default when the
    /// tenant's first bundle is rolled back).
    pub async fn rollback_policy(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        precondition: &Precondition,
    ) -> Result<PolicyState, AppError> {
        self.policy_store(caller, tenant)?;
        self.change_policy(caller, tenant, precondition, "rolled_back", |state| {
            let mut next = state.clone();
            let previous = next
                .history
                .pop()
                .ok_or_else(|| AppError::NoEarlierPolicy(tenant.clone()))?;
            next.active = previous.clone();
            // As an activation does: a candidate now active has nothing left to trial (each
            // submit evaluated the one bundle twice).
            if next.candidate.is_some() && next.candidate == next.active {
                next.candidate = None;
            }
            Ok((next, previous))
        })
        .await
    }

    /// Trials `version` beside the active one (`None`: stops the trial).
    pub async fn set_policy_candidate(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        version: Option<&str>,
        precondition: &Precondition,
    ) -> Result<PolicyState, AppError> {
        let change = match version {
            Some(version) => {
                self.require_bundle(caller, tenant, version).await?;
                "candidate_set"
            }
            None => {
                self.policy_store(caller, tenant)?;
                "candidate_cleared"
            }
        };
        self.change_policy(caller, tenant, precondition, change, |state| {
            let mut next = state.clone();
            next.candidate = version.map(str::to_owned);
            Ok((next, version.map(str::to_owned)))
        })
        .await
    }

    async fn require_bundle(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        version: &str,
    ) -> Result<(), AppError> {
        // The identifier first: a malformed one is the caller's mistake whoever calls (400).
        check_version(version)?;
        let store = self.policy_store(caller, tenant)?;
        let exists = store
            .bundle(tenant, version)
            .await
            .map_err(|e| self.engine_failed(e))?
            .is_some();
        if exists {
            Ok(())
        } else {
            Err(not_found(tenant, version))
        }
    }

    /// Applies `change` to the tenant's state by compare-and-set, if `precondition` holds for
    /// it, records the event, and reloads this instance so the answer is already in effect here.
    async fn change_policy(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        precondition: &Precondition,
        kind: &str,
        change: impl Fn(&PolicyState) -> Result<(PolicyState, Option<String>), AppError>,
    ) -> Result<PolicyState, AppError> {
        let store = self.policy_store(caller, tenant)?.clone();
        for _ in 0..ATTEMPTS {
            let state = store
                .state(tenant)
                .await
                .map_err(|e| self.engine_failed(e))?;
            if !precondition.holds(&state) {
                return Err(AppError::PolicyPreconditionFailed {
                    tenant: tenant.clone(),
                    current: policy_tag(&state),
                });
            }
            let (mut next, version) = change(&state)?;
            next.generation = state.generation + 1;
            let swapped = match store.swap_state(tenant, &state, &next).await {
                Ok(swapped) => swapped,
                Err(error) => self.swap_outcome(&*store, tenant, &next, error).await?,
            };
            match swapped {
                Swap::Done => {}
                Swap::Moved => continue,
                // Deleted by an upload's prune since it was checked.
                Swap::MissingBundle(missing) => return Err(not_found(tenant, &missing)),
            }
            let details = json!({
                "active": next.active, "candidate": next.candidate,
                "previous_active": state.active, "generation": next.generation,
            });
            // The change is made: an audit write that fails now must not answer 503, or a
            // caller retrying without If-Match applies it twice (a second rollback). Logged
            // loudly, with what the audit misses.
            if let Err(error) = self
                .record_policy_event(AuditEntry::policy(
                    tenant,
                    &caller.subject,
                    kind,
                    version.as_deref(),
                    details.clone(),
                ))
                .await
            {
                tracing::error!(%tenant, actor = %caller.subject, %details, error = %error,
                    "policy changed, but its audit event was not recorded");
            }
            // The next poll would do it within `policy.reload_interval`; the caller should not
            // have to wait for it on the instance that answered. Not for long: the change is
            // made, and a sync queued behind a poll compiling other tenants' large bundles
            // answered 408 for it (a retried rollback then rolled back twice); past this, the
            // answer says it is not loaded here yet and the poll loads it.
            match tokio::time::timeout(RELOAD_AFTER_A_CHANGE, self.policies.sync()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(error = %super::chain(&error), "policy reload after a change failed");
                }
                Err(_) => tracing::info!(%tenant,
                    "policy reload after a change still running; answered before it"),
            }
            return Ok(next);
        }
        Err(AppError::PolicyChanged(tenant.clone()))
    }

    /// What became of a swap whose answer never came (its deadline passed, its connection
    /// dropped): the script may have run. Answering 503 then left a change in effect with no
    /// audit event, and a caller retrying without If-Match applied it twice (a second
    /// rollback). The state is read again, a few times, since a read sent behind the swap on
    /// its connection answers only after it: the change is made if the state is `next`;
    /// someone else's change at `next`'s generation means this one cannot land any more.
    async fn swap_outcome(
        &self,
        store: &dyn PolicyStore,
        tenant: &TenantId,
        next: &PolicyState,
        error: BackendError,
    ) -> Result<Swap, AppError> {
        if matches!(
            error,
            BackendError::InvalidCursor | BackendError::Corrupt { .. }
        ) {
            return Err(self.engine_failed(error));
        }
        for _ in 0..SWAP_READS_AFTER_NO_ANSWER {
            match store.state(tenant).await {
                Ok(now) if now == *next => return Ok(Swap::Done),
                // Another change took the generation this one would have: this one cannot
                // land any more, and is tried again on the new state.
                Ok(now) if now.generation == next.generation => return Ok(Swap::Moved),
                // Unchanged (the swap may still be on its way), or moved further (this one
                // may have landed, then another): nothing is known.
                Ok(_) => break,
                Err(_) => continue,
            }
        }
        Err(self.engine_failed(error))
    }

    async fn record_policy_event(&self, entry: AuditEntry) -> Result<(), AppError> {
        self.to_the_end(|engine, decision_log| async move {
            let recorded = engine.record(entry.clone()).await;
            // Shipped whatever the audit write met: the change or upload is made (or may be,
            // if only the answer was lost), and the SIEM was the one record of who made it
            // that could still have it.
            decision_log.offer(&entry);
            recorded
        })
        .await
    }
}

/// A tenant's one place among the uploads under way on this instance, given back on drop.
struct UploadSlot {
    uploading: Arc<Mutex<HashSet<TenantId>>>,
    tenant: TenantId,
}

impl UploadSlot {
    fn take(uploading: &Arc<Mutex<HashSet<TenantId>>>, tenant: &TenantId) -> Option<Self> {
        let fresh = uploading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tenant.clone());
        fresh.then(|| Self {
            uploading: uploading.clone(),
            tenant: tenant.clone(),
        })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.uploading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.tenant);
    }
}

/// Compiles the bundle and runs its tests, in a sandbox child when there is one (a bundle whose
/// trial or tests allocate without bound stops it, not this instance): its version, or every
/// reason to refuse it.
fn validate(
    files: &[PolicyFile],
    origin: &str,
    budget: usize,
    sandbox: Option<&Sandbox>,
) -> Result<(String, TestReport), AppError> {
    let validated = match sandbox {
        Some(sandbox) => sandbox
            .validate(files, budget)
            .map_err(|stopped| match stopped {
                // Refusing the bundle would send its team to debug a bundle that is fine.
                ValidationStopped::NoSandbox(why) => {
                    tracing::error!(%why, "no policy sandbox for a bundle's validation");
                    AppError::PolicySandboxUnavailable(why)
                }
                ValidationStopped::ByTheBundle(why) => {
                    AppError::PolicyInvalid(vec![format!("{VALIDATION_STOPPED} ({why})")])
                }
            })?,
        None => validate_bundle(files, origin, budget),
    };
    validated.map_err(AppError::PolicyInvalid)
}

/// The upload's paths, as `approvals policy test` checks them too.
fn check_files(files: &[BundleFile]) -> Result<(), AppError> {
    crate::policy::check_upload_paths(files.iter().map(|f| f.path.as_str()))
        .and_then(|()| {
            files
                .iter()
                .try_for_each(|f| crate::policy::check_text(&f.path, &f.text))
        })
        .map_err(AppError::InvalidContent)
}

/// A version is what uploads name bundles by: `sha256:` and 64 lowercase hex digits. Anything
/// else is the caller's mistake (400), not a version that happens to be missing (404).
fn check_version(version: &str) -> Result<(), AppError> {
    let well_formed = version.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if well_formed {
        Ok(())
    } else {
        Err(AppError::InvalidIdentifier(format!(
            "version must match ^sha256:[0-9a-f]{{64}}$, got {:?}",
            version.chars().take(80).collect::<String>()
        )))
    }
}

/// Drops the oldest entries past [`HISTORY`], but keeps a first `None` (the platform default
/// before the tenant's first bundle): rolling back all the way stays possible for a tenant
/// that activated more than that many times.
fn trim(history: &mut Vec<Option<String>>) {
    let excess = history.len().saturating_sub(HISTORY);
    let from = usize::from(history.first().is_some_and(Option::is_none));
    history.drain(from..from + excess);
}

fn not_found(tenant: &TenantId, version: &str) -> AppError {
    AppError::PolicyVersionNotFound {
        tenant: tenant.clone(),
        version: version.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_history_keeps_the_platform_default_at_its_start() {
        let mut history = vec![None];
        for n in 0..HISTORY * 2 {
            history.push(Some(format!("v{n}")));
            trim(&mut history);
        }
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history[0], None);
        assert_eq!(history[1], Some(format!("v{}", HISTORY + 1)));
        assert_eq!(history.last(), Some(&Some(format!("v{}", HISTORY * 2 - 1))));

        // Without the default at the start, the oldest go.
        let mut history: Vec<_> = (0..=HISTORY).map(|n| Some(format!("v{n}"))).collect();
        trim(&mut history);
        assert_eq!(history[0], Some("v1".to_owned()));
    }
}
