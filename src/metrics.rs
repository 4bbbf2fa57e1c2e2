//! Prometheus metrics: counters and histograms through the `metrics` facade, plus the
//! pending figures, which are a snapshot of backend state rather than observations.
//!
//! `approvals_pending` and `approvals_pending_age_seconds` describe what is pending *now*.
//! They are recomputed in the background (`app::Approvals::keep_figures_fresh`) from the backend's
//! indexes and rendered here from the latest snapshot, so a scrape never touches Redis and
//! every instance reports the same truth. A tenant that had approvals pending and has none now
//! reads 0 on every engine: Redis reports every tenant it ever parked for, Temporal's visibility
//! only tenants with a running approval, so the snapshot adds the tenants this process saw
//! pending before ([`KnownTenants`], bounded).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use approvals_core::{
    Approval, BackendError, EngineStatus, PendingStats, TenantId, TenantPending, Timestamp,
};
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::policy::PolicyDecision;

/// Latency buckets for request-scale timings (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// How late an expiry is recorded (seconds): a sweep interval normally, hours when no
/// instance ran. With the request buckets every late expiry read "over a minute".
const SWEEPER_LAG_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];
/// Buckets for how long a reviewer took (to look, to decide; seconds): [`AGE_BUCKETS`] with
/// seconds below the minute first, since the inbox updates live and most first looks and many
/// decisions come within one: with a minute as the first bucket every p50 under it read 30 s.
const WAIT_BUCKETS: &[f64] = &[
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    43200.0,
    86400.0,
    172800.0,
    259200.0,
    604800.0,
    1_209_600.0,
    2_592_000.0,
    7_776_000.0,
    31_536_000.0,
];

/// Buckets for human-scale waits (seconds): a minute to a year (Temporal holds approvals for
/// weeks or months; with a week's top bucket every quantile past it read "one week").
const AGE_BUCKETS: &[f64] = WAIT_BUCKETS.split_at(4).1;

/// At most this many tenants with nothing pending are remembered to report 0 (those that had
/// approvals pending longest ago are forgotten first): a bound on the `approvals_pending*`
/// series an engine that reports only tenants with something pending can leave behind.
pub const MAX_ZEROED_TENANTS: usize = 10_000;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use (tests build several apps per process).
fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("approvals_time_to_decision_seconds".into()),
                    WAIT_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("approvals_time_to_first_view_seconds".into()),
                        WAIT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("approvals_sweeper_lag_seconds".into()),
                        SWEEPER_LAG_BUCKETS,
                    )
                })
                .and_then(|b| b.set_buckets(LATENCY_BUCKETS));
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Fails only if another recorder is installed; ours still renders what it sees.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            keep_up(handle.clone());
            handle
        })
        .clone()
}

/// Histogram samples wait in the recorder, one by one, until a render or an upkeep folds them
/// into their buckets: without an upkeep, an instance nobody scrapes (Prometheus down, a broken
/// scrape job, `approvals dev`) keeps 8 bytes per request for ever. A thread of its own, so it
/// runs whatever runtime (or none) the process has.
fn keep_up(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name(UPKEEP_THREAD.into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        });
    if let Err(error) = started {
        tracing::warn!(%error, "metrics upkeep not started: histograms grow until scraped");
    }
}

const UPKEEP_THREAD: &str = "metrics-upkeep";
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder now: what is counted before it is installed is lost.
/// The service calls it before its engine starts (a [`MetricsHandle`] comes later), the
/// Temporal worker before anything.
pub fn install_recorder() {
    let _ = prometheus();
    // The worker ships its expiries to the decision log too.
    decision_log_drops_at_zero();
}

/// The recorder's counters and histograms in Prometheus text (the worker's `/metrics`).
pub fn render_recorded() -> String {
    prometheus().render()
}

