//! Reading and deciding: get, wait (long-poll), list, accept/reject, audit.

use std::time::Duration;

use approvals_core::{
    Approval, ApprovalId, AuditEvent, AuditKind, DecisionOutcome, DecisionRequest, Listing, Page,
    Status, TenantId, Timestamp, Verdict,
};
use serde_json::Value;

use super::{AppError, Approvals};
use crate::auth::{Permission, Principal};

const DEFAULT_WAIT_SECONDS: u64 = 30;
/// The longest decision reason accepted.
pub const MAX_REASON_CHARS: usize = 2_000;
/// The longest `action_digest` accepted (a real one is 71: `sha256:` and 64 hex digits).
const MAX_DIGEST_CHARS: usize = 100;

/// Which approvals to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Pending when absent.
    pub status: Option<Status>,
    /// 1–500, default 100.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// Which audit events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// RFC 3339; events from this instant on.
    pub since: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    /// Comma-separated kinds to keep (all when absent).
    pub kinds: Option<String>,
    /// Keep decision-log events with this verdict only.
    pub decision: Option<String>,
}

/// Events a filtered audit page reads at most before answering (with a cursor to go on), so
/// a filter that matches little cannot make one request walk a whole stream.
const MAX_FILTERED_SCAN: usize = 10_000;
/// The fewest events a filtered audit read asks the engine for at a time.
const FILTERED_PAGE: usize = 200;

fn check_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, AppError> {
    match limit.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(AppError::InvalidOption(format!(
            "limit: must be 1–{max}, got {n}"
        ))),
    }
}

