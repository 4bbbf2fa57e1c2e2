//! Reads that find the same approval due at once share one expiry call. Every long-poll on an
//! approval wakes at its deadline, before the sweeper's next pass, and each would otherwise
//! run expire.lua (all but the first for nothing) and read the record again: thousands of
//! waiters on one approval were thousands of scripts in the same millisecond.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use approvals_core::Approval;
use tokio::sync::OnceCell;

#[derive(Default)]
pub(crate) struct DueReads {
    /// By record key: the expiry in progress, whose answer every read that joins it takes.
    settling: Mutex<HashMap<String, Arc<OnceCell<Option<Approval>>>>>,
}

impl DueReads {
    /// `settle`'s answer for `key`, run once for the reads that ask while it runs (`None`:
    /// Redis did not say). A read that arrives after it ended finds the record settled in
    /// Redis, or runs it again.
    pub(crate) async fn settle<F>(&self, key: &str, settle: impl FnOnce() -> F) -> Option<Approval>
    where
        F: Future<Output = Option<Approval>>,
    {
        let cell = Arc::clone(self.settling().entry(key.to_owned()).or_default());
        let _forget = Forget {
            reads: self,
            key,
            cell: &cell,
        };
        cell.get_or_init(settle).await.clone()
    }

    fn settling(&self) -> MutexGuard<'_, HashMap<String, Arc<OnceCell<Option<Approval>>>>> {
        // Entries are inserted and removed whole.
        self.settling.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes the entry out once a read is done with it (answered, or dropped mid-way: then an
/// entry left behind would stay for good), unless a newer one has replaced it.
struct Forget<'a> {
    reads: &'a DueReads,
    key: &'a str,
    cell: &'a Arc<OnceCell<Option<Approval>>>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut settling = self.reads.settling();
        if settling
            .get(self.key)
            .is_some_and(|current| Arc::ptr_eq(current, self.cell))
        {
            settling.remove(self.key);
        }
    }
}
