//! `backend.kind = "dual"`: two engines side by side, for the soak of a Redis → Temporal
//! migration (ADR-0001, reversal plan step 4).
//!
//! What dual promises:
//!
//! - **The primary (`backend.primary`) answers**, exactly as it would alone: every result and
//!   every error the service sees is the primary's, and `/readyz` follows the primary only.
//! - **Writes go to both.** A write the primary *made* (a submit that created a record, a
//!   decision it took, an import) is then applied to the secondary as the same operation with
//!   the primary's record or request (`submit` with the created record, so the id, times and
//!   the "submitted" audit event match; `decide` with the same `DecisionRequest`, `at`
//!   included), under `backend.secondary_timeout`. The request waits for the secondary at most
//!   that long. Only the primary's winner of concurrent decisions is mirrored, so the engines
//!   agree on who won.
//! - **Each engine keeps its own life**: `expire_due` and the adoption of ADR v1 records run on
//!   both (the Redis sweeper must keep running whichever side Redis is on; Temporal's workflows
//!   expire themselves). The secondary's run beside the primary's, which never waits for them.
//! - **Every difference is reported**: the secondary's answer to a mirrored write, and its
//!   record on every read by id, are compared with the primary's (the whole record, as of now).
//!   A difference is logged (warn, both records, the fields that differ) and counted in
//!   `approvals_dual_disagreements_total{tenant,op}`; every comparison made is counted in
//!   `approvals_dual_comparisons_total{tenant,op}` (the denominator), every failed secondary call
//!   in `approvals_dual_secondary_errors_total{op,kind}`, and `approvals_dual_secondary_up` says
//!   whether the secondary answered its last call.
//!
//! What dual does not do:
//!
//! - **The secondary is best-effort.** A failing, slow or unreachable secondary (at start-up
//!   too: it is connected lazily then) never fails a request; a write it missed is counted and
//!   not retried. `approvals migrate` and its reconciliation report are what make the secondary
//!   complete, before and after the soak.
//! - **No read repair, no backfill**: a difference is reported, never fixed.
//! - **Comparisons come after the fact.** Reads are compared off the request path (spawned, at
//!   most [`COMPARISONS_IN_FLIGHT`] at once, skipped and counted beyond), and a mismatch is
//!   looked at again after `backend.secondary_timeout`, once any mirrored write in flight has
//!   landed or given up, so a disagreement is counted seconds after the request that showed it.
//! - **Only reads by id are compared.** `list`, `audit`, `wait_for_decision`, `pending_stats`
//!   and `scan` are the primary's alone.
//! - Expected noise: a record past one engine's retention (Redis drops settled records after
//!   `approvals.decided_retention`, Temporal keeps them for its namespace retention); a record
//!   written before dual was on, or while the secondary was down (it reads as missing there); a
//!   decision mirrored after `expires_at` passed in the secondary.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use approvals_core::{
    Approval, ApprovalBackend, ApprovalId, AuditEvent, BackendError, DecisionOutcome,
    DecisionRequest, ImportOutcome, Page, PendingStats, ScanPage, Status, SubmitOutcome, TenantId,
    Timestamp,
};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::{OnceCell, Semaphore};

/// How many read comparisons may run at once; beyond it they are skipped (and counted), so a
/// slow secondary cannot pile up work behind the reads.
pub const COMPARISONS_IN_FLIGHT: usize = 256;

/// How often an unreachable secondary is connected again, at most.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// Connects the secondary engine (for one that was unreachable at start-up).
pub type Connector = Box<
    dyn Fn() -> BoxFuture<'static, Result<Arc<dyn ApprovalBackend>, BackendError>> + Send + Sync,
>;

/// Two engines: the primary answers, the secondary follows (see the module documentation).
pub struct DualBackend {
    primary: Arc<dyn ApprovalBackend>,
    secondary: Arc<Secondary>,
}

impl DualBackend {
    /// `deadline` bounds every secondary call, and so how long a request waits for it.
    pub fn new(
        primary: Arc<dyn ApprovalBackend>,
        secondary: Arc<dyn ApprovalBackend>,
        deadline: Duration,
    ) -> Self {
        let kind = secondary.kind();
        Self::with(
            primary,
            kind,
            OnceCell::new_with(Some(secondary)),
            None,
            deadline,
        )
    }

