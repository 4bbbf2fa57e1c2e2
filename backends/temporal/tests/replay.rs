//! Running workflows survive an upgrade: histories recorded by earlier builds of this service
//! (in `histories/`, exported with `temporal workflow show --output json`) replay against the
//! current `ApprovalWorkflow` and `DecisionLogWorkflow` without a nondeterminism error.
//!
//! Most histories were recorded before the workflow's input and memo became this engine's own
//! versioned types (`record.rs`): they carry the API's approval object without a `version`.
//! `parked-shadow-accepted.json` carries the service's submitted event (with a shadow verdict)
//! in its input; `decision-log.json` is a `DecisionLogWorkflow` (`record`).
//! `expired-by-timer-counted.json` and `expired-by-late-decision.json` were recorded after the
//! `count-expiry` patch (the expiry counted by a local activity): the timer's path, and the
//! `decide` handler's (a decision sent in time and delivered with the first task, past the
//! deadline), by the tests in `expiry_events.rs`.
//! Record new ones whenever the workflow changes shape, and keep the old ones: run the build
//! that is current against a dev server, then export each workflow with
//!
//! ```sh
//! APPROVALS_EXPORT_ADDRESS=http://127.0.0.1:7233 APPROVALS_EXPORT_IDS=approval:acme:r1,… \
//!   cargo test -p approvals-temporal --features engine --test replay -- --ignored export
//! ```
//!
//! (`temporal workflow show --output json` writes proto3 JSON, which the SDK does not read.)

use std::path::PathBuf;

use approvals_temporal::{ApprovalWorkflow, DecisionLogWorkflow};
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, Url, WorkflowFetchHistoryOptions,
    WorkflowHistory,
};
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};

fn histories() -> Vec<(String, WorkflowHistory)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/histories");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("histories folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("history file");
            let history = WorkflowHistory::from_json(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), history)
        })
        .collect()
}

#[tokio::test]
async fn histories_recorded_by_earlier_builds_replay() {
    let histories = histories();
    // Accepted, rejected, expired, two carried over by `approvals migrate`, one parked with
    // the service's event, and one decision-log event.
    assert!(histories.len() >= 7, "{} histories", histories.len());
    let options = WorkflowReplayerOptions::new()
        .register_workflow::<ApprovalWorkflow>()
        .expect("register")
        .register_workflow::<DecisionLogWorkflow>()
        .expect("register")
        .build();
    let replayer = WorkflowReplayer::new(options).expect("replayer");
    let (names, histories): (Vec<_>, Vec<_>) = histories.into_iter().unzip();
    let results = replayer
        .replay_workflows(histories)
        .await
        .expect("replay ran");
    assert_eq!(results.len(), names.len());
    for (name, result) in names.iter().zip(&results) {
        assert!(
            result.replay_failure.is_none(),
            "{name}: {:?}",
            result.replay_failure
        );
    }
}

/// Tooling, not a test: writes the histories named by `APPROVALS_EXPORT_IDS` (comma-separated
/// workflow ids) from the server at `APPROVALS_EXPORT_ADDRESS` into `tests/histories/`, each
/// file named after the id's last part.
#[tokio::test]
#[ignore = "exports histories from a running server; see the module documentation"]
async fn export() {
    let address = std::env::var("APPROVALS_EXPORT_ADDRESS").expect("APPROVALS_EXPORT_ADDRESS");
    let ids = std::env::var("APPROVALS_EXPORT_IDS").expect("APPROVALS_EXPORT_IDS");
    let options = ConnectionOptions::new(Url::parse(&address).expect("address")).build();
    let connection = Connection::connect(options).await.expect("connect");
    let client = Client::new(connection, ClientOptions::new("default").build()).expect("client");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/histories");
    for id in ids.split(',') {
        let history = client
            .get_workflow_handle::<ApprovalWorkflow>(id)
            .fetch_history(WorkflowFetchHistoryOptions::default())
            .to_json()
            .await
            .expect("history");
        let name = id.rsplit(':').next().expect("an id");
        std::fs::write(dir.join(format!("{name}.json")), history).expect("write");
    }
}
