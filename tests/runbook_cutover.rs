//! `docs/runbook-cutover.md`, executed. The runbook's fenced blocks are read from the document
//! itself and played in document order against a real redis-server and a real Temporal dev
//! server, so the document cannot drift from the binary:
//!
//! - every `toml` block is merged into the configuration file (keys set, the rest kept), after
//!   its placeholder `http://temporal:7233` is replaced by the dev server's address;
//! - every `approvals …` line of an `sh` block runs the real binary, `approvals.toml` being that
//!   file. `serve` and `worker` run in the background and are awaited on their `/readyz`; a
//!   repeated `serve` is a restart (SIGTERM, clean exit, start). Every other command must exit
//!   0. A real `migrate` is re-run while it exits 1, as the runbook tells the operator to, and
//!   must end reconciled;
//! - every `curl …` line runs in `sh` with `http://127.0.0.1:8080` / `:8081` replaced by the
//!   service's and the worker's addresses, retried for up to 30 s until it exits 0;
//! - `docker compose` lines cannot run here (no Docker engine): the services and profiles they
//!   name must exist in docker-compose.yml. `cargo`, `temporal`, `redis-cli` lines are skipped.
//!
//! Around the document, the test plays the users: before the runbook starts, a service on Redis
//! parks and decides approvals through HTTP; at every (re)start of the service, every approval
//! seen so far must read the same through HTTP, whichever engine answers; in some phases
//! reviewers and agents act (a decision during the soak before the migration, which dual counts
//! as a disagreement; submits and decisions on each side). The document must take the service
//! through redis → dual/redis → dual/temporal → temporal and back.

#![cfg(feature = "temporal")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use approvals::auth::digest_hex;
use approvals_testkit::free_port;
use approvals_testkit::process::{wait_ready, Process};
use approvals_testkit::temporal_server::DevServer;
use approvals_testkit::RedisServer;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_approvals");
const RUNBOOK: &str = "docs/runbook-cutover.md";

/// The runbook's placeholders (its "Names used below" table).
const CONFIG_NAME: &str = "approvals.toml";
const API_NAME: &str = "http://127.0.0.1:8080";
const WORKER_NAME: &str = "http://127.0.0.1:8081";
const METRICS_NAME: &str = "http://127.0.0.1:8090";
const TEMPORAL_NAME: &str = "http://temporal:7233";

const AGENT: &str = "runbook-agent-acme";
const GLOBEX_AGENT: &str = "runbook-agent-globex";
const REVIEWER: &str = "runbook-reviewer-acme";
const ADMIN: &str = "runbook-platform-admin";

/// A fenced block of the runbook and the line it starts on.
#[derive(Debug)]
enum Block {
    Toml(usize, String),
    Sh(usize, String),
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (n, line) in doc.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(lang) = trimmed.strip_prefix("```") {
                    open = Some((n + 1, lang.trim().to_owned(), String::new()));
                }
            }
            Some((start, lang, text)) => {
                if trimmed.starts_with("```") {
                    match lang.as_str() {
                        "toml" => blocks.push(Block::Toml(*start, std::mem::take(text))),
                        "sh" => blocks.push(Block::Sh(*start, std::mem::take(text))),
                        _ => {}
                    }
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{RUNBOOK}: an unclosed code fence");
    blocks
}

/// The commands of an `sh` block: `\` continuations joined, comments dropped, blanks skipped.
fn commands(block: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = without_comment(line);
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let command = current.split_whitespace().collect::<Vec<_>>().join(" ");
                if !command.is_empty() {
                    commands.push(command);
                }
                current.clear();
            }
        }
    }
    commands
}

/// `line` without a `#` comment (a `#` at the start or after a blank, outside quotes).
fn without_comment(line: &str) -> &str {
    let (mut single, mut double, mut blank) = (false, false, true);
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if blank && !single && !double => return &line[..i],
            _ => {}
        }
        blank = c.is_whitespace();
    }
    line
}

