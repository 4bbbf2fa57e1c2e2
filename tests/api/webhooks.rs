//! Webhooks, delivered to a real HTTP receiver on a free port: the admin API, signatures that
//! verify, retries of a failing receiver with the same id, nothing lost across a restart, the
//! Slack format and "expiring soon", dead letters. Webhooks live in Redis: on Temporal the
//! admin API answers 501.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::support::{assert_problem, Backend, Harness, TestApp};

contract_tests!(
    admins_manage_webhooks_and_others_cannot,
    a_redis_tenant_store_brings_webhooks_to_either_engine,
    events_another_instance_wrote_are_delivered_too,
    a_burst_longer_than_a_read_pass_is_delivered_in_full,
);

const INBOX: &str = "https://inbox.example";
const WITHIN: Duration = Duration::from_secs(20);

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
    /// Whether the receiver answered it 200 (else 500).
    accepted: bool,
    /// When the receiver got it (not when the test read it: a loaded machine can take a while).
    at: std::time::Instant,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A local HTTP receiver that answers 500 to the first `fail_first` posts (or to all while
/// `failing`), and passes every post it gets to the test.
struct Receiver {
    url: String,
    got: mpsc::UnboundedReceiver<Received>,
    failing: Arc<AtomicUsize>,
}

impl Receiver {
    /// Fails the first `fail_first` posts (`usize::MAX`: all, until [`Self::recover`]).
    async fn start(fail_first: usize) -> Self {
        Self::start_failing_with(fail_first, None).await
    }

    /// As [`Self::start`], failing with `429` and `Retry-After: retry_after` when given (a
    /// rate-limited receiver), else with `500`.
    async fn start_failing_with(fail_first: usize, retry_after: Option<&'static str>) -> Self {
        let (tx, got) = mpsc::unbounded_channel();
        let failing = Arc::new(AtomicUsize::new(fail_first));
        let counter = failing.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let tx = tx.clone();
                let counter = counter.clone();
                async move {
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    // One step, so that two posts at once cannot both take the last failure
                    // (and wrap the count to "fail for ever").
                    let left = counter
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                            (left != 0 && left != usize::MAX).then(|| left - 1)
                        })
                        .unwrap_or_else(|unchanged| unchanged);
                    let accepted = left == 0;
                    let _ = tx.send(Received {
                        headers,
                        body,
                        accepted,
                        at: std::time::Instant::now(),
                    });
                    match (accepted, retry_after) {
                        (true, _) => AxumStatus::OK.into_response(),
                        (false, Some(wait)) => {
                            (AxumStatus::TOO_MANY_REQUESTS, [("retry-after", wait)]).into_response()
                        }
                        (false, None) => AxumStatus::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, got, failing }
    }

    fn recover(&self) {
        self.failing.store(0, Ordering::SeqCst);
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WITHIN, self.got.recv())
            .await
            .expect("a delivery within 20 s")
            .expect("the receiver runs")
    }

    /// The next delivery whose JSON `type` is `kind`.
    async fn next_of(&mut self, kind: &str) -> Received {
        loop {
            let got = self.next().await;
            if got.json()["type"] == kind {
                return got;
            }
        }
    }
}

/// Fast loops, short retries, links to the inbox.
fn fast(settings: &mut approvals::config::Settings) {
    let n = &mut settings.notifications;
    n.poll_interval = Duration::from_millis(100);
    n.send_interval = Duration::from_millis(50);
    n.retry_base = Duration::from_millis(100);
    n.retry_max = Duration::from_millis(400);
    n.request_timeout = Duration::from_secs(2);
    // The receivers listen on loopback, which webhooks may not reach by default.
    n.allowed_networks = vec!["127.0.0.0/8".parse().expect("a network")];
    settings.ui.public_url = Some(INBOX.into());
}

/// [`fast`], with the tenant's approvals expiring after `ttl` and "expiring soon" at half of it.
fn expiring_after(ttl: Duration) -> impl FnOnce(&mut approvals::config::Settings) {
    move |s| {
        fast(s);
        s.approvals
            .tenant_ttl
            .insert(crate::support::TENANT.into(), ttl);
        s.notifications.expiring_soon_share = 0.5;
    }
}

/// Waits until the tenant's webhooks report `want` dead letters (within [`WITHIN`]).
async fn until_dead_letters(app: &TestApp, want: u64) {
    let path = format!("/v1/tenants/{}/webhooks", app.tenant);
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let listed = app.get_json(&path, &app.tokens.admin).await;
        if listed["dead_letters"] == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds a webhook to `tenant`, another than the app's, as a platform admin (the app's admin
/// is not its).
async fn add_other_tenants_webhook(app: &TestApp, tenant: &str, body: Value) {
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{tenant}/webhooks"),
            Some(&app.tokens.platform_admin),
        )
        .json(&body)
        .send()
        .await
        .expect("add webhook");
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// Parks `request_id` in `tenant`, the app's other tenant, as its agent.
async fn park_in_other_tenant(app: &TestApp, tenant: &str, request_id: &str) {
    let parked = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{tenant}/approvals"),
            Some(&app.tokens.other_tenant_agent),
        )
        .json(&json!({"request_id": request_id, "action": crate::support::sensitive_read()}))
        .send()
        .await
        .expect("submit");
    assert_eq!(parked.status(), StatusCode::CREATED);
}

async fn add_webhook(app: &TestApp, body: Value) -> Value {
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{}/webhooks", app.tenant),
            Some(&app.tokens.admin),
        )
        .json(&body)
        .send()
        .await
        .expect("add webhook");
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    let created: Value = response.json().await.expect("json");
    // The 201 names the webhook's address (where it is deleted).
    assert_eq!(
        location,
        Some(format!(
            "/v1/tenants/{}/webhooks/{}",
            app.tenant,
            created["id"].as_str().expect("an id")
        ))
    );
    created
}

/// A harness on a tenant of the test's own: the metrics recorder is shared by every test in
/// this binary, so counts per tenant are then this test's alone.
fn own_tenant(prefix: &str) -> Harness {
    Harness {
        backend: Backend::Redis,
        tenant: approvals_core::conformance::fresh_tenant(prefix).to_string(),
        other_tenant: approvals_core::conformance::fresh_tenant("other").to_string(),
    }
}

/// `approvals_notifications_total` of `tenant` and `outcome` in a scrape (0 when absent).
fn notifications_counted(metrics: &str, tenant: &str, outcome: &str) -> f64 {
    let series =
        format!("approvals_notifications_total{{tenant=\"{tenant}\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Queues the tenant's dead letters again, as its admin: how many were queued.
async fn redeliver_dead_letters(app: &TestApp) -> Value {
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{}/webhooks/dead_letters/redeliver", app.tenant),
            Some(&app.tokens.admin),
        )
        .send()
        .await
        .expect("redeliver");
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<Value>().await.expect("json")["queued"].clone()
}

/// A receiver that answers every post with 200 after `delay`, counting the answers.
async fn slow_receiver(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(delay).await;
                counter.fetch_add(1, Ordering::SeqCst);
                AxumStatus::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, answered)
}

fn verify(secret: &str, got: &Received) {
    let timestamp: i64 = got
        .header("x-approvals-timestamp")
        .parse()
        .expect("timestamp");
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now - timestamp).abs() < 300,
        "a fresh timestamp: {timestamp}"
    );
    let signature = got
        .header("x-approvals-signature")
        .strip_prefix("v1=")
        .expect("v1= signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.{}", got.body).as_bytes());
    mac.verify_slice(&hex::decode(signature).expect("hex"))
        .expect("the signature verifies with the webhook's secret");
    // And a body changed in transit does not.
    let mut forged = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    forged.update(format!("{timestamp}.{}x", got.body).as_bytes());
    assert!(forged
        .verify_slice(&hex::decode(signature).expect("hex"))
        .is_err());
}

