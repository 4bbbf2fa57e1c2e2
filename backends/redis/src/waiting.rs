//! A long-poll on one approval: one read when it starts; the decision arrives with its record
//! through the process's subscriber (`waiters`), so waking costs no read.

use std::time::Duration;

use approvals_core::{
    Approval, ApprovalBackend, ApprovalId, BackendError, Stop, TenantId, Timestamp,
};

use crate::backend::RedisBackend;
use crate::keys;

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
        // The one read of the wait: decisions arrive with their record.
        let mut current = self.get(tenant, id).await?;
        loop {
            let Some(approval) = current else {
                return Ok(None);
            };
            let now = tokio::time::Instant::now();
            if approval.is_decided() || now >= deadline {
                return Ok(Some(approval));
            }
            // Wake at the deadline too: `as_of` reports the expiry itself, sweeper or not.
            let until_expiry = approval.expires_at.as_millis() - Timestamp::now().as_millis();
            let expiry = now + Duration::from_millis(u64::try_from(until_expiry).unwrap_or(0) + 5);
            let held = Held::new(approval).map_err(corrupt)?;
            current = tokio::select! {
                settled = subscription.notified() => match settled {
                    Some(record) => Some(Approval::clone(&record).as_of(Timestamp::now())),
                    // A reconnect: messages may have been lost, so read. Every waiter of the
                    // instance reads at once, against a Redis that may just be back (still
                    // loading its data, say): one that cannot read goes on waiting with what
                    // it holds rather than answer 503.
                    None => match self.get(tenant, id).await {
                        Ok(current) => current,
                        Err(error) => {
                            tracing::debug!(%error, "re-read after a reconnect failed; waiting on");
                            Some(held.restore().map_err(corrupt)?)
                        }
                    },
                },
                () = tokio::time::sleep_until(deadline.min(expiry)) => {
                    Some(held.restore().map_err(corrupt)?.as_of(Timestamp::now()))
                }
                () = &mut stop => {
                    return Ok(Some(held.restore().map_err(corrupt)?.as_of(Timestamp::now())));
                }
            };
        }
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
