//! The policy admin API: a tenant's compliance team uploads, activates, rolls back and trials
//! its policy bundles (tenant admins and platform admins only).

use approvals_core::{BundleFile, BundleSummary, PolicyState, StoredBundle, TenantId};
use axum::extract::{FromRequest, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{policy_etag, ApiJson, BundleJson, Caller, IfMatch, TenantPath};
use super::{ApiError, AppState};
use crate::app::PolicyView;
use crate::auth::Principal;

/// A bundle to upload: its `.rego` files, tests included.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UploadBody {
    /// Relative '/'-separated paths ending in `.rego`, each once; at most 200 files. A
    /// file's text holds no control character but tab, line feed and carriage return.
    pub files: Vec<BundleFile>,
}

/// A stored bundle version, without its files.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleInfo {
    /// `sha256:` digest over the files' paths and texts: the `policy_version` verdicts carry.
    pub version: String,
    pub uploaded_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub uploaded_at: approvals_core::Timestamp,
    /// Whether it answers the tenant's submits now.
    pub active: bool,
    /// Whether it is evaluated beside the active one (shadow evaluation).
    pub candidate: bool,
}

/// What an upload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadAnswer {
    pub bundle: BundleInfo,
    /// `false` when this exact version was uploaded before: nothing was stored.
    pub created: bool,
    /// Older versions this upload deleted, oldest first: a tenant keeps
    /// `policy.max_stored_bundles` versions besides those its policy names (active,
    /// candidate, rollback history).
    pub pruned: Vec<String>,
    /// The bundle's own tests: `{policy_version, passed, failed, results: [...]}`.
    #[schema(value_type = Object)]
    pub tests: serde_json::Value,
}

/// A bundle with its files.
#[derive(Debug, Serialize, ToSchema)]
pub struct BundleDocument {
    pub version: String,
    pub uploaded_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub uploaded_at: approvals_core::Timestamp,
    pub files: Vec<BundleFile>,
}

/// Which bundle answers for the tenant, which is on trial, and every stored version.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyOverview {
    /// The tenant's active bundle; `null`: the platform default answers.
    pub active: Option<String>,
    /// The version verdicts carry now (the active one, or the default's).
    pub effective_version: String,
    pub default_version: String,
    /// Evaluated beside the active version on live submits, never deciding.
    pub candidate: Option<String>,
    /// Versions active before, oldest first (`null`: the platform default); a rollback
    /// returns to the last.
    pub history: Vec<Option<String>>,
    /// Bumped by every change.
    pub generation: u64,
    /// Stored versions, newest upload first (a version pushed again counts as new).
    pub bundles: Vec<BundleInfo>,
    /// Whether the instance that answered runs this generation. `false` for a moment after
    /// another instance's change (until its `policy.reload_interval` poll), or while it cannot
    /// load the active bundle (its submits then answer `503 policy_not_loaded`, or keep the
    /// version they had) or the candidate (no shadow evaluation runs); the log names it.
    pub loaded_here: bool,
}

/// Names one stored version.
#[derive(Debug, Deserialize, ToSchema)]
pub struct VersionBody {
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    pub version: String,
}

/// A bundle version in a path: `sha256:` and 64 hex digits.
struct VersionParam;

impl utoipa::PartialSchema for VersionParam {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^sha256:[0-9a-f]{64}$"))
            .into()
    }
}

impl ToSchema for VersionParam {}

