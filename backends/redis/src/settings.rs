//! `[redis]`: how the Redis engine reaches its server. Deserialised by the service's config
//! loader; the engine's lifetimes come from the service-wide `[approvals]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    pub url: String,
    /// Deadline of every Redis call (the wait for a slot included); an outage is answered
    /// within it.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Multiplexed connections the request path shares (each pipelines every caller's
    /// commands); pub/sub takes one more.
    pub connections: usize,
    /// Redis calls in flight at once per instance; beyond it callers queue, under their
    /// deadline.
    pub max_in_flight: usize,
    /// Approximate cap on each tenant's audit stream.
    pub audit_max_len: u64,
    /// Serve from a Redis whose `maxmemory-policy` evicts keys. Evicted approvals, indexes and
    /// audit entries are lost without a trace, so this is only for a Redis that can never fill
    /// up; start-up and readiness refuse such a Redis unless this is set.
    pub allow_eviction: bool,
}

impl RedisSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            call_timeout: Duration::from_secs(2),
            connections: 2,
            max_in_flight: 1024,
            audit_max_len: 1_000_000,
            allow_eviction: false,
        }
    }
}
