//! The scrape-cost benchmark behind scripts/bench-metrics.sh.
//!
//! `seed` parks N pending approvals over T tenants straight through the Redis backend (the
//! same Lua scripts the service runs, so the indexes are the real ones); `scrape` then times
//! `GET /metrics` on a service pointed at that Redis, and request latency while scraping, to
//! show that a scrape stays cheap and never blocks request handling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvals_core::{
    Approval, ApprovalId, Lifetimes, RecordTransfer, Status, TenantId, Timestamp,
};
use approvals_redis::{RedisBackend, RedisSettings};
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Park `--approvals` pending approvals over `--tenants` tenants, with ages spread over a day.
    Seed {
        #[arg(long)]
        redis: String,
        #[arg(long, default_value_t = 1_000_000)]
        approvals: usize,
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Time `--scrapes` scrapes of `URL/metrics`, and `/healthz` latency during them.
    Scrape {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 200)]
        scrapes: usize,
    },
}

#[tokio::main]
async fn main() -> Result<(), String> {
    match Cli::parse().command {
        Command::Seed {
            redis,
            approvals,
            tenants,
            concurrency,
        } => seed(redis, approvals, tenants, concurrency).await,
        Command::Scrape { url, scrapes } => scrape(url, scrapes).await,
    }
}

async fn seed(
    redis: String,
    total: usize,
    tenants: usize,
    concurrency: usize,
) -> Result<(), String> {
    let backend = Arc::new(
        RedisBackend::connect(RedisSettings::new(redis), Lifetimes::default())
            .map_err(|e| e.to_string())?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let now = Timestamp::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (backend, next) = (backend.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return Ok::<_, String>(());
                    }
                    backend
                        .import(approval(n, tenants, now))
                        .await
                        .map_err(|e| e.to_string())?;
                    if n > 0 && n % 100_000 == 0 {
                        eprintln!("seeded {n} in {:.0?}", started.elapsed());
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.map_err(|e| e.to_string())??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "RESULT scenario=seed approvals={total} tenants={tenants} secs={secs:.1} per_sec={:.0}",
        total as f64 / secs
    );
    Ok(())
}

/// Approval `n`: tenant `n % tenants`, submitted up to 23 h ago, expiring 24 h after that.
fn approval(n: usize, tenants: usize, now: Timestamp) -> Approval {
    let age_ms = (n as i64 * 7_919) % (23 * 3_600_000);
    let submitted_at = Timestamp::from_millis(now.as_millis() - age_ms);
    let Value::Object(action) =
        json!({"type": "document_read", "resource": format!("finance/report-{n}")})
    else {
        unreachable!("a literal object")
    };
    Approval {
        id: ApprovalId::parse(format!("seed-{n}")).expect("valid id"),
        tenant: TenantId::parse(format!("tenant-{:03}", n % tenants)).expect("valid tenant"),
        status: Status::Pending,
        agent_id: "bench-agent".into(),
        submitted_by: "bench-agent".into(),
        action,
        context: Map::new(),
        reasons: vec!["seeded for the scrape benchmark".into()],
        policy_version: "sha256:bench".into(),
        submitted_at,
        expires_at: submitted_at.plus(Duration::from_secs(86_400)),
        decided_at: None,
        decided_by: None,
        decision_reason: None,
        action_digest: None,
    }
}

async fn scrape(url: String, scrapes: usize) -> Result<(), String> {
    let http = reqwest::Client::new();
    let metrics_url = format!("{url}/metrics");
    // Wait for the background recompute to have seen the seeded approvals.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (pending, stats_secs) = loop {
        let text = get_text(&http, &metrics_url).await?;
        let pending: f64 = text
            .lines()
            .filter(|l| l.starts_with("approvals_pending{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let stats_secs = text
            .lines()
            .find_map(|l| l.strip_prefix("approvals_pending_stats_duration_seconds "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if let (true, Some(secs)) = (pending > 0.0, stats_secs) {
            break (pending, secs);
        }
        if Instant::now() > deadline {
            return Err("the service never reported pending figures".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Scrape in a loop while another task measures /healthz latency.
    let probe = {
        let (http, url) = (http.clone(), format!("{url}/healthz"));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let t = Instant::now();
                if http.get(&url).send().await.is_ok() {
                    samples.push(t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };
    let mut samples = Vec::with_capacity(scrapes);
    let mut bytes = 0;
    for _ in 0..scrapes {
        let t = Instant::now();
        bytes = get_text(&http, &metrics_url).await?.len();
        samples.push(t.elapsed());
    }
    let mut health = probe.await.map_err(|e| e.to_string())?;
    samples.sort();
    health.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "RESULT scenario=scrape pending={pending:.0} scrapes={scrapes} bytes={bytes} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} \
         stats_recompute_ms={:.1} healthz_p50_ms={:.2} healthz_p99_ms={:.2}",
        ms(pct(&samples, 0.5)),
        ms(pct(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default()),
        stats_secs * 1000.0,
        ms(pct(&health, 0.5)),
        ms(pct(&health, 0.99)),
    );
    Ok(())
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    http.get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())
}
