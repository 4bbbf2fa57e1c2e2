//! Temporal-specific behaviour beyond the shared suite: long TTLs, a worker that dies abruptly
//! and is replaced, and a server restart with a database file. Each test has its own dev server
//! and worker(s), so it can break them.

mod support;

use std::time::{Duration, Instant};

use approvals_core::conformance::{decision, fresh_tenant, id, pending};
use approvals_core::{ApprovalBackend, DecisionOutcome, Status, SubmitOutcome, Timestamp, Verdict};
use approvals_temporal::{TemporalBackend, TemporalSettings};
use approvals_testkit::temporal_server::DevServer;

/// A worker on its own thread and runtime. `stop` drains it gracefully; `kill` drops its
/// runtime without a shutdown, as abrupt as a crash seen from the server (its polls vanish and
/// its sticky queue is left behind). The dead worker's thread then panics with "A Tokio 1.x
/// context was found, but it is being shutdown": expected, it is the crash.
struct TestWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestWorker {
    fn start(settings: TemporalSettings) -> Self {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            // The worker future is !Send: it runs as the runtime's block_on future on a helper
            // thread, and this thread decides how it ends.
            let handle = runtime.handle().clone();
            let runner = std::thread::spawn(move || {
                let result = handle.block_on(approvals_temporal::run_worker(settings, async {
                    let _ = stop_rx.await;
                }));
                let _ = done_tx.send(result.map_err(|e| e.to_string()));
            });
            loop {
                if kill_rx.try_recv().is_ok() {
                    runtime.shutdown_background();
                    drop(runner);
                    return;
                }
                if let Ok(result) = done_rx.try_recv() {
                    result.expect("worker ran");
                    let _ = runner.join();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop: Some(stop_tx),
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("worker thread");
        }
    }

    fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("worker thread");
        }
    }
}

fn settings_for(server: &DevServer, sticky: Duration) -> TemporalSettings {
    let mut settings = TemporalSettings::new(server.address());
    settings.task_queue = format!("approvals-durability-{}", server.port);
    settings.sticky_queue_timeout = sticky;
    settings
}

/// Decides as a client does on 503: retries until it lands. After a crash or a server restart
/// the workflow's task may first wait out the old worker's sticky queue, and a call deadline of
/// 5 s can cut the first attempts (under the full suite on 2 cores one retry was not always
/// enough). A timed-out attempt may still land (the server keeps an admitted update): a retry
/// then reads it as already decided, by the same reviewer, which is what is checked.
async fn decide_as_a_caller_would(
    backend: &TemporalBackend,
    tenant: &approvals_core::TenantId,
    approval: &str,
    verdict: Verdict,
    reviewer: &str,
) -> approvals_core::Approval {
    let started = Instant::now();
    let outcome = loop {
        match backend
            .decide(tenant, &id(approval), decision(verdict, reviewer))
            .await
        {
            Ok(outcome) => break outcome,
            Err(error) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "decide after retries: {error:?}"
                );
                eprintln!("decide: {error:?} after {:?}; retrying", started.elapsed());
            }
        }
    };
    let landed = match outcome {
        DecisionOutcome::Decided(record) | DecisionOutcome::AlreadyDecided(record) => record,
        other => panic!("{other:?}"),
    };
    assert_eq!(landed.decided_by.as_deref(), Some(reviewer), "{landed:?}");
    landed
}

