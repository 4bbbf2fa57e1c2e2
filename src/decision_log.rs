//! Ships the audit events this instance records (every verdict, decision and policy change)
//! to a SIEM as JSON lines: on standard output, or POSTed in batches to an HTTP endpoint.
//!
//! The tenant's audit is the record; this is a copy for systems that want a stream. So a
//! request never waits for it: events go into a bounded queue (`try_send`), and what does not
//! fit, or cannot be delivered after `decision_log.max_attempts`, is dropped and counted
//! (`approvals_decision_log_dropped_total{reason}`) — it is still in the audit, whose NDJSON
//! export can backfill a gap.

use std::time::Duration;

use approvals_core::AuditEntry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{DecisionLogSettings, DecisionLogSink};

/// The request path's end: cheap to clone, never blocks.
#[derive(Clone)]
pub struct DecisionLog {
    queue: Option<mpsc::Sender<AuditEntry>>,
}

impl DecisionLog {
    /// Ships nothing.
    pub fn disabled() -> Self {
        Self { queue: None }
    }

    /// Starts the shipping task; it drains the queue and stops once `stop` is cancelled.
    pub fn start(
        settings: &DecisionLogSettings,
        stop: CancellationToken,
    ) -> (Self, Option<tokio::task::JoinHandle<()>>) {
        let destination = match (settings.sink, &settings.url) {
            (DecisionLogSink::None, _) => return (Self::disabled(), None),
            (DecisionLogSink::Stdout, _) => Destination::Stdout,
            (DecisionLogSink::Http, Some(url)) => Destination::Http {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap_or_default(),
                url: url.clone(),
            },
            // Refused by the configuration's validation.
            (DecisionLogSink::Http, None) => return (Self::disabled(), None),
        };
        let (queue, events) = mpsc::channel(settings.queue_capacity);
        let shipper = Shipper {
            destination,
            batch_size: settings.batch_size,
            flush_interval: settings.flush_interval,
            max_attempts: settings.max_attempts,
        };
        let task = tokio::spawn(shipper.run(events, stop));
        (Self { queue: Some(queue) }, Some(task))
    }

    /// Queues `entry` for shipping, or drops and counts it if the queue is full.
    pub fn offer(&self, entry: &AuditEntry) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(entry.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => dropped("queue_full", 1),
            Err(mpsc::error::TrySendError::Closed(_)) => dropped("stopped", 1),
        }
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
}

impl Shipper {
    async fn run(self, mut events: mpsc::Receiver<AuditEntry>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            // The first event of a batch is awaited without a deadline; the rest for at most
            // `flush_interval`.
            let first = tokio::select! {
                event = events.recv() => event,
                () = stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            batch.push(first);
            let deadline = tokio::time::sleep(self.flush_interval);
            tokio::pin!(deadline);
            while batch.len() < self.batch_size {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => batch.push(event),
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
                while batch.len() < self.batch_size {
                    let Ok(event) = events.try_recv() else { break };
                    batch.push(event);
                }
                if batch.is_empty() {
                    return;
                }
                self.ship(&mut batch, 1).await;
            }
        })
        .await;
        if drained.is_err() {
            let mut left = batch.len() as u64;
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

    async fn ship(&self, batch: &mut Vec<AuditEntry>, attempts: u32) {
        if batch.is_empty() {
            return;
        }
        let mut body = Vec::new();
        for event in batch.iter() {
            // Plain data: serialising cannot fail.
            body.extend(serde_json::to_vec(event).unwrap_or_default());
            body.push(b'\n');
        }
        let count = batch.len() as u64;
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
                    // query, a user:password): errors name the host, never the URL.
                    .map_err(|e| e.without_url().to_string())?;
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
