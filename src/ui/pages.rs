//! The inbox's pages and forms. Each handler reads the session, calls one use case and
//! renders a template; a form answers with a redirect (post/redirect/get), so reloading a page
//! never posts a decision twice.

use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::cookie::SignedCookieJar;
use axum_extra::extract::WithRejection;
use serde::Deserialize;

use approvals_core::{Approval, ApprovalId, Status, TenantId, Timestamp, Verdict};

use super::session::{self, Session};
use super::view::{pretty, Row};
use super::{Current, UiState};
use crate::api::ApiError;
use crate::app::{AppError, ListQuery};

/// The longest token, tenant, agent filter or cursor a form or query may carry.
const MAX_FIELD: usize = 4_096;

/// What every page's header shows of the session.
struct Chrome {
    subject: String,
    tenant: String,
    csrf: String,
    /// This server's time at rendering, in milliseconds since the epoch: the page's clock
    /// counts down from it, not from the browser's (a laptop a few minutes fast showed
    /// "expired" for approvals a reviewer could still decide).
    now_ms: i64,
}

impl Chrome {
    fn of(session: &Session) -> Self {
        Self {
            subject: session.principal.subject.clone(),
            tenant: session.tenant.to_string(),
            csrf: session.csrf.clone(),
            now_ms: Timestamp::now().as_millis(),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    error: Option<String>,
    /// Why the reviewer is asked to sign in again, when it is not the first time.
    notice: Option<&'static str>,
    /// The inbox page to go to once signed in (see [`return_path`]).
    next: String,
    /// The tenant that page's link names, offered in the tenant field (platform admins).
    tenant: String,
    /// The reason a decision form sent after the session ended carried, given back to copy.
    reason: Option<String>,
}

impl LoginPage {
    fn new(next: &str) -> Self {
        let next = return_path(next).unwrap_or_default();
        let tenant = next
            .split_once('?')
            .into_iter()
            .flat_map(|(_, query)| form_urlencoded::parse(query.as_bytes()))
            .find(|(name, _)| name == "tenant")
            .and_then(|(_, tenant)| TenantId::parse(tenant.into_owned()).ok())
            .map(|tenant| tenant.to_string())
            .unwrap_or_default();
        Self {
            error: None,
            notice: None,
            next: next.to_owned(),
            tenant,
            reason: None,
        }
    }
}

/// Why a sign-in page asks again after a decision form came without a session.
const DECISION_NOT_SENT: &str = "Your session had ended, so your decision was not sent: nothing \
     was decided. Sign in, then decide again.";

#[derive(Template)]
#[template(path = "ui/inbox.html")]
struct InboxPage {
    chrome: Chrome,
    heading: String,
    /// The window's title: with the pending count first, so that a tab in the background
    /// says when something new waits.
    title: String,
    /// (value, label, selected)
    statuses: Vec<(&'static str, &'static str, bool)>,
    status: &'static str,
    agent: String,
    /// The longest agent id a submit takes (`limits.max_string_chars`): the filter takes it too.
    agent_max: usize,
    rows: Vec<Row>,
    next_href: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/detail.html")]
struct DetailPage {
    chrome: Chrome,
    row: Row,
    pending: bool,
    /// The reviewer submitted it: the form is not offered (self-approval is refused).
    own: bool,
    policy_version: String,
    action: String,
    context: String,
    digest: String,
    notice: Option<Notice>,
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage {
    chrome: Option<Chrome>,
    title: String,
    detail: String,
    /// The approval a failed decision was for: the reviewer goes back to it, not to the
    /// inbox's first page.
    approval: Option<String>,
    /// The reason the reviewer typed into a decision that failed, shown to copy: the form is
    /// gone, and with it what they wrote.
    reason: Option<String>,
    /// Where a sign-out offered on this page leads back to once signed in again (a link to
    /// another tenant's approval), with the tenant's name for the button.
    sign_out_to: Option<(String, String)>,
}

/// A sentence above the record after a decision, and how it looks.
struct Notice {
    /// `success`, `warning` or `error`.
    class: &'static str,
    text: String,
}

fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "an inbox template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

fn error_page(session: Option<&Session>, error: impl Into<ApiError>) -> Response {
    let error = error.into();
    let problem = error.to_problem();
    let page = ErrorPage {
        chrome: session.map(Chrome::of),
        title: problem.title.to_owned(),
        detail: problem.detail,
        approval: None,
        reason: None,
        sign_out_to: None,
    };
    (error.status(), render(&page)).into_response()
}

/// A decision the service failed to carry out (the store down or slow, or the request's
/// deadline): the store may have taken it before the failure, so the reviewer is told to look,
/// and where.
fn decision_failed(
    chrome: Option<Chrome>,
    id: &ApprovalId,
    error: ApiError,
    reason: Option<String>,
) -> Response {
    let problem = error.to_problem();
    let page = ErrorPage {
        chrome,
        title: problem.title.to_owned(),
        detail: format!("{} {MAYBE_DECIDED}", problem.detail),
        approval: Some(id.to_string()),
        reason,
        sign_out_to: None,
    };
    (error.status(), render(&page)).into_response()
}

const MAYBE_DECIDED: &str = "Your decision may or may not have been recorded: open the \
    approval to see where it stands before deciding again.";

/// A form refused unread; `approval` the page the reviewer returns to, `reason` what they
/// wrote there, shown to copy.
fn refused(detail: &str, approval: Option<String>, reason: Option<String>) -> Response {
    let page = ErrorPage {
        chrome: None,
        title: "Refused".into(),
        detail: detail.into(),
        approval,
        reason,
        sign_out_to: None,
    };
    (StatusCode::FORBIDDEN, render(&page)).into_response()
}

/// A query string or form the inbox's own pages never send (a field twice, one missing): a
/// page saying so, as every other inbox refusal is, not the framework's plain-text line.
/// Nothing was decided.
pub struct Malformed(Response);

impl Malformed {
    fn page(status: StatusCode, detail: String) -> Self {
        let page = ErrorPage {
            chrome: None,
            title: "Not a request this inbox sends".into(),
            detail: format!("{detail}. Nothing was changed; go back to the inbox and try again."),
            approval: None,
            reason: None,
            sign_out_to: None,
        };
        Self((status, render(&page)).into_response())
    }
}

impl From<QueryRejection> for Malformed {
    fn from(rejection: QueryRejection) -> Self {
        Self::page(rejection.status(), rejection.body_text())
    }
}

impl From<FormRejection> for Malformed {
    fn from(rejection: FormRejection) -> Self {
        Self::page(rejection.status(), rejection.body_text())
    }
}

impl IntoResponse for Malformed {
    fn into_response(self) -> Response {
        self.0
    }
}

/// The request deadline passed: for a decision, as [`decision_failed`] says (the handler was
/// dropped, perhaps after the store took the decision).
pub fn deadline_passed(path: &str, timeout: std::time::Duration) -> Response {
    let error = ApiError::RequestTimeout(timeout);
    let Some(id) = path
        .strip_prefix("/ui/approvals/")
        .and_then(|rest| rest.strip_suffix("/decision"))
        .and_then(|id| ApprovalId::parse(id).ok())
    else {
        return api_refusal(error);
    };
    decision_failed(None, &id, error, None)
}

/// An address under `/ui` that is no page of the inbox (a mistyped or cut link).
pub async fn no_page() -> Response {
    let page = ErrorPage {
        chrome: None,
        title: "No such page".into(),
        detail: "This address is not a page of the inbox.".into(),
        approval: None,
        reason: None,
        sign_out_to: None,
    };
    (StatusCode::NOT_FOUND, render(&page)).into_response()
}

/// A refusal by the API's own guards (too many requests in flight) as a page the browser
/// shows, not a problem document: the reviewer reads it.
pub fn api_refusal(error: ApiError) -> Response {
    let problem = error.to_problem();
    let page = ErrorPage {
        chrome: None,
        title: problem.title.to_owned(),
        detail: problem.detail,
        approval: None,
        reason: None,
        sign_out_to: None,
    };
    let status = error.status();
    let mut response = (status, render(&page)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The longest page address a sign-in carries back to.
const MAX_RETURN_PATH: usize = 2_048;

/// `next` if it is an inbox page of ours to return to after signing in: a path under
/// `/ui/approvals`, never another site (`//host`, `/\host`) nor the sign-in page itself.
fn return_path(next: &str) -> Option<&str> {
    let rest = next.strip_prefix("/ui/approvals")?;
    let ours = rest.is_empty() || rest.starts_with(['/', '?']);
    // No control character either: a `Location` cannot carry one (a 500 page instead).
    let plain = !next.contains(|c: char| c == '\\' || c.is_ascii_control()) && !next.contains("//");
    (ours && plain && next.len() <= MAX_RETURN_PATH).then_some(next)
}

/// Where a page sends a browser without a valid session: to sign in, then back to `page`
/// (the approval a notification linked to, not the top of the inbox).
fn to_sign_in(page: &OriginalUri) -> Response {
    let page = page
        .path_and_query()
        .map_or("/ui/approvals", |p| p.as_str());
    Redirect::to(&sign_in_href(page, None)).into_response()
}

fn sign_in_href(next: &str, why: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(next) = return_path(next) {
        query.append_pair("next", next);
    }
    if let Some(why) = why {
        query.append_pair("why", why);
    }
    match query.finish() {
        query if query.is_empty() => "/ui/login".to_owned(),
        query => format!("/ui/login?{query}"),
    }
}

pub async fn home(Current(current): Current) -> Redirect {
    match current {
        Some(_) => Redirect::to("/ui/approvals"),
        None => Redirect::to("/ui/login"),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
    /// `decision_not_sent`: a decision form came after the session had ended.
    #[serde(default)]
    why: String,
}

pub async fn login_form(
    Current(current): Current,
    WithRejection(Query(query), _): WithRejection<Query<LoginQuery>, Malformed>,
) -> Response {
    let next = return_path(&query.next).unwrap_or("/ui/approvals");
    match current {
        Some(_) => Redirect::to(next).into_response(),
        None => render(&LoginPage {
            notice: (query.why == "decision_not_sent").then_some(DECISION_NOT_SENT),
            ..LoginPage::new(next)
        }),
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    tenant: String,
    /// The page to return to (see [`return_path`]).
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(state): State<UiState>,
    Current(current): Current,
    jar: SignedCookieJar,
    headers: HeaderMap,
    WithRejection(Form(form), _): WithRejection<Form<LoginForm>, Malformed>,
) -> Response {
    if !session::same_site(&headers, state.public_authority()) {
        return refused("This sign-in form was sent from another site.", None, None);
    }
    if form.token.len() > MAX_FIELD || form.tenant.len() > MAX_FIELD {
        metrics::counter!("approvals_auth_failures_total", "surface" => "inbox").increment(1);
        let page = LoginPage {
            error: Some("That token is not known here. Check it and try again.".into()),
            ..LoginPage::new(&form.next)
        };
        return (StatusCode::UNAUTHORIZED, render(&page)).into_response();
    }
    match session::authenticate(&state.api.auth, &form.token, Some(&form.tenant)) {
        Ok((principal, tenant)) => {
            tracing::info!(subject = %principal.subject, %tenant, "inbox sign-in");
            // Someone signing in over another's session (a shared machine): the earlier one
            // ends for good, not only in this browser. Best effort, as its own sign-out is.
            if let Some(earlier) = current {
                let _recorded = state.sign_out(&earlier).await;
            }
            let jar = session::start(
                jar,
                &form.token,
                &tenant,
                state.session_ttl,
                state.secure_cookies || session::forwarded_https(&headers),
            );
            let next = return_path(&form.next).unwrap_or("/ui/approvals");
            (jar, Redirect::to(next)).into_response()
        }
        Err(refusal) => {
            metrics::counter!("approvals_auth_failures_total", "surface" => "inbox").increment(1);
            let page = LoginPage {
                error: Some(refusal.sentence()),
                ..LoginPage::new(&form.next)
            };
            (StatusCode::UNAUTHORIZED, render(&page)).into_response()
        }
    }
}

pub async fn logout(
    State(state): State<UiState>,
    Current(current): Current,
    jar: SignedCookieJar,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Where to sign in for next (a form's `next`; the header's form sends none): only an inbox
    // page, as for every `next`.
    let next = form_urlencoded::parse(&body)
        .find(|(key, _)| key == "next")
        .map(|(_, next)| next.into_owned());
    if let Some(session) = current {
        // No CSRF token: a sign-in in another tab renews it, and every open tab's "Sign out"
        // was then refused, leaving a shared machine signed in. Another site still cannot
        // sign a reviewer out (`same_site`).
        if !session::same_site(&headers, state.public_authority()) {
            return refused(
                "This sign-out form did not come from your inbox.",
                None,
                None,
            );
        }
        // Also refused if a copy of the cookie comes back.
        if !state.sign_out(&session).await {
            // This browser forgets the cookie, but a copy of it (another tab's, a stolen one)
            // would still be let in: the reviewer must know, not read "signed out".
            let page = LoginPage {
                error: Some(format!(
                    "Your sign-out could not be recorded (the session store did not answer). \
                     This browser is signed out, but a copy of its session cookie stays valid \
                     until {}. Sign in and out again, or have the token revoked.",
                    session.expires
                )),
                ..LoginPage::new("")
            };
            let page = (StatusCode::SERVICE_UNAVAILABLE, render(&page));
            return (session::end(jar), page).into_response();
        }
    }
    let to = next.map_or_else(|| "/ui/login".to_owned(), |next| sign_in_href(&next, None));
    (session::end(jar), Redirect::to(&to)).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct InboxQuery {
    status: Option<String>,
    agent: Option<String>,
    cursor: Option<String>,
}

pub async fn inbox(
    State(state): State<UiState>,
    Current(current): Current,
    page: OriginalUri,
    WithRejection(Query(query), _): WithRejection<Query<InboxQuery>, Malformed>,
) -> Response {
    let Some(session) = current else {
        return to_sign_in(&page);
    };
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => Status::Pending,
        Some(text) => match Status::parse(text) {
            Some(status) => status,
            None => {
                let error = AppError::InvalidOption(format!(
                    "status: must be pending, accepted, rejected or expired, got {text:?}"
                ));
                return error_page(Some(&session), error);
            }
        },
    };
    let agent_max = state.api.app.input_limits().max_string_chars;
    let agent = query
        .agent
        .unwrap_or_default()
        .trim()
        .chars()
        .take(agent_max)
        .collect::<String>();
    let cursor = query
        .cursor
        .filter(|c| !c.is_empty() && c.len() <= MAX_FIELD);
    let (approvals, next_cursor) = match rows_for(&state, &session, status, &agent, cursor).await {
        Ok(found) => found,
        Err(error) => return error_page(Some(&session), error),
    };
    let now = Timestamp::now();
    let rows: Vec<Row> = approvals
        .into_iter()
        .map(|a| Row::of(&a.as_of(now), now))
        .collect();
    let next_href = next_cursor.map(|cursor| {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("status", status.as_str())
            .append_pair("agent", &agent)
            .append_pair("cursor", &cursor)
            .finish();
        format!("/ui/approvals?{query}")
    });
    let heading = match status {
        Status::Pending => "Waiting for a decision".to_owned(),
        Status::Accepted => "Accepted".to_owned(),
        Status::Rejected => "Rejected".to_owned(),
        Status::Expired => "Expired (automatically rejected)".to_owned(),
    };
    let title = match (status, rows.len(), next_href.is_some()) {
        (Status::Pending, shown, true) => format!("({shown}+) {heading}"),
        (Status::Pending, waiting, false) if waiting > 0 => format!("({waiting}) {heading}"),
        _ => heading.clone(),
    };
    let statuses = [
        ("pending", "Pending"),
        ("accepted", "Accepted"),
        ("rejected", "Rejected"),
        ("expired", "Expired"),
    ]
    .into_iter()
    .map(|(value, label)| (value, label, value == status.as_str()))
    .collect();
    render(&InboxPage {
        chrome: Chrome::of(&session),
        heading,
        title,
        statuses,
        status: status.as_str(),
        agent,
        agent_max,
        rows,
        next_href,
    })
}

/// Rows on one inbox page.
const PAGE_ROWS: usize = 100;
/// With an agent filter, the list is read a page of rows first, then this many rows a call
/// (the API's largest page)...
const FILTER_PAGE_ROWS: usize = 500;
/// ...at most this many more calls for one inbox page: 2,100 rows, so a rare agent cannot
/// make one page read the whole tenant. Few large calls, not many small ones: on Temporal
/// every call walks all the tenant's matching workflows (20 calls of 100 were 20 such walks).
/// The first is small, so a frequent agent's page holds 100 rows, not 500.
const FILTER_PAGES: usize = 4;

/// One inbox page of `status`: the list's next page (the ones after it while it has no rows),
/// or with an agent filter as many of the list's pages as it takes to fill one (after the first, at most [`FILTER_PAGES`] of
/// [`FILTER_PAGE_ROWS`]), and where the next page starts.
async fn rows_for(
    state: &UiState,
    session: &Session,
    status: Status,
    agent: &str,
    mut cursor: Option<String>,
) -> Result<(Vec<Approval>, Option<String>), AppError> {
    let mut rows = Vec::new();
    for call in 0..=FILTER_PAGES {
        let list = ListQuery {
            status: Some(status),
            // Unfiltered, every call is a page's worth: one inbox page never shows more.
            limit: Some(if call == 0 || agent.is_empty() {
                PAGE_ROWS
            } else {
                FILTER_PAGE_ROWS
            }),
            cursor: cursor.take(),
        };
        let page = state
            .api
            .app
            .list(&session.principal, &session.tenant, list)
            .await?;
        // Whole pages only, so that the next page starts where this one ended.
        rows.extend(
            page.items
                .into_iter()
                .filter(|a| agent.is_empty() || a.agent_id == agent),
        );
        cursor = page.next_cursor;
        // Unfiltered, a page can be empty and still have a next one (its entries' deadlines
        // passed, their expiry not recorded yet): read on, as a filter does, rather than say
        // "Nothing pending" over approvals that wait further down.
        if rows.len() >= PAGE_ROWS || cursor.is_none() || (agent.is_empty() && !rows.is_empty()) {
            break;
        }
    }
    Ok((rows, cursor))
}

#[derive(Debug, Default, Deserialize)]
pub struct DetailQuery {
    /// What the last decision form led to (set by [`decide`]'s redirect).
    outcome: Option<String>,
    /// The tenant a notification's link is for: ids are unique within a tenant only.
    tenant: Option<String>,
}

pub async fn detail(
    State(state): State<UiState>,
    Current(current): Current,
    page: OriginalUri,
    Path(id): Path<String>,
    WithRejection(Query(query), _): WithRejection<Query<DetailQuery>, Malformed>,
) -> Response {
    let Some(session) = current else {
        return to_sign_in(&page);
    };
    let id = match ApprovalId::parse(id) {
        Ok(id) => id,
        Err(e) => return error_page(Some(&session), AppError::InvalidIdentifier(e.to_string())),
    };
    if let Some(linked) = query.tenant.as_deref() {
        if linked != session.tenant.as_str() {
            return another_tenants(&session, &id, linked);
        }
    }
    let approval = match state
        .api
        .app
        .get(&session.principal, &session.tenant, &id)
        .await
    {
        Ok(approval) => approval,
        Err(error) => return error_page(Some(&session), error),
    };
    state
        .first_views
        .viewed(&approval, &session.principal.subject)
        .await;
    let now = Timestamp::now();
    let row = Row::of(&approval, now);
    let notice = query
        .outcome
        .as_deref()
        .and_then(|outcome| notice(outcome, &approval, &session.principal.subject, &row));
    render(&DetailPage {
        chrome: Chrome::of(&session),
        pending: approval.status == Status::Pending,
        own: approval.submitted_by == session.principal.subject,
        policy_version: approval.policy_version.clone(),
        action: pretty(&approval.action),
        context: pretty(&approval.context),
        digest: approval
            .action_digest
            .clone()
            .unwrap_or_else(|| approvals_core::action_digest(&approval.action)),
        row,
        notice,
    })
}

/// A link to an approval of another tenant than the session's: that tenant's approval of the
/// same id is not shown (nor offered for a decision) in its place.
fn another_tenants(session: &Session, id: &ApprovalId, linked: &str) -> Response {
    let (detail, sign_out_to) = match TenantId::parse(linked) {
        Ok(linked) => (
            format!(
                "This link is to approval {id} of tenant {linked}, and this browser is signed \
                 in to tenant {}. Sign out, then sign in to {linked} to see it.",
                session.tenant
            ),
            // The sign-out leads back to the link (the sign-in page offers its tenant): a
            // bare sign-out lost it, and the reviewer had to find the approval again.
            Some((
                format!("/ui/approvals/{id}?tenant={linked}"),
                linked.to_string(),
            )),
        ),
        Err(_) => (
            format!("This link names no tenant this inbox knows; approval {id} is not shown."),
            None,
        ),
    };
    let page = ErrorPage {
        chrome: Some(Chrome::of(session)),
        title: "Another tenant's approval".into(),
        detail,
        approval: None,
        reason: None,
        sign_out_to,
    };
    // An open page of the link's tenant that fetches itself again gets this answer once the
    // browser signed in to another tenant: the header tells its script so (it says the page
    // is no longer live, as for any page whose session changed).
    let elsewhere = [(OTHER_TENANTS_SESSION, HeaderValue::from_static("1"))];
    (StatusCode::CONFLICT, elsewhere, render(&page)).into_response()
}

/// The header of [`another_tenants`]' answer.
const OTHER_TENANTS_SESSION: &str = "x-inbox-other-tenant";

/// The sentence for a decision's outcome, from the record as it is now. The outcome comes
/// from the address, which anyone can write into a link: it is said only when the record
/// agrees (a link saying "someone decided first" on a pending approval left it to expire).
fn notice(outcome: &str, approval: &Approval, subject: &str, row: &Row) -> Option<Notice> {
    let decided = || format!("{} by {} at {}", row.status, row.decided_by, row.decided_at);
    let by_reviewer = matches!(approval.status, Status::Accepted | Status::Rejected);
    let by_this_reviewer = by_reviewer && approval.decided_by.as_deref() == Some(subject);
    let pending = approval.status == Status::Pending;
    let (class, text) = match outcome {
        "decided" if by_this_reviewer => ("success", format!("Done: {}.", decided())),
        "already_yours" if by_this_reviewer => (
            "success",
            format!("You had already decided this: {}.", decided()),
        ),
        "lost_race" if by_reviewer && !by_this_reviewer => (
            "warning",
            format!(
                "Someone decided first: this approval was already {}. Your decision was not recorded.",
                decided()
            ),
        ),
        "expired" if approval.status == Status::Expired => (
            "warning",
            format!(
                "Too late: this approval expired at {} (an automatic rejection). Your decision was not recorded.",
                row.decided_at
            ),
        ),
        "self_approval" if pending && approval.submitted_by == subject => (
            "error",
            "You submitted this request yourself, so you cannot decide it: another reviewer must."
                .to_owned(),
        ),
        "changed" if pending => (
            "error",
            "The action changed since this page was loaded; nothing was decided. Read it again."
                .to_owned(),
        ),
        // Refused before the record was looked at: true in any state, and said unless this
        // reviewer decided it (then the page says so, and a forged link must not confuse).
        "reason_too_long" if !by_this_reviewer => (
            "error",
            format!(
                "The reason is too long (at most {} characters); nothing was decided.",
                crate::app::MAX_REASON_CHARS
            ),
        ),
        _ => return None,
    };
    Some(Notice { class, text })
}

#[derive(Debug, Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    verdict: String,
    #[serde(default)]
    reason: String,
    /// The digest of the action the reviewer was shown: the decision applies to that action
    /// only.
    #[serde(default)]
    digest: String,
    /// The tenant whose approval the form was shown for. Ids are the agents' own, so two
    /// tenants can have one each: a form sent after a sign-in to another tenant (refused) sent
    /// the reviewer back to `/ui/approvals/{id}`, which opened the other tenant's approval of
    /// that id, decision form and all.
    #[serde(default)]
    tenant: String,
}

impl DecisionForm {
    /// The approval's page this form came from, with its tenant when the form names a valid
    /// one: opened in a session of another tenant, it says so rather than showing that
    /// tenant's approval of the same id.
    fn page_of(&self, id: &ApprovalId) -> String {
        match TenantId::parse(self.tenant.clone()) {
            Ok(tenant) => format!("{id}?tenant={tenant}"),
            Err(_) => id.to_string(),
        }
    }
}

pub async fn decide(
    State(state): State<UiState>,
    Current(current): Current,
    headers: HeaderMap,
    Path(id): Path<String>,
    WithRejection(Form(form), _): WithRejection<Form<DecisionForm>, Malformed>,
) -> Response {
    let Some(session) = current else {
        // The sign-in page, here: it says nothing was decided (a plain redirect there lost the
        // decision without a word), signing in returns to the approval, and the reason the
        // reviewer wrote is given back to copy (a redirect lost it).
        let page = ApprovalId::parse(id).map_or_else(
            |_| "/ui/approvals".to_owned(),
            |id| format!("/ui/approvals/{}", form.page_of(&id)),
        );
        // Only to a form from the inbox's own pages: another site's form (which never carries
        // the session, `SameSite=Lax`) would have its text shown under the inbox's own
        // notice, as the reviewer's words.
        let reason = session::same_site(&headers, state.public_authority())
            .then_some(form.reason)
            .filter(|r| !r.trim().is_empty());
        let page = LoginPage {
            notice: Some(DECISION_NOT_SENT),
            reason,
            ..LoginPage::new(&page)
        };
        let mut response = (StatusCode::UNAUTHORIZED, render(&page)).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    let for_another_tenant = !form.tenant.is_empty() && form.tenant != session.tenant.as_str();
    if for_another_tenant
        || !session::form_allowed(&session, &form.csrf, &headers, state.public_authority())
    {
        tracing::warn!(subject = %session.principal.subject, tenant = %session.tenant,
            "inbox decision refused: missing or wrong CSRF token, or sent from another site");
        return refused(
            "This decision's form is older than your session (you signed in again, perhaps in \
             another tab), or it did not come from your inbox. Nothing was decided: open the \
             approval again and decide there.",
            ApprovalId::parse(id).ok().map(|id| form.page_of(&id)),
            // A reason written at length (a tab left open while signing in elsewhere) is not
            // lost with the form.
            Some(form.reason).filter(|r| !r.trim().is_empty()),
        );
    }
    let id = match ApprovalId::parse(id) {
        Ok(id) => id,
        Err(e) => return error_page(Some(&session), AppError::InvalidIdentifier(e.to_string())),
    };
    let verdict = match form.verdict.as_str() {
        "accept" => Verdict::Accept,
        "reject" => Verdict::Reject,
        other => {
            let error = AppError::InvalidContent(format!(
                "verdict: must be accept or reject, got {other:?}"
            ));
            return error_page(Some(&session), error);
        }
    };
    // A browser sends a textarea's line breaks as CRLF: stored so, each was a hidden `\r` on
    // every page and to every client, and counted twice against the reason's limit.
    let reason =
        Some(form.reason.replace("\r\n", "\n").trim().to_owned()).filter(|r| !r.is_empty());
    let digest = Some(form.digest.as_str()).filter(|d| !d.is_empty());
    let result = state
        .api
        .app
        .decide(
            &session.principal,
            &session.tenant,
            &id,
            verdict,
            reason.clone(),
            digest,
        )
        .await;
    let outcome = match result {
        Ok(_) => "decided",
        // The same form sent twice (a double click, a browser's retry): the first one's.
        Err(AppError::AlreadyDecided(record))
            if record.decided_by.as_deref() == Some(session.principal.subject.as_str()) =>
        {
            "already_yours"
        }
        Err(AppError::AlreadyDecided(_)) => "lost_race",
        Err(AppError::Expired(_)) => "expired",
        Err(AppError::SelfApproval) => "self_approval",
        Err(AppError::ActionMismatch { .. }) => "changed",
        Err(AppError::InvalidContent(message)) if message.starts_with("reason:") => {
            "reason_too_long"
        }
        Err(error) => {
            let error = ApiError::from(error);
            return if error.status().is_server_error() {
                decision_failed(Some(Chrome::of(&session)), &id, error, reason)
            } else {
                error_page(Some(&session), error)
            };
        }
    };
    Redirect::to(&format!("/ui/approvals/{id}?outcome={outcome}")).into_response()
}

/// The session's tenant's live events, for the page's `EventSource` (which cannot send a
/// bearer token): the API's stream, with the session's principal, closed when the session
/// ends or is signed out (reconnecting then is refused).
pub async fn events(
    State(state): State<UiState>,
    Current(current): Current,
    headers: HeaderMap,
) -> Response {
    let Some(session) = current else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match crate::api::events::stream(
        state.api.clone(),
        &session.principal,
        &session.tenant,
        last_event_id,
        Some(state.session_ended(session.clone())),
    )
    .await
    {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

pub async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("assets/inbox.css"),
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("assets/inbox.js"),
    )
}
