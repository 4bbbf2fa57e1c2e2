//! The conformance suite: behaviour every [`ApprovalBackend`] must show, written once.
//!
//! Each function takes a fresh backend (with its background expiry running) and a tenant of
//! its own, so the suite runs in parallel on one store. A backend crate instantiates all of
//! them with [`conformance_tests!`](crate::conformance_tests).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::{
    Approval, ApprovalBackend, ApprovalId, AuditKind, DecisionOutcome, DecisionRequest,
    ImportOutcome, Status, SubmitOutcome, TenantId, Timestamp, Verdict,
};

/// Instantiates every conformance test for a backend. `$factory` is an async fn returning
/// `(Arc<dyn ApprovalBackend>, guard)`; the guard (e.g. the server process) lives as long as
/// the test.
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

type Backend = Arc<dyn ApprovalBackend>;

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
    }
}

pub fn decision(verdict: Verdict, by: &str) -> DecisionRequest {
    DecisionRequest::now(verdict, by, Some(format!("{by} says so")))
}

const HOUR: Duration = Duration::from_secs(3600);

async fn submit(backend: &Backend, approval: Approval) -> Approval {
    match backend.submit(approval).await.expect("submit") {
        SubmitOutcome::Created(a) => a,
        SubmitOutcome::Existing(a) => panic!("expected a new record, found {a:?}"),
    }
}

pub async fn submit_then_get_round_trips(backend: Backend) {
    let tenant = fresh_tenant("roundtrip");
    let created = submit(&backend, pending(&tenant, "req-1", HOUR)).await;
    let read = backend.get(&tenant, &id("req-1")).await.expect("get");
    assert_eq!(
        read.as_ref(),
        Some(&created),
        "a read returns exactly what was parked"
    );
    assert_eq!(
        created.action["n"],
        json!(12345678901234567_u64),
        "numbers keep every digit"
    );
}

pub async fn resubmit_returns_the_existing_record(backend: Backend) {
    let tenant = fresh_tenant("resubmit");
    let first = submit(&backend, pending(&tenant, "req-1", HOUR)).await;
    let mut again = pending(&tenant, "req-1", HOUR);
    again
        .action
        .insert("resource".into(), json!("something-else"));
    match backend.submit(again).await.expect("resubmit") {
        SubmitOutcome::Existing(existing) => assert_eq!(existing, first),
        other => panic!("a second submit must not park a second approval: {other:?}"),
    }
}

pub async fn unknown_id_is_none_and_not_found(backend: Backend) {
    let tenant = fresh_tenant("unknown");
    assert_eq!(backend.get(&tenant, &id("nope")).await.expect("get"), None);
    let outcome = backend
        .decide(&tenant, &id("nope"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    assert_eq!(outcome, DecisionOutcome::NotFound);
    let waited = backend
        .wait_for_decision(&tenant, &id("nope"), Duration::from_secs(1))
        .await
        .expect("wait");
    assert_eq!(waited, None);
}

pub async fn first_decision_wins(backend: Backend) {
    let tenant = fresh_tenant("firstwins");
    submit(&backend, pending(&tenant, "req-1", HOUR)).await;
    let won = backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    let DecisionOutcome::Decided(decided) = won else {
        panic!("first decision must win: {won:?}")
    };
    assert_eq!(decided.status, Status::Accepted);
    let late = backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Reject, "bob"))
        .await
        .expect("decide");
    assert_eq!(late, DecisionOutcome::AlreadyDecided(decided.clone()));
    let read = backend.get(&tenant, &id("req-1")).await.expect("get");
    assert_eq!(read, Some(decided), "the stored decision is the winner's");
}

pub async fn reject_records_decider_and_reason(backend: Backend) {
    let tenant = fresh_tenant("reject");
    let parked = submit(&backend, pending(&tenant, "req-1", HOUR)).await;
    let request = decision(Verdict::Reject, "bob");
    let outcome = backend
        .decide(&tenant, &id("req-1"), request.clone())
        .await
        .expect("decide");
    let DecisionOutcome::Decided(decided) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(decided.status, Status::Rejected);
    assert_eq!(decided.decided_by.as_deref(), Some("bob"));
    assert_eq!(decided.decision_reason, request.reason);
    assert_eq!(decided.decided_at, Some(request.at));
    assert_eq!(
        (decided.action, decided.context),
        (parked.action, parked.context)
    );
}

pub async fn self_approval_is_refused_and_stays_pending(backend: Backend) {
    let tenant = fresh_tenant("selfapproval");
    let parked = submit(&backend, pending(&tenant, "req-1", HOUR)).await;
    let outcome = backend
        .decide(
            &tenant,
            &id("req-1"),
            decision(Verdict::Accept, &parked.submitted_by),
        )
        .await
        .expect("decide");
    assert_eq!(outcome, DecisionOutcome::SelfApproval);
    let read = backend.get(&tenant, &id("req-1")).await.expect("get");
    assert_eq!(read.map(|a| a.status), Some(Status::Pending));
}

