//! Black-box tests of the HTTP contract (api-v1.md) against the real service and a real
//! redis-server per test. One binary, many modules: one link, parallel tests.

#[path = "../common/metrics.rs"]
mod metrics;
#[cfg(feature = "temporal")]
#[path = "../common/shared_temporal.rs"]
mod shared_temporal;
#[macro_use]
mod support;

mod auth;
mod browser;
mod connections;
mod decide;
mod decision_log;
mod errors;
mod events;
mod expiry;
mod fairness;
mod http2;
mod legacy;
mod list_and_audit;
mod ops;
mod outage;
mod policy;
mod submit;
mod ui;
mod waiting;
mod webhooks;
