//! Accept and reject: the first reviewer wins, in the contract's order of checks.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{assert_problem, Harness};

contract_tests!(
    accept_records_the_token_subject_not_the_body,
    reject_without_a_body_is_fine,
    a_second_decision_is_409_with_the_current_record,
    unknown_is_404_and_self_approval_is_403,
    forty_concurrent_decisions_have_exactly_one_winner,
    expired_comes_before_self_approval,
);

async fn accept_records_the_token_subject_not_the_body(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{tenant}/approvals/req-1/accept"),
            Some(&app.tokens.reviewer),
        )
        .json(&json!({"reason": "fine", "decided_by": "someone-else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let decided: Value = response.json().await.unwrap();
    assert_eq!(decided["status"], "accepted");
    assert_eq!(decided["decided_by"], "alice");
    assert_eq!(decided["decision_reason"], "fine");
    assert!(decided["decided_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let read: Value = app
        .get("req-1", &app.tokens.agent)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read, decided, "agents see what reviewers see");
    // On Redis: readable for the decided-retention (24h by default) from the decision on.
    if let Some(redis) = &app.redis {
        let mut conn = redis.connection().await;
        let ttl: i64 = redis::cmd("TTL")
            .arg("approval:acme:req-1")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            (86_390..=86_400).contains(&ttl),
            "decided record kept for the retention: {ttl}"
        );
    }
}

async fn reject_without_a_body_is_fine(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{tenant}/approvals/req-1/reject"),
            Some(&app.tokens.reviewer),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let decided: Value = response.json().await.unwrap();
    assert_eq!(decided["status"], "rejected");
    assert!(decided["decision_reason"].is_null());
}

async fn a_second_decision_is_409_with_the_current_record(h: Harness) {
    let app = h.spawn().await;
    app.park("req-1").await;
    let won: Value = app
        .decide("req-1", "reject", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    for (verdict, token) in [
        ("accept", &app.tokens.reviewer2),
        ("reject", &app.tokens.reviewer),
    ] {
        let body = assert_problem(
            app.decide("req-1", verdict, token).await,
            StatusCode::CONFLICT,
            "already_decided",
        )
        .await;
        assert_eq!(body["approval"], won);
    }
}

async fn unknown_is_404_and_self_approval_is_403(h: Harness) {
    let app = h.spawn().await;
    assert_problem(
        app.decide("nope", "accept", &app.tokens.reviewer).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // An admin may submit and decide, but not its own submission.
    app.park_as(&app.tokens.admin, "mine").await;
    assert_problem(
        app.decide("mine", "accept", &app.tokens.admin).await,
        StatusCode::FORBIDDEN,
        "self_approval",
    )
    .await;
    let still: Value = app
        .get("mine", &app.tokens.admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["status"], "pending");
    // Already decided comes before self-approval.
    app.decide("mine", "accept", &app.tokens.reviewer).await;
    assert_problem(
        app.decide("mine", "reject", &app.tokens.admin).await,
        StatusCode::CONFLICT,
        "already_decided",
    )
    .await;
}

/// The contract's order of checks: an approval its submitter tries to decide after it expired
/// is `410 expired` (what the submitter needs to know), not `403 self_approval`.
async fn expired_comes_before_self_approval(h: Harness) {
    let tenant = h.tenant.clone();
    let app = h
        .spawn_with(|s| {
            s.approvals
                .tenant_ttl
                .insert(tenant.clone(), Duration::from_secs(2));
        })
        .await;
    app.park_as(&app.tokens.admin, "mine-expiring").await;
    let waited: Value = app
        .get_json(
            &format!("/v1/tenants/{tenant}/approvals/mine-expiring/decision?wait_seconds=15"),
            &app.tokens.admin,
        )
        .await;
    assert_eq!(waited["status"], "expired", "{waited}");
    assert_problem(
        app.decide("mine-expiring", "accept", &app.tokens.admin)
            .await,
        StatusCode::GONE,
        "expired",
    )
    .await;
}

async fn forty_concurrent_decisions_have_exactly_one_winner(h: Harness) {
    let app = Arc::new(h.spawn().await);
    for round in 0..5 {
        let id = format!("race-{round}");
        app.park(&id).await;
        let calls = (0..40).map(|n| {
            let (app, id) = (app.clone(), id.clone());
            async move {
                let (verdict, token) = match n % 2 {
                    0 => ("accept", &app.tokens.reviewer),
                    _ => ("reject", &app.tokens.reviewer2),
                };
                let response = app.decide(&id, verdict, token).await;
                let status = response.status();
                (status, response.json::<Value>().await.unwrap())
            }
        });
        let results = join_all(calls).await;
        let winners: Vec<_> = results
            .iter()
            .filter(|(s, _)| *s == StatusCode::OK)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert!(results.iter().all(|(s, b)| *s == StatusCode::OK
            || (*s == StatusCode::CONFLICT && b["code"] == "already_decided")));
        let stored: Value = app
            .get(&id, &app.tokens.reviewer)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            &stored, &winners[0].1,
            "the stored decision is the winner's"
        );
        for (status, body) in &results {
            if *status == StatusCode::CONFLICT {
                assert_eq!(body["approval"], stored);
            }
        }
    }
}

/// A decision on a value that cannot be settled (corrupt, or written over by something else)
/// is answered as a read of it is: 500 `internal`, counted, and the value left as it was. It
/// used to fail inside the script and answer 503 `backend_unavailable`, which a client
/// retries in vain.
#[tokio::test]
async fn a_decision_on_an_unreadable_value_is_an_error_not_an_outage() {
    let app = crate::support::TestApp::spawn().await;
    let mut conn = app.redis().connection().await;
    let counted_before = corrupt_errors(&app).await;
    let far = 32_503_680_000_000_i64; // the year 3000, in ms
    let values = [
        ("not-json", "{not json".to_owned()),
        ("a-number", "5".to_owned()),
        (
            "no-id",
            r#"{"status":"pending","expires_ms":1,"submitted_ms":1}"#.to_owned(),
        ),
        (
            // Readable fields, but not the head this service writes first.
            "no-head",
            format!(
                r#"{{"submitted_by":"x","status":"pending","id":"no-head","expires_ms":{far},"submitted_ms":1}}"#
            ),
        ),
    ];
    for (id, value) in &values {
        let () = redis::cmd("SET")
            .arg(format!("approval:{}:{id}", app.tenant))
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
        let read = app.get(id, &app.tokens.reviewer).await;
        assert_problem(read, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
        for verdict in ["accept", "reject"] {
            let decided = app.decide(id, verdict, &app.tokens.reviewer).await;
            assert_problem(decided, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
        }
        let kept: Option<String> = redis::cmd("GET")
            .arg(format!("approval:{}:{id}", app.tenant))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(kept.as_ref(), Some(value), "{id} left as it was");
    }
    // Two decisions and a read per value, each counted as unreadable data. The recorder is
    // the process's, shared with tests running beside this one: at least ours are there.
    let counted = corrupt_errors(&app).await;
    assert!(
        counted - counted_before >= values.len() as u64 * 3,
        "{counted_before} -> {counted}"
    );
}

/// `approvals_backend_errors_total` of kind `corrupt` answered to requests, in this process.
async fn corrupt_errors(app: &crate::support::TestApp) -> u64 {
    let text = app.metrics().await;
    text.lines()
        .filter(|l| {
            l.starts_with("approvals_backend_errors_total{")
                && l.contains("kind=\"corrupt\"")
                && l.contains("source=\"request\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
