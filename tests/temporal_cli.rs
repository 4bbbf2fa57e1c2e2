//! `approvals worker` and `approvals serve` with `backend.kind = "temporal"`, as an operator
//! runs them: child processes against a real Temporal dev server (testkit), submits and
//! decisions through HTTP, the worker's own health and metrics, a clean SIGTERM drain, and a
//! worker killed with SIGKILL and replaced while a long-poll waits.

#![cfg(feature = "temporal")]

#[path = "common/metrics.rs"]
mod metrics;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use approvals::auth::digest_hex;
use approvals_testkit::free_port;
use approvals_testkit::process::{wait_ready, Process};
use approvals_testkit::temporal_server::{temporal_bin, DevServer};
use chrono::{DateTime, Utc};
use metrics::metrics_until;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_approvals");

/// `approvals ARGS` with its log at info on stderr (which [`Process`] reads), nothing else.
fn approvals(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("APPROVALS_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// The acme agent's and reviewer's tokens in every config below.
const AGENT: &str = "agent-token-1";
const REVIEWER: &str = "reviewer-token-1";

/// Writes the config both processes read: the API on `port`, the worker's HTTP on
/// `worker_port`, a task queue named `queue`, the acme agent (`agent-1`) and reviewer
/// (`alice`). `temporal` is added to `[temporal]`, `more` at the end.
fn write_config(
    dir: &Path,
    server: &DevServer,
    (port, worker_port): (u16, u16),
    queue: &str,
    temporal: &str,
    more: &str,
) -> String {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[backend]\nkind = \"temporal\"\n\
         [temporal]\naddress = \"{}\"\ntask_queue = \"{queue}\"\n{temporal}\
         [worker]\nlisten = \"127.0.0.1:{worker_port}\"\n[policy]\ndir = \"{}\"\n\
         [[auth.tokens]]\nsubject = \"agent-1\"\ntenant = \"acme\"\nrole = \"agent\"\nsha256 = \"{}\"\n\
         [[auth.tokens]]\nsubject = \"alice\"\ntenant = \"acme\"\nrole = \"reviewer\"\nsha256 = \"{}\"\n{more}",
        server.address(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").display(),
        digest_hex(AGENT),
        digest_hex(REVIEWER),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn worker_and_serve_on_temporal_decide_through_http_and_drain_on_sigterm() {
    // Started from this test's thread, which lives until the end (PR_SET_PDEATHSIG).
    let server = DevServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    let (port, worker_port) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        &server,
        (port, worker_port),
        &format!("approvals-cli-{}", std::process::id()),
        // The first decision on a fresh worker can take a loaded machine past the 5 s default.
        "call_timeout = \"25s\"\n",
        // Longer than the dev server's namespace keeps closed executions: said at start.
        "[approvals]\ndecided_retention = \"3650d\"\n",
    );

    let mut worker = Process::spawn(approvals(&["worker", "--config", &config]));
    worker.wait_for_line("worker polling", Duration::from_secs(20));
    let mut service = Process::spawn(approvals(&["serve", "--config", &config]));
    service.wait_for_line(
        "keeps settled approvals shorter than approvals.decided_retention",
        Duration::from_secs(20),
    );
    service.wait_for_line("serving", Duration::from_secs(20));

    let http = reqwest::Client::new();
    let worker_base = format!("http://127.0.0.1:{worker_port}");
    wait_ready(&format!("{worker_base}/readyz"), Duration::from_secs(20)).await;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/readyz"), Duration::from_secs(20)).await;

    let submitted = http
        .post(format!("{base}/v1/tenants/acme/approvals"))
        .bearer_auth(AGENT)
        .json(&serde_json::json!({"request_id": "req-1", "action": {"type": "document_read", "resource": "finance/x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 201);
    let long_poll = {
        let request = http
            .get(format!(
                "{base}/v1/tenants/acme/approvals/req-1/decision?wait_seconds=30"
            ))
            .bearer_auth(AGENT);
        tokio::spawn(async move { request.send().await })
    };
    let accepted = http
        .post(format!("{base}/v1/tenants/acme/approvals/req-1/accept"))
        .bearer_auth(REVIEWER)
        .json(&serde_json::json!({"reason": "looks fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200, "{:?}", accepted.text().await);
    let again = http
        .post(format!("{base}/v1/tenants/acme/approvals/req-1/reject"))
        .bearer_auth(REVIEWER)
        .json(&serde_json::json!({"reason": "too late"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "the first decision won");
    let waited = long_poll.await.unwrap().unwrap();
    assert_eq!(waited.status(), 200);
    let waited: Value = waited.json().await.unwrap();
    assert_eq!(waited["status"], "accepted", "{waited}");

    let metrics = http
        .get(format!("{worker_base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("approvals_worker_info{"), "{metrics}");
    assert!(metrics.contains("approvals_backend_up 1"), "{metrics}");
    assert!(metrics.contains("approvals_worker_draining 0"), "{metrics}");

    let (status, took) = worker.terminate(Duration::from_secs(20)).await;
    let log = worker.log();
    assert!(status.success(), "clean exit: {status:?}; log:\n{log}");
    assert!(log.contains("draining the worker"), "{log}");
    assert!(log.contains("worker stopped"), "{log}");
    eprintln!("worker drained in {took:?}");
    assert!(
        http.get(format!("{worker_base}/healthz"))
            .send()
            .await
            .is_err(),
        "the worker's HTTP server stopped with it"
    );
    let (status, _) = service.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
}

/// The `temporal` CLI against `server`; its stdout, or a panic with its stderr.
async fn temporal(server: &DevServer, args: &[&str]) -> String {
    let output = tokio::process::Command::new(temporal_bin())
        .args(args)
        .args(["--address", &format!("127.0.0.1:{}", server.port)])
        .args(["--output", "json"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "temporal {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `temporal workflow result`: waits for the workflow to close (at most `within`), then its
/// status and the record it returned (`result`).
async fn workflow_result(server: &DevServer, workflow: &str, within: Duration) -> Value {
    let output = tokio::time::timeout(
        within,
        temporal(server, &["workflow", "result", "-w", workflow]),
    )
    .await
    .unwrap_or_else(|_| panic!("{workflow} did not close within {within:?}"));
    serde_json::from_str(&output).unwrap()
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {value}"))
        .with_timezone(&Utc)
}

/// The SDK's sticky-queue timeout, which the service's config does not expose: after a worker
/// dies, a task for a workflow it had cached waits this long before another worker takes it.
const STICKY_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The short-lived tenant's TTL (`approvals.tenant_ttl.brisk`): long enough that its timer is
/// still pending when the worker dies, short enough to fire while the replacement runs.
const SHORT_TTL: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_worker_killed_during_a_long_poll_is_replaced_and_decisions_and_deadlines_land() {
    // Its own server: this test kills workers that hold its workflows in their cache.
    let server = DevServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    let (port, worker_port, replacement_port) = (free_port(), free_port(), free_port());
    let brisk_agent = "agent-token-brisk";
    // A decision that waits out the sticky-queue timeout must not be cut by the 5 s default
    // call deadline (the reviewer would get 503 while the update still lands).
    let config = write_config(
        dir.path(),
        &server,
        (port, worker_port),
        &format!("approvals-crash-{}", std::process::id()),
        "call_timeout = \"25s\"\n",
        &format!(
            "[[auth.tokens]]\nsubject = \"agent-2\"\ntenant = \"brisk\"\nrole = \"agent\"\nsha256 = \"{}\"\n\
             [approvals.tenant_ttl]\nbrisk = \"{}s\"\n",
            digest_hex(brisk_agent),
            SHORT_TTL.as_secs()
        ),
    );

    let mut worker = Process::spawn(approvals(&["worker", "--config", &config]));
    worker.wait_for_line("worker polling", Duration::from_secs(20));
    let mut service = Process::spawn(approvals(&["serve", "--config", &config]));
    service.wait_for_line("serving", Duration::from_secs(20));
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/readyz"), Duration::from_secs(20)).await;
    wait_ready(
        &format!("http://127.0.0.1:{worker_port}/readyz"),
        Duration::from_secs(20),
    )
    .await;
    let http = reqwest::Client::new();

    // A with the default TTL (24 h), B in the tenant whose TTL is SHORT_TTL.
    let action = serde_json::json!({"type": "document_read", "resource": "finance/q3"});
    let mut parked = Vec::new();
    for (tenant, id, token) in [("acme", "a-1", AGENT), ("brisk", "b-1", brisk_agent)] {
        let submitted = http
            .post(format!("{base}/v1/tenants/{tenant}/approvals"))
            .bearer_auth(token)
            .json(&serde_json::json!({"request_id": id, "action": action}))
            .send()
            .await
            .unwrap();
        assert_eq!(submitted.status(), 201, "{tenant}/{id}");
        let body: Value = submitted.json().await.unwrap();
        let approval = body["approval"].clone();
        parked.push(approval);
    }
    let ttl = |a: &Value| {
        (time(&a["expires_at"]) - time(&a["submitted_at"]))
            .to_std()
            .unwrap()
    };
    assert_eq!(
        ttl(&parked[0]),
        Duration::from_secs(86_400),
        "{}",
        parked[0]
    );
    assert_eq!(ttl(&parked[1]), SHORT_TTL, "{}", parked[1]);
    let b_expires_at = time(&parked[1]["expires_at"]);

    // The first worker has run both workflows' first task (their TTL timers are started), so
    // it holds them in its cache and their next tasks go to its sticky queue.
    for workflow in ["approval:acme:a-1", "approval:brisk:b-1"] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !temporal(&server, &["workflow", "show", "-w", workflow])
            .await
            .contains("TIMER_STARTED")
        {
            assert!(
                Instant::now() < deadline,
                "{workflow} never started its timer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Long-polls on both: A's waits for the reviewer, B's for B's deadline (the response's
    // arrival time is taken as it comes).
    let long_poll = |tenant: &str, id: &str, token: &str| {
        let request = http
            .get(format!(
                "{base}/v1/tenants/{tenant}/approvals/{id}/decision?wait_seconds=60"
            ))
            .bearer_auth(token);
        tokio::spawn(async move {
            let response = request.send().await;
            (response, Utc::now())
        })
    };
    let a_poll = long_poll("acme", "a-1", AGENT);
    let b_poll = long_poll("brisk", "b-1", brisk_agent);
    metrics_until(
        &http,
        &base,
        Duration::from_secs(10),
        "both long-polls parking",
        |t| t.contains("approvals_long_polls_in_flight 2"),
    )
    .await;
    let b_now: Value = http
        .get(format!("{base}/v1/tenants/brisk/approvals/b-1"))
        .bearer_auth(brisk_agent)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        b_now["status"], "pending",
        "B must outlive the first worker"
    );

    let killed = Instant::now();
    let status = worker.kill_hard();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(!a_poll.is_finished(), "A's long-poll is still waiting");
    assert!(!b_poll.is_finished(), "B's long-poll is still waiting");

    let mut replacement = {
        let mut command = approvals(&["worker", "--config", &config]);
        command.env(
            "APPROVALS_WORKER__LISTEN",
            format!("127.0.0.1:{replacement_port}"),
        );
        Process::spawn(command)
    };
    replacement.wait_for_line("worker polling", Duration::from_secs(20));
    wait_ready(
        &format!("http://127.0.0.1:{replacement_port}/readyz"),
        Duration::from_secs(20),
    )
    .await;
    eprintln!(
        "replacement worker polling {:?} after the kill",
        killed.elapsed()
    );

    let deciding = Instant::now();
    let accepted = http
        .post(format!("{base}/v1/tenants/acme/approvals/a-1/accept"))
        .bearer_auth(REVIEWER)
        .json(&serde_json::json!({"reason": "fine after the crash"}))
        .send()
        .await
        .unwrap();
    let took = deciding.elapsed();
    assert_eq!(accepted.status(), 200, "{:?}", accepted.text().await);
    eprintln!(
        "accept answered in {took:?} ({:?} after the kill)",
        killed.elapsed()
    );
    assert!(
        took < STICKY_QUEUE_TIMEOUT + Duration::from_secs(15),
        "{took:?}"
    );

    let (waited, _) = a_poll.await.unwrap();
    let waited = waited.unwrap();
    assert_eq!(waited.status(), 200);
    let waited: Value = waited.json().await.unwrap();
    assert_eq!(waited["status"], "accepted", "{waited}");
    assert_eq!(waited["decided_by"], "alice", "{waited}");

    // B expired at its deadline: its long-poll answered then, with `expired`.
    let (expired, answered_at) = b_poll.await.unwrap();
    let expired = expired.unwrap();
    assert_eq!(expired.status(), 200);
    let expired: Value = expired.json().await.unwrap();
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(time(&expired["expires_at"]), b_expires_at);
    let decided_at = time(&expired["decided_at"]);
    assert!(
        decided_at >= b_expires_at && decided_at - b_expires_at <= chrono::Duration::seconds(1),
        "decided_at {decided_at} vs expires_at {b_expires_at}"
    );
    eprintln!(
        "B's long-poll answered {:?} after its expires_at",
        (answered_at - b_expires_at).to_std()
    );
    assert!(
        // Seconds, not the rest of its 60 s wait (the final read at the deadline goes to a
        // Temporal server this run keeps busy).
        answered_at >= b_expires_at && answered_at - b_expires_at <= chrono::Duration::seconds(10),
        "B's long-poll answered at {answered_at}, its expiry is {b_expires_at}"
    );

    // And the workflows themselves closed on the replacement worker (not only as read at the
    // API, which reports an expiry from `expires_at` on): B with its timer, A with the decision.
    let b_record = workflow_result(
        &server,
        "approval:brisk:b-1",
        STICKY_QUEUE_TIMEOUT + Duration::from_secs(20),
    )
    .await;
    let b_closed: Value = serde_json::from_str(
        &temporal(
            &server,
            &["workflow", "describe", "-w", "approval:brisk:b-1"],
        )
        .await,
    )
    .unwrap();
    let close_lag = (time(&b_closed["workflowExecutionInfo"]["closeTime"]) - b_expires_at)
        .to_std()
        .unwrap_or_default();
    eprintln!("B's workflow closed {close_lag:?} after its expires_at");
    assert_eq!(b_record["status"], "COMPLETED", "{b_record}");
    let b_final = &b_record["result"];
    assert_eq!(b_final["status"], "expired", "{b_record}");
    assert_eq!(time(&b_final["decided_at"]), b_expires_at, "{b_record}");
    assert!(
        close_lag < STICKY_QUEUE_TIMEOUT + Duration::from_secs(10),
        "B's timer was processed {close_lag:?} after expires_at"
    );
    // The task that closed B was completed by the replacement (its identity names its pid).
    let history: Value = serde_json::from_str(
        &temporal(&server, &["workflow", "show", "-w", "approval:brisk:b-1"]).await,
    )
    .unwrap();
    let closed_by = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["eventType"] == "EVENT_TYPE_WORKFLOW_TASK_COMPLETED")
        .map(|e| e["workflowTaskCompletedEventAttributes"]["identity"].clone());
    assert_eq!(
        closed_by,
        Some(Value::from(format!("approvals@{}", replacement.pid()))),
        "{history}"
    );
    let a_record = workflow_result(&server, "approval:acme:a-1", Duration::from_secs(20)).await;
    assert_eq!(a_record["result"]["status"], "accepted", "{a_record}");
    assert_eq!(a_record["result"]["decided_by"], "alice", "{a_record}");

    let (status, _) = replacement.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}; log:\n{}", replacement.log());
    let (status, _) = service.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
}
