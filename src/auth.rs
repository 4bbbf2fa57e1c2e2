//! Bearer tokens: who is calling, for which tenant, in which role.
//!
//! Tokens are configured only as SHA-256 digests. A presented token is hashed and compared
//! with every configured digest in constant time, without stopping at a match, so response
//! timing says nothing about which digests exist.

use approvals_core::TenantId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Agent,
    Reviewer,
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Reviewer => "reviewer",
            Self::Admin => "admin",
        }
    }
}

/// One `[[auth.tokens]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub subject: String,
    /// A tenant, or `*` for a platform admin.
    pub tenant: String,
    pub role: Role,
    /// Lower-case hex SHA-256 of the token's UTF-8 bytes.
    pub sha256: String,
}

impl TokenEntry {
    pub fn validate(&self) -> Result<(), String> {
        if self.subject.is_empty() {
            return Err("subject: must not be empty".into());
        }
        let hex_ok = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err("sha256: must be 64 lower-case hex digits (the token's SHA-256)".into());
        }
        match (self.tenant.as_str(), self.role) {
            ("*", Role::Admin) => Ok(()),
            ("*", _) => Err("tenant: only an admin may have tenant \"*\"".into()),
            (tenant, _) => TenantId::parse(tenant)
                .map(drop)
                .map_err(|e| format!("tenant: {e}")),
        }
    }
}

/// Which tenants a caller may act in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantScope {
    One(TenantId),
    /// A platform admin (`tenant = "*"`).
    All,
}

/// A request's caller as the API's admission authenticated it, in the request's extensions:
/// the handler's extractor takes it rather than look the token up again.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scope: TenantScope,
    pub role: Role,
}

/// What a request wants to do; each route asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Submit,
    Read,
    Wait,
    List,
    Decide,
    Audit,
    /// Upload, activate, roll back and trial the tenant's policy bundles (admins only).
    ManagePolicy,
    /// Add, list and remove the tenant's webhooks (admins only).
    ManageWebhooks,
}

impl Principal {
    /// Whether this caller may do `permission` in `tenant`.
    pub fn may(&self, permission: Permission, tenant: &TenantId) -> bool {
        let in_tenant = match &self.scope {
            TenantScope::All => true,
            TenantScope::One(own) => own == tenant,
        };
        let role_allows = match self.role {
            Role::Admin => true,
            Role::Agent => matches!(
                permission,
                Permission::Submit | Permission::Read | Permission::Wait
            ),
            Role::Reviewer => {
                matches!(
                    permission,
                    Permission::Read | Permission::Wait | Permission::List | Permission::Decide
                )
            }
        };
        in_tenant && role_allows
    }
}

pub struct Authenticator {
    entries: Vec<([u8; 32], Principal)>,
}

impl Authenticator {
    /// From validated config entries.
    pub fn new(entries: &[TokenEntry]) -> Self {
        let entries = entries
            .iter()
            .filter_map(|e| {
                let digest: [u8; 32] = hex::decode(&e.sha256).ok()?.try_into().ok()?;
                // Only "*" means every tenant: an entry that names no valid tenant (which
                // validation refuses anyway) grants nothing rather than everything.
                let scope = if e.tenant == "*" {
                    TenantScope::All
                } else {
                    TenantScope::One(TenantId::parse(e.tenant.as_str()).ok()?)
                };
                Some((
                    digest,
                    Principal {
                        subject: e.subject.clone(),
                        scope,
                        role: e.role,
                    },
                ))
            })
            .collect();
        Self { entries }
    }

    /// The caller behind an `Authorization` header value, if it is a known bearer token.
    pub fn authenticate(&self, header: Option<&str>) -> Option<Principal> {
        self.by_digest(&token_digest(bearer_token(header?)?))
    }

    /// The caller whose token has this SHA-256 digest (an inbox session holds the digest, not
    /// the token).
    pub fn by_digest(&self, digest: &[u8; 32]) -> Option<Principal> {
        let mut found = None;
        for (candidate, principal) in &self.entries {
            if bool::from(candidate.ct_eq(digest)) {
                found = Some(principal);
            }
        }
        found.cloned()
    }
}

/// A new random token and its config entry, for `approvals token new` and `approvals dev`.
pub fn mint(tenant: &str, role: Role, subject: &str) -> (String, TokenEntry) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("apv_{}", hex::encode(bytes));
    let entry = TokenEntry {
        subject: subject.to_owned(),
        tenant: tenant.to_owned(),
        role,
        sha256: digest_hex(&token),
    };
    (token, entry)
}

pub fn digest_hex(token: &str) -> String {
    hex::encode(token_digest(token))
}

/// The token of a bearer `Authorization` header value, however the client spelled it: the
/// scheme name is case-insensitive (RFC 9110 section 11.1) and spaces around the token are not
/// part of it.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The SHA-256 digest a token is known by (config holds digests, never tokens).
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_token_and_nothing_else() {
        let (token, entry) = mint("acme", Role::Reviewer, "alice");
        let (admin_token, admin) = mint("*", Role::Admin, "root");
        let auth = Authenticator::new(&[entry, admin]);
        let who = auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(who.subject, "alice");
        assert_eq!(auth.authenticate(Some(&format!("Bearer {token}x"))), None);
        assert_eq!(
            auth.authenticate(Some(&token)),
            None,
            "the scheme is required"
        );
        assert_eq!(auth.authenticate(None), None);
        let root = auth
            .authenticate(Some(&format!("Bearer {admin_token}")))
            .unwrap();
        assert_eq!(root.scope, TenantScope::All);
    }

    #[test]
    fn roles_and_tenants() {
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        let agent = Principal {
            subject: "a".into(),
            scope: TenantScope::One(acme.clone()),
            role: Role::Agent,
        };
        assert!(agent.may(Permission::Submit, &acme));
        assert!(!agent.may(Permission::Decide, &acme));
        assert!(!agent.may(Permission::Submit, &other));
        let reviewer = Principal {
            role: Role::Reviewer,
            ..agent.clone()
        };
        assert!(
            reviewer.may(Permission::Decide, &acme) && !reviewer.may(Permission::Submit, &acme)
        );
        assert!(!reviewer.may(Permission::Audit, &acme));
        let admin = Principal {
            role: Role::Admin,
            ..agent
        };
        assert!(admin.may(Permission::Audit, &acme) && !admin.may(Permission::Audit, &other));
    }

    #[test]
    fn entries_are_validated() {
        let (_, mut entry) = mint("acme", Role::Agent, "a");
        assert!(entry.validate().is_ok());
        entry.tenant = "*".into();
        assert!(entry.validate().is_err(), "only admins span tenants");
        entry.sha256 = entry.sha256.to_uppercase();
        assert!(entry.validate().is_err());
    }
}
