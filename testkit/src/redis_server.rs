//! A `redis-server` child process with its own port and data directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct RedisServer {
    port: u16,
    dir: TempDir,
    append_only: bool,
    /// More `redis-server` arguments (`--cluster-enabled yes`, say).
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// An in-memory server: nothing survives a restart.
    pub async fn start() -> Self {
        Self::launch(false, &[]).await
    }

    /// A server with AOF (`appendfsync always`) in its own directory, for restart tests.
    pub async fn start_durable() -> Self {
        Self::launch(true, &[]).await
    }

    /// An in-memory server started with these arguments too.
    pub async fn start_with(extra: &[&str]) -> Self {
        Self::launch(false, extra).await
    }

    async fn launch(append_only: bool, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            port: 0,
            dir,
            append_only,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        for _ in 0..10 {
            server.port = crate::free_port();
            if server.spawn().await {
                return server;
            }
        }
        panic!("redis-server did not start; is it installed? (apt-get install redis-server)");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// How often this server has run `command` so far (`INFO commandstats`, lower case, e.g.
    /// `evalsha`): what a test counts to show work that is, or is not, done.
    pub async fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.connection().await)
            .await
            .expect("info");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Kills the server (SIGKILL: as abrupt as a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn().await {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Spawns the process and waits until it answers PING as itself; false if it exited or
    /// another server holds the port (a free port can be taken by another test's server
    /// before ours binds it, and that one answers PING: the test would use its data).
    async fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.append_only {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        command.args(&self.extra);
        let Ok(mut child) = command.spawn() else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if let Ok(mut conn) = self.client().get_multiplexed_async_connection().await {
                if let Ok(info) = redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn)
                    .await
                {
                    let ours = format!("process_id:{}", child.id());
                    if info.lines().any(|line| line.trim_end() == ours) {
                        self.child = Some(child);
                        return true;
                    }
                    // Someone else's: ours fails to bind and exits (seen above next round).
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
