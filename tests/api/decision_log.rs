//! The decision log: every submit's verdict in the tenant's audit (allow and deny too), the
//! audit's filters and NDJSON export, and action binding (a decision applies to exactly the
//! action that was parked).

use approvals_core::action_digest;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{assert_problem, sensitive_read, Harness, TestApp};

contract_tests!(
    a_decision_binds_to_the_action_the_reviewer_saw,
    every_verdict_is_in_the_decision_log,
    the_audit_filters_by_kind_and_verdict,
    the_audit_exports_as_ndjson
);

async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/tenants/{}/audit?limit=2&{query}", app.tenant);
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get_json(&path, &app.tokens.admin).await;
        events.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return events,
        }
    }
}

fn object(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().cloned().unwrap()
}

async fn every_verdict_is_in_the_decision_log(h: Harness) {
    let app = h.spawn().await;
    let read = json!({"type": "document_read", "resource": "docs/handbook.md"});
    let write = json!({"type": "file_delete", "resource": "docs/handbook.md"});
    let verdicts = [
        ("allowed-1", read.clone(), StatusCode::OK, "allow"),
        ("denied-1", write.clone(), StatusCode::OK, "deny"),
        (
            "parked-1",
            sensitive_read(),
            StatusCode::CREATED,
            "require_approval",
        ),
    ];
    let mut answers = Vec::new();
    for (id, action, status, decision) in &verdicts {
        let response = app.submit(id, action.clone()).await;
        assert_eq!(response.status(), *status, "{id}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["decision"], *decision, "{body}");
        answers.push(body);
    }
    // Allowed and denied requests still park nothing.
    assert_eq!(app.listed().await.len(), 1);

    let events = audit(&app, "kind=submitted").await;
    assert_eq!(events.len(), 3, "{events:#?}");
    for (((id, action, _, decision), answer), event) in verdicts.iter().zip(&answers).zip(&events) {
        let details = &event["details"];
        assert_eq!(event["approval_id"], *id);
        assert_eq!(event["actor"], "agent-1");
        assert_eq!(details["decision"], *decision);
        assert_eq!(details["reasons"], answer["reasons"]);
        assert_eq!(details["policy_version"], answer["policy_version"]);
        assert_eq!(details["submitted_by"], "agent-1");
        assert_eq!(details["agent_id"], "agent-1");
        assert_eq!(details["action_type"], action["type"]);
        assert_eq!(
            details["action_digest"],
            action_digest(&object(action.clone())),
            "the SHA-256 of the action's canonical JSON"
        );
        assert!(details.get("shadow").is_none(), "no candidate: no shadow");
    }
    // The parked one's record carries the same digest.
    assert_eq!(
        answers[2]["approval"]["action_digest"],
        events[2]["details"]["action_digest"]
    );
    // Times never go backwards in the export.
    let times: Vec<&str> = events
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

async fn the_audit_filters_by_kind_and_verdict(h: Harness) {
    let app = h.spawn().await;
    for n in 0..3 {
        let read = json!({"type": "document_read", "resource": format!("docs/{n}.md")});
        assert_eq!(
            app.submit(&format!("allow-{n}"), read).await.status(),
            StatusCode::OK
        );
    }
    app.park("parked-1").await;
    app.park("parked-2").await;
    let decided = app.decide("parked-1", "accept", &app.tokens.reviewer).await;
    assert_eq!(decided.status(), StatusCode::OK);

    let allowed = audit(&app, "decision=allow").await;
    let ids: Vec<&str> = allowed
        .iter()
        .map(|e| e["approval_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["allow-0", "allow-1", "allow-2"]);

    let accepted = audit(&app, "kind=accepted").await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["approval_id"], "parked-1");

    let kinds: Vec<String> = audit(&app, "kind=submitted,accepted")
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "submitted").count(), 5);
    assert_eq!(kinds.iter().filter(|k| *k == "accepted").count(), 1);

    for bad in ["kind=approved", "decision=maybe"] {
        let response = app
            .request(
                Method::GET,
                &format!("/v1/tenants/{}/audit?{bad}", app.tenant),
                Some(&app.tokens.admin),
            )
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
}

async fn the_audit_exports_as_ndjson(h: Harness) {
    let app = h.spawn().await;
    for n in 0..7 {
        let read = json!({"type": "document_read", "resource": format!("docs/{n}.md")});
        app.submit(&format!("allow-{n}"), read).await;
    }
    app.park("parked-1").await;
    let paged = audit(&app, "").await;

    let response = app
        .request(
            Method::GET,
            // A small page size: the export must follow its own cursors to the end.
            &format!("/v1/tenants/{}/audit?limit=3", app.tenant),
            Some(&app.tokens.admin),
        )
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with('\n'));
    let exported: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON event per line"))
        .collect();
    assert_eq!(exported.len(), 8);
    assert_eq!(exported, paged, "the export is the paged audit, in order");
    // A client that refuses NDJSON (`q=0`) gets the JSON page it asked for.
    let refusing = app
        .request(
            Method::GET,
            &format!("/v1/tenants/{}/audit", app.tenant),
            Some(&app.tokens.admin),
        )
        .header("accept", "application/json, application/x-ndjson;q=0")
        .send()
        .await
        .unwrap();
    assert_eq!(refusing.status(), StatusCode::OK);
    assert_eq!(
        refusing.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );

    // Only admins export, as with pages: the refusal is a problem document, not a stream.
    let refused = app
        .request(
            Method::GET,
            &format!("/v1/tenants/{}/audit", app.tenant),
            Some(&app.tokens.reviewer),
        )
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
}

async fn a_decision_binds_to_the_action_the_reviewer_saw(h: Harness) {
    let app = h.spawn().await;
    let parked = app.park("bound-1").await;
    let digest = parked["action_digest"].as_str().unwrap().to_owned();
    assert_eq!(digest, action_digest(&object(sensitive_read())));

    let decide = |id: &'static str, digest: String| {
        app.request(
            Method::POST,
            &format!("/v1/tenants/{}/approvals/{id}/accept", app.tenant),
            Some(&app.tokens.reviewer),
        )
        .json(&json!({"reason": "looked at it", "action_digest": digest}))
        .send()
    };
    // A reviewer who saw another action does not decide this one; on-call staff see it.
    let mismatches = |metrics: String| {
        let series = format!(
            "approvals_action_mismatches_total{{tenant=\"{}\"}} ",
            app.tenant
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = mismatches(app.metrics().await);
    let other = action_digest(&object(json!({"type": "document_read", "resource": "x"})));
    let refused = decide("bound-1", other).await.unwrap();
    assert_problem(refused, StatusCode::CONFLICT, "action_mismatch").await;
    assert!(mismatches(app.metrics().await) > before);
    let still = app.get("bound-1", &app.tokens.agent).await;
    assert_eq!(still.json::<Value>().await.unwrap()["status"], "pending");

    let accepted = decide("bound-1", digest.clone()).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::OK);
    let record: Value = accepted.json().await.unwrap();
    assert_eq!(record["status"], "accepted");
    assert_eq!(record["action_digest"], digest);

    // Once decided, the contract's answer comes first, whatever digest is sent.
    let late = decide("bound-1", other_digest()).await.unwrap();
    assert_problem(late, StatusCode::CONFLICT, "already_decided").await;
    // A digest no digest can be is refused as a malformed body.
    let long = decide("bound-1", "x".repeat(300)).await.unwrap();
    assert_problem(long, StatusCode::BAD_REQUEST, "invalid_body").await;
}

fn other_digest() -> String {
    action_digest(&object(json!({"type": "document_read", "resource": "x"})))
}

/// A record changed in the store after parking (here: its action rewritten in Redis, as an
/// operator or an intruder with store access could) is detected on every read and decision,
/// never obeyed.
#[tokio::test]
async fn a_changed_record_is_detected_not_obeyed() {
    // A tenant of its own: the metrics recorder is shared by every test in this binary.
    let app = crate::support::Harness {
        backend: crate::support::Backend::Redis,
        tenant: approvals_core::conformance::fresh_tenant("changed").to_string(),
        other_tenant: approvals_core::conformance::fresh_tenant("other").to_string(),
    }
    .spawn()
    .await;
    app.park("changed-1").await;
    let key = format!("approval:{}:changed-1", app.tenant);
    let mut redis = app.redis().connection().await;
    let stored: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let changed = stored.replace("finance/q3-report", "finance/all-salaries");
    assert_ne!(changed, stored);
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(&changed)
        .arg("KEEPTTL")
        .query_async(&mut redis)
        .await
        .unwrap();

    let read = app.get("changed-1", &app.tokens.agent).await;
    assert_problem(read, StatusCode::CONFLICT, "action_mismatch").await;
    let waited = app
        .request(
            Method::GET,
            &format!(
                "/v1/tenants/{}/approvals/changed-1/decision?wait_seconds=0",
                app.tenant
            ),
            Some(&app.tokens.agent),
        )
        .send()
        .await
        .unwrap();
    assert_problem(waited, StatusCode::CONFLICT, "action_mismatch").await;
    let decided = app
        .decide("changed-1", "accept", &app.tokens.reviewer)
        .await;
    assert_problem(decided, StatusCode::CONFLICT, "action_mismatch").await;
    // Whatever the store now says, the agent is never told to go ahead.
    let after = app.get("changed-1", &app.tokens.agent).await;
    assert_problem(after, StatusCode::CONFLICT, "action_mismatch").await;
    // Counted, on this test's own tenant.
    let series = format!(
        "approvals_action_mismatches_total{{tenant=\"{}\"}} ",
        app.tenant
    );
    app.metrics_until(
        &app.base,
        std::time::Duration::from_secs(5),
        "mismatch counted",
        |m| {
            m.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
}

/// An HTTP sink for the decision log: the JSON lines it took, and how many requests it had.
struct Sink {
    url: String,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Sink {
    /// Fails its first `fail_first` requests with a 500.
    async fn start(fail_first: usize) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let requests = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let sink = axum::Router::new().route(
            "/ingest",
            axum::routing::post(move |body: String| {
                let (lines_tx, seen) = (lines_tx.clone(), seen.clone());
                async move {
                    if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    for line in body.lines() {
                        let _ = lines_tx.send(serde_json::from_str(line).expect("a JSON line"));
                    }
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ingest", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, sink).await });
        Self {
            url,
            lines,
            requests,
        }
    }
}

/// Settings that ship the decision log to the HTTP sink at `url`, in batches 50 ms apart.
fn shipping_to(url: String) -> impl FnOnce(&mut approvals::config::Settings) {
    move |settings| {
        settings.decision_log.sink = approvals::config::DecisionLogSink::Http;
        settings.decision_log.url = Some(url);
        settings.decision_log.flush_interval = std::time::Duration::from_millis(50);
    }
}

/// The decision log shipped to an HTTP sink as NDJSON: every verdict and decision this instance
/// recorded arrives, a failing sink is retried, and what arrives is what the audit holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_is_shipped_to_an_http_sink_and_retried() {
    use std::sync::atomic::Ordering;

    let Sink {
        url,
        mut lines,
        requests,
    } = Sink::start(1).await;

    let app = TestApp::spawn_with(shipping_to(url)).await;
    let read = json!({"type": "document_read", "resource": "docs/handbook.md"});
    assert_eq!(app.submit("allowed-1", read).await.status(), StatusCode::OK);
    app.park("parked-1").await;
    let accepted = app.decide("parked-1", "accept", &app.tokens.reviewer).await;
    assert_eq!(accepted.status(), StatusCode::OK);

    let mut shipped = Vec::new();
    while shipped.len() < 3 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(15), lines.recv())
            .await
            .expect("three events shipped within 15 s")
            .expect("the sink is up");
        shipped.push(line);
    }
    assert!(
        requests.load(Ordering::SeqCst) >= 2,
        "the failed batch was retried"
    );
    let mut audit = audit(&app, "").await;
    for event in &mut audit {
        event.as_object_mut().unwrap().remove("event_id");
    }
    // Redis restamps each event with when it was recorded; the facts are the same.
    let facts = |e: &Value| {
        (
            e["kind"].clone(),
            e["approval_id"].clone(),
            e["actor"].clone(),
            e["details"].clone(),
        )
    };
    let shipped: Vec<_> = shipped.iter().map(facts).collect();
    let recorded: Vec<_> = audit.iter().map(facts).collect();
    assert_eq!(shipped, recorded);
}

/// A sink that takes connections and never answers does not hold up shutdown: the batch it is
/// retrying and what is queued get one more attempt within a bounded drain, and the process
/// exits in time for its supervisor (before, the retries ran their course: about a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sink_does_not_hold_up_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = accepted_tx.send(());
        }
    });
    let mut app = TestApp::spawn_with(shipping_to(url)).await;
    let read = json!({"type": "document_read", "resource": "docs/handbook.md"});
    assert_eq!(app.submit("allowed-1", read).await.status(), StatusCode::OK);
    // The shipper is sending to the sink, which will never answer.
    tokio::time::timeout(std::time::Duration::from_secs(10), accepted.recv())
        .await
        .expect("the shipper connects to the sink");

    let started = std::time::Instant::now();
    app.shut_down().await.expect("stopped");
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(15),
        "shutdown took {took:?}"
    );
}

