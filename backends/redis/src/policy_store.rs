//! Tenants' policy bundles in Redis, beside the approvals (the ADR's choice: same instance,
//! own keyspace `policy:*`). Bundles are immutable JSON values, indexed by upload time, each
//! with a summary for listings; each tenant's state is one field of `policy:states`, so an
//! instance's reload poll is a single HGETALL, and only when a change counter moved (or every
//! few seconds, for writers that do not count: ADR-0016).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use approvals_core::{
    BackendError, BundleSummary, PolicyState, PolicyStore, PutBundle, StoredBundle, Swap, TenantId,
};
use async_trait::async_trait;
use redis::AsyncCommands;

use crate::keys::{self, POLICY_STATES, POLICY_STATES_CHANGES};
use crate::RedisBackend;

fn corrupt(key: &str, error: impl std::fmt::Display) -> BackendError {
    BackendError::Corrupt {
        key: key.to_owned(),
        reason: error.to_string(),
    }
}

/// The JSON a state is stored as; the never-written state is the empty string, which is what
/// the compare-and-set script reads for a missing field.
fn state_json(state: &PolicyState) -> String {
    if *state == PolicyState::default() {
        String::new()
    } else {
        // Plain data: serialising cannot fail.
        serde_json::to_string(state).unwrap_or_default()
    }
}

type States = BTreeMap<TenantId, Result<PolicyState, String>>;

/// The states as last read whole, and the change count read just before.
pub(crate) struct StatesRead {
    changes: Option<i64>,
    at: Instant,
    states: States,
}

/// The last whole read of the states, shared by this process's reload polls.
#[derive(Default)]
pub(crate) struct StatesCache(Mutex<Option<StatesRead>>);

/// How old the last whole read may be when the change counter has not moved. A change the
/// counter misses (an instance of an earlier version during a rolling upgrade, a hand edit)
/// is in effect within this, rather than within `policy.reload_interval`.
const READ_WHOLE_EVERY: Duration = Duration::from_secs(5);

impl StatesCache {
    fn current(&self, changes: Option<i64>) -> Option<States> {
        let last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|read| read.changes == changes && read.at.elapsed() < READ_WHOLE_EVERY)
            .map(|read| read.states.clone())
    }

    fn keep(&self, changes: Option<i64>, at: Instant, states: &States) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(StatesRead {
            changes,
            at,
            states: states.clone(),
        });
    }
}

