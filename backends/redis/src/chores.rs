//! The Redis engine's own upkeep: the expiry sweeper, the retention trim and the adoption of
//! ADR v1 records. Redis has no timers of its own that could record an expiry exactly once, so
//! the engine runs these beside the request path, on every instance (the scripts make that
//! safe), and tells the service what they did through [`EngineEvents`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use approvals_core::{
    Approval, ApprovalId, BackendError, EngineEvents, Status, TenantId, Timestamp,
};
use redis::AsyncCommands;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::{millis, RedisBackend};
use crate::keys::{self, DEADLINES, RETENTION, TENANTS};
use crate::record::{self, Decoded};
use crate::scripts::UNREADABLE;

/// How many due entries one sweep takes on; the rest wait for the next pass.
const SWEEP_BATCH: isize = 500;

/// How long an entry whose expiry Redis refused waits before it is tried again: left due, a
/// batch's worth of them (one tenant's damaged audit stream) filled every pass, and no other
/// tenant's approval was expired again.
const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// How often the chores run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoreSchedule {
    /// Bounds how late an expiry is recorded.
    pub sweep_interval: Duration,
    /// How often records written by the ADR v1 service are searched for.
    pub adopt_interval: Duration,
}

/// The running chores; they stop when this is stopped or dropped.
pub struct Chores {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Chores {
    /// Stops the chores and waits for a pass in progress to finish.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Chores {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What one call of expire.lua did, read ([`RedisBackend::expiry_of`]).
enum Expiry {
    /// This call recorded the expiry: the expired record.
    Recorded(Box<Approval>),
    /// Settled already (by a decision, another sweeper or read), or not due.
    NotRecorded,
    /// Nothing readable to answer with: a value the script could not settle, an ADR v1
    /// record, or a record not readable back (reported).
    Unanswerable,
}

impl RedisBackend {
    /// Starts the sweeper (with the retention trim) and the adopter on this runtime.
    pub fn start_chores(
        self: &Arc<Self>,
        schedule: ChoreSchedule,
        events: Arc<dyn EngineEvents>,
    ) -> Chores {
        // The request path reports unreadable values to the same listener from now on.
        let _ = self.events.set(events.clone());
        let stop = CancellationToken::new();
        let sweeper = {
            let (engine, events) = (self.clone(), events.clone());
            every(schedule.sweep_interval, stop.clone(), move || {
                let (engine, events) = (engine.clone(), events.clone());
                async move {
                    let now = Timestamp::now();
                    // Each expiry is reported as soon as it is recorded: a pass abandoned at
                    // shutdown, or failing part way, has still recorded the ones before, and
                    // only this instance knows it (the decision log would never ship them).
                    let mut count = 0;
                    let result = engine
                        .expire_due_with(now, &mut |approval| {
                            events.expired(&approval, now);
                            count += 1;
                        })
                        .await;
                    events.chore_finished("sweep", result.as_ref().map(|()| count));
                }
            })
        };
        let adopter = {
            let (engine, events) = (self.clone(), events.clone());
            every(schedule.adopt_interval, stop.clone(), move || {
                let (engine, events) = (engine.clone(), events.clone());
                async move {
                    let result = engine.adopt_all().await;
                    events.chore_finished("adopt", result.as_ref().copied());
                }
            })
        };
        // Often enough that nothing outlives its retention by much, never more than a minute.
        let trim_every = (self.lifetimes.audit_retention / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        let trimmer = {
            let engine = self.clone();
            every(trim_every, stop.clone(), move || {
                let (engine, events) = (engine.clone(), events.clone());
                async move {
                    let result = engine.trim_audit(Timestamp::now()).await;
                    events.chore_finished("audit_trim", result.as_ref().copied());
                }
            })
        };
        Chores {
            stop,
            tasks: vec![
                tokio::spawn(sweeper),
                tokio::spawn(adopter),
                tokio::spawn(trimmer),
            ],
        }
    }

    /// Drops every tenant's audit events older than `approvals.audit_retention`; returns how
    /// many. Exact trimming (`MINID`, not `MINID ~`): a stream of a few events is trimmed too.
    pub async fn trim_audit(&self, now: Timestamp) -> Result<usize, BackendError> {
        let tenants: Vec<String> = self
            .with_conn("audit_trim", |mut conn| async move {
                conn.smembers(TENANTS).await
            })
            .await?;
        let tenants: Vec<TenantId> = tenants
            .iter()
            .filter_map(|t| TenantId::parse(t.as_str()).ok())
            .collect();
        if tenants.is_empty() {
            return Ok(0);
        }
        let oldest = now.as_millis() - millis(self.lifetimes.audit_retention);
        let mut pipe = redis::pipe();
        // A tenant's audit key of another type answers errors of its own, and that tenant is
        // neither trimmed nor forgotten: it failed the whole pipeline, every pass.
        pipe.ignore_errors();
        for tenant in &tenants {
            pipe.cmd("XTRIM")
                .arg(keys::audit(tenant))
                .arg("MINID")
                .arg(format!("{}-0", oldest.max(0)));
            pipe.cmd("XLEN").arg(keys::audit(tenant));
        }
        let answers: Vec<redis::RedisResult<usize>> = self
            .with_conn("audit_trim", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        let mut trimmed = 0;
        let mut answers = answers.into_iter();
        for tenant in &tenants {
            let key = keys::audit(tenant);
            let mut next = || answers.next().unwrap_or(Ok(0));
            let (dropped, left) = (next(), next());
            let dropped = self.key_answer("audit_trim", &key, dropped)?;
            let left = self.key_answer("audit_trim", &key, left)?;
            trimmed += dropped.unwrap_or(0);
            if left == Some(0) {
                self.forget_if_idle(tenant).await?;
            }
        }
        Ok(trimmed)
    }

    /// Takes `tenant` out of the tenants every figures pass and trim reads, once nothing of
    /// it is left: no audit event (the last kept for `approvals.audit_retention`), no
    /// approval in any index. A tenant gone for good was read every 2 s for good, and its
    /// series exported; one that parks again is added back by that submit (the two scripts
    /// cannot interleave).
    async fn forget_if_idle(&self, tenant: &TenantId) -> Result<(), BackendError> {
        const FORGET: &str = r"
local held = redis.call('TYPE', KEYS[2]).ok
if held ~= 'none' and (held ~= 'stream' or redis.call('XLEN', KEYS[2]) > 0) then return 0 end
for i = 3, 6 do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
return 1";
        let tenant = tenant.clone();
        self.with_conn("audit_trim", |mut conn| async move {
            let script = redis::Script::new(FORGET);
            let mut forget = script.key(TENANTS);
            forget.key(keys::audit(&tenant));
            for status in Status::ALL {
                forget.key(keys::index(&tenant, status));
            }
            forget
                .key(keys::SUBMITTED_SUM)
                .arg(tenant.as_str())
                .invoke_async::<i64>(&mut conn)
                .await
                .map(drop)
        })
        .await
    }

    /// One sweep: trims index entries past their retention, then records the expiry of every
    /// pending approval whose deadline has passed; returns the approvals this call expired
    /// (none that another instance expired first).
    pub async fn expire_due(&self, now: Timestamp) -> Result<Vec<Approval>, BackendError> {
        let mut expired = Vec::new();
        self.expire_due_with(now, &mut |approval| expired.push(approval))
            .await?;
        Ok(expired)
    }

    /// [`Self::expire_due`], handing each expiry to `recorded` as soon as Redis has recorded
    /// it: a pass that fails or is abandoned part way has still recorded those before.
    async fn expire_due_with(
        &self,
        now: Timestamp,
        recorded: &mut (dyn FnMut(Approval) + Send),
    ) -> Result<(), BackendError> {
        // A failed trim must not hold up the expiries: it is reported after them.
        let trimmed = self.trim_retention(now).await;
        let due: Vec<(String, f64)> = self
            .with_conn("sweep", |mut conn| async move {
                conn.zrangebyscore_limit_withscores(
                    DEADLINES,
                    "-inf",
                    now.as_millis(),
                    0,
                    SWEEP_BATCH,
                )
                .await
            })
            .await?;
        for (member, _deadline) in due {
            let Some((tenant, submitted_ms, id)) = keys::parse_deadline_member(&member) else {
                // Not ours to expire, and it would hold a place in every batch: taken out.
                self.drop_deadline(&member).await?;
                continue;
            };
            let key = keys::record(&tenant, &id);
            let outcome = match self
                .run_expire(&tenant, submitted_ms, &id, &member, now)
                .await
            {
                Ok(outcome) => outcome,
                // Redis refused this entry's script (a key of its tenant replaced with another
                // type, say): the script wrote nothing, and the entries behind it are expired.
                // It is tried again later, not in every pass (it would keep its place at the
                // head of every batch).
                Err(error) if refused_by_script(&error) => {
                    self.pass_over(BackendError::Corrupt {
                        key,
                        reason: format!(
                            "its expiry cannot be recorded (tried again in {}s): {error:#}",
                            REFUSED_RETRY.as_secs()
                        ),
                    })?;
                    self.postpone(&member, now.plus(REFUSED_RETRY)).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if let Expiry::Recorded(approval) = self.expiry_of(&key, outcome)? {
                recorded(*approval);
            }
        }
        trimmed
    }

    /// expire.lua for one deadline entry: the expired record if this call recorded the expiry,
    /// `UNREADABLE`, or `None` (settled already, or not due at `now`). Read with
    /// [`Self::expiry_of`].
    async fn run_expire(
        &self,
        tenant: &TenantId,
        submitted_ms: i64,
        id: &ApprovalId,
        member: &str,
        now: Timestamp,
    ) -> Result<Option<String>, BackendError> {
        let mut invocation =
            self.settle_invocation(&self.scripts.expire, tenant, id, Status::Expired, now);
        invocation
            .arg(member)
            .arg(keys::index_member(submitted_ms, id));
        self.with_conn("expire", |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// What expire.lua's reply for `key` means, for the sweeper and for reads alike; a value
    /// it could not settle, or a record not readable back, is reported (`pass_over`).
    fn expiry_of(&self, key: &str, recorded: Option<String>) -> Result<Expiry, BackendError> {
        match recorded.as_deref() {
            None => Ok(Expiry::NotRecorded),
            Some(UNREADABLE) => {
                self.pass_over(BackendError::Corrupt {
                    key: key.to_owned(),
                    reason: "a pending value past its deadline that cannot be expired; \
                             taken out of the deadlines and the pending list, left in place"
                        .into(),
                })?;
                Ok(Expiry::Unanswerable)
            }
            Some(raw) => match record::decode(key, raw) {
                Ok(Decoded::Current(approval)) => Ok(Expiry::Recorded(approval)),
                Ok(Decoded::Foreign(_)) => Ok(Expiry::Unanswerable),
                // Recorded, but not readable back: reported, and the caller goes on.
                Err(error) => {
                    self.pass_over(error)?;
                    Ok(Expiry::Unanswerable)
                }
            },
        }
    }

    /// Records the expiry of `due`, a pending approval a read found past its deadline, as the
    /// sweeper would (and reports it the same way). Answering "expired" from this instance's
    /// clock alone let a reviewer on an instance whose clock runs behind still decide it
    /// afterwards: the agent had been told the request was rejected, and the reviewer that it
    /// was accepted. Whoever records first now wins, in Redis. Returns the approval as
    /// recorded, or `None` when something else settled it first (read it again).
    pub(crate) async fn expire_on_read(
        &self,
        due: &Approval,
        now: Timestamp,
    ) -> Result<Option<Approval>, BackendError> {
        let submitted_ms = due.submitted_at.as_millis();
        let member = keys::deadline_member(&due.tenant, submitted_ms, &due.id);
        let key = keys::record(&due.tenant, &due.id);
        let recorded = self
            .run_expire(&due.tenant, submitted_ms, &due.id, &member, now)
            .await?;
        match self.expiry_of(&key, recorded)? {
            Expiry::Recorded(expired) => {
                if let Some(events) = self.events.get() {
                    events.expired(&expired, now);
                }
                Ok(Some(*expired))
            }
            Expiry::NotRecorded => Ok(None),
            // Reported as by a sweep; answered from the read, as before.
            Expiry::Unanswerable => Ok(Some(due.clone().as_of(now))),
        }
    }

    /// Moves a deadline entry to `until` (if it is still there: another sweeper may have
    /// expired it meanwhile, and `XX` does not bring it back).
    async fn postpone(&self, member: &str, until: Timestamp) -> Result<(), BackendError> {
        let member = member.to_owned();
        self.with_conn("sweep", |mut conn| async move {
            redis::cmd("ZADD")
                .arg(DEADLINES)
                .arg("XX")
                .arg(until.as_millis())
                .arg(member)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn drop_deadline(&self, member: &str) -> Result<(), BackendError> {
        self.pass_over(BackendError::Corrupt {
            key: format!("{DEADLINES} {member}"),
            reason: "a deadline entry this version cannot read; removed".into(),
        })?;
        let member = member.to_owned();
        self.with_conn("sweep", |mut conn| async move {
            conn.zrem::<_, _, ()>(DEADLINES, member).await
        })
        .await
    }

    /// Drops index entries whose decided or expired record has reached its retention.
    async fn trim_retention(&self, now: Timestamp) -> Result<(), BackendError> {
        let due: Vec<String> = self
            .with_conn("retention", |mut conn| async move {
                conn.zrangebyscore_limit(RETENTION, "-inf", now.as_millis(), 0, SWEEP_BATCH)
                    .await
            })
            .await?;
        if due.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // An index of another type refuses its ZREM alone: it failed the whole pipeline, and
        // the same due members every pass after.
        pipe.ignore_errors();
        let mut written = Vec::with_capacity(due.len() * 2);
        for member in &due {
            if let Some((tenant, status, index_member)) = keys::parse_retention_member(member) {
                let index = keys::index(&tenant, status);
                pipe.zrem(&index, index_member);
                written.push(index);
            }
            pipe.zrem(RETENTION, member);
            written.push(RETENTION.to_owned());
        }
        let answers: Vec<redis::RedisResult<redis::Value>> = self
            .with_conn("retention", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        for (key, answer) in written.iter().zip(answers) {
            self.key_answer("retention", key, answer)?;
        }
        Ok(())
    }
}

/// Whether Redis ran a script and answered it with an error of that script's own (a refused
/// write, a key of another type), as opposed to an outage any call would meet: a lost or
/// timed-out connection, or a server that is loading, read-only, out of memory or busy.
pub(crate) fn refused_by_script(error: &BackendError) -> bool {
    let BackendError::Unavailable { source, .. } = error else {
        return false;
    };
    let Some(error) = source.downcast_ref::<redis::RedisError>() else {
        return false;
    };
    let answered = matches!(
        error.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
            | redis::ErrorKind::Extension
    );
    answered
        && !matches!(
            error.code(),
            Some("OOM" | "MISCONF" | "BUSY" | "NOREPLICAS")
        )
}

/// Calls `step` every `interval` until `stop` is cancelled. A pass in progress is abandoned
/// then: each of its Redis steps is atomic on its own, and an adoption pass over millions of
/// keys must not hold the exit for minutes.
async fn every<F, Fut>(interval: Duration, stop: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = step() => {}
        }
    }
}

#[cfg(test)]
mod every_tests {
    use super::*;

    /// A pass that would run for minutes (an adoption over millions of keys) does not hold
    /// the exit: stopping abandons it.
    #[tokio::test]
    async fn stopping_abandons_a_pass_in_progress() {
        let stop = CancellationToken::new();
        let (started, mut passes) = tokio::sync::mpsc::unbounded_channel();
        let chore = tokio::spawn(every(Duration::from_millis(10), stop.clone(), move || {
            let started = started.clone();
            async move {
                let _ = started.send(());
                std::future::pending::<()>().await;
            }
        }));
        passes.recv().await.unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), chore)
            .await
            .expect("stopped within 5 s")
            .unwrap();
    }
}