/// `If-Match` on a policy change, as the OpenAPI document describes it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // only its description is used
struct IfMatchHeader {
    /// The policy's `ETag` as read: the change applies only if the policy is still in that
    /// state. Without it, the change applies to whatever is there.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

fn info(bundle: &BundleSummary, state: &PolicyState) -> BundleInfo {
    BundleInfo {
        version: bundle.version.clone(),
        uploaded_by: bundle.uploaded_by.clone(),
        uploaded_at: bundle.uploaded_at,
        active: state.active.as_deref() == Some(bundle.version.as_str()),
        candidate: state.candidate.as_deref() == Some(bundle.version.as_str()),
    }
}

fn overview(view: PolicyView) -> PolicyOverview {
    let bundles = view.bundles.iter().map(|b| info(b, &view.state)).collect();
    PolicyOverview {
        active: view.state.active,
        effective_version: view.effective_version,
        default_version: view.default_version,
        candidate: view.state.candidate,
        history: view.state.history,
        generation: view.state.generation,
        bundles,
        loaded_here: view.loaded_here,
    }
}

/// The tenant's policy: active version, candidate, rollback history, stored versions (admin).
/// Its `ETag` names the state (its generation and a digest); a change sent with it in `If-Match` applies only to that
/// state (`412 policy_precondition_failed` otherwise), so a retried change never applies twice.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/policy", tag = "policy",
    params(("tenant" = inline(TenantId), Path)),
    responses((status = 200, body = PolicyOverview, headers(("ETag" = String, description = "the policy's state: its generation and a digest, quoted: `\"7-3fa1c09e2b4d\"`"))), (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem),
        (status = 501, description = "policy_store_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn read_policy(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
) -> Result<Response, ApiError> {
    let view = state.app.policy_view(&caller, &tenant).await?;
    let etag = policy_etag(&view.state);
    Ok(([(header::ETAG, etag)], Json(overview(view))).into_response())
}

/// The answer to a change: the state it committed, with its `ETag`.
async fn changed(
    state: &AppState,
    caller: &Principal,
    tenant: &TenantId,
    committed: PolicyState,
) -> Result<Response, ApiError> {
    let view = state
        .app
        .policy_view_after_change(caller, tenant, committed)
        .await?;
    let etag = policy_etag(&view.state);
    Ok(([(header::ETAG, etag)], Json(overview(view))).into_response())
}

/// Upload a bundle (admin). Validated first: it must compile in regorus, define
/// `data.approvals.decision`, and pass its own `test_*` rules; a bundle that does not is
/// refused with `422 policy_invalid` listing every message, and nothing is stored. Uploading
/// does not activate. Unlike other routes, who may upload is checked before the body (up to
/// the bundle limit) is read: a caller who may not is answered `403` (or `501`) whatever it
/// sends, and costs the instance no buffered bundle.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/policy/bundles", tag = "policy",
    params(("tenant" = inline(TenantId), Path)), request_body = UploadBody,
    responses((status = 201, description = "stored", body = UploadAnswer, headers(("Location" = String, description = "the stored bundle"))),
        (status = 200, description = "this version was stored before", body = UploadAnswer, headers(("Location" = String, description = "the stored bundle"))),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem), (status = 413, body = super::Problem),
        (status = 415, description = "unsupported_media_type", body = super::Problem),
        (status = 422, description = "policy_invalid: `errors` lists every message", body = super::Problem),
        (status = 429, description = "upload_in_progress: this tenant's previous upload is still being validated on this instance", body = super::Problem),
        (status = 501, description = "policy_store_disabled", body = super::Problem),
        (status = 503, description = "backend_unavailable, or policy_sandbox_unavailable: this instance cannot start the child process that validates bundles (the bundle was not judged; try again)", body = super::Problem)),
    security(("bearer" = [])))]
