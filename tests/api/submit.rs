//! POST /v1/tenants/{tenant}/approvals: the policy's three answers and idempotency.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use std::time::{Duration, Instant};

use crate::support::{assert_problem, sensitive_read, Harness, TestApp};

contract_tests!(
    require_approval_parks_with_201_and_location,
    allow_and_deny_park_nothing,
    resubmitting_returns_the_existing_record_with_200,
    same_request_id_with_other_content_is_a_conflict,
    request_id_defaults_to_a_fresh_unique_id,
    numbers_and_nesting_in_the_action_survive_exactly,
);

async fn require_approval_parks_with_201_and_location(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    let response = app.submit("req-1", sensitive_read()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/tenants/{tenant}/approvals/req-1"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["decision"], "require_approval");
    assert!(body["reasons"].as_array().is_some_and(|r| !r.is_empty()));
    assert!(body["policy_version"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let approval = &body["approval"];
    assert_eq!(approval["id"], "req-1");
    assert_eq!(approval["tenant"], tenant.as_str());
    assert_eq!(approval["status"], "pending");
    assert_eq!(approval["submitted_by"], "agent-1");
    assert_eq!(
        approval["agent_id"], "agent-1",
        "agent_id defaults to the token's subject"
    );
    assert_eq!(approval["action"], sensitive_read());
    assert_eq!(approval["context"], json!({"ticket": "T-1"}));
    assert_eq!(approval["reasons"], body["reasons"]);
    for null_field in ["decided_at", "decided_by", "decision_reason"] {
        assert!(approval[null_field].is_null());
    }
    // 24h default TTL, RFC 3339 UTC with milliseconds.
    let submitted = approval["submitted_at"].as_str().unwrap();
    let expires = approval["expires_at"].as_str().unwrap();
    assert!(
        submitted.ends_with('Z') && submitted.len() == 24,
        "{submitted}"
    );
    let ms = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    assert_eq!(ms(expires) - ms(submitted), 86_400_000);

    let read: Value = app
        .get("req-1", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(&read, approval, "GET returns the parked approval");

    // On Redis: under the ADR key, action stored as `agent_action`, TTL = the lifetime.
    if let Some(redis) = &app.redis {
        let mut conn = redis.connection().await;
        let raw: String = redis::cmd("GET")
            .arg("approval:acme:req-1")
            .query_async(&mut conn)
            .await
            .unwrap();
        let stored: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(stored["agent_action"], sensitive_read());
        assert_eq!(stored["status"], "pending");
        let ttl: i64 = redis::cmd("TTL")
            .arg("approval:acme:req-1")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((86_400 - 5..=86_400).contains(&ttl), "ttl {ttl}");
        // Its shadow outlives it by the expired-retention, for a sweeper that comes late.
        let shadow_ttl: i64 = redis::cmd("TTL")
            .arg("approvals:shadow:acme:req-1")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            (2 * 86_400 - 5..=2 * 86_400).contains(&shadow_ttl),
            "shadow ttl {shadow_ttl}"
        );
    }
}

async fn allow_and_deny_park_nothing(h: Harness) {
    let app = h.spawn().await;
    let allowed = app
        .submit(
            "req-allow",
            json!({"type": "document_read", "resource": "wiki/onboarding"}),
        )
        .await;
    assert_eq!(allowed.status(), StatusCode::OK);
    let body: Value = allowed.json().await.unwrap();
    assert_eq!(body["decision"], "allow");
    assert!(body.get("approval").is_none());
    assert!(!body["reasons"].as_array().unwrap().is_empty());

    let denied = app
        .submit(
            "req-deny",
            json!({"type": "document_delete", "resource": "wiki/onboarding"}),
        )
        .await;
    assert_eq!(denied.status(), StatusCode::OK);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["decision"], "deny");
    let reasons = body["reasons"].to_string().to_lowercase();
    assert!(reasons.contains("read-only"), "{reasons}");

    for id in ["req-allow", "req-deny"] {
        assert_problem(
            app.get(id, &app.tokens.reviewer).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    app.assert_nothing_stored().await;
}

async fn resubmitting_returns_the_existing_record_with_200(h: Harness) {
    let app = h.spawn().await;
    let first = app.park("req-1").await;
    let again = app.submit("req-1", sensitive_read()).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.headers().get("location").is_none());
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["decision"], "require_approval");
    assert_eq!(body["approval"], first);

    // Still idempotent once decided: the decided record comes back.
    app.decide("req-1", "accept", &app.tokens.reviewer).await;
    let after: Value = app
        .submit("req-1", sensitive_read())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["approval"]["status"], "accepted");
}

async fn same_request_id_with_other_content_is_a_conflict(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    let other_action = app
        .submit(
            "req-1",
            json!({"type": "document_read", "resource": "finance/q4"}),
        )
        .await;
    assert_problem(other_action, StatusCode::CONFLICT, "request_id_conflict").await;
    let other_context = app
        .request(Method::POST, &format!("/v1/tenants/{tenant}/approvals"), Some(&app.tokens.agent))
        .json(&json!({"request_id": "req-1", "action": sensitive_read(), "context": {"ticket": "T-2"}}))
        .send()
        .await
        .unwrap();
    assert_problem(other_context, StatusCode::CONFLICT, "request_id_conflict").await;
    let other_agent = app
        .request(Method::POST, &format!("/v1/tenants/{tenant}/approvals"), Some(&app.tokens.agent))
        .json(&json!({"request_id": "req-1", "agent_id": "someone-else", "action": sensitive_read(), "context": {"ticket": "T-1"}}))
        .send()
        .await
        .unwrap();
    assert_problem(other_agent, StatusCode::CONFLICT, "request_id_conflict").await;
}

async fn request_id_defaults_to_a_fresh_unique_id(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = app
            .request(
                Method::POST,
                &format!("/v1/tenants/{tenant}/approvals"),
                Some(&app.tokens.agent),
            )
            .json(&json!({"action": sensitive_read()}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["approval"]["context"],
            json!({}),
            "context defaults to an empty object"
        );
        ids.push(body["approval"]["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1]);
}

async fn numbers_and_nesting_in_the_action_survive_exactly(h: Harness) {
    let app = h.spawn().await;
    let action = json!({"type": "document_read", "resource": "finance/ledger", "amount": 12345678901234567_u64,
        "ratio": 0.1, "tags": [], "meta": {}, "deep": {"a": [1, {"b": null}]}});
    let response = app.submit("req-1", action.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    app.decide("req-1", "reject", &app.tokens.reviewer).await;
    let read: Value = app
        .get("req-1", &app.tokens.agent)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        read["action"], action,
        "a decision never rewrites the action"
    );
}

/// Inputs beyond the limits are refused before the policy runs, with a code of their own,
/// and park nothing.
#[tokio::test]
async fn inputs_beyond_the_limits_are_422_before_the_policy_runs() {
    let app = TestApp::spawn().await;
    let mut deep = json!("bottom");
    for _ in 0..40 {
        deep = json!({ "d": deep });
    }
    let cases = [
        json!({"type": "aB".repeat(31_000)}),
        json!({"type": "document_read", "tags": vec!["t"; 1_000]}),
        json!({"type": "document_read", "deep": deep}),
    ];
    for (n, action) in cases.into_iter().enumerate() {
        let response = app.submit(&format!("big-{n}"), action).await;
        let problem = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "input_too_large",
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().starts_with("action"),
            "{problem}"
        );
    }
    // Beside `action`: its `context`, and the `agent_id` the policy sees and the record keeps.
    let beside = [
        (
            "context",
            json!({"action": {"type": "document_read"}, "context": {"note": "n".repeat(5_000)}}),
        ),
        (
            "agent_id",
            json!({"action": sensitive_read(), "agent_id": "a".repeat(60_000)}),
        ),
    ];
    for (field, body) in beside {
        let response = app
            .request(
                Method::POST,
                &format!("/v1/tenants/{}/approvals", app.tenant),
                Some(&app.tokens.agent),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "input_too_large",
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().starts_with(field),
            "{problem}"
        );
    }
    app.assert_nothing_stored().await;
}

/// A request parked under the limits of the time is a repeat after they were lowered (an
/// instance restarted with a smaller `limits.max_object_bytes`): its retry gets its record,
/// `200`, as any repeat does, not a `422` saying nothing was parked. A new request of the same
/// size is still refused.
#[tokio::test]
async fn a_request_parked_before_the_limits_were_lowered_is_still_a_repeat() {
    let app = TestApp::spawn().await;
    // About 10 KB: within the default 16 KiB, past the 4 KiB the second instance allows.
    let notes: serde_json::Map<String, Value> = (0..5)
        .map(|n| (format!("note-{n}"), json!("n".repeat(2_000))))
        .collect();
    let body = json!({"request_id": "roomy", "action": sensitive_read(), "context": notes});
    let submit = |base: String, body: Value| {
        app.http
            .post(format!("{base}/v1/tenants/{}/approvals", app.tenant))
            .bearer_auth(&app.tokens.agent)
            .json(&body)
            .send()
    };
    let parked = submit(app.base.clone(), body.clone()).await.unwrap();
    assert_eq!(parked.status(), StatusCode::CREATED);
    let (smaller, _stop) = app
        .second_instance_with(|s| s.limits.max_object_bytes = 4_096)
        .await;

    let retried = submit(smaller.clone(), body.clone()).await.unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["approval"]["id"], "roomy", "{retried}");
    assert_eq!(retried["approval"]["status"], "pending", "{retried}");

    let mut other = body.clone();
    other["request_id"] = json!("roomy-2");
    let refused = submit(smaller.clone(), other).await.unwrap();
    assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "input_too_large").await;
    // The same id with other content is refused for its size, not answered with the record.
    let mut changed = body;
    changed["context"]["note-0"] = json!("m".repeat(2_000));
    let refused = submit(smaller, changed).await.unwrap();
    assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "input_too_large").await;
}

