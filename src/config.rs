//! Configuration: defaults, then a TOML file, then `APPROVALS_…` environment variables.
//!
//! The keys are part of the operating contract (api-v1.md), so every struct denies unknown
//! fields and every environment variable must map to a known key: a typo stops start-up with
//! a message naming it, instead of silently running with a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use approvals_core::TenantId;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::auth::TokenEntry;

/// A configuration that cannot be used; the process exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("environment variable {var} maps to no configuration key ({key})")]
    UnknownVariable { var: String, key: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub backend: BackendSettings,
    pub redis: RedisConfig,
    pub approvals: ApprovalSettings,
    pub policy: PolicySettings,
    pub temporal: TemporalSettings,
    pub worker: WorkerSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit: 65_536,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    #[default]
    Redis,
    Temporal,
    Dual,
}

impl BackendKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Temporal => "temporal",
            Self::Dual => "dual",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSettings {
    pub kind: BackendKind,
    /// For `dual` (required there, ignored otherwise): which engine answers, `redis` or
    /// `temporal`; the other one is the secondary.
    pub primary: Option<BackendKind>,
    /// For `dual`: the deadline of every call to the secondary, and so the most a write waits
    /// for it (src/dual.rs).
    #[serde(with = "humantime_serde")]
    pub secondary_timeout: Duration,
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            kind: BackendKind::default(),
            primary: None,
            secondary_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    /// Deadline of every Redis call; an outage is answered 503 within it.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    pub pool_size: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            call_timeout: Duration::from_secs(2),
            pool_size: 32,
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
    /// How often the expiry sweeper runs; bounds how late an expiry is recorded.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How often the pending figures behind /metrics are recomputed (the contract allows 5 s).
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
    /// How often records written by the ADR v1 service are searched for and adopted.
    #[serde(with = "humantime_serde")]
    pub adopt_interval: Duration,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        let day = Duration::from_secs(86_400);
        Self {
            default_ttl: day,
            tenant_ttl: BTreeMap::new(),
            decided_retention: day,
            expired_retention: day,
            sweep_interval: Duration::from_millis(250),
            stats_interval: Duration::from_secs(2),
            adopt_interval: Duration::from_secs(300),
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

    /// The longest lifetime any tenant has: the age histogram must reach past it.
    pub fn max_ttl(&self) -> Duration {
        self.tenant_ttl
            .values()
            .copied()
            .fold(self.default_ttl, Duration::max)
    }
}

/// The longest TTL the Redis backend is meant for; past it, the Temporal backend is the
/// upgrade path (ADR-0001).
pub const REDIS_TTL_COMFORT: Duration = Duration::from_secs(72 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    pub dir: PathBuf,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalSettings {
    pub address: String,
    pub namespace: String,
    pub task_queue: String,
    /// Deadline of every single Temporal call (start, describe, update, one list page); an
    /// outage is answered 503 within it.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Deadline of a call that walks a whole visibility query (list, audit, pending figures).
    #[serde(with = "humantime_serde")]
    pub scan_timeout: Duration,
    /// Worker: how long a task of a workflow cached by a dead worker waits before another
    /// worker may take it. Decisions on such workflows wait this long after a worker crash.
    #[serde(with = "humantime_serde")]
    pub sticky_queue_timeout: Duration,
}

impl Default for TemporalSettings {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:7233".into(),
            namespace: "default".into(),
            task_queue: "approvals".into(),
            call_timeout: Duration::from_secs(5),
            scan_timeout: Duration::from_secs(30),
            sticky_queue_timeout: Duration::from_secs(10),
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

/// Every key an environment variable may set (`a.b` ← `APPROVALS_A__B`), checked so that a
/// misspelt variable is an error rather than ignored. `approvals.tenant_ttl.*` is open.
const ENV_KEYS: &[&str] = &[
    "server.listen",
    "server.body_limit",
    "server.shutdown_grace",
    "backend.kind",
    "backend.primary",
    "backend.secondary_timeout",
    "redis.url",
    "redis.call_timeout",
    "redis.pool_size",
    "approvals.default_ttl",
    "approvals.decided_retention",
    "approvals.expired_retention",
    "approvals.sweep_interval",
    "approvals.stats_interval",
    "approvals.adopt_interval",
    "policy.dir",
    "temporal.address",
    "temporal.namespace",
    "temporal.task_queue",
    "temporal.call_timeout",
    "temporal.scan_timeout",
    "temporal.sticky_queue_timeout",
    "worker.listen",
    "log.format",
    "log.filter",
];

/// The variable that names the config file; not a key.
pub const CONFIG_VAR: &str = "APPROVALS_CONFIG";

impl Settings {
    /// Loads `file` (if any) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (tests use their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        let mut overrides = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("APPROVALS_") else {
                continue;
            };
            if var == CONFIG_VAR {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let known = ENV_KEYS.contains(&key.as_str())
                || key
                    .strip_prefix("approvals.tenant_ttl.")
                    .is_some_and(|t| !t.is_empty());
            if !known {
                return Err(ConfigError::UnknownVariable { var, key });
            }
            overrides.push((key, value));
        }
        for (key, value) in overrides {
            // Typed like figment's own Env provider: "42" is a number, "5m" stays a string.
            let value = value
                .parse::<figment::value::Value>()
                .unwrap_or_else(|_| value.into());
            figment = figment.merge(Serialized::default(&key, value));
        }
        let settings: Settings = figment.extract().map_err(|e| {
            let source = match file {
                Some(path) => format!(" (file {})", path.display()),
                None => String::new(),
            };
            ConfigError::Invalid(format!("{}{source}", describe(&e)))
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
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
        }
        self.validate_backend()?;
        if self.server.body_limit == 0 {
            return Err(ConfigError::Invalid(
                "server.body_limit: must be positive".into(),
            ));
        }
        for (n, token) in self.auth.tokens.iter().enumerate() {
            token
                .validate()
                .map_err(|reason| ConfigError::Invalid(format!("auth.tokens[{n}]: {reason}")))?;
        }
        Ok(())
    }

    /// `dual` needs to know which engine answers; a primary is an engine, never `dual`.
    fn validate_backend(&self) -> Result<(), ConfigError> {
        let backend = &self.backend;
        match (backend.kind, backend.primary) {
            (_, Some(BackendKind::Dual)) => Err(ConfigError::Invalid(
                "backend.primary: must be \"redis\" or \"temporal\" (the engine that answers)"
                    .into(),
            )),
            (BackendKind::Dual, None) => Err(ConfigError::Invalid(
                "backend.primary: required with backend.kind = \"dual\": \"redis\" or \
                 \"temporal\", the engine that answers (the other one follows)"
                    .into(),
            )),
            (BackendKind::Dual, Some(_)) if backend.secondary_timeout.is_zero() => Err(
                ConfigError::Invalid("backend.secondary_timeout: must be positive".into()),
            ),
            _ => Ok(()),
        }
    }
}

/// figment's message, with the dotted key path up front where it knows one.
fn describe(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            if path.is_empty() {
                e.kind.to_string()
            } else {
                format!("{path}: {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
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
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Settings::load_from(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn reads_the_contract_keys() {
        let s = load(
            "[approvals]\ndefault_ttl = \"2s\"\n[approvals.tenant_ttl]\nacme = \"72h\"\n",
            &[
                ("APPROVALS_REDIS__URL", "redis://x:1/0"),
                ("APPROVALS_CONFIG", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(s.approvals.default_ttl, Duration::from_secs(2));
        assert_eq!(
            s.approvals.ttl_for(&TenantId::parse("acme").unwrap()),
            Duration::from_secs(72 * 3600)
        );
        assert_eq!(s.redis.url, "redis://x:1/0");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = load("[server]\nlisten = \"127.0.0.1:1\"\nbody_limt = 5\n", &[]).unwrap_err();
        assert!(e.to_string().contains("body_limt"), "{e}");
        let e = load("[approvals]\ndefault_ttl = \"soon\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("approvals.default_ttl"), "{e}");
        let e = load("", &[("APPROVALS_REDIS__ULR", "x")]).unwrap_err();
        assert!(e.to_string().contains("APPROVALS_REDIS__ULR"), "{e}");
        let e = load("[approvals.tenant_ttl]\n\"a:b\" = \"1h\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("approvals.tenant_ttl.a:b"), "{e}");
    }

    #[test]
    fn dual_needs_an_engine_as_primary() {
        let e = load("[backend]\nkind = \"dual\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("backend.primary: required"), "{e}");
        let e = load("[backend]\nkind = \"dual\"\nprimary = \"dual\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("backend.primary: must be"), "{e}");
        let e = load("[backend]\nkind = \"dual\"\nprimary = \"mysql\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("backend.primary"), "{e}");
        let s = load(
            "[backend]\nkind = \"dual\"\n",
            &[
                ("APPROVALS_BACKEND__PRIMARY", "temporal"),
                ("APPROVALS_BACKEND__SECONDARY_TIMEOUT", "250ms"),
            ],
        )
        .unwrap();
        assert_eq!(s.backend.primary, Some(BackendKind::Temporal));
        assert_eq!(s.backend.secondary_timeout, Duration::from_millis(250));
        // Left in place while rolling back from dual: harmless.
        let s = load("[backend]\nkind = \"redis\"\nprimary = \"temporal\"\n", &[]).unwrap();
        assert_eq!(s.backend.kind, BackendKind::Redis);
    }

    #[test]
    fn env_overrides_the_file() {
        let s = load(
            "[approvals]\ndefault_ttl = \"2s\"\n",
            &[("APPROVALS_APPROVALS__DEFAULT_TTL", "5m")],
        )
        .unwrap();
        assert_eq!(s.approvals.default_ttl, Duration::from_secs(300));
    }
}