async fn admins_manage_webhooks_and_others_cannot(h: Harness) {
    let tenant = h.tenant.clone();
    let app = h.spawn().await;
    let path = format!("/v1/tenants/{tenant}/webhooks");
    // A field the service does not know is ignored, as in every body the contract names.
    let body = json!({"url": "https://hooks.example/approvals",
        "events": ["parked", "expiring_soon"], "description": "the on-call channel"});
    if h.backend != Backend::Redis {
        assert_problem(
            app.request(Method::POST, &path, Some(&app.tokens.admin))
                .json(&body)
                .send()
                .await
                .expect("post"),
            StatusCode::NOT_IMPLEMENTED,
            "webhooks_disabled",
        )
        .await;
        // One who may not manage them is refused as such: a 501 would tell it how this
        // deployment is set up.
        assert_problem(
            app.request(Method::GET, &path, Some(&app.tokens.other_tenant_reviewer))
                .send()
                .await
                .expect("get"),
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        return;
    }
    assert_problem(
        app.request(Method::POST, &path, Some(&app.tokens.reviewer))
            .json(&body)
            .send()
            .await
            .expect("post"),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_problem(
        app.request(Method::POST, &path, Some(&app.tokens.admin))
            .json(&json!({"url": "ftp://hooks.example/x"}))
            .send()
            .await
            .expect("post"),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    // Nothing inside the operator's network unless allowed (`allowed_networks` is empty
    // here): this host, private and link-local addresses (cloud metadata), by address or
    // by a name that resolves to one, nor IPv4 dressed as IPv6.
    for url in [
        "http://127.0.0.1:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/hook",
        "http://localhost:8080/hook",
        "http://[::ffff:192.168.0.1]/hook",
        "http://[::1]:8080/hook",
    ] {
        assert_problem(
            app.request(Method::POST, &path, Some(&app.tokens.admin))
                .json(&json!({ "url": url }))
                .send()
                .await
                .expect("post"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "webhook_destination_forbidden",
        )
        .await;
    }
    let created = add_webhook(&app, body).await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(created["secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("whsec_")));
    assert_eq!(created["format"], "json");
    assert_eq!(created["events"], json!(["expiring_soon", "parked"]));

    let listed = app.get_json(&path, &app.tokens.admin).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["items"][0]["id"], id.as_str());
    assert!(listed["items"][0].get("secret").is_none(), "{listed}");
    assert_eq!(listed["dead_letters"], 0);
    // Another tenant's reviewer sees nothing of it.
    assert_eq!(
        app.request(Method::GET, &path, Some(&app.tokens.other_tenant_reviewer))
            .send()
            .await
            .expect("get")
            .status(),
        StatusCode::FORBIDDEN
    );

    let delete = |token: String| {
        let url = format!("{path}/{id}");
        let request = app.request(Method::DELETE, &url, Some(&token));
        async move { request.send().await.expect("delete") }
    };
    assert_eq!(
        delete(app.tokens.reviewer.clone()).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        delete(app.tokens.admin.clone()).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(
        delete(app.tokens.admin.clone()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

/// With `tenant_store.kind = "redis"` webhooks work whichever engine answers: after the
/// cutover to Temporal reviewers still hear that something waits.
async fn a_redis_tenant_store_brings_webhooks_to_either_engine(h: Harness) {
    let mut receiver = Receiver::start(0).await;
    let app = h.spawn_with_tenant_store(fast).await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    app.park("waits-anywhere").await;
    let parked = receiver.next_of("parked").await;
    assert_eq!(parked.json()["approval_id"], "waits-anywhere");
}

/// What another instance writes can show up in Temporal's audit a moment after what this
/// instance wrote later (its own writes it sees at once): the reader still delivers all of it.
async fn events_another_instance_wrote_are_delivered_too(h: Harness) {
    let mut receiver = Receiver::start(0).await;
    let app = h
        .spawn_with_tenant_store(|s| {
            fast(s);
            // Read right after each of this instance's writes, before the other's show up.
            s.notifications.poll_interval = Duration::from_millis(5);
        })
        .await;
    // Only `app` reads the audits for webhooks; the other instance parks.
    let (other, _stop_other) = app
        .second_instance_with(|s| s.notifications.enabled = false)
        .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    let expected = app.park_alternately(&other, 10).await;
    let mut delivered = std::collections::BTreeSet::new();
    while delivered.len() < expected.len() {
        let got = receiver.next_of("parked").await;
        delivered.insert(got.json()["approval_id"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(delivered, expected);
}

/// More events than one reader pass reads, all within the stretch Temporal's audit is re-read
/// for: the reader goes on where it stopped. It read that stretch again from its start on
/// every pass, and never reached the events after it.
async fn a_burst_longer_than_a_read_pass_is_delivered_in_full(h: Harness) {
    let mut receiver = Receiver::start(0).await;
    let app = h
        .spawn_with_tenant_store(|s| {
            fast(s);
            s.notifications.read_batch = 3;
        })
        .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    let mut expected = std::collections::BTreeSet::new();
    for n in 0..10 {
        let id = format!("burst-{n}");
        app.park(&id).await;
        expected.insert(id);
    }
    let mut delivered = std::collections::BTreeSet::new();
    while delivered.len() < expected.len() {
        let got = receiver.next_of("parked").await;
        delivered.insert(got.json()["approval_id"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(delivered, expected);
}

/// Tenant admins adding webhooks at once cannot pass the cap together (it was counted, then
/// written, in two steps).
#[tokio::test]
async fn concurrent_adds_stop_at_the_cap() {
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.max_webhooks_per_tenant = 3;
    })
    .await;
    let adds = (0..20).map(|_| {
        app.request(
            Method::POST,
            &format!("/v1/tenants/{}/webhooks", app.tenant),
            Some(&app.tokens.admin),
        )
        .json(&json!({"url": "http://127.0.0.1:9/hook"}))
        .send()
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(adds)
        .await
        .into_iter()
        .map(|r| r.expect("add").status())
        .collect();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, refused), (3, 17), "{statuses:?}");
    let listed = app
        .get_json(
            &format!("/v1/tenants/{}/webhooks", app.tenant),
            &app.tokens.admin,
        )
        .await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn deliveries_are_signed_and_tell_what_happened_with_a_link_to_the_inbox() {
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(fast).await;
    let created = add_webhook(&app, json!({"url": receiver.url})).await;
    let secret = created["secret"].as_str().expect("secret").to_owned();

    app.park("hooked").await;
    let parked = receiver.next_of("parked").await;
    verify(&secret, &parked);
    let body = parked.json();
    assert_eq!(body["tenant"], app.tenant.as_str());
    assert_eq!(body["approval_id"], "hooked");
    assert_eq!(body["actor"], "agent-1");
    assert_eq!(
        body["inbox_url"],
        format!("{INBOX}/ui/approvals/hooked?tenant={}", app.tenant)
    );
    assert_eq!(body["event"]["details"]["decision"], "require_approval");
    // The id in the body and in the header is the same, and stable: receivers drop duplicates.
    assert_eq!(
        parked.header("x-approvals-event-id"),
        format!("{}:{}", app.tenant, body["id"].as_str().unwrap_or(""))
    );

    let accepted = app.decide("hooked", "accept", &app.tokens.reviewer).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let decided = receiver.next_of("decided").await;
    verify(&secret, &decided);
    assert_eq!(decided.json()["event"]["kind"], "accepted");
    assert_eq!(decided.json()["actor"], "alice");
}

/// An unreadable entry among a tenant's webhooks (a hand edit, a bad restore) is passed over
/// and counted; the tenant's other webhooks still get their deliveries.
#[tokio::test]
async fn an_unreadable_webhook_does_not_silence_the_others() {
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(fast).await;
    add_webhook(&app, json!({"url": receiver.url})).await;
    let mut conn = app.redis().connection().await;
    let () = redis::cmd("HSET")
        .arg(format!("webhooks:{}", app.tenant))
        .arg("junk")
        .arg("{")
        .query_async(&mut conn)
        .await
        .expect("hset");

    app.park("hooked").await;
    let parked = receiver.next_of("parked").await;
    assert_eq!(parked.json()["approval_id"], "hooked");
    let listed = app
        .get_json(
            &format!("/v1/tenants/{}/webhooks", app.tenant),
            &app.tokens.admin,
        )
        .await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    app.metrics_until(
        &app.base,
        WITHIN,
        "the unreadable webhook counted",
        |text| {
            text.lines()
                .any(|l| l.starts_with("approvals_unreadable_records_total{") && !l.ends_with(" 0"))
        },
    )
    .await;
}

/// The queued deliveries and when each is due (a claimed one: its lease's end), by id.
async fn due(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, i64)> {
    redis::cmd("ZRANGE")
        .arg("webhooks:due")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await
        .expect("zrange")
}

/// A webhook this version cannot read (a newer version wrote it, a hand edit) is not a
/// removed one: its deliveries wait until it reads again. They were marked sent and lost.
#[tokio::test]
async fn a_webhook_that_cannot_be_read_keeps_its_deliveries() {
    let mut receiver = Receiver::start(usize::MAX).await;
    let app = TestApp::spawn_with(fast).await;
    let hook = add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    let (key, id) = (
        format!("webhooks:{}", app.tenant),
        hook["id"].as_str().expect("an id").to_owned(),
    );
    let mut conn = app.redis().connection().await;
    let readable: String = redis::cmd("HGET")
        .arg(&key)
        .arg(&id)
        .query_async(&mut conn)
        .await
        .expect("hget");
    app.park("kept").await;
    // Queued, and its first attempt failed: held back while its webhook turns unreadable,
    // then due, so that its next attempt meets the unreadable webhook.
    receiver.next_of("parked").await;
    let queued = due(&mut conn).await;
    let [(delivery, _)] = queued.as_slice() else {
        panic!("one delivery queued: {queued:?}");
    };
    let set_due = |at: i64| {
        redis::cmd("ZADD")
            .arg("webhooks:due")
            .arg(at)
            .arg(delivery)
            .to_owned()
    };
    let now = || chrono::Utc::now().timestamp_millis();
    let () = set_due(now() + 600_000)
        .query_async(&mut conn)
        .await
        .expect("zadd");
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg(&id)
        .arg("{")
        .query_async(&mut conn)
        .await
        .expect("hset");
    let () = set_due(now()).query_async(&mut conn).await.expect("zadd");
    // Claimed (leased seconds ahead), then attempted: it must stay queued.
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let queued = due(&mut conn).await;
        let [(_, at)] = queued.as_slice() else {
            panic!("the delivery was dropped while its webhook could not be read");
        };
        if *at > now() + 3_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing reaches the receiver while the webhook is unreadable, so the next post is one
    // it takes, once the webhook reads again.
    receiver.recover();
    while receiver.got.try_recv().is_ok() {}
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg(&id)
        .arg(readable)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let got = receiver.next_of("parked").await;
    assert_eq!(got.json()["approval_id"], "kept");
}

/// After a tenant's TTL is lowered, approvals parked since are warned about in time, though
/// one parked before (with the longer TTL, not yet due) is listed ahead of them: the scan
/// stopped at it, and the newer approvals expired unwarned.
#[tokio::test]
async fn a_lowered_ttl_does_not_hide_newer_approvals_from_the_warning() {
    let mut receiver = Receiver::start(0).await;
    let mut app = TestApp::spawn_with(expiring_after(Duration::from_secs(3_600))).await;
    add_webhook(
        &app,
        json!({"url": receiver.url, "events": ["expiring_soon"]}),
    )
    .await;
    app.park("parked-for-an-hour").await;
    app.restart_with(|s| {
        s.approvals
            .tenant_ttl
            .insert(crate::support::TENANT.into(), Duration::from_secs(4));
    })
    .await;
    app.park("parked-for-seconds").await;
    let warned = receiver.next_of("expiring_soon").await;
    assert_eq!(warned.json()["approval_id"], "parked-for-seconds");
}

/// A tenant with a webhook and nothing pending has its notification counters at 0 as soon as
/// the reader meets it: after a restart, its first dead letter is then an increase the alert
/// sees, not a series born at 1 (only tenants with approvals pending had them).
#[tokio::test]
async fn a_webhook_tenants_notification_counters_exist_before_its_first_delivery() {
    let receiver = Receiver::start(0).await;
    // A tenant of its own: the test binary's apps share one metrics registry.
    let app = own_tenant("counted-early").spawn_with(fast).await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    let dead = format!(
        "approvals_notifications_total{{tenant=\"{}\",outcome=\"dead\"}} 0\n",
        app.tenant
    );
    app.metrics_until(&app.base, WITHIN, "the counters at 0", |m| {
        m.contains(&dead)
    })
    .await;
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_event_again_until_it_takes_it() {
    // 500 twice, then 200.
    let mut receiver = Receiver::start(2).await;
    // A tenant of its own: the counts below are then this test's alone.
    let app = own_tenant("retried").spawn_with(fast).await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    app.park("retried").await;
    let ids: Vec<String> = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ]
    .iter()
    .map(|r| r.header("x-approvals-event-id").to_owned())
    .collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    // Taken on the third attempt: nothing more comes.
    let more = tokio::time::timeout(Duration::from_secs(2), receiver.got.recv()).await;
    assert!(more.is_err(), "delivered again after a 200: {more:?}");
    // Counted per tenant and outcome: exactly these attempts, on this test's own tenant.
    app.metrics_until(&app.base, WITHIN, "notifications counted", |m| {
        notifications_counted(m, &app.tenant, "sent") == 1.0
            && notifications_counted(m, &app.tenant, "failed") == 2.0
    })
    .await;
}

/// A receiver that answers the `parked` webhook of approval `first` with `429` and
/// `Retry-After: 2`, then takes everything: it, the app, and when it asked for the pause.
async fn asked_to_wait_after(first: &str) -> (Receiver, TestApp, std::time::Instant) {
    let mut receiver = Receiver::start_failing_with(1, Some("2")).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.retry_max = Duration::from_secs(10);
    })
    .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    app.park(first).await;
    let refused = receiver.next().await;
    assert!(!refused.accepted);
    (receiver, app, refused.at)
}

/// A rate-limited receiver (Slack answers 429 with `Retry-After`) is not tried again before
/// the time it asks for: retried at the usual backoff (here 100 ms), it was hit again and again
/// and its deliveries went dead.
#[tokio::test]
async fn a_receiver_that_asks_to_wait_is_not_tried_sooner() {
    let (mut receiver, _app, asked_at) = asked_to_wait_after("rate-limited").await;
    let taken = receiver.next().await;
    assert!(taken.accepted);
    assert_eq!(taken.json()["approval_id"], "rate-limited");
    let after = taken.at - asked_at;
    assert!(
        after >= Duration::from_millis(1_900),
        "tried again after {after:?}, though asked to wait 2 s"
    );
}

/// `Retry-After` holds back every delivery to that webhook, not only the one it answered: the
/// others kept their pace, each earning a 429 (and an attempt towards its dead letter) from a
/// receiver that had said when to come back.
#[tokio::test]
async fn a_receiver_that_asks_to_wait_gets_nothing_else_meanwhile() {
    let (mut receiver, app, asked_at) = asked_to_wait_after("first").await;
    // Parked after the receiver asked for a pause: its event waits out the pause too.
    app.park("second").await;
    let mut taken = Vec::new();
    for _ in 0..2 {
        let got = receiver.next().await;
        let after = got.at - asked_at;
        assert!(
            after >= Duration::from_millis(1_900),
            "{} sent after {after:?}, though the receiver asked for 2 s",
            got.json()["approval_id"],
        );
        assert!(got.accepted);
        taken.push(got.json()["approval_id"].as_str().unwrap_or("").to_owned());
    }
    taken.sort();
    assert_eq!(taken, ["first", "second"]);
}

#[tokio::test]
async fn nothing_is_lost_across_a_restart_and_dead_letters_are_counted() {
    let mut receiver = Receiver::start(usize::MAX).await;
    let mut app = TestApp::spawn_with(|s| {
        fast(s);
        // Slow retries: the restart happens while they wait, long before they run out.
        s.notifications.retry_base = Duration::from_secs(1);
        s.notifications.retry_max = Duration::from_secs(2);
    })
    .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    for n in 0..3 {
        app.park(&format!("before-restart-{n}")).await;
    }
    // Each was attempted at least once and refused.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 3 {
        seen.insert(
            receiver
                .next()
                .await
                .header("x-approvals-event-id")
                .to_owned(),
        );
    }
    // A new instance on the same Redis; the receiver is back.
    app.restart().await;
    receiver.recover();
    app.park("after-restart").await;
    // Only what the receiver took counts: refused posts from before are still in the channel.
    let mut delivered = std::collections::HashSet::new();
    while delivered.len() < 4 {
        let got = receiver.next().await;
        if got.accepted {
            delivered.insert(got.json()["approval_id"].as_str().unwrap_or("").to_owned());
        }
    }
    for n in 0..3 {
        assert!(
            delivered.contains(&format!("before-restart-{n}")),
            "{delivered:?}"
        );
    }
    let listed = app
        .get_json(
            &format!("/v1/tenants/{}/webhooks", app.tenant),
            &app.tokens.admin,
        )
        .await;
    assert_eq!(listed["dead_letters"], 0, "{listed}");

    // A receiver that never takes it: given up after max_attempts, counted as a dead letter.
    drop(app);
    let mut dead_receiver = Receiver::start(usize::MAX).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.max_attempts = 2;
    })
    .await;
    add_webhook(
        &app,
        json!({"url": dead_receiver.url, "events": ["parked"]}),
    )
    .await;
    app.park("never-taken").await;
    dead_receiver.next().await;
    dead_receiver.next().await;
    until_dead_letters(&app, 1).await;
}

#[tokio::test]
async fn slack_messages_warn_before_an_approval_expires_with_a_button_to_the_inbox() {
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(expiring_after(Duration::from_secs(8))).await;
    add_webhook(
        &app,
        json!({"url": receiver.url, "format": "slack", "events": ["expiring_soon", "expired"]}),
    )
    .await;
    app.park("ticking").await;
    let soon = receiver.next().await.json();
    let text = soon["text"].as_str().unwrap_or_default();
    assert!(text.contains("Expiring soon"), "{soon}");
    assert!(text.contains("ticking"), "{soon}");
    assert_eq!(
        soon["blocks"][1]["elements"][0]["url"],
        format!("{INBOX}/ui/approvals/ticking?tenant={}", app.tenant)
    );
    let expired = receiver.next().await.json();
    assert!(
        expired["text"]
            .as_str()
            .unwrap_or_default()
            .contains("expired without a decision"),
        "{expired}"
    );
    // Expiring soon is sent once, not on every pass.
    let more = tokio::time::timeout(Duration::from_secs(1), receiver.got.recv()).await;
    assert!(more.is_err(), "{more:?}");
}

/// "Expiring soon" is remembered as sent until its approval expires, not for a day: with a
/// TTL of days, a record of it gone after 24 h let a later pass (or another instance, which
/// scans from the oldest) warn the reviewers again, every day until the deadline.
#[tokio::test]
async fn an_expiring_soon_warning_is_remembered_until_its_approval_expires() {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(|s| {
        expiring_after(4 * DAY)(s);
        // Due at once, however long the TTL.
        s.notifications.expiring_soon_share = 1.0;
    })
    .await;
    let hook = add_webhook(
        &app,
        json!({"url": receiver.url, "events": ["expiring_soon"]}),
    )
    .await;
    app.park("slow-burn").await;
    let soon = receiver.next().await.json();
    assert_eq!(soon["type"], "expiring_soon", "{soon}");

    let key = format!(
        "webhooks:delivery:{}:{}:soon:slow-burn",
        app.tenant,
        hook["id"].as_str().expect("id")
    );
    let mut conn = app.redis().connection().await;
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let state: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if state.as_deref() == Some("sent") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded as sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let remembered_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let remembered = Duration::from_millis(u64::try_from(remembered_ms).unwrap_or(0));
    assert!(
        remembered > 3 * DAY,
        "remembered for {remembered:?} of the approval's four days"
    );
}

/// A burst of more approvals than one page of the "expiring soon" scan: each one is warned
/// about before it expires, not only the oldest page of them.
#[tokio::test]
async fn every_approval_of_a_large_burst_is_warned_about_before_it_expires() {
    const BURST: usize = 300;
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(expiring_after(Duration::from_secs(20))).await;
    add_webhook(
        &app,
        json!({"url": receiver.url, "events": ["expiring_soon"]}),
    )
    .await;
    // Each warning is judged against its own approval's deadline: parking 300 one after
    // another takes a loaded machine a while.
    let mut expires = HashMap::new();
    for n in 0..BURST {
        let id = format!("burst-{n:03}");
        let parked = app.park(&id).await;
        let at: chrono::DateTime<chrono::Utc> = parked["expires_at"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("expires_at");
        expires.insert(id, at);
    }
    let last_expires = expires.values().max().copied().expect("parked");
    let mut warned = std::collections::HashSet::new();
    while warned.len() < BURST {
        let left = (last_expires - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        let got = tokio::time::timeout(left, receiver.got.recv()).await;
        let Ok(Some(got)) = got else {
            panic!("{} of {BURST} warned before the last expired", warned.len());
        };
        let body = got.json();
        assert_eq!(body["type"], "expiring_soon", "{body}");
        let id = body["approval_id"].as_str().unwrap_or_default().to_owned();
        assert!(
            chrono::Utc::now() < expires[&id],
            "{id} warned about after it expired"
        );
        warned.insert(id);
    }
}

/// Thousands of approvals due at once, times ten webhooks, were tens of thousands of Redis
/// calls in one reader pass, and every tenant read after it in the pass waited for its
/// notifications meanwhile. A pass queues a bounded share of the warnings; another tenant's
/// event is queued while most of them are still to come.
#[tokio::test]
async fn a_burst_of_warnings_does_not_hold_up_another_tenants_notifications() {
    const BURST: usize = 1_500;
    const HOOKS: usize = 10;
    let (mut heavy_receiver, mut other_receiver) =
        (Receiver::start(0).await, Receiver::start(0).await);
    let harness = own_tenant("burst");
    let other_tenant = harness.other_tenant.clone();
    let mut app = harness
        .spawn_with(|s| {
            fast(s);
            s.notifications.poll_interval = Duration::from_millis(500);
            s.notifications.expiring_soon_share = 1.0;
            s.notifications.enabled = false;
        })
        .await;
    for _ in 0..HOOKS {
        add_webhook(
            &app,
            json!({"url": heavy_receiver.url, "events": ["expiring_soon"]}),
        )
        .await;
    }
    add_other_tenants_webhook(
        &app,
        &other_tenant,
        json!({"url": other_receiver.url, "events": ["parked"]}),
    )
    .await;
    // Parked while nobody reads: all of them due at the first pass.
    let ids: Vec<String> = (0..BURST).map(|n| format!("due-{n:04}")).collect();
    for chunk in ids.chunks(50) {
        futures::future::join_all(chunk.iter().map(|id| app.park(id))).await;
    }
    app.restart_with(|s| s.notifications.enabled = true).await;
    heavy_receiver.next_of("expiring_soon").await;

    // The other tenant's event, once the burst's warnings are under way.
    park_in_other_tenant(&app, &other_tenant, "meanwhile").await;
    other_receiver.next_of("parked").await;
    let metrics = app.metrics().await;
    let series = format!(
        "approvals_notifications_queued_total{{tenant=\"{}\"}} ",
        app.tenant
    );
    let queued: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!(
        queued < (BURST * HOOKS / 2) as f64,
        "{queued} of {} warnings were queued before another tenant's event",
        BURST * HOOKS
    );
}

/// A webhook removed (say, to replace a secret that leaked) takes its dead letters with it:
/// they were counted in the tenant's `dead_letters` for good, and a redelivery answered that it
/// queued them, only for each to be dropped at its first attempt.
#[tokio::test]
async fn a_removed_webhook_takes_its_dead_letters_with_it() {
    let (failing, mut healthy) = (Receiver::start(usize::MAX).await, Receiver::start(0).await);
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.max_attempts = 1;
    })
    .await;
    let gone = add_webhook(&app, json!({"url": failing.url, "events": ["parked"]})).await;
    add_webhook(&app, json!({"url": healthy.url, "events": ["parked"]})).await;
    app.park("before-removal").await;
    healthy.next_of("parked").await;
    until_dead_letters(&app, 1).await;

    let url = format!(
        "/v1/tenants/{}/webhooks/{}",
        app.tenant,
        gone["id"].as_str().expect("id")
    );
    let removed = app
        .request(Method::DELETE, &url, Some(&app.tokens.admin))
        .send()
        .await
        .expect("delete");
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let listed = app
        .get_json(
            &format!("/v1/tenants/{}/webhooks", app.tenant),
            &app.tokens.admin,
        )
        .await;
    assert_eq!(listed["dead_letters"], 0, "{listed}");
    assert_eq!(redeliver_dead_letters(&app).await, 0);
}

/// An agent chooses part of what a Slack message quotes (its action type, in the reasons; its
/// `agent_id`): a link it slips in shows as text, it does not become a link that looks like
/// the inbox's (nor a mention that pings the channel).
#[tokio::test]
async fn what_an_agent_writes_cannot_become_a_link_or_a_mention_in_slack() {
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(fast).await;
    add_webhook(
        &app,
        json!({"url": receiver.url, "format": "slack", "events": ["parked"]}),
    )
    .await;
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{}/approvals", app.tenant),
            Some(&app.tokens.agent),
        )
        .json(&json!({
            "request_id": "sneaky",
            "action": {"type": "payroll_<https://evil.example|Open in the inbox>"},
        }))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), StatusCode::CREATED);
    let parked = receiver.next().await.json();
    let text = parked["text"].as_str().unwrap_or_default();
    assert!(text.contains("sneaky"), "{parked}");
    let body = parked.to_string();
    assert!(!body.contains("<https://evil"), "a link slipped in: {body}");
    assert!(text.contains("&lt;https://evil.example|"), "{text}");
}

/// A webhook added while its network was allowed is not delivered once the operator takes the
/// allowance back: checked at every delivery, for an address in the URL and for a name that
/// resolves to one (a name may point elsewhere by then: DNS rebinding).
#[tokio::test]
async fn deliveries_never_reach_a_network_that_is_no_longer_allowed() {
    let mut receiver = Receiver::start(0).await;
    let mut app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.max_attempts = 1;
    })
    .await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    add_webhook(&app, json!({"url": by_name, "events": ["parked"]})).await;
    app.park("while-allowed").await;
    receiver.next().await;
    receiver.next().await;

    app.restart_with(|s| s.notifications.allowed_networks.clear())
        .await;
    app.park("after-revoked").await;
    // Both deliveries fail at once (no retries with max_attempts = 1) and are dead letters.
    until_dead_letters(&app, 2).await;
    assert!(
        receiver.got.try_recv().is_err(),
        "a delivery reached a network that is no longer allowed"
    );
}

/// An instance that stops gives up the tenants it was reading: its successor notifies at its
/// first pass, not once the old lease (here 15 s) has run out.
#[tokio::test]
async fn a_restarted_service_notifies_without_waiting_out_the_old_lease() {
    let mut receiver = Receiver::start(0).await;
    let mut app = TestApp::spawn_with(|s| {
        fast(s);
        // The lease is 10 polls + 5 s.
        s.notifications.poll_interval = Duration::from_secs(1);
    })
    .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    app.park("before-restart").await;
    receiver.next().await;

    app.restart().await;
    app.park("after-restart").await;
    let got = tokio::time::timeout(Duration::from_secs(12), receiver.got.recv())
        .await
        .expect("notified within the old reader's 15 s lease")
        .expect("the receiver runs");
    assert_eq!(got.json()["approval_id"], "after-restart");
}

/// Tenants named `due` and `tenants` may have webhooks without breaking everyone's: their
/// webhooks were written over the global due queue (or tenant set) of the same name, and from
/// then on no delivery of any tenant was queued.
#[tokio::test]
async fn tenants_named_as_the_global_keys_break_no_one_elses_webhooks() {
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(fast).await;
    for tenant in ["due", "tenants"] {
        add_other_tenants_webhook(
            &app,
            tenant,
            json!({"url": receiver.url, "events": ["parked"]}),
        )
        .await;
    }
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    app.park("after-due").await;
    let got = tokio::time::timeout(Duration::from_secs(30), receiver.next())
        .await
        .expect("a delivery");
    assert_eq!(got.json()["approval_id"], "after-due");
    // Their webhooks are theirs, listed as added.
    for tenant in ["due", "tenants"] {
        let listed: Value = app
            .get_json(
                &format!("/v1/tenants/{tenant}/webhooks"),
                &app.tokens.platform_admin,
            )
            .await;
        assert_eq!(
            listed["items"].as_array().map(Vec::len),
            Some(1),
            "{listed}"
        );
    }
}

/// A receiver that answers every delivery `404`: when each post arrived.
async fn refusing_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<std::time::Instant>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let _ = tx.send(std::time::Instant::now());
            async { AxumStatus::NOT_FOUND }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// A delivery its receiver refuses (`404` while it is redeployed, a revoked hook) is tried
/// again after its backoff, not sooner: the refusal counted as the receiver being back, and
/// brought every backed-off delivery of the webhook forward to one lease from then.
#[tokio::test]
async fn a_refused_delivery_is_retried_after_its_backoff_not_after_a_lease() {
    let (url, mut posts) = refusing_receiver().await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        // A lease of 2 × 1 s + 5 s; a backoff of 20 s.
        s.notifications.request_timeout = Duration::from_secs(1);
        s.notifications.retry_base = Duration::from_secs(20);
        s.notifications.retry_max = Duration::from_secs(20);
    })
    .await;
    add_webhook(&app, json!({"url": url, "events": ["parked"]})).await;
    app.park("refused").await;
    let first = tokio::time::timeout(Duration::from_secs(30), posts.recv())
        .await
        .expect("a first attempt")
        .expect("the receiver runs");
    let second = tokio::time::timeout(Duration::from_secs(60), posts.recv())
        .await
        .expect("a second attempt")
        .expect("the receiver runs");
    let after = second - first;
    assert!(
        // 20 s less its jitter (a quarter) is 15 s; a lease is 7 s.
        after >= Duration::from_secs(14),
        "tried again after {after:?}, though its backoff is 20 s"
    );
}

/// After a receiver outage an admin delivers the dead letters again: the receiver gets the
/// same event (same id, so it can tell), and the count goes back to zero. A letter that cannot
/// be read (written by hand, or by another version) stays a dead letter and stops no other.
#[tokio::test]
async fn dead_letters_can_be_delivered_again_once_the_receiver_is_back() {
    let mut receiver = Receiver::start(usize::MAX).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.max_attempts = 1;
    })
    .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    app.park("missed").await;
    let refused = receiver.next().await;
    until_dead_letters(&app, 1).await;
    let mut conn = app.redis().connection().await;
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("webhooks:dead:{}", app.tenant))
        .arg("{")
        .query_async(&mut conn)
        .await
        .expect("an unreadable dead letter");
    until_dead_letters(&app, 2).await;

    receiver.recover();
    let redeliver = format!("/v1/tenants/{}/webhooks/dead_letters/redeliver", app.tenant);
    let forbidden = app
        .request(Method::POST, &redeliver, Some(&app.tokens.reviewer))
        .send()
        .await
        .expect("redeliver");
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(redeliver_dead_letters(&app).await, 1);
    let delivered = receiver.next().await;
    assert_eq!(delivered.json()["approval_id"], "missed");
    assert_eq!(
        delivered.header("x-approvals-event-id"),
        refused.header("x-approvals-event-id")
    );
    until_dead_letters(&app, 1).await;
}

