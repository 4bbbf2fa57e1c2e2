//! Whole records in and out of Redis, for `approvals migrate` and the dual soak.

use approvals_core::{
    Approval, AuditEntry, BackendError, ImportOutcome, RecordTransfer, ScanPage, Status, Timestamp,
};
use async_trait::async_trait;

use crate::backend::RedisBackend;
use crate::keys::RECORD_OR_SHADOW_PATTERN;
use crate::record::{self, Decoded};

#[async_trait]
impl RecordTransfer for RedisBackend {
    async fn scan(&self, cursor: Option<&str>, batch: usize) -> Result<ScanPage, BackendError> {
        let cursor = match cursor {
            None => "0",
            Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => c,
            Some(_) => return Err(BackendError::InvalidCursor),
        };
        // Records, and the shadows of pending ones whose key has lapsed with their lifetime
        // (expired, not yet swept): those are records too.
        let (next, keys) = self
            .scan_keys(cursor, batch, RECORD_OR_SHADOW_PATTERN)
            .await?;
        let (mut records, shadows): (Vec<String>, Vec<String>) =
            keys.into_iter().partition(|k| k.starts_with("approval:"));
        let shadowed: Vec<String> = shadows
            .iter()
            .filter_map(|k| k.strip_prefix("approvals:shadow:"))
            .map(|rest| format!("approval:{rest}"))
            .collect();
        // Whether each still has its record: asked, not read (the values came back whole, a
        // second time, only to be dropped). A record key holding another type reads as lapsed,
        // as MGET's nil had it: the shadow is read instead.
        let present = self.are_strings(&shadowed).await?;
        let lapsed: Vec<String> = shadowed
            .into_iter()
            .zip(present)
            .filter_map(|(k, present)| (!present).then_some(k))
            .collect();
        let now = Timestamp::now();
        let mut items = Vec::new();
        let mut read = self.fetch(std::mem::take(&mut records)).await?;
        // Each lapsed record's value is its shadow's, read in one call and filed under the key.
        let lapsed_shadows = lapsed
            .iter()
            .map(|k| k.replacen("approval:", "approvals:shadow:", 1))
            .collect();
        // Record key → the shadow it was read from: an unreadable one is reported under the
        // key that holds it (`redis-cli GET approval:…` would show nothing, DEL mend nothing).
        let mut read_from_shadow = std::collections::HashMap::new();
        for (shadow, raw) in self.fetch(lapsed_shadows).await? {
            let key = shadow.replacen("approvals:shadow:", "approval:", 1);
            read_from_shadow.insert(key.clone(), shadow);
            read.push((key, raw));
        }
        let mut unreadable = Vec::new();
        for (key, raw) in read {
            // Read-only: a foreign record is converted, not adopted (a dry run writes nothing).
            let read = match record::decode(&key, &raw) {
                Ok(Decoded::Current(approval)) => Ok(*approval),
                Ok(Decoded::Foreign(map)) => self.foreign_to_approval(&key, map).await,
                Err(error) => Err(error),
            };
            match read {
                Ok(approval) => items.push(approval.as_of(now)),
                Err(error) => {
                    self.pass_over(error)?;
                    unreadable.push(read_from_shadow.remove(&key).unwrap_or(key));
                }
            }
        }
        Ok(ScanPage {
            items,
            next: (next != "0").then_some(next),
            unreadable,
        })
    }

    async fn import(&self, approval: Approval) -> Result<ImportOutcome, BackendError> {
        let now = Timestamp::now();
        // Written, it would live a second (its TTL floor) and be counted missing by the next
        // read; each run would import it and audit it again.
        if self.past_retention(&approval, now) {
            return Ok(ImportOutcome::PastRetention);
        }
        let audit = AuditEntry::migrated(&approval, now);
        match self.park_record(&approval, &audit, None, now).await? {
            None => Ok(ImportOutcome::Imported),
            Some(_) => Ok(ImportOutcome::AlreadyPresent),
        }
    }

    fn retained_until(&self, approval: &Approval) -> Option<Timestamp> {
        // A pending record left as it is expires at its deadline and is kept as expired.
        let retention = match approval.status {
            Status::Pending | Status::Expired => self.lifetimes.expired_retention,
            Status::Accepted | Status::Rejected => self.lifetimes.decided_retention,
        };
        Some(
            approval
                .decided_at
                .unwrap_or(approval.expires_at)
                .plus(retention),
        )
    }
}
