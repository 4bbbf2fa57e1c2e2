//! The seam between the approval service and whatever parks its approvals.
//!
//! Everything the engines share lives here: identifiers that can only hold valid values, the
//! approval record, its audit events (built here once for every engine), the typed outcomes of
//! each operation, and the engine contract ([`ApprovalBackend`], [`RecordTransfer`]). The
//! `conformance` feature adds the test functions every engine must pass unchanged.

mod approval;
mod audit;
mod backend;
mod digest;
mod ids;
mod policy_store;
mod repeated_failure;
mod stats;
mod time;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use approval::{Approval, DecisionRequest, Status, Verdict, ENDED_REASON, EXPIRED_REASON};
pub use audit::{AuditEntry, AuditEvent, AuditKind, PolicyAnswer, MIGRATION_ACTOR, SYSTEM_ACTOR};
pub use backend::no_stop;
pub use backend::{
    ApprovalBackend, BackendError, BoxError, CallStatus, DecisionOutcome, EngineEvents,
    EngineStatus, ImportOutcome, Lifetimes, Listing, Page, RecordTransfer, ScanPage, Stop,
    SubmitOutcome, WaitingCount, WaitingGuard,
};
pub use digest::action_digest;
pub use ids::{ApprovalId, InvalidIdentifier, TenantId};
pub use policy_store::{
    BundleFile, BundleSummary, PolicyState, PolicyStore, PutBundle, StoredBundle, Swap,
};
pub use repeated_failure::{FailureLog, RepeatedFailure, REMIND_EVERY};
pub use stats::{PendingStats, TenantPending};
pub use time::Timestamp;
