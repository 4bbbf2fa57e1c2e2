//! The seam between the approval service and whatever parks its approvals.
//!
//! Everything a backend shares lives here: identifiers that can only hold valid values, the
//! approval record, the typed outcomes of each operation, and the [`ApprovalBackend`] trait.
//! The `conformance` feature adds the test functions every backend must pass unchanged.

mod approval;
mod audit;
mod backend;
mod ids;
mod stats;
mod time;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use approval::{Approval, DecisionRequest, Status, Verdict};
pub use audit::{AuditEvent, AuditKind};
pub use backend::{
    ApprovalBackend, BackendError, DecisionOutcome, ImportOutcome, Page, ScanPage, SubmitOutcome,
};
pub use ids::{ApprovalId, InvalidIdentifier, TenantId};
pub use stats::{PendingStats, TenantPending};
pub use time::Timestamp;
