//! The `approvals` binary as an operator runs it: exit codes, token minting, SIGTERM drain.

#[path = "common/metrics.rs"]
mod metrics;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use approvals::auth::digest_hex;
use approvals_testkit::process::{wait_ready, Output, Process};
use approvals_testkit::{free_port, RedisServer};
use metrics::metrics_until;
use nix::sys::signal::Signal;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_approvals");

fn approvals(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("APPROVALS_CONFIG");
    command
}

/// A `serve` configuration for tenant acme on `port` and `redis`, with the checkout's policy and
/// `agent` as the token of its agent `agent-1`; `server` adds lines to `[server]`, `more` whole
/// sections (another token, a sink).
fn serve_config(port: u16, redis: &RedisServer, agent: &str, server: &str, more: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{server}[redis]\nurl = \"{}\"\n[policy]\ndir = \"{}\"\n\
         [[auth.tokens]]\nsubject = \"agent-1\"\ntenant = \"acme\"\nrole = \"agent\"\nsha256 = \"{}\"\n{more}",
        redis.url(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").display(),
        digest_hex(agent),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn bad_configuration_exits_2_naming_the_key_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write(
        dir.path(),
        "unknown.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nlistne = 1\n",
    );
    let bad_duration = write(
        dir.path(),
        "duration.toml",
        "[approvals]\ndefault_ttl = \"one day\"\n",
    );
    let good = write(
        dir.path(),
        "good.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    );
    let missing = dir.path().join("missing.toml").display().to_string();
    // A sandbox that cannot work stops the start, rather than failing every tenant's policy.
    let no_sandbox = write(
        dir.path(),
        "sandbox.toml",
        "[policy.sandbox]\nbinary = \"/nonexistent/approvals\"\n",
    );
    let tiny_sandbox = write(
        dir.path(),
        "tiny.toml",
        "[policy.sandbox]\nmemory_limit_mib = 1\n",
    );
    let retries = write(
        dir.path(),
        "retries.toml",
        "[notifications]\nretry_base = \"0s\"\n",
    );
    // (arguments, environment, what the message must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["serve", "--config", &unknown], vec![], "listne"),
        (
            vec!["serve", "--config", &bad_duration],
            vec![],
            "approvals.default_ttl",
        ),
        (vec!["serve", "--config", &missing], vec![], "missing.toml"),
        (
            vec!["serve", "--config", &no_sandbox],
            vec![],
            "policy.sandbox: a child of binary = /nonexistent/approvals",
        ),
        (
            vec!["serve", "--config", &tiny_sandbox],
            vec![],
            "policy.sandbox.memory_limit_mib: at least 64",
        ),
        (
            vec!["serve", "--config", &no_sandbox],
            vec![("RUST_LOG", "warning")],
            "RUST_LOG ignored, log.filter \"info\" used instead: \"warning\" is no level",
        ),
        (
            vec!["serve", "--config", &retries],
            vec![],
            "notifications.retry_base: must be positive",
        ),
        (
            vec!["serve", "--config", &good],
            vec![("APPROVALS_REDIS__URI", "x")],
            "APPROVALS_REDIS__URI",
        ),
        (
            vec!["serve"],
            vec![("APPROVALS_CONFIG", &missing)],
            "missing.toml",
        ),
    ];
    for (args, env, named) in cases {
        let output = approvals(&args).envs(env).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?}: {stderr:?} should name {named}"
        );
    }
}

/// A subject with characters Rust's debug quoting writes as `\u{…}` (a decomposed accent, an
/// emoji's variation selector, DEL) is printed as TOML that parses back to it.
#[test]
fn token_new_prints_an_entry_that_parses_back_to_any_subject() {
    let subject = "Jose\u{301} \u{2764}\u{fe0f} \u{7f} \"quoted\" \\ back";
    let output = approvals(&[
        "token",
        "new",
        "--tenant",
        "acme",
        "--role",
        "agent",
        "--subject",
        subject,
    ])
    .output()
    .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let entry = stdout
        .split_once("[[auth.tokens]]")
        .expect("a config entry")
        .1;
    let parsed: toml::Value = toml::from_str(entry).expect("valid TOML");
    assert_eq!(parsed["subject"].as_str(), Some(subject));
    assert_eq!(parsed["tenant"].as_str(), Some("acme"));
}

