//! Routes for operators and machines: health, readiness, metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{ApiError, AppState};

/// `200` while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `200` when the backend answers, `503 backend_unavailable` when not; `503 shutting_down` from
/// SIGTERM on (the instance may still serve for `server.shutdown_delay`).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, body = super::Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.app.ready().await?;
    Ok(Json(
        json!({"status": "ready", "backend": state.app.engine_kind()}),
    ))
}

/// Prometheus text exposition; `404` here when `server.metrics_listen` serves it instead.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 404, description = "served on server.metrics_listen instead", body = super::Problem)))]
pub async fn metrics(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    if state.metrics_elsewhere {
        return no_route(State(state), uri, headers).await;
    }
    exposition(&state).await
}

/// `/metrics` alone, for `server.metrics_listen`.
pub fn metrics_router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |State(state): State<AppState>| async move { exposition(&state).await },
            ),
        )
        .with_state(state)
}

async fn exposition(state: &AppState) -> Response {
    let body = state.app.metrics_text().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The OpenAPI document, serialised once (at start-up) and shared by every answer: built per
/// request, each answer a client left unread held a copy of its own.
pub fn openapi(document: &utoipa::openapi::OpenApi) -> axum::routing::MethodRouter<AppState> {
    let answer = match document.to_json() {
        Ok(json) => Ok(axum::body::Bytes::from(json)),
        Err(e) => Err(e.to_string()),
    };
    axum::routing::get(move || {
        let answer = answer.clone();
        async move {
            match answer {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(error) => ApiError::Internal(error.into()).into_response(),
            }
        }
    })
}

/// Unknown routes answer problem+json too. Under `/v1/` the contract's order holds as on
/// every route: the caller first (401), then identifiers (an empty path segment, such as a
/// trailing slash, is an empty identifier: 400); a 404 here never tells an anonymous caller
/// which paths exist.
pub async fn no_route(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(refused) = refuse_anonymous(&state, &uri, &headers) {
        return refused;
    }
    if let Some(rest) = uri.path().strip_prefix("/v1/") {
        if rest.is_empty() || rest.split('/').any(str::is_empty) {
            return ApiError::InvalidIdentifier(
                "an identifier in the path is empty (a doubled or trailing '/')".into(),
            )
            .into_response();
        }
    }
    ApiError::NoRoute.into_response()
}

/// So does a known route asked with a method it does not take (the router adds `Allow`);
/// under `/v1/` only for a caller who authenticated (401 first, as everywhere).
pub async fn method_not_allowed(
    State(state): State<AppState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(refused) = refuse_anonymous(&state, &uri, &headers) {
        return refused;
    }
    ApiError::MethodNotAllowed(method).into_response()
}

/// Under `/v1/` a caller without a valid token is answered `401` before anything about the
/// route (the contract's order; a 404 or 405 would tell it which paths and methods exist).
fn refuse_anonymous(
    state: &AppState,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
) -> Option<Response> {
    if !uri.path().starts_with("/v1/") {
        return None;
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state
        .auth
        .authenticate(authorization)
        .is_none()
        .then(|| ApiError::Unauthenticated.into_response())
}