pub async fn upload_bundle(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Who may upload, before the body is read.
    state.app.may_upload_policy(&caller, &tenant)?;
    let BundleJson(body) = BundleJson::<UploadBody>::from_request(request, &state).await?;
    // Validated and stored on a task of its own: an upload whose tests take about as long as
    // `server.request_timeout` (they may take 30 s) answers 408 but is still stored and
    // recorded, and the client's retry finds it (200), instead of starting over every time.
    let app = state.app.clone();
    let (who, at) = (caller.clone(), tenant.clone());
    let uploaded = tokio::spawn(async move { app.upload_policy(&who, &at, body.files).await })
        .await
        .map_err(|e| ApiError::from(crate::app::AppError::Internal(e.into())))??;
    let current = state
        .app
        .policy_state_after_upload(&caller, &tenant)
        .await?;
    let tests = serde_json::json!({
        "policy_version": uploaded.tests.policy_version,
        "passed": uploaded.tests.passed(), "failed": uploaded.tests.failed(),
        "results": uploaded.tests.results,
    });
    let location = format!(
        "/v1/tenants/{tenant}/policy/bundles/{}",
        uploaded.bundle.version
    );
    let status = if uploaded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let answer = UploadAnswer {
        bundle: info(&uploaded.bundle, &current),
        created: uploaded.created,
        pruned: uploaded.pruned,
        tests,
    };
    Ok((status, [(header::LOCATION, location)], Json(answer)).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BundleList {
    pub items: Vec<BundleInfo>,
}

/// The tenant's stored bundle versions, newest upload first (a version pushed again counts
/// as new; its first upload's `uploaded_at` and `uploaded_by` stand) (admin).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/policy/bundles", tag = "policy",
    params(("tenant" = inline(TenantId), Path)),
    responses((status = 200, body = BundleList), (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem),
        (status = 501, description = "policy_store_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn list_bundles(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
) -> Result<Json<BundleList>, ApiError> {
    let view = state.app.policy_view(&caller, &tenant).await?;
    Ok(Json(BundleList {
        items: overview(view).bundles,
    }))
}

/// One stored bundle with its files (admin).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/policy/bundles/{version}", tag = "policy",
    params(("tenant" = inline(TenantId), Path), ("version" = inline(VersionParam), Path)),
    responses((status = 200, body = BundleDocument), (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem),
        (status = 404, description = "policy_version_not_found", body = super::Problem),
        (status = 501, description = "policy_store_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn read_bundle(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    Path((_, version)): Path<(String, String)>,
) -> Result<Json<BundleDocument>, ApiError> {
    let StoredBundle {
        version,
        files,
        uploaded_by,
        uploaded_at,
    } = state.app.policy_bundle(&caller, &tenant, &version).await?;
    Ok(Json(BundleDocument {
        version,
        uploaded_by,
        uploaded_at,
        files,
    }))
}

/// Activate a stored version (admin): every instance evaluates the tenant's submits with it
/// within `policy.reload_interval` (this one at once). Approvals parked before keep the
/// `policy_version` they were parked under.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/policy/active", tag = "policy",
    params(("tenant" = inline(TenantId), Path), IfMatchHeader), request_body = VersionBody,
    responses((status = 200, body = PolicyOverview, headers(("ETag" = String))), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem),
        (status = 404, description = "policy_version_not_found", body = super::Problem),
        (status = 409, description = "policy_changed: another change won; retry", body = super::Problem),
        (status = 412, description = "policy_precondition_failed: If-Match names another state of the policy", body = super::Problem),
        (status = 413, description = "payload_too_large", body = super::Problem),
        (status = 415, description = "unsupported_media_type", body = super::Problem),
        (status = 501, description = "policy_store_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn activate(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    IfMatch(precondition): IfMatch,
    ApiJson(body): ApiJson<VersionBody>,
) -> Result<Response, ApiError> {
    let committed = state
        .app
        .activate_policy(&caller, &tenant, &body.version, &precondition)
        .await?;
    changed(&state, &caller, &tenant, committed).await
}

/// Return to the version active before the current one (admin); past the tenant's first
/// bundle, the platform default.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/policy/rollback", tag = "policy",
    params(("tenant" = inline(TenantId), Path), IfMatchHeader),
    responses((status = 200, body = PolicyOverview, headers(("ETag" = String))), (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem),
        (status = 404, description = "policy_version_not_found: the version to return to was deleted by an upload's prune meanwhile", body = super::Problem),
        (status = 409, description = "no_earlier_policy, or policy_changed", body = super::Problem),
        (status = 412, description = "policy_precondition_failed: If-Match names another state of the policy", body = super::Problem),
        (status = 501, description = "policy_store_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn rollback(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    IfMatch(precondition): IfMatch,
) -> Result<Response, ApiError> {
    let committed = state
        .app
        .rollback_policy(&caller, &tenant, &precondition)
        .await?;
    changed(&state, &caller, &tenant, committed).await
}

/// Trial a stored version (admin): evaluated beside the active one on every live submit,
/// never deciding; its verdict goes into the decision log and disagreements are counted
/// (`approvals_policy_shadow_disagreements_total`).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/policy/candidate", tag = "policy",
    params(("tenant" = inline(TenantId), Path), IfMatchHeader), request_body = VersionBody,
    responses((status = 200, body = PolicyOverview, headers(("ETag" = String))), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem),
        (status = 404, description = "policy_version_not_found", body = super::Problem),
        (status = 409, description = "policy_changed", body = super::Problem),
        (status = 412, description = "policy_precondition_failed: If-Match names another state of the policy", body = super::Problem),
        (status = 413, description = "payload_too_large", body = super::Problem),
        (status = 415, description = "unsupported_media_type", body = super::Problem),
        (status = 501, description = "policy_store_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn set_candidate(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    IfMatch(precondition): IfMatch,
    ApiJson(body): ApiJson<VersionBody>,
) -> Result<Response, ApiError> {
    let committed = state
        .app
        .set_policy_candidate(&caller, &tenant, Some(&body.version), &precondition)
        .await?;
    changed(&state, &caller, &tenant, committed).await
}

/// Stop trialling the candidate (admin).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/policy/candidate", tag = "policy",
    params(("tenant" = inline(TenantId), Path), IfMatchHeader),
    responses((status = 200, body = PolicyOverview, headers(("ETag" = String))), (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem),
        (status = 409, description = "policy_changed", body = super::Problem),
        (status = 412, description = "policy_precondition_failed: If-Match names another state of the policy", body = super::Problem),
        (status = 501, description = "policy_store_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn clear_candidate(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    IfMatch(precondition): IfMatch,
) -> Result<Response, ApiError> {
    let committed = state
        .app
        .set_policy_candidate(&caller, &tenant, None, &precondition)
        .await?;
    changed(&state, &caller, &tenant, committed).await
}