#[test]
fn token_new_prints_a_token_and_only_its_digest() {
    let output = approvals(&[
        "token",
        "new",
        "--tenant",
        "acme",
        "--role",
        "reviewer",
        "--subject",
        "alice",
    ])
    .output()
    .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout
        .split_whitespace()
        .find(|w| w.starts_with("apv_"))
        .expect("a token");
    let entry = stdout
        .split_once("[[auth.tokens]]")
        .expect("a config entry")
        .1;
    let parsed: toml::Value = toml::from_str(entry).unwrap();
    assert_eq!(parsed["sha256"].as_str(), Some(digest_hex(token).as_str()));
    assert_eq!(parsed["tenant"].as_str(), Some("acme"));
    assert_eq!(parsed["role"].as_str(), Some("reviewer"));
    assert_eq!(
        stdout.matches(token).count(),
        1,
        "the token is printed once, the config holds its digest"
    );
    let refused = approvals(&[
        "token",
        "new",
        "--tenant",
        "a:b",
        "--role",
        "agent",
        "--subject",
        "x",
    ])
    .output()
    .unwrap();
    assert_eq!(refused.status.code(), Some(2));

    let output = approvals(&[
        "token",
        "new",
        "--tenant",
        "*",
        "--role",
        "admin",
        "--subject",
        "platform-oncall",
        "--json",
    ])
    .output()
    .unwrap();
    assert!(output.status.success());
    let minted: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let token = minted["token"].as_str().expect("token");
    assert_eq!(minted["sha256"].as_str(), Some(digest_hex(token).as_str()));
    assert_eq!(minted["tenant"], "*");
    assert_eq!(minted["role"], "admin");
    assert_eq!(minted["subject"], "platform-oncall");
}

#[tokio::test]
async fn sigterm_answers_long_polls_and_drains() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (agent, reviewer) = ("agent-token-1", "reviewer-token-1");
    let config = serve_config(
        port,
        &redis,
        agent,
        "",
        &format!(
            "[[auth.tokens]]\nsubject = \"alice\"\ntenant = \"acme\"\nrole = \"reviewer\"\nsha256 = \"{}\"\n",
            digest_hex(reviewer)
        ),
    );
    let config = write(dir.path(), "config.toml", &config);
    let mut command = approvals(&["serve", "--config", &config]);
    command.env("RUST_LOG", "info");
    let mut service = Process::spawn(command);
    // Serving once it logs so; reading its log is the event, not a guess at a delay.
    service.wait_for_line("serving", Duration::from_secs(20));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
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
                "{base}/v1/tenants/acme/approvals/req-1/decision?wait_seconds=60"
            ))
            .bearer_auth(agent);
        tokio::spawn(async move { request.send().await })
    };
    // A reviewer's live event stream, open when the signal comes: it ends, it does not hold
    // the drain for the whole grace period.
    let mut events = http
        .get(format!("{base}/v1/tenants/acme/events"))
        .bearer_auth(reviewer)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    // Wait until the long-poll is parked before signalling.
    metrics_until(
        &http,
        &base,
        Duration::from_secs(10),
        "the long-poll parking",
        |t| t.contains("approvals_long_polls_in_flight 1"),
    )
    .await;
    let signalled = Instant::now();
    service.signal(Signal::SIGTERM);
    let response = long_poll
        .await
        .unwrap()
        .expect("the long-poll is answered, not cut");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pending", "answered with the current state");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "long-polls do not hold up shutdown"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the live event stream ends on SIGTERM");
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "no longer listening"
    );
}

/// With `server.shutdown_delay`, a SIGTERM first takes the instance out of the load balancer
/// (`/readyz` 503) and keeps serving, new connections too, then drains. Without it the
/// listener closed at once while the load balancer still sent here: refused connections. A
/// second signal begins the drain at once.
#[tokio::test]
async fn sigterm_with_a_shutdown_delay_says_not_ready_and_keeps_serving_meanwhile() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = "agent-token-1";
    let config = serve_config(port, &redis, agent, "shutdown_delay = \"60s\"\n", "");
    let config = write(dir.path(), "config.toml", &config);
    let mut command = approvals(&["serve", "--config", &config]);
    command.env("RUST_LOG", "info");
    let mut service = Process::spawn(command);
    service.wait_for_line("serving", Duration::from_secs(20));
    let base = format!("http://127.0.0.1:{port}");
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    service.signal(Signal::SIGTERM);
    service.wait_for_line(
        "not ready; serving for server.shutdown_delay",
        Duration::from_secs(5),
    );
    // A fresh client each time: a new connection, as the load balancer would open.
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "out of the load balancer at once");
    let problem: Value = ready.json().await.unwrap();
    assert!(problem["code"] == "shutting_down", "{problem}");
    let submitted = reqwest::Client::new()
        .post(format!("{base}/v1/tenants/acme/approvals"))
        .bearer_auth(agent)
        .json(&serde_json::json!({"request_id": "req-late", "action": {"type": "document_read", "resource": "docs/a"}}))
        .send()
        .await
        .expect("a new connection is still taken");
    assert_eq!(submitted.status(), 200, "and its request served");

    // An operator's second signal cuts the minute short.
    service.signal(Signal::SIGTERM);
    service.wait_for_line("draining in-flight requests", Duration::from_secs(10));
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "clean exit: {status:?}");
}

