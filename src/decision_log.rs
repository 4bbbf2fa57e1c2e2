//! Ships the audit events this instance records (every verdict, decision and policy change)
//! to a SIEM as JSON lines: on standard output, or POSTed in batches to an HTTP endpoint.
//!
//! The tenant's audit is the record; this is a copy for systems that want a stream. So a
//! request never waits for it: events go into a bounded queue (`try_send`; bounded in events
//! and in bytes), and what does not fit, or cannot be delivered after
//! `decision_log.max_attempts`, is dropped and counted
//! (`approvals_decision_log_dropped_total{reason}`) — it is still in the audit, whose NDJSON
//! export can backfill a gap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use approvals_core::AuditEntry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{DecisionLogSettings, DecisionLogSink};

/// The request path's end: cheap to clone, never blocks.
#[derive(Clone)]
pub struct DecisionLog {
    /// Each event as its JSON line, serialised once, here: its size is what the queue counts.
    queue: Option<mpsc::Sender<String>>,
    /// Bytes of the lines in the queue, against [`QUEUE_BYTES`].
    queued_bytes: Arc<AtomicUsize>,
}

/// The most bytes of events waiting at once. A count alone did not bound them: an event may
/// carry 16 reasons of 1,000 characters, twice with a shadow verdict (about 128 kB), and
/// 10,000 such events waiting for a slow sink were over a gigabyte, in one tenant's hands.
const QUEUE_BYTES: usize = 64 << 20;

/// A batch's body is cut here (the event that crosses it is the last): below the 4–5 MiB
/// common ingest limits, with room for that last event (about 130 kB at most).
const BATCH_BYTES: usize = 1 << 20;

impl DecisionLog {
    /// Ships nothing.
    pub fn disabled() -> Self {
        Self {
            queue: None,
            queued_bytes: Arc::default(),
        }
    }

    /// Starts the shipping task; it drains the queue and stops once `stop` is cancelled.
    pub fn start(
        settings: &DecisionLogSettings,
        stop: CancellationToken,
    ) -> (Self, Option<tokio::task::JoinHandle<()>>) {
        let destination = match (settings.sink, &settings.url) {
            (DecisionLogSink::None, _) => return (Self::disabled(), None),
            (DecisionLogSink::Stdout, _) => Destination::Stdout,
            // Start-up. No redirects: a 301/302/303 turns the POST into a GET without its
            // body, whose 200 counted the batch as shipped while the sink got nothing (an
            // ingress sending plain HTTP to https, a proxy's login page). A redirect is
            // answered as the failure it is, retried and, in the end, counted as dropped.
            (DecisionLogSink::Http, Some(url)) => Destination::Http {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .expect("the decision log's HTTP client (TLS) cannot be built"),
                url: url.clone(),
            },
            // Refused by the configuration's validation.
            (DecisionLogSink::Http, None) => return (Self::disabled(), None),
        };
        let (queue, events) = mpsc::channel(settings.queue_capacity);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let shipper = Shipper {
            destination,
            batch_size: settings.batch_size,
            flush_interval: settings.flush_interval,
            max_attempts: settings.max_attempts,
            queued_bytes: Arc::clone(&queued_bytes),
        };
        let task = tokio::spawn(shipper.run(events, stop));
        let log = Self {
            queue: Some(queue),
            queued_bytes,
        };
        (log, Some(task))
    }

    /// Queues `entry` for shipping, or drops and counts it if the queue is full (in events or
    /// in bytes); whether it was queued.
    pub fn offer(&self, entry: &AuditEntry) -> bool {
        let Some(queue) = &self.queue else {
            return false;
        };
        // Plain data: serialising cannot fail.
        let mut line = serde_json::to_string(entry).unwrap_or_default();
        line.push('\n');
        let size = line.len();
        let fits = self
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + size <= QUEUE_BYTES).then_some(queued + size)
            })
            .is_ok();
        if !fits {
            dropped("queue_full", 1);
            return false;
        }
        let refused = match queue.try_send(line) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(_)) => "queue_full",
            Err(mpsc::error::TrySendError::Closed(_)) => "stopped",
        };
        self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
        dropped(refused, 1);
        false
    }
}

