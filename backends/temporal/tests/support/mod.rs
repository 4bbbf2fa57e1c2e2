//! One Temporal dev server (testkit's [`DevServer`]) and one in-process worker per test binary:
//! both start on first use, from a thread that lives as long as the process; the server is
//! started with `PR_SET_PDEATHSIG`, so it is killed when the test binary exits, however it exits.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use approvals_temporal::TemporalSettings;
pub use approvals_testkit::temporal_server::DevServer;

/// Settings for this binary's shared server and worker.
pub fn settings() -> TemporalSettings {
    shared().clone()
}

fn shared() -> &'static TemporalSettings {
    static SHARED: OnceLock<TemporalSettings> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("temporal-dev-server".into())
            .spawn(move || {
                let server = DevServer::start(None);
                let mut settings = TemporalSettings::new(server.address());
                settings.task_queue = format!("approvals-test-{}", std::process::id());
                settings.sticky_queue_timeout = Duration::from_secs(2);
                // APPROVALS_TEMPORAL_READ_YOUR_WRITES=0: plain visibility, as another process
                // sees it (to measure what the overlay hides).
                settings.read_your_writes =
                    std::env::var("APPROVALS_TEMPORAL_READ_YOUR_WRITES").as_deref() != Ok("0");
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("worker runtime");
                ready_tx.send(settings.clone()).expect("test waiting");
                let result = runtime.block_on(approvals_temporal::run_worker(
                    settings,
                    std::future::pending(),
                ));
                eprintln!("worker stopped: {result:?}");
                drop(server);
            })
            .expect("server thread");
        ready_rx.recv().expect("dev server started")
    })
}