/// Uploads (and, if `activate`, activates) a bundle for tenant acme that allows everything
/// with the reason "tenant policy"; the upload's status.
async fn upload_allowing_bundle(base: &str, admin: &str, activate: bool) -> u16 {
    let client = reqwest::Client::new();
    let bundle = serde_json::json!({"files": [{"path": "approvals.rego", "text":
        "package approvals\nimport rego.v1\ndecision := {\"decision\": \"allow\", \"reasons\": [\"tenant policy\"]}\n"}]});
    let uploaded = client
        .post(format!("{base}/policy/bundles"))
        .bearer_auth(admin)
        .json(&bundle)
        .send()
        .await
        .unwrap();
    let status = uploaded.status().as_u16();
    let answer = uploaded.json::<Value>().await.unwrap();
    if activate && status == 201 {
        let activated = client
            .put(format!("{base}/policy/active"))
            .bearer_auth(admin)
            .json(&serde_json::json!({ "version": answer["bundle"]["version"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(activated.status(), 200);
    }
    assert!(status == 201 || !activate, "{answer}");
    status
}

/// The sandboxes are started from the running binary, not from its path: a deploy or package
/// upgrade that removes or replaces the file before the restart made every upload answer
/// `503 policy_sandbox_unavailable` (for good, while `/readyz` stayed green), or ran the
/// children from another version.
#[tokio::test]
async fn the_policy_sandboxes_run_the_running_binary_after_its_file_is_gone() {
    let redis = RedisServer::start().await;
    // A second name for the binary (a link, not a copy: a copy's write descriptor, inherited
    // by a process another test forks meanwhile, makes its exec fail with ETXTBSY).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let copy = dir.path().join("approvals");
    std::fs::hard_link(BIN, &copy).unwrap();
    let port = free_port();
    let admin = "admin-token-1";
    let more = format!(
        "[[auth.tokens]]\nsubject = \"admin-1\"\ntenant = \"acme\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
        digest_hex(admin)
    );
    let config = serve_config(port, &redis, "agent-token-1", "", &more);
    let config = write(dir.path(), "config.toml", &config);
    let mut command = Command::new(&copy);
    command
        .args(["serve", "--config", &config])
        .env_remove("APPROVALS_CONFIG")
        .env("RUST_LOG", "info");
    let mut service = Process::spawn(command);
    service.wait_for_line("serving", Duration::from_secs(20));
    std::fs::remove_file(&copy).unwrap();

    let base = format!("http://127.0.0.1:{port}/v1/tenants/acme");
    assert_eq!(upload_allowing_bundle(&base, admin, false).await, 201);
    service.signal(Signal::SIGTERM);
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "clean exit: {status:?}");
}

/// A signal to the service's whole process group (ctrl-c in a terminal) or to every process of
/// its unit (systemd's default `KillMode`) leaves its policy sandboxes serving through the
/// shutdown delay: they died with it, and a tenant's allowed read was parked for a day as its
/// policy "stopped".
#[tokio::test]
async fn a_signal_to_the_process_group_leaves_the_policy_sandboxes_serving() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (agent, admin) = ("agent-token-1", "admin-token-1");
    let more = format!(
        "[[auth.tokens]]\nsubject = \"admin-1\"\ntenant = \"acme\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
         [limits]\npolicy_concurrency = 1\n",
        digest_hex(admin)
    );
    let config = serve_config(port, &redis, agent, "shutdown_delay = \"60s\"\n", &more);
    let config = write(dir.path(), "config.toml", &config);
    let mut command = approvals(&["serve", "--config", &config]);
    command.env("RUST_LOG", "info");
    // Its own group, as a shell gives a job: the signal below goes to that group.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut service = Process::spawn(command);
    service.wait_for_line("serving", Duration::from_secs(20));
    let base = format!("http://127.0.0.1:{port}/v1/tenants/acme");
    assert_eq!(upload_allowing_bundle(&base, admin, true).await, 201);
    let submit = |request_id: &'static str| {
        let client = reqwest::Client::new();
        let url = format!("{base}/approvals");
        async move {
            let answer = client
                .post(url)
                .bearer_auth(agent)
                .json(&serde_json::json!({"request_id": request_id,
                    "action": {"type": "document_read", "resource": "docs/a"}}))
                .send()
                .await
                .unwrap();
            answer.json::<Value>().await.unwrap()
        }
    };
    // The one evaluation thread starts its sandbox child.
    let before = submit("req-before").await;
    assert_eq!(
        before["reasons"],
        serde_json::json!(["tenant policy"]),
        "{before}"
    );

    // As systemd's KillMode=control-group does: every process of the unit is sent SIGTERM,
    // whatever its group.
    let children = std::fs::read_dir(format!("/proc/{}/task", service.pid()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|pids| {
            pids.split_whitespace()
                .filter_map(|pid| pid.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    assert!(!children.is_empty(), "the sandbox child runs");
    for child in children {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGTERM);
    }
    nix::sys::signal::killpg(service.pid(), Signal::SIGTERM).unwrap();
    service.wait_for_line(
        "not ready; serving for server.shutdown_delay",
        Duration::from_secs(5),
    );
    let during = submit("req-during").await;
    assert_eq!(during["decision"], "allow", "{during}");
    assert_eq!(
        during["reasons"],
        serde_json::json!(["tenant policy"]),
        "{during}"
    );

    service.signal(Signal::SIGTERM);
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "clean exit: {status:?}");
}

/// A signal during the drain ends it at once: a request whose body trickles in keeps the
/// drain going for `server.shutdown_grace`, and an operator's ctrl-c was swallowed (the signal
/// handlers stay installed), so only SIGKILL cut it short, before the decision log's flush.
#[tokio::test]
async fn a_second_signal_cuts_the_drain_short() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = "agent-token-1";
    let config = serve_config(
        port,
        &redis,
        agent,
        "shutdown_grace = \"30s\"\nrequest_timeout = \"30s\"\n",
        "",
    );
    let config = write(dir.path(), "config.toml", &config);
    let mut command = approvals(&["serve", "--config", &config]);
    command.env("RUST_LOG", "info");
    let mut service = Process::spawn(command);
    service.wait_for_line("serving", Duration::from_secs(20));
    // A submit whose body never finishes: in flight for the whole grace.
    let mut trickling = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/tenants/acme/approvals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {agent}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    );
    trickling.write_all(head.as_bytes()).await.unwrap();
    // `100 Continue` once the handler reads the body: the request is in flight.
    let mut answer = [0u8; 12];
    trickling.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 100");
    trickling.write_all(b"{\"request_id\": ").await.unwrap();

    service.signal(Signal::SIGTERM);
    service.wait_for_line("draining in-flight requests", Duration::from_secs(10));
    let cut = Instant::now();
    service.signal(Signal::SIGINT);
    let status = service.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        cut.elapsed() < Duration::from_secs(10),
        "exited {:?} after the second signal, not at the end of the 30 s grace",
        cut.elapsed()
    );
    drop(trickling);
}