/// The events of one POST (or stdout write), and their bytes.
#[derive(Default)]
struct Batch {
    lines: Vec<String>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, line: String) {
        self.bytes += line.len();
        self.lines.push(line);
    }

    fn clear(&mut self) {
        self.lines.clear();
        self.bytes = 0;
    }
}

enum Destination {
    Stdout,
    Http {
        client: reqwest::Client,
        url: String,
    },
}

struct Shipper {
    destination: Destination,
    batch_size: usize,
    flush_interval: Duration,
    max_attempts: u32,
    queued_bytes: Arc<AtomicUsize>,
}

impl Shipper {
    /// `line` taken out of the queue (into a batch): its bytes no longer count there.
    fn took(&self, line: String) -> String {
        self.queued_bytes.fetch_sub(line.len(), Ordering::AcqRel);
        line
    }

    /// A batch is full at `batch_size` events or [`BATCH_BYTES`]: one tenant's policy giving
    /// long reasons made 100-event bodies of megabytes, which sinks refuse (413), and the
    /// batch was dropped with every other tenant's events in it.
    fn is_full(&self, batch: &Batch) -> bool {
        batch.lines.len() >= self.batch_size || batch.bytes >= BATCH_BYTES
    }

    async fn run(self, mut events: mpsc::Receiver<String>, stop: CancellationToken) {
        let mut batch = Batch::default();
        loop {
            // The first event of a batch is awaited without a deadline; the rest for at most
            // `flush_interval`.
            let first = tokio::select! {
                event = events.recv() => event,
                () = stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            batch.push(self.took(first));
            let deadline = tokio::time::sleep(self.flush_interval);
            tokio::pin!(deadline);
            while !self.is_full(&batch) {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => batch.push(self.took(event)),
                        None => break,
                    },
                    () = &mut deadline => break,
                    () = stop.cancelled() => break,
                }
            }
            // Stopping cuts a batch's retries short (the batch itself is kept for the drain).
            tokio::select! {
                () = self.ship(&mut batch, self.max_attempts) => {}
                () = stop.cancelled() => break,
            }
        }
        // Shutting down: what is left gets one attempt, all of it within `DRAIN_BUDGET`, so a
        // slow or silent sink cannot hold up the exit; what does not make it is counted.
        events.close();
        let drained = tokio::time::timeout(DRAIN_BUDGET, async {
            loop {
                while !self.is_full(&batch) {
                    let Ok(event) = events.try_recv() else { break };
                    batch.push(self.took(event));
                }
                if batch.lines.is_empty() {
                    return;
                }
                self.ship(&mut batch, 1).await;
            }
        })
        .await;
        if drained.is_err() {
            let mut left = batch.lines.len() as u64;
            while events.try_recv().is_ok() {
                left += 1;
            }
            tracing::warn!(
                events = left,
                "decision log: dropped at shutdown (the audit still has them)"
            );
            dropped("stopped", left);
        }
    }

    async fn ship(&self, batch: &mut Batch, attempts: u32) {
        if batch.lines.is_empty() {
            return;
        }
        let body: Vec<u8> = batch.lines.concat().into_bytes();
        let count = batch.lines.len() as u64;
        // The batch is cleared only when it is done with: a ship cut short (shutdown) leaves it
        // for the drain.
        let mut backoff = Duration::from_millis(250);
        for attempt in 1..=attempts {
            match self.send(&body).await {
                Ok(()) => {
                    batch.clear();
                    metrics::counter!("approvals_decision_log_shipped_total").increment(count);
                    return;
                }
                Err(error) if attempt < attempts => {
                    tracing::debug!(%error, attempt, "decision log: shipping failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(error) => {
                    tracing::warn!(%error, events = count, "decision log: batch dropped after its last attempt (the audit still has it)");
                }
            }
        }
        batch.clear();
        dropped("undeliverable", count);
    }

    async fn send(&self, body: &[u8]) -> Result<(), String> {
        match &self.destination {
            Destination::Stdout => {
                // On a thread of its own, holding stdout's lock: a write that shutdown stops
                // waiting for still finishes, whole, before the next one starts, so no half
                // line reaches the stream (at worst the drain writes that batch again).
                let body = body.to_vec();
                tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    out.write_all(&body)?;
                    out.flush()
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
            }
            Destination::Http { client, url } => {
                let response = client
                    .post(url)
                    .header("content-type", "application/x-ndjson")
                    .body(body.to_vec())
                    .send()
                    .await
                    // A sink's URL often carries its credential (a token in the path or the
                    // query, a user:password): errors name the host, never the URL. The
                    // sources say why (refused, a certificate, a timeout): reqwest's own text
                    // is only "error sending request".
                    .map_err(|e| {
                        format!("{}: {}", host_of(url), crate::app::chain(&e.without_url()))
                    })?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("{} answered {}", host_of(url), response.status()))
                }
            }
        }
    }
}

