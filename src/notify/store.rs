//! Where webhooks and their deliveries live: Redis, next to the approvals (a deployment without
//! Redis among its engines has no webhooks).
//!
//! Keys (tenants never contain `:`):
//! - `webhooks:{tenant}`: hash, webhook id → its config (JSON), `webhooks:hooks:{tenant}` for the
//!   tenants named `due` and `tenants` (their names are global keys' below);
//!   `webhooks:tenants`: set of the tenants that have any;
//! - `webhooks:cursor:{tenant}`: where the tenant's audit was last read (`id:<event id>` or, before
//!   the first event, `since:<millis>`); `webhooks:lock:{tenant}`: which instance reads it now;
//! - `webhooks:delivery:{id}`: one delivery (JSON) until it is sent or dead, then a tombstone for
//!   a day so that a re-read of the audit does not send it again; `webhooks:due`: sorted set,
//!   delivery id → when it may be attempted next (a claim moves it a lease ahead, so one
//!   instance at a time attempts it); `webhooks:queued:{tenant}:{webhook}`: sorted set, the
//!   webhook's deliveries not yet sent or given up on → when queued (its size is what
//!   `notifications.max_queued_per_webhook` bounds, the sizes of the tenant's webhooks' sets
//!   what `max_queued_per_tenant` does); `webhooks:dead:{tenant}`: the last 1,000 given up on,
//!   deleted with the tenant's last webhook.

use std::time::Duration;

use approvals_core::{TenantId, Timestamp};
use approvals_redis::ReplaceableConnection;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::Webhook;

/// How long a sent or dead delivery's tombstone keeps a second copy from being queued.
const TOMBSTONE: Duration = Duration::from_secs(24 * 3600);
/// How long an undelivered delivery is kept at most (its retries end long before).
const DELIVERY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Dead letters kept per tenant (the count goes on in the metrics).
const DEAD_KEPT: isize = 1_000;

/// One queued notification: what to send where, and how it went so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub tenant: String,
    pub webhook_id: String,
    /// The JSON body, as signed and sent.
    pub body: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its tombstone lasts at least until then ("expiring soon": until the approval expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remember_until: Option<Timestamp>,
    /// "Expiring soon" for this approval: sent only while it is still pending, its body
    /// rendered again at each attempt, so that a retry or a redelivered dead letter neither
    /// sends reviewers to a closed approval nor states a time left that has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub while_pending: Option<String>,
    /// "Parked" for this approval: withdrawn once it was decided or expired (a retry hours
    /// later sent reviewers to a closed approval), its body sent as queued. Not
    /// `while_pending`: a version before this field renders that one again as a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless_settled: Option<String>,
    /// How often an admin queued it again from the dead letters: a late report of an attempt
    /// from before (whose lease ran out) must not settle the fresh round.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Delivery {
    /// How long its tombstone keeps a second copy from being queued.
    fn tombstone(&self) -> Duration {
        let until = self
            .remember_until
            .map_or(Duration::ZERO, |at| Timestamp::now().elapsed_at(at));
        TOMBSTONE.max(until)
    }
}

/// How many deliveries may wait at once: of one tenant, and of any one of its webhooks.
#[derive(Debug, Clone, Copy)]
pub struct QueueCaps {
    pub per_tenant: usize,
    pub per_webhook: usize,
}

/// What [`Store::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued (or settled) before: nothing done.
    Known,
    /// The webhook's or the tenant's queue is full: kept as a dead letter instead.
    Full,
}

/// A delivery's webhook, looked up when it is attempted.
pub enum Lookup {
    Found(Box<Webhook>),
    /// No longer there: its deliveries go nowhere.
    Removed,
    /// There but not readable by this version (a newer one wrote it, or a hand edit): not
    /// removed, so its deliveries wait rather than being dropped.
    Unreadable,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("a stored value is not what this version writes: {0}")]
    Corrupt(String),
}

#[derive(Clone)]
pub struct Store {
    connection: std::sync::Arc<ReplaceableConnection>,
    call_timeout: Duration,
}

/// A tenant's webhooks. Tenants named as the global keys below keep theirs under a name no
/// tenant's can take (ids have no `:`): tenant `due`'s webhooks were written over the due
/// queue, and every tenant's deliveries then failed to be queued.
fn hooks_key(tenant: &str) -> String {
    match tenant {
        "due" | "tenants" => format!("webhooks:hooks:{tenant}"),
        _ => format!("webhooks:{tenant}"),
    }
}
const TENANTS_KEY: &str = "webhooks:tenants";
const DUE_KEY: &str = "webhooks:due";
fn cursor_key(tenant: &str) -> String {
    format!("webhooks:cursor:{tenant}")
}
fn lock_key(tenant: &str) -> String {
    format!("webhooks:lock:{tenant}")
}
fn delivery_key(id: &str) -> String {
    format!("webhooks:delivery:{id}")
}
/// Followed by a webhook id: that webhook's queue.
fn queued_prefix(tenant: &str) -> String {
    format!("webhooks:queued:{tenant}:")
}
fn queued_key(tenant: &str, webhook: &str) -> String {
    format!("{}{webhook}", queued_prefix(tenant))
}
/// The tenant and the webhook a delivery id starts with (`<tenant>:<webhook>:…`).
fn owners_of(delivery_id: &str) -> (&str, &str) {
    let mut parts = delivery_id.split(':');
    (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}
fn dead_key(tenant: &str) -> String {
    format!("webhooks:dead:{tenant}")
}

/// Queues a delivery unless one with its id exists (or existed within a day): a re-read of the
/// audit after a crash queues nothing twice. When its webhook has `ARGV[6]` deliveries queued
/// already (a receiver down or never answering, while events keep coming), or the tenant's
/// webhooks `ARGV[10]` together (their queues: `ARGV[11]` followed by each id in KEYS[5]), it
/// becomes a dead letter at once (`ARGV[7]` or `ARGV[12]`; 2): the queues would otherwise grow
/// without bound in the Redis every tenant shares, and every tenant's sender would pass over
/// them. Per webhook, so that one silent receiver does not take its tenant's other webhooks'
/// room. Entries older than any delivery lives (before `ARGV[5]`) are dropped first, so a count
/// that drifted mends itself, and a full queue first drops up to 200 of its oldest entries
/// already settled (left by an earlier version during a rolling upgrade), at most every 10 s
/// per webhook: a receiver that never answers keeps its queue full of live deliveries, and
/// reading 200 of them for every event refused was Redis' busiest work.
const ENQUEUE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[5])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6])
    and redis.call('SET', KEYS[3] .. ':pruned', 1, 'NX', 'PX', 10000) then
  -- Full: first drop the oldest entries already settled (sent, dead, gone), which an instance
  -- of an earlier version left here when it settled them from the tenant's old set.
  local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[3])
  for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, 199)) do
    local held = redis.call('GET', prefix .. id)
    if not held or held == 'sent' or held == 'dead' then redis.call('ZREM', KEYS[3], id) end
  end