/// A stdout decision-log sink whose reader stalled (a log shipper that stopped reading) does
/// not hold up the exit: the write blocked in a blocking task, and dropping the runtime waited
/// for it without limit, so a drained service never exited until it was killed. An empty
/// `RUST_LOG` (compose's `${RUST_LOG:-}`) keeps `log.filter` (it logged errors only, without a
/// word), and a variable of another program that is not UTF-8 is skipped (it panicked).
#[tokio::test]
async fn a_stalled_stdout_sink_does_not_hold_up_the_exit() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = "agent-token-1";
    let config = serve_config(
        port,
        &redis,
        agent,
        "shutdown_grace = \"2s\"\n",
        "[decision_log]\nsink = \"stdout\"\n",
    );
    let config = write(dir.path(), "config.toml", &config);
    let mut command = approvals(&["serve", "--config", &config]);
    command
        .env("RUST_LOG", "")
        .env(
            std::ffi::OsStr::new("NOT_OURS"),
            std::os::unix::ffi::OsStrExt::from_bytes(b"caf\xe9") as &std::ffi::OsStr,
        )
        // Piped and never read: once the pipe's 64 KiB are full, every write blocks.
        .stdout(std::process::Stdio::piped());
    let mut service = Process::spawn(command);
    // An info line: the empty RUST_LOG did not cut the log to errors.
    service.wait_for_line("serving", Duration::from_secs(20));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Each verdict is a line of about 600 bytes on stdout: 300 fill the pipe.
    for n in 0..300 {
        let answered = http
            .post(format!("{base}/v1/tenants/acme/approvals"))
            .bearer_auth(agent)
            .json(&serde_json::json!({"request_id": format!("read-{n}"), "action": {"type": "document_read", "resource": "docs/handbook/onboarding.md"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(answered.status(), 200);
    }
    // Grace (2 s) and the decision log's last try (5 s), then the exit's own 2 s.
    let (status, took) = service.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?} after {took:?}");
}

/// An `approvals dev` that has printed its banner: the tokens it exported, its Redis port and
/// every line up to the last token.
struct Dev {
    service: Process,
    tokens: std::collections::HashMap<String, String>,
    redis_port: u16,
    banner: String,
    redis_log: std::path::PathBuf,
    /// The log's length before this start: it is kept across starts.
    redis_log_start: usize,
}

async fn start_dev(data: &Path, port: u16, cwd: &Path, extra: &[&str]) -> Dev {
    let redis_log = data.join("redis.log");
    let redis_log_start = std::fs::read(&redis_log).map_or(0, |log| log.len());
    let mut command = approvals(&["dev", "--listen", &format!("127.0.0.1:{port}")]);
    command
        .args(["--data-dir", &data.display().to_string()])
        .args(extra)
        .current_dir(cwd)
        .stderr(Stdio::null());
    let mut service = Process::spawn_reading(command, Output::Stdout);
    let mut tokens = std::collections::HashMap::new();
    let mut redis_port = None;
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokens.len() < 3 {
        let line = service.next_line(deadline).expect("dev printed its tokens");
        banner.push_str(&line);
        banner.push('\n');
        if let Some(rest) = line.split("redis-server on port ").nth(1) {
            redis_port = rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok());
        }
        if let Some((name, token)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|l| l.split_once('='))
        {
            tokens.insert(name.to_owned(), token.to_owned());
        }
    }
    wait_ready(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(20),
    )
    .await;
    Dev {
        service,
        tokens,
        redis_port: redis_port.expect("dev printed the redis port"),
        banner,
        redis_log,
        redis_log_start,
    }
}

impl Dev {
    /// Ctrl-c: the service exits cleanly and its redis-server child is gone, shut down as
    /// Redis should be (it was killed outright, cutting an AOF rewrite short).
    async fn stop(mut self) {
        self.service.signal(Signal::SIGINT);
        let status = self.service.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "{status:?}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", self.redis_port)).is_err(),
            "the redis-server child is stopped"
        );
        let log = std::fs::read(&self.redis_log).unwrap_or_default();
        let said = String::from_utf8_lossy(&log[self.redis_log_start.min(log.len())..]);
        assert!(
            said.contains("ready to exit"),
            "redis-server shut down cleanly:\n{said}"
        );
    }
}

