//! An Alertmanager child process (Debian's `prometheus-alertmanager` package) on its own port
//! and data directory, with the configuration a test gives it, clustering off.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use crate::prometheus_server::ready_or_stopped;

pub struct AlertmanagerServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl AlertmanagerServer {
    /// Starts a server with `config` (alertmanager.yml text) on a free port and waits until
    /// `/-/ready` answers 200.
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("alertmanager.yml"), config).expect("write config");
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
            "alertmanager did not start; is it installed? \
             (apt-get install prometheus-alertmanager)\n{}",
            server.log()
        );
    }

    /// `host:port`, as Prometheus' `alerting` section names it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the server logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("alertmanager.log")
    }

    async fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let dir = self.dir.path();
        let spawned = Command::new(binary())
            .arg(format!(
                "--config.file={}",
                dir.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            // No gossip: a single instance, and no second port to collide on.
            .arg("--cluster.listen-address=")
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

/// Debian names the binary `prometheus-alertmanager`; upstream's is `alertmanager`.
fn binary() -> &'static str {
    let debian = "/usr/bin/prometheus-alertmanager";
    if std::path::Path::new(debian).exists() {
        debian
    } else {
        "alertmanager"
    }
}

impl Drop for AlertmanagerServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
