//! Ids of audit events a reader handled lately. On an engine whose audit settles late
//! (Temporal), readers that follow the audit re-read its unsettled stretch on every read; this
//! set makes each event count once, and forgets what has settled.

use std::collections::{HashSet, VecDeque};

use approvals_core::Timestamp;

#[derive(Debug, Default)]
pub struct RecentIds {
    order: VecDeque<(Timestamp, String)>,
    ids: HashSet<String>,
}

impl RecentIds {
    /// Bounds memory whatever the traffic; forgetting early only repeats work the callers
    /// tolerate (an `enqueue` that drops a duplicate, an event a stream shows twice).
    const MAX: usize = 100_000;

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Remembers `id`, of an event timestamped `at`; false if it was known.
    pub fn insert(&mut self, at: Timestamp, id: String) -> bool {
        if !self.ids.insert(id.clone()) {
            return false;
        }
        self.order.push_back((at, id));
        while self.order.len() > Self::MAX {
            self.forget_oldest();
        }
        true
    }

    /// Forgets events timestamped before `before`.
    pub fn prune(&mut self, before: Timestamp) {
        while self.order.front().is_some_and(|(at, _)| *at < before) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.ids.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_pruned() {
        let mut recent = RecentIds::default();
        assert!(recent.insert(Timestamp::from_millis(10), "a".into()));
        assert!(!recent.insert(Timestamp::from_millis(10), "a".into()));
        assert!(recent.insert(Timestamp::from_millis(20), "b".into()));
        recent.prune(Timestamp::from_millis(15));
        assert!(!recent.contains("a"));
        assert!(recent.contains("b"));
    }
}