/// Pathological submits, many at once, neither starve unrelated requests nor change the
/// verdict: the policy runs off the request workers, bounded, with a budget that is the same
/// idle or busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_submits_keep_health_answering_and_verdicts_the_same() {
    let app = TestApp::spawn().await;
    // As expensive as the limits let an action type be for the default bundle's word split.
    let heavy = || json!({"type": "aB".repeat(1_000), "resource": "finance/x"});
    let alone: Value = app.submit("alone", heavy()).await.json().await.unwrap();
    let storm: Vec<_> = (0..16)
        .map(|_| {
            let request = app
                .request(
                    Method::POST,
                    &format!("/v1/tenants/{}/approvals", app.tenant),
                    Some(&app.tokens.agent),
                )
                .json(&json!({"action": heavy()}));
            tokio::spawn(
                async move { request.send().await.unwrap().json::<Value>().await.unwrap() },
            )
        })
        .collect();
    let started = Instant::now();
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Policy evaluation on the request workers made this 12.9 s: the bound tells "blocked
    // behind the policy" from "answered", with room for a loaded CI machine.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // An unrelated read is answered too, with what the submit stored.
    let read = app.get("alone", &app.tokens.reviewer).await;
    if alone["decision"] == "require_approval" {
        assert_eq!(read.status(), StatusCode::OK);
        let record: Value = read.json().await.unwrap();
        assert_eq!(record["action"], heavy());
        assert_eq!(record["status"], "pending");
    } else {
        assert_eq!(read.status(), StatusCode::NOT_FOUND);
    }
    for answer in storm {
        let answer = answer.await.unwrap();
        assert_eq!(answer["decision"], alone["decision"], "{answer}");
        assert_eq!(answer["reasons"], alone["reasons"], "{answer}");
    }
}

