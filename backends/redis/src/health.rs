//! Whether this Redis can hold approvals: it answers, it keeps what it is given
//! (`maxmemory-policy noeviction`, unless `redis.allow_eviction`), and it takes writes.

use approvals_core::{BackendError, Timestamp};

use crate::backend::RedisBackend;
use crate::keys;

impl RedisBackend {
    /// Ready when Redis answers, is one this service can run on ([`UnsupportedRedis`]), would
    /// keep what it is given (`maxmemory-policy noeviction`, unless `redis.allow_eviction`),
    /// and takes a write (a full Redis refuses them).
    pub(crate) async fn check_ready(&self) -> Result<(), BackendError> {
        let mut pipe = RedisFacts::pipe();
        pipe.cmd("SET")
            .arg(keys::WRITE_PROBE)
            .arg(Timestamp::now().as_millis())
            .arg("PX")
            .arg(60_000)
            .ignore();
        let facts = self.facts_from("ping", pipe).await?;
        if let Some(unsupported) = facts.unsupported {
            return Err(BackendError::unavailable("ping", unsupported));
        }
        match facts.eviction_policy {
            Some(policy) if policy != "noeviction" && !self.settings.allow_eviction => {
                Err(BackendError::unavailable("ping", EvictingRedis { policy }))
            }
            _ => Ok(()),
        }
    }

    /// What the start-up check reads of this Redis, in one round trip (readiness reads the same).
    pub async fn facts(&self) -> Result<RedisFacts, BackendError> {
        self.facts_from("info", RedisFacts::pipe()).await
    }

    /// Runs `pipe` (the INFO sections of [`RedisFacts::pipe`], and anything it ignores).
    async fn facts_from(
        &self,
        op: &'static str,
        pipe: redis::Pipeline,
    ) -> Result<RedisFacts, BackendError> {
        let (memory, server, cluster): (String, String, String) = self
            .with_conn(
                op,
                |mut conn| async move { pipe.query_async(&mut conn).await },
            )
            .await?;
        Ok(RedisFacts {
            unsupported: UnsupportedRedis::of(&server, &cluster),
            eviction_policy: eviction_policy(&memory).map(str::to_owned),
        })
    }
}

/// What this service needs to know of a Redis before it parks approvals there.
pub struct RedisFacts {
    /// Why it cannot run on it at all (cluster mode, before 7.0).
    pub unsupported: Option<UnsupportedRedis>,
    /// Its `maxmemory-policy`, if it says.
    pub eviction_policy: Option<String>,
}

impl RedisFacts {
    /// `INFO memory`, `server` and `cluster`, in that order.
    fn pipe() -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for section in ["memory", "server", "cluster"] {
            pipe.cmd("INFO").arg(section);
        }
        pipe
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

/// `maxmemory_policy` from `INFO memory`.
fn eviction_policy(info: &str) -> Option<&str> {
    info_field(info, "maxmemory_policy")
}

/// A Redis this service cannot run on. In cluster mode every script touching a tenant's keys
/// and the global ones (deadlines, tenants, sums) fails `CROSSSLOT`: readiness passed (its probe
/// is one key) while every submit failed. Before 7.0 there is no `PEXPIRETIME`, which adopting
/// ADR v1 records reads.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnsupportedRedis(String);

impl UnsupportedRedis {
    /// From `INFO server` and `INFO cluster`.
    fn of(server: &str, cluster: &str) -> Option<Self> {
        if info_field(cluster, "cluster_enabled") == Some("1") {
            return Some(Self(
                "Redis runs in cluster mode, which this service does not support (its scripts \
                 write keys of many slots): use a standalone Redis, with replicas if you like"
                    .into(),
            ));
        }
        let version = info_field(server, "redis_version")?;
        let major: u32 = version.split('.').next()?.parse().ok()?;
        (major < 7).then(|| {
            Self(format!(
                "Redis {version} is too old: 7.0 or later is needed"
            ))
        })
    }
}

/// A field's value in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::UnsupportedRedis;

    #[test]
    fn cluster_mode_and_versions_before_7_are_unsupported() {
        let standalone = "# Cluster\r\ncluster_enabled:0\r\n";
        let v7 = "# Server\r\nredis_version:7.0.15\r\n";
        assert!(UnsupportedRedis::of(v7, standalone).is_none());
        let v6 = "# Server\r\nredis_version:6.2.14\r\n";
        let old = UnsupportedRedis::of(v6, standalone).expect("6.2 refused");
        assert!(old.to_string().contains("6.2.14"), "{old}");
        let cluster = UnsupportedRedis::of(v7, "cluster_enabled:1\r\n").expect("cluster refused");
        assert!(cluster.to_string().contains("cluster mode"), "{cluster}");
        // A Redis-compatible server that does not say: not refused for that.
        assert!(UnsupportedRedis::of("", "").is_none());
    }
}
