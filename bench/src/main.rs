//! approvals-bench: the load generator behind scripts/bench.sh.
//!
//! It drives the same api-v1 HTTP load at any server (our Rust service, several instances of
//! it, or the ADR FastAPI peer) over lean raw-socket HTTP/1.1 connections, and prints one
//! machine-readable line per measurement on stdout:
//!
//! ```text
//! RESULT target=ours scenario=submit ops=123456 secs=10.000 ops_per_sec=12345.6 p50_ms=4.210 p99_ms=9.870 max_ms=31.200 errors=0 error_kinds=- ...
//! ```
//!
//! plus a human-readable line on stderr. Scenarios: `submit`, `submit-decide`, `read`
//! (throughput, closed loop; `submit --rate R` paces it, open loop), `wakeup` and `fanout`
//! (long-polls, `fanout` over HTTP/1.1 or HTTP/2), `commands` (Redis commands sent per request). Given `--redis` and `--pgid`,
//! throughput lines also carry Redis' CPU per 1,000 requests and the cores Redis, the target
//! and the load generator itself used, so a run shows where the bound is.

mod api;
mod h2;
mod http;
mod load;
mod procs;
mod redis_probe;
mod report;
mod waiting;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use crate::api::Api;
use crate::load::{Load, Operation};
use crate::report::Report;
use crate::waiting::Waiting;

#[derive(Parser)]
#[command(
    name = "approvals-bench",
    about = "Drive api-v1 load at an approvals server and print RESULT lines"
)]
struct Cli {
    /// Base URL of the server, e.g. http://127.0.0.1:8080; repeat (or separate with commas)
    /// for several instances sharing one Redis: workers are spread over them.
    #[arg(long, env = "BENCH_URL", value_delimiter = ',', required = true)]
    url: Vec<String>,
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
    #[arg(long, env = "BENCH_THREADS", default_value_t = 1)]
    threads: usize,
    /// The target's Redis, `host:port`: its CPU time and clients are reported.
    #[arg(long)]
    redis: Option<String>,
    /// Process groups of the target's instances (each started with `setsid`): their CPU time
    /// and memory are reported, summed.
    #[arg(long, value_delimiter = ',')]
    pgid: Vec<u64>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Submits, closed loop (or paced with --rate).
    Submit(LoadArgs),
    /// Submit-then-accept pairs, closed loop: one operation is both calls.
    SubmitDecide(LoadArgs),
    /// Reads of existing approvals, closed loop.
    Read(LoadArgs),
    /// Decision → waiting agent latency, one long-poll per approval.
    Wakeup(WaitArgs),
    /// Many long-polls on one approval, one decision.
    Fanout(WaitArgs),
    /// Redis commands sent per submit, accept and read (needs --redis).
    Commands(CommandArgs),
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// How long to measure (after the warm-up), e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent workers, each with its own kept-alive connection.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Load before the measurement starts, discarded.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Total operations per second, paced (open loop); by default as fast as answered.
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(Args, Clone)]
struct WaitArgs {
    /// Parked long-polls.
    #[arg(long, default_value_t = 200)]
    waiters: usize,
    /// `wait_seconds` of the long-polls; decisions must all land well within it.
    #[arg(long, default_value_t = 60)]
    wait_seconds: u64,
    /// Fixed settle time before deciding, used when the server's /metrics has no waiter gauge.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Longest wait for the waiter gauge to show every long-poll parked.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    park_timeout: Duration,
    /// Exact name of the waiter gauge in /metrics; by default any gauge-like sample whose name
    /// contains `waiter` or `long_poll` (summed over its labels).
    #[arg(long)]
    waiters_metric: Option<String>,
    /// `fanout` only: carry the long-polls as streams of this many HTTP/2 connections (prior
    /// knowledge) instead of one HTTP/1.1 connection each.
    #[arg(long)]
    http2_connections: Option<usize>,
}

#[derive(Args, Clone)]
struct CommandArgs {
    /// Operations of each kind, one after the other.
    #[arg(long, default_value_t = 1000)]
    ops: usize,
    /// Idle time over which the background loops' own command rate is measured.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    idle: Duration,
}

/// Where the target's resources are read from, when known.
pub struct Resources {
    pub redis: Option<String>,
    pub pgids: Vec<u64>,
}

/// One reading of every CPU clock the run can see.
pub struct Sample {
    at: Instant,
    redis_cpu: Option<f64>,
    target_cpu: Option<f64>,
    own_cpu: f64,
}

impl Resources {
    /// Resident memory of the target's processes, in kB.
    pub fn target_rss_kb(&self) -> Option<u64> {
        (!self.pgids.is_empty()).then(|| self.pgids.iter().copied().map(procs::group_rss_kb).sum())
    }

    pub async fn sample(&self) -> Sample {
        let redis_cpu = match &self.redis {
            Some(addr) => redis_probe::cpu_seconds(addr).await.ok(),
            None => None,
        };
        Sample {
            at: Instant::now(),
            redis_cpu,
            target_cpu: (!self.pgids.is_empty()).then(|| {
                self.pgids
                    .iter()
                    .copied()
                    .map(procs::group_cpu_seconds)
                    .sum()
            }),
            own_cpu: procs::own_cpu_seconds(),
        }
    }
}

