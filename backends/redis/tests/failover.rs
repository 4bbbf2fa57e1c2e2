//! A failover behind one address: the service reaches Redis by a name that moves to the
//! promoted replica, while the old primary stays up as a replica of it (demoted without
//! dropping its clients). Real servers: two redis-servers replicating, and a TCP forwarder
//! standing in for the moved address.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvals_core::conformance::{fresh_tenant, pending};
use approvals_core::{ApprovalBackend, Lifetimes};
use approvals_redis::{RedisBackend, RedisSettings};
use approvals_testkit::RedisServer;

const HOUR: Duration = Duration::from_secs(3600);

/// A local address whose new connections go to whichever port `target` holds then; a
/// connection made before a switch stays where it went.
async fn forwarder(target: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = target.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

async fn command(server: &RedisServer, args: &[&str]) -> redis::Value {
    let mut conn = server.connection().await;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.expect("command")
}

/// After the failover every write succeeds again within a few seconds: a connection that
/// meets `READONLY` is replaced, and the new one goes where the address leads now. It stayed
/// on the demoted server, and every submit failed until the process restarted.
#[tokio::test]
async fn writes_follow_the_address_to_the_promoted_replica() {
    let old = RedisServer::start().await;
    let old_port = old.port().to_string();
    let new = RedisServer::start_with(&["--replicaof", "127.0.0.1", &old_port]).await;
    let target = Arc::new(AtomicU16::new(old.port()));
    let address = forwarder(target.clone()).await;
    let mut settings = RedisSettings::new(format!("redis://127.0.0.1:{address}/0"));
    settings.call_timeout = Duration::from_secs(2);
    let backend = RedisBackend::connect(settings, Lifetimes::default()).expect("backend");
    let tenant = fresh_tenant("failover");
    // Enough to have every one of the backend's connections made (they connect on first use).
    for n in 0..16 {
        backend
            .submit(pending(&tenant, &format!("before-{n}"), HOUR))
            .await
            .expect("a submit before the failover");
    }

    // The replica has caught up, then is promoted; the old primary follows it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = command(&new, &["INFO", "replication"]).await;
        let info: String = redis::from_redis_value(info).expect("text");
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never synced: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    command(&new, &["REPLICAOF", "NO", "ONE"]).await;
    let new_port = new.port().to_string();
    command(&old, &["REPLICAOF", "127.0.0.1", &new_port]).await;
    target.store(new.port(), Ordering::SeqCst);

    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        match backend
            .submit(pending(&tenant, &format!("after-{n}"), HOUR))
            .await
        {
            Ok(_) => break,
            Err(error) => assert!(
                Instant::now() < deadline,
                "submits still fail after the failover: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Chores on a server that refuses every write (a replica: the address still leads to a
/// demoted primary) fail, as a sweep does: the trims' pipelines keep going past one damaged
/// key, and a refusal of every command read as "nothing to trim", the chore reported healthy.
#[tokio::test]
async fn trims_on_a_server_that_takes_no_writes_fail() {
    let primary = RedisServer::start().await;
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
    let writer = RedisBackend::connect(RedisSettings::new(primary.url()), Lifetimes::default())
        .expect("backend");
    let tenant = fresh_tenant("read-only");
    writer
        .submit(pending(&tenant, "req-1", HOUR))
        .await
        .expect("submit");
    let accept =
        approvals_core::DecisionRequest::now(approvals_core::Verdict::Accept, "alice", None);
    writer
        .decide(&tenant, &approvals_core::conformance::id("req-1"), accept)
        .await
        .expect("accept");
    // The replica holds it all.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held: redis::Value = command(&replica, &["SCARD", "approvals:tenants"]).await;
        if redis::from_redis_value::<u64>(held).unwrap_or(0) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reader = RedisBackend::connect(RedisSettings::new(replica.url()), Lifetimes::default())
        .expect("backend");
    let later = approvals_core::Timestamp::from_millis(
        approvals_core::Timestamp::now().as_millis() + 200 * 86_400_000,
    );
    assert!(reader.trim_audit(later).await.is_err(), "the audit trim");
    assert!(
        reader.expire_due(later).await.is_err(),
        "the retention trim"
    );
}
