//! approvals-floor: the least any axum/hyper server can do for the long-poll scenarios, run by
//! scripts/bench.sh as the target `floor` on the same machine and client as our service.
//!
//! It speaks just enough of api-v1 for `wakeup` and `fanout` — submit, the decision long-poll,
//! accept, a waiter gauge on /metrics — with no authentication, no policy, no Redis and no
//! middleware, on the same hyper HTTP/1 and HTTP/2 connection settings as the service (HTTP/2
//! with prior knowledge, told from the first bytes as the service does). A decision's
//! answer is rendered once and the same bytes go to every waiter. What it measures is the
//! floor of the HTTP stack and the machine: how long 10,000 answers take to reach the client,
//! and what a parked request costs in memory, before any work of ours.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvals_core::{Approval, ApprovalId, Status, TenantId, Timestamp};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use futures_util::future::Either;
use futures_util::FutureExt;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

// The service's allocator, configured alike: memory per waiter compares like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "approvals-floor",
    about = "Minimal long-poll server: the floor for bench.sh"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Waiters per approval id: a `watch` carrying the rendered answer once decided.
#[derive(Clone, Default)]
struct Floor {
    next_id: Arc<AtomicU64>,
    decisions: Arc<Mutex<HashMap<String, watch::Sender<Option<Bytes>>>>>,
}

impl Floor {
    fn channel(&self, id: &str) -> watch::Receiver<Option<Bytes>> {
        let mut map = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    fn waiting(&self) -> usize {
        let map = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|s| s.receiver_count()).sum()
    }
}

/// The record our service would answer, so both send bodies of the same size; `400` for an
/// identifier the service would refuse.
fn record(tenant: &str, id: &str, status: Status) -> Result<Approval, StatusCode> {
    let object = |pairs: &[(&str, &str)]| -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect()
    };
    let action = object(&[("type", "document_read"), ("resource", "finance/q3-report")]);
    let now = Timestamp::now();
    Ok(Approval {
        id: ApprovalId::parse(id).map_err(|_| StatusCode::BAD_REQUEST)?,
        tenant: TenantId::parse(tenant).map_err(|_| StatusCode::BAD_REQUEST)?,
        status,
        agent_id: "bench-agent".into(),
        submitted_by: "bench-agent".into(),
        action_digest: Some(approvals_core::action_digest(&action)),
        action,
        context: object(&[("on_behalf_of", "project_alpha"), ("purpose", "benchmark")]),
        reasons: vec!["finance data needs a human".into()],
        policy_version: "default:0123456789abcdef".into(),
        submitted_at: now,
        expires_at: now,
        decided_at: (status != Status::Pending).then_some(now),
        decided_by: (status != Status::Pending).then(|| "bench-reviewer".into()),
        decision_reason: None,
    })
}

fn json(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn rendered(value: &impl serde::Serialize) -> Result<Bytes, StatusCode> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

async fn submit(State(floor): State<Floor>, Path(tenant): Path<String>) -> Response {
    let id = format!("floor-{}", floor.next_id.fetch_add(1, Ordering::Relaxed));
    match record(&tenant, &id, Status::Pending)
        .and_then(|r| rendered(&serde_json::json!({ "approval": r })))
    {
        Ok(body) => json(StatusCode::CREATED, body),
        Err(status) => status.into_response(),
    }
}

#[derive(Deserialize)]
struct Wait {
    wait_seconds: Option<u64>,
}

async fn decision(
    State(floor): State<Floor>,
    Path((_tenant, id)): Path<(String, String)>,
    Query(wait): Query<Wait>,
) -> Response {
    let mut decided = floor.channel(&id);
    let wait = Duration::from_secs(wait.wait_seconds.unwrap_or(30).min(60));
    let answer = tokio::time::timeout(wait, decided.wait_for(Option::is_some)).await;
    match answer.ok().and_then(|r| r.ok()).and_then(|b| b.clone()) {
        Some(body) => json(StatusCode::OK, body),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn accept(
    State(floor): State<Floor>,
    Path((tenant, id)): Path<(String, String)>,
) -> Response {
    let body = match record(&tenant, &id, Status::Accepted).and_then(|r| rendered(&r)) {
        Ok(body) => body,
        Err(status) => return status.into_response(),
    };
    let sender = {
        let map = floor.decisions.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id).cloned()
    };
    if let Some(sender) = sender {
        sender.send_replace(Some(body.clone()));
    }
    json(StatusCode::OK, body)
}

async fn metrics(State(floor): State<Floor>) -> String {
    format!(
        "# TYPE floor_long_poll_waiters gauge\nfloor_long_poll_waiters {}\n",
        floor.waiting()
    )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/tenants/{tenant}/approvals", post(submit))
        .route(
            "/v1/tenants/{tenant}/approvals/{id}/decision",
            get(decision),
        )
        .route("/v1/tenants/{tenant}/approvals/{id}/accept", post(accept))
        .with_state(Floor::default());
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!("approvals-floor listening on {}", listener.local_addr()?);
    // The service's connection settings (src/server.rs), without its limits.
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let builders = Arc::new((http1, http2));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builders = Arc::clone(&builders);
        // Combinators rather than an `async move` block, as in the service: a block would store
        // the connection twice.
        let connection = speaks_http2(stream).then(move |(stream, http2)| {
            let stream = TokioIo::new(stream);
            if http2 {
                Either::Left(builders.1.serve_connection(stream, service).map(|_| ()))
            } else {
                Either::Right(builders.0.serve_connection(stream, service).map(|_| ()))
            }
        });
        tokio::spawn(connection);
    }
}

/// Whether the connection opens with the HTTP/2 preface (without a deadline: a floor, not a
/// server for strangers).
async fn speaks_http2(stream: tokio::net::TcpStream) -> (tokio::net::TcpStream, bool) {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut seen = [0u8; PREFACE.len()];
    loop {
        let n = stream.peek(&mut seen).await.unwrap_or(0);
        if n == 0 || !PREFACE.starts_with(&seen[..n]) {
            return (stream, false);
        }
        if n == PREFACE.len() {
            return (stream, true);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
