//! The HTTP API: routes, shared state, and the layers around them. Handlers extract, call
//! the application layer (`crate::app`) and map its answer; they hold no rules of their own.

mod admission;
pub(crate) use admission::is_event_stream;
mod approvals;
pub(crate) mod events;
mod extract;
mod fairness;
mod ops;
mod policy;
mod problem;
mod webhooks;

pub(crate) use ops::metrics_router;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderName;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use fairness::CallerSlots;
pub use problem::{ApiError, Problem};

use crate::app::Approvals;
use crate::auth::Authenticator;

/// The longest `x-request-id` a caller may choose (a UUID is 36, a W3C trace id 32).
const MAX_REQUEST_ID: usize = 128;

/// A caller's `x-request-id` is kept (echoed and logged) only if it looks like an id: at most
/// [`MAX_REQUEST_ID`] characters of letters, digits and `._:/+=-`. Anything else (16 KiB of
/// text, spaces and quotes to forge log fields) is dropped, and one is made up in its place.
fn drop_unfit_request_id(mut request: Request) -> Request {
    let fits = |value: &axum::http::HeaderValue| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/+=-".contains(b))
    };
    let mut given = request.headers().get_all("x-request-id").iter();
    // None, or one that fits; two are as unfit as one that does not.
    let keep = match (given.next(), given.next()) {
        (None, _) => true,
        (Some(one), None) => fits(one),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// What every handler can reach: one reference count per clone (axum clones the state for
/// each extraction, several times per request).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Services {
    /// The use cases: every handler's one call.
    pub app: Arc<Approvals>,
    pub auth: Arc<Authenticator>,
    pub body_limit: usize,
    /// The largest policy bundle upload (`policy.max_bundle_bytes`).
    pub bundle_limit: usize,
    /// `/metrics` is served on `server.metrics_listen`, not here.
    pub metrics_elsewhere: bool,
    /// The longest a request but a long-poll may take.
    pub request_timeout: Duration,
    /// Log one INFO line per answered request (`server.access_log`).
    pub access_log: bool,
    /// Webhooks: `None` when no Redis is among the engines (`501 webhooks_disabled`).
    pub notifier: Option<Arc<crate::notify::Notifier>>,
    /// What each caller has in flight (`limits.max_*_per_caller`).
    pub caller_slots: Arc<fairness::CallerSlots>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "approvals", description = "Policy-gated human approvals for AI agents (api-v1)."),
    modifiers(&BearerAuth),
    components(schemas(Problem))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The operations of one path, for the document's modifiers.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// Every error is sent as `application/problem+json` (RFC 9457): the document says so, in one
/// place rather than on each of the routes' error responses.
struct ProblemJson;

impl Modify for ProblemJson {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                for (status, response) in operation.responses.responses.iter_mut() {
                    let error = status.starts_with('4') || status.starts_with('5');
                    if let (true, RefOr::T(response)) = (error, response) {
                        if let Some(content) = response.content.shift_remove("application/json") {
                            response
                                .content
                                .insert("application/problem+json".into(), content);
                        }
                    }
                }
            }
        }
    }
}

/// The input limits this deployment enforces (`[limits]`, configurable), in the schemas a
/// submit is checked against: the document is built from the running settings, so a changed
/// limit cannot drift from what clients read.
struct DocumentedInputLimits<'a>(&'a crate::app::InputLimits);

impl Modify for DocumentedInputLimits<'_> {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::Schema;
        use utoipa::openapi::RefOr;
        let limits = self.0;
        let said = format!(
            "Bounded, and refused with `422 input_too_large` beyond: at most {} bytes as JSON, \
             strings (keys included) of at most {} characters, lists and objects of at most {} \
             items, nested at most {} deep.",
            limits.max_object_bytes, limits.max_string_chars, limits.max_items, limits.max_depth
        );
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        if let Some(RefOr::T(Schema::Object(action))) = components.schemas.get_mut("Action") {
            action.max_properties = Some(limits.max_items);
            let described = action.description.take().unwrap_or_default();
            action.description = Some(format!("{described} {said}").trim().to_owned());
        }
        if let Some(RefOr::T(Schema::Object(submit))) = components.schemas.get_mut("SubmitBody") {
            if let Some(RefOr::T(Schema::Object(agent))) = submit.properties.get_mut("agent_id") {
                agent.max_length = Some(limits.max_string_chars);
            }
            if let Some(RefOr::T(Schema::Object(context))) = submit.properties.get_mut("context") {
                context.max_properties = Some(limits.max_items);
                let described = context.description.take().unwrap_or_default();
                context.description = Some(format!("{described} {said}").trim().to_owned());
            }
        }
    }
}

/// Every `/v1` operation can answer `429 too_many_requests` (src/api/fairness.rs), with
/// `Retry-After`, all but the long-poll `408 request_timeout`, and all `500 internal` (a stored
/// record this service cannot read, or a fault of its own): the document says so once here
/// rather than on each route.
struct CallerLimits;

