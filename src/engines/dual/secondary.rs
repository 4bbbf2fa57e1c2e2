//! The secondary engine of a dual backend: connected lazily if it was down at start-up, every
//! call under `backend.secondary_timeout`, failures counted and never passed on.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use approvals_core::{BackendError, RecordTransfer};
use tokio::sync::{OnceCell, Semaphore};

use super::compare::describe_once;
use super::{Connector, RECONNECT_EVERY};

/// The longest one attempt to connect the secondary may take, in its own task.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// How long after a failed write reads and pings that answer do not say the secondary is up.
const WRITES_FAILED_HOLD: Duration = Duration::from_secs(60);

/// How a call on the secondary failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failed {
    /// It did not answer (down, or past its deadline).
    Outage,
    /// It answered with an error about this record (unreadable, say).
    Answered,
}

/// The secondary engine, its deadline and health.
pub(super) struct Secondary {
    pub(super) kind: &'static str,
    pub(super) engine: OnceCell<Arc<dyn RecordTransfer>>,
    pub(super) connect: Option<Connector>,
    /// No connection attempt before this instant (one is running until it).
    pub(super) retry_at: Mutex<Instant>,
    pub(super) deadline: Duration,
    /// 1 if the secondary answers, 0 if it failed, -1 before the first call (see
    /// [`Secondary::call`]).
    pub(super) up: AtomicI64,
    /// When a write last failed (did not answer), until a write answers: a ping or a read
    /// that answers meanwhile says nothing of writes (see [`Secondary::call`]).
    pub(super) write_failed_at: Mutex<Option<Instant>>,
    pub(super) comparisons: Arc<Semaphore>,
    /// Decisions whose mirror failed, waiting to be replayed (see `DualBackend::repair_later`):
    /// apart from the comparisons, which a long outage's repairs would otherwise all take.
    pub(super) repairs: Arc<Semaphore>,
    /// The periodic calls running now (see [`Secondary::beside`]).
    pub(super) running: Mutex<HashSet<&'static str>>,
}

impl Secondary {
    /// The secondary, if it is connected. If not, a connection is tried in a task of its own
    /// (at most one at a time, every few seconds), not within this call's deadline: a connect
    /// slower than `backend.secondary_timeout` (TLS, a cluster recovering) was cut every time,
    /// and dual ran without its secondary for good.
    pub(super) fn engine(self: &Arc<Self>) -> Result<Arc<dyn RecordTransfer>, BackendError> {
        if let Some(engine) = self.engine.get() {
            return Ok(engine.clone());
        }
        self.connect_beside();
        Err(BackendError::unavailable(
            "connect",
            format!("the secondary ({}) is not connected", self.kind),
        ))
    }