/// A tenant at its pending cap gets 429 for what would park; what the policy answers at once
/// still answers, and other tenants are not affected.
#[tokio::test]
async fn a_tenant_at_its_pending_cap_gets_429() {
    let app = TestApp::spawn_with(|s| s.approvals.max_pending_per_tenant = 2).await;
    app.park("one").await;
    app.park("two").await;
    let tenant = app.tenant.clone();
    app.metrics_until(&app.base, Duration::from_secs(10), "two pending", |t| {
        t.contains(&format!("approvals_pending{{tenant=\"{tenant}\"}} 2"))
    })
    .await;
    let response = app.submit("three", sensitive_read()).await;
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "too_many_pending").await;
    // An agent that lost the answer to a submit that did park retries it: it gets the record
    // it parked, not a 429 saying nothing was parked.
    let retried = app.submit("two", sensitive_read()).await;
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["approval"]["id"], "two");
    assert_eq!(retried["approval"]["status"], "pending");
    let allowed = app
        .submit(
            "read",
            json!({"type": "document_read", "resource": "docs/handbook.md"}),
        )
        .await;
    assert_eq!(allowed.status(), StatusCode::OK);
    app.decide("one", "accept", &app.tokens.reviewer).await;
    app.metrics_until(&app.base, Duration::from_secs(10), "one pending", |t| {
        t.contains(&format!("approvals_pending{{tenant=\"{tenant}\"}} 1"))
    })
    .await;
    assert_eq!(
        app.submit("three", sensitive_read()).await.status(),
        StatusCode::CREATED
    );
}
