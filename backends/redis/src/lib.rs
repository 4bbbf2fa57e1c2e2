//! The Redis engine: the ADR v1 store.
//!
//! Layout (see `keys`): each approval is a JSON string under `approval:{tenant}:{id}` whose TTL
//! is its lifetime (a pending one also has a longer-lived shadow copy, so a late sweeper still
//! records its expiry), beside per-tenant indexes, a global
//! deadline set, an audit stream per tenant and one pub/sub channel. Every state change is one
//! Lua script (`scripts`), so the first reviewer wins and the indexes agree with the records
//! even with many service instances on one Redis.
//!
//! - `backend`: the request path ([`approvals_core::ApprovalBackend`]);
//! - `transfer`: whole records in and out ([`approvals_core::RecordTransfer`]);
//! - `policy_store`: tenants' policy bundles ([`approvals_core::PolicyStore`]);
//! - `chores`: what the engine runs by itself (sweeper, retention, ADR v1 adoption);
//! - `settings`: the `[redis]` configuration section.

mod adopt;
mod backend;
mod chores;
mod connections;
mod due_reads;
mod health;
mod keys;
mod legacy;
mod policy_store;
mod record;
mod replaceable;
mod scripts;
mod settings;
mod stats;
mod transfer;
mod waiters;
mod waiting;

pub use backend::RedisBackend;
pub use chores::{ChoreSchedule, Chores};
pub use connections::open_client;
pub use health::{EvictingRedis, RedisFacts, UnsupportedRedis};
pub use replaceable::{Handed, ReplaceableConnection};
pub use settings::RedisSettings;
