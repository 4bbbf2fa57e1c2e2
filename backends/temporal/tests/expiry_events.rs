//! Expiries are reported to the worker's `EngineEvents` exactly once: from the TTL timer, from a
//! decision that arrives past the deadline (with the workflow's first task, the worker down
//! until then), and never again when another worker replays the closed workflow. Each test has
//! its own dev server and workers, with a recording `EngineEvents`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use approvals_core::conformance::{decision, fresh_tenant, id, pending};
use approvals_core::{
    Approval, ApprovalBackend, AuditKind, BackendError, DecisionOutcome, EngineEvents,
    RecordTransfer, Status, SubmitOutcome, TenantId, Timestamp, Verdict, ENDED_REASON,
};
use approvals_temporal::{
    workflow_id, ApprovalWorkflow, DecisionLogWorkflow, TemporalBackend, TemporalSettings,
};
use approvals_testkit::temporal_server::DevServer;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, Url, WorkflowFetchHistoryOptions,
    WorkflowGetResultOptions, WorkflowQueryOptions, WorkflowStartOptions,
};

/// Every expiry reported, in order.
#[derive(Default)]
struct Recorded(Mutex<Vec<(Approval, Timestamp)>>);

impl Recorded {
    fn of(&self, approval: &Approval) -> Vec<(Approval, Timestamp)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(a, _)| a.tenant == approval.tenant && a.id == approval.id)
            .cloned()
            .collect()
    }

    /// Waits until `approval`'s expiry was reported at least once (at most `within`).
    async fn until_reported(&self, approval: &Approval, within: Duration) {
        let deadline = Instant::now() + within;
        while self.of(approval).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the expiry of {} was not reported within {within:?}",
                approval.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Recording(Arc<Recorded>);

impl EngineEvents for Recording {
    fn expired(&self, approval: &Approval, recorded_at: Timestamp) {
        self.0
             .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((approval.clone(), recorded_at));
    }

    fn chore_finished(&self, _chore: &'static str, _result: Result<usize, &BackendError>) {}

    fn unreadable(&self, _key: &str, _reason: &str) {}
}

/// A worker on a thread and runtime of its own (its future is `!Send`), stopped gracefully.
struct TestWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestWorker {
    fn start(settings: TemporalSettings, recorded: &Arc<Recorded>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let events: Arc<dyn EngineEvents> = Arc::new(Recording(recorded.clone()));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let result = runtime.block_on(approvals_temporal::run_worker_with_events(
                settings,
                events,
                async {
                    let _ = stopped.await;
                },
            ));
            result.expect("worker ran");
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join().expect("worker thread"))
                .await
                .expect("join");
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Started on the test's own thread: the server dies with the thread that started it
/// (`PR_SET_PDEATHSIG`), and a blocking-pool thread exits after 10 s idle.
async fn own_server() -> DevServer {
    tokio::task::block_in_place(|| DevServer::start(None))
}

fn settings_for(server: &DevServer) -> TemporalSettings {
    let mut settings = TemporalSettings::new(server.address());
    settings.task_queue = format!("approvals-expiry-{}", server.port);
    settings.sticky_queue_timeout = Duration::from_secs(2);
    // A decision sent while no worker runs waits for one.
    settings.call_timeout = Duration::from_secs(30);
    settings
}

async fn client_for(server: &DevServer) -> Client {
    let options = ConnectionOptions::new(Url::parse(&server.address()).expect("url")).build();
    let connection = Connection::connect(options).await.expect("connect");
    Client::new(connection, ClientOptions::new("default").build()).expect("client")
}

/// Waits for the workflow to close; its final record.
async fn closed(
    client: &Client,
    approval: &Approval,
) -> approvals_temporal::record::ApprovalRecord {
    let handle =
        client.get_workflow_handle::<ApprovalWorkflow>(workflow_id(&approval.tenant, &approval.id));
    tokio::time::timeout(
        Duration::from_secs(30),
        handle.get_result(WorkflowGetResultOptions::default()),
    )
    .await
    .expect("the workflow closed within 30 s")
    .expect("a result")
}

/// How many local-activity markers (counts) the workflow's history holds.
async fn counted_in_history(client: &Client, approval: &Approval) -> usize {
    history_json(client, approval)
        .await
        .matches("core_local_activity")
        .count()
}

/// A dev server of its own with a worker recording expiries, a backend, a client, and one
/// approval of a fresh tenant parked for an hour (`req-1`).
struct Parked {
    _server: DevServer,
    recorded: Arc<Recorded>,
    worker: TestWorker,
    backend: TemporalBackend,
    client: Client,
    tenant: TenantId,
    approval: Approval,
}

async fn parked_for_an_hour(tenant: &str) -> Parked {
    let server = own_server().await;
    let settings = settings_for(&server);
    let recorded = Arc::new(Recorded::default());
    let worker = TestWorker::start(settings.clone(), &recorded);
    let backend = TemporalBackend::connect(settings).await.expect("backend");
    let client = client_for(&server).await;
    let tenant = fresh_tenant(tenant);
    let approval = submitted(
        &backend,
        pending(&tenant, "req-1", Duration::from_secs(3600)),
    )
    .await;
    Parked {
        _server: server,
        recorded,
        worker,
        backend,
        client,
        tenant,
        approval,
    }
}

async fn submitted(backend: &TemporalBackend, approval: Approval) -> Approval {
    match backend.submit(approval).await.expect("submit") {
        SubmitOutcome::Created(a) => a,
        other => panic!("not created: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_expiry_is_reported_once_and_not_again_when_another_worker_replays_it() {
    let server = own_server().await;
    let settings = settings_for(&server);
    let recorded = Arc::new(Recorded::default());
    let worker = TestWorker::start(settings.clone(), &recorded);
    let backend = TemporalBackend::connect(settings.clone())
        .await
        .expect("backend");
    let client = client_for(&server).await;

    let tenant = fresh_tenant("timer");
    let approval = submitted(&backend, pending(&tenant, "req-1", Duration::from_secs(1))).await;
    recorded
        .until_reported(&approval, Duration::from_secs(30))
        .await;
    let result = closed(&client, &approval).await;
    assert_eq!(result.status, Status::Expired);

    let reports = recorded.of(&approval);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let (reported, recorded_at) = &reports[0];
    assert_eq!(reported.status, Status::Expired);
    // What the time-to-decision histogram records: decided_at - submitted_at, the TTL.
    assert_eq!(reported.decided_at, Some(approval.expires_at));
    assert_eq!(reported.submitted_at, approval.submitted_at);
    assert!(*recorded_at >= approval.expires_at, "{recorded_at}");
    assert_eq!(counted_in_history(&client, &approval).await, 1);

    // Another worker replays the whole closed history to answer a query: the count is read
    // from the marker, the activity does not run again.
    worker.stop().await;
    let replacement = TestWorker::start(settings, &recorded);
    let handle =
        client.get_workflow_handle::<ApprovalWorkflow>(workflow_id(&approval.tenant, &approval.id));
    let queried = tokio::time::timeout(
        Duration::from_secs(30),
        handle.query(
            ApprovalWorkflow::status,
            (),
            WorkflowQueryOptions::default(),
        ),
    )
    .await
    .expect("the query answered within 30 s")
    .expect("query");
    assert_eq!(queried.status, Status::Expired);
    assert_eq!(recorded.of(&approval).len(), 1, "counted again on replay");
    replacement.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_past_the_deadline_expires_the_approval_and_is_reported_once() {
    let server = own_server().await;
    let settings = settings_for(&server);
    let recorded = Arc::new(Recorded::default());
    // No worker yet: the workflow's first task (and its timer) waits for one.
    let backend = TemporalBackend::connect(settings.clone())
        .await
        .expect("backend");
    let client = client_for(&server).await;
    let tenant = fresh_tenant("late");
    let approval = submitted(&backend, pending(&tenant, "req-1", Duration::from_secs(1))).await;
    // Reads report the expiry from `expires_at` on, before any worker recorded it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = backend
            .get(&tenant, &id("req-1"))
            .await
            .expect("get")
            .expect("exists");
        if read.status == Status::Expired {
            break;
        }
        assert!(Instant::now() < deadline, "never read as expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recorded.of(&approval).is_empty(), "a read counts nothing");

    // The decision is delivered with the workflow's first task, past the deadline: the update
    // handler expires the approval (before `run` starts), and that is the one count. Stamped
    // just before the deadline (sent in time, processed late): one stamped past it is refused
    // by the validator and never reaches the handler.
    let deciding = {
        let backend = TemporalBackend::connect(settings.clone())
            .await
            .expect("backend");
        let tenant = tenant.clone();
        let mut in_time = decision(Verdict::Accept, "alice");
        in_time.at = Timestamp::from_millis(approval.expires_at.as_millis() - 1);
        tokio::spawn(async move { backend.decide(&tenant, &id("req-1"), in_time).await })
    };
    let worker = TestWorker::start(settings, &recorded);
    let outcome = deciding.await.expect("decide task").expect("decide");
    assert!(
        matches!(&outcome, DecisionOutcome::Expired(a) if a.status == Status::Expired),
        "{outcome:?}"
    );
    let result = closed(&client, &approval).await;
    assert_eq!(result.status, Status::Expired);
    let reports = recorded.of(&approval);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].0.decided_at, Some(approval.expires_at));
    assert_eq!(counted_in_history(&client, &approval).await, 1);
    // The handler's path, not `run`'s immediate expiry: the update was accepted into history.
    let history = history_json(&client, &approval).await;
    assert!(history.contains("UpdateAccepted"), "{history}");
    worker.stop().await;
}

async fn history_json(client: &Client, approval: &Approval) -> String {
    let json = client
        .get_workflow_handle::<ApprovalWorkflow>(workflow_id(&approval.tenant, &approval.id))
        .fetch_history(WorkflowFetchHistoryOptions::default())
        .to_json()
        .await
        .expect("history");
    String::from_utf8_lossy(&json).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decided_approvals_are_not_reported_as_expiries() {
    let Parked {
        _server,
        recorded,
        worker,
        backend,
        client,
        tenant,
        approval,
    } = parked_for_an_hour("decided").await;
    let outcome = backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Reject, "alice"))
        .await
        .expect("decide");
    assert!(
        matches!(outcome, DecisionOutcome::Decided(_)),
        "{outcome:?}"
    );
    let result = closed(&client, &approval).await;
    assert_eq!(result.status, Status::Rejected);
    assert!(recorded.of(&approval).is_empty());
    assert_eq!(counted_in_history(&client, &approval).await, 0);
    worker.stop().await;
}

/// A decision made at or past the deadline by the service's clock is refused as an expiry even
/// while the workflow's clock (Temporal's) has not reached it: readers judge the deadline by
/// the service's clock, so an agent was told "expired" and a reviewer's accept then landed.
/// The service's clock running ahead is played by a decision stamped a second past the
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_stamped_past_the_deadline_is_an_expiry_whatever_temporals_clock_says() {
    let Parked {
        _server,
        recorded: _,
        worker,
        backend,
        client,
        tenant,
        approval,
    } = parked_for_an_hour("ahead").await;

    let mut late = decision(Verdict::Accept, "alice");
    late.at = approval.expires_at.plus(Duration::from_secs(1));
    let outcome = backend
        .decide(&tenant, &id("req-1"), late)
        .await
        .expect("decide");
    assert!(
        matches!(&outcome, DecisionOutcome::Expired(_)),
        "{outcome:?}"
    );
    // Nothing was recorded: the workflow still holds it pending, for its timer to expire.
    let handle =
        client.get_workflow_handle::<ApprovalWorkflow>(workflow_id(&approval.tenant, &approval.id));
    let held = handle
        .query(
            ApprovalWorkflow::status,
            (),
            WorkflowQueryOptions::default(),
        )
        .await
        .expect("query");
    assert_eq!(held.status, Status::Pending);
    assert_eq!(held.decided_by, None);

    // A decision in time still lands.
    let outcome = backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    assert!(
        matches!(&outcome, DecisionOutcome::Decided(_)),
        "{outcome:?}"
    );
    worker.stop().await;
}

/// An approval whose workflow an operator terminated (nothing can decide it any more) reads
/// as expired from then on: a decision is answered `Expired`, a wait ends at once, and the
/// expired list shows it. It read as pending until its deadline, a decision on it was an
/// internal error, and no list showed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_whose_workflow_was_terminated_reads_as_expired() {
    let Parked {
        _server,
        recorded: _,
        worker,
        backend,
        client,
        tenant,
        approval,
    } = parked_for_an_hour("terminated").await;
    let before = Timestamp::now();
    client
        .get_workflow_handle::<ApprovalWorkflow>(workflow_id(&approval.tenant, &approval.id))
        .terminate(
            temporalio_client::WorkflowTerminateOptions::builder()
                .reason("an operator's mistake")
                .build(),
        )
        .await
        .expect("terminate");

    let read = backend
        .get(&tenant, &approval.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(read.status, Status::Expired, "{read:?}");
    assert_eq!(read.decision_reason.as_deref(), Some(ENDED_REASON));
    assert!(
        read.decided_at
            .is_some_and(|at| at >= before.minus(Duration::from_secs(5))),
        "{read:?}"
    );

    let refused = backend
        .decide(&tenant, &approval.id, decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    assert!(
        matches!(&refused, DecisionOutcome::Expired(a) if a.decided_by.is_none()),
        "{refused:?}"
    );

    let started = Instant::now();
    let waited = backend
        .wait_for_decision(
            &tenant,
            &approval.id,
            Duration::from_secs(30),
            Box::pin(std::future::pending()),
        )
        .await
        .expect("wait")
        .expect("found");
    assert_eq!(waited.status, Status::Expired);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // Lists read visibility, which learns of the termination a moment later: polled.
    let listed_by = Instant::now() + Duration::from_secs(30);
    loop {
        let expired = backend
            .list(&tenant, Status::Expired, None, 10)
            .await
            .expect("list");
        let ids: Vec<_> = expired.items.iter().map(|a| &a.id).collect();
        if ids == [&approval.id] {
            break;
        }
        assert!(Instant::now() < listed_by, "not listed as expired: {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = backend
        .list(&tenant, Status::Pending, None, 10)
        .await
        .expect("list");
    assert!(pending.items.is_empty(), "{pending:?}");

    // A migration's scan reads it as expired too (it read pending, and a rollback copied a
    // withdrawn approval to Redis as decidable): in a process that has not seen it, from
    // visibility alone.
    let migration = TemporalBackend::connect(settings_for(&_server))
        .await
        .expect("backend");
    let (mut cursor, mut scanned) = (None, None);
    loop {
        let page = RecordTransfer::scan(&migration, cursor.as_deref(), 100)
            .await
            .expect("scan");
        scanned = scanned.or(page.items.into_iter().find(|a| a.id == approval.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let scanned = scanned.expect("scanned");
    assert_eq!(scanned.status, Status::Expired, "{scanned:?}");
    assert_eq!(scanned.decision_reason.as_deref(), Some(ENDED_REASON));

    // The audit (so webhooks and live streams) has its expiry, at the close, once.
    let events = backend
        .audit(&tenant, None, None, 100)
        .await
        .expect("audit")
        .items;
    let expiries: Vec<_> = events
        .iter()
        .filter(|e| e.kind == AuditKind::Expired)
        .collect();
    assert_eq!(expiries.len(), 1, "{events:?}");
    assert_eq!(Some(expiries[0].timestamp), read.decided_at);
    assert_eq!(expiries[0].details["reason"], ENDED_REASON);
    worker.stop().await;
}

/// An expiry the timer recorded, then met by a reviewer's late decision (remembered by this
/// process for 30 s): not "overdue". The pending figures merged that settled record in and
/// read it as running hours past its deadline, the figure `ApprovalsExpiriesNotRecorded`
/// pages on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_met_by_a_late_decision_is_not_overdue() {
    let server = own_server().await;
    let settings = settings_for(&server);
    let recorded = Arc::new(Recorded::default());
    let worker = TestWorker::start(settings.clone(), &recorded);
    let backend = TemporalBackend::connect(settings).await.expect("backend");
    let client = client_for(&server).await;
    let tenant = fresh_tenant("met");
    let approval = submitted(&backend, pending(&tenant, "req-1", Duration::from_secs(1))).await;
    assert_eq!(closed(&client, &approval).await.status, Status::Expired);

    let outcome = backend
        .decide(&tenant, &id("req-1"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide");
    assert!(
        matches!(outcome, DecisionOutcome::Expired(_)),
        "{outcome:?}"
    );
    let stats = backend
        .pending_stats(&[], Timestamp::now())
        .await
        .expect("stats");
    assert_eq!(stats.overdue_seconds, 0.0, "{stats:?}");
    assert!(
        stats.tenants.iter().all(|t| t.tenant != tenant),
        "{stats:?}"
    );

    // One whose timer no worker runs (a task queue nobody polls) is overdue once past its
    // deadline, as before.
    let mut unpolled = settings_for(&server);
    unpolled.task_queue = format!("nobody-polls-{}", server.port);
    let stranded = TemporalBackend::connect(unpolled).await.expect("backend");
    let approval = submitted(&stranded, pending(&tenant, "req-2", Duration::from_secs(1))).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = stranded
            .pending_stats(&[], Timestamp::now())
            .await
            .expect("stats");
        if stats.overdue_seconds > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{approval:?} never overdue: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
}

/// A decision-log execution started on the approvals' task queue, as builds did before the
/// decision log had a queue of its own, is still completed by a worker of this build: a backlog
/// left from then (a worker outage, old API instances during the documented rollout) failed
/// its tasks for ever and never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_log_execution_on_the_approvals_queue_is_still_completed() {
    let server = own_server().await;
    let settings = settings_for(&server);
    let recorded = Arc::new(Recorded::default());
    let worker = TestWorker::start(settings.clone(), &recorded);
    let client = client_for(&server).await;
    let tenant = fresh_tenant("old-queue");
    let entry = approvals_core::AuditEntry::submitted(&pending(
        &tenant,
        "allowed-1",
        Duration::from_secs(60),
    ));
    let event = approvals_temporal::record::logged_event(entry, "0a1b2c3d4e5f");
    let options = WorkflowStartOptions::new(
        settings.task_queue.clone(),
        format!("decision-log:{tenant}:{}", event.event_id),
    )
    .build();
    let handle = client
        .start_workflow(DecisionLogWorkflow::run, event, options)
        .await
        .expect("started");
    tokio::time::timeout(
        Duration::from_secs(30),
        handle.get_result(WorkflowGetResultOptions::default()),
    )
    .await
    .expect("completed within 30 s")
    .expect("completed");
    worker.stop().await;
}
