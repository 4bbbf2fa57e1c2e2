//! A long-poll on one approval: one read when it starts; the decision arrives with its record
//! through the process's subscriber (`waiters`), so waking costs no read. Only a wait that
//! reaches the approval's own deadline reads again: Redis, not the message, says whether a
//! decision landed just before it. A waiter also reads for itself when a re-read failed or
//! while the subscriber is not listening (`crate::waiters`).

use std::time::Duration;

use approvals_core::{
    Approval, ApprovalBackend, ApprovalId, BackendError, Stop, TenantId, Timestamp,
};

use crate::backend::RedisBackend;
use crate::keys;
use crate::waiters::Notice;

/// How soon a waiter whose read failed reads again: 1 to 2 s, spread so that the waiters
/// whose re-read after a reconnect failed together do not retry together.
fn reread_retry() -> Duration {
    Duration::from_millis(1000 + spread_ms())
}

/// How often a waiter reads for itself while the subscriber is not listening: 2 to 3 s,
/// spread so that thousands of waiters do not read in step.
fn deaf_poll() -> Duration {
    Duration::from_millis(2000 + spread_ms())
}

/// 0 to 999 ms, at random.
fn spread_ms() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A fresh `RandomState` is seeded differently each time: randomness without a crate.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 1000
}

impl RedisBackend {
    pub(crate) async fn wait(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        timeout: Duration,
        mut stop: Stop,
    ) -> Result<Option<Approval>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // A record that does not survive its round trip through JSON (it always should).
        let corrupt = |error: serde_json::Error| BackendError::Corrupt {
            key: keys::record(tenant, id),
            reason: format!("held while waiting: {error}"),
        };
        let mut subscription = self.waiters.subscribe(&keys::record(tenant, id));
        // The one read of the wait: decisions arrive with their record. Only the held JSON
        // lives across the wait below: a parsed record (300 bytes), or a read's state, kept in
        // this future would be part of every parked long-poll's memory. Hence the boxed reads.
        let (mut held, mut wake_at) = match Box::pin(self.get(tenant, id)).await? {
            None => return Ok(None),
            Some(first) => match Step::of(first, deadline) {
                Step::Answer(approval) => return Ok(Some(approval)),
                Step::Wait(approval, wake_at) => (Held::new(approval).map_err(corrupt)?, wake_at),
            },
        };
        let _parked = self.parked.enter();
        // When this wait reads for itself: after a re-read that failed, or while the
        // subscriber is not listening (no decision would wake it).
        let mut reread_at: Option<tokio::time::Instant> = None;
        loop {
            if reread_at.is_none() && !self.waiters.is_listening() {
                reread_at = Some(tokio::time::Instant::now() + deaf_poll());
            }
            let current = tokio::select! {
                // A decision already delivered wins over a shutdown that starts meanwhile.
                biased;
                notice = subscription.notified() => match notice {
                    Notice::Settled(record) => Approval::clone(&record).as_of(Timestamp::now()),
                    // Read on a timer of its own from now on (the loop's top sets it).
                    Notice::Deaf => continue,
                    // A reconnect: messages may have been lost, so read, now (below). Every
                    // waiter of the instance reads at once, against a Redis that may just be
                    // back (still loading its data, say): one that cannot read goes on waiting
                    // with what it holds rather than answer 503, and reads again shortly.
                    Notice::Reread => {
                        reread_at = Some(tokio::time::Instant::now());
                        continue;
                    }
                },
                () = tokio::time::sleep_until(reread_at.map_or(wake_at, |r| r.min(wake_at))) => {
                    if reread_at.is_some_and(|at| at < wake_at) {
                        match Box::pin(self.get(tenant, id)).await {
                            Ok(Some(current)) => {
                                reread_at = None;
                                current
                            }
                            Ok(None) => return Ok(None),
                            Err(error) => {
                                tracing::debug!(%error, "a waiter's read failed; waiting on");
                                reread_at = Some(tokio::time::Instant::now() + reread_retry());
                                held.restore().map_err(corrupt)?
                            }
                        }
                    } else {
                        let held = held.restore().map_err(corrupt)?;
                        if wake_at < deadline || held.expires_at <= Timestamp::now() {
                            match Box::pin(self.read_at_expiry(tenant, id)).await? {
                                Some(current) => current,
                                None => return Ok(None),
                            }
                        } else {
                            held
                        }
                    }
                }
                () = &mut stop => {
                    let held = held.restore().map_err(corrupt)?;
                    return match held.expires_at <= Timestamp::now() {
                        true => Box::pin(self.read_at_expiry(tenant, id)).await,
                        false => Ok(Some(held)),
                    };
                }
            };
            match Step::of(current, deadline) {
                Step::Answer(approval) => return Ok(Some(approval)),
                Step::Wait(approval, at) => {
                    held = Held::new(approval).map_err(corrupt)?;
                    wake_at = at;
                }
            }
        }
    }
}

impl RedisBackend {
    /// `held` (pending) once its deadline has passed, as Redis has it. A decision Redis took a
    /// moment before the deadline may not have reached this instance yet (its message is late
    /// on a busy instance, or lost): answering `expired` from what is held would contradict the
    /// reviewer's 200 and every later read. Whether the wait ends at the approval's deadline,
    /// at the caller's (which can fall just after it) or at shutdown. If Redis does not answer,
    /// the outage's error: what is held, as of now, is `expired`, a final answer that the same
    /// decision contradicts once Redis is back.
    async fn read_at_expiry(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, BackendError> {
        self.get(tenant, id).await
    }
}

/// What a wait does with the record it has.
enum Step {
    /// Decided, expired, or the caller's deadline reached: answer with it.
    Answer(Approval),
    /// Still pending: wait until the caller's deadline or the approval's own, whichever is
    /// first (`as_of` then reports the expiry itself, sweeper or not).
    Wait(Approval, tokio::time::Instant),
}

impl Step {
    fn of(approval: Approval, deadline: tokio::time::Instant) -> Self {
        let now = tokio::time::Instant::now();
        if approval.is_decided() || now >= deadline {
            return Self::Answer(approval);
        }
        let until_expiry = approval.expires_at.as_millis() - Timestamp::now().as_millis();
        let expiry = now + Duration::from_millis(u64::try_from(until_expiry).unwrap_or(0) + 5);
        Self::Wait(approval, deadline.min(expiry))
    }
}

/// The pending record a long-poll answers with at its timeout, held as JSON while it waits:
/// one allocation instead of the parsed record's tree of strings and maps. Thousands of agents
/// may wait on one instance, and the record was the largest part of each wait after the
/// connection's own buffers.
struct Held(Box<[u8]>);

impl Held {
    fn new(approval: Approval) -> serde_json::Result<Self> {
        serde_json::to_vec(&approval).map(|json| Self(json.into_boxed_slice()))
    }

    fn restore(&self) -> serde_json::Result<Approval> {
        serde_json::from_slice(&self.0)
    }
}

#[cfg(test)]
mod tests {
    /// The size of an async fn's future, from the fn item alone.
    fn future_size<F, A, B, C, D, E, Fut>(_: &F) -> usize
    where
        F: FnOnce(A, B, C, D, E) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every parked long-poll holds one of these for up to a minute, thousands per instance:
    /// a parsed record or a read's state kept across the wait more than doubled it (1,128
    /// bytes, against 504).
    #[test]
    fn a_parked_wait_is_small() {
        let size = future_size(&crate::backend::RedisBackend::wait);
        assert!(size <= 640, "RedisBackend::wait's future is {size} bytes");
    }
}
