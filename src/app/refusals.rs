//! Bundles refused lately, per tenant and content: an upload of the same files again is told
//! why at once. A validation may take longer than the request (its tests 30 s, the request
//! 30 s by default): it goes on after the caller got `408`, and a refusal found then was thrown
//! away, so `policy push` retried, was cut off again, and its team never saw the reason.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use approvals_core::TenantId;
use sha2::{Digest, Sha256};

use crate::policy::PolicyFile;

/// How long a refusal is remembered: a pipeline's retries come within minutes.
const KEPT_FOR: Duration = Duration::from_secs(600);
/// Refusals remembered at most (the oldest go first): each holds its messages only.
const KEPT: usize = 256;

#[derive(Default)]
pub(super) struct RecentRefusals {
    /// Oldest first.
    entries: Mutex<VecDeque<Refusal>>,
}

struct Refusal {
    tenant: TenantId,
    content: [u8; 32],
    at: Instant,
    errors: Vec<String>,
}

/// The bundle's files as one digest, whatever their order.
pub(super) fn content_of(files: &[PolicyFile]) -> [u8; 32] {
    let mut sorted: Vec<&PolicyFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.relative.cmp(&b.relative));
    let mut digest = Sha256::new();
    for file in sorted {
        // Lengths first: no two different bundles run together into the same bytes.
        digest.update((file.relative.len() as u64).to_le_bytes());
        digest.update(file.relative.as_bytes());
        digest.update((file.text.len() as u64).to_le_bytes());
        digest.update(file.text.as_bytes());
    }
    digest.finalize().into()
}

impl RecentRefusals {
    /// Why `tenant`'s bundle of this content was refused, if it was lately.
    pub(super) fn of(&self, tenant: &TenantId, content: &[u8; 32]) -> Option<Vec<String>> {
        let mut entries = self.lock();
        while entries.front().is_some_and(|r| r.at.elapsed() > KEPT_FOR) {
            entries.pop_front();
        }
        entries
            .iter()
            .rev()
            .find(|r| &r.tenant == tenant && &r.content == content)
            .map(|r| r.errors.clone())
    }

    pub(super) fn remember(&self, tenant: &TenantId, content: [u8; 32], errors: Vec<String>) {
        let mut entries = self.lock();
        if entries.len() >= KEPT {
            entries.pop_front();
        }
        entries.push_back(Refusal {
            tenant: tenant.clone(),
            content,
            at: Instant::now(),
            errors,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Refusal>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
