//! Every error the API answers, as RFC 9457 `application/problem+json` with a stable `code`.
//!
//! Most come from the application layer ([`AppError`]); a few belong to HTTP itself (no
//! token, a body too large or not JSON, no such route). A failure inside the service gets a
//! fixed sentence: what went wrong in the engine is logged with its causes, never sent.

use approvals_core::Approval;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppError;

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
    #[error("the body must be JSON (application/json or a +json type), not {0}")]
    UnsupportedMediaType(String),
    #[error("no such route")]
    NoRoute,
    #[error("this route does not take {0}; the Allow header lists what it takes")]
    MethodNotAllowed(axum::http::Method),
    #[error("the request took longer than {0:?}")]
    RequestTimeout(std::time::Duration),
    /// The caller (its bearer token) already has this many requests, or decision long-polls,
    /// in flight (`limits.max_requests_per_caller`, `limits.max_long_polls_per_caller`).
    #[error(
        "this token already has {in_flight} {} in flight; retry when one is answered",
        if *.long_polls { "decision long-polls" } else { "requests" }
    )]
    TooManyRequests { in_flight: usize, long_polls: bool },
    #[error(transparent)]
    App(#[from] AppError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    /// For `policy_invalid`: every compiler message and failing test of the bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

impl ApiError {
    /// Status, code and title: the contract's table of errors.
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Self::Unauthenticated => (S::UNAUTHORIZED, "unauthenticated", "Unauthenticated"),
            Self::InvalidIdentifier(_) | Self::App(AppError::InvalidIdentifier(_)) => {
                (S::BAD_REQUEST, "invalid_identifier", "Invalid identifier")
            }
            Self::InvalidBody(_) | Self::App(AppError::InvalidContent(_)) => {
                (S::BAD_REQUEST, "invalid_body", "Invalid request body")
            }
            Self::InvalidQuery(_) | Self::App(AppError::InvalidOption(_)) => {
                (S::BAD_REQUEST, "invalid_query", "Invalid query parameter")
            }
            Self::PayloadTooLarge(_) => (
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            Self::UnsupportedMediaType(_) => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            Self::App(AppError::InputTooLarge(_)) => (
                S::UNPROCESSABLE_ENTITY,
                "input_too_large",
                "Input beyond the limits",
            ),
            Self::RequestTimeout(_) => (S::REQUEST_TIMEOUT, "request_timeout", "Request timeout"),
            Self::TooManyRequests { .. } => (
                S::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Too many requests in flight",
            ),
            Self::NoRoute | Self::App(AppError::NotFound { .. }) => {
                (S::NOT_FOUND, "not_found", "Not found")
            }
            Self::MethodNotAllowed(_) => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            Self::App(AppError::Forbidden(_)) => (S::FORBIDDEN, "forbidden", "Forbidden"),
            Self::App(AppError::SelfApproval) => {
                (S::FORBIDDEN, "self_approval", "Self-approval refused")
            }
            Self::App(AppError::RequestIdConflict(_)) => {
                (S::CONFLICT, "request_id_conflict", "Request id conflict")
            }
            Self::App(AppError::TooManyPending { .. }) => (
                S::TOO_MANY_REQUESTS,
                "too_many_pending",
                "Too many pending approvals",
            ),
            Self::App(AppError::UploadInProgress(_)) => (
                S::TOO_MANY_REQUESTS,
                "upload_in_progress",
                "A policy upload is under way",
            ),
            Self::App(AppError::TooManyStreams { .. }) => (
                S::TOO_MANY_REQUESTS,
                "too_many_streams",
                "Too many live event streams",
            ),
            Self::App(AppError::AlreadyDecided(_)) => {
                (S::CONFLICT, "already_decided", "Already decided")
            }
            Self::App(AppError::Expired(_)) => (S::GONE, "expired", "Expired"),
            Self::App(AppError::PolicyInvalid(_)) => (
                S::UNPROCESSABLE_ENTITY,
                "policy_invalid",
                "Invalid policy bundle",
            ),
            Self::App(AppError::PolicyVersionNotFound { .. }) => (
                S::NOT_FOUND,
                "policy_version_not_found",
                "No such policy version",
            ),
            Self::App(AppError::NoEarlierPolicy(_)) => {
                (S::CONFLICT, "no_earlier_policy", "Nothing to roll back to")
            }
            Self::App(AppError::PolicyChanged(_)) => {
                (S::CONFLICT, "policy_changed", "Policy changed meanwhile")
            }
            Self::App(AppError::PolicyPreconditionFailed { .. }) => (
                S::PRECONDITION_FAILED,
                "policy_precondition_failed",
                "Policy state does not match",
            ),
            Self::App(AppError::PolicyStoreDisabled) => (
                S::NOT_IMPLEMENTED,
                "policy_store_disabled",
                "No tenant policy store",
            ),
            Self::App(AppError::WebhooksDisabled) => (
                S::NOT_IMPLEMENTED,
                "webhooks_disabled",
                "No webhooks in this deployment",
            ),
            Self::App(AppError::TooManyWebhooks { .. }) => {
                (S::CONFLICT, "too_many_webhooks", "Too many webhooks")
            }
            Self::App(AppError::WebhookDestinationForbidden(_)) => (
                S::UNPROCESSABLE_ENTITY,
                "webhook_destination_forbidden",
                "Webhook destination not allowed",
            ),
            Self::App(AppError::WebhookNotFound { .. }) => {
                (S::NOT_FOUND, "not_found", "No such webhook")
            }
            Self::App(AppError::PolicySandboxUnavailable(_)) => (
                S::SERVICE_UNAVAILABLE,
                "policy_sandbox_unavailable",
                "Policy sandbox unavailable",
            ),
            Self::App(AppError::PolicyNotLoaded) => (
                S::SERVICE_UNAVAILABLE,
                "policy_not_loaded",
                "Policies not loaded",
            ),
            Self::App(AppError::ActionMismatch { .. }) => (
                S::CONFLICT,
                "action_mismatch",
                "Action does not match its digest",
            ),
            Self::App(AppError::Unavailable(_)) => (
                S::SERVICE_UNAVAILABLE,
                "backend_unavailable",
                "Backend unavailable",
            ),
            Self::App(AppError::ShuttingDown) => {
                (S::SERVICE_UNAVAILABLE, "shutting_down", "Shutting down")
            }
            Self::App(AppError::Internal(_)) | Self::Internal(_) => {
                (S::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    /// What the client reads: the error's own sentence, except where that would carry an
    /// engine's internal text.
    fn detail(&self) -> String {
        match self {
            Self::App(AppError::Unavailable(_)) => {
                "the approval store is unavailable; retry later".into()
            }
            Self::App(AppError::Internal(_)) | Self::Internal(_) => {
                "internal error; the service log has the details".into()
            }
            // Its cause names the install path and the OS error: the log's, not a tenant's.
            Self::App(AppError::PolicySandboxUnavailable(_)) => {
                "this instance cannot validate policy bundles now (it cannot start a policy \
                 sandbox); retry later: the service log has the cause"
                    .into()
            }
            other => other.to_string(),
        }
    }

    pub fn to_problem(&self) -> Problem {
        let approval = match self {
            Self::App(AppError::AlreadyDecided(a) | AppError::Expired(a)) => Some((**a).clone()),
            _ => None,
        };
        let errors = match self {
            Self::App(AppError::PolicyInvalid(errors)) => Some(errors.clone()),
            _ => None,
        };
        let (status, code, title) = self.parts();
        Problem {
            errors,
            kind: format!("urn:approvals:problem:{code}"),
            title,
            status: status.as_u16(),
            detail: self.detail(),
            code,
            approval,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(error) = &self {
            tracing::error!(error = %crate::app::chain(error.as_ref()), "request failed");
        }
        let status = self.status();
        let retry_soon = matches!(
            self,
            Self::TooManyRequests { .. } | Self::App(AppError::UploadInProgress(_))
        );
        let mut response = (status, axum::Json(self.to_problem())).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if retry_soon {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