/// A warning that could not be sent before its approval was decided is withdrawn, not sent
/// later: a retry, or a dead letter redelivered after an outage, would send reviewers to an
/// approval that is closed. One whose approval still waits goes out with the time left when
/// it is sent, not when it was queued.
#[tokio::test]
async fn a_warning_goes_out_only_while_its_approval_still_waits() {
    let mut receiver = Receiver::start(usize::MAX).await;
    // Its own tenant: the count below is then this test's alone.
    let harness = own_tenant("warned");
    let tenant = harness.tenant.clone();
    let app = harness
        .spawn_with(|s| {
            fast(s);
            let hour = Duration::from_secs(3_600);
            s.approvals.tenant_ttl.insert(tenant.clone(), hour);
            // Warned as soon as parked; one refused attempt makes a dead letter.
            s.notifications.expiring_soon_share = 1.0;
            s.notifications.max_attempts = 1;
        })
        .await;
    add_webhook(
        &app,
        json!({"url": receiver.url, "events": ["expiring_soon"]}),
    )
    .await;
    app.park("decided-meanwhile").await;
    app.park("still-waiting").await;
    let mut refused = HashMap::new();
    for _ in 0..2 {
        let body = receiver.next().await.json();
        refused.insert(body["approval_id"].as_str().unwrap_or("").to_owned(), body);
    }
    until_dead_letters(&app, 2).await;
    let accepted = app
        .decide("decided-meanwhile", "accept", &app.tokens.reviewer)
        .await;
    assert_eq!(accepted.status(), StatusCode::OK);
    // Time passes during the outage: the redelivered warning must say less time is left.
    tokio::time::sleep(Duration::from_secs(2)).await;

    receiver.recover();
    assert_eq!(redeliver_dead_letters(&app).await, 2);
    let delivered = receiver.next().await.json();
    assert_eq!(delivered["approval_id"], "still-waiting", "{delivered}");
    assert_eq!(delivered["approval"]["status"], "pending");
    let queued_left = refused["still-waiting"]["seconds_left"]
        .as_u64()
        .unwrap_or(0);
    let sent_left = delivered["seconds_left"].as_u64().unwrap_or(u64::MAX);
    assert!(
        sent_left + 2 <= queued_left && sent_left + 60 > queued_left,
        "queued with {queued_left} s left, sent with {sent_left} s left"
    );
    app.metrics_until(&app.base, WITHIN, "the warning withdrawn", |m| {
        notifications_counted(m, &app.tenant, "withdrawn") == 1.0
    })
    .await;
    until_dead_letters(&app, 0).await;
    // Withdrawn, so never posted.
    assert!(receiver.got.try_recv().is_err());
}

