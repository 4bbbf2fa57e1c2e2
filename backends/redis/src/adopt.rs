//! Adoption of records the ADR v1 service wrote (`approval:{tenant}:{id}` JSON without our
//! indexes): each is rewritten in the current format with its indexes, atomically and only if
//! nobody changed it meanwhile, so it lists, counts and expires like any other. Safe on every
//! instance at once. Runs on first touch (`load`) and periodically (`chores`).

use approvals_core::{Approval, AuditEntry, BackendError, Timestamp};
use serde_json::{Map, Value};

use crate::backend::{encode_event, millis, RedisBackend};
use crate::chores::refused_by_script;
use crate::keys::{self, RECORD_PATTERN};
use crate::legacy;
use crate::record::{self, Decoded};

/// What the adoption event names as the record's origin.
const ADOPTED_FROM: &str = "adr-v1";

/// Keys per `SCAN` page of an adoption pass (each page is one short script in Redis), and the
/// pause between pages. 100,000 records take about 1.5 s a pass, well inside its interval.
const ADOPT_PAGE_KEYS: usize = 200;
const ADOPT_PAGE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

impl RedisBackend {
    pub(crate) async fn adopt(
        &self,
        key: &str,
        raw: &str,
        map: Map<String, Value>,
    ) -> Result<Approval, BackendError> {
        let approval = self.foreign_to_approval(key, map).await?;
        let audit = AuditEntry::adopted(&approval, ADOPTED_FROM);
        match self
            .park_record(&approval, &audit, Some(raw), Timestamp::now())
            .await?
        {
            None => {
                tracing::info!(key, "adopted an ADR v1 record");
                Ok(approval)
            }
            // Lapsed since it was read (expired, in v1): nothing adopted; it reads as it was,
            // past its deadline.
            Some(current) if current.is_empty() => Ok(approval),
            // Someone else adopted or decided it first: read theirs.
            Some(current) => match record::decode(key, &current)? {
                Decoded::Current(approval) => Ok(*approval),
                Decoded::Foreign(_) => Err(BackendError::Corrupt {
                    key: key.to_owned(),
                    reason: "changed while being adopted".into(),
                }),
            },
        }
    }

