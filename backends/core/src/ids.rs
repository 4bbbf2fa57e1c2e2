//! Tenant and approval identifiers that are valid by construction.
//!
//! They become Redis key material (`approval:{tenant}:{id}`), so the only way to get one is to
//! parse it against the contract's pattern: no `:`, `*`, `{`, space or non-ASCII can ever reach
//! a key, and no code past the HTTP boundary has to re-check.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The value did not match the identifier pattern of the API contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must match {pattern}, got {value:?}")]
pub struct InvalidIdentifier {
    pub kind: &'static str,
    pub pattern: &'static str,
    pub value: String,
}

/// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,max-1}$`, checked without a regex engine.
fn is_identifier(value: &str, max_len: usize) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max_len
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PATTERN: &'static str = $pattern;

            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidIdentifier> {
                let value = value.into();
                if is_identifier(&value, $max) {
                    Ok(Self(value))
                } else {
                    Err(InvalidIdentifier { kind: $kind, pattern: $pattern, value })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Deserialising re-validates, so a record read back from storage cannot smuggle in
        // an identifier the API would have refused.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

identifier!(
    /// A tenant: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`.
    TenantId, "tenant", 64, "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
);
identifier!(
    /// An approval id (the agent's `request_id`), unique within its tenant.
    ApprovalId, "approval id", 128, "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
);

impl ApprovalId {
    /// A fresh id nobody has used: a random UUID, 32 hex digits (always a valid id).
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_alphabet() {
        for ok in ["a", "Acme", "acme-corp.eu_1", "0", &"x".repeat(64)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        assert!(ApprovalId::parse("x".repeat(128)).is_ok());
    }

    #[test]
    fn refuses_key_material_and_lengths() {
        for bad in [
            "", ":", "a:b", "*", "a*", "{a}", "a b", "-a", ".a", "_a", "é", "a\n", "a/b",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
            assert!(ApprovalId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TenantId::parse("x".repeat(65)).is_err());
        assert!(ApprovalId::parse("x".repeat(129)).is_err());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<TenantId>("\"a:b\"").is_err());
        assert_eq!(
            serde_json::from_str::<ApprovalId>("\"req-1\"").ok(),
            ApprovalId::parse("req-1").ok()
        );
    }
}
