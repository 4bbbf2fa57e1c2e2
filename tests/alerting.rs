//! Alerts reach someone: the repository's alert rules in a real Prometheus, sending to a real
//! Alertmanager with the repository's configuration, whose webhook receiver is a local HTTP
//! server here. Only the waiting is shortened (every rule's `for` and the route's group waits;
//! promtool's unit tests in prometheus/alerts_test.yml check the timing): what arrives is what
//! a pager or chat bridge would get, with the runbook link made absolute by Prometheus'
//! `runbook_base` external label.
//!
//! Needs `prometheus` and `prometheus-alertmanager` (scripts/test.sh installs them).

use std::path::PathBuf;
use std::time::Duration;

use approvals_testkit::alertmanager_server::AlertmanagerServer;
use approvals_testkit::free_port;
use approvals_testkit::prometheus_server::{PrometheusConfig, PrometheusServer};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const RUNBOOK_BASE: &str = "https://runbooks.example.org/approvals/blob/main";

fn repo(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A webhook receiver: every payload Alertmanager POSTs, in order.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (sender, received) = mpsc::unbounded_channel();
    let app =
        Router::new()
            .route(
                "/alerts",
                post(
                    |State(sender): State<mpsc::UnboundedSender<Value>>,
                     Json(body): Json<Value>| async move {
                        let _ = sender.send(body);
                    },
                ),
            )
            .with_state(sender);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// alertmanager/alertmanager.yml with its receiver pointed at `url` and no group waits.
fn alertmanager_config(url: &str) -> String {
    let text = std::fs::read_to_string(repo("alertmanager/alertmanager.yml")).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut pointed = 0;
    for receiver in config["receivers"].as_sequence_mut().unwrap() {
        for webhook in receiver["webhook_configs"]
            .as_sequence_mut()
            .into_iter()
            .flatten()
        {
            webhook["url"] = url.into();
            pointed += 1;
        }
    }
    assert!(pointed > 0, "alertmanager.yml has a webhook receiver");
    let route = &mut config["route"];
    route["group_wait"] = "0s".into();
    route["group_interval"] = "1s".into();
    for child in route["routes"].as_sequence_mut().into_iter().flatten() {
        child["group_wait"] = "0s".into();
    }
    serde_yaml::to_string(&config).unwrap()
}

/// prometheus/alerts.yml with every `for` at zero, written where Prometheus can read it.
fn immediate_rules(dir: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(repo("prometheus/alerts.yml")).unwrap();
    let mut rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for group in rules["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            if rule.get("for").is_some() {
                rule["for"] = "0s".into();
            }
        }
    }
    let path = dir.join("alerts.yml");
    std::fs::write(&path, serde_yaml::to_string(&rules).unwrap()).unwrap();
    path
}

/// An instance Prometheus cannot scrape: ApprovalsServiceDown reaches the receiver, with its
/// summary, severity and an absolute runbook link that names its runbook section.
#[tokio::test]
async fn a_firing_alert_reaches_the_receiver_with_an_absolute_runbook_link() {
    let (url, mut received) = receiver().await;
    let alertmanager = AlertmanagerServer::start(&alertmanager_config(&url)).await;
    let dir = tempfile::tempdir().unwrap();
    let down = format!("127.0.0.1:{}", free_port());
    let prometheus = PrometheusServer::start(&PrometheusConfig {
        job: "approvals".into(),
        targets: vec![down.clone()],
        rule_files: vec![immediate_rules(dir.path())],
        interval: Duration::from_millis(500),
        external_labels: vec![("runbook_base".into(), RUNBOOK_BASE.into())],
        alertmanagers: vec![alertmanager.address()],
        ..Default::default()
    })
    .await;

    let alert = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let payload = received.recv().await.expect("the receiver runs");
            let found = payload["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["labels"]["alertname"] == "ApprovalsServiceDown")
                .cloned();
            if let Some(alert) = found {
                assert_eq!(payload["receiver"], "approvals-oncall", "{payload}");
                return alert;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no ApprovalsServiceDown at the receiver within 60 s\nprometheus:\n{}\nalertmanager:\n{}",
            prometheus.log(),
            alertmanager.log()
        )
    });
    assert_eq!(alert["status"], "firing", "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(alert["labels"]["instance"], down.as_str(), "{alert}");
    assert_eq!(
        alert["annotations"]["runbook_url"],
        format!("{RUNBOOK_BASE}/docs/runbook.md#approvalsservicedown"),
        "{alert}"
    );
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains(&down), "{summary}");
    // The link's section exists.
    let runbook = std::fs::read_to_string(repo("docs/runbook.md")).unwrap();
    assert!(runbook.contains("\n## ApprovalsServiceDown\n"));
}

