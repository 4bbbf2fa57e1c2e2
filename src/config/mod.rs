//! Configuration: defaults, then a TOML file, then `APPROVALS_…` environment variables.
//!
//! The keys are part of the operating contract, so every section denies unknown fields and
//! every environment variable must map to a known key: a typo stops start-up with a message
//! naming it, instead of silently running with a default. Each engine's section is the
//! engine's own type (`approvals_redis::RedisSettings`, `approvals_temporal::TemporalSettings`);
//! `backend` (which engine) is in `backend.rs`, the variables in `env.rs`.

mod backend;
mod env;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use approvals_core::{Lifetimes, TenantId};
use approvals_redis::{ChoreSchedule, RedisSettings};
use approvals_temporal::TemporalSettings;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use backend::{BackendChoice, EngineKind, DEFAULT_SECONDARY_TIMEOUT};
pub use env::{is_service_link, CONFIG_VAR};

use crate::app::InputLimits;
use crate::auth::TokenEntry;
use env::Overrides;

/// A configuration that cannot be used; the process exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
    #[error("environment variable {var} maps to no configuration key ({key})")]
    UnknownVariable { var: String, key: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub backend: BackendChoice,
    pub redis: RedisSettings,
    pub approvals: ApprovalSettings,
    pub policy: PolicySettings,
    pub temporal: TemporalSettings,
    pub worker: WorkerSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub limits: InputLimits,
    pub decision_log: DecisionLogSettings,
    pub ui: UiSettings,
    pub notifications: NotificationSettings,
    pub tenant_store: TenantStoreSettings,
    /// Keys the config file sets that an environment variable overrides (`VAR → key`):
    /// logged at start, since the file then reads as if it were in force (the image sets
    /// `APPROVALS_POLICY__DIR`, so a mounted file's `policy.dir` is not).
    #[serde(skip)]
    pub file_keys_overridden: Vec<String>,
}

/// Where tenants' own settings live: their policy bundles and webhooks (ADR-0015).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantStoreSettings {
    pub kind: TenantStoreKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStoreKind {
    /// In the answering engine when it is Redis; with Temporal answering there are none.
    #[default]
    Engine,
    /// In the Redis at `redis.url`, whichever engine answers: what keeps tenants' bundles and
    /// webhooks through the cutover to Temporal.
    Redis,
}

/// Webhook notifications (kept in Redis; ADR-0014).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationSettings {
    /// Run the webhook reader and sender on this instance.
    pub enabled: bool,
    /// How often tenants' audits are read for new events (the most a notification lags).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often due deliveries are looked for when none were due.
    #[serde(with = "humantime_serde")]
    pub send_interval: Duration,
    /// Deadline of one POST to a receiver.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts before a delivery becomes a dead letter.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one, up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// "Expiring soon" is sent when this share of an approval's TTL is left (0 to 1).
    pub expiring_soon_share: f64,
    pub max_webhooks_per_tenant: usize,
    /// Deliveries a tenant may have waiting (queued or retrying) at once; past it, new ones
    /// are dead letters at once: a tenant whose receivers never answer must not fill the Redis
    /// every tenant shares.
    pub max_queued_per_tenant: usize,
    /// And any one of its webhooks at most this many: a receiver that never answers fills
    /// its own share, not the tenant's whole queue, so its other webhooks keep being sent.
    pub max_queued_per_webhook: usize,
    /// Deliveries one instance attempts at once.
    pub send_concurrency: usize,
    /// Of those, at most this many to one webhook: a receiver that never answers holds this
    /// many attempts for its timeout, not every slot, so other webhooks' deliveries go on.
    pub per_webhook_concurrency: usize,
    /// And at most this many to one tenant's webhooks: a tenant whose several webhooks never
    /// answer cannot hold every slot and hold up the other tenants' notifications.
    pub per_tenant_concurrency: usize,
    /// Audit events the reader reads per tenant and pass at most (more go on at once in the
    /// next pass, after the other tenants): one busy tenant does not hold up the others'.
    pub read_batch: usize,
    /// Networks webhooks may reach besides public addresses (e.g. `["10.20.0.0/16"]` for an
    /// internal relay). Loopback, private, link-local and shared addresses are refused
    /// otherwise, when a webhook is added and at every delivery.
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// An HTTP(S) proxy deliveries go through (`http://proxy.internal:3128`). Proxies from
    /// the environment are never used for webhooks; with this set, the proxy resolves and
    /// connects, and filtering destinations is its job.
    pub proxy: Option<String>,
}

impl NotificationSettings {
    /// The wait after a delivery's `attempts`-th failed attempt, before jitter: `retry_base`
    /// × 2^(attempts-1), at most `retry_max`.
    pub fn retry_after(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(20);
        self.retry_base
            .saturating_mul(1 << exponent)
            .min(self.retry_max)
    }
}

impl Default for NotificationSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(1),
            send_interval: Duration::from_millis(250),
            request_timeout: Duration::from_secs(10),
            // About two hours of retries (2 s doubling to 5 min, then every 5 min): a receiver
            // down for a deploy or an incident misses nothing, and one still failing has an
            // attempt fail in every 10 minutes, which is what the alert watches.
            max_attempts: 30,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            expiring_soon_share: 0.2,
            max_webhooks_per_tenant: 10,
            max_queued_per_tenant: 50_000,
            // Five webhooks that never answer, not one, fill a tenant's queue.
            max_queued_per_webhook: 10_000,
            // Four tenants whose receivers all hang, not two, take every slot.
            send_concurrency: 32,
            per_webhook_concurrency: 4,
            per_tenant_concurrency: 8,
            read_batch: 1_000,
            allowed_networks: Vec::new(),
            proxy: None,
        }
    }
}

