//! What the Lua scripts do when Redis refuses one of their writes or a key holds something
//! else: Redis applies a script's writes up to the call that fails, so each script checks
//! first and writes after, and one damaged key costs its own approval, never the others'.

use std::sync::Arc;
use std::time::Duration;

use approvals_core::conformance::{fresh_tenant, id, pending};
use approvals_core::{ApprovalBackend, Lifetimes, Status, TenantId, Timestamp};
use approvals_redis::{RedisBackend, RedisSettings};
use approvals_testkit::RedisServer;
use redis::AsyncCommands;

const HOUR: Duration = Duration::from_secs(3600);

fn backend(server: &RedisServer) -> Arc<RedisBackend> {
    Arc::new(
        RedisBackend::connect(RedisSettings::new(server.url()), Lifetimes::default())
            .expect("backend"),
    )
}

fn record_key(tenant: &TenantId, name: &str) -> String {
    format!("approval:{tenant}:{name}")
}

fn audit_key(tenant: &TenantId) -> String {
    format!("approvals:audit:{tenant}")
}

/// Replaces `tenant`'s audit stream with a string: every script that appends to it is refused.
async fn replace_audit_stream(conn: &mut redis::aio::MultiplexedConnection, tenant: &TenantId) {
    let _: () = conn.del(audit_key(tenant)).await.expect("del");
    let _: () = conn
        .set(audit_key(tenant), "not a stream")
        .await
        .expect("set");
}

/// Writes `v1` (an ADR v1 record's JSON) as `req-1` of `tenant`, as the ADR's service would,
/// and reads it back through `backend`, which adopts it.
async fn write_v1_and_read(
    conn: &mut redis::aio::MultiplexedConnection,
    backend: &RedisBackend,
    tenant: &TenantId,
    v1: &str,
) -> approvals_core::Approval {
    let _: () = conn
        .set_ex(record_key(tenant, "req-1"), v1, 3600)
        .await
        .expect("set");
    backend
        .get(tenant, &id("req-1"))
        .await
        .expect("get")
        .expect("found")
}

async fn pending_ids(backend: &RedisBackend, tenant: &TenantId) -> Vec<String> {
    let page = backend
        .list(tenant, Status::Pending, None, 100)
        .await
        .expect("list");
    page.items.into_iter().map(|a| a.id.to_string()).collect()
}

/// A submit that Redis would refuse half-way (the tenant's pending-age sum would pass 2^63;
/// its audit stream replaced by a string) is refused whole: no record an agent could be
/// answered from, nothing in the reviewers' list, and a retry once the cause is gone parks it.
#[tokio::test]
async fn a_submit_redis_refuses_half_way_writes_nothing() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;

    let full = fresh_tenant("sum-full");
    let _: () = conn
        .hset(
            "approvals:pending_submitted_ms",
            full.as_str(),
            i64::MAX - 1_000,
        )
        .await
        .expect("hset");
    let refused = backend.submit(pending(&full, "req-1", HOUR)).await;
    assert!(refused.is_err(), "refused: {refused:?}");
    let record: Option<String> = conn.get(record_key(&full, "req-1")).await.expect("get");
    assert_eq!(record, None, "no record left behind");
    let events: usize = conn.xlen(audit_key(&full)).await.expect("xlen");
    assert_eq!(events, 0, "no submit event");
    assert!(pending_ids(&backend, &full).await.is_empty());

    let broken = fresh_tenant("audit-broken");
    replace_audit_stream(&mut conn, &broken).await;
    let refused = backend.submit(pending(&broken, "req-1", HOUR)).await;
    assert!(refused.is_err(), "refused: {refused:?}");
    let record: Option<String> = conn.get(record_key(&broken, "req-1")).await.expect("get");
    assert_eq!(record, None, "no record without its submit event");
    assert!(pending_ids(&backend, &broken).await.is_empty());

    let _: () = conn.del(audit_key(&broken)).await.expect("del");
    backend
        .submit(pending(&broken, "req-1", HOUR))
        .await
        .expect("the retry parks it");
    assert_eq!(pending_ids(&backend, &broken).await, ["req-1"]);
}

