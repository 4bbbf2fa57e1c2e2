//! A tenant with nothing left (no approval in any index, no audit event) leaves the set of
//! tenants every pending-figures pass and audit trim reads; one that parks again comes back.
//! Kept for good, a tenant gone for years was read every 2 s and exported as a series.

use std::time::Duration;

use approvals_core::conformance::{fresh_tenant, id, pending};
use approvals_core::{ApprovalBackend, DecisionRequest, Lifetimes, Timestamp, Verdict};
use approvals_redis::{RedisBackend, RedisSettings};
use approvals_testkit::RedisServer;
use redis::AsyncCommands;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_tenant_with_nothing_left_is_forgotten_until_it_parks_again() {
    let server = RedisServer::start().await;
    let short = Duration::from_millis(200);
    let lifetimes = Lifetimes {
        decided_retention: short,
        expired_retention: short,
        audit_retention: short,
        ..Lifetimes::default()
    };
    let backend =
        RedisBackend::connect(RedisSettings::new(server.url()), lifetimes).expect("backend");
    let (quiet, busy) = (fresh_tenant("quiet"), fresh_tenant("busy"));
    for tenant in [&quiet, &busy] {
        backend
            .submit(pending(tenant, "req-1", HOUR))
            .await
            .expect("submit");
    }
    let accept = DecisionRequest::now(Verdict::Accept, "alice", None);
    backend
        .decide(&quiet, &id("req-1"), accept)
        .await
        .expect("decide");

    // Past every retention: the index entry and the audit events of the decided one go.
    let later = Timestamp::now().plus(Duration::from_secs(5));
    backend.expire_due(later).await.expect("sweep");
    backend.trim_audit(later).await.expect("trim");
    let mut conn = server.connection().await;
    let tenants: Vec<String> = conn.smembers("approvals:tenants").await.expect("tenants");
    assert_eq!(
        tenants,
        [busy.to_string()],
        "busy still has a pending approval"
    );
    let figures = backend
        .pending_stats(&[], Timestamp::now())
        .await
        .expect("figures");
    assert!(figures.tenants.iter().all(|t| t.tenant != quiet));

    backend
        .submit(pending(&quiet, "req-2", HOUR))
        .await
        .expect("submit");
    let mut tenants: Vec<String> = conn.smembers("approvals:tenants").await.expect("tenants");
    tenants.sort();
    let mut both = vec![busy.to_string(), quiet.to_string()];
    both.sort();
    assert_eq!(tenants, both, "back with its new approval");
}
