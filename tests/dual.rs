//! `backend.kind = "dual"` for real: the service on a redis-server of each test's own and the
//! binary's shared Temporal dev server (with an in-process worker), talked to over HTTP, and
//! each engine checked directly through its own backend (`engines::connect`). Faults are real too:
//! a stopped redis-server, a closed port, a socket that never answers.
//!
//! The metrics recorder is process-wide, so the tests read their counters by their own tenant.

#![cfg(feature = "temporal")]

#[path = "common/shared_temporal.rs"]
mod shared_temporal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use approvals::app::EngineMetrics;
use approvals::auth::{mint, Role};
use approvals::config::{BackendChoice, EngineKind, Settings};
use approvals::engines::{self, RunningEngine};
use approvals::startup::Application;
use approvals_core::conformance::{fresh_tenant, id, pending};
use approvals_core::{
    Approval, ApprovalBackend, DecisionRequest, ImportOutcome, RecordTransfer, Status, TenantId,
    Verdict,
};
use approvals_testkit::RedisServer;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Dual settings on `redis` and the shared Temporal server, `primary` answering.
async fn dual_settings(primary: EngineKind, redis: &RedisServer) -> Settings {
    let temporal = shared_temporal::shared().await;
    let mut settings = Settings::default();
    settings.server.listen = "127.0.0.1:0".parse().expect("addr");
    settings.policy.dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    // The service runs in this test process: its sandbox children are the real binary (start-up
    // tries one where tenants' bundles are kept: a Redis primary).
    settings.policy.sandbox.binary = Some(env!("CARGO_BIN_EXE_approvals").into());
    // Generous: these tests check what is mirrored and compared, not how fast (a loaded
    // two-core machine answers a Temporal update in seconds at worst).
    settings.backend = BackendChoice::Dual {
        primary,
        secondary_timeout: Duration::from_secs(20),
    };
    settings.redis.url = redis.url();
    settings.temporal.address = temporal.address;
    settings.temporal.task_queue = temporal.task_queue;
    settings.temporal.call_timeout = Duration::from_secs(20);
    settings.approvals.sweep_interval = Duration::from_millis(100);
    settings.approvals.stats_interval = Duration::from_millis(500);
    settings
}

/// The service in dual mode, for one tenant of its own.
struct DualApp {
    base: String,
    tenant: TenantId,
    agent: String,
    reviewer: String,
    http: reqwest::Client,
    settings: Settings,
    redis: RedisServer,
    stop: CancellationToken,
}

impl DualApp {
    async fn spawn(primary: EngineKind, adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_on(RedisServer::start().await, primary, adjust).await
    }

