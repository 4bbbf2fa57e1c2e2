//! The `/v1` routes: submit, read, wait, list, decide, audit.

use std::time::Duration;

use approvals_core::{
    Approval, ApprovalId, AuditEvent, DecisionOutcome, DecisionRequest, Status, SubmitOutcome,
    TenantId, Timestamp, Verdict,
};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiJson, ApiQuery, ApprovalPath, Caller, TenantPath};
use super::{ApiError, AppState};
use crate::auth::{Permission, Principal};
use crate::policy::{PolicyDecision, PolicyVerdict};

/// The longest a long-poll may wait; larger `wait_seconds` are clamped.
const MAX_WAIT: u64 = 60;
const MAX_REASON_CHARS: usize = 2_000;

fn authorize(
    caller: &Principal,
    permission: Permission,
    tenant: &TenantId,
) -> Result<(), ApiError> {
    if caller.may(permission, tenant) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{} ({}) may not do this in tenant {tenant}",
            caller.subject,
            caller.role.as_str()
        )))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SubmitBody {
    /// Defaults to a new unique id.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
    pub request_id: Option<String>,
    /// Defaults to the token's subject.
    pub agent_id: Option<String>,
    /// What the agent wants to do: an object with a string `type`.
    #[schema(value_type = Object)]
    pub action: Map<String, Value>,
    #[schema(value_type = Object)]
    pub context: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitResponse {
    pub decision: PolicyDecision,
    pub reasons: Vec<String>,
    pub policy_version: String,
    /// Present when the decision is `require_approval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

fn parked(approval: Approval) -> SubmitResponse {
    SubmitResponse {
        decision: PolicyDecision::RequireApproval,
        reasons: approval.reasons.clone(),
        policy_version: approval.policy_version.clone(),
        approval: Some(approval),
    }
}

/// The existing record for a repeated `request_id`: `200` if it asks the same, else `409`.
fn repeated(existing: Approval, asked: &Approval) -> Result<Response, ApiError> {
    if existing.same_request(asked) {
        Ok((StatusCode::OK, Json(parked(existing))).into_response())
    } else {
        Err(ApiError::RequestIdConflict(existing.id.to_string()))
    }
}

/// An agent asks to act.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/approvals", tag = "approvals",
    params(("tenant" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")),
    request_body = SubmitBody,
    responses(
        (status = 200, description = "allow or deny (nothing parked), or the existing approval for a repeated request_id", body = SubmitResponse),
        (status = 201, description = "require_approval: parked", body = SubmitResponse,
            headers(("Location" = String, description = "the approval's URL"))),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem), (status = 409, description = "request_id_conflict", body = super::Problem),
        (status = 413, body = super::Problem), (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    if !matches!(body.action.get("type"), Some(Value::String(_))) {
        return Err(ApiError::InvalidBody(
            "action.type: must be a string".into(),
        ));
    }
    // A generated id cannot exist yet, so only a caller's request_id needs the lookup below.
    let (id, chosen_by_caller) = match body.request_id {
        Some(raw) => {
            let id = ApprovalId::parse(raw)
                .map_err(|e| ApiError::InvalidIdentifier(format!("request_id: {e}")))?;
            (id, true)
        }
        None => {
            let id = ApprovalId::parse(uuid::Uuid::new_v4().simple().to_string())
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            (id, false)
        }
    };
    authorize(&caller, Permission::Submit, &tenant)?;
    tracing::Span::current().record("approval_id", id.as_str());
    let now = Timestamp::now();
    let mut asked = Approval {
        id,
        tenant: tenant.clone(),
        status: Status::Pending,
        agent_id: body.agent_id.unwrap_or_else(|| caller.subject.clone()),
        submitted_by: caller.subject.clone(),
        action: body.action,
        context: body.context.unwrap_or_default(),
        reasons: Vec::new(),
        policy_version: String::new(),
        submitted_at: now,
        expires_at: now.plus(state.approvals.ttl_for(&tenant)),
        decided_at: None,
        decided_by: None,
        decision_reason: None,
    };

    // A repeated request_id answers from the record, without asking the policy again.
    if chosen_by_caller {
        if let Some(existing) = state.backend.get(&asked.tenant, &asked.id).await? {
            return repeated(existing, &asked);
        }
    }
    let input = json!({
        "tenant": asked.tenant, "agent_id": asked.agent_id, "submitted_by": asked.submitted_by,
        "action": asked.action, "context": asked.context,
    });
    let PolicyVerdict {
        decision,
        reasons,
        policy_version,
    } = state.policy.evaluate(&input);
    crate::metrics::submitted(&asked.tenant, decision);
    if decision != PolicyDecision::RequireApproval {
        let answer = SubmitResponse {
            decision,
            reasons,
            policy_version,
            approval: None,
        };
        return Ok((StatusCode::OK, Json(answer)).into_response());
    }
    asked.reasons = reasons;
    asked.policy_version = policy_version;
    match state.backend.submit(asked.clone()).await? {
        SubmitOutcome::Created(approval) => {
            let location = format!("/v1/tenants/{}/approvals/{}", approval.tenant, approval.id);
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(parked(approval)),
            )
                .into_response())
        }
        // Another submit of the same id won the race since our read.
        SubmitOutcome::Existing(existing) => repeated(existing, &asked),
    }
}

/// One approval.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/approvals/{id}", tag = "approvals",
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Approval), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem), (status = 404, body = super::Problem), (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn get_approval(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApprovalPath(tenant, id): ApprovalPath,
) -> Result<Json<Approval>, ApiError> {
    authorize(&caller, Permission::Read, &tenant)?;
    let approval = state.backend.get(&tenant, &id).await?;
    approval.map(Json).ok_or_else(|| not_found(&tenant, &id))
}

fn not_found(tenant: &TenantId, id: &ApprovalId) -> ApiError {
    ApiError::NotFound(format!("no approval {id} in tenant {tenant}"))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct WaitQuery {
    /// 0–60 (default 30); larger values are clamped to 60.
    pub wait_seconds: Option<u64>,
}

/// Long-poll: answers as soon as the approval is decided or expired, or after `wait_seconds`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/approvals/{id}/decision", tag = "approvals",
    params(("tenant" = String, Path), ("id" = String, Path), WaitQuery),
    responses((status = 200, body = Approval), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem),
        (status = 404, body = super::Problem), (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn wait_decision(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApprovalPath(tenant, id): ApprovalPath,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<Approval>, ApiError> {
    authorize(&caller, Permission::Wait, &tenant)?;
    let wait = Duration::from_secs(query.wait_seconds.unwrap_or(30).min(MAX_WAIT));
    let _in_flight = crate::metrics::LongPoll::start(&state.metrics);
    let waiting = state.backend.wait_for_decision(&tenant, &id, wait);
    let approval = tokio::select! {
        result = waiting => result?,
        // Shutting down: answer with the current state now rather than hold up the drain.
        () = state.shutdown.cancelled() => state.backend.get(&tenant, &id).await?,
    };
    approval.map(Json).ok_or_else(|| not_found(&tenant, &id))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// pending (default), accepted, rejected or expired.
    pub status: Option<Status>,
    /// 1–500, default 100.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalPage {
    pub items: Vec<Approval>,
    pub next_cursor: Option<String>,
}

fn check_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(ApiError::InvalidQuery(format!(
            "limit: must be 1–{max}, got {n}"
        ))),
    }
}

/// A tenant's approvals in one status, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/approvals", tag = "approvals",
    params(("tenant" = String, Path), ListQuery),
    responses((status = 200, body = ApprovalPage), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem), (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ApprovalPage>, ApiError> {
    let limit = check_limit(query.limit, 100, 500)?;
    authorize(&caller, Permission::List, &tenant)?;
    let status = query.status.unwrap_or(Status::Pending);
    let page = state
        .backend
        .list(&tenant, status, query.cursor.as_deref(), limit)
        .await?;
    Ok(Json(ApprovalPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DecideBody {
    /// At most 2,000 characters.
    pub reason: Option<String>,
}

/// Accept a pending approval. The first decision wins.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/approvals/{id}/accept", tag = "approvals",
    params(("tenant" = String, Path), ("id" = String, Path)), request_body(content = Option<DecideBody>),
    responses((status = 200, body = Approval), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, description = "forbidden or self_approval", body = super::Problem),
        (status = 404, body = super::Problem), (status = 409, description = "already_decided", body = super::Problem),
        (status = 410, description = "expired", body = super::Problem), (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn accept(
    state: State<AppState>,
    caller: Caller,
    path: ApprovalPath,
    body: ApiJson<Option<DecideBody>>,
) -> Result<Json<Approval>, ApiError> {
    decide(state, caller, path, body, Verdict::Accept).await
}

/// Reject a pending approval. The first decision wins.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/approvals/{id}/reject", tag = "approvals",
    params(("tenant" = String, Path), ("id" = String, Path)), request_body(content = Option<DecideBody>),
    responses((status = 200, body = Approval), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, description = "forbidden or self_approval", body = super::Problem),
        (status = 404, body = super::Problem), (status = 409, description = "already_decided", body = super::Problem),
        (status = 410, description = "expired", body = super::Problem), (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn reject(
    state: State<AppState>,
    caller: Caller,
    path: ApprovalPath,
    body: ApiJson<Option<DecideBody>>,
) -> Result<Json<Approval>, ApiError> {
    decide(state, caller, path, body, Verdict::Reject).await
}

async fn decide(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApprovalPath(tenant, id): ApprovalPath,
    ApiJson(body): ApiJson<Option<DecideBody>>,
    verdict: Verdict,
) -> Result<Json<Approval>, ApiError> {
    let reason = body.unwrap_or_default().reason;
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ApiError::InvalidBody(format!(
            "reason: at most {MAX_REASON_CHARS} characters"
        )));
    }
    authorize(&caller, Permission::Decide, &tenant)?;
    let request = DecisionRequest::now(verdict, caller.subject, reason);
    match state.backend.decide(&tenant, &id, request).await? {
        DecisionOutcome::Decided(approval) => {
            crate::metrics::decided(&approval);
            Ok(Json(approval))
        }
        DecisionOutcome::AlreadyDecided(approval) => {
            Err(ApiError::AlreadyDecided(Box::new(approval)))
        }
        DecisionOutcome::Expired(approval) => Err(ApiError::Expired(Box::new(approval))),
        DecisionOutcome::NotFound => Err(not_found(&tenant, &id)),
        DecisionOutcome::SelfApproval => Err(ApiError::SelfApproval),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// RFC 3339; events from this instant on.
    pub since: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}

/// The tenant's audit events, oldest first (admin).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit", tag = "audit",
    params(("tenant" = String, Path), AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem), (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn audit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = check_limit(query.limit, 100, 1000)?;
    let since = match query.since.as_deref() {
        Some(text) => Some(Timestamp::parse_rfc3339(text).ok_or_else(|| {
            ApiError::InvalidQuery(format!("since: not an RFC 3339 timestamp: {text:?}"))
        })?),
        None => None,
    };
    authorize(&caller, Permission::Audit, &tenant)?;
    let page = state
        .backend
        .audit(&tenant, since, query.cursor.as_deref(), limit)
        .await?;
    Ok(Json(AuditPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}
