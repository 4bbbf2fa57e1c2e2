//! Whole records in and out of Redis, for `approvals migrate` and the dual soak.

use approvals_core::{
    Approval, AuditEntry, BackendError, ImportOutcome, RecordTransfer, ScanPage, Timestamp,
};
use async_trait::async_trait;

use crate::backend::RedisBackend;
use crate::record::{self, Decoded};

#[async_trait]
impl RecordTransfer for RedisBackend {
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
            let read = match record::decode(&key, &raw) {
                Ok(Decoded::Current(approval)) => Ok(*approval),
                Ok(Decoded::Foreign(map)) => self.foreign_to_approval(&key, map).await,
                Err(error) => Err(error),
            };
            match read {
                Ok(approval) => items.push(approval.as_of(now)),
                Err(error) => self.pass_over(error)?,
            }
        }
        Ok(ScanPage {
            items,
            next: (next != "0").then_some(next),
        })
    }

    async fn import(&self, approval: Approval) -> Result<ImportOutcome, BackendError> {
        let now = Timestamp::now();
        let audit = AuditEntry::migrated(&approval, now);
        match self.park(&approval, &audit, None, now).await? {
            None => Ok(ImportOutcome::Imported),
            Some(_) => Ok(ImportOutcome::AlreadyPresent),
        }
    }
}