    async fn spawn_on(
        redis: RedisServer,
        primary: EngineKind,
        adjust: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = dual_settings(primary, &redis).await;
        let tenant = fresh_tenant("dual");
        let (agent, agent_entry) = mint(tenant.as_str(), Role::Agent, "agent-1");
        let (reviewer, reviewer_entry) = mint(tenant.as_str(), Role::Reviewer, "alice");
        settings.auth.tokens = vec![agent_entry, reviewer_entry];
        adjust(&mut settings);
        let app = Application::build(settings.clone())
            .await
            .expect("application builds");
        let base = format!("http://{}", app.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(app.run_until(async move { signal.cancelled().await }));
        Self {
            base,
            tenant,
            agent,
            reviewer,
            http: reqwest::Client::new(),
            settings,
            redis,
            stop,
        }
    }

    /// Parks `request_id` through a service on this app's Redis alone (`backend.kind =
    /// "redis"`): a record the secondary never heard of, as one whose mirror was lost.
    async fn park_on_redis_alone(&self, request_id: &str) {
        let mut settings = self.settings.clone();
        settings.backend = BackendChoice::Redis;
        let alone = Application::build(settings)
            .await
            .expect("application builds");
        let base = format!("http://{}", alone.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let serving = tokio::spawn(alone.run_until(async move { signal.cancelled().await }));
        assert_eq!(
            self.park_at(&base, request_id).await.status(),
            StatusCode::CREATED
        );
        stop.cancel();
        serving.await.expect("joined").expect("stopped");
        let temporal = self.engine(EngineKind::Temporal).await;
        let held = temporal.get(&self.tenant, &id(request_id)).await;
        assert!(matches!(held, Ok(None)), "Temporal holds {request_id}");
    }

    /// Polls Temporal until it holds `request_id` with `status`.
    async fn temporal_until(&self, request_id: &str, status: Status) {
        self.held_until(EngineKind::Temporal, request_id, status)
            .await;
    }

    /// Polls Redis until it holds `request_id` with `status`.
    async fn redis_until(&self, request_id: &str, status: Status) {
        self.held_until(EngineKind::Redis, request_id, status).await;
    }

    async fn held_until(&self, kind: EngineKind, request_id: &str, status: Status) {
        let engine = self.engine(kind).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let held = engine
                .get(&self.tenant, &id(request_id))
                .await
                .expect("read the engine");
            if held.as_ref().map(|a| a.status) == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?} never held {request_id} as {status:?}: {held:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One engine of the pair, as its own client.
    async fn engine(&self, kind: EngineKind) -> Arc<dyn RecordTransfer> {
        engines::connect(kind, &self.settings)
            .await
            .expect("engine connects")
    }

    fn approval_path(&self, request_id: &str) -> String {
        format!(
            "{}/v1/tenants/{}/approvals/{request_id}",
            self.base, self.tenant
        )
    }

    /// Submits an action the default policy parks, with `request_id` as its id.
    async fn park(&self, request_id: &str) -> reqwest::Response {
        self.park_at(&self.base, request_id).await
    }

    /// [`DualApp::park`] on the service at `base`.
    async fn park_at(&self, base: &str, request_id: &str) -> reqwest::Response {
        self.http
            .post(format!("{base}/v1/tenants/{}/approvals", self.tenant))
            .bearer_auth(&self.agent)
            .json(&json!({"request_id": request_id,
                "action": {"type": "document_read", "resource": "finance/q3-report"}}))
            .send()
            .await
            .expect("submit")
    }

    async fn decide(&self, request_id: &str, verdict: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/{verdict}", self.approval_path(request_id)))
            .bearer_auth(&self.reviewer)
            .json(&json!({"reason": "checked"}))
            .send()
            .await
            .expect("decide")
    }

    async fn get(&self, request_id: &str) -> reqwest::Response {
        self.http
            .get(self.approval_path(request_id))
            .bearer_auth(&self.reviewer)
            .send()
            .await
            .expect("get")
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Polls /metrics until `ready` holds (the event, not a guessed delay); panics naming
    /// `what` after `within`.
    async fn metrics_until(&self, within: Duration, what: &str, ready: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let text = self.metrics().await;
            if ready(&text) {
                return;
            }
            assert!(Instant::now() < deadline, "{what} never happened:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// This app's tenant's value of a dual counter for `op` (0 if it has no series).
    fn counter(&self, text: &str, name: &str, op: &str) -> f64 {
        let tenant = format!("tenant=\"{}\"", self.tenant);
        sum_series(text, name, &[&tenant, &format!("op=\"{op}\"")])
    }
}

impl Drop for DualApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sum_series(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Both engines' records of one approval: equal, and equal to what the service answered.
async fn assert_both_hold(app: &DualApp, request_id: &str, served: &Value) -> Approval {
    let approval_id = id(request_id);
    let mut records = Vec::new();
    for kind in [EngineKind::Redis, EngineKind::Temporal] {
        let record = app
            .engine(kind)
            .await
            .get(&app.tenant, &approval_id)
            .await
            .expect("engine answers")
            .unwrap_or_else(|| panic!("{kind:?} has no record of {request_id}"));
        assert_eq!(
            serde_json::to_value(&record).expect("json"),
            *served,
            "{kind:?}'s record of {request_id} is what the service answered"
        );
        records.push(record);
    }
    records.remove(0)
}

/// (a) Submits and decisions through the service land in both engines, identical, and no
/// comparison of them disagrees.
async fn writes_land_in_both_engines_and_agree(primary: EngineKind) {
    let app = DualApp::spawn(primary, |_| {}).await;
    for (request_id, verdict, status) in
        [("a-1", "accept", "accepted"), ("a-2", "reject", "rejected")]
    {
        let parked = app.park(request_id).await;
        assert_eq!(parked.status(), StatusCode::CREATED);
        let parked: Value = parked.json().await.expect("json");
        let record = assert_both_hold(&app, request_id, &parked["approval"]).await;
        assert_eq!(record.status, Status::Pending);

        let decided = app.decide(request_id, verdict).await;
        assert_eq!(decided.status(), StatusCode::OK);
        let decided: Value = decided.json().await.expect("json");
        assert_eq!(decided["status"], status);
        let record = assert_both_hold(&app, request_id, &decided).await;
        assert_eq!(record.decided_by.as_deref(), Some("alice"));

        let read = app.get(request_id).await;
        assert_eq!(read.status(), StatusCode::OK);
        assert_eq!(read.json::<Value>().await.expect("json"), decided);
    }
    // Every comparison made (two submits, two decisions, two reads) agreed.
    app.metrics_until(Duration::from_secs(30), "every comparison", |text| {
        let count = |op| app.counter(text, "approvals_dual_comparisons_total", op);
        count("submit") >= 2.0 && count("decide") >= 2.0 && count("get") >= 2.0
    })
    .await;
    let text = app.metrics().await;
    for op in ["submit", "decide", "get"] {
        // Exported at 0, not absent: the alert sees the first disagreement as an increase.
        let zero = format!(
            "approvals_dual_disagreements_total{{tenant=\"{}\",op=\"{op}\"}} 0",
            app.tenant
        );
        assert!(text.lines().any(|l| l == zero), "{zero} in:\n{text}");
    }
    assert!(text.contains("approvals_dual_secondary_up 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_in_both_engines_and_agree_with_redis_primary() {
    writes_land_in_both_engines_and_agree(EngineKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_in_both_engines_and_agree_with_temporal_primary() {
    writes_land_in_both_engines_and_agree(EngineKind::Temporal).await;
}

/// Each engine keeps expiring its own records: the Redis sweeper runs on the secondary too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_engine_records_its_own_expiries() {
    let app = DualApp::spawn(EngineKind::Temporal, |settings| {
        settings.approvals.default_ttl = Duration::from_secs(2);
    })
    .await;
    assert_eq!(app.park("short").await.status(), StatusCode::CREATED);
    let redis = app.engine(EngineKind::Redis).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Listed as expired only once the sweeper has recorded it (a read alone says so earlier).
    while !redis
        .list(&app.tenant, Status::Expired, None, 10)
        .await
        .expect("list")
        .items
        .iter()
        .any(|a| a.id.as_str() == "short")
    {
        assert!(
            Instant::now() < deadline,
            "the secondary's sweeper never recorded the expiry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = app.get("short").await;
    assert_eq!(read.status(), StatusCode::OK);
    let read: Value = read.json().await.expect("json");
    assert_eq!(read["status"], "expired");
    assert_both_hold(&app, "short", &read).await;
}

/// (b) A difference planted in the secondary is counted by tenant and operation, on a read, on
/// a decision and on a submit; the service keeps answering from the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreements_are_counted_by_tenant_and_operation() {
    let app = DualApp::spawn(EngineKind::Redis, |settings| {
        // A read's mismatch is looked at again after this long: short, yet long enough for a
        // mirrored decide (a Temporal update) on a loaded machine, which is dropped, not
        // compared, once it runs out.
        set_secondary_timeout(settings, Duration::from_secs(8));
    })
    .await;
    let temporal = app.engine(EngineKind::Temporal).await;

    // Decided in the secondary only: a read through the service shows the primary's pending
    // record, and the comparison behind it counts.
    assert_eq!(app.park("b-1").await.status(), StatusCode::CREATED);
    let sneaky = DecisionRequest::now(Verdict::Accept, "mallory", None);
    temporal
        .decide(&app.tenant, &id("b-1"), sneaky)
        .await
        .expect("decided in the secondary");
    let read = app.get("b-1").await;
    assert_eq!(
        read.json::<Value>().await.expect("json")["status"],
        "pending"
    );
    app.metrics_until(Duration::from_secs(30), "a get disagreement", |text| {
        app.counter(text, "approvals_dual_disagreements_total", "get") >= 1.0
    })
    .await;

    // A decision through the service wins on the primary; the secondary had another winner.
    let decided = app.decide("b-1", "reject").await;
    assert_eq!(decided.status(), StatusCode::OK);
    app.metrics_until(Duration::from_secs(30), "a decide disagreement", |text| {
        app.counter(text, "approvals_dual_disagreements_total", "decide") == 1.0
    })
    .await;

    // A record of the same id, but another action, already in the secondary.
    let mut planted = pending(&app.tenant, "b-2", Duration::from_secs(3600));
    planted.submitted_by = "someone-else".into();
    assert_eq!(
        temporal.import(planted).await.expect("import"),
        ImportOutcome::Imported
    );
    let parked = app.park("b-2").await;
    assert_eq!(parked.status(), StatusCode::CREATED);
    let parked: Value = parked.json().await.expect("json");
    assert_eq!(
        parked["approval"]["submitted_by"], "agent-1",
        "the primary answers"
    );
    app.metrics_until(Duration::from_secs(30), "a submit disagreement", |text| {
        app.counter(text, "approvals_dual_disagreements_total", "submit") == 1.0
    })
    .await;
    // Not noise of one engine's lag: an id collision, counted apart for on-call to look into.
    let collisions = format!(
        "approvals_dual_id_collisions_total{{tenant=\"{}\"}} 1",
        app.tenant
    );
    let text = app.metrics().await;
    assert!(text.contains(&collisions), "{collisions} in:\n{text}");
}

/// (c) With the secondary down (a stopped redis-server behind a Temporal primary), every
/// request is answered by the primary, the failures are counted, readiness stays, and the
/// secondary is used again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_secondary_fails_no_request() {
    let mut app = DualApp::spawn(EngineKind::Temporal, |settings| {
        settings.redis.call_timeout = Duration::from_secs(1);
    })
    .await;
    app.redis.stop();
    let before = app.metrics().await;
    let errors = |text: &str, op: &str| {
        sum_series(
            text,
            "approvals_dual_secondary_errors_total",
            &[&format!("op=\"{op}\"")],
        )
    };
    assert_eq!(app.park("c-1").await.status(), StatusCode::CREATED);
    assert_eq!(app.decide("c-1", "accept").await.status(), StatusCode::OK);
    let read = app.get("c-1").await;
    assert_eq!(
        read.json::<Value>().await.expect("json")["status"],
        "accepted"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "readiness follows the primary"
    );
    let after = app.metrics().await;
    for op in ["submit", "decide"] {
        assert!(
            errors(&after, op) > errors(&before, op),
            "{op} errors counted:\n{after}"
        );
    }
    app.metrics_until(
        Duration::from_secs(10),
        "the secondary reported down",
        |text| text.contains("approvals_dual_secondary_up 0"),
    )
    .await;

    app.redis.restart().await;
    assert_eq!(app.park("c-2").await.status(), StatusCode::CREATED);
    let redis = app.engine(EngineKind::Redis).await;
    let mirrored = redis.get(&app.tenant, &id("c-2")).await.expect("redis");
    assert!(mirrored.is_some(), "writes reach the secondary again");
    // A write that answered says it is up (pings alone would, a minute after the last
    // failed write).
    app.metrics_until(Duration::from_secs(20), "the secondary back up", |text| {
        text.contains("approvals_dual_secondary_up 1")
    })
    .await;
}

/// A decision the secondary missed (down when it was mirrored) is replayed on it from the
/// primary's record once a read compares the two: left pending there, a switch of primary
/// would let a second reviewer decide it again and never wake its waiting agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_the_secondary_missed_is_replayed_on_it() {
    // Its data kept across the restart.
    let redis = RedisServer::start_durable().await;
    let mut app = DualApp::spawn_on(redis, EngineKind::Temporal, |settings| {
        settings.redis.call_timeout = Duration::from_secs(1);
        // The pause before a mismatch is looked at again.
        set_secondary_timeout(settings, Duration::from_secs(2));
    })
    .await;
    assert_eq!(app.park("r-1").await.status(), StatusCode::CREATED);
    app.redis.stop();
    let accepted = app.decide("r-1", "accept").await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let accepted: Value = accepted.json().await.expect("json");
    app.redis.restart().await;
    let redis = app.engine(EngineKind::Redis).await;
    let missed = redis.get(&app.tenant, &id("r-1")).await.expect("redis");
    assert_eq!(missed.map(|a| a.status), Some(Status::Pending), "missed");

    // A read through the service compares the two, and repairs the secondary.
    assert_eq!(app.get("r-1").await.status(), StatusCode::OK);
    app.metrics_until(Duration::from_secs(30), "a repair", |text| {
        let tenant = format!("tenant=\"{}\"", app.tenant);
        sum_series(text, "approvals_dual_repairs_total", &[&tenant]) == 1.0
    })
    .await;
    assert_both_hold(&app, "r-1", &accepted).await;
}

/// An id used again after its first record left the secondary (Redis drops settled records
/// sooner than Temporal keeps them): a read finds the primary's decided first approval and
/// the secondary's pending second one. A difference, not a missed decision: the first one's
/// accept is not replayed onto the second, which nobody reviewed (it was, and counted as a
/// repair; after a rollback its agent was told "accepted").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_approval_under_the_same_id_on_the_secondary_is_not_repaired() {
    let app = DualApp::spawn(EngineKind::Temporal, |settings| {
        set_secondary_timeout(settings, Duration::from_secs(1));
    })
    .await;
    let hour = Duration::from_secs(3600);
    let mut first = pending(&app.tenant, "reused", 24 * hour);
    first.submitted_at = first.submitted_at.minus(2 * hour);
    first.expires_at = first.submitted_at.plus(24 * hour);
    first.status = Status::Accepted;
    first.decided_at = Some(first.submitted_at.plus(hour));
    first.decided_by = Some("bob".into());
    let temporal = app.engine(EngineKind::Temporal).await;
    temporal.import(first).await.expect("import");
    let mut second = pending(&app.tenant, "reused", hour);
    second.action = json!({"type": "document_read", "resource": "another/file"})
        .as_object()
        .expect("an object")
        .clone();
    let redis = app.engine(EngineKind::Redis).await;
    redis.submit(second).await.expect("submit");

    // Two reads compared (each looked at again after the secondary's deadline): the first
    // one's repair, if any, ran right after its comparison, a deadline before the second's.
    for reads in 1..=2 {
        assert_eq!(app.get("reused").await.status(), StatusCode::OK);
        app.metrics_until(Duration::from_secs(30), "a get disagreement", |text| {
            app.counter(text, "approvals_dual_disagreements_total", "get") >= f64::from(reads)
        })
        .await;
    }
    let held = redis.get(&app.tenant, &id("reused")).await.expect("redis");
    assert_eq!(held.map(|a| a.status), Some(Status::Pending));
    let text = app.metrics().await;
    let tenant = format!("tenant=\"{}\"", app.tenant);
    assert_eq!(
        sum_series(&text, "approvals_dual_repairs_total", &[&tenant]),
        0.0
    );
}

/// A decision mirrored while the secondary was down is replayed on it once it is back, with
/// no read to compare the two: the waiting agent is woken by the primary, and often nothing
/// reads the approval again. It stayed pending on the secondary, and after a switch of
/// primary it expired there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_the_secondary_missed_is_replayed_once_it_is_back_unread() {
    let redis = RedisServer::start_durable().await;
    let mut app = DualApp::spawn_on(redis, EngineKind::Temporal, |settings| {
        settings.redis.call_timeout = Duration::from_secs(1);
        // The first retry of the missed decision, then 2 s, 4 s, ...
        set_secondary_timeout(settings, Duration::from_secs(1));
    })
    .await;
    assert_eq!(app.park("u-1").await.status(), StatusCode::CREATED);
    app.redis.stop();
    let accepted = app.decide("u-1", "accept").await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let accepted: Value = accepted.json().await.expect("json");
    app.redis.restart().await;

    app.metrics_until(Duration::from_secs(40), "a repair", |text| {
        let tenant = format!("tenant=\"{}\"", app.tenant);
        sum_series(text, "approvals_dual_repairs_total", &[&tenant]) == 1.0
    })
    .await;
    assert_both_hold(&app, "u-1", &accepted).await;
}

/// A submit and its decision both missed by the secondary (one outage): once it is back, the
/// decided record is copied there. The repair read "no record" and gave up, and after a
/// switch of primary the agent's wait answered 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_secondary_missed_whole_is_copied_once_it_is_back() {
    let redis = RedisServer::start_durable().await;
    let mut app = DualApp::spawn_on(redis, EngineKind::Temporal, |settings| {
        settings.redis.call_timeout = Duration::from_secs(1);
        set_secondary_timeout(settings, Duration::from_secs(1));
    })
    .await;
    app.redis.stop();
    assert_eq!(app.park("o-1").await.status(), StatusCode::CREATED);
    let accepted = app.decide("o-1", "accept").await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let accepted: Value = accepted.json().await.expect("json");
    app.redis.restart().await;

    app.metrics_until(Duration::from_secs(40), "a repair", |text| {
        let tenant = format!("tenant=\"{}\"", app.tenant);
        sum_series(text, "approvals_dual_repairs_total", &[&tenant]) == 1.0
    })
    .await;
    assert_both_hold(&app, "o-1", &accepted).await;
}

/// A secondary that answers reads but refuses the replayed decision (a full Redis) is tried
/// again: one refusal left it pending for good, to expire there after a switch of primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_the_secondary_refused_is_tried_again() {
    let app = DualApp::spawn(EngineKind::Temporal, |settings| {
        set_secondary_timeout(settings, Duration::from_secs(1));
    })
    .await;
    assert_eq!(app.park("f-1").await.status(), StatusCode::CREATED);
    app.redis_until("f-1", Status::Pending).await;
    let mut redis = app.redis.connection().await;
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "1"][..])
        .query_async(&mut redis)
        .await
        .expect("config set");
    let accepted = app.decide("f-1", "accept").await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let accepted: Value = accepted.json().await.expect("json");
    // The replay's first try is refused...
    app.metrics_until(Duration::from_secs(30), "a refused replay", |text| {
        sum_series(
            text,
            "approvals_dual_secondary_errors_total",
            &["op=\"repair\""],
        ) >= 1.0
    })
    .await;
    // ...and once Redis takes writes again, a later one lands.
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"][..])
        .query_async(&mut redis)
        .await
        .expect("config set");
    app.metrics_until(Duration::from_secs(60), "a repair", |text| {
        let tenant = format!("tenant=\"{}\"", app.tenant);
        sum_series(text, "approvals_dual_repairs_total", &[&tenant]) == 1.0
    })
    .await;
    assert_both_hold(&app, "f-1", &accepted).await;
}

/// A repeated submit of a record the secondary lacks (the first submit's mirror never ran:
/// the primary's answer was lost and the agent retried) copies it there from the primary's
/// record. It only compared, and the secondary lacked it for good: a disagreement on every
/// read, and after a switch of primary the agent's retry would park it anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_submit_copies_a_record_the_secondary_lacks() {
    let app = DualApp::spawn(EngineKind::Redis, |_| {}).await;
    app.park_on_redis_alone("s-1").await;
    let again = app.park("s-1").await;
    assert_eq!(again.status(), StatusCode::OK);
    let served: Value = again.json().await.expect("json");
    app.temporal_until("s-1", Status::Pending).await;
    assert_both_hold(&app, "s-1", &served["approval"]).await;
    let tenant = format!("tenant=\"{}\"", app.tenant);
    let text = app.metrics().await;
    assert_eq!(
        sum_series(&text, "approvals_dual_repairs_total", &[&tenant]),
        1.0
    );
}

/// A decision the secondary answers "not found" for (its submit's mirror still on its way,
/// dropped at its deadline and landing later, or never run) copies the decided record there.
/// Left so, the late submit made it pending on the secondary for good: after a switch of
/// primary, decided a second time or expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_the_secondary_has_no_record_of_is_copied_to_it() {
    let app = DualApp::spawn(EngineKind::Redis, |_| {}).await;
    app.park_on_redis_alone("n-1").await;
    let accepted = app.decide("n-1", "accept").await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let accepted: Value = accepted.json().await.expect("json");
    app.temporal_until("n-1", Status::Accepted).await;
    assert_both_hold(&app, "n-1", &accepted).await;
}

/// An old settled approval the primary (Redis) dropped by its own retention while the
/// secondary keeps it is no difference: counted as a comparison at once, not as a
/// disagreement after the secondary's deadline (every read of a day-old decision made the
/// soak's "no disagreement" check unreachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_past_one_engines_retention_is_no_disagreement() {
    let app = DualApp::spawn(EngineKind::Redis, |settings| {
        set_secondary_timeout(settings, Duration::from_secs(2));
    })
    .await;
    let temporal = app.engine(EngineKind::Temporal).await;
    let three_days = Duration::from_secs(3 * 24 * 3600);
    let mut old = pending(&app.tenant, "old-1", Duration::from_secs(3600));
    old.submitted_at = old.submitted_at.minus(three_days);
    old.expires_at = old.expires_at.minus(three_days);
    old.status = Status::Accepted;
    old.decided_at = Some(old.submitted_at.plus(Duration::from_secs(60)));
    old.decided_by = Some("alice".into());
    assert_eq!(
        temporal.import(old).await.expect("import"),
        ImportOutcome::Imported
    );
    assert_eq!(app.get("old-1").await.status(), StatusCode::NOT_FOUND);
    app.metrics_until(Duration::from_secs(30), "the read compared", |text| {
        app.counter(text, "approvals_dual_comparisons_total", "get") >= 1.0
    })
    .await;
    let text = app.metrics().await;
    assert_eq!(
        app.counter(&text, "approvals_dual_disagreements_total", "get"),
        0.0,
        "{text}"
    );
}