/// A "parked" notification that could not be sent before its approval was decided is
/// withdrawn too: a retry, or a dead letter redelivered hours later, told reviewers that
/// something waits when nothing did. One whose approval still waits goes out as queued.
#[tokio::test]
async fn a_parked_notification_goes_out_only_while_its_approval_still_waits() {
    let mut receiver = Receiver::start(usize::MAX).await;
    // Its own tenant: the count below is then this test's alone.
    let app = own_tenant("parked-late")
        .spawn_with(|s| {
            fast(s);
            s.notifications.max_attempts = 1;
        })
        .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    app.park("decided-meanwhile").await;
    app.park("still-waiting").await;
    for _ in 0..2 {
        receiver.next().await;
    }
    until_dead_letters(&app, 2).await;
    let accepted = app
        .decide("decided-meanwhile", "accept", &app.tokens.reviewer)
        .await;
    assert_eq!(accepted.status(), StatusCode::OK);

    receiver.recover();
    assert_eq!(redeliver_dead_letters(&app).await, 2);
    let delivered = receiver.next().await.json();
    assert_eq!(delivered["approval_id"], "still-waiting", "{delivered}");
    app.metrics_until(&app.base, WITHIN, "the notification withdrawn", |m| {
        notifications_counted(m, &app.tenant, "withdrawn") == 1.0
    })
    .await;
    until_dead_letters(&app, 0).await;
    assert!(
        receiver.got.try_recv().is_err(),
        "sent for a decided approval"
    );
}

