//! The reviewers' inbox at `/ui/`: server-rendered pages (askama templates in
//! `templates/ui/`), one small script for live updates and countdowns, one stylesheet, no
//! external asset. Sign-in with a reviewer's or admin's token opens a cookie session
//! (`session`); pages call the same use cases as the API (`crate::app`), so every rule
//! (roles, tenants, self-approval, first decision wins) is the API's.

mod first_view;
mod pages;
pub mod session;
mod sign_outs;
mod view;

pub use view::span;

use std::time::Duration;

use axum::extract::FromRef;
use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use axum_extra::extract::cookie::Key;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::api::AppState;
use approvals_core::Timestamp;

/// Scripts, styles, forms and connections only from this origin; no frames, no plugins.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// What the inbox's handlers reach.
#[derive(Clone)]
pub struct UiState {
    pub api: AppState,
    key: Key,
    session_ttl: Duration,
    /// Whether session cookies are always `Secure` (`ui.public_url` is HTTPS); otherwise they
    /// are when a proxy says the browser came over HTTPS (`session::forwarded_https`).
    secure_cookies: bool,
    /// Where reviewers reach the inbox (`ui.public_url`'s host and port): an `Origin` naming it
    /// is ours, whatever `Host` a proxy in front sends.
    public_authority: Option<String>,
    first_views: std::sync::Arc<first_view::FirstViews>,
    sign_outs: std::sync::Arc<sign_outs::SignOuts>,
}

impl UiState {
    pub fn new(api: AppState, settings: &crate::config::UiSettings) -> Self {
        // Redis, where it is configured: what every instance must agree on lives there.
        let store = api.notifier.as_ref().map(|n| n.store().clone());
        Self {
            key: session::signing_key(settings.session_secret.as_deref()),
            session_ttl: settings.session_ttl,
            secure_cookies: settings
                .public_url
                .as_deref()
                .is_some_and(|url| url.starts_with("https://")),
            public_authority: settings
                .public_url
                .as_deref()
                .and_then(|url| reqwest::Url::parse(url).ok())
                .and_then(|url| {
                    let host = url.host_str()?.to_owned();
                    Some(match url.port() {
                        Some(port) => format!("{host}:{port}"),
                        None => host,
                    })
                }),
            first_views: std::sync::Arc::new(first_view::FirstViews::new(store.clone())),
            sign_outs: std::sync::Arc::new(sign_outs::SignOuts::new(store)),
            api,
        }
    }

    pub fn public_authority(&self) -> Option<&str> {
        self.public_authority.as_deref()
    }

    /// The session `jar` holds, if it is valid (`session::current`) and not signed out.
    pub async fn session(
        &self,
        jar: &axum_extra::extract::cookie::SignedCookieJar,
    ) -> Option<session::Session> {
        let session = session::current(&self.api.auth, jar, self.session_ttl)?;
        (!self.sign_outs.signed_out(&session).await).then_some(session)
    }

    /// Ends `session` for good: until it would have expired, its cookie is refused. False
    /// when that could not be recorded.
    #[must_use]
    pub async fn sign_out(&self, session: &session::Session) -> bool {
        self.sign_outs.sign_out(session).await
    }