/// A filter that matches little reads the audit in pages, not an event at a time: one
/// `limit=1` request over 300 events that match nothing used to cost 300 Redis round trips
/// (and a token could have hundreds such requests in flight).
#[tokio::test]
async fn a_filtered_audit_read_takes_few_round_trips() {
    let app = TestApp::spawn().await;
    for n in 0..300 {
        let read = json!({"type": "document_read", "resource": format!("docs/{n}.md")});
        assert_eq!(
            app.submit(&format!("allow-{n}"), read).await.status(),
            StatusCode::OK
        );
    }
    let before = app.redis_calls("xrange").await;
    let page = app
        .get_json(
            &format!("/v1/tenants/{}/audit?limit=1&kind=accepted", app.tenant),
            &app.tokens.admin,
        )
        .await;
    let after = app.redis_calls("xrange").await;
    assert_eq!(page["items"], json!([]), "{page}");
    assert!(page["next_cursor"].is_null(), "{page}");
    assert!(after - before <= 5, "{} XRANGE calls", after - before);
}

/// Expiries are audit events a compliance team's SIEM needs too (an automatic rejection): the
/// instance that records one ships it, like the events of its requests.
#[tokio::test]
async fn an_expiry_is_shipped_to_the_decision_log() {
    let Sink { url, mut lines, .. } = Sink::start(0).await;
    let app = TestApp::spawn_with(|s| {
        shipping_to(url)(s);
        s.approvals.tenant_ttl.insert(
            crate::support::TENANT.into(),
            std::time::Duration::from_secs(1),
        );
    })
    .await;
    app.park("left-to-expire").await;
    let expired = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(15), lines.recv())
            .await
            .expect("the expiry shipped within 15 s")
            .expect("the sink is up");
        if line["kind"] == "expired" {
            break line;
        }
    };
    assert_eq!(expired["approval_id"], "left-to-expire");
    assert_eq!(expired["tenant"], app.tenant);
}