/// A receiver that accepts connections and never answers: every attempt runs out its timeout.
async fn silent_receiver() -> (String, mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = tx.send(());
        }
    });
    (url, accepted)
}

/// SIGTERM while deliveries keep falling due (a receiver that never answers, retried): the
/// attempt in flight runs out its timeout and the service stops; the rest wait in the queue.
#[tokio::test]
async fn a_receiver_that_never_answers_does_not_hold_the_shutdown() {
    let (url, mut accepted) = silent_receiver().await;
    let mut app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.send_concurrency = 1;
    })
    .await;
    add_webhook(&app, json!({"url": url, "events": ["parked"]})).await;
    for i in 0..5 {
        app.park(&format!("queued-{i}")).await;
    }
    tokio::time::timeout(WITHIN, accepted.recv())
        .await
        .expect("an attempt under way");

    let stopped = tokio::time::timeout(Duration::from_secs(10), app.shut_down()).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "still delivering 10 s after SIGTERM"
    );
}

/// A receiver that never answers holds only its own share of the sender's slots: another
/// webhook's deliveries keep flowing while its attempts wait out their timeout (before, the
/// sender waited for a whole batch, so every webhook waited for the slowest receiver).
#[tokio::test]
async fn a_receiver_that_never_answers_does_not_hold_up_other_webhooks() {
    let (silent, mut accepted) = silent_receiver().await;
    let mut healthy = Receiver::start(0).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.request_timeout = Duration::from_secs(30);
        s.notifications.send_concurrency = 4;
        s.notifications.per_webhook_concurrency = 2;
    })
    .await;
    add_webhook(&app, json!({"url": silent, "events": ["parked"]})).await;
    add_webhook(&app, json!({"url": healthy.url, "events": ["parked"]})).await;
    const PARKED: usize = 20;
    for i in 0..PARKED {
        app.park(&format!("burst-{i}")).await;
    }
    // Well within one silent attempt's 30 s timeout.
    let all = tokio::time::timeout(Duration::from_secs(15), async {
        let mut ids = std::collections::HashSet::new();
        for _ in 0..PARKED {
            let got = healthy.next_of("parked").await;
            ids.insert(got.header("x-approvals-event-id").to_owned());
        }
        ids
    })
    .await;
    let ids = all.expect("the healthy webhook waited behind the silent one");
    assert_eq!(ids.len(), PARKED, "each delivered once: {ids:?}");
    let mut silent_attempts = 0;
    while accepted.try_recv().is_ok() {
        silent_attempts += 1;
    }
    assert!(
        (1..=2).contains(&silent_attempts),
        "attempts at once to the silent receiver: {silent_attempts}"
    );
}

/// One tenant holds at most its share of the sender: a tenant whose webhooks all never answer
/// (two here, each allowed two attempts at once, which is every slot) cannot hold up another
/// tenant's notifications until their timeouts run out.
#[tokio::test]
async fn a_tenant_whose_receivers_never_answer_does_not_hold_up_other_tenants() {
    let (silent, mut accepted) = silent_receiver().await;
    let mut other = Receiver::start(0).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.request_timeout = Duration::from_secs(30);
        s.notifications.send_concurrency = 4;
        s.notifications.per_webhook_concurrency = 2;
        s.notifications.per_tenant_concurrency = 2;
    })
    .await;
    for _ in 0..2 {
        add_webhook(&app, json!({"url": silent, "events": ["parked"]})).await;
    }
    add_other_tenants_webhook(
        &app,
        crate::support::OTHER_TENANT,
        json!({"url": other.url, "events": ["parked"]}),
    )
    .await;
    for i in 0..8 {
        app.park(&format!("stuck-{i}")).await;
    }
    // The silent tenant's attempts are under way...
    for _ in 0..2 {
        tokio::time::timeout(WITHIN, accepted.recv())
            .await
            .expect("an attempt under way");
    }
    // ... and the other tenant's approval is announced well within their 30 s timeout.
    park_in_other_tenant(&app, crate::support::OTHER_TENANT, "elsewhere").await;
    let got = tokio::time::timeout(Duration::from_secs(15), other.next_of("parked"))
        .await
        .expect("the other tenant waited behind the silent one");
    assert_eq!(got.json()["approval_id"], "elsewhere");
    let mut silent_attempts = 2;
    while accepted.try_recv().is_ok() {
        silent_attempts += 1;
    }
    assert_eq!(silent_attempts, 2, "attempts at once to the silent tenant");
}

/// A tenant whose several webhooks answer slowly, but not so slowly as to count as stalled,
/// keeps to its share of the sender with what it holds too: another tenant's notification is
/// not queued behind its backlog. Held deliveries were not counted against the tenant's share,
/// and its four webhooks held every slot for as long as the backlog lasted.
#[tokio::test]
async fn a_tenant_whose_receivers_answer_slowly_keeps_to_its_share_of_the_sender() {
    let (slow, answered) = slow_receiver(Duration::from_millis(700)).await;
    let mut other = Receiver::start(0).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.request_timeout = Duration::from_secs(5);
        s.notifications.send_concurrency = 8;
        s.notifications.per_webhook_concurrency = 2;
        s.notifications.per_tenant_concurrency = 4;
    })
    .await;
    for _ in 0..4 {
        add_webhook(&app, json!({"url": slow, "events": ["parked"]})).await;
    }
    // A backlog of 4 × 60 deliveries: 42 s of work at 4 at a time.
    for i in 0..60 {
        app.park(&format!("backlog-{i}")).await;
    }
    add_other_tenants_webhook(
        &app,
        crate::support::OTHER_TENANT,
        json!({"url": other.url, "events": ["parked"]}),
    )
    .await;
    park_in_other_tenant(&app, crate::support::OTHER_TENANT, "elsewhere").await;
    // Not a speed check: what matters is that it came while the backlog was still there.
    let got = tokio::time::timeout(Duration::from_secs(30), other.next_of("parked"))
        .await
        .expect("the other tenant's delivery");
    // Its share came early: a delivery queued behind the backlog waits for most of it.
    let behind = answered.load(Ordering::SeqCst);
    assert!(
        behind < 120,
        "the other tenant waited behind the slow one's backlog ({behind} of 240 answered)"
    );
    assert_eq!(got.json()["approval_id"], "elsewhere");
}