fn describe() {
    metrics::describe_counter!(
        "approvals_notifications_total",
        "Webhook delivery attempts by tenant and outcome (sent, failed: retried later, dead: given up; withdrawn: an expiring-soon warning or a parked notification not sent, its approval closed first)."
    );
    metrics::describe_counter!(
        "approvals_policy_allows_overruled_total",
        "Allows of regorus' VM its interpreter did not confirm (policy.confirm_allows): the answer was the interpreter's."
    );
    metrics::describe_counter!(
        "approvals_notifications_queued_total",
        "Webhook deliveries queued, by tenant."
    );
    metrics::describe_histogram!(
        "approvals_time_to_first_view_seconds",
        "Seconds from parking to the first time a reviewer opened the approval in the inbox."
    );
    metrics::describe_counter!(
        "approvals_auth_failures_total",
        "Credentials refused: surface api (a missing or unknown bearer token) or inbox (a failed sign-in)."
    );
    metrics::describe_gauge!(
        "approvals_notifications_reader_lag_seconds",
        "How far the webhook reader is behind the tenant's audit, in seconds (0 once caught up); it must stay well inside what the audit keeps."
    );
    metrics::describe_gauge!(
        "approvals_notifications_audit_gap_timestamp_seconds",
        "Unix time of the last audit gap the webhook reader found for the tenant (0: none since this instance started)."
    );
    metrics::describe_counter!(
        "approvals_notifications_audit_gaps_total",
        "Times the webhook reader found events after its cursor trimmed from the tenant's audit (length cap or retention) before it read them: their webhooks were not sent."
    );
    metrics::describe_gauge!(
        "approvals_notifications_pending",
        "Webhook deliveries waiting to be sent or retried (all tenants)."
    );
    metrics::describe_counter!(
        "approvals_submitted_total",
        "Submits by tenant and policy decision."
    );
    metrics::describe_counter!(
        "approvals_decisions_total",
        "Approvals settled, by tenant and outcome (accepted, rejected, expired)."
    );
    metrics::describe_histogram!(
        "approvals_time_to_decision_seconds",
        "From submission to decision or expiry."
    );
    metrics::describe_counter!(
        "approvals_http_requests_total",
        "HTTP requests by route template, method and status class."
    );
    metrics::describe_histogram!(
        "approvals_http_request_duration_seconds",
        "HTTP request latency by route template and method."
    );
    metrics::describe_counter!(
        "approvals_backend_errors_total",
        "Backend calls that failed, by kind of failure."
    );
    metrics::describe_counter!(
        "approvals_unreadable_records_total",
        "Stored values an engine could not read and passed over (see the log for the keys)."
    );
    metrics::describe_counter!(
        "approvals_sweeper_runs_total",
        "Expiry sweeper passes, by result."
    );
}

/// Renders `/metrics`: the recorder's output and the pending snapshot.
#[derive(Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    pending: Arc<RwLock<Option<Snapshot>>>,
    bounds: Arc<Vec<Duration>>,
    ttls: Arc<Vec<(String, f64)>>,
    /// Per instance, not per process: tests run several instances in one process.
    long_polls: Arc<AtomicI64>,
    /// Whether the backend answered the last ping (-1 before the first).
    backend_up: Arc<AtomicI64>,
    /// Pending-figures passes failed in a row (0 after one that worked): its log line is said
    /// once per stretch, and its figures withdrawn after [`FIGURES_KEPT_FOR_FAILED_PASSES`].
    figures_failing: Arc<std::sync::atomic::AtomicU32>,
    /// The tenants seen pending, reported as 0 when the engine leaves them out.
    known: Arc<Mutex<KnownTenants>>,
    /// `approvals_engine_info` labels: which engine answers (`backend.kind`) and, for a dual
    /// soak, which one is primary. Alert rules that only matter for Temporal select on it.
    engine: Arc<(String, String)>,
}

/// Pending-figures passes that may fail in a row before the figures are withdrawn (only their
/// age is shown then): frozen on an instance cut off from its backend, they won
/// `max by (tenant)` over the instances that still count, and kept "about to expire" firing
/// for an approval decided since.
const FIGURES_KEPT_FOR_FAILED_PASSES: u32 = 10;

struct Snapshot {
    stats: PendingStats,
    /// Pending count by tenant, for the per-tenant cap every parking submit checks.
    counts: HashMap<TenantId, u64>,
    taken: Instant,
    took: Duration,
}

impl MetricsHandle {
    /// `max_ttl` extends the age buckets past the longest configured lifetime; `ttls` are the
    /// per-tenant lifetimes (with `*` for the default), exported for alert thresholds.
    pub fn new(max_ttl: Duration, ttls: Vec<(String, Duration)>) -> Self {
        let mut bounds: Vec<Duration> = AGE_BUCKETS
            .iter()
            .map(|s| Duration::from_secs_f64(*s))
            .collect();
        if let Some(last) = bounds.last().copied() {
            if max_ttl >= last {
                bounds.push(max_ttl + max_ttl / 4);
            }
        }
        let prometheus = prometheus();
        rare_failures_at_zero();
        Self {
            prometheus,
            pending: Arc::default(),
            bounds: Arc::new(bounds),
            ttls: Arc::new(
                ttls.into_iter()
                    .map(|(t, d)| (t, d.as_secs_f64()))
                    .collect(),
            ),
            long_polls: Arc::default(),
            backend_up: Arc::new(AtomicI64::new(-1)),
            figures_failing: Arc::default(),
            known: Arc::new(Mutex::new(KnownTenants::new(MAX_ZEROED_TENANTS))),
            engine: Arc::new(("redis".into(), String::new())),
        }
    }

    /// Names the engine in `approvals_engine_info{engine, primary}` (`primary` is empty
    /// unless `engine` is `dual`).
    pub fn with_engine(mut self, engine: &str, primary: &str) -> Self {
        self.engine = Arc::new((engine.to_owned(), primary.to_owned()));
        self
    }

    pub fn age_bounds(&self) -> &[Duration] {
        &self.bounds
    }