/// A decision the primary took in time, which the secondary missed and then expired by its
/// own clock, cannot be repaired: after a switch of primary the agent would be told "expired"
/// for an action a reviewer accepted. It is counted on its own for the cutover's go/no-go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_the_secondary_expired_meanwhile_is_counted_as_lost() {
    let app = DualApp::spawn(EngineKind::Redis, |settings| {
        // Room for the park, a fresh engine's connect and the decision on a loaded machine.
        settings.approvals.default_ttl = Duration::from_secs(10);
        set_secondary_timeout(settings, Duration::from_secs(2));
    })
    .await;
    assert_eq!(app.park("lost-1").await.status(), StatusCode::CREATED);
    // Accepted on the primary alone, as when the mirror failed.
    let redis = app.engine(EngineKind::Redis).await;
    let accept = DecisionRequest::now(Verdict::Accept, "alice", None);
    redis
        .decide(&app.tenant, &id("lost-1"), accept)
        .await
        .expect("decided on the primary");
    let temporal = app.engine(EngineKind::Temporal).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while temporal
        .get(&app.tenant, &id("lost-1"))
        .await
        .expect("temporal")
        .map(|a| a.status)
        != Some(Status::Expired)
    {
        assert!(Instant::now() < deadline, "the secondary never expired it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.get("lost-1").await.status(), StatusCode::OK);
    app.metrics_until(Duration::from_secs(30), "a lost decision", |text| {
        let tenant = format!("tenant=\"{}\"", app.tenant);
        sum_series(text, "approvals_dual_lost_decisions_total", &[&tenant]) == 1.0
    })
    .await;
}

/// One unreadable record on the secondary is an answer, not an outage: counted as a
/// `corrupt` error, while the secondary stays reported up (the soak's "secondary up" check
/// failed for it, and re-running the migration, as the runbook says for an outage, mends
/// nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_on_the_secondary_is_no_outage() {
    let app = DualApp::spawn(EngineKind::Temporal, |_| {}).await;
    assert_eq!(app.park("u-1").await.status(), StatusCode::CREATED);
    app.metrics_until(Duration::from_secs(30), "the secondary up", |text| {
        text.contains("approvals_dual_secondary_up 1")
    })
    .await;
    let mut redis = app.redis.connection().await;
    let key = format!("approval:{}:{}", app.tenant, id("u-1"));
    let _: () = redis::AsyncCommands::set(&mut redis, &key, "{not a record")
        .await
        .expect("plant");
    let corrupt = |text: &str| {
        sum_series(
            text,
            "approvals_dual_secondary_errors_total",
            &["op=\"get\"", "kind=\"corrupt\""],
        )
    };
    let before = corrupt(&app.metrics().await);
    assert_eq!(app.get("u-1").await.status(), StatusCode::OK);
    app.metrics_until(Duration::from_secs(30), "a corrupt read counted", |text| {
        corrupt(text) > before
    })
    .await;
    let text = app.metrics().await;
    assert!(text.contains("approvals_dual_secondary_up 1"), "{text}");
}

