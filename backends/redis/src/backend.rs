//! `RedisBackend`: the `ApprovalBackend` trait over a deadpool of multiplexed connections.

use std::future::Future;
use std::time::Duration;

use approvals_core::{
    Approval, ApprovalBackend, ApprovalId, AuditEvent, AuditKind, BackendError, DecisionOutcome,
    DecisionRequest, ImportOutcome, Page, PendingStats, ScanPage, Status, SubmitOutcome, TenantId,
    TenantPending, Timestamp,
};
use async_trait::async_trait;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::keys::{
    self, DEADLINES, DECIDED_CHANNEL, RECORD_PATTERN, RETENTION, SUBMITTED_SUM, TENANTS,
};
use crate::legacy;
use crate::record::{self, Decoded};
use crate::scripts::Scripts;
use crate::waiters::Waiters;

/// What the Redis backend needs from the service's configuration.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Deadline of every Redis call (the pool wait included).
    pub call_timeout: Duration,
    pub pool_size: usize,
    pub decided_retention: Duration,
    pub expired_retention: Duration,
    /// Lifetime given to ADR v1 records that have no TTL of their own.
    pub default_ttl: Duration,
    /// Approximate cap on each tenant's audit stream.
    pub audit_max_len: u64,
}

impl RedisSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            call_timeout: Duration::from_secs(2),
            pool_size: 32,
            decided_retention: Duration::from_secs(86_400),
            expired_retention: Duration::from_secs(86_400),
            default_ttl: Duration::from_secs(86_400),
            audit_max_len: 1_000_000,
        }
    }
}

