//! Throughput scenarios: workers on kept-alive connections issue one operation after another
//! (closed loop), or at a fixed total rate (open loop, latency counted from each operation's
//! scheduled start, so a stall is not hidden by the requests it delayed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::api::{Api, OpError};
use crate::http::{Connection, Request};
use crate::report::{micros, Report};
use crate::Resources;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Submit,
    /// A submit, then the reviewer's accept of it.
    SubmitDecide,
    /// A read of one of a few hundred existing approvals.
    Read,
}

impl Operation {
    fn name(self, open_loop: bool) -> &'static str {
        match (self, open_loop) {
            (Self::Submit, false) => "submit",
            (Self::Submit, true) => "submit-paced",
            (Self::SubmitDecide, _) => "submit-decide",
            (Self::Read, _) => "read",
        }
    }
}

pub struct Load {
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: usize,
    /// Total operations per second (open loop); `None`: as fast as answered.
    pub rate: Option<f64>,
}

#[derive(Default)]
struct WorkerStats {
    latencies_us: Vec<i64>,
    errors: BTreeMap<String, usize>,
    last_finish: Option<Instant>,
}

/// Approvals the read scenario reads, created before it starts.
const READ_SET: usize = 256;

pub async fn run(
    api: &Arc<Api>,
    load: &Load,
    operation: Operation,
    resources: &Resources,
) -> Result<Report, String> {
    api.preflight(operation == Operation::SubmitDecide).await?;
    let reads = Arc::new(match operation {
        Operation::Read => read_set(api).await?,
        _ => Vec::new(),
    });
    let workers_n = load.concurrency.max(1);
    // Open loop: worker k runs at rate/n, offset by k/rate, so the total is evenly spaced.
    let interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(workers_n as f64 / rate.max(0.001)));
    let started = Instant::now();
    let measure_from = started + load.warmup;
    let end = measure_from + load.duration;
    let mut workers = JoinSet::new();
    for worker in 0..workers_n {
        let api = Arc::clone(api);
        let reads = Arc::clone(&reads);
        let offset = load
            .rate
            .map(|rate| Duration::from_secs_f64(worker as f64 / rate.max(0.001)));
        workers.spawn(async move {
            let mut stats = WorkerStats::default();
            let mut conn: Option<Connection> = None;
            let mut next = started + offset.unwrap_or_default();
            let mut turn = worker;
            let mut busy_until = started;
            loop {
                if interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                // Paced: an operation counts from when it was due if the worker was still busy
                // with the previous one then (a stall is not hidden by the requests it
                // delayed); if the worker was free, from when it actually went out, since the
                // timer itself wakes up to a millisecond late.
                let due = next;
                let now = Instant::now();
                let scheduled = if interval.is_some() && busy_until > due {
                    due
                } else {
                    now
                };
                if scheduled >= end || (interval.is_some() && due >= end) {
                    break;
                }
                if let Some(interval) = interval {
                    next += interval;
                }
                turn += workers_n;
                let outcome = one(&api, &mut conn, worker, operation, &reads, turn).await;
                let finished = Instant::now();
                busy_until = finished;
                if scheduled >= measure_from {
                    stats.last_finish =
                        Some(stats.last_finish.map_or(finished, |t| t.max(finished)));
                    match &outcome {
                        Ok(()) => stats.latencies_us.push(micros(finished - scheduled)),
                        Err(e) => *stats.errors.entry(e.kind.clone()).or_default() += 1,
                    }
                }
                if matches!(&outcome, Err(e) if e.transport) {
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            stats
        });
    }
    // Resource use over the measured span only.
    tokio::time::sleep_until(measure_from.into()).await;
    let before = resources.sample().await;
    let mut latencies_us = Vec::new();
    let mut errors = BTreeMap::new();
    let mut last_finish: Option<Instant> = None;
    let mut after = None;
    while let Some(joined) = workers.join_next().await {
        // The first worker to finish marks the end of the full-load span.
        if after.is_none() {
            after = Some(resources.sample().await);
        }
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
    let secs = last_finish.map_or(load.duration, |t| t.saturating_duration_since(measure_from));
    let mut extra = vec![("concurrency".to_owned(), workers_n.to_string())];
    if let Some(rate) = load.rate {
        extra.push(("rate".into(), format!("{rate:.0}")));
    }
    if let Some(after) = after {
        extra.extend(after.since(&before, latencies_us.len()));
    }
    Ok(Report {
        scenario: operation.name(load.rate.is_some()),
        ops: latencies_us.len(),
        secs: secs.as_secs_f64(),
        latencies_us,
        raw_us: None,
        errors,
        extra,
    })
}

/// One operation on the worker's connection, opened (again) when needed.
async fn one(
    api: &Api,
    conn: &mut Option<Connection>,
    worker: usize,
    operation: Operation,
    reads: &[Request],
    turn: usize,
) -> Result<(), OpError> {
    if conn.as_ref().is_none_or(|c| c.closed) {
        *conn = Some(api.connect(worker).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(OpError::other("no_connection"));
    };
    match operation {
        Operation::Submit => api.submit(c, false).await.map(drop),
        Operation::SubmitDecide => {
            let id = api.submit(c, true).await?.unwrap_or_default();
            api.expect(c, "accept", &api.accept_request(&id), 200)
                .await
                .map(drop)
        }
        Operation::Read => {
            let request = &reads[turn % reads.len()];
            api.expect(c, "read", request, 200).await.map(drop)
        }
    }
}

async fn read_set(api: &Api) -> Result<Vec<Request>, String> {
    let mut conn = api
        .connect(0)
        .await
        .map_err(|e| format!("read set: {}", e.kind))?;
    let mut requests = Vec::with_capacity(READ_SET);
    for _ in 0..READ_SET {
        let id = api
            .submit(&mut conn, true)
            .await
            .map_err(|e| format!("read set: submit failed ({})", e.kind))?
            .unwrap_or_default();
        requests.push(api.get_request(&id));
    }
    Ok(requests)
}
