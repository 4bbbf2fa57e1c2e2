//! approvals-bench: the load generator behind scripts/bench.sh.
//!
//! It drives the same api-v1 HTTP load at any server (our Rust service or the ADR FastAPI
//! peer) and prints one machine-readable line per measurement on stdout:
//!
//! ```text
//! RESULT target=ours scenario=submit ops=123456 secs=10.000 ops_per_sec=12345.6 p50_ms=4.210 p99_ms=9.870 max_ms=31.200 errors=0 error_kinds=-
//! ```
//!
//! plus a human-readable line on stderr. Scenarios:
//!
//! - `submit`: workers POST a `document_read` of `finance/q3-report` (no `request_id`, so every
//!   call parks a fresh approval); only `201` counts as a success.
//! - `submit-decide`: one operation is a submit (`201`) followed by the reviewer's accept (`200`).
//! - `wakeup`: parks N long-polls on N fresh approvals, accepts them one by one and measures
//!   how long after each accept *returned* its waiter got its answer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The action every scenario submits: our default policy answers `require_approval` for a
/// finance read, and the ADR peer has no policy engine (it always does).
const SUBMIT_BODY: &str = r#"{"action":{"type":"document_read","resource":"finance/q3-report"},"context":{"on_behalf_of":"project_alpha","purpose":"benchmark"}}"#;
const DECIDE_BODY: &str = "{}";
/// Deadline of one submit or decision call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "approvals-bench",
    about = "Drive api-v1 load at an approvals server and print RESULT lines"
)]
struct Cli {
    /// Base URL of the server, e.g. http://127.0.0.1:8080
    #[arg(long, env = "BENCH_URL")]
    url: String,
    /// Tenant the tokens belong to.
    #[arg(long, env = "BENCH_TENANT", default_value = "bench")]
    tenant: String,
    /// Bearer token of an agent of the tenant.
    #[arg(long, env = "BENCH_AGENT_TOKEN", hide_env_values = true)]
    agent_token: String,
    /// Bearer token of a reviewer of the tenant (a different subject than the agent).
    #[arg(long, env = "BENCH_REVIEWER_TOKEN", hide_env_values = true)]
    reviewer_token: String,
    /// Label of the server in the RESULT lines (e.g. `ours`, `peer`).
    #[arg(long, default_value = "target")]
    target: String,
    /// Worker threads of the load generator's runtime (it shares the machine with the server).
    #[arg(long, env = "BENCH_THREADS", default_value_t = 2)]
    threads: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Closed-loop submits: every worker POSTs a new approval as soon as the last one returned.
    Submit(LoadArgs),
    /// Closed-loop submit-then-accept: one operation is both calls.
    SubmitDecide(LoadArgs),
    /// Decision wake-up latency of parked long-polls.
    Wakeup(WakeupArgs),
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// How long to measure (after the warm-up), e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent workers (each with its own in-flight request; connections are pooled).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Load before the measurement starts, discarded (connections, caches, JIT-less warm-up).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

#[derive(Args, Clone)]
struct WakeupArgs {
    /// Number of approvals, each with one parked long-poll.
    #[arg(long, default_value_t = 200)]
    waiters: usize,
    /// `wait_seconds` of the long-polls; decisions must all land well within it.
    #[arg(long, default_value_t = 30)]
    wait_seconds: u64,
    /// How many accepts are in flight at once (1: one after the other).
    #[arg(long, default_value_t = 1)]
    decide_concurrency: usize,
    /// Fixed settle time before deciding, used when the server's /metrics has no waiter gauge.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Longest wait for the waiter gauge to show every long-poll parked.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    park_timeout: Duration,
    /// Exact name of the waiter gauge in /metrics; by default any gauge-like sample whose name
    /// contains `waiter` or `long_poll` (summed over its labels).
    #[arg(long)]
    waiters_metric: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("approvals-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("approvals-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let api = Arc::new(Api::new(&cli)?);
    let report = match &cli.scenario {
        Scenario::Submit(args) => {
            api.preflight(false).await?;
            run_load(&api, args, false).await
        }
        Scenario::SubmitDecide(args) => {
            api.preflight(true).await?;
            run_load(&api, args, true).await
        }
        Scenario::Wakeup(args) => run_wakeup(&api, args).await?,
    };
    report.print(&cli.target);
    Ok(())
}

/// Why one operation failed, as a short label for `error_kinds`.
#[derive(Debug)]
struct OpError {
    kind: String,
    /// A connection-level failure: back off a little instead of spinning.
    transport: bool,
}

impl OpError {
    fn status(call: &str, status: StatusCode) -> Self {
        Self {
            kind: format!("{call}_{}", status.as_u16()),
            transport: false,
        }
    }

