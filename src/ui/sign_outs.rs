//! Signed-out sessions stay signed out: sign-out clears the browser's cookie, and this
//! remembers the session until it would have expired, so a copy of the cookie taken before
//! is refused too. In Redis when it is among the engines (every instance sees it), and always
//! on the instance that signed it out (so that one refuses the copy while Redis cannot be
//! asked). A session is named by a digest of its CSRF token, random per sign-in.
//!
//! A subject (a reviewer, in one tenant) has at most [`MAX_PER_SUBJECT`] unexpired sign-outs
//! remembered; past
//! it, its soonest-ending ones are dropped and every session of it ending by then counts as
//! signed out. So one reviewer signing in and out in a loop holds a bounded list (it held a
//! Redis key per sign-out, for hours, until Redis' memory ran out), and no copied cookie comes
//! back; a session of that reviewer ending sooner than the dropped ones is ended with them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use approvals_core::Timestamp;
use sha2::{Digest, Sha256};

use super::session::Session;
use crate::notify::store::Store;

/// Sessions one instance remembers as signed out when there is no Redis; past it, the ones
/// already expired are forgotten first.
const MAX_REMEMBERED: usize = 100_000;
/// Of them, at most this many unexpired ones per subject, here and in Redis: past it, that
/// subject's soonest-ending ones are dropped, and its sessions ending by then are refused.
/// Without it one reviewer signing in and out in a loop filled the table, and nobody's
/// sign-out was recorded after that.
const MAX_PER_SUBJECT: usize = 64;
/// How much longer than its expiry a sign-out is remembered in Redis: the session's expiry is
/// judged by each instance's own clock, and one running behind would otherwise take a copied
/// cookie again once the record had expired by the clock of the instance that wrote it.
const CLOCK_SKEW_MARGIN: std::time::Duration = super::session::CLOCK_MARGIN;

pub struct SignOuts {
    store: Option<Store>,
    /// The sessions this instance signed out (without Redis: all of them).
    local: Mutex<Local>,
}

/// Signed-out sessions by name (when each expires, whose it is), and by subject in the order
/// they expire, so that bounding one subject's costs a lookup, not a walk of the table.
#[derive(Default)]
struct Local {
    by_name: HashMap<String, (Timestamp, String)>,
    by_subject: HashMap<String, BTreeSet<(Timestamp, String)>>,
    /// Per subject, the latest expiry of the unexpired sign-outs dropped for the bound: its
    /// sessions ending by then are refused.
    dropped_until: HashMap<String, Timestamp>,
}

impl Local {
    fn forget(&mut self, name: &str) {
        if let Some((expires, subject)) = self.by_name.remove(name) {
            if let Some(own) = self.by_subject.get_mut(&subject) {
                own.remove(&(expires, name.to_owned()));
                if own.is_empty() {
                    self.by_subject.remove(&subject);
                }
            }
        }
    }

    /// Remembers a sign-out; false when the table is full of unexpired ones.
    fn remember(
        &mut self,
        name: String,
        expires: Timestamp,
        subject: &str,
        now: Timestamp,
    ) -> bool {
        if self.by_name.len() >= MAX_REMEMBERED {
            let expired: Vec<String> = self
                .by_name
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(name, _)| name.clone())
                .collect();
            expired.iter().for_each(|name| self.forget(name));
        }
        let own = self.by_subject.get(subject);
        let stale: Vec<(Timestamp, String)> = own
            .map(|own| {
                let expired = own.iter().take_while(|(at, _)| *at <= now).count();
                let over = (own.len() - expired + 1).saturating_sub(MAX_PER_SUBJECT);
                own.iter().take(expired + over).cloned().collect()
            })
            .unwrap_or_default();
        if let Some((latest, _)) = stale.last().filter(|(at, _)| *at > now) {
            let until = self
                .dropped_until
                .entry(subject.to_owned())
                .or_insert(*latest);
            *until = (*until).max(*latest);
        }
        stale.iter().for_each(|(_, name)| self.forget(name));
        self.dropped_until.retain(|_, until| *until > now);
        if self.by_name.len() >= MAX_REMEMBERED {
            return false;
        }
        self.by_subject
            .entry(subject.to_owned())
            .or_default()
            .insert((expires, name.clone()));
        self.by_name.insert(name, (expires, subject.to_owned()));
        true
    }
}