/// (c) A Temporal secondary that cannot be reached at start-up (a closed port) does not stop the
/// service: it starts on the primary alone and counts what it could not mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_secondary_at_start_up_fails_no_request() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let app = DualApp::spawn(EngineKind::Redis, |settings| {
        settings.temporal.address = format!("http://127.0.0.1:{closed}");
        settings.temporal.call_timeout = Duration::from_secs(1);
    })
    .await;
    let before = app.metrics().await;
    let unavailable = |text: &str| {
        sum_series(
            text,
            "approvals_dual_secondary_errors_total",
            &["op=\"submit\"", "kind=\"unavailable\""],
        )
    };
    assert_eq!(app.park("d-1").await.status(), StatusCode::CREATED);
    assert_eq!(app.decide("d-1", "reject").await.status(), StatusCode::OK);
    assert_eq!(app.get("d-1").await.status(), StatusCode::OK);
    let after = app.metrics().await;
    assert!(unavailable(&after) > unavailable(&before), "{after}");
}

/// (c) A secondary unreachable at start-up that comes back slow to connect (each connection
/// takes longer than `backend.secondary_timeout` to get through: TLS, a cluster recovering) is
/// connected all the same, and writes are mirrored to it again. The connect used to run within
/// each call's deadline, which cut it every time: dual ran without its secondary for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_back_after_start_up_is_connected_though_slow_to_connect() {
    let shared = shared_temporal::shared().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let app = DualApp::spawn(EngineKind::Redis, |settings| {
        settings.temporal.address = format!("http://127.0.0.1:{port}");
        set_secondary_timeout(settings, Duration::from_millis(300));
    })
    .await;
    // Back, on the same address: every new connection waits a second before it is forwarded.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port again");
    let frontend = shared.address.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let frontend = frontend.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(frontend).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let temporal = app.engine(EngineKind::Temporal).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        let request_id = format!("f-{n}");
        assert_eq!(app.park(&request_id).await.status(), StatusCode::CREATED);
        if temporal
            .get(&app.tenant, &id(&request_id))
            .await
            .expect("read Temporal")
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no submit was mirrored to the secondary within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A socket that accepts connections and never answers: a hung store.
fn black_hole() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// A Redis secondary refused at start-up (it evicts keys) and mended while the service runs
/// (`CONFIG SET maxmemory-policy noeviction`) is connected with its chores: its sweeper records
/// its expiries. Its chores were started and dropped at once (which stops them), and its
/// records lapsed unrecorded, a disagreement on every later read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_secondary_mended_after_start_up_runs_its_sweeper() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]).await;
    let app = DualApp::spawn_on(redis, EngineKind::Temporal, |settings| {
        settings.approvals.default_ttl = Duration::from_secs(2);
    })
    .await;
    let mut admin = app
        .redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut admin)
        .await
        .expect("config set");
    let engine = app.engine(EngineKind::Redis).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The first submits find the secondary unconnected (and have it connected).
    let mirrored = 'mirrored: {
        for n in 0.. {
            let request_id = format!("m-{n}");
            assert_eq!(app.park(&request_id).await.status(), StatusCode::CREATED);
            if engine
                .get(&app.tenant, &id(&request_id))
                .await
                .expect("read")
                .is_some()
            {
                break 'mirrored request_id;
            }
            assert!(Instant::now() < deadline, "no submit was mirrored to Redis");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unreachable!()
    };
    // Listed as expired only once a sweeper has recorded it.
    while !engine
        .list(&app.tenant, Status::Expired, None, 100)
        .await
        .expect("list")
        .items
        .iter()
        .any(|a| a.id.as_str() == mirrored)
    {
        assert!(
            Instant::now() < deadline,
            "the secondary's sweeper never recorded the expiry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (c) A Temporal secondary that accepts connections and never answers (an overloaded
/// frontend, a half-open load balancer) holds up start-up by `backend.secondary_timeout` at
/// most: start-up waited for its connect under `temporal.call_timeout` (and two more calls
/// after it), every instance of a rollout unready that long, while the primary was fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_secondary_holds_up_start_up_by_its_deadline_at_most() {
    let hung = black_hole();
    let started = Instant::now();
    let app = DualApp::spawn(EngineKind::Redis, |settings| {
        settings.temporal.address = format!("http://127.0.0.1:{hung}");
        settings.temporal.call_timeout = Duration::from_secs(30);
        set_secondary_timeout(settings, Duration::from_millis(300));
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "start-up took {took:?}");
    // The primary serves meanwhile.
    assert_eq!(app.park("h-1").await.status(), StatusCode::CREATED);
}

/// (c) A secondary that hangs delays a write by at most `backend.secondary_timeout`, not by its
/// own (here much longer) deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_secondary_delays_writes_by_its_deadline_at_most() {
    let hung = black_hole();
    let app = DualApp::spawn(EngineKind::Temporal, |settings| {
        settings.redis.url = format!("redis://127.0.0.1:{hung}/0");
        settings.redis.call_timeout = Duration::from_secs(60);
        set_secondary_timeout(settings, Duration::from_millis(300));
    })
    .await;
    let before = app.metrics().await;
    // Past its deadline, or not connected yet (start-up gave up on it after the deadline too).
    let missed = |text: &str| {
        sum_series(
            text,
            "approvals_dual_secondary_errors_total",
            &["op=\"submit\""],
        )
    };
    let started = Instant::now();
    assert_eq!(app.park("e-1").await.status(), StatusCode::CREATED);
    let took = started.elapsed();
    // The primary's own time plus 300 ms; a write that waited for Redis would take 60 s.
    assert!(took < Duration::from_secs(10), "the submit took {took:?}");
    assert_eq!(app.decide("e-1", "accept").await.status(), StatusCode::OK);
    let after = app.metrics().await;
    assert!(missed(&after) > missed(&before), "{after}");
}

/// A secondary that answers reads but takes no writes (Redis pausing writes here; a Temporal
/// frontend that answers while its history service times out) reads down until it takes
/// writes again. Each read that answered (a comparison, a ping) set it back to 1 between
/// failed writes, and the alert that needs ten minutes of 0 never fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_that_answers_reads_but_takes_no_writes_reads_down() {
    let (first, second) = (RedisServer::start().await, RedisServer::start().await);
    let engine = |redis: &RedisServer| {
        let mut settings = Settings::default();
        settings.redis.url = redis.url();
        async move {
            engines::connect(EngineKind::Redis, &settings)
                .await
                .expect("engine")
        }
    };
    // A deadline for the secondary that its first write (a fresh connection loads the script)
    // meets on a loaded machine too; the paused write outlasts it.
    let dual = engines::dual::DualBackend::new(
        engine(&first).await,
        engine(&second).await,
        Duration::from_secs(5),
    );
    let tenant = fresh_tenant("dual-up");
    let hour = Duration::from_secs(3600);
    dual.submit(pending(&tenant, "w-0", hour))
        .await
        .expect("submit");
    assert_eq!(dual.status().secondary_up, Some(true));
    let mut admin = second.connection().await;
    let client = |args: &[&str]| {
        let mut command = redis::cmd("CLIENT");
        for arg in args {
            command.arg(*arg);
        }
        command
    };
    let _: () = client(&["PAUSE", "60000", "WRITE"])
        .query_async(&mut admin)
        .await
        .expect("pause");
    dual.submit(pending(&tenant, "w-1", hour))
        .await
        .expect("the primary answers");
    assert_eq!(dual.status().secondary_up, Some(false));
    // Reads by id are compared with the secondary, which answers them; the figures pass pings
    // it beside.
    for _ in 0..3 {
        dual.get(&tenant, &id("w-0")).await.expect("read");
        let now = approvals_core::Timestamp::now();
        dual.pending_stats(&[], now).await.expect("figures");
    }
    let watched = Instant::now() + Duration::from_secs(1);
    while Instant::now() < watched {
        assert_eq!(dual.status().secondary_up, Some(false), "up after a read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: () = client(&["UNPAUSE"])
        .query_async(&mut admin)
        .await
        .expect("unpause");
    dual.submit(pending(&tenant, "w-2", hour))
        .await
        .expect("submit");
    assert_eq!(dual.status().secondary_up, Some(true), "writes taken again");
}

// ---------------------------------------------------------------------------------------------
// The shared conformance suite, on a dual backend each way round (ADR-0002: the entry gate).

/// A dual backend on a redis-server of its own and the shared Temporal server, built and
/// started as the service builds it (Redis' chores running, on whichever side Redis is).
async fn dual_backend(
    primary: EngineKind,
) -> (Arc<dyn RecordTransfer>, (RedisServer, RunningEngine)) {
    let redis = RedisServer::start().await;
    let settings = dual_settings(primary, &redis).await;
    let running = engines::start(
        &settings,
        Arc::new(EngineMetrics::answering()),
        Arc::new(EngineMetrics::secondary()),
    )
    .await
    .expect("dual backend");
    (running.backend.clone(), (redis, running))
}

/// Changes a dual backend's secondary deadline.
fn set_secondary_timeout(settings: &mut Settings, timeout: Duration) {
    if let BackendChoice::Dual {
        secondary_timeout, ..
    } = &mut settings.backend
    {
        *secondary_timeout = timeout;
    }
}

mod conformance_with_redis_primary {
    async fn dual() -> (
        std::sync::Arc<dyn approvals_core::RecordTransfer>,
        impl Sized,
    ) {
        super::dual_backend(approvals::config::EngineKind::Redis).await
    }
    approvals_core::conformance_tests!(dual);
}

mod conformance_with_temporal_primary {
    async fn dual() -> (
        std::sync::Arc<dyn approvals_core::RecordTransfer>,
        impl Sized,
    ) {
        super::dual_backend(approvals::config::EngineKind::Temporal).await
    }
    approvals_core::conformance_tests!(dual);
}