    fn transport(call: &str, err: &reqwest::Error) -> Self {
        let what = if err.is_timeout() {
            "timeout"
        } else if err.is_connect() {
            "connect"
        } else {
            "transport"
        };
        Self {
            kind: format!("{call}_{what}"),
            transport: true,
        }
    }

    fn other(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            transport: false,
        }
    }
}

/// The api-v1 calls the scenarios make, with pooled keep-alive connections.
struct Api {
    client: Client,
    base: String,
    approvals_url: String,
    agent_auth: HeaderValue,
    reviewer_auth: HeaderValue,
}

impl Api {
    fn new(cli: &Cli) -> Result<Self, String> {
        let client = Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let bearer = |token: &str, which: &str| {
            HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| format!("the {which} token is not a valid header value"))
        };
        let base = cli.url.trim_end_matches('/').to_owned();
        Ok(Self {
            client,
            approvals_url: format!("{base}/v1/tenants/{}/approvals", cli.tenant),
            base,
            agent_auth: bearer(&cli.agent_token, "agent")?,
            reviewer_auth: bearer(&cli.reviewer_token, "reviewer")?,
        })
    }

    /// Submits one approval; `201` is the only success. Returns the approval's id when asked.
    async fn submit(&self, want_id: bool) -> Result<Option<String>, OpError> {
        let resp = self
            .client
            .post(&self.approvals_url)
            .header(AUTHORIZATION, self.agent_auth.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(SUBMIT_BODY)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| OpError::transport("submit", &e))?;
        let status = resp.status();
        // Always read the whole body: an operation ends when its response has fully arrived.
        let body = resp
            .bytes()
            .await
            .map_err(|e| OpError::transport("submit", &e))?;
        if status != StatusCode::CREATED {
            return Err(OpError::status("submit", status));
        }
        if !want_id {
            return Ok(None);
        }
        let json: Value =
            serde_json::from_slice(&body).map_err(|_| OpError::other("submit_bad_json"))?;
        match json.pointer("/approval/id").and_then(Value::as_str) {
            Some(id) => Ok(Some(id.to_owned())),
            None => Err(OpError::other("submit_no_id")),
        }
    }

