//! Long-poll scenarios, on raw sockets with timestamps at the first response byte:
//!
//! - `wakeup`: N approvals, one long-poll each; the reviewer accepts them one after the other,
//!   and a waiter's latency runs from the moment its accept was written to the moment its
//!   answer's first byte arrived.
//! - `fanout`: N long-polls on one approval; one accept; how long until the last of them has
//!   its answer, what the waiting cost the server in memory, and how many Redis connections it
//!   held meanwhile. A connection each (HTTP/1.1), or as streams of a few HTTP/2 connections
//!   (`fanout-h2`, src/h2.rs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::api::Api;
use crate::http::Connection;
use crate::report::{micros, Report};
use crate::{redis_probe, Resources};

pub struct Waiting {
    pub waiters: usize,
    pub wait_seconds: u64,
    /// Longest wait for the waiter gauge to show every long-poll parked.
    pub park_timeout: Duration,
    /// Fixed settle time when the server has no waiter gauge (the ADR peer).
    pub settle: Duration,
    pub waiters_metric: Option<String>,
    /// `fanout`: streams of this many HTTP/2 connections instead of a connection each.
    pub http2_connections: Option<usize>,
}

/// A parked long-poll: resolves to when its answer began, and whether it was `accepted`; with
/// its connection, kept open until every waiter has its answer, as an agent's keep-alive
/// client would (closing it at once made the server handle the hang-up of early waiters while
/// it still answered the later ones).
pub type Waiter = (usize, std::io::Result<(Instant, bool)>, Option<Connection>);

/// Opens a connection per long-poll and sends its request at once (a connection that sends
/// nothing is closed by the server's header timeout), at most `OPENING` at a time.
fn park_all(api: &Arc<Api>, ids: &[String], w: &Waiting) -> JoinSet<Waiter> {
    const OPENING: usize = 64;
    let opening = Arc::new(Semaphore::new(OPENING));
    let mut waiters = JoinSet::new();
    for (idx, id) in ids.iter().enumerate() {
        let request = api.wait_request(id, w.wait_seconds);
        let api = Arc::clone(api);
        let opening = Arc::clone(&opening);
        waiters.spawn(async move {
            let mut held = None;
            let outcome = async {
                let mut conn = {
                    let _turn = opening.acquire_owned().await;
                    let mut conn = api
                        .connect(idx)
                        .await
                        .map_err(|e| std::io::Error::other(e.kind))?;
                    conn.send(&request).await?;
                    conn
                };
                let response = conn.response().await?;
                let accepted =
                    response.status == 200 && response.body_text().contains("\"accepted\"");
                held = Some(conn);
                Ok((response.first_byte, accepted))
            }
            .await;
            (idx, outcome, held)
        });
    }
    waiters
}

/// Every waiter's answer: the index and first byte of each answered `accepted`, the rest
/// counted in `errors`. The connections stay open until all are answered.
async fn answers(
    mut waiters: JoinSet<Waiter>,
    errors: &mut BTreeMap<String, usize>,
) -> Vec<(usize, Instant)> {
    let mut accepted = Vec::with_capacity(waiters.len());
    let mut held = Vec::with_capacity(waiters.len());
    while let Some(joined) = waiters.join_next().await {
        match joined {
            Ok((idx, Ok((first_byte, true)), conn)) => {
                held.extend(conn);
                accepted.push((idx, first_byte));
            }
            Ok((_, Ok((_, false)), _)) => {
                *errors.entry("waiter_not_accepted".into()).or_default() += 1
            }
            Ok((_, Err(e), _)) => *errors.entry(format!("waiter_{:?}", e.kind())).or_default() += 1,
            Err(e) => *errors.entry(format!("waiter_task: {e}")).or_default() += 1,
        }
    }
    // Every waiter has its answer: now they may hang up.
    drop(held);
    accepted
}

/// Waits until the server's waiter gauge grew by `n` (or, without one, a fixed settle time).
async fn until_parked(api: &Api, w: &Waiting, baseline: Option<f64>, n: usize) -> &'static str {
    let Some(base) = baseline else {
        tokio::time::sleep(w.settle).await;
        return "settle";
    };
    let deadline = Instant::now() + w.park_timeout;
    while Instant::now() < deadline {
        let now = api
            .waiter_gauge(w.waiters_metric.as_deref())
            .await
            .unwrap_or(0.0);
        if now - base >= n as f64 {
            return "gauge";
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "approvals-bench: the waiter gauge did not reach +{n} in {:?}",
        w.park_timeout
    );
    "gauge_timeout"
}