/// Due approvals behind damaged ones are still expired: a record key holding a hash, and a
/// tenant whose audit stream was replaced, each cost only their own approval (counted, left
/// for a person to look at), and the damaged one is not half-expired.
#[tokio::test]
async fn a_sweep_passes_over_damaged_keys_and_expires_the_rest() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let (hashed, streamless, healthy) = (
        fresh_tenant("hashed"),
        fresh_tenant("streamless"),
        fresh_tenant("healthy"),
    );
    // The damaged ones are due first, so a sweep that stopped at them would expire nothing.
    for (tenant, ttl) in [
        (&hashed, HOUR),
        (&streamless, HOUR),
        (&healthy, HOUR + Duration::from_secs(60)),
    ] {
        backend
            .submit(pending(tenant, "req-1", ttl))
            .await
            .expect("submit");
    }
    let _: () = conn.del(record_key(&hashed, "req-1")).await.expect("del");
    let _: () = conn
        .hset(record_key(&hashed, "req-1"), "status", "pending")
        .await
        .expect("hset");
    replace_audit_stream(&mut conn, &streamless).await;

    let later = Timestamp::now().plus(HOUR * 2);
    let expired = backend.expire_due(later).await.expect("the sweep goes on");
    let expired: Vec<&TenantId> = expired.iter().map(|a| &a.tenant).collect();
    assert_eq!(expired, [&healthy], "only the healthy one expired");

    let left = backend
        .get(&streamless, &id("req-1"))
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(left.status, Status::Pending, "not half-expired");
    let healthy_now = backend
        .get(&healthy, &id("req-1"))
        .await
        .expect("get")
        .expect("kept for its expired-retention");
    assert_eq!(healthy_now.status, Status::Expired);
}

/// A tenant whose audit stream was replaced holds up no one else's expiries, however many of
/// its approvals are due: each refused entry is tried again a minute later, not at the head of
/// every pass. With a batch's worth (500) of them due first, no other tenant's approval was
/// ever expired again. Once the stream is mended, they are expired too.
#[tokio::test]
async fn a_batch_of_refused_expiries_does_not_hold_up_other_tenants() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let (streamless, healthy) = (fresh_tenant("streamless"), fresh_tenant("healthy"));
    for n in 0..500 {
        backend
            .submit(pending(&streamless, &format!("req-{n}"), HOUR))
            .await
            .expect("submit");
    }
    backend
        .submit(pending(&healthy, "req-1", HOUR + Duration::from_secs(60)))
        .await
        .expect("submit");
    replace_audit_stream(&mut conn, &streamless).await;

    let later = Timestamp::now().plus(HOUR * 2);
    let mut expired = Vec::new();
    for _ in 0..3 {
        expired.extend(backend.expire_due(later).await.expect("the sweep goes on"));
    }
    let tenants: Vec<&TenantId> = expired.iter().map(|a| &a.tenant).collect();
    assert_eq!(tenants, [&healthy], "the healthy tenant's approval expired");

    let _: () = conn.del(audit_key(&streamless)).await.expect("mend");
    let retried = backend
        .expire_due(later.plus(Duration::from_secs(61)))
        .await
        .expect("sweep");
    assert_eq!(retried.len(), 500, "tried again once their minute passed");
    assert!(retried.iter().all(|a| a.tenant == streamless));
}

/// An approval this service parked and the ADR v1 service then decided (its own format, over
/// ours) is adopted as decided: once that record lapses, the pending copy kept for late
/// expiries must not be swept into a second, phantom expiry.
#[tokio::test]
async fn a_decided_record_adopted_over_a_pending_one_never_expires_later() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let tenant = fresh_tenant("adopted");
    backend
        .submit(pending(&tenant, "req-1", HOUR))
        .await
        .expect("submit");
    let v1 = serde_json::json!({
        "status": "approved",
        "agent_action": {"type": "document_read"},
        "context": {},
        "submitted_at": "2026-12-01T10:00:00Z",
    });
    let adopted = write_v1_and_read(&mut conn, &backend, &tenant, &v1.to_string()).await;
    assert_eq!(adopted.status, Status::Accepted);

    // The decided record reaches its retention before the old deadline (a tenant whose TTL
    // is longer than the decided-retention).
    let _: () = conn.del(record_key(&tenant, "req-1")).await.expect("del");
    let expired = backend
        .expire_due(Timestamp::now().plus(HOUR * 2))
        .await
        .expect("sweep");
    assert!(expired.is_empty(), "phantom expiry: {expired:?}");
    assert!(pending_ids(&backend, &tenant).await.is_empty());
    let after = backend.get(&tenant, &id("req-1")).await.expect("get");
    assert_eq!(after.map(|a| a.status), None, "gone with its retention");
}

