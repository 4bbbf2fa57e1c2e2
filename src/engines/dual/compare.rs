//! Comparing what the two engines of a dual backend hold for one approval: every comparison
//! counted, every difference logged with the fields that differ; a decision the secondary
//! missed replayed on it.

use std::sync::{Arc, Once};

use approvals_core::{
    Approval, ApprovalId, DecisionOutcome, ImportOutcome, RecordTransfer, Status, TenantId,
    Timestamp,
};

use super::secondary::{Failed, Secondary};

/// `op`'s comparison of the two records of one approval, counted; a difference logged.
pub(super) fn compared(
    op: &'static str,
    tenant: &TenantId,
    id: &ApprovalId,
    primary: Option<&Approval>,
    secondary: Option<&Approval>,
    secondary_outcome: &str,
) {
    let disagreements = counted(op, tenant);
    if same(primary, secondary) {
        disagreements.increment(0);
        return;
    }
    disagreements.increment(1);
    lost_decision(tenant, id, primary, secondary);
    tracing::warn!(
        %tenant, approval_id = %id, op,
        differing = ?differing_fields(primary, secondary),
        primary = %as_json(primary),
        secondary = %as_json(secondary),
        secondary_outcome,
        "dual: the secondary disagrees with the primary"
    );
}

/// Counts one comparison of `op`; the tenant's disagreements of `op`, to add 1 or 0 to.
fn counted(op: &'static str, tenant: &TenantId) -> metrics::Counter {
    describe_once();
    let tenant_label = tenant.to_string();
    metrics::counter!("approvals_dual_comparisons_total",
        "tenant" => tenant_label.clone(), "op" => op)
    .increment(1);
    // Exported at 0 from the first comparison on, so a later first lost decision shows in
    // the runbook's increase().
    metrics::counter!("approvals_dual_lost_decisions_total", "tenant" => tenant_label.clone())
        .increment(0);
    // Exported at 0 from the first agreeing comparison on, so a later first disagreement
    // shows in increase(); one that comes first is born at 1, which the alert, the panel and
    // the runbook's queries catch with `x unless x offset <window>`.
    metrics::counter!("approvals_dual_disagreements_total",
        "tenant" => tenant_label, "op" => op)
}

/// A reviewer's decision the primary took in time that the secondary holds as expired (it
/// missed the mirror, then its own deadline passed): no repair can mend it (an expired record
/// takes no decision), and after a switch of primary the agent would be told "expired" for
/// an action a human decided. Counted on its own, as the cutover's go/no-go reads it.
fn lost_decision(
    tenant: &TenantId,
    id: &ApprovalId,
    primary: Option<&Approval>,
    secondary: Option<&Approval>,
) {
    let (Some(ours), Some(theirs)) = (primary, secondary) else {
        return;
    };
    let decided_in_time = matches!(ours.status, Status::Accepted | Status::Rejected)
        && ours.decided_at.is_some_and(|at| at < ours.expires_at);
    if !decided_in_time || theirs.clone().as_of(Timestamp::now()).status != Status::Expired {
        return;
    }
    metrics::counter!("approvals_dual_lost_decisions_total", "tenant" => tenant.to_string())
        .increment(1);
    tracing::error!(
        %tenant, approval_id = %id, status = ?ours.status,
        "dual: the secondary holds as expired a decision the primary took in time; after a \
         switch of primary the agent would be told it expired"
    );
}

/// Whether the one side that holds no record dropped it by its own retention (Redis keeps a
/// settled record a day, Temporal as long as its namespace says): an old settled approval
/// read through the soak is no difference, and must not hold a comparison slot for the wait.
fn dropped_by_retention(
    primary: &dyn RecordTransfer,
    secondary: Option<&dyn RecordTransfer>,
    ours: Option<&Approval>,
    theirs: Option<&Approval>,
) -> bool {
    let now = Timestamp::now();
    match (ours, theirs) {
        (Some(ours), None) => secondary.is_some_and(|engine| engine.past_retention(ours, now)),
        (None, Some(theirs)) => primary.past_retention(theirs, now),
        _ => false,
    }
}