/// A sink that redirects (an ingress sending HTTP to HTTPS, a proxy's login page) has not
/// taken the batch: it is retried, and the page redirected to is never fetched. Following the
/// redirect turned the POST into a GET without its body, whose 200 counted the batch as
/// shipped while the sink got nothing.
#[tokio::test]
async fn a_redirecting_sink_has_not_taken_the_batch() {
    let (hits_tx, mut hits) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (to_ingest, to_landing) = (hits_tx.clone(), hits_tx);
    let sink = axum::Router::new()
        .route(
            "/ingest",
            axum::routing::post(move || {
                let _ = to_ingest.send("ingest");
                async { axum::response::Redirect::to("/landing") }
            }),
        )
        .route(
            "/landing",
            axum::routing::any(move || {
                let _ = to_landing.send("landing");
                async { StatusCode::OK }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, sink).await });

    let app = TestApp::spawn_with(shipping_to(url)).await;
    let read = json!({"type": "document_read", "resource": "docs/handbook.md"});
    assert_eq!(app.submit("allowed-1", read).await.status(), StatusCode::OK);
    for attempt in 1..=2 {
        let hit = tokio::time::timeout(std::time::Duration::from_secs(10), hits.recv())
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt} within 10 s"));
        assert_eq!(hit, Some("ingest"), "attempt {attempt}");
    }
}