impl Modify for CallerLimits {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        const WHY: &str = "too_many_requests: this token already has \
            limits.max_requests_per_caller requests (or limits.max_long_polls_per_caller \
            long-polls) in flight; Retry-After says when to try again";
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in operations(item) {
                let responses = &mut operation.responses.responses;
                match responses.get_mut("429") {
                    Some(RefOr::T(response)) => {
                        response.description = format!("{}; or {WHY}", response.description);
                        response
                            .headers
                            .insert("Retry-After".into(), retry_after_of_some());
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        let problem = ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build();
                        let response = ResponseBuilder::new()
                            .description(WHY)
                            .content("application/json", problem)
                            .header("Retry-After", retry_after())
                            .build();
                        responses.insert("429".into(), RefOr::T(response));
                    }
                }
                if !responses.contains_key("500") {
                    let problem = ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build();
                    let response = ResponseBuilder::new()
                        .description(
                            "internal: a stored record this service cannot read (it is named in \
                             the service's log), or a fault of the service; retrying soon will \
                             not help",
                        )
                        .content("application/json", problem)
                        .build();
                    responses.insert("500".into(), RefOr::T(response));
                }
                // The request deadline (src/api/admission.rs); a long-poll has its own bound.
                if !path.ends_with("/decision") {
                    let problem = ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build();
                    let response = ResponseBuilder::new()
                        .description("request_timeout: not answered within server.request_timeout")
                        .content("application/json", problem)
                        .build();
                    responses.insert("408".into(), RefOr::T(response));
                }
            }
        }
    }
}

/// `Retry-After` on a 429 that also has codes of its own: only some of them send it.
fn retry_after_of_some() -> utoipa::openapi::Header {
    utoipa::openapi::HeaderBuilder::new()
        .schema(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::Integer),
        )
        .description(Some(
            "seconds to wait before trying again; sent with too_many_requests and \
             upload_in_progress only (too_many_pending waits for reviewers, too_many_streams \
             for a stream to close)",
        ))
        .build()
}

fn retry_after() -> utoipa::openapi::Header {
    utoipa::openapi::HeaderBuilder::new()
        .schema(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::Integer),
        )
        .description(Some("seconds to wait before trying again"))
        .build()
}

/// The whole application as a router (the API and, when `ui.enabled`, the inbox); `startup`
/// serves it, tests may too.
pub fn router(state: AppState, ui: &crate::config::UiSettings) -> Router {
    let inbox = ui
        .enabled
        .then(|| crate::ui::router(crate::ui::UiState::new(state.clone(), ui)));
    let (routes, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(approvals::submit, approvals::list))
        .routes(routes!(approvals::get_approval))
        .routes(routes!(approvals::wait_decision))
        .routes(routes!(approvals::accept))
        .routes(routes!(approvals::reject))
        .routes(routes!(approvals::audit))
        .routes(routes!(events::events))
        .routes(routes!(webhooks::add_webhook, webhooks::list_webhooks))
        .routes(routes!(webhooks::remove_webhook))
        .routes(routes!(webhooks::redeliver_dead_letters))
        .routes(routes!(policy::read_policy))
        .routes(routes!(policy::upload_bundle, policy::list_bundles))
        .routes(routes!(policy::read_bundle))
        .routes(routes!(policy::activate))
        .routes(routes!(policy::rollback))
        .routes(routes!(policy::set_candidate, policy::clear_candidate))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .split_for_parts();
    // After the routes are in: the modifiers rewrite their responses.
    let mut openapi = openapi;
    CallerLimits.modify(&mut openapi);
    DocumentedInputLimits(state.app.input_limits()).modify(&mut openapi);
    ProblemJson.modify(&mut openapi);
    let request_id = HeaderName::from_static("x-request-id");
    let access_log = state.access_log;
    routes
        .route("/openapi.json", ops::openapi(&openapi))
        .fallback(ops::no_route)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            admission::Admission {
                slots: state.caller_slots.clone(),
                request_timeout: state.request_timeout,
                auth: state.auth.clone(),
            },
            admission::admit,
        ))
        .with_state(state)
        // The API counts its requests in `admission`; the inbox's are counted here.
        .merge(
            inbox
                .map(|ui| ui.layer(axum::middleware::from_fn(crate::metrics::track_http)))
                .unwrap_or_default(),
        )
        // One `layer` call for the whole stack: `Router::layer` boxes each layer's future per
        // request, which a waiting long-poll holds for its whole wait.
        .layer(
            ServiceBuilder::new()
                // tower's, not axum's middleware: no boxed future per request.
                .map_request(drop_unfit_request_id)
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|request: &Request| {
                            let route = request
                                .extensions()
                                .get::<MatchedPath>()
                                .map_or("-", MatchedPath::as_str);
                            let id = request
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!("request", method = %request.method(), route, request_id = id,
                                subject = tracing::field::Empty, tenant = tracing::field::Empty,
                                approval_id = tracing::field::Empty)
                        })
                        // Off by default: a line per request costs a formatted write to stderr (about
                        // 2% of the CPU under load), and the metrics already count every answer.
                        // Server errors are logged either way (the layer's default `on_failure`).
                        .on_response(move |response: &axum::response::Response, latency: Duration, _span: &tracing::Span| {
                            if access_log {
                                tracing::info!(status = response.status().as_u16(), latency_ms = latency.as_millis() as u64, "answered");
                            }
                        }),
                ),
        )
}
