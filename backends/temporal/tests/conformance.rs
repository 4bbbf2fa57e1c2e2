//! The shared conformance suite against a real Temporal dev server (one per test binary) and an
//! in-process worker.

mod support;

use std::sync::Arc;

use approvals_core::RecordTransfer;
use approvals_temporal::TemporalBackend;

/// A backend client on this test's runtime, talking to the binary's server and worker. No
/// sweeper: the workflows expire themselves.
async fn temporal_backend() -> (Arc<dyn RecordTransfer>, ()) {
    let settings = tokio::task::spawn_blocking(support::settings)
        .await
        .expect("dev server");
    let backend = TemporalBackend::connect(settings).await.expect("backend");
    (Arc::new(backend), ())
}

approvals_core::conformance_tests!(temporal_backend);

/// The decision log on this engine beyond the shared suite: `record` keeps each event as a
/// `DecisionLogWorkflow` execution, which only the audit reads.
mod decision_log {
    use std::time::{Duration, Instant};

    use approvals_core::conformance::{fresh_tenant, pending};
    use approvals_core::{
        ApprovalBackend, AuditEntry, AuditEvent, PolicyAnswer, RecordTransfer, Status, TenantId,
    };
    use approvals_temporal::TemporalBackend;
    use temporalio_client::{
        Client, ClientOptions, Connection, ConnectionOptions, Url, WorkflowCountOptions,
    };

    use super::support;

    async fn client(address: &str) -> Client {
        let options = ConnectionOptions::new(Url::parse(address).expect("address")).build();
        let connection = Connection::connect(options).await.expect("connect");
        Client::new(connection, ClientOptions::new("default").build()).expect("client")
    }

    async fn all_audit(backend: &TemporalBackend, tenant: &TenantId) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = backend
                .audit(tenant, None, cursor.as_deref(), 1)
                .await
                .expect("audit");
            events.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return events,
            }
        }
    }

    /// Without this process's overlay (as another instance reads): what `record` wrote is in
    /// Temporal itself, each call once (the same request answered twice is two events), paged
    /// through with its own cursors, and never an approval to list, count, scan or decide.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recorded_events_are_in_visibility_and_only_in_the_audit() {
        let mut settings = tokio::task::spawn_blocking(support::settings)
            .await
            .expect("dev server");
        settings.read_your_writes = false;
        let backend = TemporalBackend::connect(settings).await.expect("backend");
        let tenant = fresh_tenant("logged");
        let asked = pending(&tenant, "allowed-1", Duration::from_secs(3600));
        let allow = PolicyAnswer {
            decision: "allow".into(),
            reasons: vec!["reads are fine".into()],
            policy_version: "sha256:active".into(),
        };
        let answered = AuditEntry::answered(&asked, &allow, None);
        backend.record(answered.clone()).await.expect("record");
        backend
            .record(answered.clone())
            .await
            .expect("record again");

        let deadline = Instant::now() + Duration::from_secs(15);
        let events = loop {
            let events = all_audit(&backend, &tenant).await;
            if events.len() >= 2 || Instant::now() > deadline {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_ne!(events[0].event_id, events[1].event_id);
        for event in &events {
            assert_eq!(event.entry(), answered, "recorded as it was built");
        }

        // The worker completed each execution: nothing is left running. They run on a task
        // queue of their own: after a worker outage, the approvals' decisions and timers are
        // not queued behind every verdict recorded meanwhile.
        let client = client(&backend.settings().address).await;
        let query = format!(
            "WorkflowType = 'DecisionLogWorkflow' AND TenantId = '{tenant}' \
             AND ExecutionStatus = 'Completed' AND TaskQueue = '{}'",
            backend.settings().decision_log_task_queue()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let count = client
                .count_workflows(query.clone(), WorkflowCountOptions::default())
                .await
                .expect("count")
                .count();
            if count == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "{count} completed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        for status in [
            Status::Pending,
            Status::Accepted,
            Status::Rejected,
            Status::Expired,
        ] {
            let page = backend.list(&tenant, status, None, 10).await.expect("list");
            assert!(page.items.is_empty(), "{status:?}: {:?}", page.items);
        }
        assert_eq!(backend.get(&tenant, &asked.id).await.expect("get"), None);
        let stats = backend
            .pending_stats(&[Duration::from_secs(60)], approvals_core::Timestamp::now())
            .await
            .expect("stats");
        assert!(stats.tenants.iter().all(|t| t.tenant != tenant));
        let mut cursor: Option<String> = None;
        loop {
            let page = backend.scan(cursor.as_deref(), 500).await.expect("scan");
            assert!(page.items.iter().all(|a| a.tenant != tenant), "scanned");
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
}

/// Two service instances, each with its own memory of its writes (read-your-writes over
/// visibility): what one parked and the other decided leaves the first one's pending list and
/// figures once visibility has the close, not when the first one forgets its write (30 s).
mod two_instances {
    use std::time::{Duration, Instant};

    use approvals_core::conformance::{decision, fresh_tenant, id, pending};
    use approvals_core::{ApprovalBackend, DecisionOutcome, Status, Timestamp, Verdict};
    use approvals_temporal::TemporalBackend;

    use super::support;

    #[tokio::test]
    async fn an_approval_decided_on_another_instance_leaves_this_ones_pending_list() {
        let settings = tokio::task::spawn_blocking(support::settings)
            .await
            .expect("dev server");
        let parker = TemporalBackend::connect(settings.clone())
            .await
            .expect("backend");
        let other = TemporalBackend::connect(settings).await.expect("backend");
        let tenant = fresh_tenant("elsewhere");
        parker
            .submit(pending(&tenant, "x", Duration::from_secs(3600)))
            .await
            .expect("submit");
        let outcome = other
            .decide(&tenant, &id("x"), decision(Verdict::Accept, "alice"))
            .await
            .expect("decide");
        assert!(
            matches!(outcome, DecisionOutcome::Decided(_)),
            "{outcome:?}"
        );
        let started = Instant::now();
        loop {
            let listed = parker
                .list(&tenant, Status::Pending, None, 10)
                .await
                .expect("list");
            let stats = parker
                .pending_stats(&[Duration::from_secs(60)], Timestamp::now())
                .await
                .expect("stats");
            let counted = stats
                .tenants
                .iter()
                .any(|t| t.tenant == tenant && t.count > 0);
            if listed.items.is_empty() && !counted {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "still pending on the instance that parked it: {:?}, counted: {counted}",
                listed.items
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