impl Approvals {
    /// The record as of now.
    pub async fn get(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Approval, AppError> {
        self.authorize(caller, Permission::Read, tenant)?;
        let found = self.read(tenant, id).await?;
        self.intact(found.ok_or_else(|| not_found(tenant, id))?)
    }

    /// Answers as soon as the approval is decided or expired, or after `wait_seconds` (default
    /// 30, at most `approvals.long_poll_max`, 60 s) with the pending record; at once while the
    /// service shuts down.
    pub async fn wait(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        id: &ApprovalId,
        wait_seconds: Option<u64>,
    ) -> Result<Approval, AppError> {
        self.authorize(caller, Permission::Wait, tenant)?;
        let asked = Duration::from_secs(wait_seconds.unwrap_or(DEFAULT_WAIT_SECONDS));
        let wait = asked.min(self.settings.long_poll_max);
        let _in_flight = crate::metrics::LongPoll::start(&self.metrics);
        // Shutting down, the engine answers with the state it has at once, without a store
        // call each, rather than hold up the drain.
        let stop = Box::pin(self.shutdown.clone().cancelled_owned());
        let found = self
            .engine
            .wait_for_decision(tenant, id, wait, stop)
            .await
            .map_err(|e| self.engine_failed(e))?;
        self.intact(found.ok_or_else(|| not_found(tenant, id))?)
    }

    /// The record, unless its action no longer matches the digest it was parked with: then
    /// nobody may act on it (what a reviewer decided was another action, or the record was
    /// changed after the decision). Counted and logged as the integrity failure it is.
    fn intact(&self, approval: Approval) -> Result<Approval, AppError> {
        if approval.action_intact() {
            return Ok(approval);
        }
        metrics::counter!("approvals_action_mismatches_total", "tenant" => approval.tenant.to_string())
            .increment(1);
        tracing::error!(tenant = %approval.tenant, id = %approval.id,
            "the stored action does not match its digest: the record was changed after parking");
        Err(AppError::ActionMismatch {
            tenant: approval.tenant,
            id: approval.id,
        })
    }

    /// A tenant's approvals in one status, oldest first.
    pub async fn list(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        query: ListQuery,
    ) -> Result<Page<Approval>, AppError> {
        let limit = check_limit(query.limit, 100, 500)?;
        if let Some(cursor) = &query.cursor {
            self.engine
                .check_cursor(Listing::Approvals, cursor)
                .map_err(|e| self.engine_failed(e))?;
        }
        self.authorize(caller, Permission::List, tenant)?;
        let status = query.status.unwrap_or(Status::Pending);
        self.engine
            .list(tenant, status, query.cursor.as_deref(), limit)
            .await
            .map_err(|e| self.engine_failed(e))
    }

    /// A reviewer accepts or rejects; the first decision wins. `seen_digest`, when the
    /// reviewer sends it, is the digest of the action they looked at: a record whose action is
    /// not that one (or no longer matches its own digest) is refused, not decided.
    pub async fn decide(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        id: &ApprovalId,
        verdict: Verdict,
        reason: Option<String>,
        seen_digest: Option<&str>,
    ) -> Result<Approval, AppError> {
        if reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            return Err(AppError::InvalidContent(format!(
                "reason: at most {MAX_REASON_CHARS} characters"
            )));
        }
        if seen_digest.is_some_and(|d| d.chars().count() > MAX_DIGEST_CHARS) {
            return Err(AppError::InvalidContent(format!(
                "action_digest: at most {MAX_DIGEST_CHARS} characters"
            )));
        }
        self.authorize(caller, Permission::Decide, tenant)?;
        if let Some(seen) = seen_digest {
            // One more read, only for callers that bind their decision to what they saw.
            let current = self.read(tenant, id).await?;
            let current = self.intact(current.ok_or_else(|| not_found(tenant, id))?)?;
            let stored = current
                .action_digest
                .clone()
                .unwrap_or_else(|| approvals_core::action_digest(&current.action));
            // The contract's answers come first (expired, already decided, self-approval): the
            // engine gives them below; a digest only matters for a decision that could be made.
            let decidable = current.status == Status::Pending
                && Timestamp::now() < current.expires_at
                && current.submitted_by != caller.subject;
            if decidable && stored != seen {
                // Not the record's own integrity, but as telling: the reviewer was shown an
                // action that is not the one parked.
                metrics::counter!("approvals_action_mismatches_total", "tenant" => tenant.to_string())
                    .increment(1);
                tracing::warn!(%tenant, %id, "decision refused: the reviewer's action_digest is not the parked action's");
                return Err(AppError::ActionMismatch {
                    tenant: tenant.clone(),
                    id: id.clone(),
                });
            }
        }
        let request = DecisionRequest::now(verdict, caller.subject.clone(), reason);
        let (in_tenant, decided) = (tenant.clone(), id.clone());
        let outcome = self
            .to_the_end(|engine, decision_log| async move {
                let outcome = engine.decide(&in_tenant, &decided, request).await?;
                if let DecisionOutcome::Decided(approval) = &outcome {
                    crate::metrics::decided(approval);
                    if let Some(event) = approvals_core::AuditEntry::decided(approval) {
                        decision_log.offer(&event);
                    }
                }
                Ok(outcome)
            })
            .await;
        match outcome? {
            DecisionOutcome::Decided(approval) => self.intact(approval),
            DecisionOutcome::AlreadyDecided(approval) => {
                Err(AppError::AlreadyDecided(Box::new(approval)))
            }
            DecisionOutcome::Expired(approval) => Err(AppError::Expired(Box::new(approval))),
            DecisionOutcome::NotFound => Err(not_found(tenant, id)),
            DecisionOutcome::SelfApproval => Err(AppError::SelfApproval),
        }
    }

