//! The webhook admin API: a tenant's admins add, list and remove the webhooks that tell
//! reviewers (or their systems) what waits. Deliveries are described in docs/webhooks.md.

use std::sync::Arc;

use approvals_core::TenantId;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, Caller, TenantPath};
use super::{ApiError, AppState};
use crate::app::AppError;
use crate::auth::Principal;
use crate::notify::{Notifier, NotifyEvent, Webhook, WebhookFormat};

/// A webhook to add.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewWebhook {
    /// Where deliveries are POSTed: http(s), at most 2,048 characters.
    #[schema(max_length = 2048)]
    pub url: String,
    /// What to deliver; all four when absent.
    pub events: Option<Vec<NotifyEvent>>,
    /// `json` (default) or `slack` (an incoming-webhook message with a button to the inbox).
    #[serde(default)]
    pub format: WebhookFormat,
}

/// A webhook as listed (never with its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookInfo {
    pub id: String,
    pub url: String,
    pub events: Vec<NotifyEvent>,
    pub format: WebhookFormat,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: approvals_core::Timestamp,
}

/// A webhook just added, with the secret its deliveries are signed with: shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookInfo,
    /// HMAC-SHA256 key of `X-Approvals-Signature`; store it, it is not shown again.
    pub secret: String,
}

/// The tenant's webhooks and how many deliveries were given up on.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookInfo>,
    /// Deliveries that failed `notifications.max_attempts` times (the last 1,000 are kept).
    pub dead_letters: u64,
}

fn info(hook: &Webhook) -> WebhookInfo {
    WebhookInfo {
        id: hook.id.clone(),
        url: hook.url.clone(),
        events: hook.events.clone(),
        format: hook.format,
        created_at: hook.created_at,
    }
}

/// The notifier, for a caller who may manage `tenant`'s webhooks: a caller who may not gets
/// 403 whether or not this deployment has webhooks (a 501 would tell it how it is set up).
fn notifier<'a>(
    state: &'a AppState,
    caller: &Principal,
    tenant: &TenantId,
) -> Result<&'a Arc<Notifier>, ApiError> {
    Notifier::authorize(caller, tenant)?;
    state
        .notifier
        .as_ref()
        .ok_or(ApiError::App(AppError::WebhooksDisabled))
}

/// Add a webhook (admin). The answer's `secret` signs every delivery and is shown only here.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks", tag = "webhooks",
    params(("tenant" = inline(TenantId), Path)), request_body = NewWebhook,
    responses((status = 201, body = CreatedWebhook,
            headers(("Location" = String, description = "the webhook's URL (where it is deleted)"))),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem), (status = 409, description = "too_many_webhooks", body = super::Problem),
        (status = 413, body = super::Problem), (status = 415, body = super::Problem),
        (status = 422, description = "webhook_destination_forbidden", body = super::Problem),
        (status = 501, description = "webhooks_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn add_webhook(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    ApiJson(body): ApiJson<NewWebhook>,
) -> Result<Response, ApiError> {
    // The body's checks before the caller's permission: the contract's order.
    let asked = crate::notify::NewWebhookRequest::check(body.url, body.events)?;
    let hook = notifier(&state, &caller, &tenant)?
        .add_webhook(&caller, &tenant, asked, body.format)
        .await?;
    // Where it can be deleted: the webhook's own address, as a 201 names it.
    let location = format!("/v1/tenants/{tenant}/webhooks/{}", hook.id);
    let created = CreatedWebhook {
        webhook: info(&hook),
        secret: hook.secret,
    };
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

/// The tenant's webhooks and its dead-letter count (admin).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks", tag = "webhooks",
    params(("tenant" = inline(TenantId), Path)),
    responses((status = 200, body = WebhookList),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem),
        (status = 501, description = "webhooks_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
) -> Result<Json<WebhookList>, ApiError> {
    let (hooks, dead_letters) = notifier(&state, &caller, &tenant)?
        .webhooks(&caller, &tenant)
        .await?;
    Ok(Json(WebhookList {
        items: hooks.iter().map(info).collect(),
        dead_letters,
    }))
}

/// Remove a webhook (admin): nothing more is delivered to it.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/webhooks/{id}", tag = "webhooks",
    params(("tenant" = inline(TenantId), Path),
        ("id" = String, Path, pattern = "^wh_[0-9a-f]{32}$", description = "The webhook's id")),
    responses((status = 204, description = "removed"),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem), (status = 404, body = super::Problem),
        (status = 501, description = "webhooks_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn remove_webhook(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let well_formed = id.len() == 35
        && id.starts_with("wh_")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return Err(ApiError::InvalidIdentifier(format!(
            "webhook id must match ^wh_[0-9a-f]{{32}}$, got {:?}",
            id.chars().take(64).collect::<String>()
        )));
    }
    notifier(&state, &caller, &tenant)?
        .remove_webhook(&caller, &tenant, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a redelivery queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivered {
    /// Dead letters queued again: each is attempted anew, up to `notifications.max_attempts`.
    pub queued: u64,
}

/// Deliver the tenant's dead letters again (admin), e.g. once a receiver is back: each is
/// queued due now with the same id (receivers drop what they already had).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/dead_letters/redeliver", tag = "webhooks",
    params(("tenant" = inline(TenantId), Path)),
    responses((status = 200, body = Redelivered),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem),
        (status = 501, description = "webhooks_disabled", body = super::Problem),
        (status = 503, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn redeliver_dead_letters(
    State(state): State<AppState>,
    Caller(caller): Caller,
    TenantPath(tenant): TenantPath,
) -> Result<Json<Redelivered>, ApiError> {
    let queued = notifier(&state, &caller, &tenant)?
        .redeliver_dead_letters(&caller, &tenant)
        .await?;
    Ok(Json(Redelivered { queued }))
}