/// Started on the test's own thread (`block_in_place`): the server dies with the thread that
/// started it (`PR_SET_PDEATHSIG`), and a blocking-pool thread exits after 10 s idle, which
/// killed the server under a test that ran longer.
async fn own_server(db: Option<std::path::PathBuf>) -> DevServer {
    tokio::task::block_in_place(move || DevServer::start(db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_day_ttl_is_accepted_with_its_expires_at() {
    let server = own_server(None).await;
    let settings = settings_for(&server, Duration::from_secs(10));
    let worker = TestWorker::start(settings.clone());
    let backend = TemporalBackend::connect(settings).await.expect("backend");
    let tenant = fresh_tenant("month");
    let approval = pending(&tenant, "req-1", Duration::from_secs(30 * 86_400));
    let expires_at = approval.expires_at;
    assert!(matches!(
        backend.submit(approval).await.expect("submit"),
        SubmitOutcome::Created(_)
    ));
    let read = backend
        .get(&tenant, &id("req-1"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (read.status, read.expires_at),
        (Status::Pending, expires_at)
    );
    let listed = backend
        .list(&tenant, Status::Pending, None, 10)
        .await
        .expect("list");
    assert_eq!(
        listed
            .items
            .iter()
            .map(|a| a.expires_at)
            .collect::<Vec<_>>(),
        [expires_at]
    );
    // The workflow's timer is durable and a month away: it must still be running and decidable.
    let landed =
        decide_as_a_caller_would(&backend, &tenant, "req-1", Verdict::Accept, "alice").await;
    assert_eq!(landed.status, Status::Accepted);
    worker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_is_replaced_and_decisions_and_deadlines_still_land() {
    let server = own_server(None).await;
    let settings = settings_for(&server, Duration::from_secs(3));
    let first = TestWorker::start(settings.clone());
    let backend = TemporalBackend::connect(settings.clone())
        .await
        .expect("backend");
    let tenant = fresh_tenant("crash");
    backend
        .submit(pending(&tenant, "decide-me", Duration::from_secs(3600)))
        .await
        .expect("submit");
    backend
        .submit(pending(&tenant, "let-expire", Duration::from_secs(8)))
        .await
        .expect("submit");
    // The first worker has run both workflows' first task (their TTL timers are started), so
    // it holds them in its cache (sticky) when it dies.
    for approval in ["decide-me", "let-expire"] {
        history_shows(&server, &tenant, approval, "TimerStarted").await;
    }
    assert!(
        Timestamp::now() < expires_at_of(&backend, &tenant, "let-expire").await,
        "let-expire expired before the crash: the test would not see its deadline fire on the \
         new worker"
    );
    let waiter = {
        let backend = TemporalBackend::connect(settings.clone())
            .await
            .expect("backend");
        let tenant = tenant.clone();
        tokio::spawn(async move {
            backend
                .wait_for_decision(
                    &tenant,
                    &id("decide-me"),
                    Duration::from_secs(60),
                    approvals_core::no_stop(),
                )
                .await
        })
    };
    first.kill();
    let second = TestWorker::start(settings.clone());
    let started = Instant::now();
    let landed =
        decide_as_a_caller_would(&backend, &tenant, "decide-me", Verdict::Reject, "bob").await;
    assert_eq!(landed.status, Status::Rejected);
    eprintln!("decision landed {:?} after the crash", started.elapsed());
    // Woken by the decision, not answered by its final read at the end of its 60 s.
    let woke = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter woke on the decision, long before its 60 s")
        .expect("join")
        .expect("wait")
        .expect("exists");
    assert_eq!(woke.status, Status::Rejected);
    // The deadline of the other one fires on the new worker: the workflow itself closes.
    let expired = backend
        .wait_for_decision(
            &tenant,
            &id("let-expire"),
            Duration::from_secs(20),
            approvals_core::no_stop(),
        )
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(expired.status, Status::Expired);
    history_shows(&server, &tenant, "let-expire", "TimerFired").await;
    // Closed by the workflow itself (reads past a deadline say expired either way).
    history_shows(&server, &tenant, "let-expire", "WorkflowExecutionCompleted").await;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let page = backend
                .list(&tenant, Status::Expired, None, 10)
                .await
                .expect("list");
            if !page.items.is_empty() {
                let listed = backend
                    .list(&tenant, Status::Pending, None, 10)
                    .await
                    .expect("list");
                break listed.items.is_empty();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("expiry recorded");
    assert!(closed);
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_approvals_survive_a_server_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = own_server(Some(dir.path().join("temporal.db"))).await;
    let settings = settings_for(&server, Duration::from_secs(3));
    let worker = TestWorker::start(settings.clone());
    let backend = TemporalBackend::connect(settings.clone())
        .await
        .expect("backend");
    let tenant = fresh_tenant("restart");
    let parked = match backend
        .submit(pending(&tenant, "req-1", Duration::from_secs(3600)))
        .await
        .expect("submit")
    {
        SubmitOutcome::Created(a) => a,
        other => panic!("{other:?}"),
    };
    backend
        .submit(pending(&tenant, "short", Duration::from_secs(10)))
        .await
        .expect("submit");
    // Both timers are started before the restart, so it is the restarted server that must fire
    // "short"'s. Stopping the worker mid-task instead would leave that task to time out (10 s)
    // and be retried past the deadline, where the workflow expires without a timer.
    for approval in ["req-1", "short"] {
        history_shows(&server, &tenant, approval, "TimerStarted").await;
    }
    worker.stop();
    // On the test's thread too (see `own_server`).
    tokio::task::block_in_place(|| server.restart());
    let worker = TestWorker::start(settings.clone());
    let backend = TemporalBackend::connect(settings).await.expect("backend");
    let read = backend.get(&tenant, &id("req-1")).await.expect("get");
    assert_eq!(read, Some(parked), "the pending approval survived");
    let landed =
        decide_as_a_caller_would(&backend, &tenant, "req-1", Verdict::Accept, "alice").await;
    assert_eq!(landed.status, Status::Accepted);
    let expired = backend
        .wait_for_decision(
            &tenant,
            &id("short"),
            Duration::from_secs(20),
            approvals_core::no_stop(),
        )
        .await
        .expect("wait")
        .expect("exists");
    assert_eq!(expired.status, Status::Expired);
    // A read past the deadline says expired by itself: the timer itself must fire.
    history_shows(&server, &tenant, "short", "TimerFired").await;
    worker.stop();
    drop(server);
}

/// Waits until the approval's workflow history shows `event` (e.g. `TimerStarted`: its first
/// task ran; `TimerFired`: its deadline fired).
async fn history_shows(
    server: &DevServer,
    tenant: &approvals_core::TenantId,
    approval: &str,
    event: &str,
) {
    let workflow = approvals_temporal::workflow_id(tenant, &id(approval));
    let address = server.address();
    let address = address.trim_start_matches("http://").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = std::process::Command::new(approvals_testkit::temporal_server::temporal_bin())
            .args(["workflow", "show", "--address", &address, "-w", &workflow])
            .output()
            .expect("temporal workflow show");
        if String::from_utf8_lossy(&shown.stdout).contains(event) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{workflow}'s history never showed {event}: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn expires_at_of(
    backend: &TemporalBackend,
    tenant: &approvals_core::TenantId,
    approval: &str,
) -> Timestamp {
    backend
        .get(tenant, &id(approval))
        .await
        .expect("get")
        .expect("exists")
        .expires_at
}
