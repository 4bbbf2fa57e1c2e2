//! Conformance: one approval's life — submit, read, decide, wait, expire.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{all_audit, decision, fresh_tenant, id, pending, submit, Backend, HOUR};
use crate::{AuditKind, DecisionOutcome, Status, SubmitOutcome, Timestamp, Verdict};

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
        .wait_for_decision(
            &tenant,
            &id("nope"),
            Duration::from_secs(1),
            crate::no_stop(),
        )
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
                .wait_for_decision(
                    &tenant,
                    &id("req-1"),
                    Duration::from_secs(20),
                    crate::no_stop(),
                )
                .await
        })
    };
    // The waiter must be parked before the decision for this to test a wake-up rather than a
    // read: one that had not read yet would see the decision on its first read.
    let parked = Instant::now() + Duration::from_secs(10);
    while backend.status().waiting.is_some_and(|n| n == 0) {
        assert!(Instant::now() < parked, "the waiter never parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        backend.status().waiting.is_some(),
        "every engine counts its parked long-polls"
    );
    backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    // From the decision's answer, not its start: on Temporal (and dual) the decide itself is a
    // workflow update that a loaded worker may take seconds over. A waiter that missed the
    // wake-up would answer only at the end of its 20 s.
    let decided_at = Instant::now();
    let woke = waiter.await.expect("join").expect("wait").expect("exists");
    assert_eq!(woke.status, Status::Accepted);
    assert!(
        decided_at.elapsed() < Duration::from_secs(5),
        "woken within seconds of the decision, not at the end of the wait"
    );
}

pub async fn waiter_times_out_while_pending(backend: Backend) {
    let tenant = fresh_tenant("timeout");
    submit(&backend, pending(&tenant, "req-1", HOUR)).await;
    let started = Instant::now();
    let read = backend
        .wait_for_decision(
            &tenant,
            &id("req-1"),
            Duration::from_millis(300),
            crate::no_stop(),
        )
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
        .wait_for_decision(
            &tenant,
            &id("req-1"),
            Duration::from_secs(10),
            crate::no_stop(),
        )
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(
        woke.status,
        Status::Expired,
        "the waiter learns of the expiry"
    );
    let late = Timestamp::now().as_millis() - parked.expires_at.as_millis();
    // A few seconds' slack: a loaded worker (Temporal) fires its timer late, and dual's submit
    // waits for its mirror. A sweeper that lost the expiry would answer at the 10 s wait's end.
    assert!(
        (0..5000).contains(&late),
        "expired within seconds of expires_at ({late} ms)"
    );
    let outcome = backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    let DecisionOutcome::Expired(record) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(record.status, Status::Expired);
    // The expiry is recorded once, however many sweeps ran (its event may show a moment
    // after readers see the expiry: it is stamped when recorded).
    let count_expired = || async {
        all_audit(&backend, &tenant)
            .await
            .into_iter()
            .filter(|e| e.kind == AuditKind::Expired)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_expired().await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count_expired().await, 1);
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