pub struct RedisBackend {
    pool: Pool,
    settings: RedisSettings,
    scripts: Scripts,
    waiters: Waiters,
    subscriber: JoinHandle<()>,
    pending_head: String,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

fn unavailable(error: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(error.to_string())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

impl RedisBackend {
    /// Builds the pool and starts the process's decision subscriber. Connects lazily: a Redis
    /// that is down at start-up makes calls fail with `Unavailable` until it is back.
    pub fn connect(settings: RedisSettings) -> Result<Self, BackendError> {
        let mut config = deadpool_redis::Config::from_url(settings.url.clone());
        let mut pool_config = PoolConfig::new(settings.pool_size);
        let wait = Some(settings.call_timeout);
        pool_config.timeouts = Timeouts {
            wait,
            create: wait,
            recycle: wait,
        };
        config.pool = Some(pool_config);
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(unavailable)?;
        let client = redis::Client::open(settings.url.as_str()).map_err(unavailable)?;
        let waiters = Waiters::default();
        let subscriber = tokio::spawn(waiters.clone().listen(client));
        Ok(Self {
            pool,
            settings,
            scripts: Scripts::load(),
            waiters,
            subscriber,
            pending_head: record::pending_head(),
        })
    }

    /// Long-polls currently parked in this process.
    pub fn waiting(&self) -> usize {
        self.waiters.waiting()
    }

    /// Pool occupancy: (connections open, callers waiting for one).
    pub fn pool_status(&self) -> (usize, usize) {
        let status = self.pool.status();
        (status.size, status.waiting)
    }

    /// Runs `call` with a pooled connection, all of it under the call deadline.
    async fn with_conn<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, BackendError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let work = async {
            let conn = self.pool.get().await.map_err(unavailable)?;
            call(conn).await
        };
        tokio::time::timeout(self.settings.call_timeout, work)
            .await
            .map_err(|_| BackendError::Timeout(op))?
    }

    /// Writes a record and its indexes unless the key exists; `Ok(None)` when written.
    async fn park(
        &self,
        approval: &Approval,
        audit: &Value,
        replace: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<String>, BackendError> {
        let (tenant, id) = (&approval.tenant, &approval.id);
        let submitted_ms = approval.submitted_at.as_millis();
        let member = keys::index_member(submitted_ms, id);
        let retention = match approval.status {
            Status::Expired => self.settings.expired_retention,
            _ => self.settings.decided_retention,
        };
        // Pending: the lifetime plus the sweeper's grace. Settled: what is left of its
        // retention, counted from its decision (imports keep their age).
        let end_ms = match approval.status {
            Status::Pending => approval.expires_at.plus(keys::EXPIRY_GRACE).as_millis(),
            _ => approval
                .decided_at
                .unwrap_or(now)
                .plus(retention)
                .as_millis(),
        };
        let ttl_ms = (end_ms - now.as_millis()).max(1_000);
        let mut invocation = self.scripts.park.prepare_invoke();
        invocation
            .key(keys::record(tenant, id))
            .key(keys::index(tenant, approval.status))
            .key(DEADLINES)
            .key(RETENTION)
            .key(TENANTS)
            .key(SUBMITTED_SUM)
            .key(keys::audit(tenant))
            .arg(record::encode(approval))
            .arg(ttl_ms)
            .arg(&member)
            .arg(approval.status.as_str())
            .arg(keys::deadline_member(tenant, submitted_ms, id))
            .arg(approval.expires_at.as_millis())
            .arg(keys::retention_member(tenant, approval.status, &member))
            .arg(now.as_millis() + ttl_ms)
            .arg(tenant.as_str())
            .arg(submitted_ms)
            .arg(audit.to_string())
            .arg(self.settings.audit_max_len)
            .arg(replace.unwrap_or(""));
        self.with_conn("park", |mut conn| async move {
            invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)
        })
        .await
    }

    /// Reads a key's value, adopting it first if this backend did not write it.
    async fn load(&self, key: &str, raw: String) -> Result<Approval, BackendError> {
        match record::decode(key, &raw)? {
            Decoded::Current(approval) => Ok(*approval),
            Decoded::Foreign(map) => self.adopt(key, &raw, map).await,
        }
    }

    /// Rewrites an ADR v1 record in the current format with its indexes, atomically and only
    /// if nobody changed it meanwhile. Safe on every instance at once.
    async fn adopt(
        &self,
        key: &str,
        raw: &str,
        map: serde_json::Map<String, Value>,
    ) -> Result<Approval, BackendError> {
        let approval = self.foreign_to_approval(key, map).await?;
        let audit = audit_event(
            &approval,
            AuditKind::Submitted,
            &approval.submitted_by,
            approval.submitted_at,
            json!({"adopted_from": "adr-v1", "status": approval.status}),
        );
        match self
            .park(&approval, &audit, Some(raw), Timestamp::now())
            .await?
        {
            None => {
                tracing::info!(key, "adopted an ADR v1 record");
                Ok(approval)
            }
            // Someone else adopted or decided it first: read theirs.
            Some(current) => match record::decode(key, &current)? {
                Decoded::Current(approval) => Ok(*approval),
                Decoded::Foreign(_) => Err(BackendError::Corrupt {
                    key: key.to_owned(),
                    reason: "changed while being adopted".into(),
                }),
            },
        }
    }

    async fn foreign_to_approval(
        &self,
        key: &str,
        map: serde_json::Map<String, Value>,
    ) -> Result<Approval, BackendError> {
        let (tenant, id) = keys::parse_record(key).ok_or_else(|| BackendError::Corrupt {
            key: key.to_owned(),
            reason: "not an approval:{tenant}:{id} key".into(),
        })?;
        let key_owned = key.to_owned();
        // Negative: no expiry (-1) or no key any more (-2).
        let expiry_ms: i64 = self
            .with_conn("pexpiretime", |mut conn| async move {
                redis::cmd("PEXPIRETIME")
                    .arg(key_owned)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let key_expiry = (expiry_ms > 0).then(|| Timestamp::from_millis(expiry_ms));
        Ok(legacy::to_approval(
            tenant,
            id,
            map,
            key_expiry,
            self.settings.default_ttl,
            Timestamp::now(),
        ))
    }

    /// Finds and adopts every record this backend did not write. Returns how many it adopted.
    async fn adopt_all(&self) -> Result<usize, BackendError> {
        let mut cursor = "0".to_owned();
        let mut adopted = 0;
        loop {
            let (next, keys) = self.scan_keys(&cursor, 1000).await?;
            if !keys.is_empty() {
                let mut invocation = self.scripts.foreign.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let foreign: Vec<String> = self
                    .with_conn("adopt", |mut conn| async move {
                        invocation
                            .invoke_async(&mut conn)
                            .await
                            .map_err(unavailable)
                    })
                    .await?;
                for (key, raw) in self.fetch(foreign).await? {
                    if let Decoded::Foreign(map) = record::decode(&key, &raw)? {
                        self.adopt(&key, &raw, map).await?;
                        adopted += 1;
                    }
                }
            }
            if next == "0" {
                return Ok(adopted);
            }
            cursor = next;
        }
    }

    async fn scan_keys(
        &self,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<String>), BackendError> {
        let cursor = cursor.to_owned();
        self.with_conn("scan", |mut conn| async move {
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(RECORD_PATTERN)
                .arg("COUNT")
                .arg(count)
                .arg("TYPE")
                .arg("string")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)
        })
        .await
    }

    /// MGET, keeping only the keys that still exist.
    async fn fetch(&self, keys: Vec<String>) -> Result<Vec<(String, String)>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let query = keys.clone();
        let values: Vec<Option<String>> = self
            .with_conn("mget", |mut conn| async move {
                conn.mget(query).await.map_err(unavailable)
            })
            .await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect())
    }