/// The host (and port) of a sink URL, all a log line may say of it.
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| u.port().map_or(h.to_owned(), |p| format!("{h}:{p}")))
        })
        .unwrap_or_else(|| "the decision log sink".into())
}

/// How long shipping may take once the service has drained its requests: the events left
/// get one attempt within it, and the process exits in time for its supervisor's kill.
const DRAIN_BUDGET: Duration = Duration::from_secs(5);

fn dropped(reason: &'static str, count: u64) {
    metrics::counter!("approvals_decision_log_dropped_total", "reason" => reason).increment(count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use approvals_core::{ApprovalId, AuditKind, TenantId, Timestamp};

    /// A sink that never answers while events of the largest size keep coming: the queue stops
    /// at its byte bound, far below its count bound (it held 10,000 of them, over a gigabyte).
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_too() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ingest", silent.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let settings = DecisionLogSettings {
            sink: DecisionLogSink::Http,
            url: Some(url),
            ..DecisionLogSettings::default()
        };
        let stop = CancellationToken::new();
        let (log, _task) = DecisionLog::start(&settings, stop.clone());
        let reasons: Vec<String> = (0..16).map(|_| "é".repeat(1_000)).collect();
        let entry = AuditEntry {
            timestamp: Timestamp::now(),
            tenant: TenantId::parse("acme").unwrap(),
            approval_id: ApprovalId::parse("req-1").unwrap(),
            kind: AuditKind::Submitted,
            actor: "agent".into(),
            details: serde_json::json!({"reasons": reasons, "shadow": {"reasons": reasons}}),
        };
        let size = serde_json::to_string(&entry).unwrap().len() + 1;
        let offered = 2 * QUEUE_BYTES / size;
        let queued = (0..offered).filter(|_| log.offer(&entry)).count();
        // What the queue holds, and at most one batch the shipper took out of it.
        let batch = settings.batch_size;
        assert!(
            queued <= QUEUE_BYTES / size + batch,
            "{queued} of {offered} events of {size} bytes queued"
        );
        stop.cancel();
    }

    /// `sink` served on a free port; its `/ingest` URL.
    async fn serve_sink(sink: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ingest", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, sink).await });
        url
    }

    /// Settings that ship to `url`.
    fn shipping_to(url: String) -> DecisionLogSettings {
        DecisionLogSettings {
            sink: DecisionLogSink::Http,
            url: Some(url),
            ..DecisionLogSettings::default()
        }
    }

    fn large_entry(tenant: &str, id: &str) -> AuditEntry {
        let reasons: Vec<String> = (0..16).map(|_| "é".repeat(1_000)).collect();
        AuditEntry {
            timestamp: Timestamp::now(),
            tenant: TenantId::parse(tenant).unwrap(),
            approval_id: ApprovalId::parse(id).unwrap(),
            kind: AuditKind::Submitted,
            actor: "agent".into(),
            details: serde_json::json!({"reasons": reasons, "shadow": {"reasons": reasons}}),
        }
    }

    /// One tenant's long reasons do not cost the other tenants their events: a sink that takes
    /// bodies of up to 2 MiB (ingest limits are usually 4–5) gets every event, where a batch of
    /// 100 such events (6 MB) was refused five times and dropped whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_of_large_events_fits_a_sinks_body_limit() {
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let sink = axum::Router::new()
            .route(
                "/ingest",
                axum::routing::post(move |body: String| {
                    let lines_tx = lines_tx.clone();
                    async move {
                        for line in body.lines() {
                            let _ = lines_tx.send(line.to_owned());
                        }
                        axum::http::StatusCode::NO_CONTENT
                    }
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(2 << 20));
        let settings = DecisionLogSettings {
            flush_interval: Duration::from_millis(50),
            ..shipping_to(serve_sink(sink).await)
        };
        let stop = CancellationToken::new();
        let (log, _task) = DecisionLog::start(&settings, stop.clone());
        for n in 0..100 {
            assert!(log.offer(&large_entry("loud", &format!("req-{n}"))));
        }
        let mut quiet = large_entry("quiet", "req-1");
        quiet.details = serde_json::json!({"reasons": ["ok"]});
        assert!(log.offer(&quiet));
        let mut shipped = 0;
        while shipped < 101 {
            let line = tokio::time::timeout(Duration::from_secs(15), lines.recv())
                .await
                .unwrap_or_else(|_| panic!("{shipped} of 101 events shipped within 15 s"))
                .unwrap();
            serde_json::from_str::<serde_json::Value>(&line).expect("a whole JSON line");
            shipped += 1;
        }
        stop.cancel();
    }

    /// A sink 100 ms away keeps up with thousands of events a second by default: one batch at
    /// a time of the former default 100 events shipped at most 1,000 a second, and the queue
    /// of a busy instance filled (events dropped) while the sink was fine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_distant_sink_keeps_up_with_a_busy_instance() {
        let shipped = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&shipped);
        let sink = axum::Router::new().route(
            "/ingest",
            axum::routing::post(move |body: String| {
                let counted = Arc::clone(&counted);
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    counted.fetch_add(body.lines().count(), Ordering::AcqRel);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let settings = DecisionLogSettings {
            flush_interval: Duration::from_millis(50),
            queue_capacity: 1_000,
            ..shipping_to(serve_sink(sink).await)
        };
        let stop = CancellationToken::new();
        let (log, _task) = DecisionLog::start(&settings, stop.clone());
        let mut entry = large_entry("busy", "req-1");
        entry.details = serde_json::json!({"reasons": ["a read"]});
        // 3,000 events over about a second: 3,000 a second.
        let mut refused = 0;
        for _ in 0..30 {
            refused += (0..100).filter(|_| !log.offer(&entry)).count();
            tokio::time::sleep(Duration::from_millis(33)).await;
        }
        assert_eq!(refused, 0, "events dropped with the sink up");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while shipped.load(Ordering::Acquire) < 3_000 {
            assert!(std::time::Instant::now() < deadline, "shipped within 15 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    }

    /// A failed POST says why, and to which host: reqwest's own text was only "error sending
    /// request", and the runbook's first check is that log line.
    #[tokio::test]
    async fn a_failed_post_names_its_host_and_its_cause() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let shipper = Shipper {
            destination: Destination::Http {
                client: reqwest::Client::new(),
                url: format!("http://{address}/ingest?token=secret"),
            },
            batch_size: 1,
            flush_interval: Duration::from_millis(50),
            max_attempts: 1,
            queued_bytes: Arc::default(),
        };
        let error = shipper
            .send(b"{}\n")
            .await
            .expect_err("nothing listens there");
        assert!(error.starts_with(&format!("{address}: ")), "{error}");
        assert!(error.to_lowercase().contains("refused"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }
}
