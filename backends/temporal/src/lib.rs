//! The Temporal engine: one `ApprovalWorkflow` execution per approval, one short
//! `DecisionLogWorkflow` execution per decision-log event that parks nothing.
//!
//! Without the `engine` feature this crate is only [`TemporalSettings`] (the `[temporal]`
//! configuration section), so a Redis-only service reads and checks that section without
//! compiling the Temporal SDK. With it:
//!
//! - `TemporalBackend`: the client side, what the service uses with `backend.kind = "temporal"`
//!   (request path in `backend`, pending figures in `stats`, whole records in `transfer`);
//! - `run_worker_with_events`: the worker, what `approvals worker` runs (it reports the
//!   expiries its workflows record, `expiry`);
//! - `workflow`: the workflow, its input, its update and its memo layout; `record`: the
//!   versioned types it persists.
//!
//! See DESIGN.md next to this crate for the design.

mod settings;

pub use settings::TemporalSettings;

#[cfg(feature = "engine")]
mod backend;
#[cfg(feature = "engine")]
mod client;
#[cfg(feature = "engine")]
mod cursor;
#[cfg(feature = "engine")]
pub mod expiry;
#[cfg(feature = "engine")]
mod recent;
#[cfg(feature = "engine")]
pub mod record;
#[cfg(feature = "engine")]
mod stats;
#[cfg(feature = "engine")]
mod transfer;
#[cfg(feature = "engine")]
mod worker;
#[cfg(feature = "engine")]
pub mod workflow;

#[cfg(feature = "engine")]
pub use backend::{workflow_id, Namespace, TemporalBackend, TENANT_ATTRIBUTE, TENANT_ID};
#[cfg(feature = "engine")]
pub use worker::{run_worker, run_worker_with_events};
#[cfg(feature = "engine")]
pub use workflow::{ApprovalWorkflow, DecisionLogWorkflow};
