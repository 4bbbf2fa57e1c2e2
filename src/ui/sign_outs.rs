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

pub struct SignOuts {
    store: Option<Store>,
    /// Without Redis: signed-out sessions and when they expire.
    local: Mutex<HashMap<String, Timestamp>>,
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
                local.retain(|_, expires| *expires > now);
            }
            if local.len() < MAX_REMEMBERED {
                local.insert(name(session), session.expires);
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
