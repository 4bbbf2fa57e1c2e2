//! The engine contract: what the service asks of whatever parks its approvals.
//!
//! Two traits, because two kinds of caller exist. [`ApprovalBackend`] is the request path and
//! everything the service itself needs (health, pending figures). [`RecordTransfer`] walks and
//! writes whole records, for `approvals migrate` and the dual soak. Chores an engine needs to
//! keep itself right (Redis' expiry sweeper) are the engine's own business, started by it; it
//! reports what they did through [`EngineEvents`].
//!
//! Every operation returns a typed outcome rather than a bool, so the application maps results
//! without guessing, and every engine is held to the same semantics by the conformance suite.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Approval, ApprovalId, AuditEntry, AuditEvent, DecisionRequest, PendingStats, Status, TenantId,
    Timestamp,
};

/// The cause of a backend failure, kept for logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves when a wait must end early (the service shutting down).
pub type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A [`Stop`] that never comes.
pub fn no_stop() -> Stop {
    Box::pin(std::future::pending())
}

/// Why a backend call failed. None of these means the request was wrong.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The store cannot be reached or refused the call; worth retrying later.
    #[error("the store is unavailable (during `{op}`)")]
    Unavailable {
        op: &'static str,
        #[source]
        source: BoxError,
    },
    /// The call did not finish within its deadline.
    #[error("backend call `{0}` did not answer within its deadline")]
    Timeout(&'static str),
    /// A cursor that this backend did not hand out.
    #[error("invalid cursor")]
    InvalidCursor,
    /// A stored record that cannot be read back; never silently skipped.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl BackendError {
    /// `op` failed because of `source` (a client error, or a sentence).
    pub fn unavailable(op: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            op,
            source: source.into(),
        }
    }

    /// A stable, low-cardinality name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::InvalidCursor => "invalid_cursor",
            Self::Corrupt { .. } => "corrupt",
        }
    }
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
    /// Settled so long ago that this engine would already have dropped it (see
    /// [`RecordTransfer::retained_until`]): nothing written, no audit event.
    PastRetention,
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
    /// Keys of records in this batch that could not be read (passed over, logged): a
    /// migration must not call a run reconciled while records are left behind unseen.
    pub unreadable: Vec<String>,
}

/// How long approvals and their traces live: service-wide policy every engine applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Lifetime of an approval without a per-tenant override (and of an ADR v1 record that
    /// carries none).
    pub default_ttl: Duration,
    /// How long an accepted or rejected record stays readable after its decision.
    pub decided_retention: Duration,
    /// How long an expired record stays readable after its expiry.
    pub expired_retention: Duration,
    /// How long an audit event is kept (an engine may keep it longer, never shorter).
    pub audit_retention: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        let day = Duration::from_secs(86_400);
        Self {
            default_ttl: day,
            decided_retention: day,
            expired_retention: day,
            audit_retention: 90 * day,
        }
    }
}

/// An engine's calls to its store, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallStatus {
    /// Connections the calls share.
    pub connections: usize,
    /// Calls sent and not answered yet.
    pub in_flight: usize,
    /// Callers queued for a slot because `max_in_flight` calls are in flight.
    pub waiting: usize,
    pub max_in_flight: usize,
}

/// What an engine can tell about itself without a call, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStatus {
    pub calls: Option<CallStatus>,
    /// For a pairing of engines: whether the secondary answered its last call.
    pub secondary_up: Option<bool>,
    /// Long-polls of this process past their first read, waiting to be woken by a decision
    /// (`None`: the engine does not count them). What shows that a waiter is parked, rather
    /// than about to read, without a sleep.
    pub waiting: Option<usize>,
    /// Whether decisions reach this process's waiters as they are taken (Redis: its one
    /// subscriber is subscribed; `None`: the engine has no such channel). While not, waiters
    /// read for themselves every few seconds: answers come late, not wrong.
    pub decisions_heard: Option<bool>,
}

/// Counts an engine's parked long-polls for [`EngineStatus::waiting`].
#[derive(Debug, Clone, Default)]
pub struct WaitingCount(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl WaitingCount {
    /// Counts one long-poll until the guard is dropped.
    pub fn enter(&self) -> WaitingGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WaitingGuard(self.0.clone())
    }

    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One parked long-poll, counted while it lives.
#[derive(Debug)]
pub struct WaitingGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What an engine's own chores did, for the service to count: the service never has to ask.
pub trait EngineEvents: Send + Sync + 'static {
    /// This process recorded the expiry of `approval` at `recorded_at`.
    fn expired(&self, approval: &Approval, recorded_at: Timestamp);
    /// One pass of a periodic chore (`sweep`, `adopt`) finished.
    fn chore_finished(&self, chore: &'static str, result: Result<usize, &BackendError>);
    /// A stored value under `key` could not be read and was passed over.
    fn unreadable(&self, key: &str, reason: &str);
}

/// Which of an engine's paged reads a cursor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Approvals,
    Audit,
}

