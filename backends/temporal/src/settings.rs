//! `[temporal]`: how the Temporal engine and its worker reach the cluster. Compiled without the
//! SDK (the `engine` feature), so a Redis-only service still reads and checks the section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalSettings {
    /// The frontend's gRPC address, e.g. `http://127.0.0.1:7233`.
    pub address: String,
    pub namespace: String,
    pub task_queue: String,
    /// Deadline of every single client call (start, describe, update, one list page); an
    /// outage is answered within it.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Deadline of a call that walks a visibility query to its end (`list`, `audit`,
    /// `pending_stats`): they read every matching execution (see DESIGN.md).
    #[serde(with = "humantime_serde")]
    pub scan_timeout: Duration,
    /// Worker only: how long a task for a workflow cached by a dead worker waits before another
    /// worker may take it (the SDK's default is 10 s). Decisions on such workflows wait this
    /// long after a worker crash.
    #[serde(with = "humantime_serde")]
    pub sticky_queue_timeout: Duration,
    /// Shown in the Temporal UI and history as the caller.
    #[serde(skip)]
    pub identity: String,
    /// Merge this process's own recent writes into visibility results (list, audit, stats,
    /// scan), which the server updates asynchronously. See `recent.rs` and DESIGN.md.
    #[serde(skip)]
    pub read_your_writes: bool,
}

impl TemporalSettings {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            ..Self::default()
        }
    }

    /// What of `call_timeout` a write (a start, a decision's update) may take: the rest, a
    /// fifth, is kept for the read that tells what a write that timed out did.
    pub fn write_deadline(&self) -> Duration {
        self.call_timeout - self.read_reserve()
    }

    /// The task queue of the decision-log executions (allowed and denied submits): its own,
    /// `<task_queue>-decision-log`, so that after a worker outage the approvals' decisions and
    /// timers are not queued behind every verdict recorded meanwhile.
    pub fn decision_log_task_queue(&self) -> String {
        format!("{}-decision-log", self.task_queue)
    }

    /// The part of `call_timeout` kept for the read after a write (see
    /// [`Self::write_deadline`]).
    pub fn read_reserve(&self) -> Duration {
        self.call_timeout / 5
    }
}

impl Default for TemporalSettings {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:7233".into(),
            namespace: "default".into(),
            task_queue: "approvals".into(),
            // Above `sticky_queue_timeout`: after a worker crash a decision first waits that
            // out, and a shorter deadline answered 503 for a decision that then landed.
            call_timeout: Duration::from_secs(15),
            // Shorter than `server.request_timeout`'s 30 s: a slow visibility walk answers 503.
            scan_timeout: Duration::from_secs(25),
            sticky_queue_timeout: Duration::from_secs(10),
            identity: format!("approvals@{}", std::process::id()),
            read_your_writes: true,
        }
    }
}