    /// The tenant's audit events, oldest first.
    pub async fn audit(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        query: AuditQuery,
    ) -> Result<Page<AuditEvent>, AppError> {
        let limit = check_limit(query.limit, 100, 1000)?;
        let since = match query.since.as_deref() {
            Some(text) => Some(parse_since(text).ok_or_else(|| {
                AppError::InvalidOption(format!(
                    "since: not an RFC 3339 timestamp: {text:?} (a + in a URL is %2B)"
                ))
            })?),
            None => None,
        };
        let kinds = match query.kinds.as_deref() {
            None => Vec::new(),
            Some(text) => text
                .split(',')
                .map(|k| {
                    serde_json::from_value::<AuditKind>(Value::String(k.trim().to_owned()))
                        .map_err(|_| AppError::InvalidOption(format!("kind: unknown kind {k:?}")))
                })
                .collect::<Result<_, _>>()?,
        };
        let decision = match query.decision.as_deref() {
            None => None,
            Some(d @ ("allow" | "deny" | "require_approval")) => Some(d.to_owned()),
            Some(other) => {
                return Err(AppError::InvalidOption(format!(
                    "decision: must be allow, deny or require_approval, got {other:?}"
                )))
            }
        };
        if let Some(cursor) = &query.cursor {
            self.engine
                .check_cursor(Listing::Audit, cursor)
                .map_err(|e| self.engine_failed(e))?;
        }
        self.authorize(caller, Permission::Audit, tenant)?;
        let read = |cursor: Option<String>, limit: usize| async move {
            self.engine
                .audit(tenant, since, cursor.as_deref(), limit)
                .await
                .map_err(|e| self.engine_failed(e))
        };
        // Policy changes only when asked for (`kind=policy`): the contract's export holds the
        // approvals' five kinds, and a client that knows only those (a closed enum, a look-up
        // of each `approval_id`) broke on the first `policy` event once an admin used the
        // policy routes.
        let unfiltered = kinds.is_empty() && decision.is_none();
        let kinds = match kinds.is_empty() {
            true => AuditKind::OF_APPROVALS.to_vec(),
            false => kinds,
        };
        let wanted = |e: &AuditEvent| {
            kinds.contains(&e.kind)
                && decision.as_deref().is_none_or(|d| {
                    e.kind == AuditKind::Submitted
                        && e.details.get("decision").and_then(Value::as_str) == Some(d)
                })
        };
        // Pages of at least FILTERED_PAGE events: asking for only what is still wanted made a
        // `limit=1` filter that matched little one round trip per event, up to
        // MAX_FILTERED_SCAN of them in one request. A page may hold more matches than are
        // wanted: the answer then stops at the last one kept, whose id is the cursor to go on
        // from (an audit cursor is an event id, on every engine).
        let (mut items, mut cursor, mut scanned) = (Vec::new(), query.cursor, 0);
        loop {
            // Without a filter of the caller's, nearly every event is kept: pages of `limit`
            // (a filter's larger pages read each event twice over an export); a page that
            // met policy changes reads one more page for the few left.
            let size = match unfiltered {
                true => limit,
                false => (limit - items.len()).max(FILTERED_PAGE),
            };
            let page = read(cursor, size).await?;
            scanned += page.items.len();
            let last = page.items.len();
            for (n, event) in page.items.into_iter().enumerate() {
                if !wanted(&event) {
                    continue;
                }
                let id = event.event_id.clone();
                items.push(event);
                if items.len() == limit {
                    let more = n + 1 < last || page.next_cursor.is_some();
                    return Ok(Page {
                        items,
                        next_cursor: more.then_some(id),
                    });
                }
            }
            cursor = page.next_cursor;
            if cursor.is_none() || scanned >= MAX_FILTERED_SCAN {
                return Ok(Page {
                    items,
                    next_cursor: cursor,
                });
            }
        }
    }

    /// One record, or `None`; engine failures mapped.
    pub(super) async fn read(
        &self,
        tenant: &TenantId,
        id: &ApprovalId,
    ) -> Result<Option<Approval>, AppError> {
        self.engine
            .get(tenant, id)
            .await
            .map_err(|e| self.engine_failed(e))
    }
}

fn not_found(tenant: &TenantId, id: &ApprovalId) -> AppError {
    AppError::NotFound {
        tenant: tenant.clone(),
        id: id.clone(),
    }
}

/// An RFC 3339 `since`, also as a URL without `%2B` leaves it: a query string decodes `+` as a
/// space, so `...T10:00:00+01:00` pasted into curl arrives as `...T10:00:00 01:00`. No RFC 3339
/// timestamp holds a space before a `hh:mm` at its end, so reading it as `+` is never wrong.
fn parse_since(text: &str) -> Option<Timestamp> {
    Timestamp::parse_rfc3339(text).or_else(|| {
        let (head, offset) = text.rsplit_once(' ')?;
        let is_offset = offset.len() == 5 && offset.as_bytes()[2] == b':';
        is_offset.then(|| Timestamp::parse_rfc3339(&format!("{head}+{offset}")))?
    })
}