    /// Invokes decide.lua or expire.lua with their shared KEYS and leading ARGV.
    fn settle_invocation<'a>(
        &'a self,
        script: &'a redis::Script,
        tenant: &TenantId,
        id: &ApprovalId,
        target: Status,
        now: Timestamp,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys::record(tenant, id))
            .key(keys::index(tenant, Status::Pending))
            .key(keys::index(tenant, target))
            .key(keys::index(tenant, Status::Expired))
            .key(DEADLINES)
            .key(RETENTION)
            .key(SUBMITTED_SUM)
            .key(keys::audit(tenant))
            .arg(now.as_millis())
            .arg(&self.pending_head)
            .arg(millis(self.settings.expired_retention))
            .arg(tenant.as_str())
            .arg(DECIDED_CHANNEL)
            .arg(keys::channel_message(tenant, id))
            .arg(self.settings.audit_max_len);
        invocation
    }

    /// Drops index entries whose decided or expired record has reached its retention.
    async fn trim_retention(&self, now: Timestamp) -> Result<(), BackendError> {
        let due: Vec<String> = self
            .with_conn("retention", |mut conn| async move {
                conn.zrangebyscore_limit(RETENTION, "-inf", now.as_millis(), 0, 500)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        if due.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for member in &due {
            if let Some((tenant, status, index_member)) = keys::parse_retention_member(member) {
                pipe.zrem(keys::index(&tenant, status), index_member)
                    .ignore();
            }
            pipe.zrem(RETENTION, member).ignore();
        }
        self.with_conn("retention", |mut conn| async move {
            pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
        })
        .await
    }
}

fn audit_event(
    approval: &Approval,
    kind: AuditKind,
    actor: &str,
    at: Timestamp,
    details: Value,
) -> Value {
    json!({
        "timestamp": at,
        "tenant": approval.tenant,
        "approval_id": approval.id,
        "kind": kind,
        "actor": actor,
        "details": details,
    })
}

/// The stored form of an audit event: the event without its id, which is the stream id.
#[derive(serde::Deserialize)]
struct StoredEvent {
    timestamp: Timestamp,
    tenant: TenantId,
    approval_id: ApprovalId,
    kind: AuditKind,
    actor: String,
    details: Value,
}

#[async_trait]
impl ApprovalBackend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn submit(&self, approval: Approval) -> Result<SubmitOutcome, BackendError> {
        let audit = audit_event(
            &approval,
            AuditKind::Submitted,
            &approval.submitted_by,
            approval.submitted_at,
            json!({"decision": "require_approval", "reasons": approval.reasons,
                   "policy_version": approval.policy_version, "agent_id": approval.agent_id,
                   "expires_at": approval.expires_at}),
        );
        let now = Timestamp::now();
        match self.park(&approval, &audit, None, now).await? {
            None => Ok(SubmitOutcome::Created(approval)),
            Some(raw) => {
                let key = keys::record(&approval.tenant, &approval.id);
                Ok(SubmitOutcome::Existing(
                    self.load(&key, raw).await?.as_of(now),
                ))
            }
        }
    }

    async fn get(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, BackendError> {
        let key = keys::record(tenant, id);
        let query = key.clone();
        let raw: Option<String> = self
            .with_conn("get", |mut conn| async move {
                conn.get(query).await.map_err(unavailable)
            })
            .await?;
        match raw {
            None => Ok(None),
            Some(raw) => Ok(Some(self.load(&key, raw).await?.as_of(Timestamp::now()))),
        }
    }

    async fn decide(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        decision: DecisionRequest,
    ) -> Result<DecisionOutcome, BackendError> {
        let target = decision.verdict.status();
        let head = record::decided_head(
            target,
            decision.at,
            &decision.decided_by,
            decision.reason.as_deref(),
        );
        // A foreign record is adopted and the decision retried, at most once.
        for _ in 0..2 {
            let now = Timestamp::now();
            let mut invocation =
                self.settle_invocation(&self.scripts.decide, tenant, id, target, now);
            let audit = json!({
                "timestamp": decision.at, "tenant": tenant, "approval_id": id,
                "kind": target, "actor": decision.decided_by,
                "details": {"reason": decision.reason},
            });
            invocation
                .arg(&decision.decided_by)
                .arg(&head)
                .arg(millis(self.settings.decided_retention))
                .arg(target.as_str())
                .arg(audit.to_string());
            let reply: Vec<String> = self
                .with_conn("decide", |mut conn| async move {
                    invocation
                        .invoke_async(&mut conn)
                        .await
                        .map_err(unavailable)
                })
                .await?;
            let mut reply = reply.into_iter();
            let (outcome, raw) = (reply.next().unwrap_or_default(), reply.next());
            let key = keys::record(tenant, id);
            let parsed = |raw: Option<String>| -> Result<Approval, BackendError> {
                match record::decode(&key, raw.as_deref().unwrap_or_default())? {
                    Decoded::Current(approval) => Ok(*approval),
                    Decoded::Foreign(_) => Err(BackendError::Corrupt {
                        key: key.clone(),
                        reason: "foreign record after adoption".into(),
                    }),
                }
            };
            return Ok(match outcome.as_str() {
                "won" => DecisionOutcome::Decided(parsed(raw)?),
                "decided" => DecisionOutcome::AlreadyDecided(parsed(raw)?),
                "expired" => DecisionOutcome::Expired(parsed(raw)?),
                "self" => DecisionOutcome::SelfApproval,
                "not_found" => DecisionOutcome::NotFound,
                "foreign" => {
                    self.get(tenant, id).await?;
                    continue;
                }
                other => {
                    return Err(BackendError::Corrupt {
                        key,
                        reason: format!("decide returned {other}"),
                    })
                }
            });
        }
        Err(BackendError::Corrupt {
            key: keys::record(tenant, id),
            reason: "could not adopt".into(),
        })
    }

    async fn wait_for_decision(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        timeout: Duration,
    ) -> Result<Option<Approval>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut subscription = self.waiters.subscribe(&keys::record(tenant, id));
        loop {
            let Some(approval) = self.get(tenant, id).await? else {
                return Ok(None);
            };
            let now = tokio::time::Instant::now();
            if approval.is_decided() || now >= deadline {
                return Ok(Some(approval));
            }
            // Wake at the deadline too: `get` reports the expiry itself, sweeper or not.
            let until_expiry = approval.expires_at.as_millis() - Timestamp::now().as_millis();
            let expiry = now + Duration::from_millis(u64::try_from(until_expiry).unwrap_or(0) + 5);
            tokio::select! {
                () = subscription.notified() => {}
                () = tokio::time::sleep_until(deadline.min(expiry)) => {}
            }
        }
    }

    async fn list(
        &self,
        tenant: &TenantId,
        status: Status,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Approval>, BackendError> {
        let start = match cursor {
            Some(cursor) => format!("({}", keys::decode_cursor(cursor)?),
            None => "-".to_owned(),
        };
        let index = keys::index(tenant, status);
        let members: Vec<String> = self
            .with_conn("list", |mut conn| async move {
                conn.zrangebylex_limit(index, start, "+", 0, limit as isize + 1)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let more = members.len() > limit;
        let members = &members[..members.len().min(limit)];
        let record_keys = members
            .iter()
            .filter_map(|m| m.split_once(':'))
            .filter_map(|(_, id)| ApprovalId::parse(id).ok())
            .map(|id| keys::record(tenant, &id))
            .collect();
        let now = Timestamp::now();
        let mut items = Vec::with_capacity(members.len());
        for (key, raw) in self.fetch(record_keys).await? {
            let approval = self.load(&key, raw).await?.as_of(now);
            // A record past its deadline but not yet swept is no longer pending; and a
            // key reused after its retention may belong to another status now.
            if approval.status == status {
                items.push(approval);
            }
        }
        let next_cursor = if more {
            members.last().map(|m| keys::encode_cursor(m))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn audit(
        &self,
        tenant: &TenantId,
        since: Option<Timestamp>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEvent>, BackendError> {
        let start = match (cursor, since) {
            (Some(cursor), _) => format!("({}", keys::decode_stream_cursor(cursor)?),
            (None, Some(since)) => format!("{}-0", since.as_millis().max(0)),
            (None, None) => "-".to_owned(),
        };
        let stream = keys::audit(tenant);
        let reply: redis::streams::StreamRangeReply = self
            .with_conn("audit", |mut conn| async move {
                conn.xrange_count(stream, start, "+", limit + 1)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let more = reply.ids.len() > limit;
        let mut items = Vec::with_capacity(limit);
        for entry in reply.ids.into_iter().take(limit) {
            let raw: String = entry.get("e").unwrap_or_default();
            let event: StoredEvent =
                serde_json::from_str(&raw).map_err(|e| BackendError::Corrupt {
                    key: format!("{} {}", keys::audit(tenant), entry.id),
                    reason: e.to_string(),
                })?;
            items.push(AuditEvent {
                event_id: entry.id,
                timestamp: event.timestamp,
                tenant: event.tenant,
                approval_id: event.approval_id,
                kind: event.kind,
                actor: event.actor,
                details: event.details,
            });
        }
        let next_cursor = if more {
            items.last().map(|e| e.event_id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn pending_stats(
        &self,
        bounds: &[Duration],
        now: Timestamp,
    ) -> Result<PendingStats, BackendError> {
        let tenants: Vec<String> = self
            .with_conn("stats", |mut conn| async move {
                conn.smembers(TENANTS).await.map_err(unavailable)
            })
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
        for tenant in &tenants {
            let index = keys::index(tenant, Status::Pending);
            pipe.zcard(&index).hget(SUBMITTED_SUM, tenant.as_str());
            pipe.zrange(&index, 0, 0);
            for bound in bounds {
                let oldest = now.as_millis() - millis(*bound);
                pipe.zlexcount(&index, keys::index_bound(oldest), "+");
            }
        }
        let replies: Vec<redis::Value> = self
            .with_conn("stats", |mut conn| async move {
                pipe.query_async(&mut conn).await.map_err(unavailable)
            })
            .await?;
        let mut replies = replies.into_iter();
        let mut stats = PendingStats::default();
        for tenant in tenants {
            let mut next = || replies.next().unwrap_or(redis::Value::Nil);
            let count: i64 = redis::from_redis_value(next()).unwrap_or_default();
            let submitted_sum: Option<i64> = redis::from_redis_value(next()).unwrap_or_default();
            let oldest: Vec<String> = redis::from_redis_value(next()).unwrap_or_default();
            let le = bounds
                .iter()
                .map(|_| redis::from_redis_value::<u64>(next()).unwrap_or_default())
                .collect();
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

    async fn scan(&self, cursor: Option<&str>, batch: usize) -> Result<ScanPage, BackendError> {
        let cursor = match cursor {
            None => "0",
            Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => c,
            Some(_) => return Err(BackendError::InvalidCursor),
        };
        let (next, keys) = self.scan_keys(cursor, batch).await?;
        let now = Timestamp::now();
        let mut items = Vec::new();
        for (key, raw) in self.fetch(keys).await? {
            // Read-only: a foreign record is converted, not adopted (a dry run writes nothing).
            match record::decode(&key, &raw)? {
                Decoded::Current(approval) => items.push(approval.as_of(now)),
                Decoded::Foreign(map) => {
                    items.push(self.foreign_to_approval(&key, map).await?.as_of(now))
                }
            }
        }
        Ok(ScanPage {
            items,
            next: (next != "0").then_some(next),
        })
    }

    async fn import(&self, approval: Approval) -> Result<ImportOutcome, BackendError> {
        let audit = audit_event(
            &approval,
            AuditKind::Migrated,
            "migration",
            Timestamp::now(),
            json!({"status": approval.status, "submitted_at": approval.submitted_at,
                   "expires_at": approval.expires_at, "decided_at": approval.decided_at,
                   "decided_by": approval.decided_by}),
        );
        match self.park(&approval, &audit, None, Timestamp::now()).await? {
            None => Ok(ImportOutcome::Imported),
            Some(_) => Ok(ImportOutcome::AlreadyPresent),
        }
    }

    async fn expire_due(&self, now: Timestamp) -> Result<Vec<Approval>, BackendError> {
        self.trim_retention(now).await?;
        let due: Vec<(String, f64)> = self
            .with_conn("sweep", |mut conn| async move {
                conn.zrangebyscore_limit_withscores(DEADLINES, "-inf", now.as_millis(), 0, 500)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let mut expired = Vec::new();
        for (member, _deadline) in due {
            let Some((tenant, submitted_ms, id)) = keys::parse_deadline_member(&member) else {
                continue;
            };
            let mut invocation =
                self.settle_invocation(&self.scripts.expire, &tenant, &id, Status::Expired, now);
            invocation
                .arg(&member)
                .arg(keys::index_member(submitted_ms, &id));
            let recorded: Option<String> = self
                .with_conn("expire", |mut conn| async move {
                    invocation
                        .invoke_async(&mut conn)
                        .await
                        .map_err(unavailable)
                })
                .await?;
            if let Some(raw) = recorded {
                let key = keys::record(&tenant, &id);
                if let Decoded::Current(approval) = record::decode(&key, &raw)? {
                    expired.push(*approval);
                }
            }
        }
        Ok(expired)
    }

    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        let (open, waiting) = self.pool_status();
        vec![
            (
                "approvals_redis_pool_connections",
                "Redis connections open in the pool.",
                open as f64,
            ),
            (
                "approvals_redis_pool_waiting",
                "Callers waiting for a pooled Redis connection.",
                waiting as f64,
            ),
            (
                "approvals_redis_pool_max",
                "Size limit of the Redis pool.",
                self.settings.pool_size as f64,
            ),
        ]
    }

    async fn adopt_foreign_records(&self) -> Result<usize, BackendError> {
        self.adopt_all().await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.with_conn("ping", |mut conn| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(unavailable)
        })
        .await
    }
}
