//! The decision long-poll: woken by a decision on any instance, within a second.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{assert_problem, Harness, TestApp};

contract_tests!(
    a_decision_wakes_the_waiter,
    a_decision_on_another_instance_wakes_the_waiter,
    without_a_decision_it_answers_pending_after_wait_seconds,
    wait_seconds_above_60_is_clamped_not_refused,
    waiting_on_an_unknown_approval_is_404,
    an_agent_that_hangs_up_stops_waiting,
);

async fn wait(app: &TestApp, base: &str, id: &str, seconds: u64) -> (StatusCode, Value, Instant) {
    let url = format!(
        "{base}/v1/tenants/{}/approvals/{id}/decision?wait_seconds={seconds}",
        app.tenant
    );
    let response = app
        .http
        .get(url)
        .bearer_auth(&app.tokens.agent)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap(), Instant::now())
}

/// Waits until `n` long-polls are parked in the instance at `base` (its metrics say so), so
/// a test decides only once its waiters are really waiting.
pub(crate) async fn until_parked(app: &TestApp, base: &str, n: usize, within: Duration) {
    let parked = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("approvals_long_polls_in_flight "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|parked| parked >= n as f64)
    };
    app.metrics_until(base, within, &format!("{n} waiters parking"), parked)
        .await;
}

/// An agent that hangs up stops waiting at once, not after `wait_seconds`: vanished callers do
/// not pile up in the instance.
async fn an_agent_that_hangs_up_stops_waiting(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut agent = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /v1/tenants/{tenant}/approvals/req-1/decision?wait_seconds=60 HTTP/1.1\r\n\
         Host: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
        app.tokens.agent
    );
    tokio::io::AsyncWriteExt::write_all(&mut agent, request.as_bytes())
        .await
        .unwrap();
    until_parked(&app, &app.base, 1, Duration::from_secs(10)).await;
    drop(agent);
    app.metrics_until(
        &app.base,
        Duration::from_secs(5),
        "no waiter left",
        |text| {
            text.lines()
                .any(|l| l == "approvals_long_polls_in_flight 0")
        },
    )
    .await;
}

async fn a_decision_wakes_the_waiter(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    let waiter = {
        let (http, url, token) = (
            app.http.clone(),
            app.url(&format!(
                "/v1/tenants/{tenant}/approvals/req-1/decision?wait_seconds=60"
            )),
            app.tokens.agent.clone(),
        );
        tokio::spawn(async move {
            let response = http.get(url).bearer_auth(token).send().await.unwrap();
            (
                response.status(),
                response.json::<Value>().await.unwrap(),
                Instant::now(),
            )
        })
    };
    until_parked(&app, &app.base, 1, Duration::from_secs(10)).await;
    let decided = app.decide("req-1", "accept", &app.tokens.reviewer).await;
    let decided_at = Instant::now();
    assert_eq!(decided.status(), StatusCode::OK);
    let (status, body, woke_at) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "accepted");
    // Well inside the 60 s wait: the wake-up came from the decision. (A loaded CI machine can
    // take seconds over a Temporal describe and the answer; the speed is bench/'s to measure.)
    assert!(woke_at.saturating_duration_since(decided_at) < Duration::from_secs(20));
}

async fn a_decision_on_another_instance_wakes_the_waiter(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    let (second, _stop_second) = app.second_instance().await;
    app.park("req-1").await;
    let waiter = {
        let (http, url, token) = (
            app.http.clone(),
            format!("{second}/v1/tenants/{tenant}/approvals/req-1/decision?wait_seconds=60"),
            app.tokens.agent.clone(),
        );
        tokio::spawn(async move {
            let response = http.get(url).bearer_auth(token).send().await.unwrap();
            (
                response.status(),
                response.json::<Value>().await.unwrap(),
                Instant::now(),
            )
        })
    };
    until_parked(&app, &second, 1, Duration::from_secs(10)).await;
    // Decided through the first instance; the waiter is parked on the second.
    assert_eq!(
        app.decide("req-1", "reject", &app.tokens.reviewer)
            .await
            .status(),
        StatusCode::OK
    );
    // From the decision's answer (on Temporal the decide is a workflow update that a loaded
    // worker may take seconds over); a waiter not woken would answer after 60 s.
    let decided_at = Instant::now();
    let (status, body, woke_at) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "rejected");
    assert!(woke_at.saturating_duration_since(decided_at) < Duration::from_secs(20));
}