    /// With a secondary (of `kind`) that could not be connected at start-up: `connect` is
    /// tried again on use, at most every few seconds, while the primary serves.
    pub fn connecting(
        primary: Arc<dyn ApprovalBackend>,
        kind: &'static str,
        connect: Connector,
        deadline: Duration,
    ) -> Self {
        Self::with(primary, kind, OnceCell::new(), Some(connect), deadline)
    }

    fn with(
        primary: Arc<dyn ApprovalBackend>,
        kind: &'static str,
        engine: OnceCell<Arc<dyn ApprovalBackend>>,
        connect: Option<Connector>,
        deadline: Duration,
    ) -> Self {
        Self {
            primary,
            secondary: Arc::new(Secondary {
                kind,
                engine,
                connect,
                retry_at: Mutex::new(Instant::now()),
                deadline,
                up: AtomicI64::new(-1),
                comparisons: Arc::new(Semaphore::new(COMPARISONS_IN_FLIGHT)),
                running: Mutex::default(),
            }),
        }
    }

    /// Compares the two engines' records of one approval off the request path. `seen` is the
    /// primary's record if the caller has it (`Some(None)`: the primary has none).
    fn compare_later(
        &self,
        op: &'static str,
        tenant: &TenantId,
        id: &ApprovalId,
        seen: Option<Option<Approval>>,
    ) {
        let Ok(permit) = self.secondary.comparisons.clone().try_acquire_owned() else {
            describe_once();
            metrics::counter!("approvals_dual_comparisons_skipped_total", "op" => op).increment(1);
            return;
        };
        let (primary, secondary) = (self.primary.clone(), self.secondary.clone());
        let (tenant, id) = (tenant.clone(), id.clone());
        tokio::spawn(async move {
            compare_reads(primary, secondary, op, tenant, id, seen).await;
            drop(permit);
        });
    }
}

/// The secondary engine, its deadline and health.
struct Secondary {
    kind: &'static str,
    engine: OnceCell<Arc<dyn ApprovalBackend>>,
    connect: Option<Connector>,
    /// No connection attempt before this instant.
    retry_at: Mutex<Instant>,
    deadline: Duration,
    /// 1 if the last call answered, 0 if it failed, -1 before the first.
    up: AtomicI64,
    comparisons: Arc<Semaphore>,
    /// The periodic calls running now (see [`Secondary::beside`]).
    running: Mutex<HashSet<&'static str>>,
}

impl Secondary {
    async fn engine(&self) -> Result<Arc<dyn ApprovalBackend>, BackendError> {
        if let Some(engine) = self.engine.get() {
            return Ok(engine.clone());
        }
        let not_connected =
            || BackendError::Unavailable(format!("the secondary ({}) is not connected", self.kind));
        let connect = self.connect.as_ref().ok_or_else(not_connected)?;
        {
            let mut retry_at = self
                .retry_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if Instant::now() < *retry_at {
                return Err(not_connected());
            }
            *retry_at = Instant::now() + RECONNECT_EVERY;
        }
        let engine = self.engine.get_or_try_init(connect).await?;
        tracing::info!(secondary = self.kind, "dual: connected to the secondary");
        Ok(engine.clone())
    }