/// A pending shadow brought back beside a record settled since (a restore of those keys from
/// before the decision) goes when the sweeper meets the settled record: left, it outlived
/// the record, and reads then called the decided approval expired.
#[tokio::test]
async fn a_pending_shadow_beside_a_settled_record_goes_at_the_next_sweep() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let tenant = fresh_tenant("restored");
    backend
        .submit(pending(&tenant, "req-1", HOUR))
        .await
        .expect("submit");
    let shadow = format!("approvals:shadow:{tenant}:req-1");
    let pending_copy: String = conn.get(&shadow).await.expect("shadow");
    let deadlines: Vec<(String, f64)> = conn
        .zrange_withscores("approvals:deadlines", 0, -1)
        .await
        .expect("deadlines");
    let accept =
        approvals_core::DecisionRequest::now(approvals_core::Verdict::Accept, "alice", None);
    backend
        .decide(&tenant, &id("req-1"), accept)
        .await
        .expect("decide");
    // The restore.
    let _: () = conn
        .set_ex(&shadow, &pending_copy, 7200)
        .await
        .expect("shadow back");
    for (member, score) in &deadlines {
        let _: () = conn
            .zadd("approvals:deadlines", member, *score)
            .await
            .expect("deadline back");
    }

    let expired = backend
        .expire_due(Timestamp::now().plus(HOUR * 2))
        .await
        .expect("sweep");
    assert!(expired.is_empty(), "{expired:?}");
    // The decided record reaches its retention.
    let _: () = conn.del(record_key(&tenant, "req-1")).await.expect("del");
    let after = backend.get(&tenant, &id("req-1")).await.expect("get");
    assert_eq!(
        after.map(|a| a.status),
        None,
        "no expiry read from the shadow"
    );
}

/// An index, deadline or tenants key replaced by a string refuses the submit or the decision
/// whole, before its first write: Redis refused the ZADD after the record and its audit event
/// were written, which left an approval with no deadline (it never expired) or a decision the
/// reviewer was told had failed, already recorded.
#[tokio::test]
async fn a_damaged_index_refuses_the_write_before_any_of_it_is_made() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;

    let tenant = fresh_tenant("index-broken");
    let index = format!("approvals:index:{tenant}:pending");
    let _: () = conn.set(&index, "not a sorted set").await.expect("set");
    let refused = backend.submit(pending(&tenant, "req-1", HOUR)).await;
    assert!(refused.is_err(), "refused: {refused:?}");
    let record: Option<String> = conn.get(record_key(&tenant, "req-1")).await.expect("get");
    assert_eq!(
        record, None,
        "no record without its index entry and deadline"
    );
    let events: usize = conn.xlen(audit_key(&tenant)).await.expect("xlen");
    assert_eq!(events, 0, "no submit event");

    let deciding = fresh_tenant("deadlines-broken");
    backend
        .submit(pending(&deciding, "req-1", HOUR))
        .await
        .expect("submit");
    let accepted = format!("approvals:index:{deciding}:accepted");
    let _: () = conn.set(&accepted, "not a sorted set").await.expect("set");
    let accept =
        approvals_core::DecisionRequest::now(approvals_core::Verdict::Accept, "alice", None);
    let refused = backend.decide(&deciding, &id("req-1"), accept).await;
    assert!(refused.is_err(), "refused: {refused:?}");
    let still = backend.get(&deciding, &id("req-1")).await.expect("get");
    assert_eq!(still.map(|a| a.status), Some(Status::Pending));
    let events: usize = conn.xlen(audit_key(&deciding)).await.expect("xlen");
    assert_eq!(events, 1, "the submit's event only");
}

