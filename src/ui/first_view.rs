//! Time from parked to a reviewer's first look: recorded when a reviewer other than the
//! submitter first opens a pending approval in the inbox. "First" is decided in Redis when it
//! is among the engines (across instances), else per instance.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use approvals_core::{Approval, Status, Timestamp};

use crate::notify::store::Store;

/// Approvals one instance remembers as viewed when there is no Redis (then it starts over).
const MAX_REMEMBERED: usize = 100_000;

pub struct FirstViews {
    store: Option<Store>,
    seen: Mutex<HashSet<(String, String)>>,
}

impl FirstViews {
    pub fn new(store: Option<Store>) -> Self {
        Self {
            store,
            seen: Mutex::default(),
        }
    }

    /// Records `viewer`'s look at `approval` if it is the first by a reviewer.
    pub async fn viewed(&self, approval: &Approval, viewer: &str) {
        if approval.status != Status::Pending || approval.submitted_by == viewer {
            return;
        }
        let now = Timestamp::now();
        let first = match &self.store {
            Some(store) => {
                // Kept until the approval cannot be pending any more.
                let keep = now.elapsed_at(approval.expires_at) + Duration::from_secs(60);
                match store
                    .first_view(&approval.tenant, approval.id.as_str(), keep)
                    .await
                {
                    Ok(first) => first,
                    Err(error) => {
                        tracing::debug!(%error, "first view not recorded");
                        false
                    }
                }
            }
            None => {
                let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                if seen.len() >= MAX_REMEMBERED {
                    seen.clear();
                }
                seen.insert((approval.tenant.to_string(), approval.id.to_string()))
            }
        };
        if first {
            metrics::histogram!("approvals_time_to_first_view_seconds", "tenant" => approval.tenant.to_string())
                .record(approval.submitted_at.elapsed_at(now).as_secs_f64());
        }
    }
}
