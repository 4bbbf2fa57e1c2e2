//! Whether this Redis can hold approvals: it answers, it keeps what it is given
//! (`maxmemory-policy noeviction`, unless `redis.allow_eviction`), and it takes writes.

use approvals_core::{BackendError, Timestamp};

use crate::backend::RedisBackend;
use crate::keys;

impl RedisBackend {
    /// Ready when Redis answers, would keep what it is given (`maxmemory-policy noeviction`,
    /// unless `redis.allow_eviction`), and takes a write (a full Redis refuses them).
    pub(crate) async fn check_ready(&self) -> Result<(), BackendError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("memory");
        pipe.cmd("SET")
            .arg(keys::WRITE_PROBE)
            .arg(Timestamp::now().as_millis())
            .arg("PX")
            .arg(60_000)
            .ignore();
        let (info,): (String,) = self
            .with_conn("ping", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        match eviction_policy(&info) {
            Some(policy) if policy != "noeviction" && !self.settings.allow_eviction => Err(
                BackendError::unavailable("ping", EvictingRedis::new(policy)),
            ),
            _ => Ok(()),
        }
    }
}

impl RedisBackend {
    /// This Redis' `maxmemory-policy`, for the start-up check: `Ok(None)` if it does not say.
    pub async fn eviction_policy(&self) -> Result<Option<String>, BackendError> {
        let info: String = self
            .with_conn("info", |mut conn| async move {
                redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(eviction_policy(&info).map(str::to_owned))
    }
}

/// A Redis that may evict approvals: `maxmemory-policy` other than `noeviction`. Every record
/// has a TTL, so even the `volatile-*` policies evict approvals.
#[derive(Debug, thiserror::Error)]
#[error(
    "Redis' maxmemory-policy is {policy}: it may evict approvals when memory runs short. \
     Set maxmemory-policy noeviction (or redis.allow_eviction = true for a Redis that can \
     never fill up)"
)]
pub struct EvictingRedis {
    pub policy: String,
}

impl EvictingRedis {
    fn new(policy: &str) -> Self {
        Self {
            policy: policy.to_owned(),
        }
    }
}

/// `maxmemory_policy` from `INFO memory`.
fn eviction_policy(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.strip_prefix("maxmemory_policy:"))
        .map(str::trim)
}
