//! ADR v1 records (four fields, written by the Python service) are approvals like any other.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{assert_problem, TestApp, TENANT};

async fn write_v1(app: &TestApp, id: &str, submitted_at: Value, ttl_secs: u64) {
    let record = json!({
        "status": "pending",
        "agent_action": {"type": "document_read", "resource": "finance/legacy", "n": 12345678901234567_u64},
        "context": {"on_behalf_of": "project_alpha"},
        "submitted_at": submitted_at,
    });
    let mut conn = app.redis().connection().await;
    let _: () = redis::cmd("SET")
        .arg(format!("approval:{TENANT}:{id}"))
        .arg(record.to_string())
        .arg("EX")
        .arg(ttl_secs)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn v1_records_read_list_decide_and_expire() {
    let app = TestApp::spawn().await;
    write_v1(&app, "v1-rfc3339", json!("2026-11-21T09:23:41.842Z"), 3600).await;
    write_v1(&app, "v1-naive", json!("2026-11-21T09:23:41.842"), 3600).await;
    write_v1(&app, "v1-unix", json!(1_795_253_021.5), 3600).await;
    write_v1(&app, "v1-short", json!(1_795_253_021), 2).await;

    let read: Value = app
        .get("v1-rfc3339", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "pending");
    assert_eq!(read["submitted_at"], "2026-11-21T09:23:41.842Z");
    assert_eq!(read["action"]["n"], json!(12345678901234567_u64));
    let expires =
        chrono::DateTime::parse_from_rfc3339(read["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        (3590..=3600).contains(&left),
        "expiry is the key's remaining TTL: {left}s"
    );
    let naive: Value = app
        .get("v1-naive", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        naive["submitted_at"], "2026-11-21T09:23:41.842Z",
        "no offset reads as UTC"
    );

    // Adopted by the service's own scan: all four list without anyone reading them first.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed: Value = app
            .get_json(
                &format!("/v1/tenants/{TENANT}/approvals"),
                &app.tokens.reviewer,
            )
            .await;
        let ids: Vec<_> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        if ids.contains(&"v1-unix".to_owned()) && ids.contains(&"v1-naive".to_owned()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v1 records never listed: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unix: Value = app
        .get("v1-unix", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unix["submitted_at"], "2026-11-21T09:23:41.500Z");

    let decided: Value = app
        .decide("v1-unix", "accept", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(decided["status"], "accepted");
    assert_eq!(decided["decided_by"], "alice");
    assert_problem(
        app.decide("v1-unix", "reject", &app.tokens.reviewer2).await,
        StatusCode::CONFLICT,
        "already_decided",
    )
    .await;

    // The two-second one expires like any other.
    let waited: Value = app
        .get_json(
            &format!("/v1/tenants/{TENANT}/approvals/v1-short/decision?wait_seconds=10"),
            &app.tokens.agent,
        )
        .await;
    assert_eq!(waited["status"], "expired");
    assert_problem(
        app.decide("v1-short", "accept", &app.tokens.reviewer).await,
        StatusCode::GONE,
        "expired",
    )
    .await;
}

/// Values under `approval:*` that nothing can read (not JSON, or JSON of the wrong shape) are
/// logged, counted and passed over: the listing, the other ADR v1 records' adoption and the
/// pending figures go on.
#[tokio::test]
async fn unreadable_values_are_counted_and_passed_over() {
    let app = TestApp::spawn().await;
    for n in 0..3 {
        write_v1(
            &app,
            &format!("v1-{n}"),
            json!("2026-11-21T09:23:41.842Z"),
            3600,
        )
        .await;
    }
    app.park("parked").await;
    app.park("spoiled").await;
    let mut conn = app.redis().connection().await;
    for (key, value) in [
        (
            format!("approval:{TENANT}:garbage"),
            "not json at all".to_owned(),
        ),
        (
            format!("approval:{TENANT}:wrong-shape"),
            json!({"status": 5}).to_string(),
        ),
        // A parked record spoiled in place: still in the pending index.
        (
            format!("approval:{TENANT}:spoiled"),
            "{\"status\":".to_owned(),
        ),
    ] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(3600)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let mut ids: Vec<String> = app
            .listed()
            .await
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        if ids.len() >= 4 || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed, ["parked", "v1-0", "v1-1", "v1-2"]);
    app.metrics_until(
        &app.base,
        Duration::from_secs(10),
        "unreadable values counted",
        |t| {
            t.lines().any(|l| {
                l.starts_with("approvals_unreadable_records_total{role=\"primary\"}")
                    && l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 3.0)
            })
        },
    )
    .await;
}

/// A v1 record whose time cannot be indexed (Python's `datetime.min`, milliseconds written as
/// seconds) is dated from its key's expiry instead: the list stays in order and pages through
/// to its end. A negative time made a cursor the next page refused (`400`), and a 16-digit
/// one sorted out of order.
#[tokio::test]
async fn v1_records_with_times_out_of_range_still_page() {
    let app = TestApp::spawn().await;
    write_v1(&app, "v1-min", json!("0001-01-01T00:00:00"), 3600).await;
    write_v1(&app, "v1-millis", json!(1_795_253_021_500_i64), 3600).await;
    write_v1(&app, "v1-fine", json!("2026-11-21T09:23:41.842Z"), 3600).await;
    for id in ["v1-min", "v1-millis", "v1-fine"] {
        // A read adopts it (rather than the next adoption pass).
        assert_eq!(
            app.get(id, &app.tokens.reviewer).await.status(),
            StatusCode::OK
        );
    }
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let query = cursor.map_or_else(String::new, |c| format!("&cursor={c}"));
        let page = app
            .get_json(
                &format!("/v1/tenants/{TENANT}/approvals?status=pending&limit=1{query}"),
                &app.tokens.reviewer,
            )
            .await;
        for item in page["items"].as_array().unwrap() {
            ids.push(item["id"].as_str().unwrap().to_owned());
            let submitted = item["submitted_at"].as_str().unwrap();
            assert!(submitted.starts_with("20"), "{submitted}");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    ids.sort();
    assert_eq!(ids, ["v1-fine", "v1-millis", "v1-min"]);
}

/// A v1 record whose adoption Redis refuses (its tenant's audit stream replaced by a string)
/// costs only itself: the adoption pass goes on to the other records, in every tenant, and
/// they are listed. It ended the pass, every pass, and whatever SCAN met after it stayed
/// unlisted and uncounted.
#[tokio::test]
async fn a_refused_adoption_does_not_stop_the_others() {
    let app = TestApp::spawn().await;
    let mut conn = app.redis().connection().await;
    let damaged = "damaged";
    let () = redis::cmd("SET")
        .arg(format!("approvals:audit:{damaged}"))
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Many refused ones, so that SCAN meets one before this tenant's records.
    for n in 0..20 {
        let record = json!({"status": "pending", "agent_action": {"type": "document_read"}});
        let () = redis::cmd("SET")
            .arg(format!("approval:{damaged}:v1-{n}"))
            .arg(record.to_string())
            .arg("EX")
            .arg(3600)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for n in 0..3 {
        write_v1(
            &app,
            &format!("v1-{n}"),
            json!("2026-11-21T09:23:41.842Z"),
            3600,
        )
        .await;
    }
    app.metrics_until(
        &app.base,
        Duration::from_secs(15),
        "this tenant's v1 records adopted and counted",
        |t| t.contains(&format!("approvals_pending{{tenant=\"{TENANT}\"}} 3")),
    )
    .await;
    assert_eq!(app.listed().await.len(), 3);
}

/// With the default settings, an ADR v1 record written while the service runs is listed and
/// counted within 15 s (the contract's bound), without anyone reading it first.
#[tokio::test]
async fn v1_records_are_listed_and_counted_within_fifteen_seconds_by_default() {
    let app = TestApp::spawn_with(|s| {
        s.approvals.adopt_interval = approvals::config::ApprovalSettings::default().adopt_interval
    })
    .await;
    // After the adoption pass that runs at start-up.
    app.metrics_until(
        &app.base,
        Duration::from_secs(10),
        "the first figures",
        |t| t.contains("approvals_pending_snapshot_age_seconds "),
    )
    .await;
    write_v1(&app, "v1-late", json!("2026-11-21T09:23:41.842Z"), 3600).await;
    let written = Instant::now();
    app.metrics_until(
        &app.base,
        Duration::from_secs(15),
        "the v1 record counted",
        |t| t.contains(&format!("approvals_pending{{tenant=\"{TENANT}\"}} 1")),
    )
    .await;
    let listed = app.listed().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        written.elapsed() < Duration::from_secs(15),
        "{:?}",
        written.elapsed()
    );
}

/// A v1 record decided by the ADR's service keeps its key for the decided retention, not its
/// lifetime: its deadline is the `expires_at` it recorded, not the key's expiry.
#[tokio::test]
async fn a_decided_v1_record_keeps_the_deadline_it_recorded() {
    let app = TestApp::spawn().await;
    let record = json!({
        "status": "approved",
        "agent_action": {"type": "document_read", "resource": "finance/legacy"},
        "submitted_at": "2026-11-21T09:00:00Z",
        "expires_at": "2026-11-22T09:00:00Z",
        "decided_by": "rita",
    });
    let mut conn = app.redis().connection().await;
    let _: () = redis::cmd("SET")
        .arg(format!("approval:{TENANT}:v1-decided"))
        .arg(record.to_string())
        .arg("EX")
        .arg(7 * 24 * 3600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let read: Value = app
        .get("v1-decided", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "accepted", "{read}");
    assert_eq!(read["expires_at"], "2026-11-22T09:00:00.000Z", "{read}");
}

/// An adopted v1 record's `submitted` event carries the policy's answer as a submit here
/// does (`require_approval`, the record's reasons and `policy_version`), so the audit's
/// `?decision=require_approval` finds it: it had only `adopted_from` and `status`.
#[tokio::test]
async fn an_adopted_v1_records_submit_event_carries_its_verdict() {
    let app = TestApp::spawn().await;
    write_v1(&app, "v1-verdict", json!("2026-11-21T09:23:41.842Z"), 3600).await;
    // A read adopts it.
    assert_eq!(
        app.get("v1-verdict", &app.tokens.reviewer).await.status(),
        StatusCode::OK
    );
    let page = app
        .get_json(
            &format!("/v1/tenants/{TENANT}/audit?decision=require_approval"),
            &app.tokens.admin,
        )
        .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    let details = &items[0]["details"];
    assert_eq!(items[0]["approval_id"], "v1-verdict", "{page}");
    assert_eq!(details["decision"], "require_approval", "{details}");
    assert_eq!(details["policy_version"], "adr-v1", "{details}");
    assert!(details["reasons"].is_array(), "{details}");
    assert_eq!(details["adopted_from"], "adr-v1", "{details}");
}