/// The reviewers' inbox at `/ui/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiSettings {
    /// Serve the inbox (the API is served either way).
    pub enabled: bool,
    /// Signs session cookies; at least 32 characters, the same on every instance. Unset, each
    /// instance draws its own at start-up: sessions then end with a restart and do not carry
    /// to other instances behind a load balancer.
    pub session_secret: Option<String>,
    /// How long a sign-in lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Where reviewers reach the service, e.g. `https://approvals.example.com`: links to the
    /// inbox are built on it, and an `https://` URL makes session cookies `Secure`.
    pub public_url: Option<String>,
}

impl Default for UiSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            session_secret: None,
            session_ttl: Duration::from_secs(8 * 3600),
            public_url: None,
        }
    }
}

/// Where, besides the tenant's audit, this instance ships the audit events it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionLogSink {
    /// Only the audit (`GET /v1/tenants/{t}/audit`).
    #[default]
    None,
    /// One JSON object per line on standard output (the service's logs go to stderr).
    Stdout,
    /// Batches POSTed as NDJSON to `decision_log.url`.
    Http,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogSettings {
    pub sink: DecisionLogSink,
    /// With `sink = "http"`: where batches are POSTed.
    pub url: Option<String>,
    /// Events per batch at most.
    pub batch_size: usize,
    /// A batch is sent when full or this long after its first event.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Events waiting to be shipped at most; beyond it new ones are dropped and counted (the
    /// audit still has them): shipping never slows a request.
    pub queue_capacity: usize,
    /// Attempts per batch (backoff doubling from 250 ms) before it is dropped and counted.
    pub max_attempts: u32,
}

impl Default for DecisionLogSettings {
    fn default() -> Self {
        Self {
            sink: DecisionLogSink::None,
            url: None,
            // One batch is in flight at a time: a sink 100 ms away takes ten batches a second,
            // and 100 events a batch dropped a busy instance's events.
            batch_size: 1_000,
            flush_interval: Duration::from_secs(1),
            queue_capacity: 10_000,
            max_attempts: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Where `/metrics` is served instead of `listen`, when set: it names every tenant and
    /// what each does, which no agent or reviewer reaching the API should read. Unset, it is
    /// served on `listen` (for a network only the platform reaches).
    pub metrics_listen: Option<SocketAddr>,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the instance keeps taking new connections and requests while
    /// `/readyz` answers 503, before the drain: the time a load balancer needs to stop
    /// sending (a Kubernetes Service's endpoints update a few seconds after SIGTERM).
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Connections open at once; beyond it new ones are closed at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this; a keep-alive connection idle this long is
    /// closed too.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The most a connection may buffer while reading headers (at least 8192).
    pub max_header_bytes: usize,
    /// Requests one HTTP/2 connection may have in flight at once (a proxy or a client
    /// multiplexing long-polls); HTTP/1 carries one at a time.
    pub max_streams_per_connection: u32,
    /// A connection whose answer cannot be written for this long (its client stopped
    /// reading) is closed.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// The longest any request but a decision long-poll may take (`408` past it).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// One INFO line per answered request (status, latency; the span adds route, subject,
    /// tenant and request id). Off: only failures and what the service does by itself.
    pub access_log: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            body_limit: 65_536,
            shutdown_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_streams_per_connection: 256,
            write_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            access_log: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalSettings {
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Per-tenant lifetimes; a change applies to new approvals only.
    #[serde(with = "duration_map")]
    pub tenant_ttl: BTreeMap<String, Duration>,
    #[serde(with = "humantime_serde")]
    pub decided_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub expired_retention: Duration,
    /// How long audit events are kept: older ones are trimmed (Redis, every minute).
    #[serde(with = "humantime_serde")]
    pub audit_retention: Duration,
    /// How often the expiry sweeper runs; bounds how late an expiry is recorded.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How often the pending figures behind /metrics are recomputed (the contract allows 5 s).
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
    /// How often records written by the ADR v1 service are searched for and adopted.
    #[serde(with = "humantime_serde")]
    pub adopt_interval: Duration,
    /// The longest a decision long-poll waits, whatever `wait_seconds` asks (the contract: 60 s).
    #[serde(with = "humantime_serde")]
    pub long_poll_max: Duration,
    /// Pending approvals one tenant may have; past it a submit that would park answers `429`.
    /// Checked against the pending figures, so a burst may pass it by what arrives within
    /// `stats_interval`.
    pub max_pending_per_tenant: u64,
    /// How often an open live event stream (`GET …/events`) reads the tenant's audit: how
    /// late, at most, it shows what another instance recorded.
    #[serde(with = "humantime_serde")]
    pub events_poll_interval: Duration,
    /// Live event streams one tenant may hold open on one instance; past it `429`.
    pub max_event_streams_per_tenant: usize,
    /// The longest one live event stream lasts; the client then reconnects with its
    /// `Last-Event-ID` and misses nothing (EventSource does so by itself).
    #[serde(with = "humantime_serde")]
    pub events_max_duration: Duration,
    /// How far back a reviewer's live stream resumes: a `Last-Event-ID` older than this
    /// resumes from this long ago. The tenant's history is the audit's, which admins read;
    /// they resume from any id.
    #[serde(with = "humantime_serde")]
    pub events_resume_window: Duration,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        let day = Duration::from_secs(86_400);
        Self {
            default_ttl: day,
            tenant_ttl: BTreeMap::new(),
            decided_retention: day,
            expired_retention: day,
            audit_retention: 90 * day,
            sweep_interval: Duration::from_millis(250),
            stats_interval: Duration::from_secs(2),
            // The contract: ADR v1 records are listed and counted within 15 s.
            adopt_interval: Duration::from_secs(10),
            long_poll_max: Duration::from_secs(60),
            max_pending_per_tenant: 100_000,
            events_poll_interval: Duration::from_millis(500),
            max_event_streams_per_tenant: 50,
            events_max_duration: Duration::from_secs(600),
            events_resume_window: Duration::from_secs(3600),
        }
    }
}

impl ApprovalSettings {
    pub fn ttl_for(&self, tenant: &TenantId) -> Duration {
        self.tenant_ttl
            .get(tenant.as_str())
            .copied()
            .unwrap_or(self.default_ttl)
    }

    /// How long approvals and their traces live, for the engines.
    pub fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            default_ttl: self.default_ttl,
            decided_retention: self.decided_retention,
            expired_retention: self.expired_retention,
            audit_retention: self.audit_retention,
        }
    }