    /// Records whether the backend answered a ping; true when that changed (for logging
    /// changes only).
    pub fn set_backend_up(&self, up: bool) -> bool {
        self.backend_up.swap(i64::from(up), Ordering::Relaxed) != i64::from(up)
    }

    /// Records whether the pending figures could be recomputed; true when that changed.
    pub fn set_figures_failing(&self, failing: bool) -> bool {
        if failing {
            self.figures_failing.fetch_add(1, Ordering::Relaxed) == 0
        } else {
            self.figures_failing.swap(0, Ordering::Relaxed) != 0
        }
    }

    /// `tenant`'s pending count in the latest figures (0 before the first).
    pub fn pending_count(&self, tenant: &TenantId) -> u64 {
        let pending = self
            .pending
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pending
            .as_ref()
            .and_then(|s| s.counts.get(tenant).copied())
            .unwrap_or(0)
    }

    /// Stores a fresh snapshot and how long computing it took. Tenants seen pending before
    /// and missing from `stats` are added with nothing pending; tenants seen for the first
    /// time get their outcome counters at 0.
    pub fn set_pending(&self, stats: PendingStats, took: Duration) {
        let (stats, new) = {
            let mut known = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let stats = known.fill(stats, self.bounds.len());
            (stats, known.take_new())
        };
        new.iter().for_each(introduce);
        let counts = stats
            .tenants
            .iter()
            .map(|t| (t.tenant.clone(), t.count))
            .collect();
        let snapshot = Snapshot {
            stats,
            counts,
            taken: Instant::now(),
            took,
        };
        *self
            .pending
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snapshot);
    }

    /// `/metrics`: the recorder, this instance's long-polls, the engine's status and the
    /// latest pending snapshot.
    pub fn render(&self, engine: &EngineStatus) -> String {
        let mut out = self.prometheus.render();
        let up = self.backend_up.load(Ordering::Relaxed);
        if up >= 0 {
            let _ = writeln!(out, "# HELP approvals_backend_up Whether the backend answered the last ping (from /readyz and after each pending-figures pass).");
            let _ = writeln!(
                out,
                "# TYPE approvals_backend_up gauge\napprovals_backend_up {up}"
            );
        }
        render_engine(&mut out, engine);
        let (kind, primary) = &*self.engine;
        let _ = writeln!(out, "# HELP approvals_engine_info The engine that answers (backend.kind) and a dual soak's primary.\n# TYPE approvals_engine_info gauge\napprovals_engine_info{{engine=\"{kind}\",primary=\"{primary}\"}} 1");
        let _ = writeln!(
            out,
            "# HELP approvals_long_polls_in_flight Decision long-polls waiting now."
        );
        let _ = writeln!(out, "# TYPE approvals_long_polls_in_flight gauge");
        let _ = writeln!(
            out,
            "approvals_long_polls_in_flight {}",
            self.long_polls.load(Ordering::Relaxed)
        );
        let pending = self
            .pending
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(snapshot) = pending.as_ref() {
            if self.figures_failing.load(Ordering::Relaxed) < FIGURES_KEPT_FOR_FAILED_PASSES {
                render_pending(&mut out, &snapshot.stats, &self.bounds);
            }
            let _ = writeln!(
                out,
                "# HELP approvals_pending_snapshot_age_seconds How old the pending figures are."
            );
            let _ = writeln!(out, "# TYPE approvals_pending_snapshot_age_seconds gauge");
            let _ = writeln!(
                out,
                "approvals_pending_snapshot_age_seconds {}",
                snapshot.taken.elapsed().as_secs_f64()
            );
            let _ = writeln!(out, "# HELP approvals_pending_stats_duration_seconds How long the last recompute of the pending figures took.");
            let _ = writeln!(out, "# TYPE approvals_pending_stats_duration_seconds gauge");
            let _ = writeln!(
                out,
                "approvals_pending_stats_duration_seconds {}",
                snapshot.took.as_secs_f64()
            );
        }
        let _ = writeln!(out, "# HELP approvals_ttl_seconds Configured approval lifetime per tenant (`*`: the default).");
        let _ = writeln!(out, "# TYPE approvals_ttl_seconds gauge");
        for (tenant, seconds) in self.ttls.iter() {
            let _ = writeln!(
                out,
                "approvals_ttl_seconds{{tenant=\"{tenant}\"}} {seconds}"
            );
        }
        out
    }
}

/// The tenants seen with approvals pending, so that one whose last approval settled reads 0
/// instead of vanishing from `approvals_pending` (a series that disappears is not a 0 to
/// Prometheus: `delta`, `max by` and the dashboards see a gap, not an empty queue). Per process:
/// an instance started since a tenant last had something pending does not know it.
#[derive(Debug)]
pub struct KnownTenants {
    /// Tenant -> the pass in which it last had something pending.
    last_pending: HashMap<TenantId, u64>,
    /// Tenants reported pending that were not remembered before this pass.
    new: Vec<TenantId>,
    pass: u64,
    max_zeroed: usize,
}

