//! The approval service: a policy gate in front of a queue of human approvals.
//!
//! Layers, each depending only on those below it:
//!
//! - surfaces: `api` (the HTTP API), `ui` (the reviewers' inbox at `/ui/`), `cli` (`serve`,
//!   `worker`, `migrate`, `token`, `dev`);
//! - `app`: the use cases (submit, read, wait, list, decide, audit) with their rules, metrics
//!   and logs — what every surface calls;
//! - `policy` (regorus), `auth` (bearer tokens), `metrics` (Prometheus);
//! - the engine contract (`approvals-core`), implemented by `approvals-redis` and
//!   `approvals-temporal`; `engines` is the one place that builds them from `config`, and
//!   pairs them for the migration soak (`engines::dual`).
//!
//! `startup` wires a running service together and `server` runs its HTTP connections; `migration` moves records between engines;
//! `worker` (feature `temporal`) runs the Temporal worker; `telemetry` sets up logging;
//! `decision_log` ships recorded audit events to a SIEM; `notify` delivers webhooks.

pub mod api;
pub mod app;
pub mod auth;
mod children;
pub mod cli;
pub mod config;
pub mod decision_log;
pub mod engines;
pub mod metrics;
pub mod migration;
pub mod notify;
pub mod policy;
pub mod server;
pub mod startup;
pub mod telemetry;
pub mod ui;
#[cfg(feature = "temporal")]
pub mod worker;
