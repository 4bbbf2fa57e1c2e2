//! The pending figures (count, age sum, oldest, age buckets per tenant) from the indexes, in
//! one pipelined round trip: cheap with a million pending approvals.

use std::time::Duration;

use approvals_core::{BackendError, PendingStats, Status, TenantId, TenantPending, Timestamp};
use redis::AsyncCommands;

use crate::backend::{millis, RedisBackend};
use crate::keys::{self, DEADLINES, SUBMITTED_SUM, TENANTS};

pub(crate) async fn pending_stats(
    backend: &RedisBackend,
    bounds: &[Duration],
    now: Timestamp,
) -> Result<PendingStats, BackendError> {
    let tenants: Vec<String> = backend
        .with_conn(
            "stats",
            |mut conn| async move { conn.smembers(TENANTS).await },
        )
        .await?;
    let tenants: Vec<TenantId> = tenants
        .into_iter()
        .filter_map(|t| TenantId::parse(t).ok())
        .collect();
    if tenants.is_empty() {
        // Redis refuses an empty pipeline; a fresh install simply has nothing pending.
        return Ok(PendingStats::default());
    }
    let mut pipe = redis::pipe();
    // A tenant's index of another type (damaged by hand) answers an error of its own, read as
    // nothing pending there: it failed the whole pipeline, every tenant's figures with it.
    // The keys every tenant's figures read (the deadlines, the age sums) still fail the pass.
    pipe.ignore_errors();
    // The earliest deadline the sweeper has not recorded: past it, expiries are behind.
    pipe.zrange_withscores(DEADLINES, 0, 0);
    for tenant in &tenants {
        let index = keys::index(tenant, Status::Pending);
        pipe.zcard(&index).hget(SUBMITTED_SUM, tenant.as_str());
        pipe.zrange(&index, 0, 0);
        for bound in bounds {
            let oldest = now.as_millis() - millis(*bound);
            pipe.zlexcount(&index, keys::index_bound(oldest), "+");
        }
    }
    let replies: Vec<redis::RedisResult<redis::Value>> = backend
        .with_conn("stats", |mut conn| async move {
            pipe.query_async(&mut conn).await
        })
        .await?;
    let shared = |key: &str, reply: Option<redis::RedisResult<redis::Value>>| match reply {
        Some(Err(error)) => Err(BackendError::Corrupt {
            key: key.to_owned(),
            reason: format!("every tenant's pending figures read it: {error}"),
        }),
        Some(Ok(value)) => Ok(value),
        None => Ok(redis::Value::Nil),
    };
    let mut replies = replies.into_iter();
    let earliest: Vec<(String, f64)> =
        redis::from_redis_value(shared(DEADLINES, replies.next())?).unwrap_or_default();
    let mut stats = PendingStats {
        overdue_seconds: earliest.first().map_or(0.0, |(_, deadline_ms)| {
            ((now.as_millis() as f64 - deadline_ms) / 1000.0).max(0.0)
        }),
        ..PendingStats::default()
    };
    for tenant in tenants {
        let count = replies.next().unwrap_or(Ok(redis::Value::Nil));
        let submitted_sum: Option<i64> =
            redis::from_redis_value(shared(SUBMITTED_SUM, replies.next())?).unwrap_or_default();
        // The tenant's own index: damaged, it is reported (and read as nothing pending), once
        // per pass; Redis refusing reads altogether fails the pass.
        let index = keys::index(&tenant, Status::Pending);
        let mut damaged = false;
        let mut own = |answer: redis::RedisResult<redis::Value>| {
            if damaged && answer.is_err() {
                return Ok(redis::Value::Nil);
            }
            let value = backend.key_answer("stats", &index, answer)?;
            damaged |= value.is_none();
            Ok::<_, BackendError>(value.unwrap_or(redis::Value::Nil))
        };
        let count: i64 = redis::from_redis_value(own(count)?).unwrap_or_default();
        let oldest: Vec<String> =
            redis::from_redis_value(own(replies.next().unwrap_or(Ok(redis::Value::Nil)))?)
                .unwrap_or_default();
        let le = bounds
            .iter()
            .map(|_| {
                let answer = replies.next().unwrap_or(Ok(redis::Value::Nil));
                Ok(redis::from_redis_value::<u64>(own(answer)?).unwrap_or_default())
            })
            .collect::<Result<_, BackendError>>()?;
        let age_sum_ms = (i128::from(count) * i128::from(now.as_millis())
            - i128::from(submitted_sum.unwrap_or_default()))
        .max(0);
        // The oldest member's first 15 characters are its submission instant.
        let oldest_ms = oldest
            .first()
            .and_then(|m| m.get(..15)?.parse::<i64>().ok());
        stats.tenants.push(TenantPending {
            tenant,
            count: count.max(0) as u64,
            age_sum_seconds: age_sum_ms as f64 / 1000.0,
            oldest_age_seconds: oldest_ms
                .map_or(0.0, |ms| (now.as_millis() - ms).max(0) as f64 / 1000.0),
            le,
        });
    }
    Ok(stats)
}
