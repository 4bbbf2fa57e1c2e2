//! The `/v1` routes: each extracts, calls the application layer, and maps its answer to the
//! contract's response. The rules live in `crate::app`.

use approvals_core::{Approval, ApprovalId, AuditEvent, Page, Status, TenantId, Verdict};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiJson, ApiQuery, ApprovalPath, Caller, TenantPath};
use super::{ApiError, AppState};
use crate::app::{self, SubmitRequest, Submitted};
use crate::policy::PolicyDecision;

#[derive(Debug, Deserialize, ToSchema)]
pub struct SubmitBody {
    /// Defaults to a new unique id.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
    pub request_id: Option<String>,
    /// Defaults to the token's subject. At most `limits.max_string_chars` characters (2,048
    /// by default), as any string in `action`: the served document states the configured one.
    pub agent_id: Option<String>,
    /// What the agent wants to do.
    #[schema(value_type = Action)]
    pub action: Map<String, Value>,
    /// Anything the policy and the reviewer should know.
    #[schema(value_type = Option<Object>, required = false)]
    pub context: Option<Map<String, Value>>,
}

/// An action: an object with a string `type`; its other members are the policy's to read
/// (`resource`, `classification`, `tags`, `mutating`, ...). Sizes are bounded by `[limits]`.
pub struct Action;

impl utoipa::PartialSchema for Action {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
        ObjectBuilder::new()
            .property("type", ObjectBuilder::new().schema_type(Type::String))
            .required("type")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .description(Some(
                "What the agent wants to do: an object with a string `type`.",
            ))
            .into()
    }
}

impl ToSchema for Action {}

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

/// An agent asks to act.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/approvals", tag = "approvals",
    params(("tenant" = inline(TenantId), Path)),
    request_body = SubmitBody,
    responses(
        (status = 200, description = "allow or deny (nothing parked), or the existing approval for a repeated request_id", body = SubmitResponse),
        (status = 201, description = "require_approval: parked", body = SubmitResponse,
            headers(("Location" = String, description = "the approval's URL"))),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem), (status = 409, description = "request_id_conflict", body = super::Problem),
        (status = 413, body = super::Problem),
        (status = 415, description = "unsupported_media_type: the body is not JSON", body = super::Problem),
        (status = 422, description = "input_too_large: action, context or agent_id beyond the input limits", body = super::Problem),
        (status = 429, description = "too_many_pending: the tenant has as many pending approvals as it may", body = super::Problem),
        (status = 503, description = "backend_unavailable: the approval store did not answer; or policy_not_loaded: this instance has not read the tenant's own policy yet (retry)", body = super::Problem)),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    let request = SubmitRequest {
        request_id: body.request_id,
        agent_id: body.agent_id,
        action: body.action,
        context: body.context,
    };
    Ok(match state.app.submit(&caller, tenant, request).await? {
        Submitted::Answered(verdict) => {
            let answer = SubmitResponse {
                decision: verdict.decision,
                reasons: verdict.reasons,
                policy_version: verdict.policy_version,
                approval: None,
            };
            (StatusCode::OK, Json(answer)).into_response()
        }
        Submitted::Parked(approval) => {
            let location = format!("/v1/tenants/{}/approvals/{}", approval.tenant, approval.id);
            let headers = [(header::LOCATION, location)];
            (StatusCode::CREATED, headers, Json(parked(approval))).into_response()
        }
        Submitted::Existing(approval) => (StatusCode::OK, Json(parked(approval))).into_response(),
    })
}

/// One approval.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/approvals/{id}", tag = "approvals",
    params(("tenant" = inline(TenantId), Path), ("id" = inline(ApprovalId), Path)),
    responses((status = 200, body = Approval), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem),
        (status = 404, body = super::Problem),
        (status = 409, description = "action_mismatch: the record no longer matches the action it was parked with", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn get_approval(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApprovalPath(tenant, id): ApprovalPath,
) -> Result<Json<Approval>, ApiError> {
    Ok(Json(state.app.get(&caller, &tenant, &id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// 0 or more (default 30); larger values than `approvals.long_poll_max` (60 by default)
    /// are clamped to it.
    #[serde(default, deserialize_with = "whole_seconds")]
    #[param(schema_with = any_whole_number)]
    pub wait_seconds: Option<u64>,
}

/// `wait_seconds` in the document: an integer of any size (no 64-bit format), at least 0.
fn any_whole_number() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .description(Some(
            "0 or more (default 30); values above the service's approvals.long_poll_max (60 \
             by default) are clamped to it.",
        ))
        .build()
}

/// Any whole number of seconds, however large (it is clamped to 60 later): digits beyond 64
/// bits saturate rather than fail.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom(
            "must be a whole number of seconds (0 or more)",
        ));
    }
    Ok(Some(text.parse().unwrap_or(u64::MAX)))
}

