//! `approvals migrate` against a real redis-server (one per test) and the binary's shared
//! Temporal dev server and worker: a mixed population (pending with various deadlines,
//! accepted, rejected, expired, ADR v1 records) carried over and checked record by record
//! through the Temporal backend's API; deadlines kept; a second run is a no-op; a run killed
//! with SIGKILL and started again ends exact; a decision made in Redis mid-migration survives;
//! a rollback restores Redis; a dry run writes nothing.

#![cfg(feature = "temporal")]

#[path = "common/shared_temporal.rs"]
mod shared_temporal;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvals::config::{EngineKind, Settings};
use approvals::engines;
use approvals::migration::{Migration, Plan, Report, MAX_FAILED_RECORDS};
use approvals_core::conformance::{decision, fresh_tenant, id, pending};
use approvals_core::{Approval, RecordTransfer, Status, TenantId, Timestamp, Verdict};
use approvals_redis::RedisBackend;
use approvals_testkit::RedisServer;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_approvals");
const HOUR: Duration = Duration::from_secs(3600);

/// A Redis of the test's own, the shared Temporal, and a config file naming both.
struct Setup {
    redis: RedisServer,
    config: tempfile::NamedTempFile,
    settings: Settings,
}

impl Setup {
    async fn new() -> Self {
        Self::on(RedisServer::start().await).await
    }