/// A tenant's pending-age sum that holds what HINCRBY refuses (here a float, as a repair by
/// hand might write) refuses a submit and a decision whole: the scripts read it as 0, wrote
/// the record, index entry and audit event, then failed at the HINCRBY, leaving an approval
/// with no deadline (it never expired) or a decision the reviewer was told had failed.
#[tokio::test]
async fn a_damaged_pending_sum_refuses_submits_and_decisions_before_any_write() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let tenant = fresh_tenant("sum-damaged");
    backend
        .submit(pending(&tenant, "first", HOUR))
        .await
        .expect("submit");
    let _: () = conn
        .hset("approvals:pending_submitted_ms", tenant.as_str(), "12.5")
        .await
        .expect("hset");

    let refused = backend.submit(pending(&tenant, "second", HOUR)).await;
    assert!(refused.is_err(), "refused: {refused:?}");
    let record: Option<String> = conn.get(record_key(&tenant, "second")).await.expect("get");
    assert_eq!(record, None, "no record left behind");
    assert_eq!(pending_ids(&backend, &tenant).await, ["first"]);

    let accept =
        approvals_core::DecisionRequest::now(approvals_core::Verdict::Accept, "alice", None);
    let refused = backend.decide(&tenant, &id("first"), accept).await;
    assert!(refused.is_err(), "refused: {refused:?}");
    let still = backend.get(&tenant, &id("first")).await.expect("get");
    assert_eq!(still.map(|a| a.status), Some(Status::Pending));
    assert_eq!(pending_ids(&backend, &tenant).await, ["first"]);
    let events: usize = conn.xlen(audit_key(&tenant)).await.expect("xlen");
    assert_eq!(events, 1, "the first submit's event only");
}

/// An allow or deny answer's audit event (record.lua) is not appended when the tenants' set
/// it also names the tenant in is damaged: it was appended, then the SADD failed, and every
/// retry of the refused answer appended it once more.
#[tokio::test]
async fn a_recorded_answer_with_a_damaged_tenants_set_appends_nothing() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let tenant = fresh_tenant("tenants-damaged");
    let _: () = conn
        .set("approvals:tenants", "not a set")
        .await
        .expect("set");
    let entry = approvals_core::AuditEntry::decision(
        &tenant,
        &id("allowed-1"),
        &approvals_core::DecisionRequest::now(approvals_core::Verdict::Accept, "alice", None),
    );
    for _ in 0..2 {
        let refused = backend.record(entry.clone()).await;
        assert!(refused.is_err(), "refused: {refused:?}");
    }
    let events: usize = conn.xlen(audit_key(&tenant)).await.expect("xlen");
    assert_eq!(events, 0, "no event appended by a refused call");
}

/// An audit entry that cannot be read, last in the stream (corrupt, or of a kind a newer
/// version writes): the page says where to go on from, past it. It ended at the last entry
/// it could read, so every live stream and the webhook reader read the bad one again (and
/// logged and counted it) every poll, until a newer event came.
#[tokio::test]
async fn a_page_ending_in_an_unreadable_audit_entry_goes_on_past_it() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let tenant = fresh_tenant("audit-tail");
    backend
        .submit(pending(&tenant, "readable", HOUR))
        .await
        .expect("submit");
    let mut conn = server.connection().await;
    let unreadable: String = redis::cmd("XADD")
        .arg(audit_key(&tenant))
        .arg("*")
        .arg("e")
        .arg("not json")
        .query_async(&mut conn)
        .await
        .expect("xadd");

    let page = backend.audit(&tenant, None, None, 10).await.expect("audit");
    assert_eq!(page.items.len(), 1, "{:?}", page.items);
    assert_eq!(page.next_cursor.as_deref(), Some(unreadable.as_str()));
    let after = backend
        .audit(&tenant, None, page.next_cursor.as_deref(), 10)
        .await
        .expect("audit after it");
    assert!(
        after.items.is_empty() && after.next_cursor.is_none(),
        "{after:?}"
    );
}

/// A pending v1 record the ADR's service writes again, unchanged in its time, after this
/// service adopted it is adopted again, and counted once: park.lua added its submitted time
/// to the tenant's pending-age sum a second time (the index entry was already there), so the
/// tenant's mean age stayed wrong (clamped at 0) until it had nothing pending.
#[tokio::test]
async fn a_v1_record_adopted_twice_is_counted_once() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let tenant = fresh_tenant("rewritten");
    let submitted = Timestamp::now().minus(Duration::from_secs(600));
    let v1 = serde_json::json!({
        "status": "pending",
        "agent_action": {"type": "document_read"},
        "context": {},
        "submitted_at": submitted.to_string(),
    })
    .to_string();
    for _ in 0..2 {
        let adopted = write_v1_and_read(&mut conn, &backend, &tenant, &v1).await;
        assert_eq!(adopted.status, Status::Pending);
    }
    let stats = backend
        .pending_stats(&[], Timestamp::now())
        .await
        .expect("stats");
    let ours = stats
        .tenants
        .iter()
        .find(|t| t.tenant == tenant)
        .expect("the tenant's figures");
    assert_eq!(ours.count, 1);
    assert!(
        (590.0..700.0).contains(&ours.age_sum_seconds),
        "the age of one approval ten minutes old: {}",
        ours.age_sum_seconds
    );
}