    pub(super) fn connect_beside(self: &Arc<Self>) {
        let Some(connect) = &self.connect else {
            return;
        };
        {
            let mut retry_at = self.lock_retry_at();
            if Instant::now() < *retry_at {
                return;
            }
            // None other while this one runs.
            *retry_at = Instant::now() + CONNECT_DEADLINE + RECONNECT_EVERY;
        }
        let attempt = connect();
        let this = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECT_DEADLINE, attempt).await {
                Ok(Ok(engine)) => {
                    if this.engine.set(engine).is_ok() {
                        tracing::info!(secondary = this.kind, "dual: connected to the secondary");
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(secondary = this.kind, %error, "dual: the secondary still cannot be connected");
                }
                Err(_) => {
                    tracing::debug!(
                        secondary = this.kind,
                        "dual: connecting the secondary timed out"
                    );
                }
            }
            *this.lock_retry_at() = Instant::now() + RECONNECT_EVERY;
        });
    }

    fn writes_failed_lately(&self) -> bool {
        self.lock_write_failed_at()
            .is_some_and(|at| at.elapsed() < WRITES_FAILED_HOLD)
    }

    fn lock_write_failed_at(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // An instant holds no invariant a panicking holder could break.
        self.write_failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_retry_at(&self) -> std::sync::MutexGuard<'_, Instant> {
        // An instant holds no invariant a panicking holder could break.
        self.retry_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a periodic call (sweep, ping, adoption) on the secondary beside the primary's, which
    /// does not wait for it: a slow secondary must not make the primary's expiries or figures
    /// late. Skipped while the previous one of `op` still runs, so a hung secondary holds one
    /// call per `op` rather than a pile.
    pub(super) fn beside<T, Fut>(
        self: &Arc<Self>,
        op: &'static str,
        call: impl FnOnce(Arc<dyn RecordTransfer>) -> Fut + Send + 'static,
    ) where
        T: Send + 'static,
        Fut: Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        if !self.running().insert(op) {
            return;
        }
        let secondary = self.clone();
        tokio::spawn(async move {
            secondary.call(op, call).await;
            secondary.running().remove(op);
        });
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<&'static str>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `call` on the secondary under the deadline; `None` (counted, logged) if it failed.
    pub(super) async fn call<T, Fut>(
        self: &Arc<Self>,
        op: &'static str,
        call: impl FnOnce(Arc<dyn RecordTransfer>) -> Fut,
    ) -> Option<T>
    where
        Fut: Future<Output = Result<T, BackendError>>,
    {
        self.attempt(op, call).await.ok()
    }

    /// [`Secondary::call`], telling an outage (worth another try) from an error that is an
    /// answer about this record.
    pub(super) async fn attempt<T, Fut>(
        self: &Arc<Self>,
        op: &'static str,
        call: impl FnOnce(Arc<dyn RecordTransfer>) -> Fut,
    ) -> Result<T, Failed>
    where
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let work = async { call(self.engine()?).await };
        let result = tokio::time::timeout(self.deadline, work)
            .await
            .unwrap_or(Err(BackendError::Timeout(op)));
        // Only an engine that did not answer is down: one unreadable record (`corrupt`) or a
        // stale cursor is an answer, and counting it as an outage failed the soak's
        // "secondary up" check for a record that another migration run would not mend.
        let outage = matches!(
            result,
            Err(BackendError::Unavailable { .. } | BackendError::Timeout(_))
        );
        // Up is what the writes say: a ping or a read that answers while writes time out (a
        // Temporal frontend that answers DescribeNamespace while its history service is
        // overloaded; a Redis that takes no writes) set it back to 1 between failed writes,
        // and the secondary-down alert, which needs it 0 for ten minutes, never fired. Only a
        // write that answers says up again, or a read once no write has failed for
        // `WRITES_FAILED_HOLD` (with no writes to try, pings are all there is to go by).
        let read = matches!(op, "ping" | "get" | "repair_read");
        let was = match &result {
            Ok(_) if read && self.writes_failed_lately() => self.up.load(Ordering::Relaxed),
            Ok(_) => {
                if !read {
                    *self.lock_write_failed_at() = None;
                }
                self.up.swap(1, Ordering::Relaxed)
            }
            Err(_) if outage => {
                if !read {
                    *self.lock_write_failed_at() = Some(Instant::now());
                }
                self.up.swap(0, Ordering::Relaxed)
            }
            Err(_) => self.up.load(Ordering::Relaxed),
        };
        match result {
            Ok(value) => {
                if was == 0 {
                    tracing::info!(secondary = self.kind, "dual: the secondary answers again");
                }
                Ok(value)
            }
            Err(error) => {
                describe_once();
                metrics::counter!("approvals_dual_secondary_errors_total",
                    "op" => op, "kind" => error.kind())
                .increment(1);
                // With its causes: "unavailable (during `ping`)" alone did not say why (an
                // evicting Redis, a refused connection).
                let error = crate::app::chain(&error);
                // Once per outage at warn: the sweeper alone calls it several times a second.
                if !outage {
                    tracing::warn!(secondary = self.kind, op, %error,
                        "dual: the secondary answered with an error about this record");
                } else if was != 0 {
                    tracing::warn!(secondary = self.kind, op, %error,
                        "dual: the secondary failed; the primary goes on alone until it answers");
                } else {
                    tracing::debug!(secondary = self.kind, op, %error, "dual: secondary failed");
                }
                Err(if outage {
                    Failed::Outage
                } else {
                    Failed::Answered
                })
            }
        }
    }
}