pub async fn forty_concurrent_decisions_have_one_winner(backend: Backend) {
    let tenant = fresh_tenant("race");
    for round in 0..5 {
        let approval_id = id(&format!("req-{round}"));
        submit(&backend, pending(&tenant, approval_id.as_str(), HOUR)).await;
        let racers = (0..40).map(|n| {
            let (backend, tenant, approval_id) =
                (backend.clone(), tenant.clone(), approval_id.clone());
            let verdict = if n % 2 == 0 {
                Verdict::Accept
            } else {
                Verdict::Reject
            };
            tokio::spawn(async move {
                let by = format!("reviewer-{n}");
                backend
                    .decide(&tenant, &approval_id, decision(verdict, &by))
                    .await
            })
        });
        let mut winners = Vec::new();
        for racer in racers.collect::<Vec<_>>() {
            match racer.await.expect("join").expect("decide") {
                DecisionOutcome::Decided(a) => winners.push(a),
                DecisionOutcome::AlreadyDecided(_) => {}
                other => panic!("unexpected outcome in a race: {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        let stored = backend.get(&tenant, &approval_id).await.expect("get");
        assert_eq!(
            stored.as_ref(),
            winners.first(),
            "the stored decision is the winner's"
        );
    }
}

pub async fn waiter_wakes_on_decision(backend: Backend) {
    let tenant = fresh_tenant("wake");
    submit(&backend, pending(&tenant, "req-1", HOUR)).await;
    let waiter = {
        let (backend, tenant) = (backend.clone(), tenant.clone());
        tokio::spawn(async move {
            backend
                .wait_for_decision(&tenant, &id("req-1"), Duration::from_secs(20))
                .await
        })
    };
    // The waiter must be parked before the decision for this to test a wake-up rather than a
    // read; a waiter that is not yet subscribed would still see the decision on its first read.
    tokio::task::yield_now().await;
    let decided_at = Instant::now();
    backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    let woke = waiter.await.expect("join").expect("wait").expect("exists");
    assert_eq!(woke.status, Status::Accepted);
    assert!(
        decided_at.elapsed() < Duration::from_secs(1),
        "woken within a second"
    );
}

pub async fn waiter_times_out_while_pending(backend: Backend) {
    let tenant = fresh_tenant("timeout");
    submit(&backend, pending(&tenant, "req-1", HOUR)).await;
    let started = Instant::now();
    let read = backend
        .wait_for_decision(&tenant, &id("req-1"), Duration::from_millis(300))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(read.status, Status::Pending);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited the whole time"
    );
}

pub async fn short_ttl_expires_and_cannot_be_decided(backend: Backend) {
    let tenant = fresh_tenant("expiry");
    let parked = submit(&backend, pending(&tenant, "req-1", Duration::from_secs(1))).await;
    let woke = backend
        .wait_for_decision(&tenant, &id("req-1"), Duration::from_secs(10))
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(
        woke.status,
        Status::Expired,
        "the waiter learns of the expiry"
    );
    let late = Timestamp::now().as_millis() - parked.expires_at.as_millis();
    assert!(
        (0..2000).contains(&late),
        "expired within a second or two of expires_at ({late} ms)"
    );
    let outcome = backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    let DecisionOutcome::Expired(record) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(record.status, Status::Expired);
    // The expiry is recorded once, however many sweeps ran.
    let expired_events = all_audit(&backend, &tenant)
        .await
        .into_iter()
        .filter(|e| e.kind == AuditKind::Expired)
        .count();
    assert_eq!(expired_events, 1);
    let listed = backend
        .list(&tenant, Status::Expired, None, 10)
        .await
        .expect("list");
    assert_eq!(
        listed
            .items
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["req-1"]
    );
    let pending_left = backend
        .list(&tenant, Status::Pending, None, 10)
        .await
        .expect("list");
    assert!(pending_left.items.is_empty());
}

pub async fn list_pages_visit_each_approval_once_oldest_first(backend: Backend) {
    let tenant = fresh_tenant("paging");
    let base = Timestamp::now();
    let mut expected = Vec::new();
    for n in 0..23 {
        let mut approval = pending(&tenant, &format!("req-{n:02}"), HOUR);
        // Several share a submission instant so that ties are paged by id.
        approval.submitted_at = Timestamp::from_millis(base.as_millis() - 60_000 + (n / 3) * 1000);
        expected.push(approval.id.clone());
        submit(&backend, approval).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = backend
            .list(&tenant, Status::Pending, cursor.as_deref(), 5)
            .await
            .expect("list");
        assert!(page.items.len() <= 5);
        seen.extend(page.items.into_iter().map(|a| a.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    let bad = backend
        .list(&tenant, Status::Pending, Some("not-a-cursor"), 5)
        .await;
    assert!(
        matches!(bad, Err(crate::BackendError::InvalidCursor)),
        "{bad:?}"
    );
}

pub async fn list_filters_by_status(backend: Backend) {
    let tenant = fresh_tenant("bystatus");
    for n in 0..3 {
        submit(&backend, pending(&tenant, &format!("req-{n}"), HOUR)).await;
    }
    backend
        .decide(&tenant, &id("req-0"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Reject, "alice"))
        .await
        .expect("decide");
    let ids = |page: crate::Page<Approval>| {
        page.items
            .into_iter()
            .map(|a| a.id.to_string())
            .collect::<Vec<_>>()
    };
    let accepted = backend
        .list(&tenant, Status::Accepted, None, 10)
        .await
        .expect("list");
    let rejected = backend
        .list(&tenant, Status::Rejected, None, 10)
        .await
        .expect("list");
    let pending_now = backend
        .list(&tenant, Status::Pending, None, 10)
        .await
        .expect("list");
    assert_eq!(ids(accepted), ["req-0"]);
    assert_eq!(ids(rejected), ["req-1"]);
    assert_eq!(ids(pending_now), ["req-2"]);
}

pub async fn pending_stats_count_and_age(backend: Backend) {
    let tenant = fresh_tenant("stats");
    let now = Timestamp::now();
    for (n, age_minutes) in [(0, 0_i64), (1, 2), (2, 10), (3, 30)] {
        let mut approval = pending(&tenant, &format!("req-{n}"), HOUR);
        approval.submitted_at = Timestamp::from_millis(now.as_millis() - age_minutes * 60_000);
        submit(&backend, approval).await;
    }
    backend
        .decide(&tenant, &id("req-3"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    let bounds = [
        Duration::from_secs(60),
        Duration::from_secs(300),
        Duration::from_secs(3600),
    ];
    let stats = backend.pending_stats(&bounds, now).await.expect("stats");
    let mine = stats
        .tenants
        .iter()
        .find(|t| t.tenant == tenant)
        .expect("tenant listed");
    assert_eq!(mine.count, 3, "decided approvals are not pending");
    assert_eq!(mine.le, [1, 2, 3]);
    assert!(
        (mine.age_sum_seconds - 720.0).abs() < 1.0,
        "sum {}",
        mine.age_sum_seconds
    );
}

pub async fn scan_and_import_carry_records_over(backend: Backend) {
    let source = fresh_tenant("scan");
    submit(&backend, pending(&source, "keep-pending", HOUR)).await;
    submit(&backend, pending(&source, "to-accept", HOUR)).await;
    backend
        .decide(
            &source,
            &id("to-accept"),
            decision(Verdict::Accept, "alice"),
        )
        .await
        .expect("decide");

    let mut scanned = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = backend.scan(cursor.as_deref(), 100).await.expect("scan");
        scanned.extend(page.items.into_iter().filter(|a| a.tenant == source));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    scanned.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(scanned.len(), 2, "{scanned:?}");

    // Importing into another tenant reproduces each record as it was.
    let target = fresh_tenant("import");
    for record in &scanned {
        let mut moved = record.clone();
        moved.tenant = target.clone();
        assert_eq!(
            backend.import(moved.clone()).await.expect("import"),
            ImportOutcome::Imported
        );
        assert_eq!(
            backend.import(moved.clone()).await.expect("import"),
            ImportOutcome::AlreadyPresent
        );
        let read = backend.get(&target, &moved.id).await.expect("get");
        assert_eq!(read, Some(moved));
    }
    let accepted = backend
        .list(&target, Status::Accepted, None, 10)
        .await
        .expect("list");
    assert_eq!(accepted.items.len(), 1);
    let still_pending = backend
        .list(&target, Status::Pending, None, 10)
        .await
        .expect("list");
    assert_eq!(still_pending.items.len(), 1);
}

pub async fn audit_records_the_lifecycle(backend: Backend) {
    let tenant = fresh_tenant("audit");
    submit(&backend, pending(&tenant, "req-1", HOUR)).await;
    backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Reject, "bob"))
        .await
        .expect("decide");
    let events = all_audit(&backend, &tenant).await;
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [AuditKind::Submitted, AuditKind::Rejected]);
    assert_eq!(events[1].actor, "bob");
    assert!(events
        .iter()
        .all(|e| e.approval_id.as_str() == "req-1" && e.tenant == tenant));
    let later = backend
        .audit(&tenant, Some(Timestamp::now().plus(HOUR)), None, 10)
        .await
        .expect("audit");
    assert!(later.items.is_empty(), "`since` filters");
}

pub async fn tenants_are_isolated(backend: Backend) {
    let (a, b) = (fresh_tenant("tenant-a"), fresh_tenant("tenant-b"));
    submit(&backend, pending(&a, "same-id", HOUR)).await;
    assert_eq!(backend.get(&b, &id("same-id")).await.expect("get"), None);
    submit(&backend, pending(&b, "same-id", HOUR)).await;
    backend
        .decide(&a, &id("same-id"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    let other = backend
        .get(&b, &id("same-id"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(other.status, Status::Pending);
}

async fn all_audit(backend: &Backend, tenant: &TenantId) -> Vec<crate::AuditEvent> {
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