    /// Starts a periodic call (sweep, ping, adoption) on the secondary beside the primary's, which
    /// does not wait for it: a slow secondary must not make the primary's expiries or figures
    /// late. Skipped while the previous one of `op` still runs, so a hung secondary holds one
    /// call per `op` rather than a pile.
    fn beside<T, Fut>(
        self: &Arc<Self>,
        op: &'static str,
        call: impl FnOnce(Arc<dyn ApprovalBackend>) -> Fut + Send + 'static,
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
    async fn call<T, Fut>(
        &self,
        op: &'static str,
        call: impl FnOnce(Arc<dyn ApprovalBackend>) -> Fut,
    ) -> Option<T>
    where
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let work = async { call(self.engine().await?).await };
        let result = tokio::time::timeout(self.deadline, work)
            .await
            .unwrap_or(Err(BackendError::Timeout(op)));
        let up = i64::from(result.is_ok());
        let was = self.up.swap(up, Ordering::Relaxed);
        match result {
            Ok(value) => {
                if was == 0 {
                    tracing::info!(secondary = self.kind, "dual: the secondary answers again");
                }
                Some(value)
            }
            Err(error) => {
                describe_once();
                metrics::counter!("approvals_dual_secondary_errors_total",
                    "op" => op, "kind" => error_kind(&error))
                .increment(1);
                // Once per outage at warn: the sweeper alone calls it several times a second.
                if was != 0 {
                    tracing::warn!(secondary = self.kind, op, %error,
                        "dual: the secondary failed; the primary goes on alone until it answers");
                } else {
                    tracing::debug!(secondary = self.kind, op, %error, "dual: secondary failed");
                }
                None
            }
        }
    }
}

/// `op`'s comparison of the two records of one approval, counted; a difference logged.
fn compared(
    op: &'static str,
    tenant: &TenantId,
    id: &ApprovalId,
    primary: Option<&Approval>,
    secondary: Option<&Approval>,
    secondary_outcome: &str,
) {
    describe_once();
    let tenant_label = tenant.to_string();
    metrics::counter!("approvals_dual_comparisons_total",
        "tenant" => tenant_label.clone(), "op" => op)
    .increment(1);
    if same(primary, secondary) {
        return;
    }
    metrics::counter!("approvals_dual_disagreements_total", "tenant" => tenant_label, "op" => op)
        .increment(1);
    tracing::warn!(
        %tenant, approval_id = %id, op,
        differing = ?differing_fields(primary, secondary),
        primary = %as_json(primary),
        secondary = %as_json(secondary),
        secondary_outcome,
        "dual: the secondary disagrees with the primary"
    );
}

/// Both records as a reader sees them now, so that an expiry one engine has not recorded yet
/// is no difference.
fn same(primary: Option<&Approval>, secondary: Option<&Approval>) -> bool {
    let now = Timestamp::now();
    let as_of = |a: Option<&Approval>| a.cloned().map(|a| a.as_of(now));
    as_of(primary) == as_of(secondary)
}

fn differing_fields(primary: Option<&Approval>, secondary: Option<&Approval>) -> Vec<String> {
    let (Some(p), Some(s)) = (primary, secondary) else {
        return vec!["(the record itself)".into()];
    };
    let now = Timestamp::now();
    let object = |a: &Approval| match serde_json::to_value(a.clone().as_of(now)) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (p, s) = (object(p), object(s));
    p.iter()
        .filter(|(key, value)| s.get(*key) != Some(value))
        .map(|(key, _)| key.clone())
        .collect()
}

fn as_json(approval: Option<&Approval>) -> String {
    serde_json::to_string(&approval).unwrap_or_else(|e| format!("(unprintable: {e})"))
}

/// Reads the secondary's record (and the primary's, unless `seen`) and compares them. A
/// mismatch may be a mirrored write still on its way, so it counts only if it is still there
/// when any write in flight has had its deadline.
async fn compare_reads(
    primary: Arc<dyn ApprovalBackend>,
    secondary: Arc<Secondary>,
    op: &'static str,
    tenant: TenantId,
    id: ApprovalId,
    seen: Option<Option<Approval>>,
) {
    let (t, i) = (&tenant, &id);
    let read_secondary = || secondary.call("get", |engine| async move { engine.get(t, i).await });
    let first = match seen {
        Some(record) => record,
        None => match primary.get(&tenant, &id).await {
            Ok(record) => record,
            // The primary's own failure is the service's to report, not a disagreement.
            Err(_) => return,
        },
    };
    let Some(theirs) = read_secondary().await else {
        return;
    };
    if !same(first.as_ref(), theirs.as_ref()) {
        tokio::time::sleep(secondary.deadline).await;
        let Ok(ours) = primary.get(&tenant, &id).await else {
            return;
        };
        let Some(theirs) = read_secondary().await else {
            return;
        };
        compared(op, &tenant, &id, ours.as_ref(), theirs.as_ref(), "read");
        return;
    }
    compared(op, &tenant, &id, first.as_ref(), theirs.as_ref(), "read");
}

