//! approvals-temporal-starts: the raw workflow-start rate of a Temporal server, the ceiling that
//! scripts/bench-temporal.sh holds the service's Temporal backend against (feature `temporal`).
//!
//! `--concurrency` closed-loop starters each start a no-op workflow (type `BenchNoop`, a fresh
//! id, a task queue no worker polls: the workflow is only started, never run) as soon as their
//! last start returned, through the same client crate and call the backend uses, and print one
//! line in approvals-bench's format:
//!
//! ```text
//! RESULT target=temporal scenario=raw-start ops=2000 secs=10.000 ops_per_sec=200.0 p50_ms=150.000 p99_ms=320.000 max_ms=400.000 errors=0 error_kinds=- concurrency=32
//! ```
//!
//! The started workflows stay open: point it at a throwaway server (the script's dev server).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use temporalio_client::errors::WorkflowStartError;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, UntypedWorkflow, Url,
    WorkflowStartOptions,
};
use temporalio_common::data_converters::RawValue;
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    name = "approvals-temporal-starts",
    about = "Start no-op Temporal workflows as fast as possible and print a RESULT line"
)]
struct Cli {
    /// The frontend's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:7233")]
    address: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// A task queue no worker polls.
    #[arg(long, default_value = "bench-raw-starts")]
    task_queue: String,
    /// Label of the server in the RESULT line.
    #[arg(long, default_value = "temporal")]
    target: String,
    /// How long to measure (after the warm-up), e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Starts before the measurement begins, discarded (connection, server caches).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent starters, each with one start in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Deadline of one start (the backend's `temporal.call_timeout` is 5 s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    call_timeout: Duration,
    /// Worker threads of the runtime (it shares the machine with the server).
    #[arg(long, env = "BENCH_THREADS", default_value_t = 2)]
    threads: usize,
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
            eprintln!("approvals-temporal-starts: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("approvals-temporal-starts: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Connects as the backend does (`settings::connect`): one connection, a namespace-bound client.
async fn connect(cli: &Cli) -> Result<Client, String> {
    let url = Url::parse(&cli.address).map_err(|e| format!("--address {}: {e}", cli.address))?;
    let options = ConnectionOptions::new(url)
        .identity(format!("approvals-temporal-starts@{}", std::process::id()))
        .connect_timeout(cli.call_timeout)
        .build();
    let connection = tokio::time::timeout(cli.call_timeout, Connection::connect(options))
        .await
        .map_err(|_| format!("connecting to {} timed out", cli.address))?
        .map_err(|e| format!("connecting to {}: {e}", cli.address))?;
    Client::new(
        connection,
        ClientOptions::new(cli.namespace.clone()).build(),
    )
    .map_err(|e| format!("client: {e}"))
}

/// One starter's tallies.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<i64>,
    errors: BTreeMap<&'static str, usize>,
    last_finish: Option<Instant>,
}

async fn run(cli: &Cli) -> Result<(), String> {
    let client = connect(cli).await?;
    // Ids unique across runs against the same server (the default reuse policy would refuse an
    // id of a still-open workflow).
    let run_tag = format!(
        "bench-raw-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let measure_from = Instant::now() + cli.warmup;
    let end = measure_from + cli.duration;
    let mut starters = JoinSet::new();
    for worker in 0..cli.concurrency.max(1) {
        let client = client.clone();
        let task_queue = cli.task_queue.clone();
        let run_tag = run_tag.clone();
        let call_timeout = cli.call_timeout;
        starters.spawn(async move {
            let mut tally = Tally::default();
            for seq in 0u64.. {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                let options = WorkflowStartOptions::new(
                    task_queue.clone(),
                    format!("{run_tag}-{worker}-{seq}"),
                )
                .build();
                let outcome = tokio::time::timeout(
                    call_timeout,
                    client.start_workflow(
                        UntypedWorkflow::new("BenchNoop"),
                        RawValue::new(Vec::new()),
                        options,
                    ),
                )
                .await;
                let finished = Instant::now();
                let failure = match outcome {
                    Ok(Ok(_)) => None,
                    Ok(Err(WorkflowStartError::AlreadyStarted { .. })) => Some("already_started"),
                    Ok(Err(WorkflowStartError::Rpc(_))) => Some("rpc"),
                    Ok(Err(_)) => Some("other"),
                    Err(_) => Some("timeout"),
                };
                if started >= measure_from {
                    tally.last_finish = Some(finished);
                    match failure {
                        None => tally.latencies_us.push(micros(finished - started)),
                        Some(kind) => *tally.errors.entry(kind).or_default() += 1,
                    }
                }
                if failure.is_some() {
                    // An overloaded or unreachable server: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        });
    }

    let mut latencies_us = Vec::new();
    let mut errors: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut last_finish: Option<Instant> = None;
    while let Some(joined) = starters.join_next().await {
        let tally = joined.map_err(|e| format!("a starter panicked: {e}"))?;
        latencies_us.extend(tally.latencies_us);
        for (kind, n) in tally.errors {
            *errors.entry(kind).or_default() += n;
        }
        last_finish = last_finish.max(tally.last_finish);
    }
    // The measured span ends with the last counted start, as in approvals-bench.
    let secs = last_finish
        .map_or(cli.duration, |t| t.saturating_duration_since(measure_from))
        .as_secs_f64();

    latencies_us.sort_unstable();
    let ms = |us: Option<i64>| {
        us.map_or_else(|| "nan".to_owned(), |v| format!("{:.3}", v as f64 / 1000.0))
    };
    let (p50, p99) = (
        ms(percentile(&latencies_us, 50.0)),
        ms(percentile(&latencies_us, 99.0)),
    );
    let max = ms(latencies_us.last().copied());
    let ops = latencies_us.len();
    let ops_per_sec = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
    let error_count: usize = errors.values().sum();
    let error_kinds = if errors.is_empty() {
        "-".to_owned()
    } else {
        errors
            .iter()
            .map(|(k, n)| format!("start_{k}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let target = &cli.target;
    println!(
        "RESULT target={target} scenario=raw-start ops={ops} secs={secs:.3} \
         ops_per_sec={ops_per_sec:.1} p50_ms={p50} p99_ms={p99} max_ms={max} \
         errors={error_count} error_kinds={error_kinds} concurrency={}",
        cli.concurrency
    );
    eprintln!(
        "{target:>6} raw-start     {ops:>8} ops in {secs:>6.2} s = {ops_per_sec:>9.1} ops/s   p50 {p50} ms   p99 {p99} ms   max {max} ms   errors {error_count} ({error_kinds})"
    );
    Ok(())
}

/// Nearest-rank percentile of a sorted slice (as approvals-bench computes it).
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
