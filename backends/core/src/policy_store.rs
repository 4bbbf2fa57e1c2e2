//! The tenant policy store's contract: where each tenant's uploaded policy bundles live, and
//! which of them answers.
//!
//! Bundles are immutable versions named by their `sha256:` digest; what changes is a tenant's
//! [`PolicyState`] (the active version, the candidate on trial, the versions active before).
//! Every instance of the service reads all states often ([`PolicyStore::states`]) and swaps
//! its compiled policies when one changed: that is the hot reload.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{BackendError, TenantId, Timestamp};

/// One `.rego` file of an uploaded bundle: its '/'-separated relative path and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BundleFile {
    pub path: String,
    pub text: String,
}

/// An uploaded bundle: its files and who uploaded them, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBundle {
    /// `sha256:` digest over the files' paths and texts (the `policy_version`).
    pub version: String,
    pub files: Vec<BundleFile>,
    pub uploaded_by: String,
    pub uploaded_at: Timestamp,
}

/// A bundle without its files, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSummary {
    pub version: String,
    pub uploaded_by: String,
    pub uploaded_at: Timestamp,
}

impl From<&StoredBundle> for BundleSummary {
    fn from(b: &StoredBundle) -> Self {
        Self {
            version: b.version.clone(),
            uploaded_by: b.uploaded_by.clone(),
            uploaded_at: b.uploaded_at,
        }
    }
}

/// Which of a tenant's bundles answer. `None` for `active` is the platform default bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    /// Bumped by every change: the reload compares it, and a change is applied only to the
    /// state it was computed from (compare-and-set).
    pub generation: u64,
    pub active: Option<String>,
    /// Evaluated beside the active version on live submits, never deciding.
    pub candidate: Option<String>,
    /// The versions active before, oldest first (`None`: the platform default); a rollback
    /// returns to the last.
    pub history: Vec<Option<String>>,
}

/// What storing a bundle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutBundle {
    /// `false` when the version was stored before (only its place in the upload order, which
    /// pruning reads, is refreshed).
    pub created: bool,
    /// Versions deleted to keep the tenant within its count, oldest upload first.
    pub pruned: Vec<String>,
}

/// How a compare-and-set of a tenant's state ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    Done,
    /// Someone changed the state meanwhile: nothing written.
    Moved,
    /// The new state makes this version active or candidate and it is not stored (pruned
    /// since it was checked): nothing written.
    MissingBundle(String),
}

/// Where tenants' policy bundles are kept.
#[async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// Stores `bundle` unless its version exists in the tenant. A tenant keeps at most `keep`
    /// versions besides those its state names (active, candidate, history): storing one more
    /// deletes the oldest uploads no state names. Without that, a pipeline uploading on every
    /// commit grows the store, and every listing, for good.
    async fn put_bundle(
        &self,
        tenant: &TenantId,
        bundle: &StoredBundle,
        keep: usize,
    ) -> Result<PutBundle, BackendError>;

    async fn bundle(
        &self,
        tenant: &TenantId,
        version: &str,
    ) -> Result<Option<StoredBundle>, BackendError>;

    /// The tenant's bundles, newest upload first.
    async fn bundles(&self, tenant: &TenantId) -> Result<Vec<BundleSummary>, BackendError>;

    /// The tenant's state (the default state when it never had one).
    async fn state(&self, tenant: &TenantId) -> Result<PolicyState, BackendError>;

    /// Replaces the tenant's state with `next` if it is still `expected` and the versions
    /// `next` newly makes active or candidate are stored, in one step: a prune cannot delete a
    /// version between the check and the change.
    async fn swap_state(
        &self,
        tenant: &TenantId,
        expected: &PolicyState,
        next: &PolicyState,
    ) -> Result<Swap, BackendError>;

    /// Every tenant's state: what each instance polls to reload. A tenant whose state cannot be
    /// read is there with why (`Err`): its instances keep what they serve for it, and every
    /// other tenant still reloads.
    async fn states(&self)
        -> Result<BTreeMap<TenantId, Result<PolicyState, String>>, BackendError>;
}
