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
//! - **Each engine keeps its own life**: an engine's own chores (Redis' sweeper and ADR v1
//!   adoption) run whichever side it is on, started with it (`engines::start`); Temporal's
//!   workflows expire themselves. Only the primary's expiries are counted.
//! - **Every difference is reported**: the secondary's answer to a mirrored write, and its
//!   record on every read by id, are compared with the primary's (the whole record, as of now).
//!   A difference is logged (warn, both records, the fields that differ) and counted in
//!   `approvals_dual_disagreements_total{tenant,op}`; every comparison made is counted in
//!   `approvals_dual_comparisons_total{tenant,op}` (the denominator), every failed secondary call
//!   in `approvals_dual_secondary_errors_total{op,kind}`, and `approvals_dual_secondary_up` says
//!   whether the secondary answers: its last write did, or (no write having failed for a
//!   minute) its last read or ping.
//!
//! What dual does not do:
//!
//! - **The secondary is best-effort.** A failing, slow or unreachable secondary (at start-up
//!   too: it is connected lazily then) never fails a request; a write it missed is counted and
//!   not retried. `approvals migrate` and its reconciliation report are what make the secondary
//!   complete, before and after the soak.
//! - **No backfill, two repairs**: a difference is reported, not fixed, but for two kinds: a
//!   decision the secondary missed (it reads pending where the primary decided) is replayed on
//!   it from the primary's record when a read or a losing decision compares the two, or, when
//!   the mirror itself failed, once the secondary answers again within about a minute; and a
//!   record the secondary lacks when the primary answers a repeated submit of it, or decides
//!   it and the secondary answers "not found" (then, or once it answers again after missing
//!   both the submit and the decision), is copied to it (`import`) from the primary's record. Both are counted in `approvals_dual_repairs_total{tenant}`. Left pending or
//!   missing, a switch of primary would let a second reviewer decide it again (or the agent's
//!   retry park it anew) and leave its waiting agent unwoken.
//! - **Comparisons come after the fact.** Reads are compared off the request path (spawned, at
//!   most [`COMPARISONS_IN_FLIGHT`] at once, skipped and counted beyond), and a mismatch is
//!   looked at again after `backend.secondary_timeout`, once any mirrored write in flight has
//!   landed or given up, so a disagreement is counted seconds after the request that showed it.
//! - **Only reads by id are compared.** `list`, `audit`, `wait_for_decision`, `pending_stats`
//!   and `scan` are the primary's alone.
//! - Expected noise: on a read or a decision, a record past one engine's retention (Redis drops
//!   settled records after `approvals.decided_retention`, Temporal keeps them for its namespace
//!   retention); a record written before dual was on, or while the secondary was down (it reads
//!   as missing there); a decision mirrored after `expires_at` passed in the secondary.
//! - Never noise: a submit the primary created while the secondary already held another record
//!   under that id (an agent reused a `request_id` once Redis had dropped its settled record).
//!   After a switch of primary, that agent would be answered the old record: logged as an
//!   error and counted in `approvals_dual_id_collisions_total{tenant}`.

mod compare;
mod secondary;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use approvals_core::{
    Approval, ApprovalBackend, ApprovalId, AuditEntry, AuditEvent, BackendError, DecisionOutcome,
    DecisionRequest, EngineStatus, ImportOutcome, Listing, Page, PendingStats, RecordTransfer,
    ScanPage, Status, Stop, SubmitOutcome, TenantId, Timestamp,
};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::{OnceCell, Semaphore};

use compare::{compare_reads, compared, describe_once};
use secondary::Secondary;

/// How many read comparisons may run at once; beyond it they are skipped (and counted), so a
/// slow secondary cannot pile up work behind the reads.
pub const COMPARISONS_IN_FLIGHT: usize = 256;

/// How often an unreachable secondary is connected again, at most.
pub(super) const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// Connects the secondary engine (for one that was unreachable at start-up).
pub type Connector = Box<
    dyn Fn() -> BoxFuture<'static, Result<Arc<dyn RecordTransfer>, BackendError>> + Send + Sync,
>;

/// Two engines: the primary answers, the secondary follows (see the module documentation).
pub struct DualBackend {
    primary: Arc<dyn RecordTransfer>,
    secondary: Arc<Secondary>,
}