/// The README's first command: `approvals dev` starts Redis, prints tokens and curl lines
/// that work, and stops its redis-server on ctrl-c. Started again on the same folder, from a
/// folder that is not a checkout, it serves the same data with the same tokens and the bundled
/// policy.
#[tokio::test]
async fn dev_prints_working_tokens_keeps_them_and_cleans_up_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dev = start_dev(&data, port, checkout, &[]).await;
    assert!(
        dev.banner.contains("policy from ./policies"),
        "{}",
        dev.banner
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // The three printed curl commands, as requests.
    let submitted = http
        .post(format!("{base}/v1/tenants/demo/approvals"))
        .bearer_auth(&dev.tokens["AGENT"])
        .json(&serde_json::json!({"request_id": "req-1", "action": {"type": "document_read", "resource": "finance/q3-report"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 201);
    let listed: Value = http
        .get(format!("{base}/v1/tenants/demo/approvals"))
        .bearer_auth(&dev.tokens["REVIEWER"])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["id"], "req-1");
    let accepted = http
        .post(format!("{base}/v1/tenants/demo/approvals/req-1/accept"))
        .bearer_auth(&dev.tokens["REVIEWER"])
        .json(&serde_json::json!({"reason": "looks fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let first_tokens = dev.tokens.clone();
    // The inbox's session key is kept beside the tokens, random: one derived from the admin
    // token could be computed from the digest every session cookie carries.
    let kept = |data: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(data.join("demo-tokens.json")).unwrap())
            .unwrap()
    };
    let secret = kept(&data)["session_secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32, "{secret}");
    let admin_digest = approvals::auth::digest_hex(&dev.tokens["ADMIN"]);
    assert!(!secret.contains(&admin_digest), "{secret}");
    dev.stop().await;
    assert!(
        data.join("appendonlydir").exists(),
        "Redis kept its data in the dev folder"
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let again = start_dev(&data, port, elsewhere.path(), &[]).await;
    assert_eq!(
        again.tokens, first_tokens,
        "the same tokens after a restart"
    );
    assert_eq!(
        kept(&data)["session_secret"],
        secret,
        "inbox sessions outlive a restart"
    );
    assert!(
        again.banner.contains("kept from the last start"),
        "{}",
        again.banner
    );
    assert!(
        again.banner.contains("the bundled default"),
        "{}",
        again.banner
    );
    let read: Value = http
        .get(format!("{base}/v1/tenants/demo/approvals/req-1"))
        .bearer_auth(&again.tokens["AGENT"])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["status"], "accepted", "{read}");
    // The bundled policy decides as the checkout's does.
    let deleted = http
        .post(format!("{base}/v1/tenants/demo/approvals"))
        .bearer_auth(&again.tokens["AGENT"])
        .json(&serde_json::json!({"request_id": "req-2", "action": {"type": "file_delete", "resource": "notes.txt"}}))
        .send()
        .await
        .unwrap();
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(deleted["decision"], "deny", "{deleted}");
    again.stop().await;
}

/// One `approvals dev` per data folder: a second one on the same folder is refused, naming
/// the first, before it starts a redis-server on the same AOF. A `kill -9` of the first takes
/// its redis-server with it (no handler runs: the kernel does it) and frees the folder, so the
/// next start serves the kept data.
#[tokio::test]
async fn dev_holds_its_data_folder_and_its_redis_server_dies_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut first = start_dev(&data, free_port(), checkout, &[]).await;

    let output = approvals(&[
        "dev",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        &data.display().to_string(),
    ])
    .current_dir(checkout)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "in use by another approvals dev (pid {})",
            first.service.pid()
        )),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("redis-server on port"),
        "no second redis-server"
    );

    first.service.kill_hard();
    // The kernel delivers the child's SIGKILL as the parent exits; nothing announces the
    // child's end to this test, so its port is polled.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", first.redis_port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "redis-server outlived its approvals dev"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = start_dev(&data, free_port(), checkout, &[]).await;
    assert_eq!(again.tokens, first.tokens, "the kept folder is served");
    again.stop().await;
}