pub async fn wakeup(api: &Arc<Api>, w: &Waiting) -> Result<Report, String> {
    let n = w.waiters;
    let mut conn = api.connect(0).await.map_err(|e| e.kind)?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = api
            .submit(&mut conn, true)
            .await
            .map_err(|e| format!("wakeup setup: submit failed ({})", e.kind))?;
        ids.push(id.unwrap_or_default());
    }
    let baseline = api.waiter_gauge(w.waiters_metric.as_deref()).await;
    let waiters = park_all(api, &ids, w);
    let parked_by = until_parked(api, w, baseline, n).await;

    let mut conn = api.connect(0).await.map_err(|e| e.kind)?;
    let mut written_at = vec![None; n];
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let decide_started = Instant::now();
    for (idx, id) in ids.iter().enumerate() {
        let request = api.accept_request(id);
        let before = Instant::now();
        match api.expect(&mut conn, "accept", &request, 200).await {
            Ok(_) => written_at[idx] = Some(before),
            Err(e) => *errors.entry(e.kind).or_default() += 1,
        }
    }
    let decide_secs = decide_started.elapsed().as_secs_f64();
    let latencies_us: Vec<_> = answers(waiters, &mut errors)
        .await
        .into_iter()
        .filter_map(|(idx, first_byte)| {
            written_at[idx].map(|written| micros(first_byte.saturating_duration_since(written)))
        })
        .collect();
    Ok(Report {
        scenario: "wakeup",
        ops: latencies_us.len(),
        secs: decide_secs,
        latencies_us,
        raw_us: None,
        errors,
        extra: vec![
            ("waiters".into(), n.to_string()),
            ("parked_by".into(), parked_by.into()),
        ],
    })
}

pub async fn fanout(api: &Arc<Api>, w: &Waiting, resources: &Resources) -> Result<Report, String> {
    let n = w.waiters;
    let mut conn = api.connect(0).await.map_err(|e| e.kind)?;
    let id = api
        .submit(&mut conn, true)
        .await
        .map_err(|e| format!("fanout setup: submit failed ({})", e.kind))?
        .unwrap_or_default();
    let baseline = api.waiter_gauge(w.waiters_metric.as_deref()).await;
    // A waiting long-poll's whole cost: its connection, request and registration.
    let rss_before = resources.target_rss_kb();
    let (waiters, http2) = match w.http2_connections {
        Some(connections) => {
            let (waiters, held) = crate::h2::park_all(api, &id, n, connections, w.wait_seconds)
                .await
                .map_err(|e| format!("fanout: HTTP/2 connections: {e}"))?;
            (waiters, Some(held))
        }
        None => (park_all(api, &vec![id.clone(); n], w), None),
    };
    let parked_by = until_parked(api, w, baseline, n).await;
    let rss_waiting = resources.target_rss_kb();
    let redis_clients = match &resources.redis {
        Some(addr) => Some(redis_probe::clients(addr).await?),
        None => None,
    };
    // A fresh connection: the first one sat idle while the waiters parked, long enough for
    // the server's header timeout to close it.
    let mut conn = api.connect(0).await.map_err(|e| e.kind)?;
    let written = Instant::now();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    if let Err(e) = api
        .expect(&mut conn, "accept", &api.accept_request(&id), 200)
        .await
    {
        *errors.entry(e.kind).or_default() += 1;
    }
    let latencies_us: Vec<_> = answers(waiters, &mut errors)
        .await
        .into_iter()
        .map(|(_, first_byte)| micros(first_byte.saturating_duration_since(written)))
        .collect();
    drop(http2);
    let mut extra = vec![
        ("waiters".into(), n.to_string()),
        (
            "http2_connections".into(),
            w.http2_connections.map_or("-".into(), |c| c.to_string()),
        ),
        ("parked_by".into(), parked_by.into()),
    ];
    if let (Some(before), Some(waiting)) = (rss_before, rss_waiting) {
        extra.push((
            "kb_per_waiter".into(),
            format!("{:.2}", waiting.saturating_sub(before) as f64 / n as f64),
        ));
        extra.push(("rss_waiting_kb".into(), waiting.to_string()));
    }
    if let Some(clients) = redis_clients {
        extra.push(("redis_clients_while_waiting".into(), clients.to_string()));
    }
    Ok(Report {
        scenario: if w.http2_connections.is_some() {
            "fanout-h2"
        } else {
            "fanout"
        },
        ops: latencies_us.len(),
        secs: 0.0,
        latencies_us,
        raw_us: None,
        errors,
        extra,
    })
}
