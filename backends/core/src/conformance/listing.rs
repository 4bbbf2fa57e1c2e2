//! Conformance: many approvals — listing, pending figures, scan and import, audit, tenants.

use std::time::{Duration, Instant};

use super::{all_audit, decision, fresh_tenant, id, pending, submit, Backend, HOUR};
use crate::{
    Approval, ApprovalId, AuditEntry, AuditEvent, AuditKind, DecisionOutcome, ImportOutcome,
    PolicyAnswer, Status, SubmitOutcome, Timestamp, Verdict, MIGRATION_ACTOR,
};

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

/// The decision log: a parked submit's event carries what `park` was given (a shadow verdict
/// too), and an `allow` or `deny` that parked nothing is recorded as it was built; both read
/// back in the order recorded, and a repeated park records nothing.
pub async fn the_decision_log_records_every_verdict(backend: Backend) {
    let tenant = fresh_tenant("decisions");
    let allowed = pending(&tenant, "allowed-1", HOUR);
    let allow = PolicyAnswer {
        decision: "allow".into(),
        reasons: vec!["reads are fine".into()],
        policy_version: "sha256:active".into(),
    };
    let candidate = PolicyAnswer {
        decision: "require_approval".into(),
        reasons: vec!["the candidate holds reads".into()],
        policy_version: "sha256:candidate".into(),
    };
    let answered = AuditEntry::answered(&allowed, &allow, Some(&candidate));
    backend.record(answered.clone()).await.expect("record");

    let parked = pending(&tenant, "parked-1", HOUR);
    let submitted = AuditEntry::parked(&parked, Some(&candidate));
    let created = backend
        .park(parked.clone(), submitted.clone())
        .await
        .expect("park");
    assert!(matches!(created, SubmitOutcome::Created(_)), "{created:?}");
    let again = backend
        .park(parked.clone(), submitted.clone())
        .await
        .expect("park again");
    assert!(matches!(again, SubmitOutcome::Existing(_)), "{again:?}");

    let events = all_audit(&backend, &tenant).await;
    let entries: Vec<AuditEntry> = events.iter().map(AuditEvent::entry).collect();
    assert_eq!(entries.len(), 2, "{entries:#?}");
    // Engines may restamp an event with when they recorded it; the facts are the same.
    for (got, want) in entries.iter().zip([&answered, &submitted]) {
        assert_eq!(got.kind, want.kind);
        assert_eq!(got.approval_id, want.approval_id);
        assert_eq!(got.actor, want.actor);
        assert_eq!(got.details, want.details);
    }
    assert_eq!(entries[0].details["decision"], "allow");
    assert_eq!(entries[0].details["shadow"]["agrees"], false);
    assert_eq!(
        entries[1].details["action_digest"],
        crate::action_digest(&parked.action)
    );
}

