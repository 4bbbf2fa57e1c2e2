//! The Redis `ApprovalBackend`: the ADR v1 engine.
//!
//! Layout (see `keys`): each approval is a JSON string under `approval:{tenant}:{id}` whose TTL
//! is its lifetime (plus a short grace for the sweeper), beside per-tenant indexes, a global
//! deadline set, an audit stream per tenant and one pub/sub channel. Every state change is one
//! Lua script (`scripts`), so the first reviewer wins and the indexes agree with the records
//! even with many service instances on one Redis.

mod backend;
mod keys;
mod legacy;
mod record;
mod scripts;
mod waiters;

pub use backend::{RedisBackend, RedisSettings};
pub use keys::EXPIRY_GRACE;