/// With its address taken, `approvals dev` says so once, with the flag to change it, before
/// starting anything or printing tokens; a `--policies` folder without Rego is named.
#[test]
fn dev_refuses_a_busy_port_and_an_empty_policy_folder_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let data = dir.path().join("data").display().to_string();
    let output = approvals(&["dev", "--listen", &addr, "--data-dir", &data])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stdout.contains("export"), "nothing printed: {stdout}");
    assert_eq!(stderr.matches("--listen").count(), 1, "said once: {stderr}");
    assert!(stderr.contains(&addr), "{stderr}");

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let port = free_port().to_string();
    let output = approvals(&[
        "dev",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &data,
        "--policies",
        &empty.display().to_string(),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no .rego files"), "{stderr}");
}

/// A redis-server that cannot start (here: the kept AOF is unreadable) stops `approvals dev`
/// with exit 1 before it prints tokens, instead of a demo answering 503 to everything.
#[test]
fn dev_stops_when_its_redis_server_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("appendonlydir")).unwrap();
    std::fs::write(
        data.join("appendonlydir/appendonly.aof.manifest"),
        "not a manifest\n",
    )
    .unwrap();
    let port = free_port().to_string();
    let mut child = approvals(&[
        "dev",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &data.display().to_string(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("approvals dev kept running without its redis-server");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("redis-server stopped at start"), "{stderr}");
    // Its own reason, from its log: it went to a null stdout.
    assert!(stderr.contains("Invalid AOF manifest"), "{stderr}");
    assert!(!stdout.contains("export"), "no tokens printed: {stdout}");
}

/// `backend.kind = "dual"` that cannot work stops start-up with exit 2 and says why: without
/// `backend.primary` (or with `dual` as its own primary), and in a build without the `temporal`
/// feature, which it needs for its other half.
#[test]
fn dual_backend_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut refused = vec![
        ("kind = \"dual\"\n", "backend.primary: required"),
        (
            "kind = \"dual\"\nprimary = \"dual\"\n",
            "backend.primary: unknown variant",
        ),
    ];
    if cfg!(not(feature = "temporal")) {
        refused.push((
            "kind = \"dual\"\nprimary = \"redis\"\n",
            "--features temporal",
        ));
    }
    for (backend, expected) in refused {
        let config = write(
            dir.path(),
            "dual.toml",
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[backend]\n{backend}[policy]\ndir = \"{}\"\n",
                policies.display()
            ),
        );
        let output = approvals(&["serve", "--config", &config]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{backend}: {stderr}");
        assert!(stderr.contains(expected), "{backend}: {stderr}");
    }
}

/// Without the `temporal` feature, `approvals worker` and `backend.kind = "temporal"` exit 2
/// saying how to build with it (scripts/test.sh runs this in its Redis-only pass).
#[cfg(not(feature = "temporal"))]
#[test]
fn without_the_temporal_feature_worker_and_temporal_backend_say_how_to_build() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "temporal.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[backend]\nkind = \"temporal\"\n[policy]\ndir = \"{}\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").display()
        ),
    );
    for args in [
        vec!["worker", "--config", &config],
        vec!["serve", "--config", &config],
    ] {
        let output = approvals(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--features temporal"), "{args:?}: {stderr}");
    }
}