/// A submit whose request deadline passes while Redis is parking it (the client took most of
/// the deadline sending its body, and Redis is slow) is answered `408`, but the approval it
/// parked reaches the decision log all the same. The deadline dropped the write half-way:
/// Redis had the command and parked the approval, and nothing offered its event to the log.
#[tokio::test]
async fn a_write_the_request_deadline_cut_short_still_reaches_the_decision_log() {
    let Sink { url, mut lines, .. } = Sink::start(0).await;
    let app = TestApp::spawn_with(cut_short_by_the_deadline(url)).await;
    submit_cut_short(&app, "cut-short").await;

    let shipped = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            let line = lines.recv().await.expect("the sink is up");
            if line["approval_id"] == "cut-short" {
                return line;
            }
        }
    })
    .await
    .expect("the parked approval's event shipped");
    assert_eq!(shipped["kind"], "submitted");
}

/// Settings under which a submit whose client spends half the request deadline on its body
/// and meets a paused Redis (`submit_cut_short`) is answered `408` while its park goes on.
fn cut_short_by_the_deadline(url: String) -> impl FnOnce(&mut approvals::config::Settings) {
    move |s| {
        shipping_to(url)(s);
        s.server.request_timeout = std::time::Duration::from_secs(4);
        // Well past Redis' pause below (a margin for a loaded machine's late redis-server):
        // the park does not time out.
        s.redis.call_timeout = std::time::Duration::from_secs(15);
    }
}

