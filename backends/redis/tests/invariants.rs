//! Redis-specific guarantees the shared suite cannot see: indexes agree with records after a
//! concurrent mixed workload on two instances, each expiry is recorded exactly once however
//! many sweepers run, one subscriber per process serves any number of waiters, a waiter
//! at the approval's deadline answers what Redis holds, not what it last heard, and a read
//! that finds an approval past its deadline records the expiry there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use approvals_core::conformance::{decision, fresh_tenant, id, pending};
use approvals_core::{ApprovalBackend, AuditKind, Lifetimes, Status, Timestamp, Verdict};
use approvals_redis::{RedisBackend, RedisSettings};
use approvals_testkit::RedisServer;
use serde_json::Value;

fn backend(server: &RedisServer) -> Arc<RedisBackend> {
    Arc::new(
        RedisBackend::connect(RedisSettings::new(server.url()), Lifetimes::default())
            .expect("backend"),
    )
}

/// A sweeper that runs every 20 ms, and how many passes it finished.
fn sweep_forever(
    backend: Arc<RedisBackend>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let passes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = passes.clone();
    let task = tokio::spawn(async move {
        loop {
            let _ = backend.expire_due(Timestamp::now()).await;
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (task, passes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_two_sweepers_indexes_agree_and_expiries_are_recorded_once() {
    let server = RedisServer::start().await;
    let (a, b) = (backend(&server), backend(&server));
    let sweepers = [sweep_forever(a.clone()), sweep_forever(b.clone())];
    let tenant = fresh_tenant("invariants");

    // 60 approvals: a third expire after 1 s, a third are raced by both instances, a third stay.
    let mut work = Vec::new();
    for n in 0..60 {
        let (a, b, tenant) = (a.clone(), b.clone(), tenant.clone());
        work.push(tokio::spawn(async move {
            let ttl = if n % 3 == 0 {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(3600)
            };
            let name = format!("req-{n:02}");
            a.submit(pending(&tenant, &name, ttl))
                .await
                .expect("submit");
            if n % 3 == 1 {
                let approval_id = id(&name);
                let (x, y) = tokio::join!(
                    a.decide(&tenant, &approval_id, decision(Verdict::Accept, "alice")),
                    b.decide(&tenant, &approval_id, decision(Verdict::Reject, "bob")),
                );
                x.expect("decide");
                y.expect("decide");
            }
        }));
    }
    for job in work {
        job.await.expect("join");
    }
    // Wait for every short-lived approval to expire (the event, not a guess: poll the list).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let expired = a
            .list(&tenant, Status::Expired, None, 500)
            .await
            .expect("list")
            .items
            .len();
        if expired == 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {expired} of 20 expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each sweeper runs over the same deadlines three more times: a second record of an
    // expiry would be written by one of these passes.
    let after: Vec<usize> = sweepers
        .iter()
        .map(|(_, passes)| passes.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sweepers
        .iter()
        .zip(&after)
        .any(|((_, passes), from)| passes.load(std::sync::atomic::Ordering::SeqCst) < from + 3)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweepers stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (sweeper, _) in sweepers {
        sweeper.abort();
    }

    let events = all_audit(&*a, &tenant).await;
    let expired_events = events
        .iter()
        .filter(|e| e.kind == AuditKind::Expired)
        .count();
    let decided_events = events
        .iter()
        .filter(|e| matches!(e.kind, AuditKind::Accepted | AuditKind::Rejected))
        .count();
    assert_eq!(expired_events, 20, "each expiry recorded exactly once");
    assert_eq!(decided_events, 20, "each race decided exactly once");

    // Every record is in exactly the index of its status, and nothing else is indexed.
    let mut conn = server.connection().await;
    let mut by_status: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut submitted_sum = 0_i64;
    for n in 0..60 {
        let key = format!("approval:{tenant}:req-{n:02}");
        let raw: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("record exists");
        let record: Value = serde_json::from_str(&raw).expect("json");
        let status = record["status"].as_str().expect("status").to_owned();
        let member = format!(
            "{:015}:req-{n:02}",
            record["submitted_ms"].as_i64().expect("ms")
        );
        if status == "pending" {
            submitted_sum += record["submitted_ms"].as_i64().expect("ms");
        }
        by_status.entry(status).or_default().insert(member);
    }
    for status in ["pending", "accepted", "rejected", "expired"] {
        let index: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("approvals:index:{tenant}:{status}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("index");
        let index: BTreeSet<String> = index.into_iter().collect();
        assert_eq!(
            index,
            by_status.remove(status).unwrap_or_default(),
            "index {status}"
        );
    }
    let deadlines: Vec<String> = redis::cmd("ZRANGE")
        .arg("approvals:deadlines")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("zrange");
    assert_eq!(
        deadlines.len(),
        20,
        "only the pending approvals have deadlines: {deadlines:?}"
    );
    let sum: i64 = redis::cmd("HGET")
        .arg("approvals:pending_submitted_ms")
        .arg(tenant.as_str())
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(
        sum, submitted_sum,
        "the age sum tracks exactly the pending approvals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriber_serves_two_hundred_waiters() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let tenant = fresh_tenant("fanout");
    for n in 0..200 {
        backend
            .submit(pending(
                &tenant,
                &format!("req-{n}"),
                Duration::from_secs(3600),
            ))
            .await
            .expect("submit");
    }
    let waiters: Vec<_> = (0..200)
        .map(|n| {
            let (backend, tenant) = (backend.clone(), tenant.clone());
            tokio::spawn(async move {
                backend
                    .wait_for_decision(
                        &tenant,
                        &id(&format!("req-{n}")),
                        Duration::from_secs(30),
                        approvals_core::no_stop(),
                    )
                    .await
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while backend.waiting() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiters never parked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut conn = server.connection().await;
    let subscribers: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("approvals:settled")
        .query_async(&mut conn)
        .await
        .expect("numsub");
    assert_eq!(
        subscribers.1, 1,
        "one subscriber connection for the whole process"
    );
    for n in 0..200 {
        backend
            .decide(
                &tenant,
                &id(&format!("req-{n}")),
                decision(Verdict::Accept, "alice"),
            )
            .await
            .expect("decide");
    }
    for waiter in waiters {
        let approval = waiter.await.expect("join").expect("wait").expect("exists");
        assert_eq!(approval.status, Status::Accepted);
    }
    assert_eq!(backend.waiting(), 0, "finished waiters unregister");
}

async fn all_audit(
    backend: &dyn ApprovalBackend,
    tenant: &approvals_core::TenantId,
) -> Vec<approvals_core::AuditEvent> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = backend
            .audit(tenant, None, cursor.as_deref(), 1000)
            .await
            .expect("audit");
        events.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return events,
        }
    }
}

/// A decision Redis took just before the deadline, whose message this instance never got (a
/// busy instance, a lost message): the waiter woken by the deadline answers `accepted`, as
/// the reviewer was told and every later read says. It answered `expired` from the pending
/// copy it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_at_the_deadline_answers_what_redis_holds() {
    let (server, elsewhere) = (RedisServer::start().await, RedisServer::start().await);
    let (ours, theirs) = (backend(&server), backend(&elsewhere));
    let tenant = fresh_tenant("deadline");
    let approval = pending(&tenant, "late", Duration::from_secs(5));
    ours.submit(approval.clone()).await.expect("submit");
    theirs.submit(approval).await.expect("submit elsewhere");
    let waiter = {
        let (ours, tenant) = (ours.clone(), tenant.clone());
        tokio::spawn(async move {
            ours.wait_for_decision(
                &tenant,
                &id("late"),
                Duration::from_secs(30),
                approvals_core::no_stop(),
            )
            .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ours.parked() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The same decision, made by the same scripts on another Redis (whose message nobody here
    // hears), then moved in key by key: what `decide` writes, without its message.
    theirs
        .decide(&tenant, &id("late"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide elsewhere");
    move_keys(&elsewhere, &server, &format!("*{tenant}:late")).await;
    let answered = waiter.await.expect("join").expect("wait").expect("exists");
    assert_eq!(answered.status, Status::Accepted, "{answered:?}");
    let read = ours.get(&tenant, &id("late")).await.expect("get");
    assert_eq!(read.map(|a| a.status), Some(Status::Accepted));
}

/// A wait that reaches the deadline while Redis does not answer says so (an error, which the
/// API answers `503` and a client retries): it answered `expired` from the pending copy it
/// held, a final answer that the decision Redis took a moment before (its message lost with
/// the connection) contradicted once Redis was back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_at_the_deadline_during_an_outage_does_not_answer_expired() {
    let (mut server, elsewhere) = (
        RedisServer::start_durable().await,
        RedisServer::start().await,
    );
    let (ours, theirs) = (backend(&server), backend(&elsewhere));
    let tenant = fresh_tenant("deadline-outage");
    // Time for the steps below before the deadline, on a loaded machine too.
    let approval = pending(&tenant, "late", Duration::from_secs(10));
    let expires_at = approval.expires_at;
    ours.submit(approval.clone()).await.expect("submit");
    theirs.submit(approval).await.expect("submit elsewhere");
    let waiter = {
        let (ours, tenant) = (ours.clone(), tenant.clone());
        tokio::spawn(async move {
            ours.wait_for_decision(
                &tenant,
                &id("late"),
                Duration::from_secs(30),
                approvals_core::no_stop(),
            )
            .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ours.parked() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The decision without its message, as in the test above, then Redis gone before the
    // deadline.
    theirs
        .decide(&tenant, &id("late"), decision(Verdict::Accept, "alice"))
        .await
        .expect("decide elsewhere");
    move_keys(&elsewhere, &server, &format!("*{tenant}:late")).await;
    server.stop();
    assert!(
        Timestamp::now() < expires_at,
        "Redis stopped only after the deadline: the test's margin is too short"
    );
    let answer = waiter.await.expect("join");
    assert!(
        answer
            .as_ref()
            .is_err_and(|e| e.to_string().contains("unavailable")),
        "{answer:?}"
    );
    server.restart().await;
    // What Redis holds, read as soon as the backend has reconnected.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let read = loop {
        match ours.get(&tenant, &id("late")).await {
            Ok(read) => break read,
            Err(error) => assert!(tokio::time::Instant::now() < deadline, "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(read.map(|a| a.status), Some(Status::Accepted));
}

/// Copies the keys matching `pattern` from one server to another, TTLs included.
async fn move_keys(from: &RedisServer, to: &RedisServer, pattern: &str) {
    let (mut from, mut to) = (from.connection().await, to.connection().await);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut from)
        .await
        .expect("keys");
    assert!(!keys.is_empty());
    for key in keys {
        let (dump, ttl): (Vec<u8>, i64) = redis::pipe()
            .cmd("DUMP")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut from)
            .await
            .expect("dump");
        let () = redis::cmd("RESTORE")
            .arg(&key)
            .arg(ttl.max(0))
            .arg(dump)
            .arg("REPLACE")
            .query_async(&mut to)
            .await
            .expect("restore");
    }
}

/// Instances judge a deadline by their own clocks. A read that told an agent "expired" from
/// its clock alone, before any sweeper ran, left the approval pending in Redis, where a
/// reviewer on an instance whose clock runs behind could still accept it. The read records
/// the expiry: every instance, the expired list and the sweeper then agree it has ended.
#[tokio::test]
async fn a_read_past_the_deadline_records_the_expiry_for_every_instance() {
    let server = RedisServer::start().await;
    let (reader, other) = (backend(&server), backend(&server));
    let tenant = fresh_tenant("read-expiry");
    let approval = pending(&tenant, "due", Duration::from_millis(200));
    let expires_at = approval.expires_at;
    reader.submit(approval).await.expect("submit");
    // The deadline passing is the event awaited here; no sweeper runs in this test.
    while Timestamp::now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let read = reader.get(&tenant, &id("due")).await.expect("get");
    assert_eq!(read.map(|a| a.status), Some(Status::Expired));
    let listed = other
        .list(&tenant, Status::Expired, None, 10)
        .await
        .expect("list");
    assert_eq!(
        listed
            .items
            .iter()
            .map(|a| a.id.clone())
            .collect::<Vec<_>>(),
        [id("due")],
        "recorded in Redis, in the expired list every instance reads"
    );
    // A sweeper finds nothing left to record: the expiry happened once, at the read.
    let swept = other.expire_due(Timestamp::now()).await.expect("sweep");
    assert!(swept.is_empty(), "{swept:?}");
    let audit = all_audit(&*other, &tenant).await;
    let expired_events = audit
        .iter()
        .filter(|e| e.kind == AuditKind::Expired)
        .count();
    assert_eq!(expired_events, 1, "{audit:?}");
}

/// An agent repeating its submit past the deadline is answered "expired" only once Redis has
/// recorded it, as a read is: the repeat answered from the instance's clock alone, and a
/// reviewer on an instance whose clock runs behind could still accept what the agent was
/// told had expired.
#[tokio::test]
async fn a_repeated_submit_past_the_deadline_records_the_expiry() {
    let server = RedisServer::start().await;
    let (agent, other) = (backend(&server), backend(&server));
    let tenant = fresh_tenant("repeat-expiry");
    let approval = pending(&tenant, "due", Duration::from_millis(200));
    let expires_at = approval.expires_at;
    agent.submit(approval.clone()).await.expect("submit");
    // The deadline passing is the event awaited here; no sweeper runs in this test.
    while Timestamp::now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let repeated = agent.submit(approval).await.expect("repeat");
    match repeated {
        approvals_core::SubmitOutcome::Existing(existing) => {
            assert_eq!(existing.status, Status::Expired)
        }
        created => panic!("the repeat parked it again: {created:?}"),
    }
    let listed = other
        .list(&tenant, Status::Expired, None, 10)
        .await
        .expect("list");
    let ids: Vec<_> = listed.items.iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids, [id("due")], "recorded in Redis for every instance");
    let audit = all_audit(&*other, &tenant).await;
    let expired_events = audit
        .iter()
        .filter(|e| e.kind == AuditKind::Expired)
        .count();
    assert_eq!(expired_events, 1, "{audit:?}");
}

/// A page of large records is read in chunks up to its byte budget (1 MiB), not in one MGET
/// of every record on it: 100 records of 60 kB came back as one 6 MB reply, on a connection
/// every other call shares and in a buffer Redis counts against its memory.
#[tokio::test]
async fn a_page_of_large_records_reads_about_its_budget_from_redis() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let tenant = fresh_tenant("large-page");
    park_large(&backend, &tenant, 100).await;
    let mut conn = server.connection().await;
    let sent = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .map(|n| n.trim().parse().expect("a count"))
            .expect("total_net_output_bytes")
    };
    let before: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let page = backend
        .list(&tenant, Status::Pending, None, 100)
        .await
        .expect("list");
    let after: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let read = sent(after) - sent(before);
    assert!(
        (10..100).contains(&page.items.len()) && page.next_cursor.is_some(),
        "a page cut at its budget: {} items",
        page.items.len()
    );
    assert!(read < 2_500_000, "{read} bytes read for one page");
    // The next page starts where this one ended: none skipped, none repeated.
    let next = backend
        .list(&tenant, Status::Pending, page.next_cursor.as_deref(), 100)
        .await
        .expect("next page");
    let last = page.items.last().expect("items").id.to_string();
    let first = next.items.first().expect("items").id.to_string();
    let number = |id: &str| id.trim_start_matches("large-").parse::<u32>().expect("n");
    assert_eq!(number(&first), number(&last) + 1, "{last} then {first}");
}

/// Every long-poll on an approval wakes at its deadline, before the sweeper's next pass, and
/// reads it: those reads share one expiry call, instead of one script each (all but the first
/// for nothing) and a read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_at_the_deadline_share_one_expiry_call() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let tenant = fresh_tenant("deadline-herd");
    let approval = pending(&tenant, "herd", Duration::from_secs(2));
    backend.submit(approval).await.expect("submit");
    let waiters: Vec<_> = (0..200)
        .map(|_| {
            let (backend, tenant) = (backend.clone(), tenant.clone());
            tokio::spawn(async move {
                backend
                    .wait_for_decision(
                        &tenant,
                        &id("herd"),
                        Duration::from_secs(30),
                        approvals_core::no_stop(),
                    )
                    .await
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while backend.parked() < 200 {
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let scripts_before = server.calls("evalsha").await;
    for waiter in waiters {
        let answered = waiter.await.expect("join").expect("wait").expect("exists");
        assert_eq!(answered.status, Status::Expired);
    }
    let scripts = server.calls("evalsha").await - scripts_before;
    assert!(
        scripts <= 10,
        "{scripts} scripts for 200 waiters at one deadline"
    );
}

/// A record's key expires at the approval's deadline, however long its park waited for Redis
/// (an ADR v1 reader takes a key that still exists for a pending approval). Its lifetime was
/// counted from when Redis ran the script, and a park held up by a busy Redis left the key
/// pending past the deadline by as long.
#[tokio::test]
async fn a_record_key_expires_at_its_deadline_however_late_redis_parks_it() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let tenant = fresh_tenant("late-park");
    let mut conn = server.connection().await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(800)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .expect("pause");
    let approval = pending(&tenant, "req-1", Duration::from_secs(3600));
    let expires_at = approval.expires_at;
    backend.submit(approval).await.expect("submit");
    let mut conn = server.connection().await;
    let key_expiry: i64 = redis::cmd("PEXPIRETIME")
        .arg(format!("approval:{tenant}:req-1"))
        .query_async(&mut conn)
        .await
        .expect("pexpiretime");
    assert_eq!(key_expiry, expires_at.as_millis());
}

/// Parks `count` pending approvals `large-000`… of about 60 kB each in `tenant`.
async fn park_large(backend: &RedisBackend, tenant: &approvals_core::TenantId, count: usize) {
    for n in 0..count {
        let mut approval = pending(tenant, &format!("large-{n:03}"), Duration::from_secs(3600));
        approval
            .context
            .insert("notes".into(), Value::String("x".repeat(60_000)));
        backend.submit(approval).await.expect("submit");
    }
}

/// Counts the expiries the chores report (what the decision log and the metrics are told).
#[derive(Default)]
struct ExpiryCount(std::sync::atomic::AtomicUsize);

impl approvals_core::EngineEvents for ExpiryCount {
    fn expired(&self, _: &approvals_core::Approval, _: Timestamp) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn chore_finished(&self, _: &'static str, _: Result<usize, &approvals_core::BackendError>) {}
    fn unreadable(&self, _: &str, _: &str) {}
}

/// A sweep pass that shutdown abandons half way has reported every expiry it recorded before:
/// they were reported only at the end of the pass, so a SIGTERM during a burst of expiries
/// left them recorded in Redis and never shipped to the decision log or counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_stopped_part_way_has_reported_what_it_recorded() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let tenant = fresh_tenant("stopped-sweep");
    let ttl = Duration::from_millis(100);
    for n in 0..500 {
        backend
            .submit(pending(&tenant, &format!("due-{n:03}"), ttl))
            .await
            .expect("submit");
    }
    // Every deadline passes before the sweeper starts, so its first pass has all 500.
    tokio::time::sleep(ttl).await;
    let mut control = server.connection().await;
    let due = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("ZCARD")
                .arg("approvals:deadlines")
                .query_async::<usize>(&mut conn)
                .await
                .expect("ZCARD")
        }
    };
    let before = due(&mut control).await;
    assert_eq!(before, 500);

    let reports = Arc::new(ExpiryCount::default());
    let schedule = approvals_redis::ChoreSchedule {
        sweep_interval: Duration::from_millis(10),
        adopt_interval: Duration::from_secs(3600),
    };
    let chores = backend.start_chores(schedule, reports.clone());
    // The pass has recorded at least two (Redis says so): writes are held from now on, so the
    // pass is stuck part way when the chores stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while due(&mut control).await + 2 > before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep never began"
        );
    }
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10000)
        .arg("WRITE")
        .query_async::<()>(&mut control)
        .await
        .expect("CLIENT PAUSE");
    let recorded = before - due(&mut control).await;
    tokio::time::timeout(Duration::from_secs(5), chores.stop())
        .await
        .expect("the chores stop at once");
    redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async::<()>(&mut control)
        .await
        .expect("CLIENT UNPAUSE");

    let reported = reports.0.load(std::sync::atomic::Ordering::SeqCst);
    // One script's answer may still have been on its way when the pass was dropped.
    assert!(
        reported + 1 >= recorded,
        "{recorded} expiries recorded before the stop, {reported} reported"
    );
}

/// A migration's scan page of large records is read in MGETs of about a megabyte, not one:
/// 400 records of 60 kB were one 24 MB reply, past a client output buffer limit of 8 MB (and
/// over a slow link past the call's deadline on every attempt, at the same page each re-run).
#[tokio::test]
async fn a_scan_page_of_large_records_is_read_in_bounded_replies() {
    use approvals_core::RecordTransfer;
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let tenant = fresh_tenant("large-scan");
    park_large(&backend, &tenant, 400).await;
    let mut conn = server.connection().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("normal 8mb 8mb 0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut found = 0;
    let mut cursor = None;
    loop {
        let page = backend
            .scan(cursor.as_deref(), 1000)
            .await
            .expect("a scan page");
        found += page.items.len();
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(found, 400);
}

/// A pending record whose key was replaced with another type (a repair gone wrong) is still
/// found by a migration's scan, read from its second copy, as when its key has lapsed: asked
/// whether the key existed, the scan took it for present and dropped the record silently.
#[tokio::test]
async fn a_scan_reads_a_record_whose_key_holds_another_type_from_its_shadow() {
    use approvals_core::RecordTransfer;
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let tenant = fresh_tenant("retyped");
    backend
        .submit(pending(&tenant, "retyped-1", Duration::from_secs(3600)))
        .await
        .expect("submit");
    let mut conn = server.connection().await;
    let key = format!("approval:{tenant}:retyped-1");
    let () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("field")
        .arg("value")
        .query_async(&mut conn)
        .await
        .unwrap();
    let page = backend.scan(None, 1000).await.expect("a scan page");
    let ids: Vec<String> = page.items.iter().map(|a| a.id.to_string()).collect();
    assert_eq!(ids, ["retyped-1"], "{page:?}");
}

/// A read that finds an approval past its deadline and cannot have Redis record the expiry
/// (Redis takes no writes for a moment: a failover, a pause) does not answer `expired` from
/// this instance's clock alone: Redis still holds it pending, and a reviewer whose clock and
/// Redis' are a little behind could still accept it. It answers that the store did not
/// answer, and once Redis takes writes again the read records the expiry as before.
#[tokio::test]
async fn a_read_that_cannot_record_an_expiry_does_not_answer_expired() {
    let server = RedisServer::start().await;
    let mut settings = RedisSettings::new(server.url());
    settings.call_timeout = Duration::from_millis(300);
    let backend = RedisBackend::connect(settings, Lifetimes::default()).expect("backend");
    let tenant = fresh_tenant("paused");
    let approval = pending(&tenant, "req-1", Duration::from_secs(1));
    let deadline = approval.expires_at;
    backend.submit(approval).await.expect("submit");
    let left = deadline.as_millis() - Timestamp::now().as_millis();
    tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0) + 50)).await;

    let mut admin = server.connection().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .expect("pause");
    let read = backend.get(&tenant, &id("req-1")).await;
    assert!(
        read.is_err(),
        "answered {:?} while Redis holds it pending",
        read.map(|a| a.map(|a| a.status))
    );
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .expect("unpause");
    let read = backend.get(&tenant, &id("req-1")).await.expect("read");
    assert_eq!(read.map(|a| a.status), Some(Status::Expired));
}