fn error_kind(error: &BackendError) -> &'static str {
    match error {
        BackendError::Unavailable(_) => "unavailable",
        BackendError::Timeout(_) => "timeout",
        BackendError::InvalidCursor => "invalid_cursor",
        BackendError::Corrupt { .. } => "corrupt",
    }
}

/// The help texts, once the service's recorder exists (it does by the first request).
fn describe_once() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_counter!(
            "approvals_dual_disagreements_total",
            "Dual backend: comparisons where the secondary's record differed from the primary's."
        );
        metrics::describe_counter!(
            "approvals_dual_comparisons_total",
            "Dual backend: comparisons of the secondary's record with the primary's."
        );
        metrics::describe_counter!(
            "approvals_dual_secondary_errors_total",
            "Dual backend: secondary calls that failed or passed backend.secondary_timeout."
        );
        metrics::describe_counter!(
            "approvals_dual_comparisons_skipped_total",
            "Dual backend: read comparisons skipped because too many were in flight."
        );
    });
}

#[async_trait]
impl ApprovalBackend for DualBackend {
    fn kind(&self) -> &'static str {
        "dual"
    }

    async fn submit(&self, approval: Approval) -> Result<SubmitOutcome, BackendError> {
        let outcome = self.primary.submit(approval).await?;
        match &outcome {
            SubmitOutcome::Created(created) => {
                let mirrored = self
                    .secondary
                    .call("submit", |engine| async move {
                        engine.submit(created.clone()).await
                    })
                    .await;
                if let Some(theirs) = mirrored {
                    let (label, record) = match &theirs {
                        SubmitOutcome::Created(a) => ("created", a),
                        SubmitOutcome::Existing(a) => ("existing", a),
                    };
                    let (tenant, id) = (&created.tenant, &created.id);
                    compared("submit", tenant, id, Some(created), Some(record), label);
                }
            }
            // A repeated submit changed nothing: only compare.
            SubmitOutcome::Existing(existing) => self.compare_later(
                "submit",
                &existing.tenant,
                &existing.id,
                Some(Some(existing.clone())),
            ),
        }
        Ok(outcome)
    }

    async fn get(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, BackendError> {
        let found = self.primary.get(tenant, id).await?;
        self.compare_later("get", tenant, id, Some(found.clone()));
        Ok(found)
    }

    async fn decide(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        decision: DecisionRequest,
    ) -> Result<DecisionOutcome, BackendError> {
        let outcome = self.primary.decide(tenant, id, decision.clone()).await?;
        let seen = match &outcome {
            DecisionOutcome::Decided(decided) => {
                let mirrored = self
                    .secondary
                    .call("decide", |engine| async move {
                        engine.decide(tenant, id, decision).await
                    })
                    .await;
                if let Some(theirs) = mirrored {
                    let (label, record) = match &theirs {
                        DecisionOutcome::Decided(a) => ("decided", Some(a)),
                        DecisionOutcome::AlreadyDecided(a) => ("already_decided", Some(a)),
                        DecisionOutcome::Expired(a) => ("expired", Some(a)),
                        DecisionOutcome::NotFound => ("not_found", None),
                        DecisionOutcome::SelfApproval => ("self_approval", None),
                    };
                    compared("decide", tenant, id, Some(decided), record, label);
                }
                return Ok(outcome);
            }
            // The primary took no decision, so none is mirrored (a losing decision sent to the
            // secondary could win there): only compare.
            DecisionOutcome::AlreadyDecided(a) | DecisionOutcome::Expired(a) => {
                Some(Some(a.clone()))
            }
            DecisionOutcome::NotFound => Some(None),
            DecisionOutcome::SelfApproval => None,
        };
        self.compare_later("decide", tenant, id, seen);
        Ok(outcome)
    }

    async fn wait_for_decision(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
        timeout: Duration,
    ) -> Result<Option<Approval>, BackendError> {
        self.primary.wait_for_decision(tenant, id, timeout).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        status: Status,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Approval>, BackendError> {
        self.primary.list(tenant, status, cursor, limit).await
    }

    async fn audit(
        &self,
        tenant: &TenantId,
        since: Option<Timestamp>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEvent>, BackendError> {
        self.primary.audit(tenant, since, cursor, limit).await
    }

    /// The primary's figures. The secondary is pinged alongside: this is the call the service
    /// makes every few seconds, so `approvals_dual_secondary_up` stays fresh without traffic.
    async fn pending_stats(
        &self,
        bounds: &[Duration],
        now: Timestamp,
    ) -> Result<PendingStats, BackendError> {
        self.secondary
            .beside("ping", |engine| async move { engine.ping().await });
        self.primary.pending_stats(bounds, now).await
    }

    async fn scan(&self, cursor: Option<&str>, batch: usize) -> Result<ScanPage, BackendError> {
        self.primary.scan(cursor, batch).await
    }

    async fn import(&self, approval: Approval) -> Result<ImportOutcome, BackendError> {
        let (tenant, id) = (approval.tenant.clone(), approval.id.clone());
        let outcome = self.primary.import(approval.clone()).await?;
        if outcome == ImportOutcome::Imported {
            let mirrored = self
                .secondary
                .call(
                    "import",
                    |engine| async move { engine.import(approval).await },
                )
                .await;
            // The secondary had a record of this id already: is it the same one?
            if mirrored == Some(ImportOutcome::AlreadyPresent) {
                self.compare_later("import", &tenant, &id, None);
            }
        }
        Ok(outcome)
    }

    /// Both engines expire their own records; the primary's expiries are the ones the service
    /// reports (and counts).
    async fn expire_due(&self, now: Timestamp) -> Result<Vec<Approval>, BackendError> {
        self.secondary
            .beside("expire_due", move |engine| async move {
                engine.expire_due(now).await
            });
        self.primary.expire_due(now).await
    }

    /// Readiness follows the primary alone: the service answers from it.
    async fn ping(&self) -> Result<(), BackendError> {
        self.primary.ping().await
    }

    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        let mut gauges = self.primary.gauges();
        if let Some(engine) = self.secondary.engine.get() {
            gauges.extend(engine.gauges());
        }
        let up = self.secondary.up.load(Ordering::Relaxed);
        if up >= 0 {
            gauges.push((
                "approvals_dual_secondary_up",
                "Dual backend: whether the secondary answered its last call.",
                up as f64,
            ));
        }
        gauges
    }

    async fn adopt_foreign_records(&self) -> Result<usize, BackendError> {
        self.secondary.beside("adopt", |engine| async move {
            engine.adopt_foreign_records().await
        });
        self.primary.adopt_foreign_records().await
    }
}

#[cfg(test)]
mod tests {
    use approvals_core::conformance::{fresh_tenant, pending};

    use super::*;

    #[test]
    fn records_are_compared_as_a_reader_sees_them_now() {
        let tenant = fresh_tenant("dual");
        let mut lapsed = pending(&tenant, "a", Duration::from_secs(1));
        lapsed.expires_at = Timestamp::from_millis(lapsed.submitted_at.as_millis() - 1);
        // One engine recorded the expiry, the other has not yet: no difference.
        let recorded = lapsed.clone().as_of(Timestamp::now());
        assert!(same(Some(&lapsed), Some(&recorded)));

        let open = pending(&tenant, "b", Duration::from_secs(3600));
        let mut decided = open.clone();
        decided.status = Status::Accepted;
        decided.decided_by = Some("mallory".into());
        assert!(!same(Some(&open), Some(&decided)));
        let mut differing = differing_fields(Some(&open), Some(&decided));
        differing.sort();
        assert_eq!(differing, ["decided_by", "status"]);
        assert!(!same(Some(&open), None));
        assert_eq!(differing_fields(None, Some(&open)), ["(the record itself)"]);
        assert!(same(None, None));
    }
}
