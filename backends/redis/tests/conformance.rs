//! The shared conformance suite against a real redis-server, one per test.

use std::sync::Arc;
use std::time::Duration;

use approvals_core::{Approval, BackendError, EngineEvents, Lifetimes, RecordTransfer, Timestamp};
use approvals_redis::{ChoreSchedule, Chores, RedisBackend, RedisSettings};
use approvals_testkit::RedisServer;

/// The chores' reports go nowhere here: the suite looks at what the engine stored.
struct Unobserved;

impl EngineEvents for Unobserved {
    fn expired(&self, _: &Approval, _: Timestamp) {}
    fn chore_finished(&self, _: &'static str, _: Result<usize, &BackendError>) {}
    fn unreadable(&self, _: &str, _: &str) {}
}

/// A backend on its own server, with its chores running as the service runs them.
async fn redis_backend() -> (Arc<dyn RecordTransfer>, (RedisServer, Chores)) {
    let server = RedisServer::start().await;
    let backend = Arc::new(
        RedisBackend::connect(RedisSettings::new(server.url()), Lifetimes::default())
            .expect("backend"),
    );
    let schedule = ChoreSchedule {
        sweep_interval: Duration::from_millis(100),
        adopt_interval: Duration::from_secs(60),
    };
    let chores = backend.start_chores(schedule, Arc::new(Unobserved));
    (backend, (server, chores))
}

approvals_core::conformance_tests!(redis_backend);