    /// How often the Redis engine's chores run.
    pub fn chore_schedule(&self) -> ChoreSchedule {
        ChoreSchedule {
            sweep_interval: self.sweep_interval,
            adopt_interval: self.adopt_interval,
        }
    }

    /// The longest lifetime any tenant has: the age histogram must reach past it.
    pub fn max_ttl(&self) -> Duration {
        self.tenant_ttl
            .values()
            .copied()
            .fold(self.default_ttl, Duration::max)
    }
}

/// The longest approval lifetime accepted.
const MAX_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The longest TTL the Redis backend is meant for; past it, the Temporal backend is the
/// upgrade path (ADR-0001).
pub const REDIS_TTL_COMFORT: Duration = Duration::from_secs(72 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    /// The platform default bundle: what tenants without their own bundle get.
    pub dir: PathBuf,
    /// How often each instance reads the tenants' policy states to pick up an activation.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// The largest bundle upload, in bytes of JSON (the request body limit for that route).
    pub max_bundle_bytes: usize,
    /// Versions a tenant keeps besides those its policy names (active, candidate, the 50 of
    /// its rollback history): an upload past it deletes the oldest of the others.
    pub max_stored_bundles: usize,
    /// Where tenants' uploaded bundles are evaluated (ADR-0019).
    pub sandbox: SandboxSettings,
    /// An `allow` from regorus' VM is given only once its interpreter, the engine the
    /// bundle's tests run on, agrees: the VM takes an error inside a rule body for an unmet
    /// condition (ADR-0003). Off, an allowed request's policy time is about a fifth.
    pub confirm_allows: bool,
}

/// `policy.sandbox`: tenants' uploaded bundles evaluated in child processes of this binary,
/// each under an address-space limit, so one that allocates without bound stops its child, not
/// the service. The platform default bundle (`policy.dir`) is the operator's and runs
/// in-process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    pub enabled: bool,
    /// A child's address-space limit (`RLIMIT_AS`), in MiB: the binary, a bundle and the
    /// evaluation's values.
    pub memory_limit_mib: u64,
    /// The `approvals` binary the children run; unset, this process's own.
    pub binary: Option<PathBuf>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            memory_limit_mib: 2048,
            binary: None,
        }
    }
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies"),
            reload_interval: Duration::from_millis(250),
            max_bundle_bytes: 1 << 20,
            max_stored_bundles: crate::app::DEFAULT_BUNDLES_KEPT,
            sandbox: SandboxSettings::default(),
            confirm_allows: true,
        }
    }
}

/// `approvals worker` (Temporal only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Where the worker serves its own `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub tokens: Vec<TokenEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

/// `log.filter` must log something: an empty filter enables nothing, and a bare word that is
/// no level (`warning`) is read as a target of that name, so every line of the service was
/// dropped, errors included. A target is written `target=level`.
/// `RUST_LOG`'s check: a bare word there is, by its convention, a target to log everything of
/// (`RUST_LOG=approvals`), unless it reads as a level that is none (`warning`, `err`), which
/// would name a target nothing logs to, so nothing at all would be logged.
/// `Err` says why, for a message beside the variable's name.
pub(crate) fn check_env_log_filter(filter: &str) -> Result<(), String> {
    const NOT_LEVELS: [&str; 8] = [
        "warning",
        "err",
        "information",
        "verbose",
        "critical",
        "fatal",
        "notice",
        "none",
    ];
    let bare_not_level = filter
        .split(',')
        .map(str::trim)
        .find(|d| NOT_LEVELS.iter().any(|n| d.eq_ignore_ascii_case(n)));
    if let Some(directive) = bare_not_level {
        return Err(format!(
            "{directive:?} is no level (trace, debug, info, warn, error, off)"
        ));
    }
    parses_as_filter(filter)
}

/// Whether tracing reads `filter`; `Err` says why not.
fn parses_as_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(drop)
        .map_err(|e| e.to_string())
}

pub(crate) fn check_log_filter(filter: &str) -> Result<(), ConfigError> {
    if filter.trim().is_empty() {
        return Err(ConfigError::Invalid(
            "log.filter: empty, nothing would be logged (e.g. \"info\")".into(),
        ));
    }
    for directive in filter.split(',').map(str::trim) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare
            && directive
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "log.filter: {directive:?} is no level (trace, debug, info, warn, error, off); \
                 a target is written target=level"
            )));
        }
    }
    parses_as_filter(filter).map_err(|e| ConfigError::Invalid(format!("log.filter: {e}")))
}