    /// The approval an ADR v1 record describes; its deadline is the key's own expiry.
    pub(crate) async fn foreign_to_approval(
        &self,
        key: &str,
        map: Map<String, Value>,
    ) -> Result<Approval, BackendError> {
        let (tenant, id) = keys::parse_record(key).ok_or_else(|| BackendError::Corrupt {
            key: key.to_owned(),
            reason: "not an approval:{tenant}:{id} key".into(),
        })?;
        let key_owned = key.to_owned();
        // Negative: no expiry (-1) or no key any more (-2).
        let expiry_ms: i64 = self
            .with_conn("pexpiretime", |mut conn| async move {
                redis::cmd("PEXPIRETIME")
                    .arg(key_owned)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let key_expiry = match expiry_ms {
            // Lapsed since it was read: its deadline was no later than now.
            -2 => Some(Timestamp::now()),
            ms if ms > 0 => Some(Timestamp::from_millis(ms)),
            _ => None,
        };
        Ok(legacy::to_approval(
            tenant,
            id,
            map,
            key_expiry,
            self.lifetimes.default_ttl,
            Timestamp::now(),
        ))
    }

    /// A record of ours the ADR v1 service decided in place (`raw` as read; see
    /// `take_over.lua`), rewritten in this backend's form with what a decision here records: it
    /// lists as decided, its long-polls wake, the audit has the decision. A decision without a
    /// decider or a time (a v1 that flips `status` only) is v1's, as of now (before the
    /// deadline). `false` when the value changed since it was read (taken over elsewhere).
    pub(crate) async fn take_over(
        &self,
        raw: &str,
        approval: Approval,
    ) -> Result<bool, BackendError> {
        let Some(mut decision) = approval.decision() else {
            return Ok(false);
        };
        if decision.decided_by.is_empty() {
            ADOPTED_FROM.clone_into(&mut decision.decided_by);
        }
        // Before the deadline, as every decision here: v1's clock may run ahead of Redis'.
        let last_moment = approval
            .expires_at
            .minus(std::time::Duration::from_millis(1));
        decision.at = decision.at.min(last_moment);
        let settled = Approval {
            decided_at: Some(decision.at),
            decided_by: Some(decision.decided_by.clone()),
            ..approval
        };
        let mut audit = AuditEntry::decision(&settled.tenant, &settled.id, &decision);
        // Readers on Redis see an event's time as the stream recorded it (the take-over's):
        // the decision's own time stays in the details.
        if let Some(details) = audit.details.as_object_mut() {
            details.insert("decided_at".into(), decision.at.to_string().into());
            details.insert("decided_in".into(), ADOPTED_FROM.into());
        }
        let target = decision.verdict.status();
        let mut invocation = self.settle_invocation(
            &self.scripts.take_over,
            &settled.tenant,
            &settled.id,
            target,
            Timestamp::now(),
        );
        invocation
            .arg(raw)
            .arg(record::encode(&settled))
            .arg(millis(self.lifetimes.decided_retention))
            .arg(target.as_str())
            .arg(encode_event(&audit));
        let taken: Option<String> = self
            .with_conn("take_over", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if taken.is_some() {
            tracing::info!(tenant = %settled.tenant, id = %settled.id,
                "took over a decision the ADR v1 service made");
        }
        Ok(taken.is_some())
    }

    /// Finds and adopts every record this backend did not write. Returns how many it adopted.
    ///
    /// The pass reads every `approval:*` value (nothing else tells an ADR v1 record from ours),
    /// so it goes in small pages with a pause between them: Redis runs one script at a time,
    /// and one script over thousands of keys would hold up every request behind it (it took
    /// a paced submit load's p99 from 3 to 10–26 ms with 1,000-key pages).
    pub async fn adopt_all(&self) -> Result<usize, BackendError> {
        let mut cursor = "0".to_owned();
        let mut adopted = 0;
        loop {
            let (next, keys) = self
                .scan_keys(&cursor, ADOPT_PAGE_KEYS, RECORD_PATTERN)
                .await?;
            if !keys.is_empty() {
                let mut invocation = self.scripts.foreign.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                let foreign: Vec<String> = self
                    .with_conn("adopt", |mut conn| async move {
                        invocation.invoke_async(&mut conn).await
                    })
                    .await?;
                for (key, raw) in self.fetch(foreign).await? {
                    let (written, refusal) = match record::decode(&key, &raw) {
                        Ok(Decoded::Foreign(map)) => (
                            self.adopt(&key, &raw, map).await.map(|_| true),
                            "cannot be adopted",
                        ),
                        // Ours, decided in place by the ADR v1 service.
                        Ok(Decoded::Current(approval)) if approval.is_decided() => (
                            self.take_over(&raw, *approval).await,
                            "its ADR v1 decision cannot be taken over",
                        ),
                        Ok(Decoded::Current(_)) => continue,
                        Err(error) => {
                            self.pass_over(error)?;
                            continue;
                        }
                    };
                    match written {
                        Ok(true) => adopted += 1,
                        Ok(false) => {}
                        // Redis refused its script (a key of its tenant holding another type):
                        // it costs only itself. Returned, it ended every pass there, and the
                        // v1 records after it, in every tenant, were never listed or counted.
                        Err(error) if refused_by_script(&error) => {
                            self.pass_over(BackendError::Corrupt {
                                reason: format!("{refusal}: {error:#}"),
                                key,
                            })?;
                        }
                        Err(error) => self.pass_over(error)?,
                    }
                }
            }
            if next == "0" {
                return Ok(adopted);
            }
            cursor = next;
            tokio::time::sleep(ADOPT_PAGE_PAUSE).await;
        }
    }

    /// One `SCAN` step over the string keys matching `pattern`.
    pub(crate) async fn scan_keys(
        &self,
        cursor: &str,
        count: usize,
        pattern: &'static str,
    ) -> Result<(String, Vec<String>), BackendError> {
        let cursor = cursor.to_owned();
        self.with_conn("scan", |mut conn| async move {
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .arg("TYPE")
                .arg("string")
                .query_async(&mut conn)
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use approvals_core::conformance::{fresh_tenant, id, pending};
    use approvals_core::{ApprovalBackend, Lifetimes};
    use approvals_testkit::RedisServer;

    use crate::{keys, RedisBackend, RedisSettings};

    /// An adoption pass fetches only what another writer left: none of our records, with or
    /// without an action digest (records parked before digests existed have none).
    #[tokio::test]
    async fn the_scan_names_foreign_records_and_none_of_ours() {
        let server = RedisServer::start().await;
        let backend = RedisBackend::connect(RedisSettings::new(server.url()), Lifetimes::default())
            .expect("backend");
        let tenant = fresh_tenant("foreign");
        let hour = Duration::from_secs(3600);
        let with_digest = pending(&tenant, "with-digest", hour);
        assert!(with_digest.action_digest.is_some());
        let without_digest = approvals_core::Approval {
            action_digest: None,
            ..pending(&tenant, "without-digest", hour)
        };
        for approval in [with_digest, without_digest] {
            backend.submit(approval).await.expect("submit");
        }
        let theirs = keys::record(&tenant, &id("theirs"));
        let client = redis::Client::open(server.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let v1 = r#"{"status":"pending","agent_action":{"type":"document_read"},"context":{}}"#;
        let () = redis::cmd("SET")
            .arg(&theirs)
            .arg(v1)
            .query_async(&mut conn)
            .await
            .expect("set");

        // And a key of another type, which must not stop the pass.
        let hash = keys::record(&tenant, &id("a-hash"));
        let () = redis::cmd("HSET")
            .arg(&hash)
            .arg("f")
            .arg("v")
            .query_async(&mut conn)
            .await
            .expect("hset");

        let mut invocation = backend.scripts.foreign.prepare_invoke();
        for name in ["with-digest", "without-digest", "theirs", "a-hash"] {
            invocation.key(keys::record(&tenant, &id(name)));
        }
        let foreign: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .expect("foreign script");
        assert_eq!(foreign, [theirs]);
    }
}