/// Both records as a reader sees them now, so that an expiry one engine has not recorded yet
/// is no difference.
pub(super) fn same(primary: Option<&Approval>, secondary: Option<&Approval>) -> bool {
    let now = Timestamp::now();
    let as_of = |a: Option<&Approval>| a.cloned().map(|a| a.as_of(now));
    as_of(primary) == as_of(secondary)
}

pub(super) fn differing_fields(
    primary: Option<&Approval>,
    secondary: Option<&Approval>,
) -> Vec<String> {
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
pub(super) async fn compare_reads(
    primary: Arc<dyn RecordTransfer>,
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
    let secondary_engine = secondary.engine().ok();
    if dropped_by_retention(
        primary.as_ref(),
        secondary_engine.as_deref(),
        first.as_ref(),
        theirs.as_ref(),
    ) {
        counted(op, &tenant).increment(0);
        return;
    }
    if !same(first.as_ref(), theirs.as_ref()) {
        tokio::time::sleep(secondary.deadline).await;
        let Ok(ours) = primary.get(&tenant, &id).await else {
            return;
        };
        let Some(theirs) = read_secondary().await else {
            return;
        };
        compared(op, &tenant, &id, ours.as_ref(), theirs.as_ref(), "read");
        if let (Some(ours), Some(theirs)) = (&ours, &theirs) {
            repair_missed_decision(&secondary, ours, theirs).await;
        }
        return;
    }
    compared(op, &tenant, &id, first.as_ref(), theirs.as_ref(), "read");
}

/// A decision the primary recorded and the secondary missed (it was down, or slower than its
/// deadline, when the decision was mirrored): the secondary still reads pending, so after a
/// switch of primary a second reviewer could decide it again there, and an agent waiting on it
/// would never be woken. Replays the primary's winner (reviewer, reason and time), as
/// `approvals migrate` replays late decisions: on a pending record it can only agree with the
/// primary, and on any other it changes nothing. Counted in `approvals_dual_repairs_total`.
/// False when the secondary did not answer the replay (worth another try).
async fn repair_missed_decision(
    secondary: &Arc<Secondary>,
    ours: &Approval,
    theirs: &Approval,
) -> bool {
    let (Some(decision), Status::Pending) = (ours.decision(), theirs.status) else {
        return true;
    };
    // Another approval under the same id (reused after the first left the secondary): a
    // collision, not a missed decision.
    if !ours.same_approval(theirs) {
        return true;
    }
    let (tenant, id) = (&ours.tenant, &ours.id);
    let replayed = secondary
        .attempt("repair", |engine| async move {
            engine.decide(tenant, id, decision).await
        })
        .await;
    if let Ok(DecisionOutcome::Decided(_)) = replayed {
        repaired(tenant);
        tracing::info!(%tenant, approval_id = %id, "dual: replayed on the secondary the decision it missed");
    }
    !matches!(replayed, Err(Failed::Outage))
}

fn repaired(tenant: &approvals_core::TenantId) {
    describe_once();
    metrics::counter!("approvals_dual_repairs_total", "tenant" => tenant.to_string()).increment(1);
}

/// Imports `ours` on the secondary if it holds no record of that approval; if it holds one,
/// compares the two (which replays a decision it missed). The import's write never
/// overwrites, so a mirrored submit still on its way and landing later changes nothing.
pub(super) async fn copy_if_missing(
    primary: Arc<dyn RecordTransfer>,
    secondary: Arc<Secondary>,
    op: &'static str,
    ours: Approval,
) {
    let record = ours.clone();
    let copied = secondary
        .call("copy", |engine| async move { engine.import(record).await })
        .await;
    let (tenant, id) = (ours.tenant.clone(), ours.id.clone());
    match copied {
        Some(ImportOutcome::Imported) => {
            repaired(&tenant);
            tracing::info!(%tenant, approval_id = %id, op,
                "dual: copied to the secondary a record it did not hold");
        }
        Some(ImportOutcome::AlreadyPresent) => {
            compare_reads(primary, secondary, op, tenant, id, Some(Some(ours))).await;
        }
        // Past the secondary's own retention (nothing to hold), or it failed (counted).
        Some(ImportOutcome::PastRetention) | None => {}
    }
}

/// Replays `decided` on the secondary once it reads the approval again, or copies it there
/// if it holds no record of it (its submit's mirror failed too, in the same outage); tried
/// at most [`REPAIR_TRIES`] times, `secondary_timeout` apart and doubling, until the
/// secondary answers the write. A secondary that answered reads but refused the replay (full,
/// say) was left pending after one try; one that missed the submit too, without the record.
pub(super) async fn repair_when_back(secondary: &Arc<Secondary>, decided: &Approval) {
    let (tenant, id) = (&decided.tenant, &decided.id);
    let mut pause = secondary.deadline;
    for _ in 0..REPAIR_TRIES {
        tokio::time::sleep(pause).await;
        pause *= 2;
        let read = secondary
            .attempt("repair_read", |engine| async move {
                engine.get(tenant, id).await
            })
            .await;
        match read {
            // Down still.
            Err(Failed::Outage) => continue,
            // Unreadable there: reported by reads, and the migration's to mend.
            Err(Failed::Answered) => return,
            Ok(Some(theirs)) => {
                if repair_missed_decision(secondary, decided, &theirs).await {
                    return;
                }
            }
            Ok(None) => {
                let record = decided.clone();
                let copied = secondary
                    .attempt("repair_copy", |engine| async move {
                        engine.import(record).await
                    })
                    .await;
                match copied {
                    Ok(ImportOutcome::Imported) => {
                        repaired(tenant);
                        tracing::info!(%tenant, approval_id = %id,
                            "dual: copied to the secondary a decided record it did not hold");
                        return;
                    }
                    // Past its retention: nothing to hold. Refused for this record: another
                    // try would be refused the same.
                    Ok(ImportOutcome::PastRetention) | Err(Failed::Answered) => return,
                    // Written there meanwhile (the late mirror of the submit): read again.
                    Ok(ImportOutcome::AlreadyPresent) | Err(Failed::Outage) => {}
                }
            }
        }
    }
}

/// How often a failed mirror of a decision is tried again: with the default 1 s
/// `secondary_timeout`, over about a minute.
const REPAIR_TRIES: u32 = 6;

/// A submit the primary created under an id the secondary already held for another record.
/// Not a lag of one engine: once the secondary answers, the agent gets that other record (and
/// its old decision) for its new request.
pub(super) fn collision(created: &Approval, theirs: &Approval) {
    if same(Some(created), Some(theirs)) {
        return;
    }
    // The same request, asked again: not a reuse of the id but a record the primary lost (a
    // failover that dropped a write, a restart without its AOF), which the agent's retry
    // parked anew. The disagreement says so; it is not counted as a collision.
    if created.same_request(theirs) && created.submitted_by == theirs.submitted_by {
        tracing::warn!(
            tenant = %created.tenant, approval_id = %created.id,
            "dual: the primary parked anew a request the secondary already holds: \
             did the primary lose its record?"
        );
        return;
    }
    metrics::counter!("approvals_dual_id_collisions_total", "tenant" => created.tenant.to_string())
        .increment(1);
    tracing::error!(
        tenant = %created.tenant, approval_id = %created.id,
        primary = %as_json(Some(created)),
        secondary = %as_json(Some(theirs)),
        "dual: request_id collision: the secondary already holds another record under this id \
         (reused after the primary dropped its settled record?); after a switch of primary \
         the agent would be answered that record"
    );
}

/// The help texts, once the service's recorder exists (it does by the first request).
pub(super) fn describe_once() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_counter!(
            "approvals_dual_disagreements_total",
            "Dual backend: comparisons where the secondary's record differed from the primary's."
        );
        metrics::describe_counter!(
            "approvals_dual_id_collisions_total",
            "Dual backend: submits the primary created under an id the secondary held for another record."
        );
        metrics::describe_counter!(
            "approvals_dual_repairs_total",
            "Dual backend: decisions the secondary missed, replayed on it, and records it lacked, copied to it, from the primary's record."
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
            "approvals_dual_lost_decisions_total",
            "Dual backend: decisions the primary took in time that the secondary holds as expired."
        );
        metrics::describe_counter!(
            "approvals_dual_comparisons_skipped_total",
            "Dual backend: read comparisons skipped because too many were in flight."
        );
    });
}