/// The process environment, as far as it is text. `std::env::vars` panics on a variable that
/// is not UTF-8, so any such variable of another program (a Latin-1 path in a pod's
/// environment) stopped every command with a backtrace. Ours must be text; others are skipped.
fn utf8_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        match (key.into_string(), value.into_string()) {
            (Ok(key), Ok(value)) => env.push((key, value)),
            (Ok(key), Err(_)) if key.starts_with(env::PREFIX) => {
                return Err(ConfigError::Invalid(format!("{key}: not UTF-8 text")));
            }
            _ => {}
        }
    }
    Ok(env)
}

/// The shortest `temporal.call_timeout` a decision can be sent within (see `validate`).
const MIN_TEMPORAL_CALL_TIMEOUT: Duration = Duration::from_millis(625);

impl Settings {
    /// Whether tenants' own policy bundles are kept (in Redis: the approvals engine, a dual
    /// backend's Redis primary, or `tenant_store.kind = "redis"`), so that sandboxes are used.
    pub fn keeps_tenant_policies(&self) -> bool {
        self.backend.answering() == EngineKind::Redis
            || self.tenant_store.kind == TenantStoreKind::Redis
    }

    /// Loads `file` (if any) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, utf8_env()?)
    }

    /// As [`Settings::load`], with the environment given (tests use their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        let mut in_file = None;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                path: path.to_owned(),
                source,
            })?;
            // Parsed here first: figment's message for a syntax error quotes the line, and a
            // line may hold a secret (a Redis URL's password with its closing quote missing).
            if let Err(e) = toml::from_str::<toml::Table>(&text) {
                let at = e.span().map_or(String::new(), |span| {
                    let before = text.get(..span.start).unwrap_or(&text);
                    let line = before.matches('\n').count() + 1;
                    format!(" (line {line})")
                });
                return Err(ConfigError::Invalid(format!(
                    "{}{at}: not valid TOML: {}",
                    path.display(),
                    e.message()
                )));
            }
            figment = figment.merge(Toml::string(&text));
            in_file = Some(Figment::from(Toml::string(&text)));
        }
        let overrides = Overrides::from_env(env);
        for o in &overrides.0 {
            // Empty unsets: an image's variable (`APPROVALS_SERVER__METRICS_LISTEN`) cannot be
            // removed, and an optional key must be able to go back to none.
            if o.value.is_empty() {
                figment = figment.merge(Serialized::default(&o.key, None::<String>));
                continue;
            }
            // Typed like figment's own Env provider: "42" is a number, "5m" stays a string.
            let value = o
                .value
                .parse::<figment::value::Value>()
                .unwrap_or_else(|_| o.value.clone().into());
            figment = figment.merge(Serialized::default(&o.key, value));
        }
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| explain(&e, file, &overrides))?;
        let set = |key: &str| {
            in_file.as_ref().is_some_and(|f| f.find_value(key).is_ok())
                || overrides.name_of(key).is_some()
        };
        settings.fit_temporal_deadlines(set("temporal.call_timeout"), set("temporal.scan_timeout"));
        settings.validate()?;
        if let Some(in_file) = in_file {
            settings.file_keys_overridden = overrides
                .0
                .iter()
                .filter(|o| in_file.find_value(&o.key).is_ok())
                .map(|o| format!("{} → {}", o.var, o.key))
                .collect();
        }
        Ok(settings)
    }

    /// Logs each key of the config file an environment variable overrides (call once logging
    /// is set up).
    pub fn warn_of_overridden_file_keys(&self) {
        for overridden in &self.file_keys_overridden {
            tracing::warn!(%overridden, "an environment variable overrides what the config file sets");
        }
    }

    /// What a configuration that starts may still get wrong, one sentence each, for the log.
    pub fn cautions(&self) -> Vec<String> {
        let mut cautions = Vec::new();
        // After a worker crash a decision's update first waits out the sticky queue's
        // timeout, so a shorter deadline answered 503 for a decision that landed later (and
        // the reviewer's retry then met 409 for their own decision). Not refused: only a
        // crash shows it, and a derived deadline (half of `server.request_timeout`) is common.
        let update = self.temporal.write_deadline();
        if self.backend.answering() == EngineKind::Temporal
            && update <= self.temporal.sticky_queue_timeout
        {
            cautions.push(format!(
                "temporal.call_timeout ({}) leaves a decision {} to land, no more than \
                 temporal.sticky_queue_timeout ({}): after a worker crash decisions answer 503 \
                 and land later; raise temporal.call_timeout (below server.request_timeout) \
                 or lower temporal.sticky_queue_timeout",
                humantime::format_duration(self.temporal.call_timeout),
                humantime::format_duration(update),
                humantime::format_duration(self.temporal.sticky_queue_timeout),
            ));
        }
        // Over HTTP/1.1 each long-poll and each request (a body trickling in, say) holds a
        // connection: one token, or two, could hold every connection. Warned, not refused:
        // configurations that passed the older rule (long-polls below the cap) still start.
        let per_caller =
            self.limits.max_long_polls_per_caller + self.limits.max_requests_per_caller;
        if per_caller > self.server.max_connections / 2 {
            cautions.push(format!(
                "limits.max_long_polls_per_caller + limits.max_requests_per_caller \
                 ({per_caller}) is more than half of server.max_connections ({}): over \
                 HTTP/1.1 one or two tokens can hold every connection; lower the limits or \
                 raise server.max_connections",
                self.server.max_connections
            ));
        }
        cautions
    }

    /// Temporal's call and scan deadlines that were left at their defaults follow a
    /// `server.request_timeout` lowered below them (a half, and five sixths of it), so that a
    /// configuration that started before they had to be shorter still starts. Set explicitly,
    /// they are the operator's, and `validate` refuses one that is not shorter.
    fn fit_temporal_deadlines(&mut self, call_set: bool, scan_set: bool) {
        let request = self.server.request_timeout;
        if !call_set && self.temporal.call_timeout >= request {
            self.temporal.call_timeout = request / 2;
        }
        if !scan_set && self.temporal.scan_timeout >= request {
            self.temporal.scan_timeout = request * 5 / 6;
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        // Read here, not at the first connect: that failed as "the store is unavailable"
        // naming neither the key nor what is wrong with it. The error never quotes the URL
        // (it may carry a password).
        if let Err(error) = redis::IntoConnectionInfo::into_connection_info(self.redis.url.as_str())
        {
            return Err(ConfigError::Invalid(format!(
                "redis.url: {error} (expected redis://[user:password@]host:port/db or \
                 unix:///path/to/redis.sock; this build speaks no TLS, so no rediss://)"
            )));
        }
        // Checked whatever the backend (the worker and the migration use it too): written as
        // Temporal's own CLI takes it (`temporal:7233`), it failed only at connect, as "cannot
        // reach Temporal", and with `dual` as a secondary that never mirrored anything.
        let temporal = reqwest::Url::parse(&self.temporal.address);
        if !temporal.as_ref().is_ok_and(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some_and(|h| !h.is_empty())
        }) {
            return Err(ConfigError::Invalid(
                "temporal.address: expected the frontend's URL, http://host:port or \
                 https://host:port (e.g. http://127.0.0.1:7233)"
                    .into(),
            ));
        }
        // Empty, every workflow call failed at run time ("namespace not found", a worker
        // polling a queue no instance starts on), with the service started and ready.
        for (key, value) in [
            ("temporal.namespace", &self.temporal.namespace),
            ("temporal.task_queue", &self.temporal.task_queue),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("{key}: must not be empty")));
            }
        }
        for tenant in self.approvals.tenant_ttl.keys() {
            if TenantId::parse(tenant.as_str()).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "approvals.tenant_ttl.{tenant}: not a valid tenant ({})",
                    TenantId::PATTERN
                )));
            }
        }
        for (key, ttl) in self
            .approvals
            .tenant_ttl
            .iter()
            .map(|(k, v)| (format!("approvals.tenant_ttl.{k}"), v))
            .chain([(
                "approvals.default_ttl".to_owned(),
                &self.approvals.default_ttl,
            )])
        {
            if ttl.as_millis() < 1000 {
                return Err(ConfigError::Invalid(format!(
                    "{key}: a TTL must be at least 1s"
                )));
            }
            // Deadlines are dates: one past the calendar's range would read as 1970 and expire
            // every approval at once.
            if *ttl > MAX_TTL {
                return Err(ConfigError::Invalid(format!(
                    "{key}: a TTL must be at most 3650d (ten years)"
                )));
            }
        }
        // A retention of zero keeps a decided record for a millisecond: a second reviewer
        // would get 404 instead of 409, an agent polling for its answer would never see it.
        for (key, retention) in [
            (
                "approvals.decided_retention",
                self.approvals.decided_retention,
            ),
            (
                "approvals.expired_retention",
                self.approvals.expired_retention,
            ),
            ("approvals.audit_retention", self.approvals.audit_retention),
        ] {
            if retention < Duration::from_secs(1) {
                return Err(ConfigError::Invalid(format!("{key}: must be at least 1s")));
            }
            // Lifetimes in Redis are milliseconds from now: one past what a script accepts
            // would refuse every decision (or expiry) with a script error, for good.
            if retention > MAX_TTL {
                return Err(ConfigError::Invalid(format!(
                    "{key}: must be at most 3650d (ten years)"
                )));
            }
        }
        // tokio's `interval` panics on a zero period (killing its background task while the
        // service stays up and ready) and a zero sleep spins: every loop needs a positive one.
        // Past zero, a floor: a unit mistyped (`10ms` for `10m`) made a loop a busy one against
        // the Redis every instance shares (the adoption pass reading every `approval:*` key
        // without pause, each live stream reading a thousand times a second).
        let ms = Duration::from_millis;
        for (key, period, floor) in [
            (
                "approvals.sweep_interval",
                self.approvals.sweep_interval,
                ms(10),
            ),
            (
                "approvals.stats_interval",
                self.approvals.stats_interval,
                ms(100),
            ),
            (
                "approvals.adopt_interval",
                self.approvals.adopt_interval,
                ms(100),
            ),
            (
                "approvals.events_poll_interval",
                self.approvals.events_poll_interval,
                ms(10),
            ),
            (
                "policy.reload_interval",
                self.policy.reload_interval,
                ms(10),
            ),
            (
                "notifications.send_interval",
                self.notifications.send_interval,
                ms(10),
            ),
            (
                "decision_log.flush_interval",
                self.decision_log.flush_interval,
                ms(10),
            ),
            // Zero retried a failing webhook eight times at once: dead within a second.
            (
                "notifications.retry_base",
                self.notifications.retry_base,
                ms(10),
            ),
            (
                "notifications.poll_interval",
                self.notifications.poll_interval,
                ms(10),
            ),
        ] {
            if period.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{key}: must be positive (how often a background loop runs)"
                )));
            }
            if period < floor {
                return Err(below_floor(key, period, floor));
            }
        }
        // The pending figures are as old as this between refreshes, and the contract keeps
        // them at most 5 s old.
        if self.approvals.stats_interval > Duration::from_secs(5) {
            return Err(ConfigError::Invalid(
                "approvals.stats_interval: at most 5s (the API contract: the pending figures \
                 behind /metrics are at most 5 s old)"
                    .into(),
            ));
        }
        // Each of these at zero refuses or times out every call it governs while the service
        // reports itself ready (a semaphore with no slots, a limit of none, a deadline of 0).
        for (key, value) in [
            (
                "limits.max_requests_per_caller",
                self.limits.max_requests_per_caller,
            ),
            (
                "limits.max_long_polls_per_caller",
                self.limits.max_long_polls_per_caller,
            ),
            ("limits.max_object_bytes", self.limits.max_object_bytes),
            ("limits.max_string_chars", self.limits.max_string_chars),
            ("limits.max_items", self.limits.max_items),
            ("limits.max_depth", self.limits.max_depth),
            (
                "limits.policy_instructions",
                self.limits.policy_instructions,
            ),
            ("redis.max_in_flight", self.redis.max_in_flight),
            ("redis.connections", self.redis.connections),
            (
                "redis.audit_max_len",
                usize::try_from(self.redis.audit_max_len).unwrap_or(usize::MAX),
            ),
            (
                "approvals.max_event_streams_per_tenant",
                self.approvals.max_event_streams_per_tenant,
            ),
            ("policy.max_bundle_bytes", self.policy.max_bundle_bytes),
            ("policy.max_stored_bundles", self.policy.max_stored_bundles),
            (
                "approvals.max_pending_per_tenant",
                usize::try_from(self.approvals.max_pending_per_tenant).unwrap_or(usize::MAX),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key}: must be positive")));
            }
        }
        for (key, value) in [
            ("server.request_timeout", self.server.request_timeout),
            (
                "notifications.request_timeout",
                self.notifications.request_timeout,
            ),
            ("approvals.long_poll_max", self.approvals.long_poll_max),
            ("redis.call_timeout", self.redis.call_timeout),
            ("temporal.call_timeout", self.temporal.call_timeout),
            ("temporal.scan_timeout", self.temporal.scan_timeout),
            ("server.write_timeout", self.server.write_timeout),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            // Zero cut every request in flight at SIGTERM, the opposite of a drain.
            ("server.shutdown_grace", self.server.shutdown_grace),
            // Zero ended every live stream before its first event: clients reconnected in a
            // loop and never received one.
            (
                "approvals.events_max_duration",
                self.approvals.events_max_duration,
            ),
            // Zero made every reviewer's reconnect start at "now": what was recorded while
            // it reconnected (at every deploy, and every events_max_duration) was never shown.
            (
                "approvals.events_resume_window",
                self.approvals.events_resume_window,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!("{key}: must be positive")));
            }
        }
        // Past zero, a floor where a unit mistyped (`10ms` for `10s`) starts quietly and hurts
        // every client: idle connections closed (and HTTP/2 ones pinged) every few
        // milliseconds, answers cut that do not fit the socket at once, deploys that drain
        // nothing.
        for (key, value, floor) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
                Duration::from_secs(1),
            ),
            (
                "server.write_timeout",
                self.server.write_timeout,
                Duration::from_secs(1),
            ),
            (
                "server.shutdown_grace",
                self.server.shutdown_grace,
                Duration::from_secs(1),
            ),
            (
                "server.request_timeout",
                self.server.request_timeout,
                Duration::from_millis(100),
            ),
        ] {
            if value < floor {
                return Err(below_floor(key, value, floor));
            }
        }
        check_log_filter(&self.log.filter)?;
        if self.server.metrics_listen == Some(self.server.listen) && self.server.listen.port() != 0
        {
            return Err(ConfigError::Invalid(
                "server.metrics_listen: must differ from server.listen".into(),
            ));
        }
        // A Redis outage is answered 503 within its call deadline; a request deadline that
        // comes first answered 408 instead, which clients read as their own slowness.
        if self.redis.call_timeout >= self.server.request_timeout {
            return Err(ConfigError::Invalid(
                "redis.call_timeout: must be shorter than server.request_timeout".into(),
            ));
        }
        // Long-polls hold a connection each: one token must not be able to take them all
        // (`cautions` warns from half of them on).
        if self.limits.max_long_polls_per_caller >= self.server.max_connections {
            return Err(ConfigError::Invalid(
                "limits.max_long_polls_per_caller: must be below server.max_connections".into(),
            ));
        }
        // The contract clamps `wait_seconds` to 60: clients size their read timeouts by it,
        // and a long-poll has no request deadline of its own.
        if self.approvals.long_poll_max > Duration::from_secs(60) {
            return Err(ConfigError::Invalid(
                "approvals.long_poll_max: at most 60s (the API's wait_seconds maximum)".into(),
            ));
        }
        // Every wait answered at once, for a unit mistyped (a zero is refused above).
        let floor = Duration::from_secs(1);
        if self.approvals.long_poll_max < floor {
            return Err(below_floor(
                "approvals.long_poll_max",
                self.approvals.long_poll_max,
                floor,
            ));
        }
        // The same for Temporal: a decision answers within one call_timeout, all its attempts
        // and reads included.
        // (A Temporal secondary's calls are bounded by `backend.secondary_timeout`, below.)
        if self.backend.answering() == EngineKind::Temporal
            && self.temporal.call_timeout >= self.server.request_timeout
        {
            return Err(ConfigError::Invalid(
                "temporal.call_timeout: must be shorter than server.request_timeout".into(),
            ));
        }
        // A decision's update needs at least 500 ms once a fifth of the call deadline is kept
        // for the read that follows a timeout: below 625 ms no decision was sent, and every
        // accept and reject on Temporal answered 503 (the first attempt is always sent now, but
        // within too little time to land). A derived deadline (half of a short
        // `server.request_timeout`) is refused too, naming both keys. A dual soak's Temporal
        // secondary is bounded by `backend.secondary_timeout` instead.
        if self.backend.answering() == EngineKind::Temporal
            && self.temporal.call_timeout < MIN_TEMPORAL_CALL_TIMEOUT
        {
            return Err(ConfigError::Invalid(format!(
                "temporal.call_timeout: at least {MIN_TEMPORAL_CALL_TIMEOUT:?} (a decision needs \
                 that long to reach a workflow and read it back); left unset it is half of \
                 server.request_timeout, so that must then be at least twice as long"
            )));
        }
        // A listing or an audit page walks visibility under scan_timeout: at the default 30 s
        // (the request deadline's), a slow visibility raced the request's 408 against its own
        // 503, and clients and the backend-errors alert saw their own slowness.
        if self.backend.answering() == EngineKind::Temporal
            && self.temporal.scan_timeout >= self.server.request_timeout
        {
            return Err(ConfigError::Invalid(
                "temporal.scan_timeout: must be shorter than server.request_timeout".into(),
            ));
        }
        // A write waits for its mirror up to this, after the primary's own call: at the
        // request's deadline the caller got 408 for a write the primary had made (and a
        // reviewer who won, 409 on retry).
        if let BackendChoice::Dual {
            primary,
            secondary_timeout,
        } = &self.backend
        {
            let (key, primary_call) = match primary {
                EngineKind::Redis => ("redis.call_timeout", self.redis.call_timeout),
                EngineKind::Temporal => ("temporal.call_timeout", self.temporal.call_timeout),
            };
            if primary_call + *secondary_timeout >= self.server.request_timeout {
                return Err(ConfigError::Invalid(format!(
                    "backend.secondary_timeout: with {key} it must be shorter than \
                     server.request_timeout"
                )));
            }
            // A Temporal secondary takes decisions within it, as an answering Temporal does
            // within temporal.call_timeout: below that floor every mirrored decision (and each
            // replay of one) was cut off, so none reached it.
            if *primary == EngineKind::Redis && *secondary_timeout < MIN_TEMPORAL_CALL_TIMEOUT {
                return Err(ConfigError::Invalid(format!(
                    "backend.secondary_timeout: at least {MIN_TEMPORAL_CALL_TIMEOUT:?} with \
                     Temporal as the secondary (a decision needs that long to reach a workflow)"
                )));
            }
        }
        if self.notifications.retry_max < self.notifications.retry_base {
            return Err(ConfigError::Invalid(
                "notifications.retry_max: must be at least notifications.retry_base".into(),
            ));
        }
        // A child needs room for itself before any policy: below this every tenant's bundle
        // would fail closed (or, as small as a few MiB, pass a start-up trial and fail later).
        if self.policy.sandbox.enabled && self.policy.sandbox.memory_limit_mib < 64 {
            return Err(ConfigError::Invalid(
                "policy.sandbox.memory_limit_mib: at least 64 (a child's own room)".into(),
            ));
        }
        // One thread each, started at once: past this a typo, not a machine.
        if self.limits.policy_concurrency > 1024 {
            return Err(ConfigError::Invalid(
                "limits.policy_concurrency: at most 1024 threads (0: one per CPU)".into(),
            ));
        }
        if self.server.max_header_bytes < 8192 {
            return Err(ConfigError::Invalid(
                "server.max_header_bytes: must be at least 8192".into(),
            ));
        }
        if self.server.max_streams_per_connection == 0 {
            return Err(ConfigError::Invalid(
                "server.max_streams_per_connection: must be positive".into(),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "server.max_connections: must be positive".into(),
            ));
        }
        if self.server.body_limit == 0 {
            return Err(ConfigError::Invalid(
                "server.body_limit: must be positive".into(),
            ));
        }
        let log = &self.decision_log;
        if log.sink == DecisionLogSink::Http && log.url.is_none() {
            return Err(ConfigError::Invalid(
                "decision_log.url: required with decision_log.sink = \"http\"".into(),
            ));
        }
        if let Some(url) = &log.url {
            // Without a scheme every batch failed, was retried and dropped, silently.
            let scheme = reqwest::Url::parse(url).map(|u| u.scheme().to_owned());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return Err(ConfigError::Invalid(
                    "decision_log.url: an http:// or https:// URL".into(),
                ));
            }
        }
        if log.batch_size == 0 || log.queue_capacity == 0 || log.max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "decision_log.batch_size, queue_capacity and max_attempts must be positive".into(),
            ));
        }
        if let Some(secret) = &self.ui.session_secret {
            if secret.chars().count() < 32 {
                return Err(ConfigError::Invalid(
                    "ui.session_secret: at least 32 characters (e.g. openssl rand -hex 32)".into(),
                ));
            }
        }
        if self.ui.session_ttl < Duration::from_secs(60) {
            return Err(ConfigError::Invalid("ui.session_ttl: at least 1m".into()));
        }
        if let Some(url) = &self.ui.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "ui.public_url: an http:// or https:// URL, got {url:?}"
                )));
            }
        }
        let n = &self.notifications;
        if let Some(proxy) = &n.proxy {
            // A scheme and a host, as the egress guard reads them (reqwest alone takes
            // `host:port` as http, and the guard then refused the proxy's own address).
            let named = reqwest::Url::parse(proxy)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some());
            if named.is_none() {
                return Err(ConfigError::Invalid(String::from(
                    "notifications.proxy: a URL with its scheme (http:// or https://) \
                     and host (the value is not quoted: it may hold a password)",
                )));
            }
            reqwest::Proxy::all(proxy.as_str()).map_err(|e| {
                ConfigError::Invalid(format!("notifications.proxy: not a proxy URL ({e})"))
            })?;
        }
        if !(0.0..=1.0).contains(&n.expiring_soon_share) {
            return Err(ConfigError::Invalid(
                "notifications.expiring_soon_share: between 0 and 1".into(),
            ));
        }
        if n.max_attempts == 0
            || n.send_concurrency == 0
            || n.per_webhook_concurrency == 0
            || n.per_tenant_concurrency == 0
            || n.read_batch == 0
            || n.max_queued_per_tenant == 0
            || n.max_queued_per_webhook == 0
            || n.poll_interval.is_zero()
        {
            return Err(ConfigError::Invalid(
                "notifications.max_attempts, send_concurrency, per_webhook_concurrency, \
                 per_tenant_concurrency, read_batch, max_queued_per_tenant, max_queued_per_webhook \
                 and poll_interval must be positive"
                    .into(),
            ));
        }
        if n.per_tenant_concurrency > n.send_concurrency / 2 {
            return Err(ConfigError::Invalid(format!(
                "notifications.per_tenant_concurrency ({}) must be at most half of \
                 send_concurrency ({}): else one or two tenants whose receivers never answer \
                 hold every delivery slot of the instance",
                n.per_tenant_concurrency, n.send_concurrency
            )));
        }
        let mut digests = std::collections::HashMap::new();
        for (n, token) in self.auth.tokens.iter().enumerate() {
            token
                .validate()
                .map_err(|reason| ConfigError::Invalid(format!("auth.tokens[{n}]: {reason}")))?;
            // One token, two identities: which one a request gets must not be an accident.
            if let Some(first) = digests.insert(token.sha256.as_str(), n) {
                return Err(ConfigError::Invalid(format!(
                    "auth.tokens[{n}]: the same sha256 as auth.tokens[{first}]; every token \
                     must be distinct"
                )));
            }
        }
        Ok(())
    }
}

