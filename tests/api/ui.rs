//! The reviewers' inbox at `/ui/`, as a browser without JavaScript uses it: sign-in, the
//! session cookie, the pending list, a decision through the form, and each way a decision can
//! be refused (no CSRF token, another site, self-approval, a lost race, an expiry). The live
//! updates are tested in a real browser (tests/browser.rs).

use std::time::Duration;

use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::support::{Harness, TestApp};

contract_tests!(
    a_reviewer_signs_in_sees_what_waits_and_accepts_it,
    forged_decisions_are_refused_and_decide_nothing,
    refusals_and_races_are_explained_in_words,
    sign_in_is_for_reviewers_and_sessions_end,
    filters_and_history_show_decided_approvals,
);

/// A cookie-keeping client that does not follow redirects (tests look at them).
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Self::at(&app.base)
    }

    fn at(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self {
            http,
            base: base.to_owned(),
        }
    }

    async fn get(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("get")
    }

    /// The page at `path`, answered 200, as text.
    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.expect("text")
    }

    /// The page at `path` once it contains `needle` (within 15 s).
    async fn page_until(&self, path: &str, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let page = self.page(path).await;
            if page.contains(needle) {
                return page;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} never showed {needle}:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Response {
        self.http
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .expect("post")
    }

    async fn sign_in(&self, token: &str) -> Response {
        self.post("/ui/login", &[("token", token)]).await
    }

    /// Signs in to `tenant` with the platform admin's token, and checks it worked.
    async fn sign_in_as_admin_to(&self, app: &TestApp, tenant: &str) {
        let token = &app.tokens.platform_admin;
        let response = self
            .post("/ui/login", &[("token", token), ("tenant", tenant)])
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
    }

    /// Signs in and checks it worked.
    async fn signed_in(app: &TestApp, token: &str) -> Self {
        let browser = Self::new(app);
        let response = browser.sign_in(token).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&response), "/ui/approvals");
        browser
    }

    /// Posts the decision form of approval `id` as the page shows it, with `verdict`.
    async fn decide(&self, id: &str, verdict: &str, reason: &str) -> Response {
        let page = self.page(&format!("/ui/approvals/{id}")).await;
        self.decide_on(id, &page, verdict, reason).await
    }

    /// Posts the decision form of approval `id` as `page` (loaded earlier) showed it.
    async fn decide_on(&self, id: &str, page: &str, verdict: &str, reason: &str) -> Response {
        let csrf = hidden(page, "csrf");
        let digest = hidden(page, "digest");
        let tenant = hidden(page, "tenant");
        self.post(
            &format!("/ui/approvals/{id}/decision"),
            &[
                ("csrf", &csrf),
                ("digest", &digest),
                ("tenant", &tenant),
                ("verdict", verdict),
                ("reason", reason),
            ],
        )
        .await
    }

    /// Where a decision's redirect leads, as text.
    async fn after(&self, response: Response) -> String {
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        self.page(&location(&response)).await
    }
}

