//! The `ApprovalBackend` trait: the one seam through which the service parks approvals.
//!
//! Every operation returns a typed outcome rather than a bool, so the HTTP layer maps results
//! to status codes without guessing, and every backend is held to the same semantics by the
//! conformance suite.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Approval, ApprovalId, AuditEvent, DecisionRequest, PendingStats, Status, TenantId, Timestamp,
};

/// Why a backend call failed. None of these means the request was wrong.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The store cannot be reached or refused the call; worth retrying later.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish within its deadline.
    #[error("backend call `{0}` timed out")]
    Timeout(&'static str),
    /// A cursor that this backend did not hand out.
    #[error("invalid cursor")]
    InvalidCursor,
    /// A stored record that cannot be read back; never silently skipped.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// Parked now.
    Created(Approval),
    /// A record with this id already exists in the tenant (in any status): nothing was written.
    Existing(Approval),
}

#[derive(Debug, Clone, PartialEq)]
pub enum DecisionOutcome {
    /// This call made the decision.
    Decided(Approval),
    /// Someone decided first; the current record.
    AlreadyDecided(Approval),
    /// The deadline passed first.
    Expired(Approval),
    NotFound,
    /// The decider submitted the approval; it stays pending.
    SelfApproval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported,
    AlreadyPresent,
}

/// One page of a listing. `next_cursor` is `None` on the last page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// One batch of a full scan, for migration. `next` is `None` when the scan is complete.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPage {
    pub items: Vec<Approval>,
    pub next: Option<String>,
}

/// Where approvals are parked. Object-safe: the service holds an `Arc<dyn ApprovalBackend>`.
///
/// Implementations put every call under a deadline and answer [`BackendError::Unavailable`] or
/// [`BackendError::Timeout`] rather than hang.
#[async_trait]
pub trait ApprovalBackend: Send + Sync + 'static {
    /// A short name for logs and metrics (`redis`, `temporal`).
    fn kind(&self) -> &'static str;

    /// Parks a pending approval unless its id already exists in the tenant.
    async fn submit(&self, approval: Approval) -> Result<SubmitOutcome, BackendError>;

    /// The record as of now (a pending record past its deadline reads as expired).
    async fn get(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, BackendError>;

    /// Accepts or rejects atomically: of concurrent decisions exactly one is `Decided`.
    async fn decide(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        decision: DecisionRequest,
    ) -> Result<DecisionOutcome, BackendError>;

    /// Returns as soon as the approval is no longer pending, or after `timeout` with the
    /// still-pending record. `None` if it does not exist.
    async fn wait_for_decision(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        timeout: Duration,
    ) -> Result<Option<Approval>, BackendError>;

    /// A tenant's approvals in one status, oldest `submitted_at` first (ties by id).
    /// Following `next_cursor` visits every matching approval exactly once.
    async fn list(
        &self,
        tenant: &TenantId,
        status: Status,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Approval>, BackendError>;

    /// The tenant's audit events from `since` on, oldest first.
    async fn audit(
        &self,
        tenant: &TenantId,
        since: Option<Timestamp>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEvent>, BackendError>;

    /// Pending counts and ages per tenant, bucketed at `bounds` (ascending), as of `now`.
    async fn pending_stats(
        &self,
        bounds: &[Duration],
        now: Timestamp,
    ) -> Result<PendingStats, BackendError>;

    /// Every record, in batches of about `batch`, for migration. Start with `cursor = None`.
    async fn scan(&self, cursor: Option<&str>, batch: usize) -> Result<ScanPage, BackendError>;

    /// Writes a record carried over from another backend as it is (status, times, decision),
    /// unless one with its id exists. Idempotent.
    async fn import(&self, approval: Approval) -> Result<ImportOutcome, BackendError>;

    /// Records the expiry of every pending approval whose deadline has passed; returns the
    /// approvals this call expired (none that another instance expired first). Safe to run on
    /// every instance at once.
    async fn expire_due(&self, now: Timestamp) -> Result<Vec<Approval>, BackendError>;

    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Engine-specific gauges for `/metrics`, read at scrape time: (name, help, value).
    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        Vec::new()
    }

    /// Finds records an earlier system wrote in this store (ADR v1) and takes them over, so
    /// they list, count and expire like any other. Returns how many it adopted.
    async fn adopt_foreign_records(&self) -> Result<usize, BackendError> {
        Ok(0)
    }

    /// Accepts, as [`ApprovalBackend::decide`] with [`crate::Verdict::Accept`].
    async fn accept(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        decided_by: &str,
        reason: Option<String>,
    ) -> Result<DecisionOutcome, BackendError> {
        let request = DecisionRequest::now(crate::Verdict::Accept, decided_by, reason);
        self.decide(tenant, id, request).await
    }

    /// Rejects, as [`ApprovalBackend::decide`] with [`crate::Verdict::Reject`].
    async fn reject(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        decided_by: &str,
        reason: Option<String>,
    ) -> Result<DecisionOutcome, BackendError> {
        let request = DecisionRequest::now(crate::Verdict::Reject, decided_by, reason);
        self.decide(tenant, id, request).await
    }
}
