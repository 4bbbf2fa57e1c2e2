//! `approvals worker` and `approvals serve` with `backend.kind = "temporal"`, as an operator
//! runs them: two child processes against a real Temporal dev server (testkit), a submit and a
//! decision through HTTP, the worker's own health and metrics, and a clean SIGTERM drain.

#![cfg(feature = "temporal")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use approvals::auth::digest_hex;
use approvals_testkit::free_port;
use approvals_testkit::temporal_server::DevServer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_approvals");

/// A child process, killed if the test ends early; its stderr lines arrive on `lines`.
struct Process {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("APPROVALS_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `text` (the event, not a guess at a delay).
    fn wait_for_line(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "never logged {text:?}; exit: {:?}; log:\n{}",
                    self.child.try_wait(),
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then waits for the exit; returns it and how long it took.
    async fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let signalled = Instant::now();
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.seen.extend(self.lines.try_iter());
                return (status, signalled.elapsed());
            }
            assert!(
                signalled.elapsed() < within,
                "did not exit within {within:?} of SIGTERM; log:\n{}",
                self.seen.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .get(url)
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn worker_and_serve_on_temporal_decide_through_http_and_drain_on_sigterm() {
    // Started from this test's thread, which lives until the end (PR_SET_PDEATHSIG).
    let server = DevServer::start(None);
    let dir = tempfile::tempdir().unwrap();
    let (port, worker_port) = (free_port(), free_port());
    let (agent, reviewer) = ("agent-token-1", "reviewer-token-1");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[backend]\nkind = \"temporal\"\n\
         [temporal]\naddress = \"{}\"\ntask_queue = \"approvals-cli-{}\"\n\
         [worker]\nlisten = \"127.0.0.1:{worker_port}\"\n[policy]\ndir = \"{}\"\n\
         [[auth.tokens]]\nsubject = \"agent-1\"\ntenant = \"acme\"\nrole = \"agent\"\nsha256 = \"{}\"\n\
         [[auth.tokens]]\nsubject = \"alice\"\ntenant = \"acme\"\nrole = \"reviewer\"\nsha256 = \"{}\"\n",
        server.address(),
        std::process::id(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").display(),
        digest_hex(agent),
        digest_hex(reviewer),
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let config = config_path.display().to_string();

    let mut worker = Process::spawn(&["worker", "--config", &config]);
    worker.wait_for_line("worker polling", Duration::from_secs(20));
    let mut service = Process::spawn(&["serve", "--config", &config]);
    service.wait_for_line("serving", Duration::from_secs(20));

    let http = reqwest::Client::new();
    let worker_base = format!("http://127.0.0.1:{worker_port}");
    wait_ready(&http, &format!("{worker_base}/readyz")).await;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&http, &format!("{base}/readyz")).await;

    let submitted = http
        .post(format!("{base}/v1/tenants/acme/approvals"))
        .bearer_auth(agent)
        .json(&serde_json::json!({"request_id": "req-1", "action": {"type": "document_read", "resource": "finance/x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 201);
    let long_poll = {
        let request = http
            .get(format!(
                "{base}/v1/tenants/acme/approvals/req-1/decision?wait_seconds=30"
            ))
            .bearer_auth(agent);
        tokio::spawn(async move { request.send().await })
    };
    let accepted = http
        .post(format!("{base}/v1/tenants/acme/approvals/req-1/accept"))
        .bearer_auth(reviewer)
        .json(&serde_json::json!({"reason": "looks fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200, "{:?}", accepted.text().await);
    let again = http
        .post(format!("{base}/v1/tenants/acme/approvals/req-1/reject"))
        .bearer_auth(reviewer)
        .json(&serde_json::json!({"reason": "too late"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "the first decision won");
    let waited = long_poll.await.unwrap().unwrap();
    assert_eq!(waited.status(), 200);
    let waited: Value = waited.json().await.unwrap();
    assert_eq!(waited["status"], "accepted", "{waited}");

    let metrics = http
        .get(format!("{worker_base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("approvals_worker_info{"), "{metrics}");
    assert!(metrics.contains("approvals_backend_up 1"), "{metrics}");
    assert!(metrics.contains("approvals_worker_draining 0"), "{metrics}");

    let (status, took) = worker.terminate(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "clean exit: {status:?}; log:\n{}",
        worker.seen.join("\n")
    );
    let log = worker.seen.join("\n");
    assert!(log.contains("draining the worker"), "{log}");
    assert!(log.contains("worker stopped"), "{log}");
    eprintln!("worker drained in {took:?}");
    assert!(
        http.get(format!("{worker_base}/healthz"))
            .send()
            .await
            .is_err(),
        "the worker's HTTP server stopped with it"
    );
    let (status, _) = service.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
}