end
local refused = nil
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then
  refused = ARGV[7]
else
  local waiting = 0
  for _, hook in ipairs(redis.call('HKEYS', KEYS[5])) do
    waiting = waiting + redis.call('ZCARD', ARGV[11] .. hook)
  end
  if waiting >= tonumber(ARGV[10]) then refused = ARGV[12] end
end
if refused then
  redis.call('SET', KEYS[1], 'dead', 'PX', ARGV[9])
  redis.call('LPUSH', KEYS[4], refused)
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[8]) - 1)
  return 2
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return 1";

/// Claims what is due: each claimed id moves a lease ahead, so no other instance attempts it
/// until this one reports, or until the lease runs out if it died.
const CLAIM: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids";

/// A failed attempt's outcome (KEYS[1] the delivery, KEYS[2] the queue): retried (ARGV[3] the
/// due time) or, with ARGV[4] set, given up on into KEYS[3]; ARGV[7] is the attempts it counts.
/// Nothing happens to a delivery already settled, attempted as often by another instance, or
/// redelivered since (ARGV[8] the attempt's round): one whose lease ran out while its attempt
/// hung must not bring back a delivery sent since (it would be sent again) or given up on, nor
/// turn its attempt count back, nor put a redelivered one back among the dead letters.
const FAILED: &str = r"
local current = redis.call('GET', KEYS[1])
if current == 'sent' or current == 'dead' then return 0 end
if current then
  local ok, stored = pcall(cjson.decode, current)
  if ok and type(stored) == 'table' then
    local round = tonumber(stored.round) or 0
    if round > tonumber(ARGV[8]) then return 0 end
    if round == tonumber(ARGV[8]) and type(stored.attempts) == 'number'
        and stored.attempts >= tonumber(ARGV[7]) then
      return 0
    end
  end
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
  return 1
end
redis.call('LPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
redis.call('SET', KEYS[1], 'dead', 'PX', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[5])
return 1";

/// Sent (KEYS[1] the delivery, KEYS[2] the queue, KEYS[3] the tenant's dead letters): marked
/// so for ARGV[1] ms and out of the queue. One given up on meanwhile by another instance (a
/// late success) also leaves the dead letters, so no redelivery, however late, sends it again.
const DELIVERED: &str = r"
local was = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'sent', 'PX', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
if was == 'dead' then
  for _, json in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    local ok, letter = pcall(cjson.decode, json)
    if ok and type(letter) == 'table' and letter.id == ARGV[2] then
      redis.call('LREM', KEYS[3], 0, json)
    end
  end
end
return 0";

/// Adds a webhook (KEYS[1] the tenant's hash) unless the tenant has ARGV[4] already: the
/// count and the write are one step, so concurrent adds cannot pass the cap together. The
/// tenant joins the readers' set and its cursor starts now, if it had none.
const ADD: &str = r"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], ARGV[3], 'NX')
return 1";

/// Forgets a tenant only while it still has no webhook, its dead letters with it: they name
/// webhooks that are gone, so nothing can redeliver them, and they were kept for good.
const FORGET_TENANT: &str = r"
if redis.call('HLEN', KEYS[1]) > 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
return 1";

/// Takes or keeps the tenant's reader lock for this instance.
const LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] or redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// Gives up each of these tenants' reader locks this instance still holds; how many.
const UNLOCK: &str = r"
local released = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released";

/// Brings a webhook's deferred deliveries forward (KEYS[1] its queue, KEYS[2] the due set;
/// ARGV: from when, the step, how many at most): those due past ARGV[1], in the order they
/// were queued.
const PULL_FORWARD: &str = r"
local at = tonumber(ARGV[1])
local moved = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)) do
  local due = redis.call('ZSCORE', KEYS[2], id)
  if due and tonumber(due) > at then
    redis.call('ZADD', KEYS[2], 'XX', string.format('%d', at), id)
    at = at + tonumber(ARGV[2])
    moved = moved + 1
  end
end
return moved";

/// The most deliveries [`Store::pull_forward`] moves in one call (one webhook's queue is
/// bounded by `notifications.max_queued_per_webhook`; what is left comes due as it was).
const PULLED_AT_ONCE: usize = 10_000;

/// Records a sign-out (KEYS[1] the subject's sorted set of sign-outs by expiry, KEYS[2] its
/// "every session ending by then" mark; ARGV: the session, its expiry, now, the cap, the
/// margin, in ms). Drops the expired ones, then past the cap the soonest-ending ones, raising
/// the mark to the last dropped; both keys live as long as what they hold.
const SIGN_OUT: &str = r"
local margin = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[3]) - margin)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  local dropped = redis.call('ZPOPMIN', KEYS[1], over)
  local mark = tonumber(dropped[#dropped])
  local was = tonumber(redis.call('GET', KEYS[2]) or '0')
  if mark > was then
    redis.call('SET', KEYS[2], string.format('%d', mark), 'PXAT', string.format('%d', mark + margin))
  end
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2]) + margin))";

/// The keys of `subject`'s sign-outs (see [`SIGN_OUT`]); a digest, for any subject's name.
pub(crate) fn sign_out_keys(subject: &str) -> (String, String) {
    use sha2::Digest as _;
    let named = hex::encode(sha2::Sha256::digest(subject.as_bytes()));
    (
        format!("ui:sign_outs:{named}"),
        format!("ui:sign_outs_before:{named}"),
    )
}