impl DualBackend {
    /// `deadline` bounds every secondary call, and so how long a request waits for it.
    pub fn new(
        primary: Arc<dyn RecordTransfer>,
        secondary: Arc<dyn RecordTransfer>,
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
    /// tried again at once, in the background, then on use, at most every few seconds, while
    /// the primary serves. (Tried on use only, a secondary slower to connect than its deadline
    /// at start-up missed the first writes of every restart.)
    pub fn connecting(
        primary: Arc<dyn RecordTransfer>,
        kind: &'static str,
        connect: Connector,
        deadline: Duration,
    ) -> Self {
        let dual = Self::with(primary, kind, OnceCell::new(), Some(connect), deadline);
        dual.secondary.connect_beside();
        dual
    }

    fn with(
        primary: Arc<dyn RecordTransfer>,
        kind: &'static str,
        engine: OnceCell<Arc<dyn RecordTransfer>>,
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
                write_failed_at: Mutex::default(),
                comparisons: Arc::new(Semaphore::new(COMPARISONS_IN_FLIGHT)),
                repairs: Arc::new(Semaphore::new(COMPARISONS_IN_FLIGHT)),
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
        let (primary, secondary) = (self.primary.clone(), self.secondary.clone());
        let (tenant, id) = (tenant.clone(), id.clone());
        let comparing = compare_reads(primary, secondary, op, tenant, id, seen);
        off_the_request_path(&self.secondary.comparisons, op, comparing);
    }

    /// `ours`, the primary's record of an approval a write just touched, copied to the
    /// secondary should it hold none (`import` never overwrites: a record it holds, or a
    /// mirrored submit landing late, is kept), else compared with it, off the request path.
    fn copy_later(&self, op: &'static str, ours: Approval) {
        let (primary, secondary) = (self.primary.clone(), self.secondary.clone());
        let copying = compare::copy_if_missing(primary, secondary, op, ours);
        off_the_request_path(&self.secondary.comparisons, op, copying);
    }

    /// A decision the secondary did not take when it was mirrored (down, or past its
    /// deadline): replayed on it once it answers again, tried a few times over about a minute
    /// (`secondary_timeout` doubling). Left to a later read, it was never repaired when none
    /// came, and after a switch of primary its copy expired. A longer outage is the migration
    /// re-run's to mend (the cut-over runbook).
    fn repair_later(&self, decided: Approval) {
        let secondary = self.secondary.clone();
        let repairing = async move { compare::repair_when_back(&secondary, &decided).await };
        off_the_request_path(&self.secondary.repairs, "repair", repairing);
    }
}

/// Runs `work` in a task of its own under one of `slots`' permits; with none free it is
/// skipped and counted, so a slow secondary cannot pile up work behind the requests.
fn off_the_request_path(
    slots: &Arc<Semaphore>,
    op: &'static str,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        describe_once();
        metrics::counter!("approvals_dual_comparisons_skipped_total", "op" => op).increment(1);
        return;
    };
    tokio::spawn(async move {
        work.await;
        drop(permit);
    });
}

#[async_trait]
impl ApprovalBackend for DualBackend {
    fn kind(&self) -> &'static str {
        "dual"
    }

    fn audit_settle_time(&self) -> std::time::Duration {
        self.primary.audit_settle_time()
    }

    fn check_cursor(&self, listing: Listing, cursor: &str) -> Result<(), BackendError> {
        self.primary.check_cursor(listing, cursor)
    }

    async fn park(
        &self,
        approval: Approval,
        submitted: AuditEntry,
    ) -> Result<SubmitOutcome, BackendError> {
        let outcome = self.primary.park(approval, submitted.clone()).await?;
        match &outcome {
            SubmitOutcome::Created(created) => {
                let mirrored = self
                    .secondary
                    .call("submit", |engine| async move {
                        engine.park(created.clone(), submitted).await
                    })
                    .await;
                if let Some(theirs) = mirrored {
                    let (label, record) = match &theirs {
                        SubmitOutcome::Created(a) => ("created", a),
                        SubmitOutcome::Existing(a) => ("existing", a),
                    };
                    let (tenant, id) = (&created.tenant, &created.id);
                    compared("submit", tenant, id, Some(created), Some(record), label);
                    if let SubmitOutcome::Existing(theirs) = &theirs {
                        compare::collision(created, theirs);
                    }
                }
            }
            // A repeated submit changed nothing on the primary; but the first one's mirror may
            // never have run (the primary's answer was lost, the agent retried): copied if the
            // secondary lacks it, else compared.
            SubmitOutcome::Existing(existing) => self.copy_later("submit", existing.clone()),
        }
        Ok(outcome)
    }

    async fn record(&self, entry: AuditEntry) -> Result<(), BackendError> {
        self.primary.record(entry.clone()).await?;
        // Best-effort, like every mirrored write: the primary's log is the one that answers.
        self.secondary
            .call("record", |engine| async move { engine.record(entry).await })
            .await;
        Ok(())
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
                    // Its submit's mirror is still on its way (dropped at its deadline, it may
                    // land later) or never ran: left so, it would be pending there for good.
                    if theirs == DecisionOutcome::NotFound {
                        self.copy_later("decide", decided.clone());
                    }
                } else {
                    // Nothing reads it again, maybe: the waiting agent is woken by the primary.
                    self.repair_later(decided.clone());
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
        stop: Stop,
    ) -> Result<Option<Approval>, BackendError> {
        self.primary
            .wait_for_decision(tenant, id, timeout, stop)
            .await
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

    async fn audit_end(&self, tenant: &TenantId) -> Result<Option<String>, BackendError> {
        self.primary.audit_end(tenant).await
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

    /// Readiness follows the primary alone: the service answers from it.
    async fn ping(&self) -> Result<(), BackendError> {
        self.primary.ping().await
    }

    fn status(&self) -> EngineStatus {
        let primary = self.primary.status();
        let up = self.secondary.up.load(Ordering::Relaxed);
        EngineStatus {
            // The answering engine's alone: after the cutover (Temporal primary, which has no
            // pool figures) Redis' pool read as the answering engine's.
            calls: primary.calls,
            secondary_up: (up >= 0).then_some(up > 0),
            // Long-polls wait on the primary.
            waiting: primary.waiting,
            decisions_heard: primary.decisions_heard,
        }
    }
}

#[async_trait]
impl RecordTransfer for DualBackend {
    async fn scan(&self, cursor: Option<&str>, batch: usize) -> Result<ScanPage, BackendError> {
        self.primary.scan(cursor, batch).await
    }

    fn retained_until(&self, approval: &Approval) -> Option<Timestamp> {
        self.primary.retained_until(approval)
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
}

#[cfg(test)]
mod tests {
    use approvals_core::conformance::{fresh_tenant, pending};

    use super::compare::{differing_fields, same};
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