/// An empty `APPROVALS_CONFIG` (compose's `${APPROVALS_CONFIG:-}`, a chart's `""`) means no
/// file: every command stopped with exit 2 asking for a `--config` value nobody passed.
#[test]
fn an_empty_config_variable_means_no_file() {
    let port = free_port();
    let output = Command::new(BIN)
        .arg("healthcheck")
        .env("APPROVALS_CONFIG", "")
        .env("APPROVALS_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // 1: read the (default) configuration and found nothing ready on that port.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("--config"), "{stderr}");
}

/// A Redis that may evict keys would lose approvals silently: `serve` refuses it with exit 2
/// and says which setting; `redis.allow_eviction` is the explicit way past.
#[tokio::test]
async fn an_evicting_redis_is_refused_at_start_up() {
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = |extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[redis]\nurl = \"{}\"\n{extra}[policy]\n\
             dir = \"{}\"\n",
            redis.url(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("policies")
                .display(),
        )
    };
    let refused = write(dir.path(), "refused.toml", &config(""));
    let output = approvals(&["serve", "--config", &refused])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("maxmemory-policy is allkeys-lru") && stderr.contains("noeviction"),
        "{stderr}"
    );
    let allowed = write(
        dir.path(),
        "allowed.toml",
        &config("allow_eviction = true\n"),
    );
    let mut service = Process::spawn(approvals(&["serve", "--config", &allowed]));
    service.wait_for_line("may evict approvals", Duration::from_secs(20));
    service.wait_for_line("serving", Duration::from_secs(20));
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(Duration::from_secs(10)).await.success());
}

/// A Redis in cluster mode is refused at start-up, saying why: every script writes keys of
/// several slots, so each submit failed `CROSSSLOT` while `/readyz` (a one-key probe) was 200.
#[tokio::test]
async fn a_redis_in_cluster_mode_is_refused_at_start_up() {
    let redis = RedisServer::start_with(&["--cluster-enabled", "yes"]).await;
    let mut conn = redis.connection().await;
    // Every slot served here: the cluster works, as one node.
    let () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut conn)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = serve_config(free_port(), &redis, "agent-token-1", "", "");
    let config = write(dir.path(), "config.toml", &config);
    // A child that served instead would never exit: read its log for the reason, with a
    // deadline, rather than wait for its exit.
    let mut service = Process::spawn(approvals(&["serve", "--config", &config]));
    service.wait_for_line("cluster mode", Duration::from_secs(20));
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "{status:?}");
}

/// The per-request log line is off by default (it costs a formatted write per request) and
/// on with `server.access_log`, naming the route and status; server errors are logged either
/// way.
#[tokio::test]
async fn the_access_log_is_off_unless_asked_for() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    for access_log in [false, true] {
        let port = free_port();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\naccess_log = {access_log}\n[redis]\nurl = \"{}\"\n\
             [policy]\ndir = \"{}\"\n",
            redis.url(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policies").display(),
        );
        let config = write(dir.path(), "config.toml", &config);
        let mut command = approvals(&["serve", "--config", &config]);
        command.env("RUST_LOG", "info");
        let mut service = Process::spawn(command);
        service.wait_for_line("serving", Duration::from_secs(20));
        let answered = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .unwrap();
        assert_eq!(answered.status(), 200);
        if access_log {
            let line = service.wait_for_line("answered", Duration::from_secs(10));
            assert!(line.contains("/healthz") && line.contains("200"), "{line}");
        }
        let (status, _) = service.terminate(Duration::from_secs(10)).await;
        assert!(status.success());
        // Every line the service wrote, up to its exit, has been read by now.
        let log = service.log();
        assert_eq!(log.contains("answered"), access_log, "{log}");
    }
}

/// `approvals healthcheck` asks `/readyz` where the configuration (the file, then the
/// environment) says the service listens, on loopback for an unspecified address as in a
/// container: 0 while ready; 1 naming the answer once Redis is gone, or saying nothing answered;
/// 2 for a configuration it cannot read. The image's probe was curl on a fixed port 8080.
#[tokio::test]
async fn healthcheck_probes_the_configured_listen_address() {
    let mut redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write(
        dir.path(),
        "config.toml",
        &serve_config(port, &redis, "agent-token-1", "", ""),
    );
    let anywhere = format!("0.0.0.0:{port}");
    let mut command = approvals(&["serve", "--config", &config]);
    command
        .env("RUST_LOG", "info")
        .env("APPROVALS_SERVER__LISTEN", &anywhere);
    let mut service = Process::spawn(command);
    service.wait_for_line("serving", Duration::from_secs(20));
    let probe = |listen: &str| {
        approvals(&["healthcheck", "--config", &config])
            .env("APPROVALS_SERVER__LISTEN", listen)
            .output()
            .expect("healthcheck runs")
    };
    let ready = probe(&anywhere);
    assert!(ready.status.success(), "{ready:?}");

    let nothing_there = probe(&format!("127.0.0.1:{}", free_port()));
    assert_eq!(nothing_there.status.code(), Some(1), "{nothing_there:?}");
    assert!(
        String::from_utf8_lossy(&nothing_there.stderr).contains("no answer"),
        "{nothing_there:?}"
    );

    redis.stop();
    let not_ready = probe(&anywhere);
    assert_eq!(not_ready.status.code(), Some(1), "{not_ready:?}");
    let said = String::from_utf8_lossy(&not_ready.stderr).into_owned();
    assert!(
        said.contains("503") && said.contains("backend_unavailable"),
        "{said}"
    );

    let unreadable = write(dir.path(), "bad.toml", "[server]\nlisten = 1\n");
    let refused = approvals(&["healthcheck", "--config", &unreadable])
        .output()
        .expect("healthcheck runs");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
}