/// Long-poll: answers as soon as the approval is decided or expired, or after `wait_seconds`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/approvals/{id}/decision", tag = "approvals",
    params(("tenant" = inline(TenantId), Path), ("id" = inline(ApprovalId), Path), WaitQuery),
    responses((status = 200, body = Approval), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem),
        (status = 404, body = super::Problem),
        (status = 409, description = "action_mismatch: the record no longer matches the action it was parked with", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn wait_decision(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApprovalPath(tenant, id): ApprovalPath,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<Approval>, ApiError> {
    let approval = state
        .app
        .wait(&caller, &tenant, &id, query.wait_seconds)
        .await?;
    Ok(Json(approval))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// pending (default), accepted, rejected or expired.
    #[param(nullable = false)]
    pub status: Option<Status>,
    /// 1–500, default 100.
    #[param(nullable = false, minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// From the previous page's `next_cursor`.
    #[param(nullable = false, min_length = 1)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalPage {
    pub items: Vec<Approval>,
    pub next_cursor: Option<String>,
}

/// A tenant's approvals in one status, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/approvals", tag = "approvals",
    params(("tenant" = inline(TenantId), Path), ListQuery),
    responses((status = 200, body = ApprovalPage), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem), (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ApprovalPage>, ApiError> {
    let query = app::ListQuery {
        status: query.status,
        limit: query.limit,
        cursor: query.cursor,
    };
    let page = state.app.list(&caller, &tenant, query).await?;
    Ok(Json(ApprovalPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DecideBody {
    /// At most 2,000 characters.
    #[schema(max_length = 2000)]
    pub reason: Option<String>,
    /// The `action_digest` of the approval as the reviewer saw it: when given, a record whose
    /// action differs is refused with `409 action_mismatch`, not decided.
    #[schema(max_length = 100)]
    pub action_digest: Option<String>,
}

/// Accept a pending approval. The first decision wins.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/approvals/{id}/accept", tag = "approvals",
    params(("tenant" = inline(TenantId), Path), ("id" = inline(ApprovalId), Path)), request_body(content = Option<DecideBody>),
    responses((status = 200, body = Approval), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, description = "forbidden or self_approval", body = super::Problem),
        (status = 404, body = super::Problem),
        (status = 409, description = "already_decided, or action_mismatch (the action_digest sent, or the record's own, does not match its action)", body = super::Problem),
        (status = 410, description = "expired", body = super::Problem),
        (status = 413, description = "payload_too_large: a body over `server.body_limit` (64 KiB by default)", body = super::Problem),
        (status = 415, description = "unsupported_media_type", body = super::Problem), (status = 503, body = super::Problem)),
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
    params(("tenant" = inline(TenantId), Path), ("id" = inline(ApprovalId), Path)), request_body(content = Option<DecideBody>),
    responses((status = 200, body = Approval), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, description = "forbidden or self_approval", body = super::Problem),
        (status = 404, body = super::Problem),
        (status = 409, description = "already_decided, or action_mismatch (the action_digest sent, or the record's own, does not match its action)", body = super::Problem),
        (status = 410, description = "expired", body = super::Problem),
        (status = 413, description = "payload_too_large: a body over `server.body_limit` (64 KiB by default)", body = super::Problem),
        (status = 415, description = "unsupported_media_type", body = super::Problem), (status = 503, body = super::Problem)),
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
    let DecideBody {
        reason,
        action_digest,
    } = body.unwrap_or_default();
    let decided = state.app.decide(
        &caller,
        &tenant,
        &id,
        verdict,
        reason,
        action_digest.as_deref(),
    );
    Ok(Json(decided.await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// RFC 3339; events from this instant on. A `+` offset is best sent as `%2B`; one sent
    /// unencoded (decoded as a space) is read as `+`.
    #[param(nullable = false, format = DateTime, min_length = 1)]
    pub since: Option<String>,
    /// 1–1000, default 100.
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// From the previous page's `next_cursor`.
    #[param(nullable = false, min_length = 1)]
    pub cursor: Option<String>,
    /// Only events of these kinds, comma-separated: `submitted`, `accepted`, `rejected`,
    /// `expired`, `migrated`, `policy`. Without it, every kind but `policy` (policy changes
    /// are read with `kind=policy`).
    #[param(nullable = false, min_length = 1)]
    pub kind: Option<String>,
    /// Only decision-log events with this verdict: `allow`, `deny`, `require_approval`.
    #[param(nullable = false, min_length = 1)]
    pub decision: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}

/// The tenant's audit events, oldest first (admin): every submit's verdict (the decision
/// log: `allow` and `deny` too), decisions, expiries, migrations; policy changes with
/// `kind=policy`. A page may hold fewer than `limit` events (even none) and still have a
/// `next_cursor`: follow it to the end. With `Accept: application/x-ndjson` the answer is the
/// whole export from `since` (or `cursor`) to the end, one event per line, streamed (`limit`
/// is then the page size the export reads with); a failure mid-export cuts the stream, so an
/// incomplete download is never mistaken for a complete one.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit", tag = "audit",
    params(("tenant" = inline(TenantId), Path), AuditQuery),
    responses((status = 200, content(
            (AuditPage = "application/json"),
            (String = "application/x-ndjson", example = "{\"event_id\":\"…\",\"kind\":\"submitted\",…}\n")
        )),
        (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem), (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn audit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    headers: axum::http::HeaderMap,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let ndjson = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(accepts_ndjson);
    let query = app::AuditQuery {
        since: query.since,
        limit: query.limit,
        cursor: query.cursor,
        kinds: query.kind,
        decision: query.decision,
    };
    if ndjson {
        return audit_export(state, caller, tenant, query).await;
    }
    let page = state.app.audit(&caller, &tenant, query).await?;
    Ok(Json(AuditPage {
        items: page.items,
        next_cursor: page.next_cursor,
    })
    .into_response())
}

/// The NDJSON export: the first page is read before answering (so a bad query or a missing
/// permission is a problem document, not a broken stream), the rest page by page as the
/// client reads.
async fn audit_export(
    state: AppState,
    caller: crate::auth::Principal,
    tenant: TenantId,
    query: app::AuditQuery,
) -> Result<Response, ApiError> {
    enum Next {
        Page(Page<AuditEvent>, app::AuditQuery),
        Failed(std::io::Error),
    }
    let first = state.app.audit(&caller, &tenant, query.clone()).await?;
    let chunks = futures_util::stream::unfold(Some(Next::Page(first, query)), move |next| {
        let (state, caller, tenant) = (state.clone(), caller.clone(), tenant.clone());
        async move {
            let (page, mut query) = match next? {
                Next::Page(page, query) => (page, query),
                Next::Failed(error) => return Some((Err(error), None)),
            };
            let mut lines = Vec::new();
            for event in &page.items {
                // Plain data: serialising cannot fail.
                lines.extend(serde_json::to_vec(event).unwrap_or_default());
                lines.push(b'\n');
            }
            let following = match page.next_cursor {
                None => None,
                Some(cursor) => {
                    query.cursor = Some(cursor);
                    Some(
                        match state.app.audit(&caller, &tenant, query.clone()).await {
                            Ok(page) => Next::Page(page, query),
                            Err(error) => {
                                tracing::warn!(%tenant, error = %app::chain(&error), "audit export cut short");
                                Next::Failed(std::io::Error::other(error.to_string()))
                            }
                        },
                    )
                }
            };
            Some((Ok(axum::body::Bytes::from(lines)), following))
        }
    });
    let body = axum::body::Body::from_stream(chunks);
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Whether one media range of `Accept` asks for NDJSON: `application/x-ndjson`, unless its
/// `q` is 0 ("not this").
fn accepts_ndjson(range: &str) -> bool {
    let mut parts = range.split(';').map(str::trim);
    let named = parts
        .next()
        .is_some_and(|media| media.eq_ignore_ascii_case("application/x-ndjson"));
    let refused = parts.any(|p| {
        p.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
        })
    });
    named && !refused
}

#[cfg(test)]
mod tests {
    use super::accepts_ndjson;

    #[test]
    fn ndjson_is_chosen_only_when_asked_for_and_not_refused() {
        assert!(accepts_ndjson("application/x-ndjson"));
        assert!(accepts_ndjson(" Application/X-NDJSON ; q=0.5"));
        assert!(!accepts_ndjson("application/x-ndjson;q=0"));
        assert!(!accepts_ndjson("application/x-ndjson; q=0.000"));
        assert!(!accepts_ndjson("application/json"));
        assert!(!accepts_ndjson("application/x-ndjsonish"));
    }
}
