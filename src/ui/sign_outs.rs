//! Signed-out sessions stay signed out: sign-out clears the browser's cookie, and this
//! remembers the session until it would have expired, so a copy of the cookie taken before
//! is refused too. In Redis when it is among the engines (every instance sees it), else per
//! instance. A session is named by a digest of its CSRF token, random per sign-in.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use approvals_core::Timestamp;
use sha2::{Digest, Sha256};

use super::session::Session;
use crate::notify::store::Store;

/// Sessions one instance remembers as signed out when there is no Redis; past it, the ones
/// already expired are forgotten first.
const MAX_REMEMBERED: usize = 100_000;
/// Of them, at most this many unexpired ones per subject: past it, that subject's own
/// soonest-ending one is forgotten. Without it one reviewer signing in and out in a loop filled
/// the table, and nobody's sign-out was recorded after that; now it only revives copies of
/// that reviewer's own earlier cookies.
const MAX_PER_SUBJECT: usize = 64;

pub struct SignOuts {
    store: Option<Store>,
    /// Without Redis: signed-out sessions, each with when it expires and whose it is.
    local: Mutex<HashMap<String, (Timestamp, String)>>,
}

fn name(session: &Session) -> String {
    hex::encode(Sha256::digest(session.csrf.as_bytes()))
}

impl SignOuts {
    pub fn new(store: Option<Store>) -> Self {
        Self {
            store,
            local: Mutex::default(),
        }
    }

    /// Remembers `session` as signed out until it expires.
    pub async fn sign_out(&self, session: &Session) {
        let now = Timestamp::now();
        let Some(store) = &self.store else {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            if local.len() >= MAX_REMEMBERED {
                local.retain(|_, (expires, _)| *expires > now);
            }
            let subject = &session.principal.subject;
            let mut own: Vec<(Timestamp, String)> = local
                .iter()
                .filter(|(_, (expires, whose))| whose == subject && *expires > now)
                .map(|(name, (expires, _))| (*expires, name.clone()))
                .collect();
            if own.len() >= MAX_PER_SUBJECT {
                own.sort_unstable();
                for (_, name) in own.iter().take(own.len() + 1 - MAX_PER_SUBJECT) {
                    local.remove(name);
                }
            }
            if local.len() < MAX_REMEMBERED {
                local.insert(name(session), (session.expires, subject.clone()));
            } else {
                tracing::warn!(subject = %session.principal.subject, max = MAX_REMEMBERED,
                    "sign-out not recorded (too many unexpired ones on this instance): a copy \
                     of the cookie stays valid until it expires");
            }
            return;
        };
        if let Err(error) = store
            .sign_out(&name(session), now.elapsed_at(session.expires))
            .await
        {
            tracing::warn!(%error, subject = %session.principal.subject,
                "sign-out not recorded: a copy of the cookie stays valid until it expires");
        }
    }

    /// Whether `session` was signed out. When Redis cannot answer, the session is accepted
    /// and a warning logged: an outage of the store does not sign every reviewer out.
    pub async fn signed_out(&self, session: &Session) -> bool {
        let Some(store) = &self.store else {
            let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            return local.contains_key(&name(session));
        };
        store
            .signed_out(&name(session))
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "could not check sign-outs; session accepted");
                false
            })
    }
}

#[cfg(test)]
mod tests {
    use approvals_core::TenantId;

    use super::*;
    use crate::auth::{Principal, Role, TenantScope};

    fn session(subject: &str, n: usize) -> Session {
        let tenant = TenantId::parse("acme").unwrap();
        Session {
            principal: Principal {
                subject: subject.into(),
                scope: TenantScope::One(tenant.clone()),
                role: Role::Reviewer,
            },
            tenant,
            csrf: format!("{subject}-{n}"),
            expires: Timestamp::now().plus(std::time::Duration::from_secs(3600)),
        }
    }

    /// Without Redis, one reviewer signing in and out in a loop filled the table, and nobody
    /// else's sign-out was recorded after that.
    #[tokio::test]
    async fn one_reviewer_signing_out_in_a_loop_does_not_crowd_out_the_others() {
        let sign_outs = SignOuts::new(None);
        for n in 0..=MAX_REMEMBERED {
            sign_outs.sign_out(&session("mallory", n)).await;
        }
        let bob = session("bob", 0);
        sign_outs.sign_out(&bob).await;
        assert!(sign_outs.signed_out(&bob).await);
        // Mallory's latest sign-outs hold; her earliest were forgotten.
        assert!(
            sign_outs
                .signed_out(&session("mallory", MAX_REMEMBERED))
                .await
        );
        assert!(!sign_outs.signed_out(&session("mallory", 0)).await);
    }
}
