//! In-process fan-out of decisions to long-polls.
//!
//! One pub/sub connection per process listens on the settled channel, whose messages carry the
//! settled record; each message is decoded once and handed to every local waiter on that
//! approval through a `watch` channel, so waking any number of waiters costs no read. A waiter
//! subscribes *before* reading the record, so a decision between its read and its wait still
//! wakes it. After a (re)connect every waiter is woken once without a record, to re-read,
//! since messages sent while disconnected are lost. While the subscriber is not listening
//! (Redis refuses it a subscription, its connection keeps failing) waiters read on their own
//! every few seconds (`is_listening`, `crate::waiting`): a deaf instance stays ready, and its
//! long-polls answered a decision only at their timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use approvals_core::Approval;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::record::{self, Decoded};

/// How often the subscriber asks Redis whether its connection still works.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long it waits for the answer before it reconnects.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(2);
/// How long connecting and subscribing may take: a connect into a partition that drops SYNs
/// waits on the kernel's retries (about two minutes) otherwise, and long-polls on this
/// instance only answer at their timeout meanwhile.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// A connection that lasted this long had worked: its loss starts a new episode of failures.
const WORKED_FOR: Duration = Duration::from_secs(10);

/// What a waiter is woken with: the settled record, or a reason to read it itself.
#[derive(Debug, Clone, Default)]
struct Wake {
    settled: Option<Arc<Approval>>,
    /// Without a record: the subscriber stopped listening (read every few seconds until it
    /// is back), rather than came back (read now).
    deaf: bool,
}

/// What a waiter learns when woken.
pub enum Notice {
    /// The approval was settled: its record.
    Settled(Arc<Approval>),
    /// The subscriber (re)connected: messages may have been lost, read now.
    Reread,
    /// The subscriber lost its connection: no decision reaches this waiter until it is back.
    Deaf,
}

#[derive(Default, Clone)]
pub struct Waiters {
    by_key: Arc<Mutex<HashMap<String, watch::Sender<Wake>>>>,
    /// Whether the subscriber is subscribed now: decisions reach waiters as they are taken.
    listening: Arc<AtomicBool>,
}

/// A waiter's registration; dropping it unregisters.
pub struct Subscription {
    waiters: Waiters,
    key: String,
    receiver: Option<watch::Receiver<Wake>>,
}

