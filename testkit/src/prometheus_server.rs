//! A `prometheus` child process (Debian's `prometheus` package) with its own port, data
//! directory and generated configuration, scraping the targets a test gives it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server scrapes and evaluates.
#[derive(Debug, Clone, Default)]
pub struct PrometheusConfig {
    /// The scrape job's name (alert rules may select on it).
    pub job: String,
    /// `host:port` of each target; the metrics path is `/metrics`.
    pub targets: Vec<String>,
    /// Further scrape jobs: each job's name and targets (e.g. the Temporal workers).
    pub more_jobs: Vec<(String, Vec<String>)>,
    /// Rule files to load (absolute paths); a rule file Prometheus rejects fails the start.
    pub rule_files: Vec<PathBuf>,
    /// Scrape and rule evaluation interval.
    pub interval: Duration,
    /// `global.external_labels` (alert templates read them as `$externalLabels`).
    pub external_labels: Vec<(String, String)>,
    /// `host:port` of each Alertmanager the alerts are sent to.
    pub alertmanagers: Vec<String>,
}

pub struct PrometheusServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl PrometheusServer {
    /// Starts a server on a free port and waits until `/-/ready` answers 200.
    pub async fn start(config: &PrometheusConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("prometheus.yml"), render_config(config))
            .expect("write prometheus.yml");
        let mut server = Self {
            port: 0,
            dir,
            child: None,
        };
        for _ in 0..10 {
            server.port = crate::free_port();
            if server.spawn().await {
                return server;
            }
        }
        panic!(
            "prometheus did not start; is it installed? (apt-get install prometheus)\n{}",
            server.log()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the server logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// Spawns the process and waits until it is ready; false if it exited (port taken).
    async fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let dir = self.dir.path();
        let spawned = Command::new("prometheus")
            .arg(flag("--config.file=", &dir.join("prometheus.yml")))
            .arg(flag("--storage.tsdb.path=", &dir.join("data")))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let Ok(child) = spawned else {
            return false;
        };
        self.child = ready_or_stopped(child, self.port).await;
        self.child.is_some()
    }
}

/// `child` once `GET /-/ready` on `port` answers 200 (Prometheus' and Alertmanager's readiness
/// endpoint), or `None` if it exited first (a port taken) or is not ready within 30 s.
pub(crate) async fn ready_or_stopped(mut child: Child, port: u16) -> Option<Child> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if http_status(port, "/-/ready").await == Some(200) {
            return Some(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn flag(name: &str, path: &Path) -> String {
    format!("{name}{}", path.display())
}

/// A YAML single-quoted scalar.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn render_config(config: &PrometheusConfig) -> String {
    let interval = format!("{}ms", config.interval.as_millis().max(1));
    let mut out = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n"
    );
    if !config.external_labels.is_empty() {
        out.push_str("  external_labels:\n");
        for (name, value) in &config.external_labels {
            out.push_str(&format!("    {name}: {}\n", quoted(value)));
        }
    }
    if !config.alertmanagers.is_empty() {
        out.push_str("alerting:\n  alertmanagers:\n    - static_configs:\n        - targets:\n");
        for target in &config.alertmanagers {
            out.push_str(&format!("            - {}\n", quoted(target)));
        }
    }
    out.push_str("rule_files:\n");
    for file in &config.rule_files {
        out.push_str(&format!("  - {}\n", quoted(&file.display().to_string())));
    }
    out.push_str("scrape_configs:\n");
    let jobs = std::iter::once((&config.job, &config.targets))
        .chain(config.more_jobs.iter().map(|(job, targets)| (job, targets)));
    for (job, targets) in jobs {
        out.push_str(&format!(
            "  - job_name: {}\n    metrics_path: /metrics\n    static_configs:\n      - targets:\n",
            quoted(job)
        ));
        for target in targets {
            out.push_str(&format!("          - {}\n", quoted(target)));
        }
    }
    out
}

/// The status of `GET path` on 127.0.0.1:`port`, or `None` if nothing answers.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}
