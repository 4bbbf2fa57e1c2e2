//! Bundles refused lately, per tenant and version (the digest of the files): an upload of the
//! same files again is told why at once. A validation may take longer than the request (its
//! tests 30 s, the request 30 s by default): it goes on after the caller got `408`, and a
//! refusal found then was thrown away, so `policy push` retried, was cut off again, and its
//! team never saw the reason.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use approvals_core::TenantId;

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
    /// The bundle's version: the digest of its files.
    version: String,
    at: Instant,
    errors: Vec<String>,
}

impl RecentRefusals {
    /// Why `tenant`'s bundle of this version was refused, if it was lately.
    pub(super) fn of(&self, tenant: &TenantId, version: &str) -> Option<Vec<String>> {
        let mut entries = self.lock();
        while entries.front().is_some_and(|r| r.at.elapsed() > KEPT_FOR) {
            entries.pop_front();
        }
        entries
            .iter()
            .rev()
            .find(|r| &r.tenant == tenant && r.version == version)
            .map(|r| r.errors.clone())
    }

    pub(super) fn remember(&self, tenant: &TenantId, version: String, errors: Vec<String>) {
        let mut entries = self.lock();
        if entries.len() >= KEPT {
            entries.pop_front();
        }
        entries.push_back(Refusal {
            tenant: tenant.clone(),
            version,
            at: Instant::now(),
            errors,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Refusal>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