impl Subscription {
    /// Resolves at the next notification after the subscription (or the previous call).
    pub async fn notified(&mut self) -> Notice {
        let Some(receiver) = self.receiver.as_mut() else {
            return std::future::pending().await;
        };
        if receiver.changed().await.is_err() {
            // The sender went away (cannot happen while we hold a receiver): never resolve.
            std::future::pending::<()>().await;
        }
        let wake = receiver.borrow_and_update();
        match (&wake.settled, wake.deaf) {
            (Some(settled), _) => Notice::Settled(Arc::clone(settled)),
            (None, true) => Notice::Deaf,
            (None, false) => Notice::Reread,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.receiver.take();
        let mut map = self.waiters.lock();
        if map.get(&self.key).is_some_and(|s| s.receiver_count() == 0) {
            map.remove(&self.key);
        }
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Wake>>> {
        // The map holds no invariant a panicking holder could break.
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn subscribe(&self, key: &str) -> Subscription {
        let receiver = self
            .lock()
            .entry(key.to_owned())
            .or_insert_with(|| watch::channel(Wake::default()).0)
            .subscribe();
        Subscription {
            waiters: self.clone(),
            key: key.to_owned(),
            receiver: Some(receiver),
        }
    }

    fn notify(&self, key: &str, settled: Option<Arc<Approval>>) {
        if let Some(sender) = self.lock().get(key) {
            sender.send_replace(Wake {
                settled,
                deaf: false,
            });
        }
    }

    /// Wakes every waiter (`deaf`: to read every few seconds from now on; else to read now),
    /// except where a decision is already delivered and not yet taken: replacing it would
    /// hang that waiter's answer on a read that may fail (Redis just back, still loading).
    fn notify_all(&self, deaf: bool) {
        for sender in self.lock().values() {
            sender.send_if_modified(|wake| {
                if wake.settled.is_some() {
                    return false;
                }
                wake.deaf = deaf;
                true
            });
        }
    }

    /// Whether decisions reach waiters as they are taken; if not, waiters read for themselves.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    pub fn waiting(&self) -> usize {
        self.lock().values().map(|s| s.receiver_count()).sum()
    }

    /// Runs the process's one subscriber of `channel` (its database's settled channel) until
    /// the task is dropped, reconnecting forever.
    pub async fn listen(self, client: redis::Client, channel: String) {
        let mut backoff = Backoff::default();
        // While Redis is down this loops every 2 s: logged when it starts, then once a minute.
        let mut failures = approvals_core::RepeatedFailure::default();
        loop {
            let started = std::time::Instant::now();
            let outcome = self.listen_once(&client, &channel).await;
            self.listening.store(false, Ordering::Release);
            // Waiters already parked would otherwise sleep to their timeout, deaf to any
            // decision until the subscriber is back.
            self.notify_all(true);
            // Listening for a while means it had connected: a later loss is a new episode.
            let lasted = started.elapsed();
            if lasted > WORKED_FOR {
                failures.succeeded();
            }
            match (failures.failed(), outcome) {
                (approvals_core::FailureLog::Quiet, _) => {}
                (log, Ok(())) => {
                    tracing::warn!(?log, "decision subscriber disconnected; reconnecting")
                }
                (log, Err(error)) => {
                    tracing::warn!(?log, %error, "decision subscriber failed; reconnecting")
                }
            }
            tokio::time::sleep(backoff.after(lasted)).await;
        }
    }

    async fn listen_once(&self, client: &redis::Client, channel: &str) -> redis::RedisResult<()> {
        let subscribed = tokio::time::timeout(CONNECT_DEADLINE, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        });
        let pubsub = subscribed.await.map_err(|_| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the subscriber did not connect and subscribe in time",
            ))
        })??;
        tracing::debug!("decision subscriber connected");
        self.listening.store(true, Ordering::Release);
        // Anything decided while we were not listening: let every waiter re-read.
        self.notify_all(false);
        let (mut sink, mut messages) = pubsub.split();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = heartbeat.tick() => {
                    // A subscriber only listens, so a connection that died without a reset
                    // (a partition, a NAT that forgot it) would never tell: ask.
                    let pong = tokio::time::timeout(HEARTBEAT_DEADLINE, sink.ping::<redis::Value>());
                    match pong.await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(error)) => return Err(error),
                        Err(_) => return Err(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no answer to the subscriber's PING",
                        ))),
                    }
                }
            };
            let Some(message) = message else {
                return Ok(());
            };
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            // `{tenant}:{id}\n{settled record}`.
            let (member, raw) = payload.split_once('\n').unwrap_or((payload.as_str(), ""));
            let key = format!("approval:{member}");
            // Nobody here waits for most decisions: decode only for those someone does.
            if !self.lock().contains_key(&key) {
                continue;
            }
            let settled = match record::decode(&key, raw) {
                Ok(Decoded::Current(approval)) => Some(Arc::new(*approval)),
                // Unreadable here: the waiters read the record themselves.
                _ => None,
            };
            self.notify(&key, settled);
        }
    }
}

/// The pause before the subscriber reconnects: 100 ms doubling to 2 s while connections fail
/// at once, and 100 ms again after one that had worked. It never started over, so after a few
/// failures in the process's life every later failover left waiters 2 s without wake-ups.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Self::FIRST)
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MOST: Duration = Duration::from_secs(2);

    /// The pause after a connection that lasted `lasted`.
    fn after(&mut self, lasted: Duration) -> Duration {
        if lasted > WORKED_FOR {
            self.0 = Self::FIRST;
        }
        let pause = self.0;
        self.0 = (self.0 * 2).min(Self::MOST);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_pause_grows_while_connects_fail_and_starts_over_after_one_worked() {
        let mut backoff = Backoff::default();
        let failing: Vec<u128> = (0..7)
            .map(|_| backoff.after(Duration::ZERO).as_millis())
            .collect();
        assert_eq!(failing, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff.after(WORKED_FOR * 2), Backoff::FIRST);
        assert_eq!(backoff.after(Duration::ZERO).as_millis(), 200);
    }
}
