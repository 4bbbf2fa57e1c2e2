//! `[backend]`: which engine parks approvals. In code it is [`BackendChoice`], in which a dual
//! backend without a primary cannot be written; in a file it stays the flat section operators
//! know (`kind`, `primary`, `secondary_timeout`), checked on the way in.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    Redis,
    Temporal,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Temporal => "temporal",
        }
    }

    /// The engine a dual backend pairs with this one.
    pub fn other(self) -> Self {
        match self {
            Self::Redis => Self::Temporal,
            Self::Temporal => Self::Redis,
        }
    }
}

/// Where approvals are parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "BackendSection", into = "BackendSection")]
pub enum BackendChoice {
    #[default]
    Redis,
    Temporal,
    /// Both engines side by side for a migration soak: `primary` answers, the other follows,
    /// each of its calls bounded by `secondary_timeout` (src/engines/dual).
    Dual {
        primary: EngineKind,
        secondary_timeout: Duration,
    },
}

/// The default bound on a dual backend's calls to its secondary.
pub const DEFAULT_SECONDARY_TIMEOUT: Duration = Duration::from_secs(1);

impl BackendChoice {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Temporal => "temporal",
            Self::Dual { .. } => "dual",
        }
    }

    /// The engine that answers: the only one, or a dual backend's primary.
    pub fn answering(&self) -> EngineKind {
        match self {
            Self::Redis => EngineKind::Redis,
            Self::Temporal => EngineKind::Temporal,
            Self::Dual { primary, .. } => *primary,
        }
    }

    /// Whether approvals may live in Redis (the engine with a comfortable TTL limit).
    pub fn uses_redis(&self) -> bool {
        !matches!(self, Self::Temporal)
    }
}

/// `kind` as a file may say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Redis,
    Temporal,
    Dual,
}

/// The section as written. `primary` and `secondary_timeout` left in place while rolling back
/// from `dual` are ignored (the cutover runbook relies on it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSection {
    kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary: Option<EngineKind>,
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    secondary_timeout: Option<Duration>,
}

impl TryFrom<BackendSection> for BackendChoice {
    type Error = String;

    fn try_from(section: BackendSection) -> Result<Self, String> {
        match section.kind {
            Kind::Redis => Ok(Self::Redis),
            Kind::Temporal => Ok(Self::Temporal),
            Kind::Dual => {
                let primary = section.primary.ok_or(
                    "backend.primary: required with backend.kind = \"dual\": \"redis\" or \
                     \"temporal\", the engine that answers (the other one follows)",
                )?;
                let secondary_timeout = section
                    .secondary_timeout
                    .unwrap_or(DEFAULT_SECONDARY_TIMEOUT);
                if secondary_timeout.is_zero() {
                    return Err("backend.secondary_timeout: must be positive".into());
                }
                Ok(Self::Dual {
                    primary,
                    secondary_timeout,
                })
            }
        }
    }
}

impl From<BackendChoice> for BackendSection {
    fn from(choice: BackendChoice) -> Self {
        match choice {
            BackendChoice::Redis => Self::plain(Kind::Redis),
            BackendChoice::Temporal => Self::plain(Kind::Temporal),
            BackendChoice::Dual {
                primary,
                secondary_timeout,
            } => Self {
                kind: Kind::Dual,
                primary: Some(primary),
                secondary_timeout: Some(secondary_timeout),
            },
        }
    }
}

impl BackendSection {
    fn plain(kind: Kind) -> Self {
        Self {
            kind,
            primary: None,
            secondary_timeout: None,
        }
    }
}
