//! Every error the API answers, as RFC 9457 `application/problem+json` with a stable `code`.

use approvals_core::{Approval, BackendError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown bearer token")]
    Unauthenticated,
    #[error("{0}")]
    InvalidIdentifier(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Forbidden(String),
    #[error("you submitted this approval; another reviewer must decide it")]
    SelfApproval,
    #[error("{0}")]
    NotFound(String),
    #[error("request_id {0} exists with a different action, context or agent_id")]
    RequestIdConflict(String),
    #[error("the approval is already {}", .0.status.as_str())]
    AlreadyDecided(Box<Approval>),
    #[error("the approval expired at {}", .0.expires_at)]
    Expired(Box<Approval>),
    #[error("the approval store is unavailable: {0}")]
    BackendUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable, machine-readable.
    pub code: &'static str,
    /// For `already_decided` and `expired`: the current record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::InvalidIdentifier(_) | Self::InvalidBody(_) | Self::InvalidQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Forbidden(_) | Self::SelfApproval => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::RequestIdConflict(_) | Self::AlreadyDecided(_) => StatusCode::CONFLICT,
            Self::Expired(_) => StatusCode::GONE,
            Self::BackendUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidIdentifier(_) => "invalid_identifier",
            Self::InvalidBody(_) => "invalid_body",
            Self::InvalidQuery(_) => "invalid_query",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Forbidden(_) => "forbidden",
            Self::SelfApproval => "self_approval",
            Self::NotFound(_) => "not_found",
            Self::RequestIdConflict(_) => "request_id_conflict",
            Self::AlreadyDecided(_) => "already_decided",
            Self::Expired(_) => "expired",
            Self::BackendUnavailable(_) => "backend_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "Unauthenticated",
            Self::InvalidIdentifier(_) => "Invalid identifier",
            Self::InvalidBody(_) => "Invalid request body",
            Self::InvalidQuery(_) => "Invalid query parameter",
            Self::PayloadTooLarge(_) => "Payload too large",
            Self::Forbidden(_) => "Forbidden",
            Self::SelfApproval => "Self-approval refused",
            Self::NotFound(_) => "Not found",
            Self::RequestIdConflict(_) => "Request id conflict",
            Self::AlreadyDecided(_) => "Already decided",
            Self::Expired(_) => "Expired",
            Self::BackendUnavailable(_) => "Backend unavailable",
            Self::Internal(_) => "Internal error",
        }
    }

    pub fn to_problem(&self) -> Problem {
        let approval = match self {
            Self::AlreadyDecided(a) | Self::Expired(a) => Some((**a).clone()),
            _ => None,
        };
        Problem {
            kind: format!("urn:approvals:problem:{}", self.code()),
            title: self.title(),
            status: self.status().as_u16(),
            detail: self.to_string(),
            code: self.code(),
            approval,
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(error: BackendError) -> Self {
        match error {
            BackendError::InvalidCursor => {
                Self::InvalidQuery("cursor: not a cursor this service handed out".into())
            }
            BackendError::Unavailable(_) | BackendError::Timeout(_) => {
                crate::metrics::backend_error(&error);
                Self::BackendUnavailable(error.to_string())
            }
            BackendError::Corrupt { .. } => {
                crate::metrics::backend_error(&error);
                Self::Internal(error.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let status = self.status();
        let mut response = (status, axum::Json(self.to_problem())).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