/// Moves every dead letter of a tenant back to the queue, due now, with its attempts counted
/// afresh; atomic, so a delivery given up meanwhile is either moved or stays a dead letter.
/// A letter whose delivery was sent after all (an instance gave up on it while another, whose
/// attempt had outlived its lease, got it through) is dropped, not sent again. One that cannot
/// be read (edited by hand, another version's) stays a dead letter: it would otherwise stop the
/// script half-way, its writes so far kept and the letters requeued left in the list too.
/// Each goes back into its webhook's queue (`ARGV[4]` followed by its webhook id). A letter
/// of a webhook removed since (not in KEYS[3]) is dropped: it would be counted as queued, then
/// dropped at its first attempt.
const REDELIVER: &str = r"
local letters = redis.call('LRANGE', KEYS[1], 0, -1)
local moved = 0
local kept = {}
for _, json in ipairs(letters) do
  local ok, delivery = pcall(cjson.decode, json)
  if not ok or type(delivery) ~= 'table' or type(delivery.id) ~= 'string'
      or type(delivery.webhook_id) ~= 'string' then
    kept[#kept + 1] = json
  elseif redis.call('HEXISTS', KEYS[3], delivery.webhook_id) == 0 then
    -- Its webhook is gone: nowhere to deliver it.
  elseif redis.call('GET', ARGV[3] .. delivery.id) ~= 'sent' then
    delivery.attempts = 0
    delivery.last_error = nil
    delivery.round = (tonumber(delivery.round) or 0) + 1
    redis.call('SET', ARGV[3] .. delivery.id, cjson.encode(delivery), 'PX', ARGV[2])
    redis.call('ZADD', KEYS[2], ARGV[1], delivery.id)
    redis.call('ZADD', ARGV[4] .. delivery.webhook_id, ARGV[1], delivery.id)
    redis.call('PEXPIRE', ARGV[4] .. delivery.webhook_id, ARGV[2])
    moved = moved + 1
  end
end
redis.call('DEL', KEYS[1])
if #kept > 0 then redis.call('RPUSH', KEYS[1], unpack(kept)) end
return moved";

/// Removes webhook `ARGV[1]` (KEYS[1], the tenant's webhooks), its dead letters (KEYS[2]) and
/// its queued deliveries (KEYS[3], out of the due set KEYS[4] too, each settled for ARGV[3] ms
/// under ARGV[2] followed by its id, as one sent is: a late report of an attempt in flight
/// puts nothing back). Dead letters kept were counted in the tenant's `dead_letters` for good,
/// and a redelivery said it queued them; queued deliveries kept (a hung receiver's backlog,
/// paced hours ahead) stayed in Redis and in `approvals_notifications_pending` until each came
/// due. Letters this version cannot read stay, as in `REDELIVER`.
const REMOVE: &str = r"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 0 then return 0 end
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  redis.call('ZREM', KEYS[4], id)
  redis.call('SET', ARGV[2] .. id, 'sent', 'PX', ARGV[3])
end
redis.call('DEL', KEYS[3])
local kept = {}
for _, json in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local ok, delivery = pcall(cjson.decode, json)
  if not (ok and type(delivery) == 'table' and delivery.webhook_id == ARGV[1]) then
    kept[#kept + 1] = json
  end
end
redis.call('DEL', KEYS[2])
if #kept > 0 then redis.call('RPUSH', KEYS[2], unpack(kept)) end
return removed";

/// How long a delivery this version cannot read waits before it is looked at again.
const UNREADABLE_RETRY: Duration = Duration::from_secs(600);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Store {
    pub async fn connect(url: &str, call_timeout: Duration) -> Result<Self, StoreError> {
        let client = approvals_redis::open_client(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(call_timeout))
            .set_response_timeout(Some(call_timeout));
        let connection = std::sync::Arc::new(ReplaceableConnection::lazy(client, config)?);
        Ok(Self {
            connection,
            call_timeout,
        })
    }

    /// Runs one Redis call under the deadline.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let handed = self.connection.hand_out();
        match tokio::time::timeout(self.call_timeout, f(handed.connection.clone())).await {
            Ok(result) => {
                // A `READONLY` (the address leads to a replica now) replaces the connection.
                self.connection.answered(&handed, &result);
                Ok(result?)
            }
            Err(_) => Err(StoreError::Timeout(self.call_timeout)),
        }
    }

    pub async fn webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
        let key = hooks_key(tenant.as_str());
        let values: Vec<String> = self.call(|mut c| async move { c.hvals(key).await }).await?;
        // One unreadable entry must not silence (or hide) the tenant's other webhooks.
        let mut hooks: Vec<Webhook> = values
            .iter()
            .filter_map(|v| match serde_json::from_str::<Webhook>(v) {
                Ok(hook) => Some(hook),
                Err(error) => {
                    tracing::warn!(%tenant, %error, "unreadable webhook passed over");
                    crate::metrics::unreadable_record(true);
                    None
                }
            })
            .collect();
        hooks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(hooks)
    }

    /// Adds `hook` unless its tenant has `max` webhooks already (false then); when it is the
    /// tenant's first, the tenant's audit is read from now on.
    pub async fn add(&self, hook: &Webhook, max: usize) -> Result<bool, StoreError> {
        let json = serde_json::to_string(hook).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tenant = hook.tenant.clone();
        let id = hook.id.clone();
        let since = format!("since:{}", Timestamp::now().as_millis());
        let added: i64 = self
            .call(|mut c| async move {
                redis::Script::new(ADD)
                    .key(hooks_key(&tenant))
                    .key(TENANTS_KEY)
                    .key(cursor_key(&tenant))
                    .arg(&id)
                    .arg(json)
                    .arg(since)
                    .arg(max)
                    .arg(&tenant)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(added == 1)
    }

    /// How many webhooks the tenant has (readable or not).
    pub async fn count(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let key = hooks_key(tenant.as_str());
        self.call(|mut c| async move { c.hlen(key).await }).await
    }

    /// One webhook of the tenant, as a delivery names it.
    pub async fn webhook(&self, tenant: &str, id: &str) -> Result<Lookup, StoreError> {
        let (key, field) = (hooks_key(tenant), id.to_owned());
        let value: Option<String> = self
            .call(|mut c| async move { c.hget(key, field).await })
            .await?;
        Ok(match value {
            None => Lookup::Removed,
            Some(json) => match serde_json::from_str::<Webhook>(&json) {
                Ok(hook) => Lookup::Found(Box::new(hook)),
                Err(error) => {
                    tracing::warn!(%tenant, webhook = %id, %error, "unreadable webhook passed over");
                    crate::metrics::unreadable_record(true);
                    Lookup::Unreadable
                }
            },
        })
    }

    /// Removes a webhook; false if it did not exist.
    pub async fn remove(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let removed: u32 = self
            .call(|mut c| async move {
                redis::Script::new(REMOVE)
                    .key(hooks_key(tenant.as_str()))
                    .key(dead_key(tenant.as_str()))
                    .key(queued_key(tenant.as_str(), &id))
                    .key(DUE_KEY)
                    .arg(&id)
                    .arg(delivery_key(""))
                    .arg(millis(TOMBSTONE))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(removed > 0)
    }

    /// The tenants that have (or had) webhooks; one whose last webhook went is dropped here.
    pub async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        self.call(|mut c| async move { c.smembers(TENANTS_KEY).await })
            .await
    }

    /// Drops a tenant whose last webhook went, unless one was added since it was found empty
    /// (else that webhook would never be read).
    pub async fn forget_tenant(&self, tenant: &str) -> Result<(), StoreError> {
        let tenant = tenant.to_owned();
        self.call(|mut c| async move {
            redis::Script::new(FORGET_TENANT)
                .key(hooks_key(&tenant))
                .key(TENANTS_KEY)
                .key(cursor_key(&tenant))
                .key(dead_key(&tenant))
                .arg(&tenant)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(drop)
    }

    /// Takes or keeps the right to read `tenant`'s audit for `lease` (one instance at a time).
    pub async fn lock(
        &self,
        tenant: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (key, owner) = (lock_key(tenant), owner.to_owned());
        let held: i64 = self
            .call(|mut c| async move {
                redis::Script::new(LOCK)
                    .key(key)
                    .arg(owner)
                    .arg(millis(lease))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(held == 1)
    }

    /// Gives up every reader lock `owner` holds, so that another instance reads those tenants
    /// at its next pass instead of after the lease. One script for all of them: a round trip
    /// per tenant did not fit the shutdown's 2 s once there were a few thousand tenants.
    pub async fn unlock_all(&self, owner: &str) -> Result<u64, StoreError> {
        let tenants = self.tenants().await?;
        if tenants.is_empty() {
            return Ok(0);
        }
        let owner = owner.to_owned();
        self.call(|mut c| async move {
            let script = redis::Script::new(UNLOCK);
            let mut unlock = script.prepare_invoke();
            for tenant in &tenants {
                unlock.key(lock_key(tenant));
            }
            unlock.arg(owner).invoke_async::<u64>(&mut c).await
        })
        .await
    }

    /// The tenant's cursor; one that went missing (a restore, an operator's `DEL`) starts at
    /// `now` and is stored at once, so the events after it are read by the next pass (not
    /// passed over, every pass starting from its own "now").
    pub async fn cursor(&self, tenant: &str, now: Timestamp) -> Result<String, StoreError> {
        let key = cursor_key(tenant);
        let start = format!("since:{}", now.as_millis());
        self.call(|mut c| async move {
            redis::pipe()
                .atomic()
                .set_nx(&key, start)
                .ignore()
                .get(&key)
                .query_async::<(String,)>(&mut c)
                .await
                .map(|(cursor,)| cursor)
        })
        .await
    }

    pub async fn set_cursor(&self, tenant: &str, cursor: &str) -> Result<(), StoreError> {
        let (key, cursor) = (cursor_key(tenant), cursor.to_owned());
        self.call(|mut c| async move { c.set(key, cursor).await })
            .await
    }

    /// Queues `delivery` to be attempted now, unless it was queued before or its webhook or
    /// tenant has as many deliveries waiting as `caps` allows (then it is a dead letter at once).
    pub async fn enqueue(
        &self,
        delivery: &Delivery,
        caps: QueueCaps,
    ) -> Result<Enqueued, StoreError> {
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        let json = serde_json::to_string(delivery).map_err(corrupt)?;
        let refused = |reason: String| {
            serde_json::to_string(&Delivery {
                last_error: Some(format!("not queued: {reason}")),
                ..delivery.clone()
            })
            .map_err(corrupt)
        };
        let webhook_full = refused(format!(
            "the webhook already had {} deliveries waiting (notifications.max_queued_per_webhook)",
            caps.per_webhook
        ))?;
        let tenant_full = refused(format!(
            "the tenant already had {} deliveries waiting (notifications.max_queued_per_tenant)",
            caps.per_tenant
        ))?;
        let (id, tenant, webhook, tombstone) = (
            delivery.id.clone(),
            delivery.tenant.clone(),
            delivery.webhook_id.clone(),
            delivery.tombstone(),
        );
        let now = Timestamp::now();
        let outcome: i64 = self
            .call(|mut c| async move {
                redis::Script::new(ENQUEUE)
                    .key(delivery_key(&id))
                    .key(DUE_KEY)
                    .key(queued_key(&tenant, &webhook))
                    .key(dead_key(&tenant))
                    .key(hooks_key(&tenant))
                    .arg(json)
                    .arg(now.as_millis())
                    .arg(&id)
                    .arg(millis(DELIVERY_TTL))
                    .arg(now.minus(DELIVERY_TTL).as_millis())
                    .arg(caps.per_webhook)
                    .arg(webhook_full)
                    .arg(DEAD_KEPT)
                    .arg(millis(tombstone))
                    .arg(caps.per_tenant)
                    .arg(queued_prefix(&tenant))
                    .arg(tenant_full)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match outcome {
            1 => Enqueued::Queued,
            2 => Enqueued::Full,
            _ => Enqueued::Known,
        })
    }

    /// Up to `limit` deliveries due now, each leased for `lease`.
    pub async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Delivery>, StoreError> {
        let now = Timestamp::now();
        let ids: Vec<String> = self
            .call(|mut c| async move {
                redis::Script::new(CLAIM)
                    .key(DUE_KEY)
                    .arg(now.as_millis())
                    .arg(now.plus(lease).as_millis())
                    .arg(limit)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| delivery_key(id)).collect();
        let values: Vec<Option<String>> =
            self.call(|mut c| async move { c.mget(keys).await }).await?;
        let mut deliveries = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value.as_deref().map(serde_json::from_str::<Delivery>) {
                Some(Ok(delivery)) => deliveries.push(delivery),
                // Neither a delivery this version reads nor a tombstone (another version's, or
                // edited by hand): not knowing is not settled. Left queued, looked at again in
                // a while rather than every lease, for a person or that version to settle.
                Some(Err(error)) if !matches!(value.as_deref(), Some("sent" | "dead")) => {
                    tracing::warn!(delivery = %id, %error, "unreadable webhook delivery left queued");
                    crate::metrics::unreadable_record(true);
                    let (id, later) = (id.clone(), now.plus(UNREADABLE_RETRY).as_millis());
                    self.call(|mut c| async move {
                        redis::cmd("ZADD")
                            .arg(DUE_KEY)
                            .arg("XX")
                            .arg(later)
                            .arg(id)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await?;
                }
                // Gone (expired) or a tombstone: nothing left to send.
                other => {
                    if other.is_none() {
                        // Waited out its whole life (`DELIVERY_TTL`) without being sent or
                        // given up on: lost, which on-call staff must hear of.
                        tracing::warn!(delivery = %id, "webhook delivery expired unsent");
                        metrics::counter!("approvals_notifications_total",
                            "tenant" => owners_of(id).0.to_owned(), "outcome" => "dead")
                        .increment(1);
                    }
                    let id = id.clone();
                    self.call(|mut c| async move {
                        let (tenant, webhook) = owners_of(&id);
                        redis::pipe()
                            .zrem(DUE_KEY, &id)
                            .zrem(queued_key(tenant, webhook), &id)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await?;
                }
            }
        }
        Ok(deliveries)
    }

    /// Claimed but not attempted (its webhook has enough in flight): each due again at its
    /// time, with no attempt counted. `XX`: one sent or given up on meanwhile stays out of the
    /// queue.
    pub async fn defer(&self, due: Vec<(String, Timestamp)>) -> Result<(), StoreError> {
        if due.is_empty() {
            return Ok(());
        }
        self.call(|mut c| async move {
            let members: Vec<(i64, &String)> =
                due.iter().map(|(id, at)| (at.as_millis(), id)).collect();
            redis::cmd("ZADD")
                .arg(DUE_KEY)
                .arg("XX")
                .arg(members)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// The deliveries of one webhook due past `beyond`, oldest queued first, due from
    /// `beyond` on, `step` apart (at most [`PULLED_AT_ONCE`]); how many moved. Only those
    /// past `beyond`: a lease never reaches it, so none in flight is made due again.
    pub async fn pull_forward(
        &self,
        tenant: &str,
        webhook: &str,
        beyond: Timestamp,
        step: Duration,
    ) -> Result<u64, StoreError> {
        let queued = queued_key(tenant, webhook);
        self.call(|mut c| async move {
            redis::Script::new(PULL_FORWARD)
                .key(queued)
                .key(DUE_KEY)
                .arg(beyond.as_millis())
                .arg(millis(step))
                .arg(PULLED_AT_ONCE)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// The receiver took it: never again.
    pub async fn delivered(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let (id, tenant, webhook, tombstone) = (
            delivery.id.clone(),
            delivery.tenant.clone(),
            delivery.webhook_id.clone(),
            delivery.tombstone(),
        );
        self.call(|mut c| async move {
            redis::Script::new(DELIVERED)
                .key(delivery_key(&id))
                .key(DUE_KEY)
                .key(dead_key(&tenant))
                .key(queued_key(&tenant, &webhook))
                .arg(millis(tombstone))
                .arg(&id)
                .invoke_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Failed this time: tried again at `next`. False if another instance settled it
    /// meanwhile (nothing changed).
    pub async fn retry_at(&self, delivery: &Delivery, next: Timestamp) -> Result<bool, StoreError> {
        self.failed(delivery, Some(next)).await
    }

    /// Given up on: kept in the tenant's dead letters, never tried again. False if another
    /// instance settled it meanwhile (nothing changed).
    pub async fn dead(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        self.failed(delivery, None).await
    }

    async fn failed(
        &self,
        delivery: &Delivery,
        retry: Option<Timestamp>,
    ) -> Result<bool, StoreError> {
        let json =
            serde_json::to_string(delivery).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (id, tenant, webhook, attempts, round) = (
            delivery.id.clone(),
            delivery.tenant.clone(),
            delivery.webhook_id.clone(),
            delivery.attempts,
            delivery.round,
        );
        let (due, dead_for) = match retry {
            Some(next) => (next.as_millis().to_string(), String::new()),
            // Remembered as long as a sent one: a dead "expiring soon" must not be queued
            // again while its approval still waits.
            None => (String::new(), millis(delivery.tombstone()).to_string()),
        };
        self.call(|mut c| async move {
            redis::Script::new(FAILED)
                .key(delivery_key(&id))
                .key(DUE_KEY)
                .key(dead_key(&tenant))
                .key(queued_key(&tenant, &webhook))
                .arg(json)
                .arg(millis(DELIVERY_TTL))
                .arg(due)
                .arg(dead_for)
                .arg(&id)
                .arg(DEAD_KEPT)
                .arg(attempts)
                .arg(round)
                .invoke_async::<i64>(&mut c)
                .await
                .map(|applied| applied == 1)
        })
        .await
    }

    /// Queues `tenant`'s dead letters again, due now; how many.
    pub async fn redeliver_dead(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let key = dead_key(tenant.as_str());
        self.call(|mut c| async move {
            redis::Script::new(REDELIVER)
                .key(key)
                .key(DUE_KEY)
                .key(hooks_key(tenant.as_str()))
                .arg(Timestamp::now().as_millis())
                .arg(millis(DELIVERY_TTL))
                .arg(delivery_key(""))
                .arg(queued_prefix(tenant.as_str()))
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// How many of `tenant`'s deliveries were given up on (the last 1,000 are kept).
    pub async fn dead_letters(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let key = dead_key(tenant.as_str());
        self.call(|mut c| async move { c.llen(key).await }).await
    }

    /// Records that a reviewer looked at a pending approval; true the first time (across
    /// instances), for the time-to-first-view figure. Forgotten after `keep`.
    pub async fn first_view(
        &self,
        tenant: &TenantId,
        id: &str,
        keep: Duration,
    ) -> Result<bool, StoreError> {
        let key = format!("viewed:{tenant}:{id}");
        let keep = millis(keep).max(1);
        let set: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(keep)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// Records that `session` (a digest naming an inbox session) of `subject`, ending at
    /// `expires_ms`, was signed out. A subject keeps at most `cap` unexpired sign-outs; past
    /// it, the soonest-ending ones are dropped and every session of the subject ending by
    /// then counts as signed out (so nothing comes back, and one reviewer signing in and out
    /// in a loop holds `cap` entries, not one key per sign-out until each would expire).
    /// Each is kept `margin` past its expiry: instances' clocks differ.
    pub async fn sign_out(
        &self,
        subject: &str,
        session: &str,
        expires_ms: i64,
        cap: usize,
        margin: Duration,
    ) -> Result<(), StoreError> {
        let (listed, before) = sign_out_keys(subject);
        let (session, margin) = (session.to_owned(), millis(margin));
        let now = Timestamp::now().as_millis();
        self.call(|mut c| async move {
            redis::Script::new(SIGN_OUT)
                .key(listed)
                .key(before)
                .arg(session)
                .arg(expires_ms)
                .arg(now)
                .arg(cap)
                .arg(margin)
                .invoke_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Whether `session` of `subject`, ending at `expires_ms`, was signed out (one round trip).
    pub async fn signed_out(
        &self,
        subject: &str,
        session: &str,
        expires_ms: i64,
    ) -> Result<bool, StoreError> {
        let (listed, before) = sign_out_keys(subject);
        // Written by instances of an earlier version (one key per sign-out) during an upgrade.
        let single = format!("ui:signed_out:{session}");
        let session = session.to_owned();
        let (single, score, mark): (bool, Option<f64>, Option<i64>) = self
            .call(|mut c| async move {
                redis::pipe()
                    .exists(single)
                    .zscore(listed, session)
                    .get(before)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(single || score.is_some() || mark.is_some_and(|mark| expires_ms <= mark))
    }

    /// Deliveries waiting (due now or later, all tenants).
    pub async fn queued(&self) -> Result<u64, StoreError> {
        self.call(|mut c| async move { c.zcard(DUE_KEY).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use approvals_testkit::RedisServer;

    use super::*;
    use crate::notify::{NotifyEvent, WebhookFormat};

    /// The cutover runbook's list of keys to carry into a new Redis names the sign-out keys
    /// this version writes: it named the old ones only, and copied cookies signed out before
    /// the move worked again after it.
    #[test]
    fn the_cutover_runbook_names_the_sign_out_keys() {
        let runbook = include_str!("../../docs/runbook-cutover.md");
        let (sign_outs, before) = sign_out_keys("someone");
        for key in [sign_outs, before] {
            let (prefix, _) = key.rsplit_once(':').expect("a prefix");
            let pattern = format!("`{prefix}:*`");
            assert!(runbook.contains(&pattern), "the runbook names {pattern}");
        }
    }

    const ROOMY: QueueCaps = QueueCaps {
        per_tenant: 100,
        per_webhook: 100,
    };
    const TWO_PER_WEBHOOK: QueueCaps = QueueCaps {
        per_tenant: 100,
        per_webhook: 2,
    };

    /// A fresh delivery of tenant acme's webhook wh-1, with id `id`.
    fn queued(id: &str) -> Delivery {
        Delivery {
            id: id.into(),
            tenant: "acme".into(),
            webhook_id: "wh-1".into(),
            body: "{}".into(),
            attempts: 0,
            last_error: None,
            remember_until: None,
            while_pending: None,
            unless_settled: None,
            round: 0,
        }
    }

    /// An instance whose lease ran out while its attempt hung reports a failure after another
    /// instance sent the delivery: the "sent" tombstone stays, and nothing is queued again
    /// (it used to be overwritten, and the delivery sent a second time).
    #[tokio::test]
    async fn a_late_failure_does_not_undo_a_delivery_sent_meanwhile() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let failed = |delivery: &Delivery, attempts: u32| Delivery {
            attempts,
            last_error: Some("timed out".into()),
            ..delivery.clone()
        };
        let acme = TenantId::parse("acme").unwrap();
        let mut conn = redis.connection().await;
        // The webhook the deliveries are for: a redelivery drops letters of a removed one.
        assert!(store.add(&webhook("wh-1"), 10).await.unwrap());

        // Given up on here, redelivered by an admin; then the report of an instance whose
        // last attempt outlived its lease comes in: it does not make the fresh round dead.
        let redelivered = queued("d-4");
        assert_eq!(
            store.enqueue(&redelivered, ROOMY).await.unwrap(),
            Enqueued::Queued
        );
        assert!(store.dead(&failed(&redelivered, 8)).await.unwrap());
        assert_eq!(store.redeliver_dead(&acme).await.unwrap(), 1);
        assert!(!store.dead(&failed(&redelivered, 8)).await.unwrap());
        assert_eq!(store.dead_letters(&acme).await.unwrap(), 0);
        let claimed = store.claim(10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 1, "the redelivered round is attempted");
        assert_eq!((claimed[0].attempts, claimed[0].round), (0, 1));
        // Its own failures count as before.
        assert!(store.dead(&failed(&claimed[0], 8)).await.unwrap());
        assert_eq!(store.dead_letters(&acme).await.unwrap(), 1);
        let _: () = conn.del(dead_key("acme")).await.unwrap();

        let sent = queued("d-1");
        assert_eq!(store.enqueue(&sent, ROOMY).await.unwrap(), Enqueued::Queued);
        store.delivered(&sent).await.unwrap();
        assert!(!store
            .retry_at(&failed(&sent, 1), Timestamp::now())
            .await
            .unwrap());
        assert!(!store.dead(&failed(&sent, 1)).await.unwrap());
        let value: Option<String> = conn.get(delivery_key("d-1")).await.unwrap();
        assert_eq!(value.as_deref(), Some("sent"));
        assert!(store
            .claim(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.dead_letters(&acme).await.unwrap(), 0);

        // Nor does a late report turn back the attempts another instance counted since.
        let retried = queued("d-3");
        assert_eq!(
            store.enqueue(&retried, ROOMY).await.unwrap(),
            Enqueued::Queued
        );
        store
            .retry_at(&failed(&retried, 3), Timestamp::now())
            .await
            .unwrap();
        store
            .retry_at(&failed(&retried, 2), Timestamp::now())
            .await
            .unwrap();
        let stored: String = conn.get(delivery_key("d-3")).await.unwrap();
        assert_eq!(
            serde_json::from_str::<Delivery>(&stored).unwrap().attempts,
            3
        );
        let _: () = conn.zrem(DUE_KEY, "d-3").await.unwrap();

        // A delivery nobody settled is retried and given up on as before.
        let other = queued("d-2");
        assert_eq!(
            store.enqueue(&other, ROOMY).await.unwrap(),
            Enqueued::Queued
        );
        store
            .retry_at(&failed(&other, 1), Timestamp::now())
            .await
            .unwrap();
        let claimed = store.claim(10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempts, 1);
        assert!(store.dead(&failed(&other, 2)).await.unwrap());
        assert_eq!(store.dead_letters(&acme).await.unwrap(), 1);

        // The other order: given up on here, then sent by the instance whose attempt outlived
        // its lease. Its dead letter goes at once: redelivering must not send it a second
        // time, however long after (the "sent" tombstone lapses after a day).
        store.delivered(&other).await.unwrap();
        assert_eq!(store.dead_letters(&acme).await.unwrap(), 0);
        let _: () = conn.del(delivery_key("d-2")).await.unwrap();
        assert_eq!(store.redeliver_dead(&acme).await.unwrap(), 0);
        assert_eq!(store.dead_letters(&acme).await.unwrap(), 0);
        assert!(store
            .claim(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty());
    }

    /// A webhook whose receiver never answers, while events keep coming: its queue stops at
    /// the cap (the rest are dead letters at once), and room comes back as deliveries leave.
    #[tokio::test]
    async fn a_webhooks_queue_stops_at_its_cap() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let delivery = |id: &str| queued(&format!("acme:wh-1:{id}"));
        let acme = TenantId::parse("acme").unwrap();
        let mut conn = redis.connection().await;
        for id in ["e-1", "e-2"] {
            assert_eq!(
                store.enqueue(&delivery(id), TWO_PER_WEBHOOK).await.unwrap(),
                Enqueued::Queued
            );
        }
        assert_eq!(
            store
                .enqueue(&delivery("e-3"), TWO_PER_WEBHOOK)
                .await
                .unwrap(),
            Enqueued::Full
        );
        assert_eq!(store.dead_letters(&acme).await.unwrap(), 1);
        assert_eq!(store.queued().await.unwrap(), 2);
        // Not queued later either: it is a dead letter, to redeliver once receivers are back.
        assert_eq!(
            store
                .enqueue(&delivery("e-3"), TWO_PER_WEBHOOK)
                .await
                .unwrap(),
            Enqueued::Known
        );

        // Sent: room for one more.
        store.delivered(&delivery("e-1")).await.unwrap();
        assert_eq!(
            store
                .enqueue(&delivery("e-4"), TWO_PER_WEBHOOK)
                .await
                .unwrap(),
            Enqueued::Queued
        );
        // One whose record vanished (expired) leaves the count when a claim finds it gone.
        let _: () = conn.del(delivery_key("acme:wh-1:e-2")).await.unwrap();
        let claimed = store.claim(10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(
            store
                .enqueue(&delivery("e-5"), TWO_PER_WEBHOOK)
                .await
                .unwrap(),
            Enqueued::Queued
        );
        // Given up on: room again.
        let attempted = Delivery {
            attempts: 1,
            ..claimed[0].clone()
        };
        assert!(store.dead(&attempted).await.unwrap());
        assert_eq!(
            store
                .enqueue(&delivery("e-6"), TWO_PER_WEBHOOK)
                .await
                .unwrap(),
            Enqueued::Queued
        );
        let waiting: u64 = conn.zcard(queued_key("acme", "wh-1")).await.unwrap();
        assert_eq!(waiting, 2);
    }

    /// Deliveries an instance of an earlier version settled stay in the webhook's queue (it
    /// took them out of the tenant's old one only): a full queue drops those before it turns
    /// a new delivery away, or a healthy webhook's were dead letters for up to a week.
    #[tokio::test]
    async fn a_full_queue_first_drops_deliveries_settled_elsewhere() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let delivery = |id: &str| queued(&format!("acme:wh-1:{id}"));
        for id in ["e-1", "e-2"] {
            assert_eq!(
                store.enqueue(&delivery(id), TWO_PER_WEBHOOK).await.unwrap(),
                Enqueued::Queued
            );
        }
        // Sent by an old instance: marked, and left in the webhook's queue.
        let mut conn = redis.connection().await;
        let _: () = conn
            .set(delivery_key("acme:wh-1:e-1"), "sent")
            .await
            .unwrap();
        assert_eq!(
            store
                .enqueue(&delivery("e-3"), TWO_PER_WEBHOOK)
                .await
                .unwrap(),
            Enqueued::Queued
        );
        assert_eq!(
            store
                .enqueue(&delivery("e-4"), TWO_PER_WEBHOOK)
                .await
                .unwrap(),
            Enqueued::Full,
            "still two waiting"
        );
    }

    /// A receiver that never answers keeps its queue full of live deliveries: each event
    /// refused for it read up to 200 of them (bodies and all) inside Redis, which every tenant
    /// shares. The search for settled leftovers runs once in a while, not per refusal.
    #[tokio::test]
    async fn a_full_queue_is_searched_for_leftovers_once_in_a_while() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let delivery = |n: usize| queued(&format!("acme:wh-1:e-{n}"));
        for n in 0..2 {
            let queued = store.enqueue(&delivery(n), TWO_PER_WEBHOOK).await.unwrap();
            assert_eq!(queued, Enqueued::Queued);
        }
        let reads_before = redis.calls("get").await;
        for n in 2..12 {
            let refused = store.enqueue(&delivery(n), TWO_PER_WEBHOOK).await.unwrap();
            assert_eq!(refused, Enqueued::Full);
        }
        let reads = redis.calls("get").await - reads_before;
        assert!(reads <= 2, "{reads} deliveries read for 10 refusals");
    }

    /// A delivery this version cannot read (another version's, edited by hand) is not a
    /// settled one: it stays queued, for later, instead of being dropped without a word.
    #[tokio::test]
    async fn an_unreadable_delivery_stays_queued() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let id = "acme:wh-1:e-1";
        let mut conn = redis.connection().await;
        let _: () = conn
            .set(
                delivery_key(id),
                r#"{"id":"acme:wh-1:e-1","attempts":"many"}"#,
            )
            .await
            .unwrap();
        let _: () = conn.zadd(DUE_KEY, id, 0).await.unwrap();
        let claimed = store.claim(10, Duration::from_secs(30)).await.unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
        let due: Option<f64> = conn.zscore(DUE_KEY, id).await.unwrap();
        let due = due.expect("still queued");
        assert!(due > Timestamp::now().plus(Duration::from_secs(60)).as_millis() as f64);
    }

    fn webhook(id: &str) -> Webhook {
        Webhook {
            id: id.into(),
            tenant: "acme".into(),
            url: "https://hooks.example/approvals".into(),
            events: vec![NotifyEvent::Parked],
            format: WebhookFormat::Json,
            secret: "s".into(),
            created_at: Timestamp::now(),
        }
    }

    /// One receiver that never answers fills its own share: the tenant's other webhooks keep
    /// being queued (the whole tenant's room went to it, and their deliveries were dead
    /// letters at once), until the tenant's webhooks together reach the tenant's cap.
    #[tokio::test]
    async fn a_silent_webhook_leaves_its_tenants_other_webhooks_room() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        for id in ["wh-silent", "wh-ok", "wh-new"] {
            assert!(store.add(&webhook(id), 10).await.unwrap());
        }
        let caps = QueueCaps {
            per_tenant: 5,
            per_webhook: 3,
        };
        let delivery = |hook: &str, event: &str| Delivery {
            webhook_id: hook.into(),
            ..queued(&format!("acme:{hook}:{event}"))
        };
        let mut outcomes = Vec::new();
        for event in ["e-1", "e-2", "e-3", "e-4"] {
            outcomes.push(
                store
                    .enqueue(&delivery("wh-silent", event), caps)
                    .await
                    .unwrap(),
            );
        }
        for event in ["e-1", "e-2"] {
            outcomes.push(
                store
                    .enqueue(&delivery("wh-ok", event), caps)
                    .await
                    .unwrap(),
            );
        }
        outcomes.push(
            store
                .enqueue(&delivery("wh-new", "e-1"), caps)
                .await
                .unwrap(),
        );
        use Enqueued::{Full, Queued};
        assert_eq!(
            outcomes,
            [Queued, Queued, Queued, Full, Queued, Queued, Full],
            "wh-silent stops at 3 of its own; wh-ok gets the tenant's last 2; then the tenant is full"
        );
        let mut conn = redis.connection().await;
        let letters: Vec<String> = conn.lrange(dead_key("acme"), 0, -1).await.unwrap();
        let reasons: Vec<String> = letters
            .iter()
            .map(|json| serde_json::from_str::<Delivery>(json).unwrap())
            .map(|letter| format!("{} {}", letter.webhook_id, letter.last_error.unwrap()))
            .collect();
        assert_eq!(
            reasons,
            [
                "wh-new not queued: the tenant already had 5 deliveries waiting \
                 (notifications.max_queued_per_tenant)",
                "wh-silent not queued: the webhook already had 3 deliveries waiting \
                 (notifications.max_queued_per_webhook)",
            ]
        );
        // Redelivered, a dead letter goes back into its own webhook's queue.
        assert_eq!(
            store
                .redeliver_dead(&TenantId::parse("acme").unwrap())
                .await
                .unwrap(),
            2
        );
        let per_webhook: Vec<u64> = redis::pipe()
            .zcard(queued_key("acme", "wh-silent"))
            .zcard(queued_key("acme", "wh-ok"))
            .zcard(queued_key("acme", "wh-new"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(per_webhook, [4, 2, 1]);
    }

    /// A removed webhook's queued deliveries go with it, out of the due set too: a hung
    /// receiver's backlog, paced hours ahead, stayed in Redis and in the pending figure until
    /// each came due. An attempt in flight that reports its failure late puts nothing back.
    #[tokio::test]
    async fn a_removed_webhook_takes_its_queued_deliveries_with_it() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        for id in ["wh-1", "wh-2"] {
            assert!(store.add(&webhook(id), 10).await.unwrap());
        }
        let delivery = |hook: &str, event: &str| Delivery {
            webhook_id: hook.into(),
            ..queued(&format!("acme:{hook}:{event}"))
        };
        for event in ["e-1", "e-2", "e-3"] {
            for hook in ["wh-1", "wh-2"] {
                assert_eq!(
                    store.enqueue(&delivery(hook, event), ROOMY).await.unwrap(),
                    Enqueued::Queued
                );
            }
        }
        let in_flight = delivery("wh-1", "e-1");
        assert_eq!(store.queued().await.unwrap(), 6);

        let acme = TenantId::parse("acme").unwrap();
        assert!(store.remove(&acme, "wh-1").await.unwrap());
        assert_eq!(store.queued().await.unwrap(), 3, "wh-2's are left");
        let retry = Timestamp::from_millis(Timestamp::now().as_millis() + 1_000);
        assert!(!store.retry_at(&in_flight, retry).await.unwrap());
        assert_eq!(store.queued().await.unwrap(), 3, "nothing put back");
        let mut conn = redis.connection().await;
        let left: u64 = conn.zcard(queued_key("acme", "wh-1")).await.unwrap();
        assert_eq!(left, 0);
    }

    /// The reader found the tenant with no webhook; meanwhile an admin added one. Forgetting
    /// the tenant then would leave that webhook unread for good.
    #[tokio::test]
    async fn a_tenant_that_has_a_webhook_again_is_not_forgotten() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let hook = Webhook {
            id: "wh-1".into(),
            tenant: "acme".into(),
            url: "https://hooks.example/approvals".into(),
            events: vec![NotifyEvent::Parked],
            format: WebhookFormat::Json,
            secret: "s".into(),
            created_at: Timestamp::now(),
        };
        assert!(store.add(&hook, 10).await.unwrap());
        let given_up = queued("d-1");
        assert_eq!(
            store.enqueue(&given_up, ROOMY).await.unwrap(),
            Enqueued::Queued
        );
        let given_up = Delivery {
            attempts: 8,
            last_error: Some("timed out".into()),
            ..given_up
        };
        assert!(store.dead(&given_up).await.unwrap());
        let acme = TenantId::parse("acme").unwrap();
        assert_eq!(store.dead_letters(&acme).await.unwrap(), 1);
        store.forget_tenant("acme").await.unwrap();
        assert_eq!(store.tenants().await.unwrap(), ["acme"]);
        assert_eq!(
            store.dead_letters(&acme).await.unwrap(),
            1,
            "kept while it has a webhook"
        );
        // The cursor the add started is kept (not one starting at the instant asked with).
        let kept = store
            .cursor("acme", Timestamp::from_millis(1))
            .await
            .unwrap();
        assert!(kept.starts_with("since:") && kept != "since:1", "{kept}");

        assert!(store.remove(&acme, "wh-1").await.unwrap());
        store.forget_tenant("acme").await.unwrap();
        assert!(store.tenants().await.unwrap().is_empty());
        // Dead letters of webhooks that are gone cannot be redelivered: they were kept for good.
        assert_eq!(store.dead_letters(&acme).await.unwrap(), 0);
    }

    /// Shutdown gives up this instance's reader locks in one round trip whatever the number
    /// of tenants (one per tenant did not fit its 2 s with a few thousand), and only its own.
    #[tokio::test]
    async fn unlocking_at_shutdown_is_one_script_and_keeps_other_instances_locks() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let mut conn = redis.connection().await;
        let tenants: Vec<String> = (0..500).map(|n| format!("t{n}")).collect();
        for tenant in &tenants {
            let _: () = conn.sadd(TENANTS_KEY, tenant).await.unwrap();
            let owner = if tenant == "t7" { "other" } else { "me" };
            assert!(store
                .lock(tenant, owner, Duration::from_secs(60))
                .await
                .unwrap());
        }
        let scripts = || async { redis.calls("eval").await + redis.calls("evalsha").await };
        let scripts_before = scripts().await;
        assert_eq!(store.unlock_all("me").await.unwrap(), 499);
        // One script: an EVALSHA, and an EVAL the first time Redis meets it. It was 500.
        assert!(scripts().await - scripts_before <= 2);
        assert!(
            !store
                .lock("t7", "me", Duration::from_secs(60))
                .await
                .unwrap(),
            "t7 is still the other's"
        );
        assert!(
            store
                .lock("t8", "third", Duration::from_secs(60))
                .await
                .unwrap(),
            "t8 is free"
        );
    }

    #[tokio::test]
    async fn concurrent_adds_stop_at_the_cap() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let adds = (0..40).map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let hook = Webhook {
                    id: format!("wh-{n}"),
                    tenant: "acme".into(),
                    url: "https://hooks.example/approvals".into(),
                    events: vec![NotifyEvent::Parked],
                    format: WebhookFormat::Json,
                    secret: "s".into(),
                    created_at: Timestamp::now(),
                };
                store.add(&hook, 3).await.unwrap()
            })
        });
        let mut added = 0;
        for add in adds {
            added += usize::from(add.await.unwrap());
        }
        let tenant = TenantId::parse("acme").unwrap();
        assert_eq!((added, store.count(&tenant).await.unwrap()), (3, 3));
    }

    #[tokio::test]
    async fn a_cursor_that_went_missing_starts_where_it_was_first_asked_for() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let first = store
            .cursor("acme", Timestamp::from_millis(1_000))
            .await
            .unwrap();
        // A later pass goes on from there, not from its own "now".
        let later = store
            .cursor("acme", Timestamp::from_millis(9_000))
            .await
            .unwrap();
        assert_eq!(
            (first.as_str(), later.as_str()),
            ("since:1000", "since:1000")
        );
    }

    /// An "expiring soon" warning given up on is remembered until its approval expires, as a
    /// sent one is: remembered for a day, it was queued (and failed) again every day a
    /// long-lived approval still waited.
    #[tokio::test]
    async fn a_dead_warning_is_remembered_until_its_approval_expires() {
        let redis = RedisServer::start().await;
        let store = Store::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let three_days = Duration::from_secs(3 * 86_400);
        let warning = Delivery {
            attempts: 7,
            remember_until: Some(Timestamp::now().plus(three_days)),
            while_pending: Some("a-1".into()),
            ..queued("acme:wh-1:soon:a-1")
        };
        assert_eq!(
            store.enqueue(&warning, ROOMY).await.unwrap(),
            Enqueued::Queued
        );
        let given_up = Delivery {
            attempts: 8,
            last_error: Some("the receiver answered 500".into()),
            ..warning.clone()
        };
        store.dead(&given_up).await.unwrap();
        let mut conn = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let left: i64 = redis::cmd("PTTL")
            .arg(delivery_key(&warning.id))
            .query_async(&mut conn)
            .await
            .unwrap();
        let state: String = redis::cmd("GET")
            .arg(delivery_key(&warning.id))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(state, "dead");
        // Until the approval expires (3 days), not for a day.
        assert!(left > (TOMBSTONE * 2).as_millis() as i64, "{left} ms");
        assert_eq!(
            store.enqueue(&warning, ROOMY).await.unwrap(),
            Enqueued::Known
        );
    }
}
