//! The Temporal `ApprovalBackend`: one `ApprovalWorkflow` execution per approval.
//!
//! - [`TemporalBackend`]: the client side, what the service uses with `backend.kind = "temporal"`.
//! - [`run_worker`]: the worker, what `approvals worker` runs.
//! - [`workflow`]: the workflow, its input, its update and its memo layout.
//!
//! See DESIGN.md next to this crate for the design and what is not done yet.

mod backend;
mod cursor;
mod recent;
mod settings;
mod worker;
pub mod workflow;

pub use backend::{workflow_id, TemporalBackend, TENANT_ID};
pub use settings::TemporalSettings;
pub use worker::run_worker;
pub use workflow::ApprovalWorkflow;