impl KnownTenants {
    pub fn new(max_zeroed: usize) -> Self {
        Self {
            last_pending: HashMap::new(),
            new: Vec::new(),
            pass: 0,
            max_zeroed,
        }
    }

    /// The tenants first remembered since the last call.
    pub fn take_new(&mut self) -> Vec<TenantId> {
        std::mem::take(&mut self.new)
    }

    /// `stats` with every remembered tenant it lacks added at 0 (`bounds` age buckets each);
    /// remembers the tenants it reports pending.
    pub fn fill(&mut self, mut stats: PendingStats, bounds: usize) -> PendingStats {
        self.pass += 1;
        let reported: HashSet<TenantId> = stats.tenants.iter().map(|t| t.tenant.clone()).collect();
        for t in stats.tenants.iter().filter(|t| t.count > 0) {
            if self
                .last_pending
                .insert(t.tenant.clone(), self.pass)
                .is_none()
            {
                self.new.push(t.tenant.clone());
            }
        }
        let mut zeroed: Vec<(u64, TenantId)> = self
            .last_pending
            .iter()
            .filter(|(tenant, _)| !reported.contains(*tenant))
            .map(|(tenant, pass)| (*pass, tenant.clone()))
            .collect();
        if zeroed.len() > self.max_zeroed {
            // Forget those that had something pending longest ago.
            zeroed.sort_unstable();
            let forget = zeroed.len() - self.max_zeroed;
            for (_, tenant) in zeroed.drain(..forget) {
                self.last_pending.remove(&tenant);
            }
        }
        zeroed.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        stats
            .tenants
            .extend(zeroed.into_iter().map(|(_, tenant)| TenantPending {
                tenant,
                count: 0,
                age_sum_seconds: 0.0,
                oldest_age_seconds: 0.0,
                le: vec![0; bounds],
            }));
        stats
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn render_engine(out: &mut String, engine: &EngineStatus) {
    if let Some(calls) = engine.calls {
        let help = "Multiplexed Redis connections the request path shares.";
        gauge(out, "approvals_redis_connections", help, calls.connections);
        let help = "Redis calls sent and not answered yet.";
        gauge(
            out,
            "approvals_redis_calls_in_flight",
            help,
            calls.in_flight,
        );
        let help = "Callers queued because redis.max_in_flight calls are in flight.";
        gauge(out, "approvals_redis_calls_waiting", help, calls.waiting);
        let help = "Redis calls allowed in flight at once (redis.max_in_flight).";
        gauge(
            out,
            "approvals_redis_max_in_flight",
            help,
            calls.max_in_flight,
        );
    }
    if let Some(heard) = engine.decisions_heard {
        let help = "Whether the Redis decision subscriber is subscribed: while 0, long-polls \
                    here learn of decisions only by reading every 2-3 s.";
        gauge(
            out,
            "approvals_redis_decision_subscriber_up",
            help,
            u8::from(heard),
        );
    }
    if let Some(up) = engine.secondary_up {
        let help = "Dual backend: whether the secondary answers (its last write; its last read or ping once no write has failed for a minute).";
        gauge(out, "approvals_dual_secondary_up", help, u8::from(up));
    }
}

fn render_pending(out: &mut String, stats: &PendingStats, bounds: &[Duration]) {
    let help = "How far past its deadline the most overdue pending approval is whose expiry is \
                not recorded yet (0: none; the sweeper or Temporal's timers are behind).";
    gauge(
        out,
        "approvals_expiry_overdue_seconds",
        help,
        stats.overdue_seconds,
    );
    let _ = writeln!(
        out,
        "# HELP approvals_pending Approvals waiting for a reviewer now."
    );
    let _ = writeln!(out, "# TYPE approvals_pending gauge");
    for t in &stats.tenants {
        let _ = writeln!(
            out,
            "approvals_pending{{tenant=\"{}\"}} {}",
            t.tenant, t.count
        );
    }
    let _ = writeln!(
        out,
        "# HELP approvals_pending_oldest_age_seconds Age of the oldest pending approval."
    );
    let _ = writeln!(out, "# TYPE approvals_pending_oldest_age_seconds gauge");
    for t in &stats.tenants {
        let _ = writeln!(
            out,
            "approvals_pending_oldest_age_seconds{{tenant=\"{}\"}} {}",
            t.tenant, t.oldest_age_seconds
        );
    }
    let _ = writeln!(
        out,
        "# HELP approvals_pending_age_seconds Age of the approvals pending now."
    );
    let _ = writeln!(out, "# TYPE approvals_pending_age_seconds histogram");
    for t in &stats.tenants {
        for (bound, count) in bounds.iter().zip(&t.le) {
            let _ = writeln!(
                out,
                "approvals_pending_age_seconds_bucket{{tenant=\"{}\",le=\"{}\"}} {count}",
                t.tenant,
                bound.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "approvals_pending_age_seconds_bucket{{tenant=\"{}\",le=\"+Inf\"}} {}",
            t.tenant, t.count
        );
        let _ = writeln!(
            out,
            "approvals_pending_age_seconds_sum{{tenant=\"{}\"}} {}",
            t.tenant, t.age_sum_seconds
        );
        let _ = writeln!(
            out,
            "approvals_pending_age_seconds_count{{tenant=\"{}\"}} {}",
            t.tenant, t.count
        );
    }
}

pub fn submitted(tenant: &TenantId, decision: PolicyDecision) {
    let decision = match decision {
        PolicyDecision::Allow => "allow",
        PolicyDecision::Deny => "deny",
        PolicyDecision::RequireApproval => "require_approval",
    };
    metrics::counter!("approvals_submitted_total", "tenant" => tenant.to_string(), "decision" => decision).increment(1);
}

/// A candidate policy was evaluated beside the active one; `agrees` when both decided alike.
pub fn shadow_evaluated(tenant: &TenantId, agrees: bool) {
    let tenant = tenant.to_string();
    metrics::counter!("approvals_policy_shadow_evaluations_total", "tenant" => tenant.clone())
        .increment(1);
    if !agrees {
        metrics::counter!("approvals_policy_shadow_disagreements_total", "tenant" => tenant)
            .increment(1);
    }
}

/// A decision this instance made (or an expiry it recorded).
pub fn decided(approval: &Approval) {
    let tenant = approval.tenant.to_string();
    let outcome = approval.status.as_str();
    metrics::counter!("approvals_decisions_total", "tenant" => tenant.clone(), "outcome" => outcome).increment(1);
    let at = approval.decided_at.unwrap_or(approval.expires_at);
    let waited = at
        .as_millis()
        .saturating_sub(approval.submitted_at.as_millis())
        .max(0) as f64
        / 1000.0;
    metrics::histogram!("approvals_time_to_decision_seconds", "tenant" => tenant, "outcome" => outcome).record(waited);
}

/// Where a failed engine call came from: a client's request, a readiness probe, or work the
/// service does by itself (pending figures, chores). Only the first is what some caller was
/// answered: a probe every few seconds during an outage with no traffic is not an error rate
/// that should page.
#[derive(Debug, Clone, Copy)]
pub enum ErrorSource {
    Request,
    Readiness,
    Figures,
    Chore,
}

/// A failed engine call, by kind of failure and where it came from.
pub fn backend_error(error: &BackendError, source: ErrorSource) {
    let source = match source {
        ErrorSource::Request => "request",
        ErrorSource::Readiness => "readiness",
        ErrorSource::Figures => "figures",
        ErrorSource::Chore => "chore",
    };
    metrics::counter!("approvals_backend_errors_total", "kind" => error.kind(), "source" => source)
        .increment(1);
}

/// Registers the counters of rare failures at 0, so that the first one is an increase the
/// alerts on them see (a series born at 1 has no earlier sample) and their queries answer.
/// A failed batch is counted all at once: a series born at its size has no `increase()`.
fn decision_log_drops_at_zero() {
    for reason in ["queue_full", "stopped", "undeliverable"] {
        metrics::counter!("approvals_decision_log_dropped_total", "reason" => reason).increment(0);
    }
}

pub(crate) fn rare_failures_at_zero() {
    decision_log_drops_at_zero();
    for outcome in ["loaded", "failed"] {
        metrics::counter!("approvals_policy_reloads_total", "outcome" => outcome).increment(0);
    }
    for role in ["active", "candidate"] {
        metrics::counter!("approvals_policy_sandbox_failures_total", "role" => role).increment(0);
    }
    for role in ["primary", "secondary"] {
        metrics::counter!("approvals_unreadable_records_total", "role" => role).increment(0);
    }
    // A client's read of one damaged record: ApprovalsUnreadableRecords reads it. An outage's
    // failed requests, ApprovalsBackendErrors: one short enough to fall between two scrapes
    // was the series' birth, no increase.
    for kind in ["corrupt", "unavailable", "timeout"] {
        metrics::counter!("approvals_backend_errors_total", "kind" => kind, "source" => "request")
            .increment(0);
    }
}

/// Registers `tenant`'s outcome counters at 0. A counter series that first appears at 1 has no
/// earlier sample, so `increase()` and `rate()` miss that first event: the alert on pending
/// approvals piling up without decisions fired after a deploy though reviewers were deciding.
fn introduce(tenant: &TenantId) {
    for outcome in ["accepted", "rejected", "expired"] {
        metrics::counter!("approvals_decisions_total", "tenant" => tenant.to_string(), "outcome" => outcome)
            .increment(0);
    }
    metrics::counter!("approvals_action_mismatches_total", "tenant" => tenant.to_string())
        .increment(0);
    notifications_introduced(tenant);
}

/// A tenant with webhooks, met by this instance's reader: its notification counters exist
/// from then on, at 0, so that its first dead letter after a restart is an increase the alert
/// sees (a series born at 1 shows none), also for a tenant with nothing pending.
pub fn notifications_introduced(tenant: &TenantId) {
    let tenant = tenant.to_string();
    for outcome in ["sent", "failed", "dead", "withdrawn"] {
        metrics::counter!("approvals_notifications_total", "tenant" => tenant.clone(), "outcome" => outcome)
            .increment(0);
    }
}

/// An expiry this instance recorded, and its lag: how long after `expires_at` it was recorded.
pub fn expired(approval: &Approval, recorded_at: Timestamp) {
    decided(approval);
    let lag = approval.expires_at.elapsed_at(recorded_at).as_secs_f64();
    metrics::histogram!("approvals_sweeper_lag_seconds").record(lag);
}

/// How far the webhook reader is behind a tenant's audit (zero once it has read it all).
pub fn notifications_reader_lag(tenant: &TenantId, behind: Duration) {
    let tenant = tenant.to_string();
    metrics::gauge!("approvals_notifications_reader_lag_seconds", "tenant" => tenant.clone())
        .set(behind.as_secs_f64());
    // Exported before a first gap (0: never), so that every series exists ahead of its event.
    metrics::counter!("approvals_notifications_audit_gaps_total", "tenant" => tenant.clone())
        .increment(0);
    metrics::gauge!("approvals_notifications_audit_gap_timestamp_seconds", "tenant" => tenant)
        .increment(0.0);
}

/// Events trimmed from a tenant's audit before the webhook reader reached them. The time of
/// the last one is what the alert reads: a counter born at 1 (the first pass after a restart,
/// when gaps are found) shows no `increase()`.
pub fn notifications_audit_gap(tenant: &TenantId) {
    let tenant = tenant.to_string();
    metrics::counter!("approvals_notifications_audit_gaps_total", "tenant" => tenant.clone())
        .increment(1);
    let now = Timestamp::now().as_millis() as f64 / 1000.0;
    metrics::gauge!("approvals_notifications_audit_gap_timestamp_seconds", "tenant" => tenant)
        .set(now);
}

/// A stored value an engine could not read and passed over (`role`: which engine of a pair).
pub fn unreadable_record(answering: bool) {
    let role = if answering { "primary" } else { "secondary" };
    metrics::counter!("approvals_unreadable_records_total", "role" => role).increment(1);
}

/// One pass of an engine chore; the sweeper's are what the sweeper alert watches.
pub fn chore_run(chore: &'static str, ok: bool) {
    if chore == "sweep" {
        let result = if ok { "ok" } else { "error" };
        metrics::counter!("approvals_sweeper_runs_total", "result" => result).increment(1);
    }
}

/// Counts a long-poll of this instance while it lives.
pub struct LongPoll(Arc<AtomicI64>);

impl LongPoll {
    pub fn start(metrics: &MetricsHandle) -> Self {
        metrics.long_polls.fetch_add(1, Ordering::Relaxed);
        Self(metrics.long_polls.clone())
    }
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The method as a label: the standard ones by name, anything a client made up as `other`, so
/// that no caller can add label values (and `/metrics` lines) at will.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Middleware: request count and latency by route template (never the raw path, whose ids
/// would make unbounded label values) and method (a bounded set). The API's routes count in
/// their admission middleware instead (one layer less for a waiting long-poll to hold).
pub async fn track_http(request: Request, next: Next) -> Response {
    let timing = HttpTiming::start(&request);
    let response = next.run(request).await;
    timing.record(&response);
    response
}

/// One request's count and latency, from its start to its answer, or to its end unanswered.
pub struct HttpTiming {
    /// Shared (an `Arc`): a long-poll holds it, not a copy, while it waits.
    route: Option<MatchedPath>,
    method: &'static str,
    started: Instant,
    recorded: bool,
}

/// The `status_class` of a request whose client went away (or a proxy gave up on it, or the
/// server cut its connection to make room at `server.max_connections`) before it was
/// answered: nginx's 499. Such requests were not counted at all, so in a slowdown the
/// requests that hung vanished from the counts and the latency histogram's slowest end.
const CLIENT_CLOSED: &str = "client_closed";

impl HttpTiming {
    pub fn start(request: &Request) -> Self {
        Self {
            route: request.extensions().get::<MatchedPath>().cloned(),
            method: method_label(request.method()),
            started: Instant::now(),
            recorded: false,
        }
    }

    pub fn record(mut self, response: &Response) {
        let class = match response.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.count(class);
    }

    fn count(&mut self, class: &'static str) {
        self.recorded = true;
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let (requests, duration) = http_handles(route, self.method, class);
        requests.increment(1);
        duration.record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for HttpTiming {
    /// Dropped unrecorded: the request's future was dropped before its answer (its client
    /// gone, or the server cutting its connection at `server.max_connections`), or its
    /// handler panicked, a server error.
    fn drop(&mut self) {
        if !self.recorded {
            self.count(if std::thread::panicking() {
                "5xx"
            } else {
                CLIENT_CLOSED
            });
        }
    }
}

/// The HTTP metrics' handles for one route, by method and status class.
type RouteHandles = Vec<(
    &'static str,
    &'static str,
    metrics::Counter,
    metrics::Histogram,
)>;

/// Handles looked up in the registry once per route, method and status class rather than on
/// every request (which built two label sets and searched the registry twice). Bounded: routes
/// are the router's own patterns (or "unmatched"), methods and classes are fixed sets.
static HTTP_HANDLES: OnceLock<RwLock<HashMap<Box<str>, RouteHandles>>> = OnceLock::new();

fn http_handles(
    route: &str,
    method: &'static str,
    class: &'static str,
) -> (metrics::Counter, metrics::Histogram) {
    let handles = HTTP_HANDLES.get_or_init(Default::default);
    let find = |found: Option<&RouteHandles>| {
        found?
            .iter()
            .find(|(m, c, _, _)| *m == method && *c == class)
            .map(|(_, _, requests, duration)| (requests.clone(), duration.clone()))
    };
    // Nothing held under these locks can be left half-done by a panic.
    if let Some(known) = find(
        handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route),
    ) {
        return known;
    }
    let requests = metrics::counter!("approvals_http_requests_total", "route" => route.to_owned(), "method" => method, "status_class" => class);
    let duration = metrics::histogram!("approvals_http_request_duration_seconds", "route" => route.to_owned(), "method" => method);
    handles
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(route.into())
        .or_default()
        .push((method, class, requests.clone(), duration.clone()));
    (requests, duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).expect("tenant")
    }

    /// A request whose client hangs up before its answer is counted, with its time, as
    /// `client_closed`: it was not counted at all.
    #[tokio::test]
    async fn a_request_dropped_before_its_answer_is_counted() {
        use tower::ServiceExt as _;
        install_recorder();
        let app = axum::Router::new()
            .route(
                "/dropped-before-answer",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn(track_http));
        let request = axum::http::Request::get("/dropped-before-answer")
            .body(axum::body::Body::empty())
            .expect("request");
        let answer = tokio::time::timeout(Duration::from_millis(100), app.oneshot(request)).await;
        assert!(answer.is_err(), "dropped before its answer");
        let text = render_recorded();
        let line = "approvals_http_requests_total{route=\"/dropped-before-answer\",method=\"GET\",status_class=\"client_closed\"} 1\n";
        assert!(text.contains(line), "{line} in {text}");
    }

    /// An outage's failed requests are an increase from the first: their series exist from
    /// the start (one born at its first failures has no earlier sample, and an outage shorter
    /// than a scrape interval was no `increase()` for ApprovalsBackendErrors).
    #[test]
    fn request_failure_counters_exist_before_the_first_failure() {
        install_recorder();
        rare_failures_at_zero();
        let text = render_recorded();
        for kind in ["unavailable", "timeout", "corrupt"] {
            let series =
                format!("approvals_backend_errors_total{{kind=\"{kind}\",source=\"request\"}} ");
            assert!(text.contains(&series), "{series} in {text}");
        }
    }

    /// An expiry recorded 130 s late reads as under 2 minutes past its deadline or not (the
    /// line the expiry alert and its panel draw), not as somewhere between 1 and 5 minutes.
    #[test]
    fn sweeper_lag_has_a_bucket_at_the_alerts_two_minutes() {
        install_recorder();
        metrics::histogram!("approvals_sweeper_lag_seconds").record(130.0);
        let text = render_recorded();
        let line = "approvals_sweeper_lag_seconds_bucket{le=\"120\"} 0\n";
        assert!(text.contains(line), "{line} in {text}");
    }

    /// A first look 3 s after parking reads as under 5 s, not as "somewhere under a minute".
    #[test]
    fn reviewers_waits_under_a_minute_have_buckets_of_their_own() {
        install_recorder();
        for name in [
            "approvals_time_to_first_view_seconds",
            "approvals_time_to_decision_seconds",
        ] {
            metrics::histogram!(name, "tenant" => "quick-look").record(3.0);
        }
        let text = render_recorded();
        for name in [
            "approvals_time_to_first_view_seconds",
            "approvals_time_to_decision_seconds",
        ] {
            for (le, count) in [("1", 0), ("5", 1)] {
                let line = format!("{name}_bucket{{tenant=\"quick-look\",le=\"{le}\"}} {count}\n");
                assert!(text.contains(&line), "{line} in {text}");
            }
        }
    }

    /// Without it, every histogram sample of an instance nobody scrapes stays in memory.
    #[test]
    fn the_recorder_folds_histogram_samples_in_without_a_scrape() {
        install_recorder();
        // A thread names itself once it runs: looked for until then.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let threads = std::fs::read_dir("/proc/self/task").expect("this process' threads");
            let names: Vec<String> = threads
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect();
            if names.iter().any(|n| n == UPKEEP_THREAD) {
                return;
            }
            assert!(Instant::now() < deadline, "no upkeep thread in {names:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pending(name: &str, count: u64, bounds: usize) -> TenantPending {
        TenantPending {
            tenant: tenant(name),
            count,
            age_sum_seconds: count as f64 * 10.0,
            oldest_age_seconds: if count > 0 { 10.0 } else { 0.0 },
            le: vec![count; bounds],
        }
    }

    fn stats(tenants: Vec<TenantPending>) -> PendingStats {
        PendingStats {
            tenants,
            overdue_seconds: 0.0,
        }
    }

    fn counts(stats: &PendingStats) -> Vec<(String, u64)> {
        let mut counts: Vec<_> = stats
            .tenants
            .iter()
            .map(|t| (t.tenant.to_string(), t.count))
            .collect();
        counts.sort();
        counts
    }

    #[test]
    fn a_tenant_seen_pending_reads_zero_once_the_engine_leaves_it_out() {
        let handle = MetricsHandle::new(Duration::from_secs(3600), Vec::new());
        let bounds = handle.age_bounds().len();
        handle.set_pending(
            stats(vec![
                pending("settles", 2, bounds),
                pending("stays", 1, bounds),
            ]),
            Duration::ZERO,
        );
        assert_eq!(handle.pending_count(&tenant("settles")), 2);
        // Temporal's visibility lists only tenants with a running approval.
        handle.set_pending(stats(vec![pending("stays", 1, bounds)]), Duration::ZERO);
        assert_eq!(handle.pending_count(&tenant("settles")), 0);
        let text = handle.render(&EngineStatus::default());
        assert!(
            text.contains("approvals_pending{tenant=\"settles\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("approvals_pending{tenant=\"stays\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("approvals_pending_oldest_age_seconds{tenant=\"settles\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("approvals_pending_age_seconds_count{tenant=\"settles\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "approvals_pending_age_seconds_bucket{tenant=\"settles\",le=\"+Inf\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("approvals_pending_age_seconds_bucket{tenant=\"settles\",le=\"60\"} 0\n"),
            "{text}"
        );
        // Outcome counters exist from a tenant's first pending figure on, at 0: a series born
        // at its first event shows no increase(), and the alerts on decisions missed it.
        for outcome in ["accepted", "rejected", "expired"] {
            let zero = format!(
                "approvals_decisions_total{{tenant=\"settles\",outcome=\"{outcome}\"}} 0\n"
            );
            assert!(text.contains(&zero), "{zero} in {text}");
        }
        for outcome in ["sent", "failed", "dead", "withdrawn"] {
            let zero = format!(
                "approvals_notifications_total{{tenant=\"settles\",outcome=\"{outcome}\"}} 0\n"
            );
            assert!(text.contains(&zero), "{zero} in {text}");
        }
        // And it comes back with its figures when something is pending again.
        handle.set_pending(stats(vec![pending("settles", 3, bounds)]), Duration::ZERO);
        let text = handle.render(&EngineStatus::default());
        assert!(
            text.contains("approvals_pending{tenant=\"settles\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("approvals_pending{tenant=\"stays\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn tenants_never_seen_pending_are_not_invented_and_engine_zeros_are_not_doubled() {
        let mut known = KnownTenants::new(10);
        // Redis reports every tenant it ever parked for, at 0 when nothing is pending.
        let filled = known.fill(stats(vec![pending("idle", 0, 2), pending("busy", 1, 2)]), 2);
        assert_eq!(counts(&filled), [("busy".into(), 1), ("idle".into(), 0)]);
        let filled = known.fill(stats(vec![pending("idle", 0, 2)]), 2);
        assert_eq!(counts(&filled), [("busy".into(), 0), ("idle".into(), 0)]);
        assert!(filled.tenants.iter().all(|t| t.le == [0, 0]));
        let filled = known.fill(stats(Vec::new()), 2);
        assert_eq!(counts(&filled), [("busy".into(), 0)]);
    }

    #[test]
    fn the_zeroed_tenants_are_bounded_forgetting_the_longest_settled_first() {
        let mut known = KnownTenants::new(2);
        for name in ["first", "second", "third"] {
            known.fill(stats(vec![pending(name, 1, 1)]), 1);
        }
        let filled = known.fill(stats(Vec::new()), 1);
        assert_eq!(counts(&filled), [("second".into(), 0), ("third".into(), 0)]);
        // A tenant pending now is never forgotten, whatever the bound.
        let filled = known.fill(stats(vec![pending("first", 1, 1)]), 1);
        assert_eq!(
            counts(&filled),
            [
                ("first".into(), 1),
                ("second".into(), 0),
                ("third".into(), 0)
            ]
        );
        let filled = known.fill(stats(Vec::new()), 1);
        assert_eq!(counts(&filled), [("first".into(), 0), ("third".into(), 0)]);
    }
}