/// Submits `request_id` as a slow client to a Redis whose writes are paused for 5 s: answered
/// `408`, with the park still running; it lands about two seconds later.
async fn submit_cut_short(app: &TestApp, request_id: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A first submit: the policy and the connections warm, the one below spends its time on
    // its body and on Redis only.
    app.park("warm-up").await;
    let body = json!({"request_id": request_id, "action": sensitive_read()}).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut client = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "POST /v1/tenants/{}/approvals HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        app.tenant,
        app.tokens.agent,
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    // A slow client: a quarter of the request's 4 s go on its body (the rest is the margin a
    // loaded machine needs for the body to be in before the deadline).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    // Redis holds every write for 5 s: the park, sent once the body is in (at about 1 s),
    // lands at about 6 s, well after the request's deadline (4 s), within its own (15 s).
    // Reads go on: the instance's other work (its figures, its sweeper) is not held up.
    let mut conn = app.redis().connection().await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(5000)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    client.write_all(tail.as_bytes()).await.unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// Shutdown right after such a `408`: the drain has no request left, but the park is still
/// running, and its event reaches the sink before the process stops. The drain did not wait
/// for it: the decision log's shipping had stopped when the park landed, and its event was
/// dropped.
#[tokio::test]
async fn shutdown_waits_for_a_write_whose_request_was_cut_short() {
    let Sink { url, mut lines, .. } = Sink::start(0).await;
    let mut app = TestApp::spawn_with(|s| {
        cut_short_by_the_deadline(url)(s);
        // Its Redis calls wait out the pause at shutdown, and the park would land meanwhile.
        s.notifications.enabled = false;
    })
    .await;
    submit_cut_short(&app, "cut-short-then-stop").await;
    app.shut_down().await.expect("stopped");

    // Stopped: whatever was shipped is in the channel already.
    let mut shipped = Vec::new();
    while let Ok(line) = lines.try_recv() {
        shipped.push(line["approval_id"].clone());
    }
    assert!(
        shipped.contains(&json!("cut-short-then-stop")),
        "shipped before the process stopped: {shipped:?}"
    );
}

/// A policy change whose audit write fails is still shipped: it is made (answered 200), and
/// the decision log was the one record of it that could still be had.
#[tokio::test]
async fn a_policy_change_whose_audit_write_failed_is_shipped_all_the_same() {
    let Sink { url, mut lines, .. } = Sink::start(0).await;
    let app = TestApp::spawn_with(shipping_to(url)).await;
    let bundle = json!({"files": [{"path": "approvals.rego",
        "text": "package approvals\ndecision := {\"decision\": \"allow\", \"reasons\": [\"all\"]}\n"}]});
    let policy = format!("/v1/tenants/{}/policy", app.tenant);
    let uploaded = app
        .request(
            Method::POST,
            &format!("{policy}/bundles"),
            Some(&app.tokens.admin),
        )
        .json(&bundle)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let version = uploaded.json::<Value>().await.unwrap()["bundle"]["version"].clone();

    let mut admin = app.redis().connection().await;
    let () = crate::support::acl_rule("-xadd")
        .query_async(&mut admin)
        .await
        .unwrap();
    let activated = app
        .request(
            Method::PUT,
            &format!("{policy}/active"),
            Some(&app.tokens.admin),
        )
        .json(&json!({ "version": version }))
        .send()
        .await
        .unwrap();
    let () = crate::support::acl_rule("+xadd")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(activated.status(), StatusCode::OK);

    loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(15), lines.recv())
            .await
            .expect("the activation shipped within 15 s")
            .expect("the sink is up");
        if line["kind"] == "policy" && line["details"]["change"] == "activated" {
            assert_eq!(line["details"]["version"], version, "{line}");
            assert_eq!(line["actor"], "carol", "{line}");
            break;
        }
    }
}
