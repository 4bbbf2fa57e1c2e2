//! Routes for operators and machines: health, readiness, metrics, the OpenAPI document.

use std::sync::Arc;

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

/// `200` when the backend answers, `503 backend_unavailable` when not.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, body = super::Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.app.ready().await?;
    Ok(Json(
        json!({"status": "ready", "backend": state.app.engine_kind()}),
    ))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.app.render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub async fn openapi(document: Arc<utoipa::openapi::OpenApi>) -> Response {
    match document.to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => ApiError::Internal(e.into()).into_response(),
    }
}

/// Unknown routes answer problem+json too.
pub async fn no_route() -> Response {
    ApiError::NoRoute.into_response()
}

/// So does a known route asked with a method it does not take (the router adds `Allow`).
pub async fn method_not_allowed(method: axum::http::Method) -> Response {
    ApiError::MethodNotAllowed(method).into_response()
}
