//! `RedisBackend`: the request path of the Redis engine, one command per call over a few
//! multiplexed connections (`connections`). Whole-record walks are in `transfer`, ADR v1
//! adoption in `adopt`, the sweeper and retention in `chores`, the pending figures in `stats`.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use approvals_core::{
    Approval, ApprovalBackend, ApprovalId, AuditEntry, AuditEvent, BackendError, DecisionOutcome,
    DecisionRequest, EngineEvents, EngineStatus, Lifetimes, Listing, Page, PendingStats, Status,
    Stop, SubmitOutcome, TenantId, Timestamp, WaitingCount,
};
use async_trait::async_trait;
use redis::AsyncCommands;
use tokio::task::JoinHandle;

use crate::connections::{Connections, Lease};
use crate::due_reads::DueReads;
use crate::keys::{self, DEADLINES, DECIDED_CHANNEL, RETENTION, SUBMITTED_SUM, TENANTS};
use crate::record::{self, Decoded};
use crate::scripts::Scripts;
use crate::settings::RedisSettings;
use crate::waiters::Waiters;

/// The most record bytes one page of a list holds (at least one record): 500 records of the
/// largest size were about 25 MB, held in memory until a slow client had read them, up to
/// 256 at once per token.
const LIST_PAGE_BYTES: usize = 1 << 20;
/// The record size a listing's first MGET assumes before any listing has read one: about
/// the largest a record gets.
const LIST_FIRST_GUESS_BYTES: usize = 64 * 1024;
/// A listing's first MGET reads between these many records: at most about 4 MB when the
/// page's records are near the largest, whatever the last listing's were.
const LIST_FIRST_CHUNK: std::ops::RangeInclusive<usize> = 16..=64;

/// How far [`RedisBackend::fetch_chunked`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Every key.
    Every,
    /// Until the values read pass `LIST_PAGE_BYTES` (a listing's page, cut there): those after
    /// are not fetched. Each listing's mean record size sizes the next one's first chunk.
    WithinBudget,
}

pub struct RedisBackend {
    connections: Connections,
    pub(crate) settings: RedisSettings,
    pub(crate) lifetimes: Lifetimes,
    /// Where decisions are published with their record: this database's (`keys`).
    settled_channel: String,
    pub(crate) scripts: Scripts,
    pub(crate) waiters: Waiters,
    /// Long-polls past their first read (`EngineStatus::waiting`).
    pub(crate) parked: WaitingCount,
    /// The mean size of the records the last listing read: its first MGET is sized by it.
    listed_record_bytes: std::sync::atomic::AtomicUsize,
    subscriber: JoinHandle<()>,
    pending_head: String,
    expired_head: String,
    expiry_event: String,
    /// Told of what the engine does by itself; set when its chores start.
    pub(crate) events: OnceLock<Arc<dyn EngineEvents>>,
    /// The tenants' policy states as last read whole (`policy_store`).
    pub(crate) policy_states: crate::policy_store::StatesCache,
    /// Reads that found the same approval due at once, sharing one expiry call.
    due_reads: DueReads,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

impl RedisBackend {
    /// Opens the connections and starts the process's decision subscriber. Connects lazily: a
    /// Redis that is down at start-up makes calls fail with `Unavailable` until it is back.
    /// The sweeper is not started here: see [`RedisBackend::start_chores`].
    pub fn connect(settings: RedisSettings, lifetimes: Lifetimes) -> Result<Self, BackendError> {
        let client = crate::connections::open_client(&settings.url)
            .map_err(|e| BackendError::unavailable("connect", e))?;
        let connections = Connections::open(&client, &settings)?;
        let settled_channel =
            keys::settled_channel(client.get_connection_info().redis_settings().db());
        let waiters = Waiters::default();
        let subscriber = tokio::spawn(waiters.clone().listen(client, settled_channel.clone()));
        Ok(Self {
            connections,
            settings,
            lifetimes,
            settled_channel,
            scripts: Scripts::load(),
            waiters,
            parked: WaitingCount::default(),
            listed_record_bytes: std::sync::atomic::AtomicUsize::new(LIST_FIRST_GUESS_BYTES),
            subscriber,
            pending_head: record::pending_head(),
            expired_head: record::expired_head_template(),
            expiry_event: AuditEntry::expiry_template(),
            events: OnceLock::new(),
            policy_states: Default::default(),
            due_reads: DueReads::default(),
        })
    }

