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
            current = tokio::select! {
                settled = subscription.notified() => match settled {
                    Some(record) => Some(Approval::clone(&record).as_of(Timestamp::now())),
                    // A reconnect: messages may have been lost, so read.
                    None => self.get(tenant, id).await?,
                },
                () = tokio::time::sleep_until(deadline.min(expiry)) => {
                    Some(approval.as_of(Timestamp::now()))
                }
                () = &mut stop => return Ok(Some(approval.as_of(Timestamp::now()))),
            };
        }
    }
}