    async fn on(redis: RedisServer) -> Self {
        let temporal = shared_temporal::shared().await;
        let toml = format!(
            "[redis]\nurl = {:?}\n[temporal]\naddress = {:?}\ntask_queue = {:?}\n\
             call_timeout = \"20s\"\n[log]\nfilter = \"info\"\n",
            redis.url(),
            temporal.address,
            temporal.task_queue
        );
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config.path(), toml).unwrap();
        let settings = Settings::load_from(Some(config.path()), Vec::new()).unwrap();
        Self {
            redis,
            config,
            settings,
        }
    }

    async fn engine(&self, kind: EngineKind) -> Arc<dyn RecordTransfer> {
        engines::connect(kind, &self.settings).await.unwrap()
    }

    /// The Redis engine itself, for a sweep the test controls.
    fn redis_engine(&self) -> RedisBackend {
        let approvals = &self.settings.approvals;
        RedisBackend::connect(self.settings.redis.clone(), approvals.lifetimes()).unwrap()
    }

    fn command(&self, from: &str, to: &str, tenants: &[&TenantId], extra: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["migrate", "--config"])
            .arg(self.config.path())
            .args(["--from", from, "--to", to, "--json"])
            .args(extra)
            .env_remove("APPROVALS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for tenant in tenants {
            command.args(["--tenant", tenant.as_str()]);
        }
        command
    }

    /// Runs `approvals migrate` to its end: exit success and the JSON report.
    fn migrate(
        &self,
        from: &str,
        to: &str,
        tenants: &[&TenantId],
        extra: &[&str],
    ) -> (bool, Value) {
        let output = self.command(from, to, tenants, extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let report = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{stderr}"));
        (output.status.success(), report)
    }

    /// An ADR v1 record: the four fields the Python service wrote, nothing else (a decision
    /// only flipped `status`, and said neither when nor who).
    async fn write_v1(
        &self,
        tenant: &TenantId,
        id: &str,
        status: &str,
        age: Duration,
        ttl: Duration,
    ) {
        let submitted = chrono::Utc::now() - age;
        let record = json!({
            "status": status,
            "agent_action": {"type": "document_read", "resource": "finance/legacy"},
            "context": {"on_behalf_of": "project_alpha"},
            "submitted_at": submitted.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        let mut conn = self.redis.connection().await;
        let _: () = redis::cmd("SET")
            .arg(format!("approval:{tenant}:{id}"))
            .arg(record.to_string())
            .arg("EX")
            .arg(ttl.as_secs())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Every record of `tenants` in `backend`, as of one instant, by (tenant, id).
async fn records(backend: &dyn RecordTransfer, tenants: &[&TenantId]) -> Vec<Approval> {
    let now = Timestamp::now();
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = backend.scan(cursor.as_deref(), 500).await.unwrap();
        all.extend(
            page.items
                .into_iter()
                .filter(|a| tenants.contains(&&a.tenant))
                .map(|a| a.as_of(now)),
        );
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    all.sort_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
    all
}

/// `source`'s records read back one by one from `target` (strongly consistent, unlike scans).
async fn read_back(source: &[Approval], target: &dyn RecordTransfer) -> Vec<Approval> {
    let mut copies = Vec::new();
    for a in source {
        let copy = target.get(&a.tenant, &a.id).await.unwrap();
        copies.push(copy.unwrap_or_else(|| panic!("{}/{} not migrated", a.tenant, a.id)));
    }
    let now = Timestamp::now();
    copies.into_iter().map(|a| a.as_of(now)).collect()
}

/// Pending (1 h, 2 days, [`SOON`] left), accepted, rejected, expired and ADR v1 (pending, approved) records over three
/// tenants. Returns the tenants.
/// The TTL of the "soon" approvals: still pending when a migration's counts are taken (on a
/// loaded machine, after three tenants are written and a debug `approvals migrate` starts),
/// and expired within the test.
const SOON: Duration = Duration::from_secs(15);

async fn mixed_population(setup: &Setup, redis: &dyn RecordTransfer) -> Vec<TenantId> {
    let tenants: Vec<TenantId> = (0..3).map(|_| fresh_tenant("mig")).collect();
    for tenant in &tenants {
        redis.submit(pending(tenant, "hour", HOUR)).await.unwrap();
        redis
            .submit(pending(tenant, "two-days", 48 * HOUR))
            .await
            .unwrap();
        redis.submit(pending(tenant, "soon", SOON)).await.unwrap();
        for (name, verdict) in [("yes", Verdict::Accept), ("no", Verdict::Reject)] {
            redis.submit(pending(tenant, name, HOUR)).await.unwrap();
            redis
                .decide(tenant, &id(name), decision(verdict, "alice"))
                .await
                .unwrap();
        }
        redis
            .submit(pending(tenant, "lapsed", Duration::from_millis(1)))
            .await
            .unwrap();
        setup
            .write_v1(
                tenant,
                "v1-pending",
                "pending",
                Duration::from_secs(600),
                HOUR,
            )
            .await;
        // Read before adoption, it must read the same every time (the copy pass and the
        // reconcile pass each read it).
        setup
            .write_v1(
                tenant,
                "v1-approved",
                "approved",
                Duration::from_secs(900),
                HOUR,
            )
            .await;
    }
    // The lapsed ones become tombstones, as the sweeper would record them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut expired = 0;
    let sweeper = setup.redis_engine();
    while expired < tenants.len() {
        expired += sweeper.expire_due(Timestamp::now()).await.unwrap().len();
        assert!(
            Instant::now() < deadline,
            "the lapsed approvals never expired"
        );
    }
    tenants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_population_moves_to_temporal_exactly_and_a_second_run_changes_nothing() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenants = mixed_population(&setup, redis.as_ref()).await;
    let tenant_refs: Vec<&TenantId> = tenants.iter().collect();
    let before = records(redis.as_ref(), &tenant_refs).await;
    assert_eq!(before.len(), 24);

    let (clean, report) = setup.migrate("redis", "temporal", &tenant_refs, &[]);
    assert!(clean, "{report:#}");
    assert_eq!(report["imported"], 24, "{report:#}");
    assert_eq!(report["differences"], json!([]));
    // 4 pending, or 3 if "soon" expired before the counts were taken (a loaded machine):
    // either way both sides count the same.
    let pending = &report["counts"][tenants[0].as_str()]["pending"];
    assert_eq!(pending["target"], pending["source"], "{report:#}");
    assert!(
        matches!(pending["target"].as_u64(), Some(3 | 4)),
        "{report:#}"
    );

    // Record by record through the Temporal backend's API: the same approvals, with their
    // original times, deciders and reasons, and the absolute deadline to the millisecond. Both
    // sides as of one instant: "soon" may have expired since `before` was read.
    let copies = read_back(&before, temporal.as_ref()).await;
    let now = Timestamp::now();
    let as_of_now = |records: &[Approval]| -> Vec<Approval> {
        records.iter().map(|a| a.clone().as_of(now)).collect()
    };
    assert_eq!(as_of_now(&copies), as_of_now(&before));
    // Each carries a `migrated` audit event in its new home.
    let audit = temporal.audit(&tenants[0], None, None, 100).await.unwrap();
    let migrated = audit
        .items
        .iter()
        .filter(|e| e.kind == approvals_core::AuditKind::Migrated)
        .count();
    assert_eq!(migrated, 8, "{:?}", audit.items);

    // The one with seconds left expires on time in Temporal, not a fresh 24 h later.
    let soon = before.iter().find(|a| a.id.as_str() == "soon").unwrap();
    let settled = temporal
        .wait_for_decision(
            &soon.tenant,
            &soon.id,
            Duration::from_secs(30),
            approvals_core::no_stop(),
        )
        .await
        .unwrap()
        .expect("expired within its remaining time");
    // At its own deadline, not 24 h after the import (a fresh TTL).
    assert_eq!(settled.status, Status::Expired);
    assert_eq!(settled.decided_at, Some(soon.expires_at));
    // And the workflow's own timer recorded it (a read past the deadline reads expired
    // anyway): its `expired` event reaches the audit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let audit = temporal.audit(&soon.tenant, None, None, 100).await.unwrap();
        if audit
            .items
            .iter()
            .any(|e| e.kind == approvals_core::AuditKind::Expired && e.approval_id == soon.id)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no expired event for {}: {:?}",
            soon.id,
            audit.items
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Again: everything is already there, nothing changes.
    let (clean, again) = setup.migrate("redis", "temporal", &tenant_refs, &[]);
    assert!(clean, "{again:#}");
    assert_eq!(again["imported"], 0);
    assert_eq!(again["already_present"], 24);
    assert_eq!(read_back(&before, temporal.as_ref()).await.len(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_tenant_filters_hold() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let (chosen, other) = (fresh_tenant("dry"), fresh_tenant("dry"));
    for tenant in [&chosen, &other] {
        redis.submit(pending(tenant, "a", HOUR)).await.unwrap();
    }
    let (_, report) = setup.migrate("redis", "temporal", &[&chosen], &["--dry-run"]);
    assert_eq!(report["would_import"], 1, "{report:#}");
    assert_eq!(temporal.get(&chosen, &id("a")).await.unwrap(), None);

    let (clean, report) = setup.migrate("redis", "temporal", &[&chosen], &[]);
    assert!(clean, "{report:#}");
    assert_eq!(report["imported"], 1);
    assert!(temporal.get(&chosen, &id("a")).await.unwrap().is_some());
    assert_eq!(temporal.get(&other, &id("a")).await.unwrap(), None);
}

/// A backend that does not answer is a failure to retry (exit 1, as the cutover runbook's
/// re-run loop expects), not unusable configuration (exit 2), which stays for what no retry
/// mends: a build without the engine, a Temporal namespace that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_exits_1_and_unusable_configuration_2() {
    let setup = Setup::new().await;
    // `approvals migrate --from redis --to temporal` with `toml` as its configuration: its exit
    // code and what it said.
    let migrate_with = |toml: String| {
        std::fs::write(setup.config.path(), toml).unwrap();
        let output = setup
            .command("redis", "temporal", &[], &[])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    };
    // Temporal not answering at all (nothing listens there): the connect itself fails.
    let (code, stderr) = migrate_with(format!(
        "[redis]\nurl = {:?}\n[temporal]\naddress = \"http://127.0.0.1:1\"\ncall_timeout = \"2s\"\n",
        setup.redis.url()
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect the temporal engine"),
        "{stderr}"
    );
    // Where it tried, said before the connect failed: the first thing to check.
    assert!(
        stderr.contains("migration started") && stderr.contains("http://127.0.0.1:1"),
        "{stderr}"
    );
    let output = setup.command("redis", "redis", &[], &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));

    // A namespace the (answering) server does not have: no re-run mends it.
    let temporal = shared_temporal::shared().await;
    let (code, stderr) = migrate_with(format!(
        "[redis]\nurl = {:?}\n[temporal]\naddress = {:?}\nnamespace = \"no-such-namespace\"\n",
        setup.redis.url(),
        temporal.address
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no namespace \"no-such-namespace\""),
        "{stderr}"
    );

    // A namespace without the TenantId search attribute (created, its attribute forgotten):
    // the server would refuse every import, so every run would exit 1, "re-run", for ever.
    let bare = format!("bare-{}", std::process::id());
    approvals_testkit::temporal_server::create_namespace(&temporal.address, &bare);
    let (code, stderr) = migrate_with(format!(
        "[redis]\nurl = {:?}\n[temporal]\naddress = {:?}\nnamespace = {bare:?}\n",
        setup.redis.url(),
        temporal.address
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("has no search attribute TenantId"),
        "{stderr}"
    );
}

/// A record the source cannot read is passed over (the rest is copied) but named in the
/// report, and the run is not reconciled: it was left behind, not moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_is_reported_and_the_run_is_not_reconciled() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let (tenant, other) = (fresh_tenant("spoiled"), fresh_tenant("spoiled"));
    redis.submit(pending(&tenant, "fine", HOUR)).await.unwrap();
    // Copied by an earlier run (or written to both by a soak), then spoiled in the source:
    // the target's copy is read back by id, which must report it, not stop the run.
    let copied = pending(&tenant, "copied", HOUR);
    redis.submit(copied.clone()).await.unwrap();
    temporal.import(copied).await.unwrap();
    let mut conn = setup.redis.connection().await;
    // A pending record whose key lapsed with its lifetime is read from its shadow: one that
    // cannot be read is named by the key that holds it.
    for key in [
        format!("approval:{tenant}:copied"),
        format!("approval:{tenant}:broken"),
        format!("approval:{other}:broken"),
        format!("approvals:shadow:{tenant}:lapsed"),
    ] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg("{not json")
            .arg("EX")
            .arg(3600)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    // A pre-flight over values no run can copy does not pass: they need a person first.
    let (passed, report) = setup.migrate("redis", "temporal", &[&tenant], &["--dry-run"]);
    assert!(
        !passed,
        "a dry run over unreadable records exits 1: {report:#}"
    );

    let (clean, report) = setup.migrate("redis", "temporal", &[&tenant], &[]);
    assert!(
        !clean,
        "an unreadable record left behind is no clean run: {report:#}"
    );
    assert_eq!(report["imported"], 1, "{report:#}");
    assert_eq!(report["differences"], json!([]), "{report:#}");
    // Only the chosen tenant's: the other one's broken record is not this run's.
    assert_eq!(
        report["unreadable"]["source"],
        json!([
            format!("approval:{tenant}:broken"),
            format!("approval:{tenant}:copied"),
            format!("approvals:shadow:{tenant}:lapsed")
        ]),
        "{report:#}"
    );
    assert!(temporal.get(&tenant, &id("fine")).await.unwrap().is_some());
}

/// A scan failing for a couple of seconds (a Redis failover, Temporal's frontend restarting)
/// is waited out; one that keeps failing stops the run with the report so far. Four attempts
/// within 1.2 s ended runs of hours, and the CLI printed only the error, no counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_outage_is_waited_out_and_a_lasting_one_keeps_the_report() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("failover");
    for name in ["one", "two"] {
        redis.submit(pending(&tenant, name, HOUR)).await.unwrap();
    }
    // The copy's scan works; the reconcile pass's first scan meets a 2 s outage.
    let brief = RacedSource::failing(&redis, 1, Duration::from_secs(2));
    let report = of_tenant(&brief, &temporal, &tenant, 4).run().await;
    assert!(report.is_reconciled(), "{report}");
    assert_eq!(report.imported, 2, "{report}");

    let other = fresh_tenant("failover");
    redis.submit(pending(&other, "three", HOUR)).await.unwrap();
    let lasting = RacedSource::failing(&redis, 1, Duration::from_secs(3600));
    let report = of_tenant(&lasting, &temporal, &other, 4).run().await;
    assert!(!report.is_reconciled(), "{report}");
    assert_eq!(report.imported, 1, "the copy's counts are kept: {report}");
    let said = report.to_string();
    assert!(
        said.contains("stopped: ") && said.contains("a failover") && said.contains("partial"),
        "{said}"
    );
}

/// A target that refuses every import for a few seconds (its frontend restarting) is waited
/// out record by record: each record was given 1.5 s, every one in flight failed, and 100
/// failures stopped a run of hours early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_refusing_imports_for_seconds_is_waited_out() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("restarting");
    let names: Vec<String> = (0..MAX_FAILED_RECORDS + 20)
        .map(|n| format!("r-{n}"))
        .collect();
    for name in &names {
        redis.submit(pending(&tenant, name, HOUR)).await.unwrap();
    }
    let restarting = RacedSource::refusing_imports(&temporal, Duration::from_secs(4));
    let report = of_tenant(&redis, &restarting, &tenant, 256).run().await;
    assert!(!report.stopped_early, "{report}");
    assert!(report.failed.is_empty(), "{report}");
    assert_eq!(report.imported, names.len() as u64, "{report}");
    assert!(report.is_reconciled(), "{report}");
}

/// A dry run treats a target copy it cannot read as the real run does: named among the
/// target's unreadable keys, not a failed record (a hundred of them stopped the dry run early,
/// blaming a side that was "most likely down").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_names_an_unreadable_target_copy_without_failing_it() {
    let setup = Setup::new().await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("dry-spoiled");
    temporal
        .import(pending(&tenant, "spoiled", HOUR))
        .await
        .unwrap();
    let mut conn = setup.redis.connection().await;
    let key = format!("approval:{tenant}:spoiled");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("{not json")
        .arg("EX")
        .arg(3600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (passed, report) = setup.migrate("temporal", "redis", &[&tenant], &["--dry-run"]);
    assert!(!passed, "an unreadable value needs a person: {report:#}");
    assert_eq!(report["failed"], json!([]), "{report:#}");
    assert_eq!(report["unreadable"]["target"], json!([key]), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_halfway_and_started_again_ends_exact() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("killed");
    let total = 300;
    for n in 0..total {
        redis
            .submit(pending(&tenant, &format!("a-{n}"), HOUR))
            .await
            .unwrap();
    }
    // Killed with the test if an assertion below fails (a bare `Child` is not).
    let mut child = approvals_testkit::process::Process::spawn(setup.command(
        "redis",
        "temporal",
        &[&tenant],
        &["--concurrency", "1"],
    ));
    // Killed once some, not all, have been copied (the copies are the event we wait for).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copied = records(temporal.as_ref(), &[&tenant]).await.len();
        if copied >= 20 {
            assert!(
                copied < total,
                "copied everything before it could be killed"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the migration copied nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill_hard();

    let (clean, report) = setup.migrate("redis", "temporal", &[&tenant], &[]);
    assert!(clean, "{report:#}");
    let imported = report["imported"].as_u64().unwrap();
    let present = report["already_present"].as_u64().unwrap();
    assert!(imported > 0 && present >= 20, "{report:#}");
    assert_eq!(imported + present, total as u64);
    assert_eq!(
        report["counts"][tenant.as_str()]["pending"]["target"],
        total
    );
    let source = records(redis.as_ref(), &[&tenant]).await;
    assert_eq!(read_back(&source, temporal.as_ref()).await, source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_in_redis_during_the_migration_is_not_lost() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("race");
    redis
        .submit(pending(&tenant, "decided-late", HOUR))
        .await
        .unwrap();
    redis
        .submit(pending(&tenant, "still-pending", HOUR))
        .await
        .unwrap();
    let migration = of_tenant(&redis, &temporal, &tenant, 4);
    let mut report = Report::new(false);
    migration.copy(&mut report).await.unwrap();
    // A reviewer decides in Redis after the copy was made: the migration races them.
    let decided = redis
        .decide(
            &tenant,
            &id("decided-late"),
            decision(Verdict::Accept, "bob"),
        )
        .await
        .unwrap();
    let approvals_core::DecisionOutcome::Decided(decided) = decided else {
        panic!("{decided:?}")
    };
    migration.reconcile(&mut report).await.unwrap();
    assert_eq!(report.decisions_replayed, 1);
    assert!(report.is_reconciled(), "{report}");
    let copy = temporal
        .get(&tenant, &id("decided-late"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy, decided, "same reviewer, reason and time");
    let other = temporal
        .get(&tenant, &id("still-pending"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.status, Status::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_restores_redis_faithfully() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenants = mixed_population(&setup, redis.as_ref()).await;
    let tenant_refs: Vec<&TenantId> = tenants.iter().collect();
    let (clean, report) = setup.migrate("redis", "temporal", &tenant_refs, &[]);
    assert!(clean, "{report:#}");
    let in_temporal = read_back(
        &records(redis.as_ref(), &tenant_refs).await,
        temporal.as_ref(),
    )
    .await;

    // Back into an empty Redis, as after losing the old one.
    let fresh = Setup::on(RedisServer::start().await).await;
    let (clean, report) = fresh.migrate("temporal", "redis", &tenant_refs, &[]);
    assert!(clean, "{report:#}");
    assert_eq!(report["imported"], in_temporal.len());
    let restored = fresh.engine(EngineKind::Redis).await;
    assert_eq!(
        read_back(&in_temporal, restored.as_ref()).await,
        in_temporal
    );
}

/// A Temporal engine on the shared server whose task queue no worker polls: records can be
/// started and read, but a decision (a workflow update) never gets an answer. Its calls give
/// up after `call_timeout`.
async fn temporal_without_worker(
    setup: &Setup,
    tenant: &TenantId,
    call_timeout: Duration,
) -> Arc<dyn RecordTransfer> {
    let mut settings = setup.settings.clone();
    settings.temporal.task_queue = format!("no-worker-{tenant}");
    settings.temporal.call_timeout = call_timeout;
    engines::connect(EngineKind::Temporal, &settings)
        .await
        .unwrap()
}

/// [`temporal_without_worker`] twice: one that waits long enough for a loaded server to start
/// every record (256 at once once took a few past 1 s, and the test failed before its point),
/// and one whose decisions fail in a few seconds (its reads, which a worker does not serve,
/// meet that deadline on a loaded machine too).
async fn temporal_without_worker_pair(
    setup: &Setup,
    tenant: &TenantId,
) -> (Arc<dyn RecordTransfer>, Arc<dyn RecordTransfer>) {
    (
        temporal_without_worker(setup, tenant, Duration::from_secs(20)).await,
        temporal_without_worker(setup, tenant, Duration::from_secs(3)).await,
    )
}

/// A migration of `tenant` alone from `source` to `target`, run through the library.
fn of_tenant(
    source: &Arc<dyn RecordTransfer>,
    target: &Arc<dyn RecordTransfer>,
    tenant: &TenantId,
    concurrency: usize,
) -> Migration {
    let plan = Plan {
        tenants: BTreeSet::from([tenant.clone()]),
        concurrency,
        dry_run: false,
        target_answers: false,
    };
    Migration::new(
        source.clone(),
        target.clone(),
        plan,
        indicatif::ProgressBar::hidden(),
    )
}

/// Copies `names` (pending in Redis) to the target (through `copy_to`, an engine of it), then
/// accepts them in Redis: the reconcile pass, through `target`, must replay each decision.
async fn decided_after_the_copy(
    redis: &Arc<dyn RecordTransfer>,
    (copy_to, target): (&Arc<dyn RecordTransfer>, &Arc<dyn RecordTransfer>),
    tenant: &TenantId,
    names: &[String],
    concurrency: usize,
) -> (Migration, Report) {
    for name in names {
        redis.submit(pending(tenant, name, HOUR)).await.unwrap();
    }
    let mut report = Report::new(false);
    of_tenant(redis, copy_to, tenant, concurrency)
        .copy(&mut report)
        .await
        .unwrap();
    assert_eq!(report.imported, names.len() as u64, "{report}");
    let migration = of_tenant(redis, target, tenant, concurrency);
    for name in names {
        redis
            .decide(tenant, &id(name), decision(Verdict::Accept, "bob"))
            .await
            .unwrap();
    }
    (migration, report)
}

/// A record whose replayed decision keeps failing (here: no worker answers the update) is
/// named in the report with its error, and the run goes on with the others. It used to stop
/// the whole migration with "did not answer within its deadline", naming no record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_keeps_failing_is_named_and_the_others_are_reconciled() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let tenant = fresh_tenant("stuck");
    let (copy_to, target) = temporal_without_worker_pair(&setup, &tenant).await;
    let (migration, mut report) = decided_after_the_copy(
        &redis,
        (&copy_to, &target),
        &tenant,
        &["decided-late".into()],
        4,
    )
    .await;
    // Pending on both sides: nothing to replay, so it is compared as usual.
    redis
        .submit(pending(&tenant, "still-pending", HOUR))
        .await
        .unwrap();
    let still = redis
        .get(&tenant, &id("still-pending"))
        .await
        .unwrap()
        .unwrap();
    copy_to.import(still).await.unwrap();

    migration.reconcile(&mut report).await.unwrap();
    assert_eq!(report.failed.len(), 1, "{report}");
    let failed = &report.failed[0];
    assert_eq!(
        (&failed.tenant, failed.id.as_str()),
        (&tenant, "decided-late")
    );
    assert_eq!(failed.pass, "reconcile");
    assert!(failed.error.contains("deadline"), "{}", failed.error);
    assert!(!report.stopped_early);
    assert!(!report.is_reconciled());
    // Named once, as failed: not also a difference, nor a record "only in the target".
    assert_eq!(report.differences_total, 0, "{report}");
    let pending_counts = &report.counts[tenant.as_str()][&Status::Pending];
    assert_eq!((pending_counts.source, pending_counts.target), (1, 1));
    let printed = report.to_string();
    assert!(
        printed.contains(&format!("{tenant}/decided-late (reconcile): ")),
        "{printed}"
    );
}

/// Past `MAX_FAILED_RECORDS` failed records a side is most likely down: the run stops early,
/// says so, and is not reconciled, rather than retrying every record of a million.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stops_early_once_too_many_records_failed() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let tenant = fresh_tenant("down");
    let (copy_to, target) = temporal_without_worker_pair(&setup, &tenant).await;
    let names: Vec<String> = (0..MAX_FAILED_RECORDS + 20)
        .map(|n| format!("a-{n}"))
        .collect();
    let (migration, mut report) =
        decided_after_the_copy(&redis, (&copy_to, &target), &tenant, &names, 256).await;
    migration.reconcile(&mut report).await.unwrap();
    assert!(report.stopped_early, "{report}");
    assert_eq!(report.failed.len(), MAX_FAILED_RECORDS);
    assert!(!report.is_reconciled());
    assert!(report
        .to_string()
        .contains("stopped early after 100 failures: the records after them were not compared"));
}

/// An approval accepted `ago`, parked an hour before that for a day.
fn accepted(tenant: &TenantId, name: &str, ago: Duration) -> Approval {
    let decided_at = Timestamp::now().minus(ago);
    let mut approval = pending(tenant, name, 24 * HOUR);
    approval.submitted_at = decided_at.minus(HOUR);
    approval.expires_at = approval.submitted_at.plus(24 * HOUR);
    approval.status = Status::Accepted;
    approval.decided_at = Some(decided_at);
    approval.decided_by = Some("alice".into());
    approval.decision_reason = Some("fine".into());
    approval
}

/// Temporal keeps settled records longer than Redis (runbook: namespace retention at least
/// Redis'), so a rollback meets records Redis would already have dropped: they are not
/// imported (written, they lived a second and every run imported and audited them again and
/// ended "missing", exit 1), and a forward run does not count them as differences when Redis
/// no longer has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_one_sides_retention_are_neither_copied_nor_differences() {
    let setup = Setup::new().await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("aged");
    // Redis keeps decided records 24 h (the default).
    for (name, ago) in [("two-days-ago", 48 * HOUR), ("an-hour-ago", HOUR)] {
        temporal.import(accepted(&tenant, name, ago)).await.unwrap();
    }
    // The migration lists Temporal's records through visibility, which shows an import a
    // moment late; run before, it missed one (a difference: exit 1, "re-run"). Asked of
    // another engine: the importing one shows its own writes before visibility does.
    let observer = setup.engine(EngineKind::Temporal).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while observer
        .list(&tenant, Status::Accepted, None, 10)
        .await
        .unwrap()
        .items
        .len()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "visibility shows both"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for run in 0..2 {
        let (clean, report) = setup.migrate("temporal", "redis", &[&tenant], &[]);
        assert!(clean, "run {run} exits 0: {report:#}");
        assert_eq!(report["imported"], u64::from(run == 0), "{report:#}");
        assert_eq!(report["past_retention"]["target"], 1, "{report:#}");
        assert_eq!(report["counts"][tenant.as_str()]["accepted"]["target"], 1);
    }
    let redis = setup.engine(EngineKind::Redis).await;
    assert!(redis
        .get(&tenant, &id("two-days-ago"))
        .await
        .unwrap()
        .is_none());
    let audit = redis.audit(&tenant, None, None, 100).await.unwrap();
    let audited: Vec<&str> = audit.items.iter().map(|e| e.approval_id.as_str()).collect();
    assert_eq!(
        audited,
        ["an-hour-ago"],
        "one migrated event, for the kept one"
    );

    // Forward again: Temporal's old record is not one Redis lost.
    let (clean, report) = setup.migrate("redis", "temporal", &[&tenant], &[]);
    assert!(clean, "{report:#}");
    assert_eq!(report["past_retention"]["source"], 1, "{report:#}");
    assert_eq!(report["differences"], json!([]));
}

/// What a test does once, right after the first `scan` page of a source is read: the live
/// traffic that races a migration (a reviewer deciding, a soak mirroring the decision).
type Interlude = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// An [`Interlude`] in which bob accepts `name` on each of `engines`, in turn (a decision and
/// its mirror, as a soak makes them), each time as the first decision.
fn accepted_by_bob_on(
    engines: &[&Arc<dyn RecordTransfer>],
    tenant: &TenantId,
    name: &str,
) -> Interlude {
    let engines: Vec<Arc<dyn RecordTransfer>> = engines.iter().map(|e| Arc::clone(e)).collect();
    let (tenant, approval) = (tenant.clone(), id(name));
    Box::pin(async move {
        let accept = decision(Verdict::Accept, "bob");
        for engine in engines {
            let decided = engine.decide(&tenant, &approval, accept.clone()).await;
            assert!(
                matches!(decided, Ok(approvals_core::DecisionOutcome::Decided(_))),
                "{decided:?}"
            );
        }
    })
}

/// A source that runs an [`Interlude`] after handing out its first scan page, and otherwise
/// is `inner`.
struct RacedSource {
    inner: Arc<dyn RecordTransfer>,
    interlude: tokio::sync::Mutex<Option<Interlude>>,
    /// Every record of a page returned twice, as Redis' SCAN may.
    twice: bool,
    /// Scans after the first `scans_before_outage` fail (the side "down") until this long
    /// after the first failure.
    outage: Option<(usize, Duration)>,
    scans: std::sync::Mutex<(usize, Option<Instant>)>,
    /// The first import lands, runs the interlude, then answers `Timeout` (its answer lost).
    import_lands_then_times_out: bool,
    /// Imports are refused from the first one until this long after it (a side restarting).
    imports_refused_for: Option<(Duration, std::sync::OnceLock<Instant>)>,
}

impl RacedSource {
    /// `inner` as it is: what each constructor below changes.
    fn plain(inner: &Arc<dyn RecordTransfer>) -> Self {
        Self {
            inner: inner.clone(),
            interlude: tokio::sync::Mutex::new(None),
            twice: false,
            outage: None,
            scans: std::sync::Mutex::default(),
            import_lands_then_times_out: false,
            imports_refused_for: None,
        }
    }

    fn around(inner: &Arc<dyn RecordTransfer>, interlude: Interlude) -> Arc<dyn RecordTransfer> {
        Arc::new(Self {
            interlude: tokio::sync::Mutex::new(Some(interlude)),
            ..Self::plain(inner)
        })
    }

    /// `inner` whose scans fail after the first `scans_before` for `lasting` (a failover).
    fn failing(
        inner: &Arc<dyn RecordTransfer>,
        scans_before: usize,
        lasting: Duration,
    ) -> Arc<dyn RecordTransfer> {
        Arc::new(Self {
            outage: Some((scans_before, lasting)),
            ..Self::plain(inner)
        })
    }

    /// `inner` as an import target whose first import lands, then runs `interlude`, then
    /// answers `Timeout`, as a call whose answer was lost.
    fn losing_an_import_answer(
        inner: &Arc<dyn RecordTransfer>,
        interlude: Interlude,
    ) -> Arc<dyn RecordTransfer> {
        Arc::new(Self {
            interlude: tokio::sync::Mutex::new(Some(interlude)),
            import_lands_then_times_out: true,
            ..Self::plain(inner)
        })
    }

    /// `inner` as an import target that refuses every import for `lasting` from the first
    /// (Temporal's frontend restarting, a Redis failover).
    fn refusing_imports(
        inner: &Arc<dyn RecordTransfer>,
        lasting: Duration,
    ) -> Arc<dyn RecordTransfer> {
        Arc::new(Self {
            imports_refused_for: Some((lasting, std::sync::OnceLock::new())),
            ..Self::plain(inner)
        })
    }

    /// `inner` whose scan returns every record twice.
    fn repeating(inner: &Arc<dyn RecordTransfer>) -> Arc<dyn RecordTransfer> {
        Arc::new(Self {
            twice: true,
            ..Self::plain(inner)
        })
    }
}

#[async_trait::async_trait]
impl approvals_core::ApprovalBackend for RacedSource {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn park(
        &self,
        approval: Approval,
        submitted: approvals_core::AuditEntry,
    ) -> Result<approvals_core::SubmitOutcome, approvals_core::BackendError> {
        self.inner.park(approval, submitted).await
    }
    async fn record(
        &self,
        entry: approvals_core::AuditEntry,
    ) -> Result<(), approvals_core::BackendError> {
        self.inner.record(entry).await
    }
    async fn get(
        &self,
        tenant: &TenantId,
        id: &approvals_core::ApprovalId,
    ) -> Result<Option<Approval>, approvals_core::BackendError> {
        self.inner.get(tenant, id).await
    }
    async fn decide(
        &self,
        tenant: &TenantId,
        id: &approvals_core::ApprovalId,
        decision: approvals_core::DecisionRequest,
    ) -> Result<approvals_core::DecisionOutcome, approvals_core::BackendError> {
        self.inner.decide(tenant, id, decision).await
    }
    async fn wait_for_decision(
        &self,
        tenant: &TenantId,
        id: &approvals_core::ApprovalId,
        timeout: Duration,
        stop: approvals_core::Stop,
    ) -> Result<Option<Approval>, approvals_core::BackendError> {
        self.inner
            .wait_for_decision(tenant, id, timeout, stop)
            .await
    }
    async fn list(
        &self,
        tenant: &TenantId,
        status: Status,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<approvals_core::Page<Approval>, approvals_core::BackendError> {
        self.inner.list(tenant, status, cursor, limit).await
    }
    async fn audit(
        &self,
        tenant: &TenantId,
        since: Option<Timestamp>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<approvals_core::Page<approvals_core::AuditEvent>, approvals_core::BackendError>
    {
        self.inner.audit(tenant, since, cursor, limit).await
    }
    async fn pending_stats(
        &self,
        bounds: &[Duration],
        now: Timestamp,
    ) -> Result<approvals_core::PendingStats, approvals_core::BackendError> {
        self.inner.pending_stats(bounds, now).await
    }
    async fn ping(&self) -> Result<(), approvals_core::BackendError> {
        self.inner.ping().await
    }
}

#[async_trait::async_trait]
impl RecordTransfer for RacedSource {
    async fn scan(
        &self,
        cursor: Option<&str>,
        batch: usize,
    ) -> Result<approvals_core::ScanPage, approvals_core::BackendError> {
        if self.import_lands_then_times_out {
            return self.inner.scan(cursor, batch).await;
        }
        if let Some((before, lasting)) = self.outage {
            let mut scans = self.scans.lock().unwrap();
            scans.0 += 1;
            if scans.0 > before {
                let since = *scans.1.get_or_insert_with(Instant::now);
                if since.elapsed() < lasting {
                    return Err(approvals_core::BackendError::unavailable(
                        "scan",
                        "connection refused (a failover)",
                    ));
                }
            }
        }
        let mut page = self.inner.scan(cursor, batch).await;
        if let Some(interlude) = self.interlude.lock().await.take() {
            interlude.await;
        }
        if let (true, Ok(page)) = (self.twice, &mut page) {
            page.items.extend(page.items.clone());
        }
        page
    }
    async fn import(
        &self,
        approval: Approval,
    ) -> Result<approvals_core::ImportOutcome, approvals_core::BackendError> {
        if let Some((lasting, since)) = &self.imports_refused_for {
            if since.get_or_init(Instant::now).elapsed() < *lasting {
                return Err(approvals_core::BackendError::unavailable(
                    "import",
                    "connection refused (a restart)",
                ));
            }
        }
        let landed = self.inner.import(approval).await;
        if self.import_lands_then_times_out {
            if let Some(interlude) = self.interlude.lock().await.take() {
                interlude.await;
                return Err(approvals_core::BackendError::Timeout("import"));
            }
        }
        landed
    }
    fn retained_until(&self, approval: &Approval) -> Option<Timestamp> {
        self.inner.retained_until(approval)
    }
}

/// A reviewer accepts in Redis after the reconcile pass read its scan page, and the soak
/// mirrors the decision to Temporal at once: both sides agree, and the run says so. The pass
/// compared the page's pending record with the copy read later (accepted) and reported a
/// difference, on almost every run under traffic: "re-run until it exits 0" never ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_mirrored_while_reconciling_is_no_difference() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("mirrored");
    redis
        .submit(pending(&tenant, "decided", HOUR))
        .await
        .unwrap();
    let mut report = Report::new(false);
    of_tenant(&redis, &temporal, &tenant, 4)
        .copy(&mut report)
        .await
        .unwrap();
    assert_eq!(report.imported, 1);

    let interlude = accepted_by_bob_on(&[&redis, &temporal], &tenant, "decided");
    let raced = RacedSource::around(&redis, interlude);
    of_tenant(&raced, &temporal, &tenant, 4)
        .reconcile(&mut report)
        .await
        .unwrap();
    assert!(report.is_reconciled(), "{report}");
    assert_eq!(report.differences_total, 0, "{report}");
}

/// The same race on the pass that looks for records only the target has: a record written to
/// both engines after the source's scan (a soak) and decided on both after the target's scan
/// page was read. The page's pending copy was compared with the source read later (accepted),
/// a difference on every run under traffic; the copy is read again when the two differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_mirrored_after_the_targets_scan_is_no_difference() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("mirrored-late");
    redis.submit(pending(&tenant, "early", HOUR)).await.unwrap();
    let mut report = Report::new(false);
    of_tenant(&redis, &temporal, &tenant, 4)
        .copy(&mut report)
        .await
        .unwrap();

    // After the source's scan: written to both, as a soak does, and seen by the target's scan.
    let written_late: Interlude = {
        let (redis, temporal, tenant) = (redis.clone(), temporal.clone(), tenant.clone());
        Box::pin(async move {
            redis.submit(pending(&tenant, "late", HOUR)).await.unwrap();
            let record = redis.get(&tenant, &id("late")).await.unwrap().unwrap();
            temporal.import(record).await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let page = temporal.scan(None, 1000).await.unwrap();
                if page.items.iter().any(|a| a.id == id("late")) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "visible in the target"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // After the target's scan page was read: decided on both.
    let decided_late = accepted_by_bob_on(&[&redis, &temporal], &tenant, "late");
    let source = RacedSource::around(&redis, written_late);
    let target = RacedSource::around(&temporal, decided_late);
    of_tenant(&source, &target, &tenant, 4)
        .reconcile(&mut report)
        .await
        .unwrap();
    assert!(report.is_reconciled(), "{report}");
    assert_eq!(report.differences_total, 0, "{report}");
}

/// An import that lands but whose answer is lost (a timeout) is retried and answered "already
/// present": a decision made in the source meanwhile is replayed onto the copy at once, as
/// for a fresh import. It waited for the reconcile pass, hours later on a large run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_while_an_import_answer_was_lost_reaches_the_copy_at_once() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("lost-answer");
    redis
        .submit(pending(&tenant, "decided", HOUR))
        .await
        .unwrap();
    let interlude = accepted_by_bob_on(&[&redis], &tenant, "decided");
    let target = RacedSource::losing_an_import_answer(&temporal, interlude);
    let mut report = Report::new(false);
    of_tenant(&redis, &target, &tenant, 4)
        .copy(&mut report)
        .await
        .unwrap();
    assert_eq!(
        (report.already_present, report.decisions_replayed),
        (1, 1),
        "{report}"
    );
    let copy = temporal
        .get(&tenant, &id("decided"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy.status, Status::Accepted, "{copy:?}");
}

/// A reviewer accepts in Redis between the copy pass's scan and its import: the soak's
/// mirror finds no copy yet, and the copy is imported pending. The decision is replayed as
/// soon as the copy is made, not after the whole copy pass (hours for millions of records,
/// by when the copy could have expired on the target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_between_scan_and_import_reaches_the_copy_at_once() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("between");
    redis
        .submit(pending(&tenant, "decided", HOUR))
        .await
        .unwrap();
    let interlude = accepted_by_bob_on(&[&redis], &tenant, "decided");
    let raced = RacedSource::around(&redis, interlude);
    let mut report = Report::new(false);
    of_tenant(&raced, &temporal, &tenant, 4)
        .copy(&mut report)
        .await
        .unwrap();
    assert_eq!((report.imported, report.decisions_replayed), (1, 1));
    let copy = temporal
        .get(&tenant, &id("decided"))
        .await
        .unwrap()
        .unwrap();
    let source = redis.get(&tenant, &id("decided")).await.unwrap().unwrap();
    assert_eq!(
        copy, source,
        "the copy carries the decision: reviewer, reason, time"
    );
}

/// A scan may return a record twice (Redis' SCAN does; a pending record's shadow key can come
/// after its own): each pass copies, compares and counts it once. The copy pass counted one
/// imported and one already present; the reconcile pass counted it twice on each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_a_scan_returns_twice_is_counted_once() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("twice");
    for name in ["one", "two"] {
        redis.submit(pending(&tenant, name, HOUR)).await.unwrap();
    }
    let report = of_tenant(&RacedSource::repeating(&redis), &temporal, &tenant, 4)
        .run()
        .await;
    assert_eq!(
        (report.imported, report.already_present),
        (2, 0),
        "{report}"
    );
    assert!(report.is_reconciled(), "{report}");
    let pending = report.counts[tenant.as_str()][&Status::Pending];
    assert_eq!((pending.source, pending.target), (2, 2), "{report}");
}

/// The spinner (and the progress log line) counts the records of the pass it names: it
/// went on counting through all three passes, three times the store's size by the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_counts_each_pass_afresh() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("progress");
    for name in ["one", "two"] {
        redis.submit(pending(&tenant, name, HOUR)).await.unwrap();
    }
    let progress = indicatif::ProgressBar::hidden();
    let plan = Plan {
        tenants: BTreeSet::from([tenant.clone()]),
        concurrency: 4,
        dry_run: false,
        target_answers: false,
    };
    let migration = Migration::new(redis.clone(), temporal.clone(), plan, progress.clone());
    let mut report = Report::new(false);
    migration.copy(&mut report).await.unwrap();
    assert_eq!(
        (progress.message().as_str(), progress.position()),
        ("copying", 2)
    );
    migration.reconcile(&mut report).await.unwrap();
    assert!(report.is_reconciled(), "{report}");
    assert_eq!(progress.position(), 2, "{}", progress.message());
}

/// A re-run after the target was down (the runbook's remedy): a copy made earlier is there,
/// pending, and the source decided meanwhile. The copy pass replays the decision at once; it
/// waited for the reconcile pass, after the whole copy pass, by when the copy could have
/// expired on the target for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_missed_its_decision_gets_it_in_the_copy_pass_of_a_re_run() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("rerun");
    let (_, report) = decided_after_the_copy(
        &redis,
        (&temporal, &temporal),
        &tenant,
        &["missed".to_owned()],
        4,
    )
    .await;
    assert_eq!(report.decisions_replayed, 0);

    let mut report = Report::new(false);
    of_tenant(&redis, &temporal, &tenant, 4)
        .copy(&mut report)
        .await
        .unwrap();
    assert_eq!((report.already_present, report.decisions_replayed), (1, 1));
    let copy = temporal.get(&tenant, &id("missed")).await.unwrap().unwrap();
    let source = redis.get(&tenant, &id("missed")).await.unwrap().unwrap();
    assert_eq!(copy, source, "reviewer, reason and time");
}

/// A decision the ADR v1 service made on a record already copied (a v1 decision flips
/// `status` and says neither when nor who) reaches the copy on the next run. It was replayed
/// as made at the deadline, which Temporal refuses: the report showed "expired" for the copy,
/// which stayed pending there, and decidable again after the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_decision_made_after_the_copy_reaches_it() {
    let setup = Setup::new().await;
    let tenant = fresh_tenant("v1late");
    setup
        .write_v1(&tenant, "legacy", "pending", Duration::from_secs(60), HOUR)
        .await;
    let (clean, report) = setup.migrate("redis", "temporal", &[&tenant], &[]);
    assert!(clean, "{report:#}");
    let temporal = setup.engine(EngineKind::Temporal).await;
    let copy = temporal.get(&tenant, &id("legacy")).await.unwrap().unwrap();
    assert_eq!(copy.status, Status::Pending);

    // The v1 service decides: the status flips, nothing else changes, the key keeps its TTL.
    let key = format!("approval:{tenant}:legacy");
    let mut conn = setup.redis.connection().await;
    let raw: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut record: Value = serde_json::from_str(&raw).unwrap();
    record["status"] = json!("approved");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(record.to_string())
        .arg("KEEPTTL")
        .query_async(&mut conn)
        .await
        .unwrap();

    let (clean, report) = setup.migrate("redis", "temporal", &[&tenant], &[]);
    let copy = temporal.get(&tenant, &id("legacy")).await.unwrap().unwrap();
    assert_eq!(copy.status, Status::Accepted, "{report:#}");
    assert!(clean, "{report:#}");
}

/// An id used again for another action after its first record left Redis (Temporal keeps
/// settled records longer): the first one's decision is not replayed onto the second, which
/// nobody reviewed, in either direction, whichever side answers. It was: the agent waiting
/// on the second approval was told "accepted" by a reviewer of the first. The two are a
/// difference in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_approval_under_a_reused_id_does_not_get_the_first_ones_decision() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("reused");
    temporal
        .import(accepted(&tenant, "reused", Duration::from_secs(60)))
        .await
        .unwrap();
    let mut second = pending(&tenant, "reused", HOUR);
    second.action = json!({"type": "document_read", "resource": "another/file"})
        .as_object()
        .unwrap()
        .clone();
    redis.submit(second).await.unwrap();
    let still_pending = || async {
        let record = redis.get(&tenant, &id("reused")).await.unwrap().unwrap();
        assert_eq!(record.status, Status::Pending, "{record:?}");
    };

    // A rollback's copy (Temporal to Redis), Redis not answering, then answering.
    let report = of_tenant(&temporal, &redis, &tenant, 4).run().await;
    assert_eq!(report.decisions_replayed, 0, "{report}");
    assert_eq!(report.differences_total, 1, "{report}");
    still_pending().await;
    for target_answers in [false, true] {
        let plan = Plan {
            tenants: BTreeSet::from([tenant.clone()]),
            concurrency: 4,
            dry_run: false,
            target_answers,
        };
        let report = Migration::new(
            redis.clone(),
            temporal.clone(),
            plan,
            indicatif::ProgressBar::hidden(),
        )
        .run()
        .await;
        assert_eq!(report.source_repaired, 0, "{report}");
        assert_eq!(report.differences_total, 1, "{report}");
        still_pending().await;
    }
}

/// After the switch to Temporal (or in a rollback, the other way), the migration's target is
/// the engine that answers and its source the soak's secondary: a decision the secondary
/// missed is replayed on it, as a read through the service would repair it. It stayed a
/// difference on every run ("source pending, target accepted"), and the runbook's "run it
/// until it exits 0" never ended. With the source answering, the source is the truth and is
/// left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_the_secondary_missed_is_replayed_on_it_when_the_target_answers() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("missed");
    let parked = pending(&tenant, "missed", HOUR);
    redis.submit(parked.clone()).await.unwrap();
    temporal.import(parked).await.unwrap();
    let decided = temporal
        .decide(&tenant, &id("missed"), decision(Verdict::Accept, "bob"))
        .await
        .unwrap();
    let approvals_core::DecisionOutcome::Decided(decided) = decided else {
        panic!("{decided:?}")
    };
    // Redis answering: its pending record is the truth, and the difference is reported.
    let report = of_tenant(&redis, &temporal, &tenant, 4).run().await;
    assert_eq!(report.differences_total, 1, "{report}");
    let still = redis.get(&tenant, &id("missed")).await.unwrap().unwrap();
    assert_eq!(still.status, Status::Pending);

    // Temporal answering (a dual soak after the switch, as the service's configuration
    // says): a dry run says what it would replay on Redis and leaves it; a real run has Redis
    // follow, and exits 0.
    let run = |extra: &[&str]| {
        let output = setup
            .command("redis", "temporal", &[&tenant], extra)
            .env("APPROVALS_BACKEND__KIND", "dual")
            .env("APPROVALS_BACKEND__PRIMARY", "temporal")
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        assert!(output.status.success(), "{report:#}");
        report
    };
    let previewed = run(&["--dry-run"]);
    assert_eq!(previewed["would_repair_source"], 1, "{previewed:#}");
    assert_eq!(previewed["source_repaired"], 0, "{previewed:#}");
    let untouched = redis.get(&tenant, &id("missed")).await.unwrap().unwrap();
    assert_eq!(untouched.status, Status::Pending);
    let report = run(&[]);
    assert_eq!(report["source_repaired"], 1, "{report:#}");
    let repaired = redis.get(&tenant, &id("missed")).await.unwrap().unwrap();
    assert_eq!(repaired, decided, "same reviewer, reason and time");
}

/// A record only the answering target holds (a submit whose mirror to the soak's secondary
/// failed) is copied to the source: it was listed as "source missing" and the run exited 1 on
/// every re-run, until the target dropped it. A dry run says it would, and copies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_only_the_answering_target_holds_is_copied_to_the_source() {
    let setup = Setup::new().await;
    let redis = setup.engine(EngineKind::Redis).await;
    let temporal = setup.engine(EngineKind::Temporal).await;
    let tenant = fresh_tenant("unmirrored");
    redis
        .submit(pending(&tenant, "only-redis", HOUR))
        .await
        .unwrap();
    let parked = redis
        .get(&tenant, &id("only-redis"))
        .await
        .unwrap()
        .unwrap();

    // The rollback's last step: Temporal to Redis, with Redis answering.
    let run = |extra: &[&str]| {
        let output = setup
            .command("temporal", "redis", &[&tenant], extra)
            .env("APPROVALS_BACKEND__KIND", "dual")
            .env("APPROVALS_BACKEND__PRIMARY", "redis")
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        (output.status.success(), report)
    };
    let (_, previewed) = run(&["--dry-run"]);
    assert_eq!(previewed["would_repair_source"], 1, "{previewed:#}");
    assert_eq!(
        temporal.get(&tenant, &id("only-redis")).await.unwrap(),
        None
    );

    let (reconciled, report) = run(&[]);
    assert!(reconciled, "{report:#}");
    assert_eq!(report["source_repaired"], 1, "{report:#}");
    let copied = temporal
        .get(&tenant, &id("only-redis"))
        .await
        .unwrap()
        .expect("copied to Temporal");
    assert_eq!(copied.status, Status::Pending);
    assert_eq!(copied.expires_at, parked.expires_at, "its own deadline");

    // And again: nothing left to do.
    let (reconciled, report) = run(&[]);
    assert!(reconciled, "{report:#}");
    assert_eq!(report["source_repaired"], 0, "{report:#}");
}