/// A receiver that answers, slowly, and has a long backlog holds only its own share of the
/// sender too: deliveries to another webhook, queued after that backlog, do not wait for it.
#[tokio::test]
async fn a_slow_receivers_backlog_does_not_hold_up_newer_deliveries_elsewhere() {
    let (slow, answered) = slow_receiver(Duration::from_secs(2)).await;
    let mut other = Receiver::start(0).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.request_timeout = Duration::from_secs(5);
    })
    .await;
    add_webhook(&app, json!({"url": slow, "events": ["parked"]})).await;
    // A backlog of 60 for the slow receiver (30 s of work at 4 at a time)...
    for i in 0..60 {
        app.park(&format!("backlog-{i}")).await;
    }
    // ...then another webhook, and deliveries for it queued behind that backlog.
    add_webhook(&app, json!({"url": other.url, "events": ["parked"]})).await;
    for i in 0..10 {
        app.park(&format!("newer-{i}")).await;
    }
    // Not a speed check: what matters is that they came while the backlog was still there.
    tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..10 {
            other.next_of("parked").await;
        }
    })
    .await
    .expect("the other webhook's deliveries");
    // They came early: queued behind the backlog, they would wait for most of it.
    let behind = answered.load(Ordering::SeqCst);
    assert!(
        behind < 30,
        "the other webhook waited behind the slow one's backlog ({behind} of 60 answered)"
    );
}

