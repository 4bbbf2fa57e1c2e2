//! The conformance suite: behaviour every [`crate::ApprovalBackend`] must show, written once.
//!
//! Each function takes a fresh backend (with its background expiry running) and a tenant of
//! its own, so the suite runs in parallel on one store. A backend crate instantiates all of
//! them with [`conformance_tests!`](crate::conformance_tests).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

mod lifecycle;
mod listing;

pub use lifecycle::*;
pub use listing::*;

use crate::{
    Approval, ApprovalId, DecisionRequest, RecordTransfer, Status, SubmitOutcome, TenantId,
    Timestamp, Verdict,
};

/// Instantiates every conformance test for a backend. `$factory` is an async fn returning
/// `(Arc<dyn RecordTransfer>, guard)`; the guard (e.g. the server process and the engine's
/// chores) lives as long as the test.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!(@each $factory;
            submit_then_get_round_trips,
            resubmit_returns_the_existing_record,
            unknown_id_is_none_and_not_found,
            first_decision_wins,
            reject_records_decider_and_reason,
            self_approval_is_refused_and_stays_pending,
            forty_concurrent_decisions_have_one_winner,
            waiter_wakes_on_decision,
            waiter_times_out_while_pending,
            short_ttl_expires_and_cannot_be_decided,
            list_pages_visit_each_approval_once_oldest_first,
            list_filters_by_status,
            pending_stats_count_and_age,
            scan_and_import_carry_records_over,
            audit_records_the_lifecycle,
            audit_events_are_the_core_events,
            the_decision_log_records_every_verdict,
            tenants_are_isolated
        );
    };
    (@each $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (backend, _guard) = $factory().await;
                $crate::conformance::$name(backend).await;
            }
        )*
    };
}

pub(crate) type Backend = Arc<dyn RecordTransfer>;

static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// A tenant nobody else in this process uses.
pub fn fresh_tenant(label: &str) -> TenantId {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let nanos = Timestamp::now().as_millis();
    TenantId::parse(format!("{label}-{}-{nanos}-{n}", std::process::id())).expect("valid tenant")
}

pub fn id(text: &str) -> ApprovalId {
    ApprovalId::parse(text).expect("valid id")
}

/// A pending approval submitted by `agent-1` that expires after `ttl`.
pub fn pending(tenant: &TenantId, approval_id: &str, ttl: Duration) -> Approval {
    let now = Timestamp::now();
    let Value::Object(action) =
        json!({"type": "document_read", "resource": "doc-1", "n": 12345678901234567_u64})
    else {
        unreachable!()
    };
    let mut context = Map::new();
    context.insert("on_behalf_of".into(), json!("project_alpha"));
    let action_digest = Some(crate::action_digest(&action));
    Approval {
        id: id(approval_id),
        tenant: tenant.clone(),
        status: Status::Pending,
        agent_id: "retrieval-agent".into(),
        submitted_by: "agent-1".into(),
        action,
        context,
        reasons: vec!["reading finance documents needs a human".into()],
        policy_version: "sha256:test".into(),
        submitted_at: now,
        expires_at: now.plus(ttl),
        decided_at: None,
        decided_by: None,
        decision_reason: None,
        action_digest,
    }
}

pub fn decision(verdict: Verdict, by: &str) -> DecisionRequest {
    DecisionRequest::now(verdict, by, Some(format!("{by} says so")))
}

pub(crate) const HOUR: Duration = Duration::from_secs(3600);

pub(crate) async fn submit(backend: &Backend, approval: Approval) -> Approval {
    match backend.submit(approval).await.expect("submit") {
        SubmitOutcome::Created(a) => a,
        SubmitOutcome::Existing(a) => panic!("expected a new record, found {a:?}"),
    }
}

pub(crate) async fn all_audit(backend: &Backend, tenant: &TenantId) -> Vec<crate::AuditEvent> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = backend
            .audit(tenant, None, cursor.as_deref(), 2)
            .await
            .expect("audit");
        events.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return events,
        }
    }
}
