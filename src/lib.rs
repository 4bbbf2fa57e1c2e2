//! The approval service: a policy gate in front of a queue of human approvals.
//!
//! `approvals serve` wires these together: `config` (figment), `telemetry` (tracing and the
//! Prometheus recorder), `policy` (regorus), `auth` (bearer tokens), `api` (axum routes),
//! `background` (expiry sweeper and pending figures) and `startup` (the backend from config
//! and the server's life). `cli` holds the other commands: `migration` is `approvals migrate`
//! (one engine to another), `worker` (feature `temporal`) is `approvals worker`. `dual` pairs
//! two engines for the soak of a Redis → Temporal migration (`backend.kind = "dual"`).

pub mod api;
pub mod auth;
pub mod background;
pub mod cli;
pub mod config;
pub mod dual;
pub mod metrics;
pub mod migration;
pub mod policy;
pub mod startup;
pub mod telemetry;
#[cfg(feature = "temporal")]
pub mod worker;