/// Whose sign-outs a session's are: its subject in its tenant (the same name may be a
/// reviewer of several tenants, whose bounds must not touch each other).
fn owner(session: &Session) -> String {
    format!("{}/{}", session.tenant, session.principal.subject)
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

    /// Remembers `session` as signed out until it expires; false when the store could not
    /// record it (the reviewer is told: a copy of the cookie stays valid).
    #[must_use]
    pub async fn sign_out(&self, session: &Session) -> bool {
        let now = Timestamp::now();
        let name = name(session);
        let here = self
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remember(name.clone(), session.expires, &owner(session), now);
        let Some(store) = &self.store else {
            if !here {
                tracing::warn!(subject = %session.principal.subject, max = MAX_REMEMBERED,
                    "sign-out not recorded (too many unexpired ones on this instance): a copy \
                     of the cookie stays valid until it expires");
            }
            return here;
        };
        let expires = session.expires.as_millis();
        if let Err(error) = store
            .sign_out(
                &owner(session),
                &name,
                expires,
                MAX_PER_SUBJECT,
                CLOCK_SKEW_MARGIN,
            )
            .await
        {
            tracing::warn!(%error, subject = %session.principal.subject,
                "sign-out not recorded: a copy of the cookie stays valid until it expires");
            return false;
        }
        true
    }

    /// Whether `session` was signed out. When Redis cannot answer, a session this instance
    /// did not sign out is accepted and a warning logged: an outage of the store does not
    /// sign every reviewer out.
    pub async fn signed_out(&self, session: &Session) -> bool {
        let name = name(session);
        let owner = owner(session);
        let here = {
            let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            local.by_name.contains_key(&name)
                || local
                    .dropped_until
                    .get(&owner)
                    .is_some_and(|until| session.expires <= *until)
        };
        if here {
            return true;
        }
        let Some(store) = &self.store else {
            return false;
        };
        let expires = session.expires.as_millis();
        store
            .signed_out(&owner, &name, expires)
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
        let mallory: Vec<Session> = (0..=MAX_REMEMBERED)
            .map(|n| session("mallory", n))
            .collect();
        for signed_in in &mallory {
            assert!(sign_outs.sign_out(signed_in).await);
        }
        let bob = session("bob", 0);
        assert!(sign_outs.sign_out(&bob).await);
        assert!(sign_outs.signed_out(&bob).await);
        // Mallory's sign-outs all hold: her latest are listed, her earliest (dropped from the
        // list) end no later than the last one dropped. (The earliest came back: a copy of
        // her first cookie was taken again.)
        assert!(sign_outs.signed_out(&mallory[MAX_REMEMBERED]).await);
        assert!(sign_outs.signed_out(&mallory[0]).await);
    }

    /// In Redis too, one reviewer signing in and out in a loop holds a bounded list, not a
    /// key per sign-out kept for the session's length (a reviewer's token could fill the
    /// Redis that holds the approvals); none of the sign-outs comes back, and nobody else's
    /// session is touched.
    #[tokio::test]
    async fn a_reviewer_signing_out_in_a_loop_holds_a_bounded_list_in_redis() {
        let redis = approvals_testkit::RedisServer::start().await;
        let store = Store::connect(&redis.url(), std::time::Duration::from_secs(2))
            .await
            .unwrap();
        let sign_outs = SignOuts::new(Some(store.clone()));
        // Another instance: it knows only what Redis holds.
        let elsewhere = SignOuts::new(Some(store));
        let loops = 3 * MAX_PER_SUBJECT;
        let mallory: Vec<Session> = (0..loops)
            .map(|n| {
                let mut signed_in = session("mallory", n);
                // Each later sign-in ends later.
                signed_in.expires = signed_in
                    .expires
                    .plus(std::time::Duration::from_millis(n as u64));
                signed_in
            })
            .collect();
        for signed_in in &mallory {
            assert!(sign_outs.sign_out(signed_in).await);
        }
        let mut conn = redis.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("ui:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(keys.len() <= 2, "{keys:?}");
        for n in [0, MAX_PER_SUBJECT, loops - 1] {
            assert!(
                elsewhere.signed_out(&mallory[n]).await,
                "sign-out {n} holds"
            );
        }
        // The same name in another tenant is another reviewer: untouched.
        let mut namesake = mallory[0].clone();
        namesake.tenant = approvals_core::TenantId::parse("globex").unwrap();
        namesake.csrf = "namesake".into();
        assert!(
            !elsewhere.signed_out(&namesake).await,
            "another tenant's mallory"
        );
        let mut later = session("mallory", loops);
        later.expires = later.expires.plus(std::time::Duration::from_secs(60));
        assert!(!elsewhere.signed_out(&later).await, "a later session stays");
        assert!(!elsewhere.signed_out(&session("bob", 0)).await);
    }

    /// Without Redis, a table full of unexpired sign-outs (many reviewers' each) refuses the
    /// next one, and says so: the page then tells the reviewer a copy of the cookie stays valid.
    #[tokio::test]
    async fn a_sign_out_a_full_table_cannot_hold_is_reported_as_not_recorded() {
        let sign_outs = SignOuts::new(None);
        for n in 0..MAX_REMEMBERED {
            assert!(sign_outs.sign_out(&session(&format!("r{n}"), 0)).await);
        }
        let late = session("late", 0);
        assert!(!sign_outs.sign_out(&late).await);
        assert!(!sign_outs.signed_out(&late).await);
    }

    /// The instance that signed a session out refuses a copy of its cookie while Redis
    /// cannot be asked (it took every copy then, the check failing open); another instance
    /// still accepts it then, so that an outage signs no one out.
    #[tokio::test]
    async fn the_instance_that_signed_out_refuses_the_cookie_while_redis_is_down() {
        let mut redis = approvals_testkit::RedisServer::start().await;
        let url = redis.url();
        let connect = || Store::connect(&url, std::time::Duration::from_secs(1));
        let here = SignOuts::new(Some(connect().await.unwrap()));
        let elsewhere = SignOuts::new(Some(connect().await.unwrap()));
        let signed_out = session("alice", 1);
        assert!(here.sign_out(&signed_out).await);
        assert!(elsewhere.signed_out(&signed_out).await);
        redis.stop();
        assert!(here.signed_out(&signed_out).await);
        assert!(!elsewhere.signed_out(&signed_out).await);
        assert!(!here.signed_out(&session("bob", 1)).await);
    }

    /// In Redis a sign-out outlives the session's expiry by the clock-skew margin: an
    /// instance whose clock runs behind still refuses a copied cookie until it expires there.
    #[tokio::test]
    async fn a_sign_out_in_redis_outlives_the_session_by_the_clock_skew_margin() {
        let redis = approvals_testkit::RedisServer::start().await;
        let store = Store::connect(&redis.url(), std::time::Duration::from_secs(2))
            .await
            .unwrap();
        let sign_outs = SignOuts::new(Some(store));
        let mut ending = session("alice", 1);
        ending.expires = Timestamp::now().plus(std::time::Duration::from_secs(60));
        assert!(sign_outs.sign_out(&ending).await);
        assert!(sign_outs.signed_out(&ending).await);
        let mut conn = redis.connection().await;
        let left: i64 = redis::cmd("PTTL")
            .arg(crate::notify::store::sign_out_keys("acme/alice").0)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            left > CLOCK_SKEW_MARGIN.as_millis() as i64 + 30_000,
            "remembered {left} ms, less than the margin past a session ending in 60 s"
        );
    }
}