/// After a lone delivery that went through, a burst's overflow (beyond what is sent and held
/// at once) comes at the receiver's pace: it waited a whole lease (here 15 s), paced behind
/// a backlog the receiver's recovery had nothing of.
#[tokio::test]
async fn a_burst_after_a_lone_delivery_comes_at_the_receivers_pace() {
    let (slow, answered) = slow_receiver(Duration::from_millis(200)).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        // A lease of 2 × 5 s + 5 s.
        s.notifications.request_timeout = Duration::from_secs(5);
    })
    .await;
    add_webhook(&app, json!({"url": slow, "events": ["parked"]})).await;
    app.park("lone").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::SeqCst) < 1 {
        assert!(std::time::Instant::now() < deadline, "the lone one");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let burst: Vec<String> = (0..20).map(|i| format!("burst-{i}")).collect();
    futures::future::join_all(burst.iter().map(|id| app.park(id))).await;
    let parked = std::time::Instant::now();
    // 20 at 4 at a time, 200 ms each: about a second of the receiver's time.
    while answered.load(Ordering::SeqCst) < 21 {
        assert!(
            parked.elapsed() < Duration::from_secs(10),
            "{} of the burst of 20 answered 10 s after it was parked",
            answered.load(Ordering::SeqCst) - 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backlog for a receiver that answers slowly is put back at the pace the receiver takes it,
/// not all due again after the send interval: then the sender claimed and put it back without
/// pause for as long as the backlog lasted, keeping Redis busy and every other tenant's new
/// deliveries behind it in the queue.
#[tokio::test]
async fn a_slow_receivers_backlog_comes_due_at_the_pace_it_is_taken() {
    // Answers every post after 0.8 s (quicker than the 1 s after which a receiver counts as
    // stalled and gets nothing held): with 4 at a time, 5 a second.
    let (slow, _answered) = slow_receiver(Duration::from_millis(800)).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.request_timeout = Duration::from_secs(5);
    })
    .await;
    add_webhook(&app, json!({"url": slow, "events": ["parked"]})).await;
    for i in 0..200 {
        app.park(&format!("backlog-{i}")).await;
    }
    let mut conn = app.redis().connection().await;
    // The backlog queued (the reader has read the parks).
    while due(&mut conn).await.len() < 190 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Due within the next second: put back after the 50 ms send interval, nearly all of
    // the backlog always was; paced, about what the receiver takes in a second or two.
    let mut due_soon = usize::MAX;
    let deadline = std::time::Instant::now() + WITHIN;
    while std::time::Instant::now() < deadline {
        let now = approvals_core::Timestamp::now().as_millis();
        due_soon = due(&mut conn)
            .await
            .iter()
            .filter(|(_, at)| *at <= now + 1_000)
            .count();
        if due_soon <= 15 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{due_soon} of the backlog due within a second, for a receiver that takes 5 a second");
}

/// The same for a receiver that stopped answering altogether: its claimed backlog went back
/// due all at once a request timeout later, and was claimed and put back again and again.
/// Now it comes due at the pace such a receiver can take: its concurrency per timeout.
#[tokio::test]
async fn a_hung_receivers_backlog_comes_due_at_the_pace_it_could_be_taken() {
    let (silent, _accepted) = silent_receiver().await;
    let app = own_tenant("hung").spawn_with(fast).await;
    add_webhook(&app, json!({"url": silent, "events": ["parked"]})).await;
    for i in 0..120 {
        app.park(&format!("hung-{i}")).await;
    }
    let mut conn = app.redis().connection().await;
    let ours = format!("{}:", app.tenant);
    // Until nothing of it has been attempted for a second it is a slow receiver's backlog,
    // paced as the test above shows; then, over 6 s: how many of the tenant's deliveries were
    // at most due within the next 2.5 s, and whether the backlog was put back meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (mut crowded, mut put_back) = (0, 0);
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        let now = approvals_core::Timestamp::now().as_millis();
        let ahead: Vec<i64> = due(&mut conn)
            .await
            .into_iter()
            .filter(|(id, at)| id.starts_with(&ours) && *at > now)
            .map(|(_, at)| at)
            .collect();
        put_back = put_back.max(ahead.len());
        crowded = crowded.max(ahead.iter().filter(|at| **at <= now + 2_500).count());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(put_back >= 100, "the backlog was put back: {put_back}");
    // 4 attempts per 2 s timeout at most: about 5 due in 2.5 s, and the 4 in flight.
    assert!(
        crowded <= 20,
        "{crowded} deliveries due within 2.5 s for a receiver that never answers"
    );
}

/// A receiver that refused a delivery (a 500) and takes the next keeps the refused one's
/// backoff: only one that gave no answer at all (it hung, or could not be reached) has its
/// deferred deliveries brought forward when it takes one again. Brought forward after every
/// 5xx, a delivery that always fails spent its attempts in minutes, not over the hours its
/// backoff spreads them, and a struggling receiver got every retry at once.
#[tokio::test]
async fn a_receiver_that_answered_5xx_keeps_its_retries_backoff() {
    let mut receiver = Receiver::start(1).await;
    let app = own_tenant("backoff")
        .spawn_with(|s| {
            fast(s);
            s.notifications.retry_base = Duration::from_secs(60);
            s.notifications.retry_max = Duration::from_secs(60);
        })
        .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    let mut conn = app.redis().connection().await;
    let ours = format!("{}:", app.tenant);
    // The tenant's deliveries due past 30 s from now (a retry; an attempt under way is leased
    // for 9 s), by id.
    let far = |due: Vec<(String, i64)>| {
        let now = approvals_core::Timestamp::now().as_millis();
        due.into_iter()
            .filter(|(id, at)| id.starts_with(&ours) && *at > now + 30_000)
            .map(|(id, _)| id)
            .collect::<Vec<_>>()
    };
    app.park("refused").await;
    assert!(!receiver.next().await.accepted);
    // Its retry is due in about a minute (±25%) once the attempt is recorded.
    let started = std::time::Instant::now();
    let retried = loop {
        if let [id] = far(due(&mut conn).await).as_slice() {
            break id.clone();
        }
        assert!(started.elapsed() < WITHIN, "the retry was never scheduled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    app.park("taken").await;
    assert!(receiver.next().await.accepted);
    // What a success brings forward it does at once: none of it for 3 s.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert_eq!(
            far(due(&mut conn).await),
            std::slice::from_ref(&retried),
            "brought forward"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A receiver that stopped answering and is back gets its backlog at the pace it now takes
/// it, not at the pace it was put back at while it hung (one every half timeout here): the
/// first attempt that goes through brings the deferred deliveries forward. They trickled in
/// for as long as the hang had spread them (an hour and more for a few thousand).
#[tokio::test]
async fn a_receiver_back_from_a_hang_gets_its_backlog_at_its_new_pace() {
    backlog_of_a_hang_delivered_once_back(false).await;
}

/// Also when the instance that paced the backlog restarted meanwhile (a deploy during the
/// outage): the new one does not know the backlog was spread, and brought nothing forward.
#[tokio::test]
async fn a_receiver_back_from_a_hang_gets_its_backlog_at_its_new_pace_after_a_restart() {
    backlog_of_a_hang_delivered_once_back(true).await;
}

async fn backlog_of_a_hang_delivered_once_back(restart_meanwhile: bool) {
    let hung = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answered = Arc::new(AtomicUsize::new(0));
    // An attempt the sender gave up on (its timeout): the connection closes, the hung
    // handler is dropped, and its guard says so, with the generation it arrived in (the old
    // instance's connections may close late, after the restart).
    struct GivenUp(tokio::sync::mpsc::UnboundedSender<usize>, usize);
    impl Drop for GivenUp {
        fn drop(&mut self) {
            let _ = self.0.send(self.1);
        }
    }
    let (given_up, mut gave_up) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let generation = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = {
        let (hung, answered, generation) = (hung.clone(), answered.clone(), generation.clone());
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let (hung, answered, given_up) = (hung.clone(), answered.clone(), given_up.clone());
                let born = generation.load(Ordering::SeqCst);
                async move {
                    if hung.load(Ordering::SeqCst) {
                        let _guard = GivenUp(given_up, born);
                        std::future::pending::<()>().await;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    AxumStatus::OK
                }
            }),
        )
    };
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let mut app = own_tenant("back").spawn_with(fast).await;
    add_webhook(&app, json!({"url": url, "events": ["parked"]})).await;
    for i in 0..120 {
        app.park(&format!("back-{i}")).await;
    }
    // Hung long enough for the backlog to be put back at a hung receiver's pace: 4 attempts
    // per 2 s timeout, a minute for 120.
    let mut conn = app.redis().connection().await;
    let ours = format!("{}:", app.tenant);
    let spread = |due: &[(String, i64)]| {
        let now = approvals_core::Timestamp::now().as_millis();
        due.iter()
            .filter(|(id, at)| id.starts_with(&ours) && *at > now + 30_000)
            .count()
    };
    let started = std::time::Instant::now();
    while spread(&due(&mut conn).await) < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the backlog was never paced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if restart_meanwhile {
        app.restart().await;
        generation.store(1, Ordering::SeqCst);
    }
    // Back once this instance too has found it down, as a restarted one does in production
    // (its first attempts hung): it has met the webhook before an attempt goes through.
    let now = generation.load(Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), async {
        while gave_up.recv().await != Some(now) {}
    })
    .await
    .expect("the instance gives up an attempt on the hung receiver");
    hung.store(false, Ordering::SeqCst);
    let back = std::time::Instant::now();
    while answered.load(Ordering::SeqCst) < 120 {
        assert!(
            back.elapsed() < Duration::from_secs(25),
            "{} of 120 delivered 25 s after the receiver was back",
            answered.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A receiver that fails at once (a load balancer's instant 502) is paused once a wave of
/// attempts (its concurrency) has failed in a row, the pause doubling with each pause in a
/// row (up to `retry_max` here), rather than hammered: each delivery backed off alone, so a
/// backlog's first attempts went out back to back, then their retries in waves.
#[tokio::test]
async fn a_receiver_that_fails_fast_is_paused_not_hammered() {
    let mut receiver = Receiver::start(usize::MAX).await;
    let app = own_tenant("hammered").spawn_with(fast).await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    futures::future::join_all((0..40).map(|n| {
        let app = &app;
        async move { app.park(&format!("req-{n}")).await }
    }))
    .await;
    receiver.next().await;
    // A wave of 4, then about 4 per pause (100, 200, then 400 ms here): about 25.
    let window = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut attempts = 1;
    while let Ok(Some(_)) = tokio::time::timeout_at(window, receiver.got.recv()).await {
        attempts += 1;
    }
    assert!(
        attempts <= 45,
        "{attempts} attempts in 1.5 s at a receiver failing every one"
    );
    assert!(attempts >= 4, "the receiver was still tried: {attempts}");
}

/// Events trimmed from the audit (its length cap, its retention) before the reader reached
/// them are never delivered: on-call staff learn of it from a counter and an error log. The
/// reader went on from the oldest event left, and nothing told anyone.
#[tokio::test]
async fn events_trimmed_before_the_reader_reached_them_are_counted_as_a_gap() {
    let mut receiver = Receiver::start(0).await;
    let mut app = own_tenant("trimmed").spawn_with(fast).await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    app.park("read").await;
    assert_eq!(receiver.next().await.json()["approval_id"], "read");

    // No reader meanwhile (stopped, not its lock taken: a pass already under way would still
    // have read the next event).
    app.restart_with(|s| s.notifications.enabled = false).await;
    let mut conn = app.redis().connection().await;
    app.park("trimmed").await;
    let audit = format!("approvals:audit:{}", app.tenant);
    let _: i64 = redis::cmd("XTRIM")
        .arg(&audit)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("trim the audit");
    app.park("after").await;
    app.restart_with(|s| s.notifications.enabled = true).await;

    // The next delivery is the event after the gap; the gap itself is counted.
    assert_eq!(receiver.next().await.json()["approval_id"], "after");
    let gaps = format!(
        "approvals_notifications_audit_gaps_total{{tenant=\"{}\"}} 1",
        app.tenant
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains(&gaps), "{gaps} in {metrics}");
    // The alert reads the time of the last gap, not the counter (born at 1 after a restart).
    let gap_at = format!(
        "approvals_notifications_audit_gap_timestamp_seconds{{tenant=\"{}\"}} ",
        app.tenant
    );
    let at: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix(gap_at.as_str()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {gap_at} in {metrics}"));
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - 60.0..=now + 1.0).contains(&at),
        "gap at {at}, now {now}"
    );
}

/// A quiet tenant's whole audit reaching its retention, the reader's own last event with it,
/// is no gap: nothing after the cursor was lost. The reader compared its cursor with the
/// oldest event left, and the next event (newer, as every later one is) raised a false alarm
/// that paged on-call staff.
#[tokio::test]
async fn an_audit_past_its_retention_up_to_the_cursor_is_no_gap() {
    let mut receiver = Receiver::start(0).await;
    let app = own_tenant("quiet")
        .spawn_with(|s| {
            fast(s);
            // Long enough for the reader to read the next event before it is trimmed too.
            s.approvals.audit_retention = Duration::from_secs(3);
        })
        .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    app.park("read").await;
    assert_eq!(receiver.next().await.json()["approval_id"], "read");
    let mut conn = app.redis().connection().await;
    let audit = format!("approvals:audit:{}", app.tenant);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left: usize = redis::cmd("XLEN")
            .arg(&audit)
            .query_async(&mut conn)
            .await
            .expect("xlen");
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the audit was never trimmed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.park("after").await;
    assert_eq!(receiver.next().await.json()["approval_id"], "after");
    let gaps = format!(
        "approvals_notifications_audit_gaps_total{{tenant=\"{}\"}} ",
        app.tenant
    );
    let metrics = app.metrics().await;
    let counted = metrics
        .lines()
        .find_map(|line| line.strip_prefix(gaps.as_str()))
        .map_or(0.0, |value| value.trim().parse::<f64>().unwrap());
    assert_eq!(counted, 0.0, "a gap counted: {gaps}{counted}");
}

/// A tenant whose audit cannot be read: none of its webhooks go out, so its reader shows as
/// behind (the figure the alert reads grows, it does not freeze at the last good pass); and no
/// client was answered an error, so the failed reads count as the service's own
/// (`source="chore"`), not as requests' (`source="request"` pages on-call for an outage). The
/// reader runs in an instance of its own process, whose `/metrics` are its alone (the test
/// binary's apps share one registry).
#[tokio::test]
async fn a_tenant_whose_audit_cannot_be_read_shows_behind_and_pages_no_one_for_client_errors() {
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.enabled = false;
    })
    .await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    let reader = another_instance(&app, |settings| {
        settings["notifications"]["enabled"] = toml::Value::Boolean(true);
    });
    let reader_base = reader.base.clone();
    let lag_series = lag_series(&app);
    // Read through once first: the figure exists, at 0.
    app.park("read").await;
    assert_eq!(receiver.next().await.json()["approval_id"], "read");
    app.metrics_until(&reader_base, WITHIN, "the tenant read", |m| {
        m.contains(&format!("{lag_series}0\n"))
    })
    .await;
    let mut conn = app.redis().connection().await;
    let _: () = redis::cmd("SET")
        .arg(format!("approvals:audit:{}", app.tenant))
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .expect("break the tenant's audit");
    let lag = |m: &str| -> f64 {
        m.lines()
            .find_map(|line| line.strip_prefix(lag_series.as_str()))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let metrics = app
        .metrics_until(&reader_base, WITHIN, "the reader's lag growing", |m| {
            lag(m) >= 1.0
        })
        .await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("approvals_backend_errors_total{")
                && line.contains("source=\"chore\"")),
        "the failed reads are counted as the service's own:\n{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|line| line.contains("source=\"request\"") && !line.ends_with(" 0")),
        "no client was answered an error:\n{metrics}"
    );
}

/// A tenant whose pending approvals cannot be listed (for its expiring-soon warnings) while its
/// audit reads fine is not behind: the reader's lag stays at 0 pass after pass. The failed
/// listing made the whole tenant "not read", and its lag grew by the time since, which
/// `ApprovalsWebhookReaderBehind` pages on, while parked and decided notifications flowed.
#[tokio::test]
async fn a_failing_expiring_soon_listing_is_not_the_reader_falling_behind() {
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.enabled = false;
    })
    .await;
    add_webhook(
        &app,
        json!({"url": receiver.url, "events": ["parked", "expiring_soon"]}),
    )
    .await;
    let reader = another_instance(&app, |settings| {
        settings["notifications"]["enabled"] = toml::Value::Boolean(true);
    });
    let lag_series = lag_series(&app);
    app.park("read").await;
    assert_eq!(receiver.next().await.json()["approval_id"], "read");
    app.metrics_until(&reader.base, WITHIN, "the tenant read", |m| {
        m.contains(&format!("{lag_series}0\n"))
    })
    .await;
    let mut conn = app.redis().connection().await;
    let index = format!("approvals:index:{}:pending", app.tenant);
    let _: () = redis::cmd("DEL")
        .arg(&index)
        .query_async(&mut conn)
        .await
        .expect("del");
    let _: () = redis::cmd("SET")
        .arg(&index)
        .arg("not a sorted set")
        .query_async(&mut conn)
        .await
        .expect("break the tenant's pending index");
    let failed = |m: &str| -> f64 {
        m.lines()
            .filter(|line| {
                line.starts_with("approvals_backend_errors_total{")
                    && line.contains("source=\"chore\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = failed(
        &app.metrics_until(&reader.base, WITHIN, "metrics", |_| true)
            .await,
    );
    // Several passes (one every 100 ms), each failing its listing.
    let metrics = app
        .metrics_until(&reader.base, WITHIN, "several failed listings", |m| {
            failed(m) >= before + 5.0
        })
        .await;
    assert!(
        metrics.contains(&format!("{lag_series}0\n")),
        "the reader's lag moved:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("approvals_notifications_reader_lag"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Another instance of `app`'s service, in a process of its own (its `/metrics` are its alone:
/// the test binary's apps share one registry), its configuration `app`'s as `edit` changes
/// it; with the base URL it serves on.
fn another_instance(app: &TestApp, edit: impl FnOnce(&mut toml::Table)) -> Instance {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = approvals_testkit::free_port();
    let config = app.config_file(dir.path(), port);
    let mut settings: toml::Table = std::fs::read_to_string(&config)
        .expect("the config file")
        .parse()
        .expect("TOML");
    edit(&mut settings);
    std::fs::write(&config, settings.to_string()).expect("write the config file");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_approvals"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info");
    let mut process = approvals_testkit::process::Process::spawn(command);
    process.wait_for_line("serving", Duration::from_secs(30));
    Instance {
        process,
        base: format!("http://127.0.0.1:{port}"),
        _config: dir,
    }
}

/// A service in a process of its own, stopped when dropped.
struct Instance {
    process: approvals_testkit::process::Process,
    base: String,
    _config: tempfile::TempDir,
}

/// The start of `app`'s tenant's reader-lag line in `/metrics`.
fn lag_series(app: &TestApp) -> String {
    format!(
        "approvals_notifications_reader_lag_seconds{{tenant=\"{}\"}} ",
        app.tenant
    )
}

/// A TCP relay to Redis that the test can cut: one instance loses Redis while the others
/// keep it.
struct Relay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a relay port");
        let port = listener.local_addr().expect("the relay's address").port();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, task }
    }

    /// Closes the relay and every link through it (the links die with their `JoinSet`).
    fn cut(&self) {
        self.task.abort();
    }
}