impl Sample {
    /// Cores each party used since `before`, and Redis' CPU milliseconds per 1,000 operations.
    pub fn since(&self, before: &Sample, ops: usize) -> Vec<(String, String)> {
        let wall = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let mut out = Vec::new();
        if let (Some(a), Some(b)) = (self.redis_cpu, before.redis_cpu) {
            out.push(("redis_cores".into(), format!("{:.2}", (a - b) / wall)));
            if ops > 0 {
                // The span is the measured one, so its operations are the counted ones.
                out.push((
                    "redis_cpu_ms_per_1k".into(),
                    format!("{:.1}", (a - b) * 1e6 / ops as f64),
                ));
            }
        }
        if let (Some(a), Some(b)) = (self.target_cpu, before.target_cpu) {
            out.push(("target_cores".into(), format!("{:.2}", (a - b) / wall)));
        }
        out.push((
            "client_cores".into(),
            format!("{:.2}", (self.own_cpu - before.own_cpu) / wall),
        ));
        out
    }
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
    let api = Arc::new(Api::new(
        &cli.url,
        &cli.tenant,
        &cli.agent_token,
        &cli.reviewer_token,
    )?);
    let resources = Resources {
        redis: cli.redis.clone(),
        pgids: cli.pgid.clone(),
    };
    let load = |args: &LoadArgs| Load {
        duration: args.duration,
        warmup: args.warmup,
        concurrency: args.concurrency,
        rate: args.rate,
    };
    let waiting = |args: &WaitArgs| Waiting {
        waiters: args.waiters,
        wait_seconds: args.wait_seconds,
        park_timeout: args.park_timeout,
        settle: args.settle,
        waiters_metric: args.waiters_metric.clone(),
        http2_connections: args.http2_connections,
    };
    let reports = match &cli.scenario {
        Scenario::Submit(args) => {
            vec![load::run(&api, &load(args), Operation::Submit, &resources).await?]
        }
        Scenario::SubmitDecide(args) => {
            vec![load::run(&api, &load(args), Operation::SubmitDecide, &resources).await?]
        }
        Scenario::Read(args) => {
            vec![load::run(&api, &load(args), Operation::Read, &resources).await?]
        }
        Scenario::Wakeup(args) => vec![waiting::wakeup(&api, &waiting(args)).await?],
        Scenario::Fanout(args) => vec![waiting::fanout(&api, &waiting(args), &resources).await?],
        Scenario::Commands(args) => {
            let redis = cli
                .redis
                .as_deref()
                .ok_or("the commands scenario needs --redis")?;
            commands(&api, redis, args).await?
        }
    };
    for report in reports {
        report.print(&cli.target);
    }
    Ok(())
}

/// Redis commands sent per submit, per accept and per read, one operation after the other:
/// counted by `MONITOR` between markers, scripts' own commands excluded, and the background
/// loops' idle rate (measured first) subtracted.
async fn commands(api: &Api, redis: &str, args: &CommandArgs) -> Result<Vec<Report>, String> {
    let mut monitor = redis_probe::Monitor::start(redis).await?;
    let idle_from = monitor.mark("idle-start").await?;
    let idle_started = Instant::now();
    tokio::time::sleep(args.idle).await;
    let idle_commands = monitor.mark("idle-end").await? - idle_from;
    let idle_rate = idle_commands as f64 / idle_started.elapsed().as_secs_f64();

    let mut conn = api.connect(0).await.map_err(|e| e.kind)?;
    let mut ids = Vec::with_capacity(args.ops);
    let mut reports = Vec::new();
    for phase in ["submit", "accept", "read"] {
        let from = monitor.mark(&format!("{phase}-start")).await?;
        let started = Instant::now();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..args.ops {
            let outcome = match phase {
                "submit" => api.submit(&mut conn, true).await.map(|id| {
                    ids.push(id.unwrap_or_default());
                }),
                "accept" => {
                    let request = api.accept_request(&ids[i % ids.len().max(1)]);
                    api.expect(&mut conn, "accept", &request, 200)
                        .await
                        .map(drop)
                }
                _ => {
                    let request = api.get_request(&ids[i % ids.len().max(1)]);
                    api.expect(&mut conn, "read", &request, 200).await.map(drop)
                }
            };
            if let Err(e) = outcome {
                *errors.entry(e.kind).or_default() += 1;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let sent = monitor.mark(&format!("{phase}-end")).await? - from;
        // Per operation that worked: a refused one (a 503) sends nothing and would pull the
        // average down. The errors are reported beside it.
        let failed: usize = errors.values().sum();
        let succeeded = args.ops.saturating_sub(failed).max(1);
        let per_op = (sent as f64 - idle_rate * secs).max(0.0) / succeeded as f64;
        reports.push(Report {
            scenario: match phase {
                "submit" => "commands-submit",
                "accept" => "commands-accept",
                _ => "commands-read",
            },
            ops: args.ops,
            secs,
            latencies_us: Vec::new(),
            raw_us: None,
            errors,
            extra: vec![
                ("redis_commands_per_op".into(), format!("{per_op:.2}")),
                ("redis_commands".into(), sent.to_string()),
                ("idle_commands_per_sec".into(), format!("{idle_rate:.2}")),
            ],
        });
    }
    Ok(reports)
}