    /// Long-polls registered with this process's subscriber (from before their first read).
    pub fn waiting(&self) -> usize {
        self.waiters.waiting()
    }

    /// Long-polls past their first read, waiting for a message or a deadline.
    pub fn parked(&self) -> usize {
        self.parked.get()
    }

    /// Runs `call` on a shared connection, all of it (the wait for a slot included) under
    /// the call deadline. A Redis error becomes `Unavailable` naming `op`.
    pub(crate) async fn with_conn<T, F, Fut>(
        &self,
        op: &'static str,
        call: F,
    ) -> Result<T, BackendError>
    where
        F: FnOnce(redis::aio::ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            // The slot stays held until the call has its answer.
            let Lease { turn, slot } = self.connections.lease(op).await?;
            let answer = call(turn.1.connection.clone()).await;
            drop(slot);
            self.connections.answered(&turn, &answer);
            answer.map_err(|e| BackendError::unavailable(op, e))
        };
        tokio::time::timeout(self.settings.call_timeout, work)
            .await
            .map_err(|_| BackendError::Timeout(op))?
    }

    /// Writes a record, its indexes and `audit` unless the key exists; `Ok(None)` when
    /// written, else the existing value. `replace` (adoption) names the one value that may be
    /// overwritten.
    pub(crate) async fn park_record(
        &self,
        approval: &Approval,
        audit: &AuditEntry,
        replace: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<String>, BackendError> {
        let (tenant, id) = (&approval.tenant, &approval.id);
        let submitted_ms = approval.submitted_at.as_millis();
        let member = keys::index_member(submitted_ms, id);
        let retention = match approval.status {
            Status::Expired => self.lifetimes.expired_retention,
            _ => self.lifetimes.decided_retention,
        };
        // When the key expires, as an instant (`PXAT`): a lifetime (`PX`) counts from when
        // Redis runs the script, which may be the call deadline after `now`, and a v1 reader
        // then found the key pending past its deadline. Pending: at its deadline (its shadow
        // outlives it by the expired-retention). Settled: at the end of its retention,
        // counted from its decision (imports keep their age), a second from now at the least.
        let key_expires_ms = match approval.status {
            Status::Pending => approval.expires_at.as_millis().max(now.as_millis() + 1),
            _ => {
                let end = approval.decided_at.unwrap_or(now).plus(retention);
                end.as_millis().max(now.as_millis() + 1_000)
            }
        };
        let shadow_expires_ms =
            key_expires_ms.saturating_add(millis(self.lifetimes.expired_retention));
        let mut invocation = self.scripts.park.prepare_invoke();
        invocation
            .key(keys::record(tenant, id))
            .key(keys::index(tenant, approval.status))
            .key(DEADLINES)
            .key(RETENTION)
            .key(TENANTS)
            .key(SUBMITTED_SUM)
            .key(keys::audit(tenant))
            .key(keys::shadow(tenant, id))
            .arg(record::encode(approval))
            .arg(key_expires_ms)
            .arg(&member)
            .arg(approval.status.as_str())
            .arg(keys::deadline_member(tenant, submitted_ms, id))
            .arg(approval.expires_at.as_millis())
            .arg(keys::retention_member(tenant, approval.status, &member))
            .arg(key_expires_ms)
            .arg(tenant.as_str())
            .arg(submitted_ms)
            .arg(encode_event(audit))
            .arg(self.settings.audit_max_len)
            .arg(replace.unwrap_or(""))
            .arg(shadow_expires_ms);
        self.with_conn("park", |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// One approval as stored, with no view of the clock: the record, or once its key has
    /// lapsed with its lifetime (before a sweeper recorded the expiry) its shadow. Both in the
    /// same command.
    async fn read(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, BackendError> {
        let key = keys::record(tenant, id);
        let query = [key.clone(), keys::shadow(tenant, id)];
        let values: Vec<Option<String>> = self
            .with_conn("get", |mut conn| async move { conn.mget(&query).await })
            .await?;
        match values.into_iter().flatten().next() {
            None => Ok(None),
            Some(raw) => Ok(Some(self.load(&key, raw).await?)),
        }
    }

    /// Reads a key's value, adopting it first if this backend did not write it.
    pub(crate) async fn load(&self, key: &str, raw: String) -> Result<Approval, BackendError> {
        match record::decode(key, &raw)? {
            Decoded::Current(approval) => Ok(*approval),
            Decoded::Foreign(map) => self.adopt(key, &raw, map).await,
        }
    }

    /// Passes over a value that cannot be read (logged, and reported to the service, which
    /// counts it): one bad record must not stop a listing, an adoption pass or a migration.
    /// Any other failure is returned.
    pub(crate) fn pass_over(&self, error: BackendError) -> Result<(), BackendError> {
        match error {
            BackendError::Corrupt { key, reason } => {
                tracing::warn!(key, reason, "unreadable value passed over");
                if let Some(events) = self.events.get() {
                    events.unreadable(&key, &reason);
                }
                Ok(())
            }
            other => Err(other),
        }
    }

    /// One command's own answer in a pipeline that keeps going past errors (`ignore_errors`):
    /// a key holding another type (`WRONGTYPE`: damaged by hand) costs that key alone, passed
    /// over and reported (`None`); any other error (`READONLY`, `MISCONF`, out of memory) is
    /// Redis refusing every command alike, the call's failure.
    pub(crate) fn key_answer<T>(
        &self,
        op: &'static str,
        key: &str,
        answer: redis::RedisResult<T>,
    ) -> Result<Option<T>, BackendError> {
        match answer {
            Ok(value) => Ok(Some(value)),
            Err(error) if error.code() == Some("WRONGTYPE") => {
                self.pass_over(BackendError::Corrupt {
                    key: key.to_owned(),
                    reason: format!("{op}: {error}"),
                })?;
                Ok(None)
            }
            Err(error) => Err(BackendError::unavailable(op, error)),
        }
    }

    /// MGET, keeping only the keys that still exist. In MGETs of about `LIST_PAGE_BYTES` each:
    /// a migration's scan page of 1,000 large records was one MGET of 30 MB and more, which
    /// timed out over a slow link on every attempt (and every re-run) or passed a client's
    /// output buffer limit.
    pub(crate) async fn fetch(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<(String, String)>, BackendError> {
        let values = self.fetch_chunked(&keys, Reading::Every).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect())
    }

    /// Whether each of `keys` holds a string (as a record does), in order, in one round trip.
    pub(crate) async fn are_strings(&self, keys: &[String]) -> Result<Vec<bool>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("TYPE").arg(key);
        }
        let types: Vec<String> = self
            .with_conn("type", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        Ok(types.iter().map(|t| t == "string").collect())
    }

    /// The values of `keys` in order, fetched in chunks sized by the records' mean size (the
    /// first by the last listing's): one MGET of a whole page of records near the body limit
    /// was about 32 MB, on a connection every other call shares and in a reply buffer Redis
    /// counts against its memory. One MGET for a page of small records, a few for large ones.
    async fn fetch_chunked(
        &self,
        keys: &[String],
        reading: Reading,
    ) -> Result<Vec<Option<String>>, BackendError> {
        use std::sync::atomic::Ordering::Relaxed;
        // Records of `mean` bytes that fit in `left`, and the one that crosses it.
        let fits = |left: usize, mean: usize| left / mean.max(1) + 1;
        let mut chunk = fits(LIST_PAGE_BYTES, self.listed_record_bytes.load(Relaxed))
            .clamp(*LIST_FIRST_CHUNK.start(), *LIST_FIRST_CHUNK.end());
        let (mut values, mut bytes) = (Vec::with_capacity(keys.len()), 0);
        while values.len() < keys.len() && (reading == Reading::Every || bytes <= LIST_PAGE_BYTES) {
            let end = (values.len() + chunk).min(keys.len());
            let got = self.fetch_all(&keys[values.len()..end]).await?;
            bytes += got.iter().flatten().map(String::len).sum::<usize>();
            values.extend(got);
            // Nothing found yet says nothing of the size: the chunk stays.
            if bytes > 0 {
                let left = match reading {
                    Reading::Every => LIST_PAGE_BYTES,
                    Reading::WithinBudget => LIST_PAGE_BYTES.saturating_sub(bytes),
                };
                chunk = fits(left, bytes / values.len());
            }
        }
        if reading == Reading::WithinBudget && !values.is_empty() {
            self.listed_record_bytes
                .store((bytes / values.len()).max(1), Relaxed);
        }
        Ok(values)
    }

    /// MGET of `keys`: each one's value or `None`, in order.
    async fn fetch_all(&self, keys: &[String]) -> Result<Vec<Option<String>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let query = keys.to_vec();
        self.with_conn("mget", |mut conn| async move { conn.mget(query).await })
            .await
    }

    /// Invokes decide.lua or expire.lua with their shared KEYS and leading ARGV (common.lua).
    pub(crate) fn settle_invocation<'a>(
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
            .key(keys::shadow(tenant, id))
            .arg(now.as_millis())
            .arg(&self.pending_head)
            .arg(millis(self.lifetimes.expired_retention))
            .arg(tenant.as_str())
            .arg(DECIDED_CHANNEL)
            .arg(keys::channel_message(tenant, id))
            .arg(self.settings.audit_max_len)
            .arg(&self.expired_head)
            // Recorded now, if it is recorded by this call: the event's own time.
            .arg(
                self.expiry_event
                    .replace("\"$recorded_at\"", &format!("\"{now}\"")),
            )
            .arg(&self.settled_channel);
        invocation
    }

    /// One attempt at decide.lua: `None` when the record is an ADR v1 record to adopt first.
    async fn try_decide(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        decision: &DecisionRequest,
    ) -> Result<Option<DecisionOutcome>, BackendError> {
        let target = decision.verdict.status();
        let head = record::decided_head(
            target,
            decision.at,
            &decision.decided_by,
            decision.reason.as_deref(),
        );
        let audit = AuditEntry::decision(tenant, id, decision);
        let mut invocation =
            self.settle_invocation(&self.scripts.decide, tenant, id, target, Timestamp::now());
        invocation
            .arg(&decision.decided_by)
            .arg(&head)
            .arg(millis(self.lifetimes.decided_retention))
            .arg(target.as_str())
            .arg(encode_event(&audit));
        let reply: Vec<String> = self
            .with_conn("decide", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
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
        Ok(Some(match outcome.as_str() {
            "won" => DecisionOutcome::Decided(parsed(raw)?),
            "decided" => DecisionOutcome::AlreadyDecided(parsed(raw)?),
            "expired" => DecisionOutcome::Expired(parsed(raw)?),
            "expired_now" => {
                // Recorded here rather than by a sweeper: reported the same way.
                let expired = parsed(raw)?;
                if let Some(events) = self.events.get() {
                    events.expired(&expired, Timestamp::now());
                }
                DecisionOutcome::Expired(expired)
            }
            "self" => DecisionOutcome::SelfApproval,
            "not_found" => DecisionOutcome::NotFound,
            "foreign" => return Ok(None),
            // Answered like a read of the same value: one clear error, never an outage.
            "unreadable" => {
                return Err(BackendError::Corrupt {
                    key,
                    reason: "a decision found a value it cannot settle".into(),
                })
            }
            other => {
                return Err(BackendError::Corrupt {
                    key,
                    reason: format!("decide returned {other}"),
                })
            }
        }))
    }
}

/// An audit entry as the scripts store it (plain data: serialising cannot fail).
pub(crate) fn encode_event(entry: &AuditEntry) -> String {
    serde_json::to_string(entry).unwrap_or_default()
}

#[async_trait]
impl ApprovalBackend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn check_cursor(&self, listing: Listing, cursor: &str) -> Result<(), BackendError> {
        match listing {
            Listing::Approvals => keys::decode_cursor(cursor).map(drop),
            Listing::Audit => keys::stream_position(cursor).map(drop),
        }
    }

    async fn park(
        &self,
        approval: Approval,
        submitted: AuditEntry,
    ) -> Result<SubmitOutcome, BackendError> {
        let now = Timestamp::now();
        match self.park_record(&approval, &submitted, None, now).await? {
            None => Ok(SubmitOutcome::Created(approval)),
            Some(raw) => {
                let key = keys::record(&approval.tenant, &approval.id);
                let existing = self.load(&key, raw).await?;
                if existing.status == Status::Pending && now >= existing.expires_at {
                    // Due and not yet swept: answered "expired" only once recorded, as a read
                    // is, so that no decision lands after the agent was told.
                    if let Some(current) = self.get(&approval.tenant, &approval.id).await? {
                        return Ok(SubmitOutcome::Existing(current));
                    }
                }
                Ok(SubmitOutcome::Existing(existing.as_of(now)))
            }
        }
    }

    async fn record(&self, entry: AuditEntry) -> Result<(), BackendError> {
        let mut invocation = self.scripts.record.prepare_invoke();
        invocation
            .key(keys::audit(&entry.tenant))
            .key(TENANTS)
            .arg(encode_event(&entry))
            .arg(self.settings.audit_max_len)
            .arg(entry.tenant.as_str());
        self.with_conn("record", |mut conn| async move {
            invocation.invoke_async::<()>(&mut conn).await
        })
        .await
    }

    async fn get(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, BackendError> {
        let Some(approval) = self.read(tenant, id).await? else {
            return Ok(None);
        };
        let now = Timestamp::now();
        if approval.status != Status::Pending || now < approval.expires_at {
            return Ok(Some(approval));
        }
        // Due and not yet swept: recorded now, so no decision can land after this answer.
        let key = keys::record(tenant, id);
        let settled = self.due_reads.settle(&key, || async {
            match self.expire_on_read(&approval, now).await {
                Ok(Some(expired)) => Some(expired),
                // Settled meanwhile, by a sweeper or a decision that reached Redis first.
                Ok(None) => match self.read(tenant, id).await {
                    Ok(Some(current)) => Some(current.as_of(now)),
                    Ok(None) => Some(approval.clone().as_of(now)),
                    // Which of the two won is not known: not "expired" from this clock.
                    Err(_) => None,
                },
                // Refused (a damaged key of the tenant, say): reported; the read answers what
                // it found, as it did before reads recorded expiries.
                Err(error) if crate::chores::refused_by_script(&error) => {
                    tracing::debug!(%error, "recording an expiry found by a read was refused");
                    Some(approval.clone().as_of(now))
                }
                // Redis did not answer (or takes no writes): it still holds the approval
                // pending, and "expired" from this instance's clock alone could be contradicted
                // by a reviewer's accept Redis takes next (ADR-0004). A wait answers the
                // outage too (`read_at_expiry`).
                Err(error) => {
                    tracing::debug!(%error, "recording an expiry found by a read failed");
                    None
                }
            }
        });
        settled.await.map(Some).ok_or_else(|| {
            BackendError::unavailable(
                "get",
                "the approval is past its deadline and Redis did not record its expiry",
            )
        })
    }

    async fn decide(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        decision: DecisionRequest,
    ) -> Result<DecisionOutcome, BackendError> {
        // A foreign record is adopted (by reading it) and the decision retried, at most once.
        for _ in 0..2 {
            match self.try_decide(tenant, id, &decision).await? {
                Some(outcome) => return Ok(outcome),
                None => {
                    self.get(tenant, id).await?;
                }
            }
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
        stop: Stop,
    ) -> Result<Option<Approval>, BackendError> {
        self.wait(tenant, id, timeout, stop).await
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
            })
            .await?;
        let mut more = members.len() > limit;
        let mut members = &members[..members.len().min(limit)];
        // Each record key with its member's place in the page (an index may hold two members
        // for one id: one of an approval whose record lapsed before any sweep).
        let (places, record_keys): (Vec<usize>, Vec<String>) = members
            .iter()
            .enumerate()
            .filter_map(|(place, m)| Some((place, ApprovalId::parse(m.split_once(':')?.1).ok()?)))
            .map(|(place, id)| (place, keys::record(tenant, &id)))
            .unzip();
        let now = Timestamp::now();
        let mut items = Vec::with_capacity(members.len());
        let values = self
            .fetch_chunked(&record_keys, Reading::WithinBudget)
            .await?;
        // A page ends early once its records pass the byte budget, always with at least one;
        // the next starts after the member of its last record. Records not fetched (past the
        // budget) end it too.
        let first_unfetched = places.get(values.len()).copied();
        let (mut fetched, mut bytes) = (Vec::with_capacity(values.len()), 0);
        let mut ended_early = false;
        for ((place, key), value) in places.into_iter().zip(record_keys).zip(values) {
            let Some(raw) = value else { continue };
            bytes += raw.len();
            if bytes > LIST_PAGE_BYTES && !fetched.is_empty() {
                members = &members[..place];
                (more, ended_early) = (true, true);
                break;
            }
            fetched.push((key, raw));
        }
        if let Some(place) = first_unfetched.filter(|_| !ended_early) {
            members = &members[..place];
            more = true;
        }
        for (key, raw) in fetched {
            let approval = match self.load(&key, raw).await {
                Ok(approval) => approval.as_of(now),
                Err(error) => {
                    self.pass_over(error)?;
                    continue;
                }
            };
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

    async fn audit_end(&self, tenant: &TenantId) -> Result<Option<String>, BackendError> {
        let stream = keys::audit(tenant);
        let reply: redis::streams::StreamRangeReply = self
            .with_conn("audit_end", |mut conn| async move {
                conn.xrevrange_count(stream, "+", "-", 1).await
            })
            .await?;
        // An empty audit: everything from its first event on is new.
        let last = reply.ids.into_iter().next().map(|entry| entry.id);
        Ok(Some(last.unwrap_or_else(|| "0-0".to_owned())))
    }

    async fn audit(
        &self,
        tenant: &TenantId,
        since: Option<Timestamp>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEvent>, BackendError> {
        let position = cursor.map(keys::stream_position).transpose()?;
        let start = match (position.as_deref(), since) {
            // Redis refuses an exclusive range after the largest id; nothing comes after it.
            (Some(keys::LAST_STREAM_ID), _) => {
                return Ok(Page {
                    items: Vec::new(),
                    next_cursor: None,
                })
            }
            (Some(position), _) => format!("({position}"),
            (None, Some(since)) => format!("{}-0", since.as_millis().max(0)),
            (None, None) => "-".to_owned(),
        };
        let stream = keys::audit(tenant);
        let reply: redis::streams::StreamRangeReply = self
            .with_conn("audit", |mut conn| async move {
                conn.xrange_count(stream, start, "+", limit + 1).await
            })
            .await?;
        let more = reply.ids.len() > limit;
        let mut items = Vec::with_capacity(limit);
        // The page ends at the last entry read, readable or not, so the next one goes on past it.
        let (mut last_read, mut passed_over_last) = (None, false);
        for entry in reply.ids.into_iter().take(limit) {
            last_read = Some(entry.id.clone());
            passed_over_last = true;
            let raw: String = entry.get("e").unwrap_or_default();
            // One entry that cannot be read (corrupt, or of a kind a newer version writes)
            // must not stop the export, the live streams and the webhooks at it for good.
            let stored: AuditEntry = match serde_json::from_str(&raw) {
                Ok(stored) => stored,
                Err(error) => {
                    self.pass_over(BackendError::Corrupt {
                        key: format!("{} {}", keys::audit(tenant), entry.id),
                        reason: error.to_string(),
                    })?;
                    continue;
                }
            };
            // The time Redis recorded it (the stream id): one clock for every instance, so
            // the export's timestamps never decrease.
            let recorded_ms = entry.id.split('-').next().and_then(|ms| ms.parse().ok());
            let stored = AuditEntry {
                timestamp: recorded_ms.map_or(stored.timestamp, Timestamp::from_millis),
                ..stored
            };
            items.push(stored.with_id(entry.id));
            passed_over_last = false;
        }
        // Also after a last entry passed over: readers go on from the last event they got,
        // and would read (and log, and count) the bad one again every poll.
        let next_cursor = if more || passed_over_last {
            last_read
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
        crate::stats::pending_stats(self, bounds, now).await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.check_ready().await
    }

    fn status(&self) -> EngineStatus {
        EngineStatus {
            calls: Some(self.connections.status()),
            secondary_up: None,
            waiting: Some(self.parked.get()),
            decisions_heard: Some(self.waiters.is_listening()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use approvals_core::conformance::{fresh_tenant, pending};
    use approvals_core::{Approval, AuditEntry, Lifetimes, Status, Timestamp};
    use approvals_testkit::RedisServer;

    use crate::{keys, RedisBackend, RedisSettings};

    /// A settled record whose retention is ending, written by an instance whose clock is an
    /// hour behind Redis', still lives a second: its key's expiry instant is floored on Redis'
    /// clock. On the instance's alone, Redis dropped the key at once while its index entry
    /// stayed (listed, but not there).
    #[tokio::test]
    async fn a_settled_record_lives_a_second_on_redis_clock_whatever_the_instances() {
        let server = RedisServer::start().await;
        let backend = RedisBackend::connect(RedisSettings::new(server.url()), Lifetimes::default())
            .expect("backend");
        let tenant = fresh_tenant("skewed");
        let day = Duration::from_secs(86_400);
        let behind = Timestamp::now().minus(Duration::from_secs(3600));
        let decided = Approval {
            status: Status::Accepted,
            decided_at: Some(behind.minus(day)),
            decided_by: Some("alice".into()),
            ..pending(&tenant, "req-1", Duration::from_secs(60))
        };
        let audit = AuditEntry::migrated(&decided, behind);
        let written = backend
            .park_record(&decided, &audit, None, behind)
            .await
            .expect("park");
        assert_eq!(written, None, "written");
        let key = keys::record(&tenant, &decided.id);
        let mut conn = server.connection().await;
        let left_ms: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("pttl");
        assert!((1..=1_000).contains(&left_ms), "{left_ms} ms left");
    }
}
