//! A child process under test (the `approvals` binary, as an operator runs it): one of its
//! output streams read line by line on a thread, so a test waits for a log line (the event,
//! not a guess at a delay); signals; a timed exit; killed and reaped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which of the child's output streams the harness pipes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// A running child process. Dropping it kills (SIGKILL) and reaps it, so a failing test leaves
/// nothing behind.
pub struct Process {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Spawns `command` with its stderr piped and read (where the service logs); stdin, stdout
    /// and the environment stay as `command` set them.
    pub fn spawn(command: Command) -> Self {
        Self::spawn_reading(command, Output::Stderr)
    }

    /// Spawns `command` with `output` piped and read line by line.
    pub fn spawn_reading(mut command: Command, output: Output) -> Self {
        match output {
            Output::Stdout => command.stdout(Stdio::piped()),
            Output::Stderr => command.stderr(Stdio::piped()),
        };
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", command.get_program()));
        let stream: Box<dyn std::io::Read + Send> = match output {
            Output::Stdout => Box::new(child.stdout.take().expect("piped stdout")),
            Output::Stderr => Box::new(child.stderr.take().expect("piped stderr")),
        };
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits in i32"))
    }

    /// The next line, or `None` once `deadline` passed (or the stream closed) without one.
    pub fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let line = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Waits for a line containing `text` and returns it; panics with the log so far if none
    /// came within `within`.
    pub fn wait_for_line(&mut self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            match self.next_line(deadline) {
                Some(line) if line.contains(text) => return line,
                Some(_) => {}
                None => panic!(
                    "never logged {text:?}; exit: {:?}; log:\n{}",
                    self.child.try_wait(),
                    self.log()
                ),
            }
        }
    }

    /// Every line read so far (and any already waiting), one per line.
    pub fn log(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap_or_else(|e| panic!("kill {signal}: {e}"));
    }

    /// Waits for the process to exit, polling every 50 ms; panics with its log if it is still
    /// running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.seen.extend(self.lines.try_iter());
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "did not exit within {within:?}; log:\n{}",
                    self.seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit; returns it and how long it took.
    pub async fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let signalled = Instant::now();
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(within).await;
        (status, signalled.elapsed())
    }

    /// SIGKILL (as abrupt as a crash: no drain, no goodbye to anyone) and reaps it.
    pub fn kill_hard(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        let status = self.child.wait().expect("wait");
        self.seen.extend(self.lines.try_iter());
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `url` (plain `http://host:port/path`) every 50 ms until it answers `200`; panics if it
/// has not within `within`.
pub async fn wait_ready(url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(200)) = tokio::time::timeout(left, http_status(url)).await {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status code of a `GET url` (HTTP/1.1, no body read).
pub async fn http_status(url: &str) -> std::io::Result<u16> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("not an HTTP response"))
}
