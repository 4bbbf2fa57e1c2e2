//! One Temporal dev server (testkit's shared [`DevServer`]) and one in-process worker per test
//! binary: both start on first use, from a thread that lives as long as the process; the server
//! is started with `PR_SET_PDEATHSIG`, so it is killed when the test binary exits, however it
//! exits.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use approvals_temporal::TemporalSettings;

/// Settings for this binary's shared server and worker.
pub fn settings() -> TemporalSettings {
    static SHARED: OnceLock<TemporalSettings> = OnceLock::new();
    approvals_testkit::temporal_server::shared(&SHARED, |address, ready| {
        let mut settings = TemporalSettings::new(address);
        settings.task_queue = format!("approvals-test-{}", std::process::id());
        settings.sticky_queue_timeout = Duration::from_secs(2);
        // The 40-way race queues 40 updates on one workflow; on a loaded two-core machine the
        // last one is answered after more than the 5 s default.
        settings.call_timeout = Duration::from_secs(20);
        // APPROVALS_TEMPORAL_READ_YOUR_WRITES=0: plain visibility, as another process sees it
        // (to measure what the overlay hides).
        settings.read_your_writes =
            std::env::var("APPROVALS_TEMPORAL_READ_YOUR_WRITES").as_deref() != Ok("0");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("worker runtime");
        ready.send(settings.clone()).expect("test waiting");
        let result = runtime.block_on(approvals_temporal::run_worker(
            settings,
            std::future::pending(),
        ));
        eprintln!("worker stopped: {result:?}");
    })
}