/// Every event of a whole lifecycle (parked, accepted, rejected, expired, imported), field by
/// field with its details, is the event core builds for it: engines add ids, nothing else.
pub async fn audit_events_are_the_core_events(backend: Backend) {
    let tenant = fresh_tenant("events");
    let to_accept = submit(&backend, pending(&tenant, "to-accept", HOUR)).await;
    let to_reject = submit(&backend, pending(&tenant, "to-reject", HOUR)).await;
    let to_expire = submit(
        &backend,
        pending(&tenant, "to-expire", Duration::from_secs(1)),
    )
    .await;
    let mut settled = Vec::new();
    for (approval, verdict, by) in [
        (&to_accept, Verdict::Accept, "alice"),
        (&to_reject, Verdict::Reject, "bob"),
    ] {
        let outcome = backend
            .decide(&tenant, &approval.id, decision(verdict, by))
            .await
            .expect("decide");
        let DecisionOutcome::Decided(record) = outcome else {
            panic!("{outcome:?}")
        };
        settled.push(record);
    }
    let expired = backend
        .wait_for_decision(
            &tenant,
            &to_expire.id,
            Duration::from_secs(10),
            crate::no_stop(),
        )
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(expired.status, Status::Expired);
    let mut carried = pending(&tenant, "carried", HOUR);
    carried.submitted_at = Timestamp::from_millis(carried.submitted_at.as_millis() - 60_000);
    let import_window = (Timestamp::now(), ());
    assert_eq!(
        backend.import(carried.clone()).await.expect("import"),
        ImportOutcome::Imported
    );
    let import_window = (import_window.0, Timestamp::now());
    // Carried over already decided: its decision was made elsewhere, the import is its only
    // event here (as on every engine).
    let mut carried_decided = pending(&tenant, "carried-decided", HOUR);
    carried_decided.submitted_at =
        Timestamp::from_millis(carried_decided.submitted_at.as_millis() - 120_000);
    carried_decided.status = Status::Accepted;
    carried_decided.decided_at = Some(Timestamp::from_millis(
        carried_decided.submitted_at.as_millis() + 30_000,
    ));
    carried_decided.decided_by = Some("alice".into());
    carried_decided.decision_reason = Some("checked before the move".into());
    assert_eq!(
        backend
            .import(carried_decided.clone())
            .await
            .expect("import"),
        ImportOutcome::Imported
    );

    // The expiry event may be recorded a moment after readers see the expiry (on Temporal, by
    // a worker that may be busy).
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = all_audit(&backend, &tenant).await;
        if events.iter().any(|e| e.kind == AuditKind::Expired) {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "no expiry event within 30 s: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // An event's time is when the engine recorded it (Redis: its stream's clock; an expiry:
    // when it was recorded, past the deadline), so times are checked apart: every field but
    // the time exactly as core builds it, and the export's times never decreasing.
    let untimed = |mut entry: AuditEntry| {
        entry.timestamp = Timestamp::from_millis(0);
        entry
    };
    let of = |id: &ApprovalId| -> Vec<AuditEntry> {
        events
            .iter()
            .filter(|e| &e.approval_id == id)
            .map(|e| untimed(e.entry()))
            .collect()
    };
    assert_eq!(
        of(&to_accept.id),
        [
            untimed(AuditEntry::submitted(&to_accept)),
            untimed(AuditEntry::decided(&settled[0]).expect("decided"))
        ]
    );
    assert_eq!(
        of(&to_reject.id),
        [
            untimed(AuditEntry::submitted(&to_reject)),
            untimed(AuditEntry::decided(&settled[1]).expect("decided"))
        ]
    );
    let expired_events: Vec<_> = events
        .iter()
        .filter(|e| e.approval_id == to_expire.id)
        .collect();
    let [submitted, expiry] = expired_events[..] else {
        panic!("{expired_events:?}")
    };
    assert_eq!(
        untimed(submitted.entry()),
        untimed(AuditEntry::submitted(&to_expire))
    );
    assert!(expiry.timestamp >= to_expire.expires_at, "{expiry:?}");
    assert_eq!(
        expiry.entry(),
        AuditEntry::expired(&to_expire, expiry.timestamp),
        "the deadline is in the details"
    );
    let times: Vec<Timestamp> = events.iter().map(|e| e.timestamp).collect();
    assert!(
        times.windows(2).all(|pair| pair[0] <= pair[1]),
        "exported in the order recorded: {times:?}"
    );
    // A migration's event carries the importer's clock: compare it apart, the rest exactly.
    let [migrated] = of(&carried.id)
        .try_into()
        .expect("one event for the import");
    let kinds: Vec<AuditKind> = of(&carried_decided.id).iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [AuditKind::Migrated],
        "a decision carried over is no decision made here"
    );
    let migrated_at = events
        .iter()
        .find(|e| e.approval_id == carried.id)
        .map(|e| e.timestamp)
        .expect("the import's event");
    let window = (import_window.0.as_millis() - 1_000)..=(import_window.1.as_millis() + 1_000);
    assert!(window.contains(&migrated_at.as_millis()), "{migrated_at}");
    assert_eq!(migrated.actor, MIGRATION_ACTOR);
    assert_eq!(
        migrated,
        untimed(AuditEntry::migrated(&carried, migrated_at))
    );
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "event ids are unique: {ids:?}");
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