async fn without_a_decision_it_answers_pending_after_wait_seconds(h: Harness) {
    let app = h.spawn().await;
    app.park("req-1").await;
    let started = Instant::now();
    let (status, body, done) = wait(&app, &app.base, "req-1", 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "pending");
    let took = done.duration_since(started);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let (_, decided_now, _) = {
        app.decide("req-1", "accept", &app.tokens.reviewer).await;
        wait(&app, &app.base, "req-1", 0).await
    };
    assert_eq!(
        decided_now["status"], "accepted",
        "an already decided approval answers at once"
    );
}

async fn wait_seconds_above_60_is_clamped_not_refused(h: Harness) {
    let app = h.spawn().await;
    app.park("req-1").await;
    app.decide("req-1", "accept", &app.tokens.reviewer).await;
    let (status, body, _) = wait(&app, &app.base, "req-1", 3600).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "accepted");
    // However large: beyond 64 bits too.
    let path = format!(
        "/v1/tenants/{}/approvals/req-1/decision?wait_seconds={}",
        app.tenant,
        "9".repeat(40)
    );
    let response = app
        .request(reqwest::Method::GET, &path, Some(&app.tokens.agent))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn waiting_on_an_unknown_approval_is_404(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    let response = app
        .request(
            Method::GET,
            &format!("/v1/tenants/{tenant}/approvals/nope/decision?wait_seconds=5"),
            Some(&app.tokens.agent),
        )
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
}

/// Thousands of long-polls on one approval: the accept wakes every one of them, none answered
/// 503 (waking reads nothing: the decision arrives with its record). How fast they wake is
/// measured by the benchmark, not here: the bound below only tells "woken by the decision" from
/// "gave up at the end of its 600 s wait".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_waiters_on_one_approval_all_learn_the_decision() {
    const WAITERS: usize = 5_000;
    crate::support::raise_open_files_limit();
    // Opening 5,000 connections on a loaded two-core machine (a debug build) can take longer
    // than a minute: the first waiters must still be waiting when the last one parks.
    let app = TestApp::spawn_with(|s| {
        s.approvals.long_poll_max = Duration::from_secs(600);
        // One token waits 5,000 times here.
        s.limits.max_long_polls_per_caller = WAITERS;
        // Each waiter's first read is one of 5,000 at once on a debug build that shares two
        // cores with the rest of the suite: past the 2 s default one answered 503 (a client
        // would retry; this test is about the wake-up, not that deadline).
        s.redis.call_timeout = Duration::from_secs(30);
    })
    .await;
    app.park("popular").await;
    // A client of its own with room for every connection (one per long-poll, HTTP/1).
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = app.url(&format!(
        "/v1/tenants/{}/approvals/popular/decision?wait_seconds=600",
        app.tenant
    ));
    // The first waiter answered before the decision (or whose request failed), for the
    // failure message: a count of parked waiters stuck short of 5,000 said nothing of why.
    let early: std::sync::Arc<std::sync::Mutex<Option<String>>> = std::sync::Arc::default();
    let decision_sent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let request = http.get(&url).bearer_auth(&app.tokens.agent);
            let (early, decision_sent) = (early.clone(), decision_sent.clone());
            tokio::spawn(async move {
                let answered = async {
                    let response = request.send().await?;
                    let status = response.status();
                    Ok::<_, reqwest::Error>((status, response.json::<Value>().await?))
                }
                .await;
                if !decision_sent.load(std::sync::atomic::Ordering::Acquire) {
                    let mut first = early.lock().unwrap();
                    if first.is_none() {
                        *first = Some(format!("{answered:?}"));
                    }
                }
                let (status, body) = answered.unwrap();
                (status, body, Instant::now())
            })
        })
        .collect();
    tokio::select! {
        () = until_parked(&app, &app.base, WAITERS, Duration::from_secs(300)) => {}
        answer = async {
            loop {
                if let Some(answer) = early.lock().unwrap().take() {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } => panic!("a waiter was answered before the decision: {answer}"),
    }
    decision_sent.store(true, std::sync::atomic::Ordering::Release);
    let decided = app.decide("popular", "accept", &app.tokens.reviewer).await;
    assert_eq!(decided.status(), StatusCode::OK);
    let accepted_at = Instant::now();
    let mut slowest = Duration::ZERO;
    for waiter in waiters {
        let (status, body, at) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "accepted", "{body}");
        slowest = slowest.max(at.saturating_duration_since(accepted_at));
    }
    assert!(
        slowest < Duration::from_secs(120),
        "the last waiter answered after {slowest:?}: woken by its own deadline, not the decision"
    );
}