/// One tenant's pending index holding another type costs that tenant's figures only: every
/// other tenant's pending count and age are still exported. Redis answered the whole figures
/// pipeline with an error for it, and Prometheus lost every tenant's pending figures.
#[tokio::test]
async fn a_damaged_pending_index_costs_only_its_tenants_figures() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let (broken, healthy) = (fresh_tenant("figures-broken"), fresh_tenant("figures-ok"));
    for tenant in [&broken, &healthy] {
        backend
            .submit(pending(tenant, "req-1", HOUR))
            .await
            .expect("submit");
    }
    let index = format!("approvals:index:{broken}:pending");
    let _: () = conn.del(&index).await.expect("del");
    let _: () = conn.set(&index, "not a sorted set").await.expect("set");

    let stats = backend
        .pending_stats(&[Duration::from_secs(60)], Timestamp::now())
        .await
        .expect("the figures of the others");
    let count = |tenant: &TenantId| {
        stats
            .tenants
            .iter()
            .find(|t| &t.tenant == tenant)
            .map(|t| t.count)
    };
    assert_eq!(count(&healthy), Some(1));
    assert_eq!(count(&broken), Some(0));
}

/// One tenant's audit stream replaced by another type does not fail the audit trim for every
/// tenant: the others' old events are trimmed and the chore succeeds. It failed on every pass,
/// and no idle tenant was ever forgotten.
#[tokio::test]
async fn a_damaged_audit_stream_costs_only_its_tenants_trim() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let (broken, healthy) = (fresh_tenant("trim-broken"), fresh_tenant("trim-ok"));
    for tenant in [&broken, &healthy] {
        backend
            .submit(pending(tenant, "req-1", HOUR))
            .await
            .expect("submit");
    }
    replace_audit_stream(&mut conn, &broken).await;
    // Far enough ahead that every event is past the audit's retention.
    let later = Timestamp::from_millis(Timestamp::now().as_millis() + 200 * 86_400_000);
    let trimmed = backend.trim_audit(later).await.expect("the others trimmed");
    assert_eq!(trimmed, 1, "the healthy tenant's submit event");
    let left: usize = conn.xlen(audit_key(&healthy)).await.expect("xlen");
    assert_eq!(left, 0);
}

/// A settled index of another type does not hold up the retention trim of every tenant: the
/// others' entries past their retention go, and the sweep succeeds. The whole trim failed,
/// every pass, on the same due entries.
#[tokio::test]
async fn a_damaged_settled_index_costs_only_its_tenants_retention_trim() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let (broken, healthy) = (
        fresh_tenant("retention-broken"),
        fresh_tenant("retention-ok"),
    );
    for tenant in [&broken, &healthy] {
        backend
            .submit(pending(tenant, "req-1", HOUR))
            .await
            .expect("submit");
        let accept =
            approvals_core::DecisionRequest::now(approvals_core::Verdict::Accept, "alice", None);
        backend
            .decide(tenant, &id("req-1"), accept)
            .await
            .expect("accept");
    }
    let index = |tenant: &TenantId| format!("approvals:index:{tenant}:accepted");
    let _: () = conn.del(index(&broken)).await.expect("del");
    let _: () = conn
        .set(index(&broken), "not a sorted set")
        .await
        .expect("set");
    // Past the decided records' retention (a day by default).
    let later = Timestamp::from_millis(Timestamp::now().as_millis() + 2 * 86_400_000);
    backend.expire_due(later).await.expect("the sweep succeeds");
    let left: usize = conn.zcard(index(&healthy)).await.expect("zcard");
    assert_eq!(
        left, 0,
        "the healthy tenant's entry past its retention is gone"
    );
}

