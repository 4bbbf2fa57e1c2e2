//! Listing with cursors, and the audit export.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{Harness, TestApp};

contract_tests!(
    cursors_visit_every_pending_approval_once_oldest_first,
    audit_tells_the_story_oldest_first,
    audit_reads_at_the_ends_of_the_calendar_are_answered,
    a_since_with_an_unencoded_plus_offset_is_read_as_written,
    an_audit_position_of_either_engine_resumes_from_its_instant,
);

/// An audit position saved on one engine resumes on the other, from just before its instant
/// (at least once), across a cutover either way: Temporal refused a Redis event id with 400, as
/// a forgery, so an export resumed after the cutover could not go on.
async fn an_audit_position_of_either_engine_resumes_from_its_instant(h: Harness) {
    let app = h.spawn().await;
    app.park("one").await;
    let path = format!("/v1/tenants/{}/audit", app.tenant);
    // Temporal's audit shows an event a moment after its write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let parked_at = loop {
        let audit = app.get_json(&path, &app.tokens.admin).await;
        if let Some(at) = audit["items"][0]["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
        {
            break at.timestamp_millis();
        }
        assert!(std::time::Instant::now() < deadline, "never in the audit");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // The millisecond before the event, in Redis' shape and in Temporal's.
    for before in [
        format!("{}-7", parked_at - 1),
        format!("{:015}-1-zzz", parked_at - 1),
    ] {
        let rest = app
            .get_json(&format!("{path}?cursor={before}"), &app.tokens.admin)
            .await;
        assert_eq!(rest["items"][0]["approval_id"], "one", "{before}: {rest}");
    }
    // Its own millisecond, in both shapes: at least once.
    for at in [format!("{parked_at}-0"), format!("{parked_at:015}-0-one")] {
        let response = app
            .request(
                Method::GET,
                &format!("{path}?cursor={at}"),
                Some(&app.tokens.admin),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{at}");
    }
}

async fn page(app: &TestApp, query: &str) -> Value {
    let response = app
        .request(
            Method::GET,
            &format!("/v1/tenants/{}/approvals?{query}", app.tenant),
            Some(&app.tokens.reviewer),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn cursors_visit_every_pending_approval_once_oldest_first(h: Harness) {
    let app = h.spawn().await;
    let mut expected = Vec::new();
    for n in 0..12 {
        let id = format!("req-{n:02}");
        app.park(&id).await;
        expected.push(id);
    }
    // Decide two: they leave the pending listing and join their own.
    app.decide("req-03", "accept", &app.tokens.reviewer).await;
    app.decide("req-07", "reject", &app.tokens.reviewer).await;
    expected.retain(|id| id != "req-03" && id != "req-07");

    let mut seen = Vec::new();
    let mut query = "limit=5".to_owned();
    loop {
        let body = page(&app, &query).await;
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 5);
        seen.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        match body["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=5&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    let submitted: Vec<_> = page(&app, "limit=500").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["submitted_at"].as_str().unwrap().to_owned())
        .collect();
    assert!(submitted.windows(2).all(|w| w[0] <= w[1]), "oldest first");
    let accepted = page(&app, "status=accepted").await;
    assert_eq!(accepted["items"][0]["id"], "req-03");
    assert!(accepted["next_cursor"].is_null());
    assert_eq!(
        page(&app, "status=rejected").await["items"][0]["id"],
        "req-07"
    );
}

async fn audit_tells_the_story_oldest_first(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    app.decide("req-1", "accept", &app.tokens.reviewer).await;
    app.park("req-2").await;
    let body: Value = app
        .get_json(
            &format!("/v1/tenants/{tenant}/audit?limit=2"),
            &app.tokens.admin,
        )
        .await;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        (items[0]["kind"].as_str(), items[0]["approval_id"].as_str()),
        (Some("submitted"), Some("req-1"))
    );
    assert_eq!(items[0]["actor"], "agent-1");
    assert_eq!(items[0]["details"]["decision"], "require_approval");
    assert!(items[0]["details"]["reasons"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(
        (items[1]["kind"].as_str(), items[1]["actor"].as_str()),
        (Some("accepted"), Some("alice"))
    );
    for event in items {
        assert_eq!(event["tenant"], tenant.as_str());
        assert!(event["event_id"].is_string() && event["timestamp"].is_string());
    }
    let cursor = body["next_cursor"].as_str().expect("a third event remains");
    let rest: Value = app
        .get_json(
            &format!("/v1/tenants/{tenant}/audit?cursor={cursor}"),
            &app.tokens.admin,
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["approval_id"], "req-2");
    assert!(rest["next_cursor"].is_null());
    let since_future: Value = app
        .get_json(
            &format!("/v1/tenants/{tenant}/audit?since=2999-01-01T00:00:00Z"),
            &app.tokens.admin,
        )
        .await;
    assert!(since_future["items"].as_array().unwrap().is_empty());
}

/// A `since` at the first minute of year 0 or the last of year 9999 is an answer, not an
/// outage: Temporal's visibility parses no year outside those, and its clock margin took the
/// first before year 0 (503 backend_unavailable).
async fn audit_reads_at_the_ends_of_the_calendar_are_answered(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    for (since, events) in [("0000-01-01T00:01:00Z", 1), ("9999-12-31T23:59:59Z", 0)] {
        let page = app
            .get_json(
                &format!("/v1/tenants/{tenant}/audit?since={since}"),
                &app.tokens.admin,
            )
            .await;
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            events,
            "{since}: {page}"
        );
    }
}

/// A `since` with a `+hh:mm` offset pasted into a URL unencoded (curl, a shell script) reads
/// as written: query strings decode `+` as a space, and it was refused `400 invalid_query`
/// although no RFC 3339 timestamp holds a space before its offset.
async fn a_since_with_an_unencoded_plus_offset_is_read_as_written(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    for (since, events) in [
        ("2000-01-01T01:00:00+01:00", 1),
        ("2000-01-01T01:00:00%2B01:00", 1),
        ("9999-12-31T00:00:00+01:00", 0),
    ] {
        let page = app
            .get_json(
                &format!("/v1/tenants/{tenant}/audit?since={since}"),
                &app.tokens.admin,
            )
            .await;
        assert_eq!(
            page["items"].as_array().map(Vec::len),
            Some(events),
            "{since}: {page}"
        );
    }
}

/// Waits (up to 15 s) until the audit at `path` is empty: trimmed by its retention.
async fn until_trimmed(app: &TestApp, path: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(25);
    loop {
        let events = app.get_json(path, &app.tokens.admin).await;
        if events["items"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never trimmed: {events}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Audit events older than `approvals.audit_retention` are trimmed; the approvals stay.
#[tokio::test]
async fn audit_events_past_their_retention_are_trimmed() {
    let app = crate::support::TestApp::spawn_with(|s| {
        // Long enough for the first read below to come before it, on a loaded machine too.
        s.approvals.audit_retention = std::time::Duration::from_secs(5)
    })
    .await;
    app.park("kept").await;
    let path = format!("/v1/tenants/{}/audit", app.tenant);
    let events = app.get_json(&path, &app.tokens.admin).await;
    assert_eq!(
        events["items"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
    until_trimmed(&app, &path).await;
    let kept: serde_json::Value = app
        .get("kept", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kept["status"], "pending");
}

/// The same for a tenant whose requests were only ever allowed: no approval of its own named
/// it among the tenants whose audit is trimmed.
#[tokio::test]
async fn an_audit_of_allowed_requests_only_is_trimmed_too() {
    let app = crate::support::TestApp::spawn_with(|s| {
        // Long enough for the first read below to come before it, on a loaded machine too.
        s.approvals.audit_retention = std::time::Duration::from_secs(5)
    })
    .await;
    let read = json!({"type": "document_read", "resource": "docs/handbook.md"});
    let allowed = app.submit("read-1", read).await;
    assert_eq!(allowed.status(), StatusCode::OK);
    let path = format!("/v1/tenants/{}/audit", app.tenant);
    let events = app.get_json(&path, &app.tokens.admin).await;
    assert_eq!(events["items"][0]["kind"], "submitted", "{events}");
    until_trimmed(&app, &path).await;
}

/// An audit entry that cannot be read (corrupt, or of a kind a newer version writes) is
/// passed over and counted: the export, page by page, still reaches every event after it.
#[tokio::test]
async fn an_unreadable_audit_entry_is_passed_over() {
    let app = TestApp::spawn().await;
    app.park("before").await;
    let mut conn = app.redis().connection().await;
    let _: String = redis::cmd("XADD")
        .arg(format!("approvals:audit:{}", app.tenant))
        .arg("*")
        .arg("e")
        .arg(r#"{"kind":"from_the_future"}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    app.park("after").await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=1&cursor={c}"),
            None => "limit=1".to_owned(),
        };
        let page = app
            .get_json(
                &format!("/v1/tenants/{}/audit?{query}", app.tenant),
                &app.tokens.admin,
            )
            .await;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["approval_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["before", "after"]);
    app.metrics_until(
        &app.base,
        std::time::Duration::from_secs(5),
        "the unreadable entry counted",
        |text| {
            text.lines()
                .any(|l| l.starts_with("approvals_unreadable_records_total{") && !l.ends_with(" 0"))
        },
    )
    .await;
}

/// On Temporal, an approval workflow whose memo cannot be read (started by hand, or by a newer
/// version) is passed over and counted: the tenant's listing, its audit and the pending
/// figures go on without it.
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_workflow_memo_is_passed_over() {
    use std::time::{Duration, Instant};

    use crate::support::Backend;

    let app = Harness::new(Backend::Temporal).spawn().await;
    app.park("fine").await;
    let before = unreadable_records(&app.metrics().await);
    let shared = crate::shared_temporal::shared().await;
    let address = shared.address.trim_start_matches("http://");
    // On a task queue no worker polls: it stays running, so a pending listing reads it.
    let started = std::process::Command::new(approvals_testkit::temporal_server::temporal_bin())
        .args([
            "workflow",
            "start",
            "--address",
            address,
            "--type",
            "ApprovalWorkflow",
        ])
        .args(["--task-queue", "no-worker-polls-this"])
        .args(["--workflow-id", &format!("approval:{}:spoiled", app.tenant)])
        .args(["--memo", "approval=\"not a record\"", "--memo", "events=[]"])
        .args([
            "--search-attribute",
            &format!("TenantId=\"{}\"", app.tenant),
        ])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");

    // Once visibility shows both workflows, every read answers without the spoiled one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted =
            std::process::Command::new(approvals_testkit::temporal_server::temporal_bin())
                .args(["workflow", "count", "--address", address])
                .args(["--query", &format!("TenantId='{}'", app.tenant)])
                .output()
                .unwrap();
        if String::from_utf8_lossy(&counted.stdout).trim() == "Total: 2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "visibility never showed the spoiled workflow: {counted:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed: Vec<Value> = app.listed().await;
    let ids: Vec<&str> = listed.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["fine"]);
    let audit = app
        .get_json(
            &format!("/v1/tenants/{}/audit", app.tenant),
            &app.tokens.admin,
        )
        .await;
    let about: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["approval_id"].as_str())
        .collect();
    assert!(
        !about.is_empty() && about.iter().all(|id| *id == "fine"),
        "{audit}"
    );
    // And counted (tests of this binary share the counter: more than before this one).
    app.metrics_until(
        &app.base,
        Duration::from_secs(30),
        "the spoiled memo counted",
        |text| unreadable_records(text) > before,
    )
    .await;
}

/// The unreadable records counted so far, over every label.
#[cfg(feature = "temporal")]
fn unreadable_records(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("approvals_unreadable_records_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A page of large approvals ends early, at about a megabyte, with a cursor to the rest: 500
/// records of the largest size were about 25 MB per page, held until a slow client read them,
/// up to 256 pages at once per token. Following the cursors still visits every one once.
#[tokio::test]
async fn a_page_of_large_approvals_ends_early_and_the_cursor_goes_on() {
    let app = TestApp::spawn().await;
    let ids: Vec<String> = (0..40).map(|n| format!("large-{n:02}")).collect();
    for id in &ids {
        app.park_large_for_agent(id, "agent-1").await;
    }
    let path = format!(
        "/v1/tenants/{}/approvals?status=pending&limit=100",
        app.tenant
    );
    let first = app
        .request(Method::GET, &path, Some(&app.tokens.reviewer))
        .send()
        .await
        .expect("list");
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = serde_json::from_slice(&first.bytes().await.expect("body")).unwrap();
    let listed = first["items"].as_array().expect("items").len();
    assert!(
        listed > 0 && listed < ids.len(),
        "{listed} of 40 on the first page"
    );
    assert!(first["next_cursor"].is_string(), "a cursor to the rest");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.clone(),
        };
        let page = app.get_json(&query, &app.tokens.reviewer).await;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "each once, oldest first");
}
