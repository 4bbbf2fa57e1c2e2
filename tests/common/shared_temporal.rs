//! One Temporal dev server and one in-process worker for a whole test binary, started on first
//! use (testkit's shared server, with the worker on the server's thread). Test binaries include
//! this file with `#[path]`: each has its own server, tests in it share it and use tenants of
//! their own.

use std::sync::OnceLock;
use std::time::Duration;

use approvals_temporal::TemporalSettings;

/// The worker's settings: the address and task queue a service or client must use.
pub async fn shared() -> TemporalSettings {
    static SHARED: OnceLock<TemporalSettings> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        approvals_testkit::temporal_server::shared(&SHARED, |address, ready| {
            let mut worker = TemporalSettings::new(address);
            worker.task_queue = format!("approvals-test-{}", std::process::id());
            worker.sticky_queue_timeout = Duration::from_secs(2);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("worker runtime");
            ready.send(worker.clone()).expect("test waiting");
            let result = runtime.block_on(approvals_temporal::run_worker(
                worker,
                std::future::pending(),
            ));
            eprintln!("worker stopped: {result:?}");
        })
    })
    .await
    .expect("dev server")
}