/// A workflow closed without a decision (an operator terminated it) can never be decided: the
/// approval reads as expired, a long-poll answers so at once, and a reviewer's decision is
/// `410 expired`. It read as pending until its deadline, and every decision answered 500.
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_whose_workflow_was_terminated_reads_as_expired() {
    use crate::support::Backend;

    let app = crate::support::Harness::new(Backend::Temporal)
        .spawn()
        .await;
    app.park("stopped").await;
    let shared = crate::shared_temporal::shared().await;
    let terminated = std::process::Command::new(approvals_testkit::temporal_server::temporal_bin())
        .args(["workflow", "terminate", "--address"])
        .arg(shared.address.trim_start_matches("http://"))
        .args(["--workflow-id", &format!("approval:{}:stopped", app.tenant)])
        .args(["--reason", "by hand"])
        .output()
        .unwrap();
    assert!(terminated.status.success(), "{terminated:?}");
    let started = std::time::Instant::now();
    let response = app
        .request(
            reqwest::Method::GET,
            &format!(
                "/v1/tenants/{}/approvals/stopped/decision?wait_seconds=60",
                app.tenant
            ),
            Some(&app.tokens.agent),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let record: serde_json::Value = response.json().await.unwrap();
    assert_eq!(record["status"], "expired", "{record}");
    assert!(
        record["decision_reason"]
            .as_str()
            .is_some_and(|r| r.contains("terminated")),
        "{record}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "answered after {:?}, not at once",
        started.elapsed()
    );

    let decided = app.decide("stopped", "accept", &app.tokens.reviewer).await;
    assert_eq!(decided.status(), reqwest::StatusCode::GONE);
    let problem: serde_json::Value = decided.json().await.unwrap();
    assert_eq!(problem["code"], "expired", "{problem}");
}

/// A namespace that does not exist (deleted, or misspelt in `temporal.namespace`) is an
/// outage, not a missing approval: reads answer 503, which agents retry, where they answered
/// 404, which agents take as final.
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_temporal_namespace_is_an_outage_not_a_missing_approval() {
    use crate::support::Backend;

    let app = crate::support::Harness::new(Backend::Temporal)
        .spawn_with(|s| s.temporal.namespace = "no-such-namespace".into())
        .await;
    for path in [
        format!("/v1/tenants/{}/approvals/any", app.tenant),
        format!(
            "/v1/tenants/{}/approvals/any/decision?wait_seconds=1",
            app.tenant
        ),
    ] {
        let response = app
            .request(reqwest::Method::GET, &path, Some(&app.tokens.agent))
            .send()
            .await
            .unwrap();
        crate::support::assert_problem(
            response,
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
        )
        .await;
    }
}

/// Two deployments on one Redis server, in databases 0 and 1 (a rollback into another
/// database holds copies of the same approvals): a decision in one does not answer a waiter
/// in the other. Pub/sub ignores databases, and the waiter in database 1 was answered
/// `accepted`, with the other deployment's reviewer, while its own reads said `pending`.
#[tokio::test]
async fn a_decision_in_another_redis_database_wakes_no_waiter_here() {
    let app = TestApp::spawn().await;
    let other_database = app.redis().url().replace("/0", "/1");
    let (other, _stop_other) = app
        .second_instance_with(|s| s.redis.url = other_database)
        .await;
    app.park("req-1").await;
    let submitted = app
        .http
        .post(format!("{other}/v1/tenants/{}/approvals", app.tenant))
        .bearer_auth(&app.tokens.agent)
        .json(
            &serde_json::json!({"request_id": "req-1", "action": crate::support::sensitive_read()}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        submitted.status(),
        StatusCode::CREATED,
        "parked in database 1 too"
    );
    let waiter = {
        let app_http = app.http.clone();
        let url = format!(
            "{other}/v1/tenants/{}/approvals/req-1/decision?wait_seconds=3",
            app.tenant
        );
        let token = app.tokens.agent.clone();
        tokio::spawn(async move {
            let response = app_http.get(url).bearer_auth(token).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };
    until_parked(&app, &other, 1, Duration::from_secs(10)).await;
    let accepted = app.decide("req-1", "accept", &app.tokens.reviewer).await;
    assert_eq!(accepted.status(), StatusCode::OK, "accepted in database 0");
    let (status, body) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "pending", "{body}");
}
