//! What an API request passes before its handler runs: its caller's place in flight
//! (`fairness.rs`: `429` past the caller's limits) and its deadline (`408` past
//! `server.request_timeout`; a decision long-poll has its own bound, 60 s).
//!
//! It also counts the request in the HTTP metrics (`crate::metrics::HttpTiming`). One
//! middleware for all three, not one each: every middleware layer is a boxed future per
//! request, about 1 kB, which a waiting long-poll holds for its whole wait.

use std::sync::Arc;
use std::time::Duration;

use axum::body::HttpBody as _;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::fairness::CallerSlots;
use super::ApiError;
use crate::auth::{bearer_token, token_digest, Authenticated, Authenticator};
use crate::metrics::HttpTiming;
use crate::server::ArrivedOn;

#[derive(Clone)]
pub struct Admission {
    pub slots: Arc<CallerSlots>,
    pub request_timeout: Duration,
    /// Who the caller is: only known tokens' requests keep their connection's place at the
    /// cap (`crate::server::ArrivedOn`); made-up tokens are answered `401` anyway.
    pub auth: Arc<Authenticator>,
}

/// Middleware: counts the request against its caller (or answers `429`), then runs it under
/// its deadline; the answer, whichever it is, in the HTTP metrics.
pub async fn admit(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    let timing = HttpTiming::start(&request);
    let response = admitted(&admission, request, next).await;
    timing.record(&response);
    response
}

async fn admitted(admission: &Admission, request: Request, next: Next) -> Response {
    let long_poll = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str().ends_with("/decision"));
    // Requests without credentials (health probes, scrapes) are not counted: they are
    // answered `401` or cost nothing. A caller is its token, not its header's spelling
    // ("bearer  t" is "Bearer t"), else respelling the header would buy more places. The
    // token's digest is taken once: the caller's places and its principal both go by it.
    let header = request.headers().get(AUTHORIZATION);
    let bearer = header
        .and_then(|h| std::str::from_utf8(h.as_bytes()).ok())
        .and_then(bearer_token)
        .map(token_digest);
    let caller: Option<[u8; 32]> =
        header.map(|h| bearer.unwrap_or_else(|| Sha256::digest(h.as_bytes()).into()));
    // A header of visible ASCII only, as everywhere a token is read
    // (`Authenticator::authenticate`).
    let principal = bearer
        .filter(|_| header.is_some_and(|h| h.to_str().is_ok()))
        .and_then(|digest| admission.auth.by_digest(&digest));
    let slot = match caller
        .map(|caller| admission.slots.try_acquire(caller, long_poll))
        .transpose()
    {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    // Authenticated here, once: the handler's `Caller` takes the principal from here. Only a
    // known token's requests keep their connection's place at the cap (`ArrivedOn`).
    let mut request = request;
    let known_caller = principal.is_some();
    let claim = principal
        .as_ref()
        .and_then(|_| request.extensions().get::<ArrivedOn>())
        .map(ArrivedOn::claim);
    if let Some(principal) = principal {
        request.extensions_mut().insert(Authenticated(principal));
    }
    let response = if long_poll {
        next.run(request).await
    } else {
        let timeout = admission.request_timeout;
        match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::RequestTimeout(timeout).into_response(),
        }
    };
    match (slot, claim) {
        (Some(slot), claim) if !is_event_stream(&response) => {
            hold_until_sent(response, (slot, claim), known_caller)
        }
        // A live stream holds its connection as long as it lasts.
        (_, Some(claim)) => response.map(|body| crate::server::holding(body, claim)),
        _ => response,
    }
}

/// A live event stream lasts as long as its reader: it has its own bound, per tenant
/// (`approvals.max_event_streams_per_tenant`), not a place among the caller's requests.
pub(crate) fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"))
}

/// Keeps the caller's place until the body is sent (or dropped). An audit export reads the
/// store page by page after its head is sent, and an HTTP/2 client may grant no window for an
/// answer (the socket's write deadline never sees it): either way the caller runs out of its
/// own places, not the service out of memory for everyone.
fn hold_until_sent<T: Send + Sync + 'static>(
    response: Response,
    slot: T,
    known_caller: bool,
) -> Response {
    // Known here, not past `holding` (whose body no longer says its length).
    let built_whole = response.body().size_hint().exact().is_some();
    let mut response = response.map(|body| crate::server::holding(body, slot));
    response
        .extensions_mut()
        .insert(crate::server::HoldsCallerPlace {
            built_whole,
            known_caller,
        });
    response
}