/// Where approvals are parked: the request path. Object-safe: the service holds an
/// `Arc<dyn ApprovalBackend>`.
///
/// Implementations put every call under a deadline and answer [`BackendError::Unavailable`] or
/// [`BackendError::Timeout`] rather than hang.
#[async_trait]
pub trait ApprovalBackend: Send + Sync + 'static {
    /// A short name for logs and metrics (`redis`, `temporal`, `dual`).
    fn kind(&self) -> &'static str;

    /// How long after its timestamp an event may still appear in [`ApprovalBackend::audit`]
    /// behind events already returned. Zero for an audit appended in order; readers that
    /// follow the audit (live streams, webhooks) re-read that stretch.
    fn audit_settle_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Where a reader of `tenant`'s audit that starts "from now" starts, for an engine whose
    /// event ids a clock other than the instance's stamps (Redis' own): the id of the last
    /// event so far, after which everything is new whatever the clocks say. `None`: the ids
    /// are the instance's time, so a reader starts from `Timestamp::now()`.
    async fn audit_end(&self, _tenant: &TenantId) -> Result<Option<String>, BackendError> {
        Ok(None)
    }

    /// Whether `cursor` has the shape of one this engine hands out for `listing` (a forged
    /// one is `InvalidCursor`), without reading anything: the service checks it before access,
    /// as the contract orders a request's checks.
    fn check_cursor(&self, _listing: Listing, _cursor: &str) -> Result<(), BackendError> {
        Ok(())
    }

    /// Parks a pending approval unless its id already exists in the tenant, recording
    /// `submitted` (its decision-log event) with it, atomically: no approval without its event,
    /// and a repeat records nothing.
    async fn park(
        &self,
        approval: Approval,
        submitted: AuditEntry,
    ) -> Result<SubmitOutcome, BackendError>;

    /// [`ApprovalBackend::park`] with the plain submitted event (no shadow verdict).
    async fn submit(&self, approval: Approval) -> Result<SubmitOutcome, BackendError> {
        let submitted = AuditEntry::submitted(&approval);
        self.park(approval, submitted).await
    }

    /// Appends an event that belongs to no parked approval to its tenant's audit: the
    /// decision log of a submit answered `allow` or `deny`.
    async fn record(&self, entry: AuditEntry) -> Result<(), BackendError>;

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

    /// Returns as soon as the approval is no longer pending, or after `timeout`, or as soon as
    /// `stop` resolves (the service shutting down), with the record as it is then. `None` if
    /// it does not exist. Waking costs no store call where the engine can avoid it.
    async fn wait_for_decision(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        timeout: Duration,
        stop: Stop,
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

    /// The tenant's audit events from `since` on, oldest first. `next_cursor` is the last
    /// returned event's `event_id`, and any event's id is a cursor to go on after it (a
    /// filtered read stops at the last event it keeps).
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

    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Connection figures and the like, read at scrape time.
    fn status(&self) -> EngineStatus {
        EngineStatus::default()
    }
}

/// Whole records in and out: the walk `approvals migrate` and the dual soak use.
#[async_trait]
pub trait RecordTransfer: ApprovalBackend {
    /// Every record, in batches of about `batch`. Start with `cursor = None`.
    async fn scan(&self, cursor: Option<&str>, batch: usize) -> Result<ScanPage, BackendError>;

    /// Writes a record carried over from another backend as it is (status, times, decision),
    /// unless one with its id exists, or it is past this engine's retention. Idempotent.
    async fn import(&self, approval: Approval) -> Result<ImportOutcome, BackendError>;

    /// When this engine drops `approval` as it stands, by its own retention (a pending one:
    /// once expired, kept as such); `None` when that is not the engine's own to say
    /// (Temporal's retention is the namespace's). Engines keep records for different times,
    /// so a record one side has dropped is not a difference, and one the target would drop at
    /// once is not imported.
    fn retained_until(&self, _approval: &Approval) -> Option<Timestamp> {
        None
    }

    /// Whether this engine, by its own retention, no longer keeps `approval` at `now`.
    fn past_retention(&self, approval: &Approval, now: Timestamp) -> bool {
        self.retained_until(approval).is_some_and(|end| end <= now)
    }
}
