//! In-process fan-out of decisions to long-polls.
//!
//! One pub/sub connection per process listens on the decided channel; each message bumps a
//! `watch` counter for that approval, which wakes every local waiter on it. A waiter
//! subscribes *before* reading the record, so a decision between its read and its wait still
//! wakes it. After a (re)connect every waiter is woken once to re-read, since messages sent
//! while disconnected are lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use crate::keys::DECIDED_CHANNEL;

#[derive(Default, Clone)]
pub struct Waiters {
    by_key: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

/// A waiter's registration; dropping it unregisters.
pub struct Subscription {
    waiters: Waiters,
    key: String,
    receiver: Option<watch::Receiver<u64>>,
}

impl Subscription {
    /// Resolves at the next notification after the subscription (or the previous call).
    pub async fn notified(&mut self) {
        if let Some(receiver) = self.receiver.as_mut() {
            if receiver.changed().await.is_err() {
                // The sender went away (cannot happen while we hold a receiver): never resolve.
                std::future::pending::<()>().await;
            }
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // The map holds no invariant a panicking holder could break.
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn subscribe(&self, key: &str) -> Subscription {
        let receiver = self
            .lock()
            .entry(key.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            waiters: self.clone(),
            key: key.to_owned(),
            receiver: Some(receiver),
        }
    }

    pub fn notify(&self, key: &str) {
        if let Some(sender) = self.lock().get(key) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn notify_all(&self) {
        for sender in self.lock().values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub fn waiting(&self) -> usize {
        self.lock().values().map(|s| s.receiver_count()).sum()
    }

    /// Runs the process's one subscriber until the task is dropped, reconnecting forever.
    pub async fn listen(self, client: redis::Client) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.listen_once(&client).await {
                Ok(()) => tracing::warn!("decision subscriber disconnected; reconnecting"),
                Err(error) => tracing::warn!(%error, "decision subscriber failed; reconnecting"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn listen_once(&self, client: &redis::Client) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(DECIDED_CHANNEL).await?;
        tracing::debug!("decision subscriber connected");
        // Anything decided while we were not listening: let every waiter re-read.
        self.notify_all();
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            if let Ok(member) = message.get_payload::<String>() {
                self.notify(&format!("approval:{member}"));
            }
        }
        Ok(())
    }
}