/// figment's message with the dotted key path up front; an unknown key that came from the
/// environment is named by its variable.
fn explain(error: &figment::Error, file: Option<&Path>, overrides: &Overrides) -> ConfigError {
    let mut messages = Vec::new();
    for e in error.clone() {
        if let figment::error::Kind::UnknownField(field, _) = &e.kind {
            // figment's path ends with the unknown field itself.
            let mut key = e.path.clone();
            if key.last() != Some(field) {
                key.push(field.clone());
            }
            if let Some(o) = overrides.name_of(&key.join(".")) {
                return ConfigError::UnknownVariable {
                    var: o.var.clone(),
                    key: o.key.clone(),
                };
            }
        }
        let mut key = e.path.join(".");
        let mut kind = without_values(&e.kind);
        // The tenant TTL map names the entry at fault first (`acme: …`): the error is that
        // entry's, and so is its source (any variable setting another tenant was blamed).
        if key == "approvals.tenant_ttl" {
            if let Some((entry, rest)) = kind.split_once(": ") {
                key = format!("{key}.{entry}");
                kind = rest.to_owned();
            }
        }
        let from = match overrides.name_of(&key) {
            Some(o) if !key.is_empty() => format!(" (from {})", o.var),
            _ => match file {
                Some(file) => format!(" (file {})", file.display()),
                None => String::new(),
            },
        };
        messages.push(if key.is_empty() {
            format!("{kind}{from}")
        } else {
            format!("{key}: {kind}{from}")
        });
    }
    ConfigError::Invalid(messages.join("; "))
}

