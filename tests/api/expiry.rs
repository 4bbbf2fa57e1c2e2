//! TTLs: per-tenant lifetimes, expiry as an automatic rejection, tombstones.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{assert_problem, Harness, TestApp};

contract_tests!(
    a_two_second_tenant_expires_and_reads_expired,
    tenant_ttl_overrides_apply_per_tenant,
    a_thirty_day_ttl_is_accepted_and_visible,
);

fn millis(t: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

async fn a_two_second_tenant_expires_and_reads_expired(h: Harness) {
    let tenant = &h.tenant;
    let app = h
        .spawn_with(|s| {
            s.approvals
                .tenant_ttl
                .insert(tenant.clone(), Duration::from_secs(2));
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
            &format!("/v1/tenants/{tenant}/approvals/req-1/decision?wait_seconds=60"),
            Some(&app.tokens.agent),
        )
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "expired");
    let woke = chrono::Utc::now().timestamp_millis();
    // Seconds, not the 60 s wait: the expiry woke it (on Temporal, a worker's timer and a
    // final read, which a loaded machine may take seconds over).
    assert!(
        woke - millis(&parked["expires_at"]) < 20_000,
        "read as expired within seconds of expires_at"
    );
    assert!(started.elapsed() < Duration::from_secs(25));

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

    // On Redis, the sweeper records it once: a tombstone with the expired-retention TTL.
    if let Some(redis) = &app.redis {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut conn = redis.connection().await;
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
    }
    // On every backend: listed as expired, gone from pending (once the listing has caught up
    // with the expiry), one audit event.
    let list = |status: &'static str| {
        let request = app.request(
            Method::GET,
            &format!("/v1/tenants/{tenant}/approvals?status={status}"),
            Some(&app.tokens.reviewer),
        );
        async move {
            request.send().await.unwrap().json::<Value>().await.unwrap()["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while (list("expired").await, list("pending").await) != (1, 0) {
        assert!(
            Instant::now() < deadline,
            "the listing never showed the expiry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Temporal's audit is read from its visibility store, which may show the expiry a moment
    // after the listing does (the engine's audit settle time): awaited, then counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit: Value = app
            .get_json(&format!("/v1/tenants/{tenant}/audit"), &app.tokens.admin)
            .await;
        let has_expiry = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "expired");
        if has_expiry {
            break audit;
        }
        assert!(Instant::now() < deadline, "no expiry in the audit: {audit}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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

async fn tenant_ttl_overrides_apply_per_tenant(h: Harness) {
    let tenant = &h.tenant;
    let app = h
        .spawn_with(|s| {
            s.approvals
                .tenant_ttl
                .insert(tenant.clone(), Duration::from_secs(72 * 3600));
        })
        .await;
    let parked = app.park("req-1").await;
    assert_eq!(
        millis(&parked["expires_at"]) - millis(&parked["submitted_at"]),
        72 * 3_600_000
    );
}

/// Long waits are what the Temporal backend is for; Redis takes them too (with a warning at
/// start-up). Either way the promised deadline is the one configured, to the millisecond.
async fn a_thirty_day_ttl_is_accepted_and_visible(h: Harness) {
    let thirty_days = Duration::from_secs(30 * 24 * 3600);
    let app = h
        .spawn_with(|s| {
            s.approvals.tenant_ttl.insert(h.tenant.clone(), thirty_days);
        })
        .await;
    let parked = app.park("req-1").await;
    assert_eq!(
        millis(&parked["expires_at"]) - millis(&parked["submitted_at"]),
        thirty_days.as_millis() as i64
    );
    let read: Value = app
        .get("req-1", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["expires_at"], parked["expires_at"]);
    assert_eq!(read["status"], "pending");
}

/// With no instance running around an approval's deadline, its Redis key lapses with its
/// lifetime (as the ADR's layout has it) and the expiry is still recorded, once, when an
/// instance comes back: the record reads `expired` and stays readable for the retention.
#[tokio::test]
async fn an_expiry_nobody_was_running_for_is_recorded_when_an_instance_returns() {
    let mut app = TestApp::spawn_with(|s| s.approvals.default_ttl = Duration::from_secs(1)).await;
    app.park("unattended").await;
    app.shut_down().await.unwrap();
    let mut conn = app.redis().connection().await;
    let key = format!("approval:{}:unattended", app.tenant);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(Instant::now() < deadline, "the key outlived its lifetime");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (base, _stop) = app.second_instance().await;
    let path = format!("{base}/v1/tenants/{}/approvals/unattended", app.tenant);
    let read: Value = app
        .http
        .get(&path)
        .bearer_auth(&app.tokens.reviewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "expired", "{read}");
    // The returning instance's sweeper records it: one event, and the record is back under
    // its key for the expired-retention.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ttl = loop {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if ttl > 0 {
            break ttl;
        }
        assert!(Instant::now() < deadline, "the expiry was never recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!((86_400 - 10..=86_400).contains(&ttl), "ttl {ttl}");
    let audit: Value = app
        .http
        .get(format!("{base}/v1/tenants/{}/audit", app.tenant))
        .bearer_auth(&app.tokens.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expiries = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "expired")
        .count();
    assert_eq!(expiries, 1, "{audit}");
}

/// An expiry recorded by a decision that came too late (no sweep in between) is counted like
/// one the sweeper records.
#[tokio::test]
async fn an_expiry_recorded_by_a_late_decision_is_counted() {
    // A tenant of its own: the metrics recorder is shared by every test in this binary.
    let harness = Harness {
        backend: crate::support::Backend::Redis,
        tenant: approvals_core::conformance::fresh_tenant("late").to_string(),
        other_tenant: approvals_core::conformance::fresh_tenant("other").to_string(),
    };
    let app = harness
        .spawn_with(|s| {
            s.approvals.default_ttl = Duration::from_secs(1);
            // No sweep before the decision: it records the expiry itself.
            s.approvals.sweep_interval = Duration::from_secs(3600);
        })
        .await;
    app.park("late").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await; // past the 1 s lifetime: the point of the test
    let response = app.decide("late", "accept", &app.tokens.reviewer).await;
    assert_problem(response, StatusCode::GONE, "expired").await;
    let tenant = app.tenant.clone();
    app.metrics_until(
        &app.base,
        Duration::from_secs(5),
        "the expiry counted",
        |t| {
            t.lines().any(|l| {
                l.starts_with("approvals_decisions_total{")
                    && l.contains(&format!("tenant=\"{tenant}\""))
                    && l.contains("outcome=\"expired\"")
                    && l.ends_with(" 1")
            })
        },
    )
    .await;
}

/// A pending value that cannot be read (corrupt, or written over by something else) is the
/// first due entry of every sweep; it is counted and set aside, and the approvals due after
/// it still expire.
#[tokio::test]
async fn an_unreadable_pending_value_does_not_stop_the_expiries_after_it() {
    // No sweep until the values are spoiled: a slow set-up let the first one expire first.
    let mut app = TestApp::spawn_with(|s| {
        s.approvals.default_ttl = Duration::from_secs(1);
        s.approvals.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    app.park("spoiled").await;
    app.park("no-id").await;
    app.park("fine").await;
    let mut conn = app.redis().connection().await;
    // Not JSON; and JSON that looks pending but names no approval (written over by something
    // else), which failed every sweep at the same entry.
    let no_id = r#"{"status":"pending","expires_ms":1,"submitted_ms":1}"#;
    for (key, value) in [
        (format!("approval:{}:spoiled", app.tenant), "{not json"),
        (
            format!("approvals:shadow:{}:spoiled", app.tenant),
            "{not json",
        ),
        (format!("approval:{}:no-id", app.tenant), no_id),
        (format!("approvals:shadow:{}:no-id", app.tenant), no_id),
    ] {
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("KEEPTTL")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // The counter has no tenant label, and this binary's tests share it: its rise is this
    // test's.
    let unreadable = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("approvals_unreadable_records_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = unreadable(&app.metrics().await);
    app.restart_with(|s| s.approvals.sweep_interval = Duration::from_millis(100))
        .await;

    let audit_path = format!("/v1/tenants/{}/audit", app.tenant);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = app.get_json(&audit_path, &app.tokens.admin).await;
        let expired = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "expired" && e["approval_id"] == "fine");
        if expired {
            break;
        }
        assert!(Instant::now() < deadline, "'fine' never expired: {audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.metrics_until(
        &app.base,
        Duration::from_secs(5),
        "the unreadable value counted",
        |text| unreadable(text) > before,
    )
    .await;
    // Set aside: no longer a pending approval in the tenant's figures, and left in place.
    let pending: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("approvals:index:{}:pending", app.tenant))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    let kept: Option<String> = redis::cmd("GET")
        .arg(format!("approvals:shadow:{}:spoiled", app.tenant))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("{not json"));
}

/// A decision sent before the deadline that reaches Redis after it (Redis busy, the call
/// queued) is not taken: the approval expired, and an agent told `expired` stays told.
#[tokio::test]
async fn a_decision_that_reaches_redis_after_the_deadline_is_not_taken() {
    let app = TestApp::spawn_with(|s| {
        // Room for the steps below before the deadline, on a loaded machine too (3 s was
        // not always), and a call deadline past the busy script's end.
        s.approvals.default_ttl = Duration::from_secs(8);
        s.redis.call_timeout = Duration::from_secs(15);
    })
    .await;
    let parked = app.park("queued-accept").await;
    let deadline_ms = millis(&parked["expires_at"]);

    // Another client keeps Redis busy until 300 ms past the deadline. Past 5 s of a script
    // Redis answers other clients `BUSY` rather than queueing them: not before this test's.
    let mut admin = app.redis().connection().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("lua-time-limit")
        .arg(30_000)
        .query_async(&mut admin)
        .await
        .unwrap();
    let unbounded = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut busy = app
        .redis()
        .client()
        .get_multiplexed_async_connection_with_config(&unbounded)
        .await
        .unwrap();
    let mut probe = app
        .redis()
        .client()
        .get_multiplexed_async_connection_with_config(&unbounded)
        .await
        .unwrap();
    let block = tokio::spawn(async move {
        let script = "local stop_ms = tonumber(ARGV[1]) \
            while true do local t = redis.call('TIME') \
            if t[1] * 1000 + math.floor(t[2] / 1000) >= stop_ms then return 1 end end";
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .arg(deadline_ms + 300)
            .query_async(&mut busy)
            .await
            .unwrap();
    });
    // Busy once two PINGs in a row go unanswered (one could be a starved CPU).
    let mut unanswered = 0;
    while unanswered < 2 {
        assert!(!block.is_finished(), "the busy script ended early");
        let ping = redis::cmd("PING");
        let answered = ping.query_async::<String>(&mut probe);
        if tokio::time::timeout(Duration::from_millis(100), answered)
            .await
            .is_err()
        {
            unanswered += 1;
        } else {
            unanswered = 0;
        }
    }
    assert!(
        chrono::Utc::now().timestamp_millis() < deadline_ms,
        "the accept is sent before the deadline"
    );
    let response = app
        .decide("queued-accept", "accept", &app.tokens.reviewer)
        .await;
    block.await.unwrap();
    assert_problem(response, StatusCode::GONE, "expired").await;
    let read: Value = app
        .get("queued-accept", &app.tokens.agent)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "expired");
}

/// An approval whose record and shadow lapsed before any sweep, its id then parked again: the
/// old deadline entry meets the new record. It must not leave the old approval counted as
/// pending for good (the figures, the per-tenant cap).
#[tokio::test]
async fn an_id_parked_again_after_an_unswept_lapse_leaves_no_phantom_pending() {
    let mut app = TestApp::spawn_with(|s| {
        s.approvals.default_ttl = Duration::from_secs(1);
        s.approvals.expired_retention = Duration::from_secs(1);
        s.approvals.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    app.park("again").await;
    let mut conn = app.redis().connection().await;
    let keys = [
        format!("approval:{}:again", app.tenant),
        format!("approvals:shadow:{}:again", app.tenant),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let existing: i64 = redis::cmd("EXISTS")
            .arg(&keys[..])
            .query_async(&mut conn)
            .await
            .unwrap();
        if existing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "record and shadow outlived their lifetimes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = app.submit("again", crate::support::sensitive_read()).await;
    assert_eq!(again.status(), StatusCode::CREATED);

    app.restart_with(|s| s.approvals.sweep_interval = Duration::from_millis(100))
        .await;
    let pending_index = format!("approvals:index:{}:pending", app.tenant);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending: Vec<String> = redis::cmd("ZRANGE")
            .arg(&pending_index)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still counted as pending: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read: Value = app
        .get("again", &app.tokens.agent)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "expired", "{read}");
}

/// An expiry no sweeper records (every instance down, or its task gone) shows as how far past
/// its deadline the approval is: the figure `ApprovalsExpiriesNotRecorded` pages on, where the
/// pending age alone sent on-call to the tenant's reviewers. Once recorded, it is 0 again.
#[tokio::test]
async fn an_expiry_not_recorded_shows_as_overdue() {
    let mut app = TestApp::spawn_with(|s| {
        s.approvals.default_ttl = Duration::from_secs(1);
        s.approvals.sweep_interval = Duration::from_secs(3600);
        s.approvals.stats_interval = Duration::from_millis(200);
    })
    .await;
    let overdue = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("approvals_expiry_overdue_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
    };
    app.park("forgotten").await;
    app.metrics_until(&app.base, Duration::from_secs(10), "overdue", |t| {
        overdue(t).is_some_and(|s| s >= 1.0)
    })
    .await;

    app.restart_with(|s| s.approvals.sweep_interval = Duration::from_millis(100))
        .await;
    app.metrics_until(&app.base, Duration::from_secs(10), "recorded", |t| {
        overdue(t) == Some(0.0)
    })
    .await;
    let read: Value = app
        .get("forgotten", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "expired");
}