/// Sets `patch`'s keys in `base`, table by table, as an operator edits a file.
fn merge(base: &mut toml::Table, patch: toml::Table) {
    for (key, value) in patch {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(patch)) => merge(inner, patch),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// One approval as the users last saw it through HTTP, and who may read it.
struct Seen {
    tenant: &'static str,
    record: Value,
}

/// The runbook being played: its services, its configuration, and what the users did.
struct Play {
    config_path: PathBuf,
    config: toml::Table,
    temporal: String,
    api: String,
    worker_base: String,
    /// The instance's `/metrics` (`server.metrics_listen`, as the image sets it).
    metrics_base: String,
    serve: Option<Process>,
    worker: Option<Process>,
    http: reqwest::Client,
    /// By id (ids are unique across tenants here).
    seen: BTreeMap<String, Seen>,
    /// The backend of every start of the service, in order ("dual/redis" …).
    phases: Vec<String>,
    /// `--from X --to Y` of every migrate run, with `--dry-run`/`--tenant` when given.
    migrations: Vec<String>,
    compose: serde_yaml::Value,
    doc: String,
}

impl Play {
    fn write_config(&self) {
        let text = toml::to_string(&self.config).expect("config as TOML");
        std::fs::write(&self.config_path, text).unwrap();
    }

    fn phase(&self) -> String {
        let backend = self.config.get("backend").and_then(|b| b.as_table());
        let get = |key: &str| {
            backend
                .and_then(|b| b.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        match get("kind").as_deref().unwrap_or("redis") {
            "dual" => format!("dual/{}", get("primary").unwrap_or_default()),
            kind => kind.to_owned(),
        }
    }

    fn approvals(&self, args: &[String]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("APPROVALS_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// Runs one `approvals …` line of the runbook.
    async fn run_approvals(&mut self, at: usize, line: &str) {
        assert!(
            !line.contains(['|', '>', '<', '&', ';', '$', '`', '\'', '"']),
            "{RUNBOOK}:{at}: `{line}`: no shell syntax on an approvals line (the test runs it as is)"
        );
        let args: Vec<String> = line
            .split_whitespace()
            .skip(1)
            .map(|word| match word {
                CONFIG_NAME => self.config_path.display().to_string(),
                other => other.to_owned(),
            })
            .collect();
        match args.first().map(String::as_str) {
            Some("serve") => self.start_serve(at, &args).await,
            Some("worker") => {
                if let Some(mut old) = self.worker.take() {
                    let (status, _) = old.terminate(Duration::from_secs(30)).await;
                    assert!(
                        status.success(),
                        "worker restart: {status:?}\n{}",
                        old.log()
                    );
                }
                let worker = Process::spawn(self.approvals(&args));
                self.worker = Some(worker);
                wait_ready(
                    &format!("{}/readyz", self.worker_base),
                    Duration::from_secs(30),
                )
                .await;
            }
            Some("migrate") => self.migrate(at, line, &args).await,
            _ => {
                let (code, out, err) = self.run_to_end(&args).await;
                assert_eq!(code, Some(0), "{RUNBOOK}:{at}: `{line}`\n{out}\n{err}");
            }
        }
    }

    /// Runs `approvals ARGS` to its end: its exit code, stdout and stderr.
    async fn run_to_end(&self, args: &[String]) -> (Option<i32>, String, String) {
        let mut command = tokio::process::Command::from(self.approvals(args));
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(180), command.output())
            .await
            .unwrap_or_else(|_| panic!("approvals {args:?} did not end within 180 s"))
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    async fn migrate(&mut self, at: usize, line: &str, args: &[String]) {
        let value = |flag: &str| {
            let i = args.iter().position(|a| a == flag)?;
            args.get(i + 1).cloned()
        };
        let dry = args.iter().any(|a| a == "--dry-run");
        let mut label = format!(
            "{}->{}",
            value("--from").unwrap_or_default(),
            value("--to").unwrap_or_default()
        );
        if dry {
            label.push_str(" dry-run");
        }
        if let Some(tenant) = value("--tenant") {
            label.push_str(&format!(" tenant={tenant}"));
        }
        let repeated = !dry && value("--tenant").is_none() && self.migrations.contains(&label);
        self.migrations.push(label);
        // The runbook: "Re-run it until it exits 0" (a record written while it scanned).
        for attempt in 1..=3 {
            let (code, out, err) = self.run_to_end(args).await;
            let ok = code == Some(0);
            eprintln!("{RUNBOOK}:{at}: `{line}` (attempt {attempt}):\n{out}");
            if ok {
                // The report the runbook shows is the one the binary prints.
                let header = out.lines().next().unwrap_or_default();
                assert!(
                    self.doc.contains(header),
                    "{RUNBOOK}: no report header {header:?}"
                );
                if !dry {
                    let verdict = "reconciled: both sides hold the same records";
                    assert!(out.contains(verdict), "{out}");
                    assert!(self.doc.contains(verdict), "{RUNBOOK}: no {verdict:?}");
                    // "A last migration run exits 0 and imports nothing (dual mirrored
                    // everything)": a repeated full run finds everything there.
                    if repeated {
                        assert!(out.contains("\nimported 0,"), "{RUNBOOK}:{at}: {out}");
                    }
                }
                return;
            }
            assert!(!dry, "a dry run exits 0 whatever it finds\n{out}\n{err}");
            // 1: differences remain (re-run); 2 or a signal: the command itself is wrong.
            assert_eq!(code, Some(1), "{RUNBOOK}:{at}: `{line}`\n{out}\n{err}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("{RUNBOOK}:{at}: `{line}` still differs after 3 runs");
    }

    async fn start_serve(&mut self, at: usize, args: &[String]) {
        if let Some(mut old) = self.serve.take() {
            let (status, _) = old.terminate(Duration::from_secs(40)).await;
            assert!(status.success(), "serve restart: {status:?}\n{}", old.log());
        }
        let mut serve = Process::spawn(self.approvals(args));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Ok(200)) = tokio::time::timeout(
                Duration::from_secs(2),
                approvals_testkit::process::http_status(&format!("{}/readyz", self.api)),
            )
            .await
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{RUNBOOK}:{at}: the service ({}) never became ready; log:\n{}",
                self.phase(),
                serve.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.serve = Some(serve);
        self.serving().await;
    }

    /// A `curl …` line, in `sh`, retried until it exits 0 (metrics appear within seconds).
    async fn run_curl(&self, at: usize, line: &str) {
        let line = line
            .replace(API_NAME, &self.api)
            .replace(WORKER_NAME, &self.worker_base)
            .replace(METRICS_NAME, &self.metrics_base);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = tokio::process::Command::new("sh")
                .args(["-c", &line])
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            if output.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{RUNBOOK}:{at}: `{line}` never exited 0: {:?}\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A `docker compose …` line: the profiles and services it names exist.
    fn check_compose(&self, at: usize, line: &str) {
        let services = self.compose["services"]
            .as_mapping()
            .expect("docker-compose.yml: services");
        let known = |name: &str| services.contains_key(name);
        let profiles: Vec<&str> = services
            .values()
            .filter_map(|s| s["profiles"].as_sequence())
            .flatten()
            .filter_map(|p| p.as_str())
            .collect();
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut i = 2; // after `docker compose`
        let mut subcommand = None;
        while i < words.len() {
            let word = words[i];
            match word {
                "--profile" => {
                    let profile = words.get(i + 1).copied().unwrap_or_default();
                    assert!(
                        profiles.contains(&profile),
                        "{RUNBOOK}:{at}: no profile {profile:?} in docker-compose.yml"
                    );
                    i += 1;
                }
                "-f" | "--file" => {
                    let file = words.get(i + 1).copied().unwrap_or_default();
                    assert!(
                        Path::new(env!("CARGO_MANIFEST_DIR")).join(file).exists(),
                        "{RUNBOOK}:{at}: no file {file}"
                    );
                    i += 1;
                }
                "--build-arg" => i += 1,
                flag if flag.starts_with('-') => {}
                name if subcommand.is_none() => subcommand = Some(name),
                name if matches!(subcommand, Some("up" | "build" | "restart" | "stop")) => {
                    assert!(
                        known(name),
                        "{RUNBOOK}:{at}: no service {name:?} in docker-compose.yml"
                    );
                }
                _ => {}
            }
            i += 1;
        }
    }

    // ---- the users around the runbook --------------------------------------------------------

    /// At every start of the service: everything seen so far reads the same, then the users of
    /// this phase act (once per phase).
    async fn serving(&mut self) {
        let phase = self.phase();
        eprintln!("serving on {phase}");
        self.check_all(&phase).await;
        let first = !self.phases.contains(&phase);
        self.phases.push(phase.clone());
        if !first {
            return;
        }
        match phase.as_str() {
            "redis" => {
                for id in ["a-pending", "a-accepted", "a-rejected", "a-late"] {
                    self.submit("acme", id).await;
                }
                self.submit("globex", "g-pending").await;
                self.decide("a-accepted", "accept").await;
                self.decide("a-rejected", "reject").await;
            }
            "dual/redis" => {
                // Before the migration: Temporal has never heard of a-late.
                self.decide("a-late", "accept").await;
                self.submit("acme", "b-pending").await;
                self.submit("acme", "b-accepted").await;
                self.decide("b-accepted", "accept").await;
                // The runbook's 4.1: until the migration, the approvals Temporal lacks count
                // as disagreements (the mirrored decision; a read, compared seconds later).
                self.read("acme", "a-late").await;
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let metrics = self.metrics().await;
                    if metrics.lines().any(|l| {
                        l.starts_with("approvals_dual_disagreements_total{")
                            && l.contains("tenant=\"acme\"")
                    }) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no disagreement counted for an approval Temporal lacks:\n{metrics}"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            "dual/temporal" => {
                self.decide("a-pending", "reject").await;
                self.submit("acme", "c-pending").await;
            }
            "temporal" => {
                self.submit("acme", "d-pending").await;
                self.decide("b-pending", "accept").await;
            }
            other => panic!("{RUNBOOK}: the service runs on an unexpected backend {other:?}"),
        }
    }

    async fn submit(&mut self, tenant: &'static str, id: &str) {
        let token = if tenant == "acme" {
            AGENT
        } else {
            GLOBEX_AGENT
        };
        let response = self
            .http
            .post(format!("{}/v1/tenants/{tenant}/approvals", self.api))
            .bearer_auth(token)
            .json(&json!({"request_id": id, "agent_id": "runbook-bot",
                "action": {"type": "document_read", "resource": format!("finance/{id}")}}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "submit {tenant}/{id}: {body}");
        self.seen.insert(
            id.to_owned(),
            Seen {
                tenant,
                record: body["approval"].clone(),
            },
        );
    }

    async fn decide(&mut self, id: &str, verb: &str) {
        let tenant = self.seen[id].tenant;
        let url = format!("{}/v1/tenants/{tenant}/approvals/{id}/{verb}", self.api);
        // As a client would: a 503 is retried. On Temporal the first decision after a worker
        // restart can outlast the call deadline while it replays; if that attempt landed all
        // the same, the retry answers 409, and the read below shows whose decision stands.
        let started = Instant::now();
        let mut retried = false;
        loop {
            let response = self
                .http
                .post(&url)
                .bearer_auth(REVIEWER)
                .json(&json!({"reason": format!("{verb} in phase {}", self.phase())}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            if status == 503 && started.elapsed() < Duration::from_secs(60) {
                eprintln!("{verb} {tenant}/{id}: 503 ({text}); retrying");
                retried = true;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            if !(retried && status == 409) {
                assert_eq!(status, 200, "{verb} {tenant}/{id}: {text}");
            }
            break;
        }
        let record = self.read(tenant, id).await;
        assert_eq!(
            record["status"],
            if verb == "accept" {
                "accepted"
            } else {
                "rejected"
            }
        );
        self.seen.get_mut(id).unwrap().record = record;
    }

    async fn read(&self, tenant: &str, id: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/v1/tenants/{tenant}/approvals/{id}", self.api))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "GET {tenant}/{id} on {}: {body}", self.phase());
        body
    }

    /// Every approval seen so far reads exactly as it was last seen: status, decider, reason,
    /// times, deadline.
    async fn check_all(&self, phase: &str) {
        for (id, seen) in &self.seen {
            let now = self.read(seen.tenant, id).await;
            assert_eq!(
                now, seen.record,
                "{}/{id} reads differently on {phase}",
                seen.tenant
            );
        }
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.metrics_base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn the_cutover_runbook_runs_as_written_there_and_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(RUNBOOK)).unwrap();
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).unwrap())
            .unwrap();

    // From this test's thread, which lives until the end (PR_SET_PDEATHSIG): its own server, so
    // the runbook's worker is the only one on the task queue.
    let temporal = DevServer::start(None);
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, worker_port, metrics_port) = (free_port(), free_port(), free_port());

    // The configuration of a service on Redis before the runbook starts: no [backend], no
    // [temporal] (the runbook must set what it needs).
    let tokens: Vec<Value> = [
        ("runbook-bot", "acme", "agent", AGENT),
        ("runbook-bot", "globex", "agent", GLOBEX_AGENT),
        ("alice", "acme", "reviewer", REVIEWER),
        ("oncall", "*", "admin", ADMIN),
    ]
    .into_iter()
    .map(|(subject, tenant, role, token)| {
        json!({"subject": subject, "tenant": tenant, "role": role, "sha256": digest_hex(token)})
    })
    .collect();
    let initial = json!({
        "server": {
            "listen": format!("127.0.0.1:{port}"),
            "metrics_listen": format!("127.0.0.1:{metrics_port}"),
            "shutdown_grace": "5s",
        },
        "redis": {"url": redis.url()},
        "worker": {"listen": format!("127.0.0.1:{worker_port}")},
        "policy": {"dir": root.join("policies").display().to_string()},
        "approvals": {"stats_interval": "1s"},
        "auth": {"tokens": tokens},
    });
    let config: toml::Table = toml::Table::try_from(initial).unwrap();

    let mut play = Play {
        config_path: dir.path().join(CONFIG_NAME),
        config,
        temporal: temporal.address(),
        api: format!("http://127.0.0.1:{port}"),
        worker_base: format!("http://127.0.0.1:{worker_port}"),
        metrics_base: format!("http://127.0.0.1:{metrics_port}"),
        serve: None,
        worker: None,
        http: reqwest::Client::new(),
        seen: BTreeMap::new(),
        phases: Vec::new(),
        migrations: Vec::new(),
        compose,
        doc: doc.clone(),
    };
    play.write_config();
    // The service as it runs before anyone opens the runbook.
    play.start_serve(
        0,
        &[
            "serve".into(),
            "--config".into(),
            play.config_path.display().to_string(),
        ],
    )
    .await;

    let mut ran = 0;
    for block in blocks(&doc) {
        match block {
            Block::Toml(at, text) => {
                let text = text.replace(TEMPORAL_NAME, &play.temporal);
                let patch: toml::Table = text
                    .parse()
                    .unwrap_or_else(|e| panic!("{RUNBOOK}:{at}: not TOML: {e}"));
                merge(&mut play.config, patch);
                play.write_config();
            }
            Block::Sh(at, text) => {
                for line in commands(&text) {
                    let first = line.split_whitespace().next().unwrap_or_default();
                    match first {
                        "approvals" => {
                            eprintln!("{RUNBOOK}:{at}: $ {line}");
                            play.run_approvals(at, &line).await;
                            ran += 1;
                        }
                        "curl" => {
                            play.run_curl(at, &line).await;
                            ran += 1;
                        }
                        "docker" if line.starts_with("docker compose ") => {
                            play.check_compose(at, &line)
                        }
                        // `echo NAME=value >> .env`: a variable docker-compose.yml reads.
                        "echo" if line.ends_with(">> .env") => {
                            let name = line
                                .split_whitespace()
                                .nth(1)
                                .and_then(|a| a.split_once('='))
                                .map(|(name, _)| name)
                                .unwrap_or_else(|| panic!("{RUNBOOK}:{at}: `{line}`: NAME=value"));
                            let compose = std::fs::read_to_string(
                                Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"),
                            )
                            .expect("docker-compose.yml");
                            assert!(
                                compose.contains(&format!("${{{name}")),
                                "{RUNBOOK}:{at}: docker-compose.yml never reads {name}"
                            );
                        }
                        "cargo" | "temporal" | "redis-cli" | "docker" => {}
                        other => panic!(
                            "{RUNBOOK}:{at}: `{line}`: the test does not know how to run {other:?}"
                        ),
                    }
                }
            }
        }
    }
    eprintln!(
        "ran {ran} commands; phases {:?}; migrations {:?}",
        play.phases, play.migrations
    );

    // The document took the service there and back, migrating both ways.
    assert_eq!(
        play.phases,
        [
            "redis",
            "dual/redis",
            "dual/temporal",
            "temporal",
            "dual/temporal",
            "dual/redis",
            "redis"
        ],
        "the service's backends, start by start"
    );
    for expected in [
        "redis->temporal dry-run",
        "redis->temporal tenant=acme",
        "redis->temporal",
        "temporal->redis dry-run",
        "temporal->redis",
    ] {
        assert!(
            play.migrations.iter().any(|m| m == expected),
            "no `approvals migrate` {expected} in the runbook: {:?}",
            play.migrations
        );
    }
    assert!(play.worker.is_some(), "the runbook never started a worker");
    // Everything the users did on either engine, after the round trip, on Redis.
    assert_eq!(play.seen.len(), 9);
    assert_eq!(play.seen["d-pending"].record["status"], "pending");
    assert_eq!(play.seen["b-pending"].record["status"], "accepted");

    for process in [play.serve.take(), play.worker.take()]
        .into_iter()
        .flatten()
    {
        let mut process = process;
        let (status, _) = process.terminate(Duration::from_secs(40)).await;
        assert!(status.success(), "{status:?}\n{}", process.log());
    }
}
