//! Redis going away under the service: quick 503s, no hang, recovery, nothing lost.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{assert_problem, sensitive_read, TestApp, TENANT};

async fn until_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        != StatusCode::OK
    {
        assert!(
            Instant::now() < deadline,
            "never ready again after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_down_is_503_within_seconds_and_recovery_keeps_every_pending_approval() {
    let mut app = TestApp::spawn_durable().await;
    for n in 0..5 {
        app.park(&format!("req-{n}")).await;
    }
    app.redis.as_mut().expect("redis").stop();

    let calls = [
        app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals/req-1"),
            Some(&app.tokens.reviewer),
        ),
        app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals"),
            Some(&app.tokens.reviewer),
        ),
        app.request(
            Method::POST,
            &format!("/v1/tenants/{TENANT}/approvals"),
            Some(&app.tokens.agent),
        )
        .json(&serde_json::json!({"request_id": "during-outage", "action": sensitive_read()})),
        app.request(
            Method::POST,
            &format!("/v1/tenants/{TENANT}/approvals/req-2/accept"),
            Some(&app.tokens.reviewer),
        ),
        app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals/req-3/decision?wait_seconds=30"),
            Some(&app.tokens.agent),
        ),
    ];
    for call in calls {
        let started = Instant::now();
        let response = call.send().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered within 5 s, not hung"
        );
        let problem = assert_problem(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
        )
        .await;
        // The client learns what to do, not how the engine failed (that is in the log).
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert_eq!(
            detail, "the approval store is unavailable; retry later",
            "{problem}"
        );
    }

    // An instance started during the outage has read no tenant policy: its submits are the
    // store's unavailability too, not a policy problem.
    let (fresh, _stop_fresh) = app.second_instance().await;
    let response = app.submit_on(&fresh, "to-a-fresh-instance").await;
    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
    )
    .await;

    app.redis.as_mut().expect("redis").restart().await;
    until_ready(&app).await;
    let pending: Value = app
        .get_json(
            &format!("/v1/tenants/{TENANT}/approvals"),
            &app.tokens.reviewer,
        )
        .await;
    let ids: Vec<_> = pending["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["req-0", "req-1", "req-2", "req-3", "req-4"],
        "no pending approval lost"
    );

    // Decisions and wake-ups work again (the subscriber reconnected by itself).
    let waiter = {
        let request = app.request(
            Method::GET,
            &format!("/v1/tenants/{TENANT}/approvals/req-4/decision?wait_seconds=20"),
            Some(&app.tokens.agent),
        );
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.json::<Value>().await.unwrap(), Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // let the waiter park; the wake-up bound below holds either way
    assert_eq!(
        app.decide("req-4", "accept", &app.tokens.reviewer)
            .await
            .status(),
        StatusCode::OK
    );
    let decided_at = Instant::now();
    let (body, woke) = waiter.await.unwrap();
    assert_eq!(body["status"], "accepted");
    assert!(woke.saturating_duration_since(decided_at) < Duration::from_secs(1));
    app.shut_down().await.unwrap();
}

/// Sets a Redis configuration value on the app's own server.
async fn redis_config(app: &TestApp, name: &str, value: &str) {
    let mut conn = app.redis().connection().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A Redis that refuses writes (full, with `noeviction`) is not ready, and the metric says the
/// backend is down; when it takes writes again, both recover.
#[tokio::test]
async fn a_full_redis_is_not_ready() {
    let app = TestApp::spawn().await;
    app.park("before-full").await;
    until_ready(&app).await;
    redis_config(&app, "maxmemory", "1").await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_problem(
        ready,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
    )
    .await;
    app.metrics_until(&app.base, Duration::from_secs(10), "backend_up 0", |t| {
        t.contains("approvals_backend_up 0")
    })
    .await;
    redis_config(&app, "maxmemory", "0").await;
    until_ready(&app).await;
    app.metrics_until(&app.base, Duration::from_secs(10), "backend_up 1", |t| {
        t.contains("approvals_backend_up 1")
    })
    .await;
}

/// A Redis switched to an evicting policy while the service runs is not ready either.
#[tokio::test]
async fn an_evicting_redis_is_not_ready() {
    let app = TestApp::spawn().await;
    until_ready(&app).await;
    redis_config(&app, "maxmemory-policy", "volatile-lru").await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_problem(
        ready,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
    )
    .await;
    redis_config(&app, "maxmemory-policy", "noeviction").await;
    until_ready(&app).await;
}