/// One instance cut off from Redis while another reads the tenant: the cut-off instance, which
/// did not hold the tenant's reader lock, does not report it behind. It did, for every webhook
/// tenant it had met, and the alert's `max` across instances then warned of tenants whose
/// webhooks went out on time.
#[tokio::test]
async fn an_instance_cut_off_from_redis_does_not_report_tenants_another_instance_reads() {
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(fast).await;
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    // This instance reads the tenant (the only reader yet): it holds the lock.
    app.park("held").await;
    assert_eq!(receiver.next().await.json()["approval_id"], "held");

    let redis_port = app.redis().port();
    let relay = Relay::to(([127, 0, 0, 1], redis_port).into()).await;
    let mut other = another_instance(&app, |settings| {
        let redis_url = settings["redis"]["url"]
            .as_str()
            .expect("redis.url")
            .to_owned();
        settings["redis"]["url"] = toml::Value::String(
            redis_url.replace(&format!(":{redis_port}"), &format!(":{}", relay.port)),
        );
    });
    let lag_series = lag_series(&app);
    // The other instance has met the tenant, and found its lock taken.
    app.metrics_until(&other.base, WITHIN, "the tenant met", |m| {
        m.contains(&format!("{lag_series}0\n"))
    })
    .await;

    relay.cut();
    other
        .process
        .wait_for_line("webhook reader failing", WITHIN);
    let metrics = app
        .metrics_until(&other.base, WITHIN, "the metrics", |_| true)
        .await;
    assert!(
        metrics.contains(&format!("{lag_series}0\n")),
        "the cut-off instance reports a tenant it did not read as behind:\n{metrics}"
    );
}

/// A tenant whose audit cannot be read fails every pass; another tenant with more events than
/// a pass reads still catches up at once, not one pass per poll interval (its backlog grew
/// until the audit's cap trimmed it unread).
#[tokio::test]
async fn a_tenant_failing_every_pass_does_not_slow_another_tenants_catching_up() {
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.poll_interval = Duration::from_secs(5);
        s.notifications.read_batch = 10;
    })
    .await;
    add_other_tenants_webhook(
        &app,
        crate::support::OTHER_TENANT,
        json!({"url": receiver.url, "events": ["parked"]}),
    )
    .await;
    let mut conn = app.redis().connection().await;
    let _: () = redis::cmd("SET")
        .arg(format!("approvals:audit:{}", crate::support::OTHER_TENANT))
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .expect("break the other tenant's audit");
    add_webhook(&app, json!({"url": receiver.url, "events": ["parked"]})).await;
    for n in 0..30 {
        app.park(&format!("backlog-{n}")).await;
    }
    // One poll interval to the first pass; the other two passes follow at once (each one
    // waited a poll interval: 15 s in all).
    let mut delivered = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(8), async {
        while delivered.len() < 30 {
            let got = receiver.next_of("parked").await;
            delivered.insert(got.json()["approval_id"].as_str().unwrap_or("").to_owned());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of 30 within 8 s", delivered.len()));
}

/// Deliveries through the operator's proxy named by host name (`proxy.internal:3128`, which
/// resolves inside the network): the guard checked the proxy's own name too and refused it,
/// so every delivery went dead. Here the "proxy" is a receiver on `localhost`, which loopback
/// deliveries may not reach; the webhook's host never resolves here at all.
#[tokio::test]
async fn deliveries_go_through_a_proxy_named_by_host_name() {
    let mut proxy = Receiver::start(0).await;
    let proxy_url = proxy
        .url
        .replace("127.0.0.1", "localhost")
        .replace("/hook", "");
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.notifications.allowed_networks = Vec::new();
        s.notifications.proxy = Some(proxy_url);
    })
    .await;
    add_webhook(
        &app,
        json!({"url": "http://receiver.invalid/hook", "events": ["parked"]}),
    )
    .await;
    app.park("proxied").await;
    assert_eq!(proxy.next().await.json()["approval_id"], "proxied");
}

/// Approvals whose warning went out stay before the scan's resume point, and were queued
/// again on every pass: a no-op in Redis, but a round trip per approval and webhook, every
/// pass, which every other tenant's notifications waited behind.
#[tokio::test]
async fn warnings_already_queued_cost_no_redis_call_on_later_passes() {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let mut receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(|s| {
        expiring_after(DAY)(s);
        // Due at once, however long the TTL.
        s.notifications.expiring_soon_share = 1.0;
    })
    .await;
    add_webhook(
        &app,
        json!({"url": receiver.url, "events": ["expiring_soon"]}),
    )
    .await;
    for n in 0..40 {
        app.park(&format!("warned-{n}")).await;
    }
    for _ in 0..40 {
        receiver.next_of("expiring_soon").await;
    }
    let before = app.redis_calls("evalsha").await;
    // Ten reader passes (poll_interval is 100 ms): what they cost is what is measured.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = app.redis_calls("evalsha").await - before;
    assert!(
        during < 100,
        "{during} scripts in ten passes over 40 approvals already warned about"
    );
}

/// An "expiring soon" attempt reads its approval first (to say how long is left, or to drop
/// the warning if it was decided). On a Temporal frontend that hangs, that read took the whole
/// `temporal.call_timeout`, longer than the delivery's lease (2 × the webhook request timeout
/// + 5 s): the lease ran out mid-attempt, the delivery was claimed again, and reviewers got the
/// warning twice. The read now gets half the request timeout; past it, the warning goes as
/// queued, once.
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_temporal_does_not_make_a_warning_go_twice() {
    use approvals_testkit::temporal_server::DevServer;

    let server = tokio::task::block_in_place(|| DevServer::start(None));
    let mut receiver = Receiver::start(1).await;
    let harness = Harness::new(Backend::Temporal);
    let tenant = harness.tenant.clone();
    let app = harness
        .spawn_with_tenant_store(|s| {
            fast(s);
            s.approvals
                .tenant_ttl
                .insert(tenant, Duration::from_secs(60));
            s.notifications.expiring_soon_share = 0.95;
            // Lease: 2 × 1 s + 5 s = 7 s, shorter than a hung read (10 s).
            s.notifications.request_timeout = Duration::from_secs(1);
            s.notifications.retry_base = Duration::from_secs(2);
            s.notifications.retry_max = Duration::from_secs(2);
            s.temporal.address = server.address();
            s.temporal.task_queue = "nobody-polls".into();
            s.temporal.call_timeout = Duration::from_secs(10);
            s.server.request_timeout = Duration::from_secs(12);
        })
        .await;
    add_webhook(
        &app,
        json!({"url": receiver.url, "events": ["expiring_soon"]}),
    )
    .await;
    app.park("on-a-hung-server").await;
    let refused = receiver.next().await;
    assert!(!refused.accepted);
    // The retry, two seconds on, reads its approval from a frontend that no longer answers.
    server.freeze();
    let sent = receiver.next().await;
    assert!(sent.accepted);
    assert_eq!(sent.json()["type"], "expiring_soon");
    // A second attempt, on a lease run out, would post within the hung read's 10 s.
    let again = tokio::time::timeout(Duration::from_secs(12), receiver.got.recv()).await;
    server.thaw();
    assert!(
        again.is_err(),
        "sent twice: {:?}",
        again.map(|r| r.map(|r| r.json()))
    );
}

/// A webhook's body is checked before the caller's permission, as the contract orders: a
/// reviewer sending a bad address is told it is bad (400), not only that it may not (403).
/// And the address is bounded in characters, as documented, not in bytes: one of 1,100
/// non-ASCII characters (2,200 bytes) is taken.
#[tokio::test]
async fn a_webhooks_body_is_checked_first_and_its_length_in_characters() {
    let receiver = Receiver::start(0).await;
    let app = TestApp::spawn_with(fast).await;
    let path = format!("/v1/tenants/{}/webhooks", app.tenant);
    assert_problem(
        app.request(Method::POST, &path, Some(&app.tokens.reviewer))
            .json(&json!({"url": "ftp://hooks.example/x"}))
            .send()
            .await
            .expect("post"),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    let long = format!("{}/{}", receiver.url, "é".repeat(1_100));
    add_webhook(&app, json!({"url": long})).await;
}