/// An approval this service parked that the ADR v1 service, still running beside it, decided
/// in place is taken over by the next adoption pass, as a decision here: it lists as decided,
/// its waiting agent is woken, the audit has the decision, and the record keeps the decided
/// retention. Before, it was in no list, the long-poll slept on, the audit never had the
/// decision, and a v1 that kept the key's expiry had it swept as expired at its deadline.
#[tokio::test]
async fn a_decision_the_v1_service_made_on_our_record_is_taken_over() {
    let server = RedisServer::start().await;
    let backend = backend(&server);
    let mut conn = server.connection().await;
    let tenant = fresh_tenant("beside");
    for name in ["by-the-peer", "flipped"] {
        backend
            .submit(pending(&tenant, name, HOUR))
            .await
            .expect("submit");
    }
    let waiter = {
        let (backend, tenant) = (backend.clone(), tenant.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let woken = backend
                .wait_for_decision(
                    &tenant,
                    &id("by-the-peer"),
                    Duration::from_secs(60),
                    Box::pin(std::future::pending()),
                )
                .await
                .expect("wait");
            (woken, started.elapsed())
        })
    };
    // Parked past its first read, so only a wake-up answers it before its 60 s.
    while backend.parked() == 0 {
        tokio::task::yield_now().await;
    }

    // The Python peer: its `json.dumps` of the record with the decision (spaced), a new expiry.
    let undecided =
        r#""status":"pending","decided_at":null,"decided_by":null,"decision_reason":null"#;
    let key = record_key(&tenant, "by-the-peer");
    let ours: String = conn.get(&key).await.expect("get");
    let decided_at = Timestamp::now();
    let theirs = ours
        .replacen(
            undecided,
            &format!(
                r#""status":"accepted","decided_at":"{decided_at}","decided_by":"bob","decision_reason":"fine""#
            ),
            1,
        )
        .replace("\":", "\": ")
        .replace(",\"", ", \"");
    assert_ne!(theirs, ours);
    let _: () = conn
        .set_ex(&key, &theirs, 7 * 24 * 3600)
        .await
        .expect("set");
    // A v1 that flips `status` only, and keeps the key's expiry (the approval's deadline).
    let key = record_key(&tenant, "flipped");
    let ours: String = conn.get(&key).await.expect("get");
    let theirs = ours.replacen(r#""status":"pending""#, r#""status":"denied""#, 1);
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(&theirs)
        .arg("KEEPTTL")
        .query_async(&mut conn)
        .await
        .expect("set");

    assert_eq!(backend.adopt_all().await.expect("adopt"), 2);
    assert_eq!(
        backend.adopt_all().await.expect("adopt"),
        0,
        "taken over once"
    );

    let (woken, waited) = waiter.await.expect("waiter");
    let woken = woken.expect("found");
    assert_eq!(woken.status, Status::Accepted);
    assert!(
        waited < Duration::from_secs(30),
        "woken, not timed out: {waited:?}"
    );
    assert!(pending_ids(&backend, &tenant).await.is_empty());
    for (status, name, by) in [
        (Status::Accepted, "by-the-peer", "bob"),
        (Status::Rejected, "flipped", "adr-v1"),
    ] {
        let listed = backend
            .list(&tenant, status, None, 10)
            .await
            .expect("list")
            .items;
        assert_eq!(listed.len(), 1, "{status:?}: {listed:?}");
        assert_eq!(listed[0].id.as_str(), name);
        assert_eq!(listed[0].decided_by.as_deref(), Some(by));
    }
    let audit = backend
        .audit(&tenant, None, None, 100)
        .await
        .expect("audit")
        .items;
    // In the order the pass met them (SCAN's): sorted.
    let mut decisions: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                approvals_core::AuditKind::Accepted | approvals_core::AuditKind::Rejected
            )
        })
        .map(|e| (e.approval_id.as_str(), e.actor.as_str()))
        .collect();
    decisions.sort_unstable();
    assert_eq!(decisions, [("by-the-peer", "bob"), ("flipped", "adr-v1")]);
    let by_the_peer = audit
        .iter()
        .find(|e| e.approval_id.as_str() == "by-the-peer" && e.actor == "bob")
        .expect("its decision");
    assert_eq!(by_the_peer.details["decided_at"], decided_at.to_string());
    // Kept for the decided retention, not lapsing (and swept as expired) at its deadline.
    let left: i64 = conn.pttl(&key).await.expect("pttl");
    assert!(
        left > i64::try_from(HOUR.as_millis()).unwrap(),
        "{left} ms left"
    );
}