    /// Resolves when `session` ends: it expires, or it is signed out (on any instance; seen
    /// within [`SIGN_OUT_CHECK`]). What holds a session open, a live stream, ends then.
    pub fn session_ended(&self, session: session::Session) -> crate::api::events::Revoked {
        let sign_outs = self.sign_outs.clone();
        Box::pin(async move {
            // Zero for a session already over.
            let left = Timestamp::now().elapsed_at(session.expires);
            let signed_out = async {
                loop {
                    tokio::time::sleep(SIGN_OUT_CHECK).await;
                    if sign_outs.signed_out(&session).await {
                        return;
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep(left) => {}
                () = signed_out => {}
            }
        })
    }
}

/// How often an open live stream checks that its session was not signed out: one small read
/// per stream each time.
const SIGN_OUT_CHECK: Duration = Duration::from_secs(2);

impl FromRef<UiState> for Key {
    fn from_ref(state: &UiState) -> Self {
        state.key.clone()
    }
}

/// The largest form the inbox takes: a token, a CSRF token, a reason of 2,000 characters of
/// any script (up to 4 bytes each in UTF-8, and 3 bytes of form encoding per byte).
const FORM_LIMIT: usize = 64 * 1024;

/// The API's request deadline, for the inbox's pages and forms too (the sign-in form is open
/// to anyone). A live stream's deadline ends with its answer's head; the stream runs on.
async fn within_deadline(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => pages::deadline_passed(&path, timeout),
    }
}

/// A session's requests count against the token it signed in with, as that token's API
/// requests do (`limits.max_requests_per_caller`, shared): a page held open or a script with
/// the cookie cannot take the instance from other reviewers. A live stream counts until its
/// head is sent; streams have their own caps.
async fn per_session(
    axum::extract::State(state): axum::extract::State<UiState>,
    jar: axum_extra::extract::cookie::SignedCookieJar,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // Only a live session counts against its token: an expired or signed-out cookie (a copy
    // left on a shared machine) must not use up, and so deny, the reviewer's own requests.
    let found = state.session(&jar).await;
    let caller = match &found {
        Some(_) => session::token_digest(&jar),
        None => None,
    };
    // Ending a session is never refused for want of places: whoever keeps the token's places
    // busy with a copy of the cookie would otherwise keep the session alive. Each that is not
    // refused as cross-site ends the session it comes with (a sign-in over a session ends that
    // one first), so a flood of them holds no place for long.
    let ends_session = request.method() == axum::http::Method::POST
        && matches!(request.uri().path(), "/ui/logout" | "/ui/login")
        && session::same_site(request.headers(), state.public_authority());
    let caller = caller.filter(|_| !ends_session);
    // What counts against the token's places keeps its connection's place at the cap
    // (`crate::server`): a live session's requests, not a sign-in or sign-out (exempt from
    // the token's places, a copy of a cookie could otherwise hold any number of connections).
    let claim = caller
        .and_then(|_| request.extensions().get::<crate::server::ArrivedOn>())
        .map(crate::server::ArrivedOn::claim);
    // Handed to the handler: each look-up is a Redis read (whether it was signed out).
    request.extensions_mut().insert(Checked(found));
    let slot = match caller
        .map(|caller| state.api.caller_slots.try_acquire(caller, false))
        .transpose()
    {
        Ok(slot) => slot,
        Err(refused) => return pages::api_refusal(refused),
    };
    let response = next.run(request).await;
    drop(slot);
    // A live stream holds its connection as long as it lasts; a page only until it is built.
    match claim {
        Some(claim) if crate::api::is_event_stream(&response) => {
            response.map(|body| crate::server::holding(body, claim))
        }
        _ => response,
    }
}

/// The session [`per_session`] found for this request.
#[derive(Clone)]
struct Checked(Option<session::Session>);

/// The request's session, if it has a live one: the one [`per_session`] looked up, not a
/// second look-up.
pub struct Current(pub Option<session::Session>);

impl axum::extract::FromRequestParts<UiState> for Current {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &UiState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(Checked(found)) = parts.extensions.get::<Checked>() {
            return Ok(Self(found.clone()));
        }
        let jar = axum_extra::extract::cookie::SignedCookieJar::from_headers(
            &parts.headers,
            state.key.clone(),
        );
        Ok(Self(state.session(&jar).await))
    }
}

/// The inbox's routes, under `/ui`.
pub fn router(state: UiState) -> Router {
    let deadline = state.api.request_timeout;
    let security_headers = tower::ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        // Not `no-referrer`: under it browsers send `Origin: null` with form posts, which the
        // cross-site check must refuse.
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    Router::new()
        .route("/ui", get(pages::home))
        .route("/ui/", get(pages::home))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/approvals", get(pages::inbox))
        .route("/ui/approvals/{id}", get(pages::detail))
        .route("/ui/approvals/{id}/decision", post(pages::decide))
        .route("/ui/events", get(pages::events))
        .route("/ui/assets/inbox.css", get(pages::stylesheet))
        .route("/ui/assets/inbox.js", get(pages::script))
        // Else the API's fallback answered: JSON, without the inbox's headers (CSP, no-store).
        .route("/ui/{*rest}", axum::routing::any(pages::no_page))
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            deadline,
            within_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            per_session,
        ))
        .layer(security_headers)
        .layer(axum::middleware::map_request(host_from_authority))
        .with_state(state)
}

/// An HTTP/2 request names its host in `:authority`, which hyper puts in the URI, not in a
/// `Host` header: the cross-site check compares `Origin` with `Host`, so without this every
/// sign-in and decision relayed over h2c (by a proxy, or a client speaking it) was refused.
async fn host_from_authority(mut request: axum::extract::Request) -> axum::extract::Request {
    if !request.headers().contains_key(header::HOST) {
        let authority = request.uri().authority().map(|a| a.as_str().to_owned());
        if let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            request.headers_mut().insert(header::HOST, value);
        }
    }
    request
}