#[async_trait]
impl PolicyStore for RedisBackend {
    async fn put_bundle(
        &self,
        tenant: &TenantId,
        bundle: &StoredBundle,
        keep: usize,
    ) -> Result<PutBundle, BackendError> {
        // Plain data: serialising cannot fail.
        let json = serde_json::to_string(bundle).unwrap_or_default();
        let summary = serde_json::to_string(&BundleSummary::from(bundle)).unwrap_or_default();
        let mut invocation = self.scripts.put_bundle.prepare_invoke();
        invocation
            .key(keys::policy_bundle(tenant, &bundle.version))
            .key(keys::policy_bundles(tenant))
            .key(keys::policy_summaries(tenant))
            .key(POLICY_STATES)
            .arg(json)
            .arg(bundle.uploaded_at.as_millis())
            .arg(&bundle.version)
            .arg(summary)
            .arg(tenant.as_str())
            .arg(keep)
            .arg(keys::policy_bundle(tenant, ""));
        let reply: Vec<redis::Value> = self
            .with_conn("put_bundle", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        let mut reply = reply.into_iter();
        let created = matches!(reply.next(), Some(redis::Value::Int(1)));
        let pruned = reply
            .filter_map(|v| redis::from_redis_value::<String>(v).ok())
            .collect();
        Ok(PutBundle { created, pruned })
    }

    async fn bundle(
        &self,
        tenant: &TenantId,
        version: &str,
    ) -> Result<Option<StoredBundle>, BackendError> {
        let key = keys::policy_bundle(tenant, version);
        let raw: Option<String> = self
            .with_conn("bundle", |mut conn| {
                let key = key.clone();
                async move { conn.get(key).await }
            })
            .await?;
        raw.map(|raw| serde_json::from_str(&raw).map_err(|e| corrupt(&key, e)))
            .transpose()
    }

    async fn bundles(&self, tenant: &TenantId) -> Result<Vec<BundleSummary>, BackendError> {
        let index = keys::policy_bundles(tenant);
        let summaries = keys::policy_summaries(tenant);
        let versions: Vec<String> = self
            .with_conn("bundles", |mut conn| async move {
                conn.zrevrange(index, 0, -1).await
            })
            .await?;
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        // The summaries, not the bundles (up to `policy.max_bundle_bytes` each).
        let stored: Vec<Option<String>> = self
            .with_conn("bundles", |mut conn| {
                let versions = versions.clone();
                async move {
                    redis::cmd("HMGET")
                        .arg(summaries)
                        .arg(versions)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let mut out = Vec::with_capacity(versions.len());
        for (version, summary) in versions.iter().zip(stored) {
            let summary = match summary {
                Some(raw) => serde_json::from_str(&raw)
                    .map_err(|e| corrupt(&keys::policy_summaries(tenant), e))?,
                // Stored before bundles had summaries: read the bundle itself.
                None => match self.bundle(tenant, version).await? {
                    Some(bundle) => BundleSummary::from(&bundle),
                    // Indexed but gone: only an operator deleting keys by hand does that.
                    None => continue,
                },
            };
            out.push(summary);
        }
        Ok(out)
    }

    async fn state(&self, tenant: &TenantId) -> Result<PolicyState, BackendError> {
        let field = tenant.to_string();
        let raw: Option<String> = self
            .with_conn("policy_state", |mut conn| async move {
                conn.hget(POLICY_STATES, field).await
            })
            .await?;
        match raw {
            None => Ok(PolicyState::default()),
            Some(raw) => serde_json::from_str(&raw).map_err(|e| corrupt(POLICY_STATES, e)),
        }
    }

    async fn swap_state(
        &self,
        tenant: &TenantId,
        expected: &PolicyState,
        next: &PolicyState,
    ) -> Result<Swap, BackendError> {
        let mut invocation = self.scripts.swap_policy_state.prepare_invoke();
        invocation.key(POLICY_STATES).key(POLICY_STATES_CHANGES);
        // Only what this change brings in: a version already named stays (prunes skip it).
        let introduced: Vec<&String> = [
            (&next.active, &expected.active),
            (&next.candidate, &expected.candidate),
        ]
        .into_iter()
        .filter(|(new, old)| new != old)
        .filter_map(|(new, _)| new.as_ref())
        .collect();
        for version in &introduced {
            invocation.key(keys::policy_bundle(tenant, version));
        }
        invocation
            .arg(tenant.as_str())
            .arg(state_json(expected))
            .arg(state_json(next));
        let swapped: i64 = self
            .with_conn("swap_policy_state", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(match swapped {
            1 => Swap::Done,
            0 => Swap::Moved,
            // -n: the n-th bundle key is missing.
            missing => Swap::MissingBundle(
                usize::try_from(missing.unsigned_abs())
                    .ok()
                    .and_then(|n| introduced.get(n.checked_sub(1)?))
                    .map_or_else(String::new, |v| (*v).clone()),
            ),
        })
    }

    async fn states(&self) -> Result<States, BackendError> {
        // Read before the states: a change between the two reads makes the next poll read
        // them again, never keeps a state older than its count.
        let changes: Option<i64> = self
            .with_conn("policy_states", |mut conn| async move {
                conn.get(POLICY_STATES_CHANGES).await
            })
            .await?;
        if let Some(states) = self.policy_states.current(changes) {
            return Ok(states);
        }
        let at = Instant::now();
        let raw: Vec<(String, String)> = self
            .with_conn("policy_states", |mut conn| async move {
                conn.hgetall(POLICY_STATES).await
            })
            .await?;
        let mut out = BTreeMap::new();
        for (field, json) in raw {
            // One bad field failed every reload of every tenant: each is read on its own.
            let Ok(tenant) = TenantId::parse(field.as_str()) else {
                tracing::warn!(
                    key = POLICY_STATES,
                    field,
                    "a policy state of no valid tenant passed over"
                );
                continue;
            };
            let state = serde_json::from_str(&json).map_err(|e| e.to_string());
            out.insert(tenant, state);
        }
        self.policy_states.keep(changes, at, &out);
        Ok(out)
    }
}
