//! TTLs: per-tenant lifetimes, expiry as an automatic rejection, tombstones.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{assert_problem, TestApp, TENANT};

fn millis(t: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[tokio::test]
async fn a_two_second_tenant_expires_and_reads_expired() {
    let app = TestApp::spawn_with(|s| {
        s.approvals
            .tenant_ttl
            .insert(TENANT.into(), Duration::from_secs(2));
    })
    .await;
    let parked = app.park("req-1").await;
    assert_eq!(
        millis(&parked["expires_at"]) - millis(&parked["submitted_at"]),
        2_000
    );

    // The waiter is woken by the expiry itself.
    let started = Instant::now();
    let response = app
        .request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals/req-1/decision?wait_seconds=10"),
            Some(&app.tokens.agent),
        )
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "expired");
    let woke = chrono::Utc::now().timestamp_millis();
    assert!(
        woke - millis(&parked["expires_at"]) < 1_000,
        "read as expired within a second of expires_at"
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    // Expired is final: 410 for any decision, and it stays readable.
    let problem = assert_problem(
        app.decide("req-1", "accept", &app.tokens.reviewer).await,
        StatusCode::GONE,
        "expired",
    )
    .await;
    assert_eq!(problem["approval"]["status"], "expired");
    let read: Value = app
        .get("req-1", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "expired");
    assert_eq!(read["decided_at"], parked["expires_at"]);

    // The sweeper records it once: tombstone in Redis with the expired-retention TTL, listed as
    // expired, gone from pending, one audit event.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut conn = app.redis.connection().await;
    loop {
        let raw: String = redis::cmd("GET")
            .arg("approval:acme:req-1")
            .query_async(&mut conn)
            .await
            .unwrap();
        if serde_json::from_str::<Value>(&raw).unwrap()["status"] == "expired" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sweeper never recorded the expiry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ttl: i64 = redis::cmd("TTL")
        .arg("approval:acme:req-1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (86_390..=86_400).contains(&ttl),
        "tombstone kept for the expired-retention: {ttl}"
    );
    let list = |status: &'static str| {
        let request = app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals?status={status}"),
            Some(&app.tokens.reviewer),
        );
        async move {
            request.send().await.unwrap().json::<Value>().await.unwrap()["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(list("expired").await, 1);
    assert_eq!(list("pending").await, 0);
    let audit: Value = app
        .get_json(&format!("/v1/tenants/{TENANT}/audit"), &app.tokens.admin)
        .await;
    let expired: Vec<_> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "expired")
        .collect();
    assert_eq!(expired.len(), 1, "{audit}");
    assert_eq!(expired[0]["actor"], "system");

    // Resubmitting the same request id returns the expired record, not a new approval.
    let again = app.submit("req-1", crate::support::sensitive_read()).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        again.json::<Value>().await.unwrap()["approval"]["status"],
        "expired"
    );
}

#[tokio::test]
async fn tenant_ttl_overrides_apply_per_tenant() {
    let app = TestApp::spawn_with(|s| {
        s.approvals
            .tenant_ttl
            .insert(TENANT.into(), Duration::from_secs(72 * 3600));
    })
    .await;
    let parked = app.park("req-1").await;
    assert_eq!(
        millis(&parked["expires_at"]) - millis(&parked["submitted_at"]),
        72 * 3_600_000
    );
}