/// The receiver `alertname` was delivered to: from `seen` if it came while another was awaited
/// (Alertmanager sends separate groups in no set order, and does not send one again), else
/// waiting for it (at most 90 s). Every alert received is added to `seen` with its receiver.
async fn delivered_to(
    received: &mut mpsc::UnboundedReceiver<Value>,
    alertname: &str,
    seen: &mut Vec<(String, String)>,
) -> String {
    // A deadline for the event, not a speed check: under a loaded CI run's other work the
    // rule's evaluation and Alertmanager's grouping once took past 30 s (5 s alone here).
    tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            if let Some((_, receiver)) = seen.iter().find(|(name, _)| name == alertname) {
                return receiver.clone();
            }
            let payload = received.recv().await.expect("the receiver runs");
            let receiver = payload["receiver"].as_str().unwrap_or_default();
            seen.extend(
                payload["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["labels"]["alertname"].as_str())
                    .map(|name| (name.to_owned(), receiver.to_owned())),
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{alertname} was not delivered within 90 s; got {seen:?}"))
}

/// Critical alerts page (`approvals-oncall`), warnings go to the team's channel
/// (`approvals-team`), as the runbook says: both went to the pager. The heartbeat goes to
/// `approvals-heartbeat`. While ApprovalsNotReady
/// fires for an instance, the warnings its outage sets off on that instance are held back;
/// another instance's, and a warning about reviewers, still go.
#[tokio::test]
async fn warnings_go_to_the_team_and_an_outage_holds_back_its_echo() {
    let (url, mut received) = receiver().await;
    let alertmanager = AlertmanagerServer::start(&alertmanager_config(&url)).await;
    let api = format!("http://{}/api/v2/alerts", alertmanager.address());
    let http = reqwest::Client::new();
    let fire = |labels: Value| {
        let request = http.post(&api).json(&json!([{ "labels": labels }]));
        async move {
            let response = request.send().await.expect("post alert");
            assert!(response.status().is_success(), "{response:?}");
        }
    };
    let mut seen = Vec::new();

    // The always-firing heartbeat goes to a receiver of its own: a dead man's switch, which
    // pages when it stops (that it fires is promtool's case in prometheus/alerts_test.yml).
    fire(json!({"alertname": "ApprovalsWatchdog", "severity": "none"})).await;
    assert_eq!(
        delivered_to(&mut received, "ApprovalsWatchdog", &mut seen).await,
        "approvals-heartbeat"
    );

    fire(json!({"alertname": "ApprovalsAboutToExpire", "severity": "warning", "tenant": "acme"}))
        .await;
    assert_eq!(
        delivered_to(&mut received, "ApprovalsAboutToExpire", &mut seen).await,
        "approvals-team"
    );

    fire(
        json!({"alertname": "ApprovalsNotReady", "severity": "critical",
        "job": "approvals", "instance": "a:8080"}),
    )
    .await;
    assert_eq!(
        delivered_to(&mut received, "ApprovalsNotReady", &mut seen).await,
        "approvals-oncall"
    );
    // Instance a's failing sweeps and its unsubscribed decision listener are its outage's
    // echo; instance b's stale figures are not.
    fire(
        json!({"alertname": "ApprovalsSweeperFailing", "severity": "warning",
        "instance": "a:8080"}),
    )
    .await;
    fire(
        json!({"alertname": "ApprovalsDecisionSubscriberDown", "severity": "warning",
        "job": "approvals", "instance": "a:8080"}),
    )
    .await;
    fire(
        json!({"alertname": "ApprovalsPendingFiguresStale", "severity": "warning",
        "job": "approvals", "instance": "b:8080"}),
    )
    .await;
    fire(
        json!({"alertname": "ApprovalsPendingGrowingWithoutDecisions", "severity": "warning",
        "tenant": "acme"}),
    )
    .await;
    for other in [
        "ApprovalsPendingFiguresStale",
        "ApprovalsPendingGrowingWithoutDecisions",
    ] {
        assert_eq!(
            delivered_to(&mut received, other, &mut seen).await,
            "approvals-team",
            "{other}"
        );
    }
    // Alertmanager says why the echo was not sent.
    for echo in ["ApprovalsSweeperFailing", "ApprovalsDecisionSubscriberDown"] {
        held_back(&http, &api, echo).await;
        assert!(
            !seen.iter().any(|(name, _)| name == echo),
            "sent while the outage page fired: {seen:?}"
        );
    }
}

/// Waits until Alertmanager holds `alertname` back (inhibited), or panics after 10 s.
async fn held_back(http: &reqwest::Client, api: &str, alertname: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alerts: Value = http
            .get(api)
            .query(&[("filter", format!("alertname=\"{alertname}\""))])
            .send()
            .await
            .expect("list alerts")
            .json()
            .await
            .expect("json");
        let status = &alerts[0]["status"];
        if status["state"] == "suppressed" {
            assert!(
                status["inhibitedBy"]
                    .as_array()
                    .is_some_and(|by| !by.is_empty()),
                "{status}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instance a's {alertname} was not held back: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The runbook's scrape targets are the ones Prometheus scrapes: it told on-call the target
/// was `approvals:8080`, the API's port, which answers `404` for `/metrics` (the stack serves
/// them on 8090); "restoring" it turned missing metrics into a service marked down.
#[test]
fn the_runbooks_scrape_targets_are_prometheus_targets() {
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("prometheus/prometheus.yml")).unwrap())
            .unwrap();
    let targets: Vec<String> = config["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|set| set["targets"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|target| target.as_str().map(str::to_owned))
        .collect();
    let runbook = std::fs::read_to_string(repo("docs/runbook.md")).unwrap();
    let named: Vec<&str> = runbook
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| {
            quoted.split_once(':').is_some_and(|(host, port)| {
                host.starts_with("approvals") && port.parse::<u16>().is_ok()
            })
        })
        .collect();
    assert!(!named.is_empty(), "the runbook names no scrape target");
    for target in named {
        assert!(
            targets.iter().any(|t| t == target),
            "the runbook names {target}; Prometheus scrapes {targets:?}"
        );
    }
}