/// An instance that cannot take its port exits before its engine starts: it recorded the
/// expiries of a restart's backlog (its sweeper's first pass) and exited before shipping or
/// counting them, which no other instance would ever do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_listen_expires_nothing() {
    use approvals::config::{EngineKind, Settings};
    use approvals_core::conformance::pending;
    use redis::AsyncCommands;

    let redis = RedisServer::start().await;
    let acme = approvals_core::TenantId::parse("acme").unwrap();
    let mut settings = Settings::default();
    settings.redis.url = redis.url();
    let engine = approvals::engines::connect(EngineKind::Redis, &settings)
        .await
        .unwrap();
    let lapsed = pending(&acme, "lapsed-1", Duration::from_millis(1));
    engine.import(lapsed.clone()).await.unwrap();
    let mut conn = redis.connection().await;
    // The deadline has passed (by Redis' clock, which the sweeper reads).
    let deadline_ms = u64::try_from(lapsed.expires_at.as_millis()).unwrap();
    loop {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        if secs * 1000 + micros / 1000 > deadline_ms {
            break;
        }
        tokio::task::yield_now().await;
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = serve_config(port, &redis, "agent-token-1", "", "");
    let config = write(dir.path(), "config.toml", &config);
    let output = approvals(&["serve", "--config", &config]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot listen"),
        "{output:?}"
    );
    // Still pending, its expiry unrecorded: the record's key lapsed with its deadline (the
    // ADR's layout) and the copy kept to record the expiry later is still there.
    let record: Option<String> = conn.get("approval:acme:lapsed-1").await.unwrap();
    assert_eq!(record, None, "its expiry was recorded");
    let kept: bool = conn.exists("approvals:shadow:acme:lapsed-1").await.unwrap();
    assert!(kept);
}

/// What the service counts from its first moment reaches `/metrics`: approvals that lapsed
/// while it was down are recorded as expired by the sweeper's first pass, at start-up, and
/// counted. The recorder was installed after the engine's chores (and the tenants' policies'
/// first read) had started, and those first counts went to no recorder: an expiry backlog
/// after a restart never reached the expiry-rate alert or the sweeper-lag histogram.
#[tokio::test]
async fn expiries_recorded_at_start_up_are_counted() {
    use approvals::config::{EngineKind, Settings};
    use approvals_core::conformance::pending;

    let redis = RedisServer::start().await;
    let acme = approvals_core::TenantId::parse("acme").unwrap();
    let mut settings = Settings::default();
    settings.redis.url = redis.url();
    let engine = approvals::engines::connect(EngineKind::Redis, &settings)
        .await
        .unwrap();
    let lapsed =
        ["lapsed-1", "lapsed-2", "lapsed-3"].map(|id| pending(&acme, id, Duration::from_secs(1)));
    let deadline = lapsed.iter().map(|a| a.expires_at).max().unwrap();
    for approval in lapsed {
        engine.import(approval).await.unwrap();
    }
    // The service is down while they lapse.
    let left = deadline.as_millis() - approvals_core::Timestamp::now().as_millis();
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(left).unwrap_or(0) + 100,
    ))
    .await;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = serve_config(port, &redis, "agent-token-1", "", "");
    let config = write(dir.path(), "config.toml", &config);
    let mut service = Process::spawn(approvals(&["serve", "--config", &config]));
    service.wait_for_line("serving", Duration::from_secs(20));
    let base = format!("http://127.0.0.1:{port}");
    metrics_until(
        &reqwest::Client::new(),
        &base,
        Duration::from_secs(20),
        "the three expiries counted",
        |text| {
            text.contains("approvals_decisions_total{tenant=\"acme\",outcome=\"expired\"} 3")
                && text.contains("approvals_sweeper_lag_seconds_count 3")
        },
    )
    .await;
}