    /// The reviewer accepts an approval; `200` is the only success.
    async fn accept(&self, id: &str) -> Result<(), OpError> {
        let resp = self
            .client
            .post(format!("{}/{id}/accept", self.approvals_url))
            .header(AUTHORIZATION, self.reviewer_auth.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(DECIDE_BODY)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| OpError::transport("accept", &e))?;
        let status = resp.status();
        resp.bytes()
            .await
            .map_err(|e| OpError::transport("accept", &e))?;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(OpError::status("accept", status))
        }
    }

    /// One submit, or a submit and its accept: the unit of the closed-loop scenarios.
    async fn operation(&self, decide: bool) -> Result<(), OpError> {
        let id = self.submit(decide).await?;
        match id {
            Some(id) => self.accept(&id).await,
            None => Ok(()),
        }
    }

    /// The agent's long-poll; returns the approval's status when the server answered `200`.
    async fn wait_decision(&self, id: &str, wait_seconds: u64) -> Result<String, OpError> {
        let resp = self
            .client
            .get(format!(
                "{}/{id}/decision?wait_seconds={wait_seconds}",
                self.approvals_url
            ))
            .header(AUTHORIZATION, self.agent_auth.clone())
            .timeout(Duration::from_secs(wait_seconds + 15))
            .send()
            .await
            .map_err(|e| OpError::transport("waiter", &e))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| OpError::transport("waiter", &e))?;
        if status != StatusCode::OK {
            return Err(OpError::status("waiter", status));
        }
        let json: Value =
            serde_json::from_slice(&body).map_err(|_| OpError::other("waiter_bad_json"))?;
        Ok(json
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("missing")
            .to_owned())
    }

    /// The sum of the server's waiter gauge, or `None` when /metrics is absent or has none.
    async fn waiter_gauge(&self, exact: Option<&str>) -> Option<f64> {
        let resp = self
            .client
            .get(format!("{}/metrics", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let text = resp.text().await.ok()?;
        sum_waiter_samples(&text, exact)
    }

    /// One submit (and accept) before measuring, so a misconfigured run fails loudly with the
    /// server's answer instead of reporting a throughput of errors.
    async fn preflight(&self, decide: bool) -> Result<(), String> {
        let resp = self
            .client
            .post(&self.approvals_url)
            .header(AUTHORIZATION, self.agent_auth.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(SUBMIT_BODY)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("preflight submit to {}: {e}", self.approvals_url))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status != StatusCode::CREATED {
            return Err(format!(
                "preflight submit: expected 201 (require_approval), got {status}: {body}"
            ));
        }
        if decide {
            let id = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.pointer("/approval/id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .ok_or_else(|| format!("preflight submit: no approval.id in {body}"))?;
            self.accept(&id)
                .await
                .map_err(|e| format!("preflight accept of {id}: {}", e.kind))?;
        }
        Ok(())
    }
}

/// Sums the samples of the waiter gauge in a Prometheus text exposition: the metric named
/// `exact`, or else every sample whose name contains `waiter` or `long_poll` (ours is
/// `approvals_long_polls_in_flight`) and is not a histogram/summary part or a counter.
/// `None` when there is no such sample.
fn sum_waiter_samples(text: &str, exact: Option<&str>) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let wanted = match exact {
            Some(exact) => name == exact,
            None => {
                (name.contains("waiter") || name.contains("long_poll"))
                    && !["_bucket", "_sum", "_count", "_total", "_created"]
                        .iter()
                        .any(|suffix| name.ends_with(suffix))
            }
        };
        if !wanted {
            continue;
        }
        // The value follows the labels (which may contain spaces inside quotes).
        let rest = match line[name_end..].rfind('}') {
            Some(close) => &line[name_end + close + 1..],
            None => &line[name_end..],
        };
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// What one measurement found.
struct Report {
    scenario: &'static str,
    ops: usize,
    secs: f64,
    /// Latencies of the successful operations, in microseconds (clamped at 0 for wake-ups).
    latencies_us: Vec<i64>,
    /// Wake-up only: the signed latencies (a waiter may be answered before the accept returns).
    raw_us: Option<Vec<i64>>,
    errors: BTreeMap<String, usize>,
    /// Free-form `key=value` pairs appended to the RESULT line.
    extra: Vec<(String, String)>,
}

impl Report {
    fn print(mut self, target: &str) {
        self.latencies_us.sort_unstable();
        let ms = |us: Option<i64>| {
            us.map_or_else(|| "nan".to_owned(), |v| format!("{:.3}", v as f64 / 1000.0))
        };
        let p50 = ms(percentile(&self.latencies_us, 50.0));
        let p99 = ms(percentile(&self.latencies_us, 99.0));
        let max = ms(self.latencies_us.last().copied());
        let errors: usize = self.errors.values().sum();
        let error_kinds = if self.errors.is_empty() {
            "-".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, n)| format!("{k}:{n}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let ops_per_sec = if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        };
        let mut line = format!(
            "RESULT target={target} scenario={} ops={} secs={:.3} ops_per_sec={ops_per_sec:.1} \
             p50_ms={p50} p99_ms={p99} max_ms={max} errors={errors} error_kinds={error_kinds}",
            self.scenario, self.ops, self.secs
        );
        if let Some(mut raw) = self.raw_us.take() {
            raw.sort_unstable();
            let _ = write!(
                line,
                " raw_min_ms={} raw_p50_ms={} raw_p99_ms={}",
                ms(raw.first().copied()),
                ms(percentile(&raw, 50.0)),
                ms(percentile(&raw, 99.0))
            );
        }
        for (k, v) in &self.extra {
            let _ = write!(line, " {k}={v}");
        }
        println!("{line}");
        eprintln!(
            "{target:>6} {:<13} {:>8} ops in {:>6.2} s = {ops_per_sec:>9.1} ops/s   p50 {p50} ms   p99 {p99} ms   max {max} ms   errors {errors} ({error_kinds})",
            self.scenario, self.ops, self.secs
        );
    }
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Per-worker tallies of a closed-loop run.
#[derive(Default)]
struct WorkerStats {
    latencies_us: Vec<i64>,
    errors: BTreeMap<String, usize>,
    last_finish: Option<Instant>,
}

/// `concurrency` workers, each issuing one operation after the other until the deadline.
/// Operations started during the warm-up are not counted; the measured span runs from the
/// end of the warm-up to the end of the last counted operation.
async fn run_load(api: &Arc<Api>, args: &LoadArgs, decide: bool) -> Report {
    let measure_from = Instant::now() + args.warmup;
    let end = measure_from + args.duration;
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let api = Arc::clone(api);
        workers.spawn(async move {
            let mut stats = WorkerStats::default();
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                let outcome = api.operation(decide).await;
                let finished = Instant::now();
                let backoff = matches!(&outcome, Err(e) if e.transport);
                if started >= measure_from {
                    stats.last_finish =
                        Some(stats.last_finish.map_or(finished, |t| t.max(finished)));
                    match outcome {
                        Ok(()) => stats.latencies_us.push(micros(finished - started)),
                        Err(e) => *stats.errors.entry(e.kind).or_default() += 1,
                    }
                }
                if backoff {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            stats
        });
    }
    let mut latencies_us = Vec::new();
    let mut errors = BTreeMap::new();
    let mut last_finish: Option<Instant> = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(stats) => {
                latencies_us.extend(stats.latencies_us);
                for (kind, n) in stats.errors {
                    *errors.entry(kind).or_default() += n;
                }
                if let Some(t) = stats.last_finish {
                    last_finish = Some(last_finish.map_or(t, |l| l.max(t)));
                }
            }
            Err(e) => *errors.entry(format!("worker_panicked: {e}")).or_default() += 1,
        }
    }
    let secs = last_finish.map_or(args.duration, |t| t.saturating_duration_since(measure_from));
    Report {
        scenario: if decide { "submit-decide" } else { "submit" },
        ops: latencies_us.len(),
        secs: secs.as_secs_f64(),
        latencies_us,
        raw_us: None,
        errors,
        extra: vec![("concurrency".into(), args.concurrency.to_string())],
    }
}

/// Decision wake-up latency: N approvals, N parked long-polls, then N accepts. A waiter's
/// latency is the instant its `200` arrived minus the instant its approval's accept returned.
async fn run_wakeup(api: &Arc<Api>, args: &WakeupArgs) -> Result<Report, String> {
    let n = args.waiters;

    // 1. Park N approvals (16 submits in flight).
    let limit = Arc::new(Semaphore::new(16));
    let mut submits = JoinSet::new();
    for idx in 0..n {
        let api = Arc::clone(api);
        let limit = Arc::clone(&limit);
        submits.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (idx, api.submit(true).await)
        });
    }
    let mut ids = vec![String::new(); n];
    while let Some(joined) = submits.join_next().await {
        match joined.map_err(|e| format!("submit task: {e}"))? {
            (idx, Ok(Some(id))) => ids[idx] = id,
            (_, Ok(None)) => return Err("submit returned no id".into()),
            (_, Err(e)) => return Err(format!("wakeup setup: submit failed ({})", e.kind)),
        }
    }

    // 2. One long-poll per approval.
    let baseline = api.waiter_gauge(args.waiters_metric.as_deref()).await;
    let mut waiters = JoinSet::new();
    for (idx, id) in ids.iter().cloned().enumerate() {
        let api = Arc::clone(api);
        let wait_seconds = args.wait_seconds;
        waiters.spawn(async move {
            let outcome = api.wait_decision(&id, wait_seconds).await;
            (idx, Instant::now(), outcome)
        });
    }

    // 3. Wait until they are parked. With a waiter gauge in /metrics: until it has grown by N
    //    (plus a short grace for the subscription behind it). Without one (the ADR peer has no
    //    /metrics): a fixed settle time, which is good enough for a benchmark (a test would
    //    need a real signal) since a parked waiter stays parked for `wait_seconds`.
    let parked_by = match baseline {
        Some(base) => {
            let deadline = Instant::now() + args.park_timeout;
            let mut reached = false;
            while Instant::now() < deadline {
                let now = api
                    .waiter_gauge(args.waiters_metric.as_deref())
                    .await
                    .unwrap_or(0.0);
                if now - base >= n as f64 {
                    reached = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if reached {
                "gauge"
            } else {
                eprintln!(
                    "approvals-bench: the waiter gauge did not reach +{n} within {:?}; deciding anyway",
                    args.park_timeout
                );
                "gauge_timeout"
            }
        }
        None => {
            tokio::time::sleep(args.settle).await;
            "settle"
        }
    };

    // 4. Accept every approval, recording when each accept returned.
    let decide_started = Instant::now();
    let limit = Arc::new(Semaphore::new(args.decide_concurrency.max(1)));
    let mut accepts = JoinSet::new();
    for (idx, id) in ids.iter().cloned().enumerate() {
        let api = Arc::clone(api);
        let permit = Arc::clone(&limit)
            .acquire_owned()
            .await
            .map_err(|e| format!("decide semaphore: {e}"))?;
        accepts.spawn(async move {
            let outcome = api.accept(&id).await;
            let returned = Instant::now();
            drop(permit);
            (idx, returned, outcome)
        });
    }
    let mut accepted_at: Vec<Option<Instant>> = vec![None; n];
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(joined) = accepts.join_next().await {
        match joined {
            Ok((idx, returned, Ok(()))) => accepted_at[idx] = Some(returned),
            Ok((_, _, Err(e))) => *errors.entry(e.kind).or_default() += 1,
            Err(e) => *errors.entry(format!("accept_task: {e}")).or_default() += 1,
        }
    }
    let decide_secs = decide_started.elapsed().as_secs_f64();

    // 5. Collect the waiters.
    let mut latencies_us = Vec::with_capacity(n);
    let mut raw_us = Vec::with_capacity(n);
    while let Some(joined) = waiters.join_next().await {
        let (idx, got, outcome) = match joined {
            Ok(v) => v,
            Err(e) => {
                *errors.entry(format!("waiter_task: {e}")).or_default() += 1;
                continue;
            }
        };
        match (outcome, accepted_at[idx]) {
            (Ok(status), Some(accepted)) if status != "pending" => {
                let raw = if got >= accepted {
                    micros(got - accepted)
                } else {
                    -micros(accepted - got)
                };
                raw_us.push(raw);
                latencies_us.push(raw.max(0));
            }
            (Ok(status), Some(_)) => {
                *errors
                    .entry(format!("waiter_answered_{status}"))
                    .or_default() += 1;
            }
            // Its accept failed: already counted.
            (Ok(_), None) => {}
            (Err(e), _) => *errors.entry(e.kind).or_default() += 1,
        }
    }

    Ok(Report {
        scenario: "wakeup",
        ops: latencies_us.len(),
        secs: decide_secs,
        latencies_us,
        raw_us: Some(raw_us),
        errors,
        extra: vec![
            ("waiters".into(), n.to_string()),
            ("parked_by".into(), parked_by.into()),
            (
                "decide_concurrency".into(),
                args.decide_concurrency.to_string(),
            ),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn waiter_gauge_is_found_and_summed() {
        let text = "# TYPE approvals_waiters gauge\napprovals_waiters{tenant=\"a b\"} 3\n\
                    approvals_waiters{tenant=\"c\"} 4\napprovals_waiter_seconds_count 9\n\
                    approvals_pending{tenant=\"c\"} 100\n";
        assert_eq!(sum_waiter_samples(text, None), Some(7.0));
        let ours = "approvals_long_polls_in_flight 200\napprovals_ttl_seconds{tenant=\"*\"} 3600\n";
        assert_eq!(sum_waiter_samples(ours, None), Some(200.0));
        assert_eq!(
            sum_waiter_samples(text, Some("approvals_pending")),
            Some(100.0)
        );
        assert_eq!(sum_waiter_samples("up 1\n", None), None);
    }
}
