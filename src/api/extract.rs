//! Extractors that turn a request into valid values or a problem response.
//!
//! Handlers list them in the contract's order of checks — caller (401), then path identifiers
//! and query (400), then body (400/413) — and authorize (403) in their bodies, after every
//! extractor ran.

use std::collections::HashMap;

use approvals_core::{ApprovalId, PolicyState, TenantId};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, IF_MATCH};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::app::Precondition;
use crate::auth::{Authenticated, Principal};

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Admission authenticated it already (`api::admission`); else look it up here.
        let principal = match parts.extensions.remove::<Authenticated>() {
            Some(Authenticated(principal)) => Some(principal),
            None => {
                let header = parts.headers.get(AUTHORIZATION);
                state
                    .auth
                    .authenticate(header.and_then(|v| v.to_str().ok()))
            }
        };
        let Some(principal) = principal else {
            // Apart from other 4xx: a burst is someone guessing, or a token rotated too soon.
            metrics::counter!("approvals_auth_failures_total", "surface" => "api").increment(1);
            return Err(ApiError::Unauthenticated);
        };
        tracing::Span::current().record("subject", principal.subject.as_str());
        Ok(Self(principal))
    }
}

async fn raw_path(
    parts: &mut Parts,
    state: &AppState,
) -> Result<HashMap<String, String>, ApiError> {
    Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map(|Path(map)| map)
        .map_err(|e| ApiError::InvalidIdentifier(e.body_text()))
}

fn tenant_of(map: &HashMap<String, String>) -> Result<TenantId, ApiError> {
    let raw = map.get("tenant").cloned().unwrap_or_default();
    let tenant = TenantId::parse(raw).map_err(|e| ApiError::InvalidIdentifier(e.to_string()))?;
    tracing::Span::current().record("tenant", tenant.as_str());
    Ok(tenant)
}

/// `If-Match` on a change to a tenant's policy, whose entity tags are its generation and a
/// digest of its state (`"7-3fa1c09e2b4d"`). RFC 9110: absent or `*` applies to any state; a
/// tag that is not one of ours (weak, malformed) matches nothing, so the change answers 412
/// rather than apply.
pub struct IfMatch(pub Precondition);

impl<S: Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(IF_MATCH).iter().peekable();
        if values.peek().is_none() {
            return Ok(Self(Precondition::Any));
        }
        let mut tags = Vec::new();
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for tag in value.split(',').map(str::trim) {
                if tag == "*" {
                    return Ok(Self(Precondition::Any));
                }
                let strong = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
                // Bounded: a header of thousands of tags is a client's mistake, not a need.
                if tags.len() < MAX_TAGS {
                    tags.extend(strong.map(str::to_owned));
                }
            }
        }
        Ok(Self(Precondition::OneOf(tags)))
    }
}

/// The most entity tags of one `If-Match` compared.
const MAX_TAGS: usize = 16;

/// The entity tag of a tenant's policy in `state`, as `IfMatch` reads it.
pub fn policy_etag(state: &PolicyState) -> String {
    format!("\"{}\"", crate::app::policy_tag(state))
}

/// `{tenant}` from the path, valid.
pub struct TenantPath(pub TenantId);

impl FromRequestParts<AppState> for TenantPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Self(tenant_of(&raw_path(parts, state).await?)?))
    }
}

/// `{tenant}` and `{id}` from the path, both valid.
pub struct ApprovalPath(pub TenantId, pub ApprovalId);

impl FromRequestParts<AppState> for ApprovalPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let map = raw_path(parts, state).await?;
        let tenant = tenant_of(&map)?;
        let raw = map.get("id").cloned().unwrap_or_default();
        let id = ApprovalId::parse(raw).map_err(|e| ApiError::InvalidIdentifier(e.to_string()))?;
        tracing::Span::current().record("approval_id", id.as_str());
        Ok(Self(tenant, id))
    }
}

/// Query parameters; a wrong type is `invalid_query` naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Self)
            .map_err(|e| ApiError::InvalidQuery(e.to_string()))
    }
}

/// A JSON body, at most `server.body_limit` bytes. `Option<T>` accepts an empty body.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        read_json(request, state.body_limit).await.map(Self)
    }
}

/// A policy bundle upload: JSON like [`ApiJson`], at most `policy.max_bundle_bytes`.
pub struct BundleJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for BundleJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        read_json(request, state.bundle_limit).await.map(Self)
    }
}

async fn read_json<T: DeserializeOwned>(request: Request, limit: usize) -> Result<T, ApiError> {
    let typed = match request.headers().get(CONTENT_TYPE) {
        Some(value) if !is_json(value) => {
            let named = value.to_str().unwrap_or("(not text)").to_owned();
            return Err(ApiError::UnsupportedMediaType(named));
        }
        Some(_) => true,
        None => false,
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let bytes: Bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|e| read_error(e, limit))?;
    let empty = bytes.iter().all(u8::is_ascii_whitespace);
    // A body without a type is not declared JSON; no body at all needs none.
    if !typed && !empty {
        return Err(ApiError::UnsupportedMediaType("(none)".into()));
    }
    let body: &[u8] = if empty { b"null" } else { &bytes };
    // Every body of the API is an object. serde also fills a struct from an array, by position,
    // so `[null, null, {"type": …}]` was a submit and `["ok"]` a decision with a reason.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::InvalidBody(
            "body: must be a JSON object, not an array".into(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        // A syntax error has no field to blame: the body as a whole is not JSON.
        let path = e.path().to_string();
        let whole = e.inner().is_syntax() || e.inner().is_eof() || path == ".";
        let message = e.inner().to_string();
        // serde reports a missing field at its parent; name the field itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(|name| {
                if path == "." {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                }
            });
        let field = match missing {
            Some(field) => field,
            None if whole => "body".to_owned(),
            None => path,
        };
        ApiError::InvalidBody(format!("{field}: {}", e.inner()))
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::InvalidBody(format!("body: {e}")))?;
    Ok(value)
}

/// `application/json`, or any `…/…+json` type, with or without parameters.
fn is_json(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Too long is 413; anything else (a client gone mid-body) is a body that could not be read.
fn read_error(error: axum::Error, limit: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return ApiError::PayloadTooLarge(limit);
        }
        source = cause.source();
    }
    ApiError::InvalidBody(format!("body: could not be read to its end ({error})"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    #[tokio::test]
    async fn only_a_body_over_the_limit_is_413_a_body_cut_short_is_400() {
        let too_long = axum::body::to_bytes(Body::from(vec![b'x'; 100]), 10)
            .await
            .unwrap_err();
        assert!(matches!(
            read_error(too_long, 10),
            ApiError::PayloadTooLarge(10)
        ));
        // What a client that vanishes mid-body looks like to the reader.
        let chunks = futures_util::stream::iter([
            Ok(Bytes::from_static(b"{\"action\":")),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ]);
        let cut_short = axum::body::to_bytes(Body::from_stream(chunks), 1024)
            .await
            .unwrap_err();
        assert!(matches!(
            read_error(cut_short, 1024),
            ApiError::InvalidBody(_)
        ));
    }
}
