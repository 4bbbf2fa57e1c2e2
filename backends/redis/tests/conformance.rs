//! The shared conformance suite against a real redis-server, one per test.

use std::sync::Arc;
use std::time::Duration;

use approvals_core::{ApprovalBackend, Timestamp};
use approvals_redis::{RedisBackend, RedisSettings};
use approvals_testkit::RedisServer;

struct Fixture {
    _server: RedisServer,
    sweeper: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

/// A backend on its own server, with the expiry sweeper running as the service runs it.
async fn redis_backend() -> (Arc<dyn ApprovalBackend>, Fixture) {
    let server = RedisServer::start().await;
    let backend: Arc<dyn ApprovalBackend> =
        Arc::new(RedisBackend::connect(RedisSettings::new(server.url())).expect("backend"));
    let sweeping = backend.clone();
    let sweeper = tokio::spawn(async move {
        loop {
            let _ = sweeping.expire_due(Timestamp::now()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (
        backend,
        Fixture {
            _server: server,
            sweeper,
        },
    )
}

approvals_core::conformance_tests!(redis_backend);
