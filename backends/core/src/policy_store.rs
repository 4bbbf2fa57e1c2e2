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

/// Where tenants' policy bundles are kept.
#[async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// Stores `bundle` unless its version exists in the tenant; `true` if stored now.
    async fn put_bundle(
        &self,
        tenant: &TenantId,
        bundle: &StoredBundle,
    ) -> Result<bool, BackendError>;

    async fn bundle(
        &self,
        tenant: &TenantId,
        version: &str,
    ) -> Result<Option<StoredBundle>, BackendError>;

    /// The tenant's bundles, newest upload first.
    async fn bundles(&self, tenant: &TenantId) -> Result<Vec<BundleSummary>, BackendError>;

    /// The tenant's state (the default state when it never had one).
    async fn state(&self, tenant: &TenantId) -> Result<PolicyState, BackendError>;

    /// Replaces the tenant's state with `next` if it is still `expected`; `false` when someone
    /// changed it meanwhile (nothing written).
    async fn swap_state(
        &self,
        tenant: &TenantId,
        expected: &PolicyState,
        next: &PolicyState,
    ) -> Result<bool, BackendError>;

    /// Every tenant's state: what each instance polls to reload. A tenant whose state cannot be
    /// read is there with why (`Err`): its instances keep what they serve for it, and every
    /// other tenant still reloads.
    async fn states(&self)
        -> Result<BTreeMap<TenantId, Result<PolicyState, String>>, BackendError>;
}