/// `key` set below its `floor`: a unit mistyped, most likely.
fn below_floor(key: &str, value: Duration, floor: Duration) -> ConfigError {
    ConfigError::Invalid(format!(
        "{key}: at least {floor:?} (got {value:?}: a unit mistyped?)"
    ))
}

/// figment's message without the value it found: the value may be a secret (a Redis URL with
/// its password under a mistyped variable name, a session secret of digits), and the message
/// goes to the container's log.
fn without_values(kind: &figment::error::Kind) -> String {
    use figment::error::{Actual, Kind};
    let sort = |actual: &Actual| match actual {
        Actual::Bool(_) => "a boolean".to_owned(),
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer".to_owned(),
        Actual::Float(_) => "a number".to_owned(),
        Actual::Char(_) | Actual::Str(_) => "a string".to_owned(),
        Actual::Bytes(_) => "bytes".to_owned(),
        Actual::Other(_) => "a value".to_owned(),
        // The others name a shape, never a value.
        other => other.to_string(),
    };
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!("invalid type: found {}, expected {expected}", sort(actual))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value: found {}, expected {expected}", sort(actual))
        }
        other => other.to_string(),
    }
}

/// `BTreeMap<String, Duration>` with human-readable durations.
mod duration_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        map.iter()
            .map(|(k, v)| (k.clone(), humantime::format_duration(*v).to_string()))
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| serde::de::Error::custom(format!("{k}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