fn location(response: &Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The value of the hidden input `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in:\n{html}"))
        + marker.len();
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn api_status(app: &TestApp, id: &str) -> Value {
    let record: Value = app
        .get(id, &app.tokens.reviewer)
        .await
        .json()
        .await
        .expect("json");
    record
}

async fn a_reviewer_signs_in_sees_what_waits_and_accepts_it(h: Harness) {
    let app = h.spawn().await;
    app.park("wire-1").await;

    let browser = Browser::new(&app);
    // Not signed in: every page leads to the sign-in form, which then leads back to it.
    let response = browser.get("/ui/approvals").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/ui/login?next=%2Fui%2Fapprovals");
    let login = browser.page("/ui/login").await;
    assert!(login.contains("<label for=\"token\">"), "{login}");

    let response = browser.sign_in(&app.tokens.reviewer).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(cookie.contains("Path=/ui"), "{cookie}");
    assert!(
        !cookie.contains(&app.tokens.reviewer),
        "the cookie holds no token"
    );

    let inbox = browser.get("/ui/approvals").await;
    let csp = inbox
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let inbox = inbox.text().await.expect("text");
    assert!(inbox.contains("href=\"/ui/approvals/wire-1\""), "{inbox}");
    assert!(inbox.contains("agent-1"), "the agent is shown: {inbox}");
    assert!(
        inbox.contains("{&#34;ticket&#34;:&#34;T-1&#34;}"),
        "the context is summarised: {inbox}"
    );
    assert!(inbox.contains("alice"), "who is signed in is shown");

    let detail = browser.page("/ui/approvals/wire-1").await;
    assert!(
        detail.contains("&#34;ticket&#34;: &#34;T-1&#34;"),
        "the context is shown: {detail}"
    );
    assert!(detail.contains("value=\"accept\""), "{detail}");
    // The deadline itself, not only the time left: "(until 2026-12-03 14:05 UTC)".
    let record = api_status(&app, "wire-1").await;
    let expires_at = record["expires_at"].as_str().unwrap();
    let until = format!(
        "(until <time datetime=\"{expires_at}\">{} {} UTC</time>)",
        &expires_at[..10],
        &expires_at[11..16]
    );
    assert!(detail.contains(&until), "{until} in {detail}");
    // The list's submission time is machine-readable (RFC 3339).
    let submitted_at = record["submitted_at"].as_str().unwrap();
    assert!(
        inbox.contains(&format!("<time datetime=\"{submitted_at}\"")),
        "{inbox}"
    );

    let done = browser
        .after(browser.decide("wire-1", "accept", "fine by me").await)
        .await;
    assert!(done.contains("Done: accepted by alice"), "{done}");
    assert!(!done.contains("value=\"accept\""), "no form once decided");
    let record = api_status(&app, "wire-1").await;
    assert_eq!(record["status"], "accepted");
    assert_eq!(record["decided_by"], "alice");
    assert_eq!(record["decision_reason"], "fine by me");

    // The pending list no longer shows it.
    let inbox = browser.page("/ui/approvals").await;
    assert!(!inbox.contains("/ui/approvals/wire-1\""), "{inbox}");
}

async fn forged_decisions_are_refused_and_decide_nothing(h: Harness) {
    let app = h.spawn().await;
    app.park("forged").await;
    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let path = "/ui/approvals/forged/decision";

    // A form another site made: no token.
    let response = browser.post(path, &[("verdict", "accept")]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let text = response.text().await.expect("text");
    assert!(text.contains("did not come from your inbox"), "{text}");

    // A token from another session.
    let other = Browser::signed_in(&app, &app.tokens.reviewer2).await;
    let theirs = hidden(&other.page("/ui/approvals/forged").await, "csrf");
    let response = browser
        .post(path, &[("verdict", "accept"), ("csrf", &theirs)])
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The right token, sent from another origin.
    let mine = hidden(&browser.page("/ui/approvals/forged").await, "csrf");
    let response = browser
        .http
        .post(format!("{}{path}", browser.base))
        .header("Origin", "https://evil.example")
        .form(&[("verdict", "accept"), ("csrf", mine.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    assert_eq!(api_status(&app, "forged").await["status"], "pending");
}

async fn refusals_and_races_are_explained_in_words(h: Harness) {
    let app = h.spawn().await;

    // Self-approval: an admin who submitted cannot decide.
    app.park_as(&app.tokens.admin, "mine").await;
    let admin = Browser::signed_in(&app, &app.tokens.admin).await;
    let page = admin.page("/ui/approvals/mine").await;
    assert!(page.contains("another reviewer must"), "{page}");
    assert!(
        !page.contains("value=\"accept\""),
        "no form to be refused: {page}"
    );
    // A form sent anyway (by hand, with the token of another approval's form) is refused
    // in words.
    app.park("theirs").await;
    let form = admin.page("/ui/approvals/theirs").await;
    let response = admin
        .post(
            "/ui/approvals/mine/decision",
            &[
                ("csrf", hidden(&form, "csrf").as_str()),
                ("verdict", "accept"),
            ],
        )
        .await;
    let page = admin.after(response).await;
    assert!(
        page.contains("You submitted this request yourself, so you cannot decide it"),
        "{page}"
    );
    assert_eq!(api_status(&app, "mine").await["status"], "pending");

    // A lost race: the page was open while bob decided through the API.
    app.park("raced").await;
    let alice = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let loaded = alice.page("/ui/approvals/raced").await;
    let bob = app.decide("raced", "reject", &app.tokens.reviewer2).await;
    assert_eq!(bob.status(), StatusCode::OK);
    let response = alice.decide_on("raced", &loaded, "accept", "").await;
    let page = alice.after(response).await;
    assert!(
        page.contains("Someone decided first: this approval was already rejected by bob at"),
        "{page}"
    );
    assert_eq!(api_status(&app, "raced").await["status"], "rejected");

    // A reason longer than the contract allows.
    app.park("wordy").await;
    let long = "x".repeat(2_001);
    let page = alice
        .after(alice.decide("wordy", "reject", &long).await)
        .await;
    assert!(page.contains("The reason is too long"), "{page}");
    assert_eq!(api_status(&app, "wordy").await["status"], "pending");
    // On an approval someone else has decided meanwhile too: the reviewer learns their
    // attempt was refused (the page showed the record with no word about it).
    let response = alice.decide_on("raced", &loaded, "accept", &long).await;
    let page = alice.after(response).await;
    assert!(page.contains("The reason is too long"), "{page}");
    assert_eq!(api_status(&app, "raced").await["status"], "rejected");
}

async fn sign_in_is_for_reviewers_and_sessions_end(h: Harness) {
    let tenant = h.tenant.clone();
    let app = h.spawn().await;
    let browser = Browser::new(&app);

    let refused = browser.sign_in(&app.tokens.agent).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let text = refused.text().await.expect("text");
    assert!(
        text.contains("That is an agent&#39;s token") || text.contains("agent's token"),
        "{text}"
    );
    let refused = browser.sign_in("apv_not-a-token").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    app.metrics_until(
        &app.base,
        Duration::from_secs(5),
        "failed sign-ins",
        |text| text.contains("approvals_auth_failures_total{surface=\"inbox\"}"),
    )
    .await;

    // A platform admin names the tenant.
    let refused = browser.sign_in(&app.tokens.platform_admin).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let response = browser
        .post(
            "/ui/login",
            &[("token", &app.tokens.platform_admin), ("tenant", &tenant)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let inbox = browser.page("/ui/approvals").await;
    assert!(
        inbox.contains(&format!("tenant <strong>{tenant}</strong>")),
        "{inbox}"
    );

    // Without ui.public_url the cookie is `Secure` exactly when a proxy says the browser came
    // over HTTPS.
    let cookie_over = |proto: Option<&'static str>| {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let mut request = http
            .post(format!("{}/ui/login", app.base))
            .form(&[("token", app.tokens.reviewer.as_str())]);
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        async move {
            let response = request.send().await.expect("sign in");
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            let cookie = response.headers()[SET_COOKIE].to_str().expect("ascii");
            cookie.to_ascii_lowercase()
        }
    };
    assert!(!cookie_over(None).await.contains("; secure"));
    assert!(!cookie_over(Some("http")).await.contains("; secure"));
    assert!(cookie_over(Some("https")).await.contains("; secure"));

    // The sign-in form is open to anyone: a body far beyond any form is refused unread.
    let huge = "x".repeat(1024 * 1024);
    let refused = browser.post("/ui/login", &[("token", huge.as_str())]).await;
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // The live stream needs a session too.
    let anonymous = Browser::new(&app);
    assert_eq!(
        anonymous.get("/ui/events").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Signing out ends the session: the cookie is cleared and pages lead to sign-in.
    let response = browser.post("/ui/logout", &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/ui/login");
    let after = browser.get("/ui/approvals").await;
    assert_eq!(after.status(), StatusCode::SEE_OTHER);
    assert!(location(&after).starts_with("/ui/login?"), "{after:?}");

    // A copy of the cookie taken before signing out is refused too.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signed_in = plain
        .post(format!("{}/ui/login", app.base))
        .form(&[("token", app.tokens.reviewer.as_str())])
        .send()
        .await
        .expect("sign in");
    let cookie = signed_in.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned();
    let with_cookie = |method: Method, path: &str| {
        plain
            .request(method, format!("{}{path}", app.base))
            .header(reqwest::header::COOKIE, cookie.clone())
    };
    let inbox = with_cookie(Method::GET, "/ui/approvals")
        .send()
        .await
        .expect("inbox");
    assert_eq!(inbox.status(), StatusCode::OK);
    // A live stream open under the session (another tab, another browser with a copy).
    let mut live = with_cookie(Method::GET, "/ui/events")
        .send()
        .await
        .expect("live stream");
    assert_eq!(live.status(), StatusCode::OK);
    let signed_out = with_cookie(Method::POST, "/ui/logout")
        .send()
        .await
        .expect("sign out");
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    // It closes (streams last 10 minutes otherwise), and reconnecting is refused.
    closes_within_20s(&mut live, "the live stream outlived the sign-out").await;
    assert_eq!(
        with_cookie(Method::GET, "/ui/events")
            .send()
            .await
            .expect("reconnect")
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let replayed = with_cookie(Method::GET, "/ui/approvals")
        .send()
        .await
        .expect("replay");
    assert_eq!(replayed.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&replayed).starts_with("/ui/login?"),
        "{replayed:?}"
    );
}

async fn filters_and_history_show_decided_approvals(h: Harness) {
    let tenant = h.tenant.clone();
    let app = h
        .spawn_with(|s| {
            s.approvals
                .tenant_ttl
                // Long enough to stay pending through the few steps before the deadline on
                // a loaded machine (the decide is a Temporal update there).
                .insert(tenant.clone(), Duration::from_secs(10));
        })
        .await;
    app.park("decided").await;
    let response = app.decide("decided", "reject", &app.tokens.reviewer2).await;
    assert_eq!(response.status(), StatusCode::OK);
    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;

    // Lists come from Temporal's visibility a moment after a write: wait for it to show.
    let rejected = browser
        .page_until("/ui/approvals?status=rejected", "/ui/approvals/decided\"")
        .await;
    assert!(rejected.contains("bob"), "who decided: {rejected}");
    let nobody = browser
        .page("/ui/approvals?status=rejected&agent=someone-else")
        .await;
    assert!(!nobody.contains("/ui/approvals/decided\""), "{nobody}");
    assert!(
        nobody.contains("Nothing rejected from agent someone-else"),
        "{nobody}"
    );
    let bad = browser.get("/ui/approvals?status=maybe").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // Deciding after the deadline says it expired. Parked after the slow steps above, so its
    // form is read while it is pending (the form goes with the pending state).
    app.park("soon-gone").await;
    let page = browser.page("/ui/approvals/soon-gone").await;
    let csrf = hidden(&page, "csrf");
    browser
        .page_until("/ui/approvals", "/ui/approvals/soon-gone\"")
        .await;
    let waited: Value = app
        .get_json(
            &format!("/v1/tenants/{tenant}/approvals/soon-gone/decision?wait_seconds=30"),
            &app.tokens.agent,
        )
        .await;
    assert_eq!(waited["status"], "expired");
    let response = browser
        .post(
            "/ui/approvals/soon-gone/decision",
            &[("csrf", csrf.as_str()), ("verdict", "accept")],
        )
        .await;
    let page = browser.after(response).await;
    assert!(
        page.contains("Too late: this approval expired at"),
        "{page}"
    );
    // Nobody decided it: the page does not say "expired by  at".
    assert!(
        page.contains("with no reviewer's decision (an automatic rejection)"),
        "{page}"
    );
    assert!(!page.contains("by  at"), "{page}");
    browser
        .page_until("/ui/approvals?status=expired", "/ui/approvals/soon-gone\"")
        .await;
}

/// The agent filter reads as many pages of the list as it takes to fill one inbox page: a
/// rare agent's approvals show even when a hundred of another agent's came between them.
#[tokio::test]
async fn the_agent_filter_finds_a_rare_agents_approvals_among_many() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..114 {
        // Two rare ones at either end of 110 busy ones, whichever way the list is sorted.
        let (id, agent) = if !(2..112).contains(&n) {
            (format!("rare-{n}"), "agent-rare")
        } else {
            (format!("busy-{n}"), "agent-busy")
        };
        app.park_for_agent(&id, agent).await;
        ids.push(id);
    }
    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let page = browser.page("/ui/approvals?agent=agent-rare").await;
    for id in ids.iter().filter(|id| id.starts_with("rare-")) {
        assert!(
            page.contains(&format!("/ui/approvals/{id}\"")),
            "{id}: {page}"
        );
    }
    assert!(!page.contains("/ui/approvals/busy-"), "{page}");
}

/// The agent filter takes agent ids as long as a submit does (2,048 characters): it cut them
/// at 256, and an agent with a longer id was never found.
#[tokio::test]
async fn the_agent_filter_finds_an_agent_with_a_long_id() {
    let app = TestApp::spawn().await;
    let long = "a".repeat(300);
    app.park_for_agent("long-agent-1", &long).await;
    app.park_for_agent("short-agent-1", "agent-short").await;
    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let page = browser.page(&format!("/ui/approvals?agent={long}")).await;
    assert!(page.contains("/ui/approvals/long-agent-1\""), "{page}");
    assert!(!page.contains("/ui/approvals/short-agent-1\""), "{page}");
    assert!(page.contains("maxlength=\"2048\""), "{page}");
}

/// The agent filter reads the list in the API's largest pages, not in the inbox's: each call
/// is a walk of the tenant's workflows on Temporal, and a rare agent's page cost twenty of
/// them. Counted here as Redis list reads: 600 of another agent's come first.
#[tokio::test]
async fn the_agent_filter_reads_the_list_in_few_large_pages() {
    let app = TestApp::spawn().await;
    for n in 0..602 {
        let (id, agent) = if n < 600 {
            (format!("busy-{n}"), "agent-busy")
        } else {
            (format!("rare-{n}"), "agent-rare")
        };
        app.park_for_agent(&id, agent).await;
    }
    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let before = app.redis().calls("zrangebylex").await;
    let page = browser.page("/ui/approvals?agent=agent-rare").await;
    let reads = app.redis().calls("zrangebylex").await - before;
    assert!(page.contains("/ui/approvals/rare-601\""), "{page}");
    // One of 100, then two of 500 (seven of 100 before); a background read may add one.
    assert!(reads <= 4, "{reads} list reads for one inbox page");
}

/// The inbox's live stream closes when its session ends, however long streams may otherwise
/// last: a tab left open does not go on receiving the tenant's events, and reconnecting is
/// refused.
#[tokio::test]
async fn the_inbox_live_stream_closes_when_its_session_ends() {
    const SECRET: &str = "a session secret of at least thirty-two characters";
    let app = TestApp::spawn_with(|s| s.ui.session_secret = Some(SECRET.into())).await;
    // Sessions signed in through the form last at least a minute: this one, signed the way
    // the service signs them, ends in five seconds (time to open the stream first).
    let ends = chrono::Utc::now().timestamp_millis() + 5_000;
    let cookie = session_cookie(SECRET, &app.tokens.reviewer, &app.tenant, ends);
    let http = reqwest::Client::new();
    let open = || {
        http.get(format!("{}/ui/events", app.base))
            .header(reqwest::header::COOKIE, cookie.clone())
            .send()
    };
    let mut stream = open().await.expect("open");
    assert_eq!(stream.status(), StatusCode::OK);
    closes_within_20s(
        &mut stream,
        "the stream outlived its session (streams last 10 minutes otherwise)",
    )
    .await;
    assert!(
        chrono::Utc::now().timestamp_millis() >= ends,
        "the stream closed before the session ended"
    );
    assert_eq!(
        open().await.expect("reconnect").status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Reads a live stream to its end, which must come within 20 s (`what` says why otherwise).
async fn closes_within_20s(stream: &mut reqwest::Response, what: &str) {
    let read_to_end = async { while stream.chunk().await.expect("chunk").is_some() {} };
    tokio::time::timeout(Duration::from_secs(20), read_to_end)
        .await
        .expect(what);
}

/// A reason as a browser sends it (line breaks as CRLF, any script) is kept as typed and
/// counted as the text area counts it; a form sent twice tells its reviewer their decision
/// stands. CRLF was stored and shown as a hidden `\r` and counted twice; 2,000 characters of
/// CJK passed the form's limit only up to about 1,800; the second post said "someone
/// decided first".
#[tokio::test]
async fn reasons_as_browsers_send_them_and_a_second_click() {
    let app = TestApp::spawn().await;
    let alice = Browser::signed_in(&app, &app.tokens.reviewer).await;

    app.park("lines").await;
    let page = alice
        .after(
            alice
                .decide("lines", "reject", "first line\r\nsecond line")
                .await,
        )
        .await;
    assert!(page.contains("Done: rejected by alice"), "{page}");
    assert!(!page.contains("u{000d}"), "{page}");
    assert_eq!(
        api_status(&app, "lines").await["decision_reason"],
        "first line\nsecond line"
    );

    // 2,000 characters as the text area counts them, nine of them line breaks.
    app.park("paragraphs").await;
    let paragraphs = format!("{}\r\n", "x".repeat(199)).repeat(9) + &"x".repeat(200);
    let page = alice
        .after(alice.decide("paragraphs", "reject", &paragraphs).await)
        .await;
    assert!(page.contains("Done: rejected by alice"), "{page}");

    app.park("kanji").await;
    let kanji = "審".repeat(2_000);
    let page = alice
        .after(alice.decide("kanji", "accept", &kanji).await)
        .await;
    assert!(page.contains("Done: accepted by alice"), "{page}");
    assert_eq!(
        api_status(&app, "kanji").await["decision_reason"],
        kanji.as_str()
    );

    app.park("twice").await;
    let page = alice.page("/ui/approvals/twice").await;
    let form = [
        ("csrf", hidden(&page, "csrf")),
        ("digest", hidden(&page, "digest")),
        ("verdict", "accept".to_owned()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = alice
        .after(alice.post("/ui/approvals/twice/decision", &form).await)
        .await;
    assert!(first.contains("Done: accepted by alice"), "{first}");
    let second = alice
        .after(alice.post("/ui/approvals/twice/decision", &form).await)
        .await;
    assert!(
        second.contains("You had already decided this: accepted by alice"),
        "{second}"
    );
}

/// Signing in over someone else's session (a shared machine) ends that session for good, as
/// its sign-out would have; a sign-out the session store cannot record says so (it said
/// "signed out" while a copy of the cookie stayed valid for hours).
#[tokio::test]
async fn sign_ins_over_a_session_end_it_and_an_unrecorded_sign_out_says_so() {
    let mut app = TestApp::spawn().await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let sign_in = |token: &str, cookie: Option<&str>| {
        let mut request = plain
            .post(format!("{}/ui/login", app.base))
            .form(&[("token", token)]);
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        async move {
            let response = request.send().await.expect("sign in");
            assert_eq!(response.status(), StatusCode::SEE_OTHER);
            set_cookie(&response)
        }
    };
    let inbox_with = |cookie: String| {
        plain
            .get(format!("{}/ui/approvals", app.base))
            .header(reqwest::header::COOKIE, cookie)
            .send()
    };
    // Alice's cookie, which the machine's browser sends when bob signs in there.
    let alices = sign_in(&app.tokens.reviewer, None).await;
    assert_eq!(
        inbox_with(alices.clone()).await.expect("inbox").status(),
        StatusCode::OK
    );
    let bobs = sign_in(&app.tokens.reviewer2, Some(&alices)).await;
    let replayed = inbox_with(alices).await.expect("replay");
    assert_eq!(
        replayed.status(),
        StatusCode::SEE_OTHER,
        "alice's session ended"
    );
    assert_eq!(
        inbox_with(bobs).await.expect("inbox").status(),
        StatusCode::OK
    );

    let browser = Browser::signed_in(&app, &app.tokens.reviewer2).await;
    app.redis.as_mut().expect("redis").stop();
    let response = browser.post("/ui/logout", &[]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = response.text().await.expect("text");
    assert!(
        page.contains("Your sign-out could not be recorded"),
        "{page}"
    );
}

/// The `name=value` of the session cookie `response` sets.
fn set_cookie(response: &Response) -> String {
    response.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned()
}

/// A page looks its session up once (whether it was signed out: a Redis read), not twice: the
/// request's admission and its handler each looked it up.
#[tokio::test]
async fn a_page_looks_its_session_up_once() {
    let app = TestApp::spawn().await;
    let alice = Browser::signed_in(&app, &app.tokens.reviewer).await;
    app.park("once-1").await;
    let before = app.redis_calls("exists").await;
    for _ in 0..5 {
        alice.page("/ui/approvals").await;
    }
    alice.page("/ui/approvals/once-1").await;
    assert_eq!(app.redis_calls("exists").await - before, 6);
}

/// The outcome sentence comes from the address, which anyone can put in a link: on a pending
/// approval no outcome is said (a link saying "Someone decided first" made a reviewer move on
/// and leave the approval to expire), and on a decided one only what its record says.
#[tokio::test]
async fn an_outcome_in_a_link_is_said_only_when_the_record_agrees() {
    let app = TestApp::spawn().await;
    let alice = Browser::signed_in(&app, &app.tokens.reviewer).await;

    app.park("linked-outcome").await;
    for outcome in [
        "decided",
        "already_yours",
        "lost_race",
        "expired",
        "self_approval",
    ] {
        let page = alice
            .page(&format!("/ui/approvals/linked-outcome?outcome={outcome}"))
            .await;
        for sentence in [
            "Done:",
            "You had already decided",
            "Someone decided first",
            "Too late",
            "you cannot decide it",
        ] {
            assert!(!page.contains(sentence), "{outcome}: {page}");
        }
        assert!(page.contains("value=\"accept\""), "the form stays: {page}");
    }

    // Decided by bob: alice's link may say she lost the race, not that she decided it.
    let bob = app
        .decide("linked-outcome", "reject", &app.tokens.reviewer2)
        .await;
    assert_eq!(bob.status(), StatusCode::OK);
    let page = alice
        .page("/ui/approvals/linked-outcome?outcome=decided")
        .await;
    assert!(!page.contains("Done:"), "{page}");
    let page = alice
        .page("/ui/approvals/linked-outcome?outcome=lost_race")
        .await;
    assert!(
        page.contains("Someone decided first: this approval was already rejected by bob"),
        "{page}"
    );
}

/// A link to an approval (a webhook's `inbox_url`) opened without a session leads through the
/// sign-in back to that approval, not to the top of the inbox; a `next` naming another site is
/// ignored. A decision sent after the session ended is answered with the sign-in page, which
/// says that nothing was decided (it used to lead there without a word), gives back the reason
/// written (a redirect there lost it), and returns to the approval once signed in.
#[tokio::test]
async fn a_link_to_an_approval_leads_back_to_it_and_a_late_decision_is_not_lost_silently() {
    let app = TestApp::spawn().await;
    app.park("linked-1").await;
    let browser = Browser::new(&app);

    let response = browser.get("/ui/approvals/linked-1").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let sign_in_page = location(&response);
    let login = browser.page(&sign_in_page).await;
    assert_eq!(hidden(&login, "next"), "/ui/approvals/linked-1");
    let signed_in = browser
        .post(
            "/ui/login",
            &[
                ("token", &app.tokens.reviewer),
                ("next", "/ui/approvals/linked-1"),
            ],
        )
        .await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&signed_in), "/ui/approvals/linked-1");
    // Signed in already, the sign-in page goes straight there.
    let again = browser.get(&sign_in_page).await;
    assert_eq!(location(&again), "/ui/approvals/linked-1");

    for elsewhere in [
        "/ui/approvals\u{1}",
        "//evil.example/ui/approvals",
        "https://evil.example/",
        "/ui/login",
        "/ui/approvals//evil.example",
    ] {
        let other = Browser::new(&app);
        let signed_in = other
            .post(
                "/ui/login",
                &[("token", &app.tokens.reviewer), ("next", elsewhere)],
            )
            .await;
        assert_eq!(location(&signed_in), "/ui/approvals", "next={elsewhere}");
    }

    // The page was loaded while the session held; the decision is sent after it ended.
    let page = browser.page("/ui/approvals/linked-1").await;
    let late = Browser::new(&app);
    let response = late
        .post(
            "/ui/approvals/linked-1/decision",
            &[
                ("csrf", hidden(&page, "csrf").as_str()),
                ("digest", hidden(&page, "digest").as_str()),
                ("verdict", "accept"),
                ("reason", "Checked <ticket> T-9 at length"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let login = response.text().await.unwrap();
    assert!(login.contains("nothing was decided"), "{login}");
    assert!(
        login.contains(">Checked &#60;ticket&#62; T-9 at length</textarea>"),
        "{login}"
    );
    assert_eq!(hidden(&login, "next"), "/ui/approvals/linked-1");
    assert_eq!(api_status(&app, "linked-1").await["status"], "pending");

    // Another site's form gets the same page, but its text is not shown as the reviewer's.
    let forged = late
        .http
        .post(format!("{}/ui/approvals/linked-1/decision", late.base))
        .header("origin", "https://evil.example")
        .form(&[
            ("verdict", "accept"),
            ("reason", "Sign-in moved: paste your token at evil.example"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let page = forged.text().await.unwrap();
    assert!(page.contains("nothing was decided"), "{page}");
    assert!(!page.contains("evil.example"), "{page}");
}

/// A query string or form no inbox page sends (a field twice, the verdict missing) is answered
/// with an inbox page saying so, not the framework's plain-text line; nothing is decided.
#[tokio::test]
async fn malformed_queries_and_forms_get_a_page_and_decide_nothing() {
    let app = TestApp::spawn().await;
    app.park("odd-1").await;
    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let page = browser.page("/ui/approvals/odd-1").await;
    let twice = browser
        .get("/ui/approvals?status=pending&status=expired")
        .await;
    let no_verdict = browser
        .post(
            "/ui/approvals/odd-1/decision",
            &[
                ("csrf", hidden(&page, "csrf").as_str()),
                ("digest", hidden(&page, "digest").as_str()),
            ],
        )
        .await;
    for response in [twice, no_verdict] {
        assert!(response.status().is_client_error(), "{response:?}");
        let html = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(html.starts_with("text/html"), "{html}");
        let text = response.text().await.unwrap();
        assert!(text.contains("Not a request this inbox sends"), "{text}");
    }
    assert_eq!(api_status(&app, "odd-1").await["status"], "pending");
}

/// A session cookie as the service signs it (src/ui/session.rs): `ui.session_secret` through
/// SHA-512 as the key, the claims as URL-safe base64 JSON.
fn session_cookie(secret: &str, token: &str, tenant: &str, expires_ms: i64) -> String {
    use axum::response::IntoResponse;
    use axum_extra::extract::cookie::{Cookie, Key, SignedCookieJar};
    use base64::Engine as _;
    use sha2::{Digest, Sha256, Sha512};
    let claims = json!({
        "digest": hex::encode(Sha256::digest(token.as_bytes())),
        "tenant": tenant,
        "expires": expires_ms,
        "csrf": "unused",
    });
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let jar = SignedCookieJar::new(Key::from(Sha512::digest(secret.as_bytes()).as_slice()))
        .add(Cookie::new("approvals_session", value));
    let response = (jar, ()).into_response();
    let set_cookie = response.headers()[SET_COOKIE.as_str()]
        .to_str()
        .expect("ascii");
    set_cookie.split(';').next().expect("name=value").to_owned()
}

/// A session's requests count against the token it signed in with, as its API requests do: a
/// reviewer whose token is at its limit (here two requests that never finish) gets `429` in
/// the inbox too, while another reviewer's inbox goes on; once they end it is served again.
#[tokio::test]
async fn a_session_shares_its_tokens_limit_of_requests_in_flight() {
    let app = TestApp::spawn_with(|s| s.limits.max_requests_per_caller = 2).await;
    let alice = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let bob = Browser::signed_in(&app, &app.tokens.reviewer2).await;
    // Two submits that never finish hold the token's places.
    let (bodies, requests) =
        crate::fairness::hold_token_places(&app, &app.tokens.reviewer, 2).await;
    let refused = alice.get("/ui/approvals").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // A browser shows the refusal as a page that says what to do, not a problem document.
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let page = refused.text().await.unwrap();
    assert!(page.contains("<html"), "{page}");
    assert!(page.contains("retry when one is answered"), "{page}");
    assert!(bob.page("/ui/approvals").await.contains("<html"));
    // Signing in again over the session, or out of it, is never refused: whoever keeps the
    // token's places busy with a copy of the cookie would keep the session alive (both were
    // answered 429).
    let again = alice.sign_in(&app.tokens.reviewer).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&again), "/ui/approvals");
    let out = alice.post("/ui/logout", &[]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&out), "/ui/login");

    drop(bodies);
    for request in requests {
        assert_eq!(request.await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    let alice = Browser::signed_in(&app, &app.tokens.reviewer).await;
    assert!(alice.page("/ui/approvals").await.contains("<html"));
}

/// A form whose body never finishes arriving is answered at the request deadline, as a page
/// that says so (it was plain text), and decides nothing.
#[tokio::test]
async fn a_form_that_never_finishes_arriving_is_answered_at_the_deadline() {
    // Long enough for the park, the sign-in and the read on a loaded machine; the stalled
    // form never ends, so it meets it all the same.
    let app = TestApp::spawn_with(|s| s.server.request_timeout = Duration::from_secs(3)).await;
    app.park("slow-form").await;
    let alice = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let (_keep_open, body) = crate::fairness::stalled_body(b"verdict=accept&csrf=");
    let response = alice
        .http
        .post(format!("{}/ui/approvals/slow-form/decision", alice.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", alice.base.as_str())
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let page = response.text().await.unwrap();
    assert!(page.contains("<html"), "{page}");
    assert!(page.contains("href=\"/ui/approvals/slow-form\""), "{page}");
    assert_eq!(api_status(&app, "slow-form").await["status"], "pending");
}

/// A reviewer's tabs outlive their forms: a sign-in in another tab renews the session, and a
/// store that fails mid-decision leaves its outcome unknown. Each page says what happened and
/// leads back to the approval. Before: an open tab's "Sign out" was refused (a shared machine
/// stayed signed in), its decision was called forged, a failed decision linked only to the
/// inbox's first page, and a mistyped `/ui` address got the API's JSON without the inbox's
/// headers.
#[tokio::test]
async fn stale_tabs_and_failed_decisions_lead_back_to_the_approval() {
    let mut app = TestApp::spawn_durable().await;
    app.park("waits").await;
    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let old_tab = browser.page("/ui/approvals/waits").await;
    let signed_in_again = browser.sign_in(&app.tokens.reviewer).await;
    assert_eq!(signed_in_again.status(), StatusCode::SEE_OTHER);

    let response = browser
        .post(
            "/ui/approvals/waits/decision",
            &[
                ("csrf", hidden(&old_tab, "csrf").as_str()),
                ("digest", hidden(&old_tab, "digest").as_str()),
                ("verdict", "accept"),
                ("reason", "Ticket <T-7> checked"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let page = response.text().await.expect("text");
    assert!(page.contains("signed in again"), "{page}");
    // The reason written is given back to copy, not lost with the form.
    assert!(
        page.contains(">Ticket &#60;T-7&#62; checked</textarea>"),
        "{page}"
    );
    assert!(page.contains("href=\"/ui/approvals/waits\""), "{page}");
    assert_eq!(api_status(&app, "waits").await["status"], "pending");

    // Another site still cannot sign the reviewer out.
    let cross_site = browser
        .http
        .post(format!("{}/ui/logout", browser.base))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .expect("post");
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    assert_eq!(browser.get("/ui/approvals").await.status(), StatusCode::OK);
    // The old tab's sign-out (its form from before the second sign-in) signs out.
    let signed_out = browser
        .post("/ui/logout", &[("csrf", hidden(&old_tab, "csrf").as_str())])
        .await;
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        browser.get("/ui/approvals").await.status(),
        StatusCode::SEE_OTHER
    );

    // An agent's blank action type still leaves a link to click.
    let blank = app
        .submit("blank", json!({"type": "\u{3000}", "resource": "doc-1"}))
        .await;
    assert_eq!(blank.status(), StatusCode::CREATED);
    let blank_id = blank.json::<Value>().await.expect("json")["approval"]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let inbox = browser.page("/ui/approvals").await;
    assert!(
        inbox.contains(&format!(
            "id=\"open-{blank_id}\" href=\"/ui/approvals/{blank_id}\">(no action type)</a>"
        )),
        "{inbox}"
    );

    // A mistyped address under /ui: the inbox's page, with its headers.
    let missing = browser.get("/ui/approvals/").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    assert!(missing.headers().contains_key("content-security-policy"));

    // The store fails under a decision: the reviewer is told it may have been taken, and
    // where to look.
    let page = browser.page("/ui/approvals/waits").await;
    app.redis.as_mut().expect("redis").stop();
    let response = browser
        .post(
            "/ui/approvals/waits/decision",
            &[
                ("csrf", hidden(&page, "csrf").as_str()),
                ("digest", hidden(&page, "digest").as_str()),
                ("verdict", "accept"),
                ("reason", "Ticket <T-7> checked"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = response.text().await.expect("text");
    assert!(page.contains("may or may not have been recorded"), "{page}");
    assert!(page.contains("href=\"/ui/approvals/waits\""), "{page}");
    // What the reviewer wrote is there to copy, not lost with the form (escaped).
    assert!(
        page.contains("readonly rows=\"4\" cols=\"60\">Ticket &#60;T-7&#62; checked</textarea>"),
        "{page}"
    );
}

/// The agent filter stops after a few calls per page (here the list's pages end early, at a
/// megabyte of large records): a page that found none of the agent's says the search
/// stopped, not "Nothing pending from agent …" above a "Next page" link, and the link leads
/// to the rare agent's approval. A reviewer took the first for "nothing waits".
#[tokio::test]
async fn an_agent_filter_that_stopped_searching_says_so() {
    let app = TestApp::spawn().await;
    for n in 0..200 {
        app.park_large_for_agent(&format!("busy-{n}"), "agent-busy")
            .await;
    }
    app.park_for_agent("rare", "agent-rare").await;
    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let mut page = browser.page("/ui/approvals?agent=agent-rare").await;
    assert!(
        !page.contains("/ui/approvals/rare\""),
        "the search did not stop: {page}"
    );
    assert!(!page.contains("Nothing pending"), "{page}");
    assert!(page.contains("the search stops"), "{page}");
    for _ in 0..5 {
        if page.contains("/ui/approvals/rare\"") {
            return;
        }
        let next = page
            .split("rel=\"next\"")
            .next()
            .and_then(|before| before.rsplit("href=\"").next())
            .and_then(|rest| rest.split('"').next())
            .expect("a link to search further")
            .replace("&#38;", "&");
        page = browser.page(&next).await;
    }
    panic!("the rare agent's approval never found: {page}");
}

/// `id` parked in the harness tenant and, by its own agent, in [`crate::support::OTHER_TENANT`].
async fn parked_in_both_tenants(app: &TestApp, id: &str) {
    use crate::support::OTHER_TENANT;
    app.park(id).await;
    let theirs = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{OTHER_TENANT}/approvals"),
            Some(&app.tokens.other_tenant_agent),
        )
        .json(&json!({"request_id": id, "action": crate::support::sensitive_read()}))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::CREATED);
}

/// A decision form sent after the browser signed in to another tenant (in another tab) is
/// refused, and the refusal leads back to the approval of the form's tenant, as does the
/// sign-in a form sent after the session ended asks for. Both led to `/ui/approvals/{id}`:
/// ids are the agents' own, and that opened the other tenant's approval of the same id, with
/// a decision form, where the reviewer pasted the reason they had written.
#[tokio::test]
async fn a_refused_decision_leads_back_to_its_own_tenants_approval() {
    use crate::support::OTHER_TENANT;
    let app = TestApp::spawn().await;
    parked_in_both_tenants(&app, "shared-id").await;
    let browser = Browser::new(&app);
    let ours = app.tenant.as_str();
    browser.sign_in_as_admin_to(&app, ours).await;
    let page = browser.page("/ui/approvals/shared-id").await;
    browser.sign_in_as_admin_to(&app, OTHER_TENANT).await;

    let refused = browser
        .decide_on("shared-id", &page, "accept", "looks fine")
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let back = format!("/ui/approvals/shared-id?tenant={ours}");
    let text = refused.text().await.unwrap();
    assert!(text.contains(&format!("href=\"{back}\"")), "{text}");
    let followed = browser.get(&back).await;
    assert_eq!(followed.status(), StatusCode::CONFLICT);
    let followed = followed.text().await.unwrap();
    assert!(
        !followed.contains("name=\"csrf\""),
        "no decision form: {followed}"
    );

    // Sent with no session at all: the sign-in it asks for leads back there too.
    let signed_out = Browser::new(&app)
        .decide_on("shared-id", &page, "accept", "looks fine")
        .await;
    assert_eq!(signed_out.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(hidden(&signed_out.text().await.unwrap(), "next"), back);
    for tenant in [ours, OTHER_TENANT] {
        let path = format!("/v1/tenants/{tenant}/approvals/shared-id");
        let token = if tenant == ours {
            &app.tokens.reviewer
        } else {
            &app.tokens.platform_admin
        };
        let record = app.get_json(&path, token).await;
        assert_eq!(record["status"], "pending", "{tenant}: {record}");
    }
}

/// A notification's link names its approval's tenant: ids are the agents' own request ids,
/// unique within a tenant only, and a reviewer signed in to another tenant was shown (and
/// offered to decide) that tenant's approval of the same id. Signed out, the sign-in page
/// offers the link's tenant.
#[tokio::test]
async fn a_link_to_another_tenants_approval_shows_neither() {
    use crate::support::OTHER_TENANT;
    let app = TestApp::spawn().await;
    parked_in_both_tenants(&app, "shared-id").await;

    let browser = Browser::new(&app);
    let signed_in = browser
        .post(
            "/ui/login",
            &[
                ("token", &app.tokens.platform_admin),
                ("tenant", &app.tenant),
            ],
        )
        .await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let other = browser
        .get(&format!("/ui/approvals/shared-id?tenant={OTHER_TENANT}"))
        .await;
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let page = other.text().await.unwrap();
    assert!(
        page.contains(&format!("of tenant {OTHER_TENANT}"))
            && page.contains(&format!("signed in to tenant {}", app.tenant)),
        "{page}"
    );
    assert!(!page.contains("name=\"csrf\""), "no decision form: {page}");
    // The page's sign-out leads to the sign-in for the link, not to a bare sign-in page.
    let next = format!("/ui/approvals/shared-id?tenant={OTHER_TENANT}");
    assert!(
        page.contains(&format!("name=\"next\" value=\"{next}\"")),
        "{page}"
    );
    let own = browser
        .page(&format!("/ui/approvals/shared-id?tenant={}", app.tenant))
        .await;
    assert!(own.contains("name=\"csrf\""), "{own}");

    let elsewhere = Browser::new(&app);
    let signed_in = elsewhere
        .post(
            "/ui/login",
            &[
                ("token", &app.tokens.platform_admin),
                ("tenant", &app.tenant),
            ],
        )
        .await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let sign_out = elsewhere
        .post("/ui/logout", &[("next", next.as_str())])
        .await;
    assert_eq!(sign_out.status(), StatusCode::SEE_OTHER);
    let login = elsewhere.page(&location(&sign_out)).await;
    assert!(
        login.contains(&format!("value=\"{OTHER_TENANT}\"")),
        "the sign-in offers the link's tenant: {login}"
    );

    let signed_out = Browser::new(&app);
    let to_sign_in = signed_out
        .get(&format!("/ui/approvals/shared-id?tenant={OTHER_TENANT}"))
        .await;
    let login = signed_out.page(&location(&to_sign_in)).await;
    assert!(
        login.contains(&format!("name=\"tenant\" type=\"text\" autocomplete=\"organization\" maxlength=\"64\" value=\"{OTHER_TENANT}\"")),
        "{login}"
    );
}

/// A first page of entries whose deadlines passed (their expiry not recorded yet: the sweep
/// behind, or refused) does not read as "Nothing pending" over an approval that waits after
/// them: the inbox reads on, as an agent filter does.
#[tokio::test]
async fn a_page_of_lapsed_entries_does_not_hide_what_waits_after_it() {
    use approvals::config::{EngineKind, Settings};
    use approvals_core::conformance::pending;

    let app = TestApp::spawn_with(|s| s.approvals.sweep_interval = Duration::from_secs(3600)).await;
    let mut settings = Settings::default();
    settings.redis.url = app.redis().url();
    let engine = approvals::engines::connect(EngineKind::Redis, &settings)
        .await
        .unwrap();
    let tenant = approvals_core::TenantId::parse(&app.tenant).unwrap();
    for n in 0..120 {
        let lapsed = pending(&tenant, &format!("lapsed-{n}"), Duration::from_millis(1));
        engine.import(lapsed).await.unwrap();
    }
    let waiting = pending(&tenant, "waiting", Duration::from_secs(3600));
    engine.import(waiting).await.unwrap();

    let browser = Browser::signed_in(&app, &app.tokens.reviewer).await;
    let page = browser.page("/ui/approvals").await;
    assert!(!page.contains("Nothing pending"), "{page}");
    assert!(page.contains("href=\"/ui/approvals/waiting\""), "{page}");
}
