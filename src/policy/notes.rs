//! What an evaluation did that on-call staff count or read in the log: an `allow` of the VM
//! the interpreter overruled, a fallback to the interpreter, a verdict that failed closed. In
//! the service these are counted (and logged) where they happen. A sandbox child has no
//! metrics recorder and no log subscriber, so for every tenant's uploaded bundle, the ones
//! the signals exist for, they went nowhere: the child gathers them per evaluation and
//! sends them with the verdict, and the service counts and logs them ([`record`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// Set in a sandbox child only: elsewhere nothing takes the notes, which must not pile up.
static GATHERING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static TAKEN: Cell<Notes> = const { Cell::new(Notes::NONE) };
}

/// One evaluation's signals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notes {
    pub allows_overruled: u32,
    pub interpreter_fallbacks: u32,
    pub failed_closed: bool,
}

impl Notes {
    const NONE: Self = Self {
        allows_overruled: 0,
        interpreter_fallbacks: 0,
        failed_closed: false,
    };
}

/// In a sandbox child: from now on this process gathers notes for [`take`].
pub fn gather() {
    GATHERING.store(true, Ordering::Relaxed);
}

/// This thread's notes since the last call (a child's evaluation ends with it).
pub fn take() -> Notes {
    TAKEN.with(Cell::take)
}

fn note(change: impl FnOnce(&mut Notes)) {
    if GATHERING.load(Ordering::Relaxed) {
        TAKEN.with(|cell| {
            let mut notes = cell.get();
            change(&mut notes);
            cell.set(notes);
        });
    }
}

pub(super) fn allow_overruled() {
    metrics::counter!("approvals_policy_allows_overruled_total").increment(1);
    note(|n| n.allows_overruled = n.allows_overruled.saturating_add(1));
}

pub(super) fn interpreter_fallback() {
    metrics::counter!("approvals_policy_interpreter_fallbacks_total").increment(1);
    note(|n| n.interpreter_fallbacks = n.interpreter_fallbacks.saturating_add(1));
}

pub(super) fn failed_closed() {
    note(|n| n.failed_closed = true);
}

/// In the service: what a child's evaluation of `origin`'s bundle `version` noted, counted
/// and logged as if it had run here. `reason` is the verdict's (the one it failed closed for).
pub(super) fn record(notes: Notes, origin: &str, version: &str, reason: Option<&str>) {
    metrics::counter!("approvals_policy_allows_overruled_total")
        .increment(u64::from(notes.allows_overruled));
    metrics::counter!("approvals_policy_interpreter_fallbacks_total")
        .increment(u64::from(notes.interpreter_fallbacks));
    if notes.failed_closed {
        tracing::warn!(
            origin,
            version,
            reason = reason.unwrap_or_default(),
            "policy failed closed"
        );
    }
}
