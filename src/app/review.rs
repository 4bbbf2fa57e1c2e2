//! Reading and deciding: get, wait (long-poll), list, accept/reject, audit.

use std::time::Duration;

use approvals_core::{
    Approval, ApprovalId, AuditEvent, DecisionOutcome, DecisionRequest, Page, Status, TenantId,
    Timestamp, Verdict,
};

use super::{AppError, Approvals};
use crate::auth::{Permission, Principal};

const DEFAULT_WAIT_SECONDS: u64 = 30;
/// The longest decision reason accepted.
pub const MAX_REASON_CHARS: usize = 2_000;

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
}

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
        self.read(tenant, id)
            .await?
            .ok_or_else(|| not_found(tenant, id))
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
        self.engine
            .wait_for_decision(tenant, id, wait, stop)
            .await
            .map_err(|e| self.engine_failed(e))?
            .ok_or_else(|| not_found(tenant, id))
    }

    /// A tenant's approvals in one status, oldest first.
    pub async fn list(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        query: ListQuery,
    ) -> Result<Page<Approval>, AppError> {
        let limit = check_limit(query.limit, 100, 500)?;
        self.authorize(caller, Permission::List, tenant)?;
        let status = query.status.unwrap_or(Status::Pending);
        self.engine
            .list(tenant, status, query.cursor.as_deref(), limit)
            .await
            .map_err(|e| self.engine_failed(e))
    }

    /// A reviewer accepts or rejects; the first decision wins.
    pub async fn decide(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        id: &ApprovalId,
        verdict: Verdict,
        reason: Option<String>,
    ) -> Result<Approval, AppError> {
        if reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            return Err(AppError::InvalidContent(format!(
                "reason: at most {MAX_REASON_CHARS} characters"
            )));
        }
        self.authorize(caller, Permission::Decide, tenant)?;
        let request = DecisionRequest::now(verdict, caller.subject.clone(), reason);
        let outcome = self.engine.decide(tenant, id, request).await;
        match outcome.map_err(|e| self.engine_failed(e))? {
            DecisionOutcome::Decided(approval) => {
                crate::metrics::decided(&approval);
                Ok(approval)
            }
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
            Some(text) => Some(Timestamp::parse_rfc3339(text).ok_or_else(|| {
                AppError::InvalidOption(format!("since: not an RFC 3339 timestamp: {text:?}"))
            })?),
            None => None,
        };
        self.authorize(caller, Permission::Audit, tenant)?;
        self.engine
            .audit(tenant, since, query.cursor.as_deref(), limit)
            .await
            .map_err(|e| self.engine_failed(e))
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
