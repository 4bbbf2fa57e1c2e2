//! The inbox in a real browser: Debian's `chromium`, headless, driven over WebDriver by
//! `chromedriver` (`apt-get install chromium chromium-driver`; scripts/test.sh installs them).
//! Two reviewers with pages open: one accepts, the other's page drops the approval live,
//! without a reload; a self-approval is explained; a form stripped of its CSRF token is
//! refused; the inbox fits a phone's width. Screenshots go to the target directory.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use approvals_testkit::free_port;
use approvals_testkit::process::{Output, Process};
use fantoccini::key::Key;
use fantoccini::wd::WindowHandle;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use serde_json::{json, Value};

use crate::support::TestApp;

const WITHIN: Duration = Duration::from_secs(15);

/// `chromedriver` on a free port, stopped when dropped.
struct Driver {
    url: String,
    process: Process,
    /// Chromium's temporary profiles and singleton sockets go here rather than in `/tmp`,
    /// where each run left a dozen directories behind; removed when dropped, after the
    /// process (fields drop in order).
    _temp: tempfile::TempDir,
}

impl Drop for Driver {
    /// Ends chromedriver's whole group (its Chromium too) before the profiles are removed.
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.process.pid(), nix::sys::signal::Signal::SIGKILL);
    }
}

impl Driver {
    fn start() -> Self {
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port();
        let temp = tempfile::tempdir().expect("a temporary directory for chromium");
        let mut command = Command::new(&binary);
        command
            .arg(format!("--port={port}"))
            .env("TMPDIR", temp.path())
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, with the browsers it starts: a test that panics never closes
            // its WebDriver session, and killing chromedriver alone leaves its Chromium behind.
            .process_group(0);
        if Command::new(&binary).arg("--version").output().is_err() {
            panic!(
                "{binary} not found: the browser tests need Debian's chromium and chromium-driver \
                 (scripts/test.sh installs them; or set CHROMEDRIVER)"
            );
        }
        let mut process = Process::spawn_reading(command, Output::Stdout);
        process.wait_for_line("started successfully", Duration::from_secs(20));
        Self {
            url: format!("http://127.0.0.1:{port}"),
            process,
            _temp: temp,
        }
    }

    /// A new headless browser window of its own (its own profile, so its own cookies).
    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"],
        });
        if let Ok(binary) = std::env::var("CHROMIUM") {
            options["binary"] = Value::String(binary);
        }
        capabilities.insert("goog:chromeOptions".into(), options);
        // chromedriver listens on plain HTTP on loopback: no TLS connector.
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Types `token` into the sign-in form this tab shows and sends it.
async fn submit_sign_in_form(browser: &Client, token: &str) {
    browser
        .find(Locator::Css("#token"))
        .await
        .expect("token field")
        .send_keys(token)
        .await
        .expect("type the token");
    browser
        .find(Locator::Css("form button[type=submit]"))
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("sign in");
}

/// The browser signed in as the reviewer in its first tab, after a second tab had opened the
/// sign-in page (the cookie is the browser's: its tabs share it). The first tab is current.
async fn signed_in_with_a_second_tab(
    browser: &Client,
    app: &TestApp,
) -> (WindowHandle, WindowHandle) {
    let (first_tab, second_tab) = open_second_tab(browser).await;
    browser
        .goto(&app.url("/ui/login"))
        .await
        .expect("sign-in page");
    to_tab(browser, &first_tab).await;
    sign_in(browser, app, &app.tokens.reviewer).await;
    (first_tab, second_tab)
}

/// The second tab signs in as mallory, of another tenant; then the first tab is current again.
async fn another_tenant_signs_in_there(
    browser: &Client,
    app: &TestApp,
    first_tab: &WindowHandle,
    second_tab: &WindowHandle,
) {
    to_tab(browser, second_tab).await;
    submit_sign_in_form(browser, &app.tokens.other_tenant_reviewer).await;
    until_true(
        browser,
        "document.body.innerText.includes('mallory')",
        "mallory's inbox",
    )
    .await;
    to_tab(browser, first_tab).await;
}

async fn sign_in(browser: &Client, app: &TestApp, token: &str) {
    browser
        .goto(&app.url("/ui/login"))
        .await
        .expect("sign-in page");
    submit_sign_in_form(browser, token).await;
    let inbox = browser
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css("table.approvals, p.empty"))
        .await;
    if inbox.is_err() {
        let url = browser.current_url().await.map(|u| u.to_string());
        panic!(
            "no inbox after signing in: at {url:?}:\n{}",
            text(browser).await
        );
    }
}

async fn script(browser: &Client, js: &str) -> Value {
    browser.execute(js, Vec::new()).await.expect("script")
}

/// Waits until `js` (an expression) is true in the page.
/// Until the page received the event of `id` (parked), shows it, and has no refresh left.
async fn until_the_page_settles_after(browser: &Client, id: &str) {
    let js = format!(
        "document.body.dataset.lastEvent === '{id}' && document.getElementById('approval-{id}') \
         && !document.body.hasAttribute('data-refreshing')"
    );
    until_true(browser, &js, &format!("{id}'s arrival, live")).await;
}

async fn until_true(browser: &Client, js: &str, what: &str) {
    until_true_within(browser, js, what, WITHIN).await;
}

async fn until_true_within(browser: &Client, js: &str, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if script(browser, &format!("return !!({js});")).await == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(browser: &Client) -> String {
    script(browser, "return document.body.innerText;")
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// This window's tab and a second one opened beside it; the second is current.
async fn open_second_tab(browser: &Client) -> (WindowHandle, WindowHandle) {
    let first = browser.window().await.expect("this tab");
    let second = browser.new_window(true).await.expect("a second tab").handle;
    to_tab(browser, &second).await;
    (first, second)
}

async fn to_tab(browser: &Client, tab: &WindowHandle) {
    browser
        .switch_to_window(tab.clone())
        .await
        .expect("switch tabs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_decide_in_the_browser_and_open_pages_follow_live() {
    let app = TestApp::spawn().await;
    app.park("browser-1").await;
    app.park("browser-2").await;
    let driver = Driver::start();
    let alice = driver.browser().await;
    let bob = driver.browser().await;

    sign_in(&alice, &app, &app.tokens.reviewer).await;
    sign_in(&bob, &app, &app.tokens.reviewer2).await;
    assert!(text(&bob).await.contains("bob"), "bob is signed in");
    until_true(
        &bob,
        "document.getElementById('approval-browser-1')",
        "the row",
    )
    .await;
    until_true(
        &bob,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;
    // Survives only if the page is never reloaded.
    script(&bob, "window.notReloaded = true; return null;").await;
    screenshot(&bob, "inbox").await;

    // Alice opens the first approval and accepts it with a reason, from the keyboard.
    alice
        .find(Locator::Css("a[href='/ui/approvals/browser-1']"))
        .await
        .expect("the approval's link")
        .click()
        .await
        .expect("open it");
    let reason = alice
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css("textarea#reason"))
        .await
        .expect("the decision form");
    reason
        .send_keys("checked with the data owner")
        .await
        .expect("type a reason");
    screenshot(&alice, "detail").await;
    // From the reason, Tab reaches Accept and Enter presses it: no mouse needed.
    reason
        .send_keys(&format!("{}{}", Key::Tab, Key::Enter))
        .await
        .expect("tab to Accept and press Enter");
    alice
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css("p.notice.success"))
        .await
        .expect("the confirmation");
    assert!(
        text(&alice).await.contains("Done: accepted by alice"),
        "{}",
        text(&alice).await
    );
    let record: Value = app
        .get("browser-1", &app.tokens.reviewer)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(record["status"], "accepted");
    assert_eq!(record["decision_reason"], "checked with the data owner");

    // Bob's open page drops it within a second or so, without a reload, and says why.
    until_true(
        &bob,
        "!document.getElementById('approval-browser-1')",
        "the accepted approval to leave bob's page",
    )
    .await;
    assert_eq!(
        script(&bob, "return window.notReloaded === true;").await,
        Value::Bool(true)
    );
    assert!(
        script(
            &bob,
            "return document.getElementById('approval-browser-2') !== null;"
        )
        .await
        .as_bool()
        .unwrap_or(false),
        "the other approval stays"
    );
    let announced = script(
        &bob,
        "return document.getElementById('announcer').textContent;",
    )
    .await;
    assert!(
        announced
            .as_str()
            .unwrap_or_default()
            .contains("browser-1 was accepted by alice"),
        "{announced}"
    );

    // A form stripped of its CSRF token is refused and decides nothing.
    bob.goto(&app.url("/ui/approvals/browser-2"))
        .await
        .expect("detail");
    bob.wait()
        .at_most(WITHIN)
        .for_element(Locator::Css("button.reject"))
        .await
        .expect("the form");
    script(
        &bob,
        "document.querySelector('form.decide input[name=csrf]').remove(); return null;",
    )
    .await;
    bob.find(Locator::Css("button.reject"))
        .await
        .expect("reject button")
        .click()
        .await
        .expect("reject");
    until_true(
        &bob,
        "document.body.innerText.includes('did not come from your inbox')",
        "the refusal",
    )
    .await;
    let record: Value = app
        .get("browser-2", &app.tokens.reviewer)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(record["status"], "pending");

    // Self-approval: carol (an admin) submitted it; her page says she cannot decide it, and
    // offers no buttons that would only be refused.
    app.park_as(&app.tokens.admin, "carols-own").await;
    let carol = driver.browser().await;
    sign_in(&carol, &app, &app.tokens.admin).await;
    carol
        .goto(&app.url("/ui/approvals/carols-own"))
        .await
        .expect("detail");
    carol
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css("#own-request"))
        .await
        .expect("the explanation");
    assert!(
        text(&carol).await.contains("another reviewer must"),
        "{}",
        text(&carol).await
    );
    assert!(
        carol.find(Locator::Css("button.accept")).await.is_err(),
        "no decision form for her own request"
    );
    screenshot(&carol, "self-approval").await;

    // Phone width: nothing scrolls sideways, every row still names its fields.
    alice.set_window_size(390, 844).await.expect("resize");
    alice.goto(&app.url("/ui/approvals")).await.expect("inbox");
    until_true(
        &alice,
        "document.getElementById('approval-browser-2')",
        "the row",
    )
    .await;
    assert_eq!(
        script(
            &alice,
            "return document.documentElement.scrollWidth <= window.innerWidth;"
        )
        .await,
        Value::Bool(true),
        "the inbox scrolls sideways at phone width"
    );
    screenshot(&alice, "inbox-phone").await;

    for browser in [alice, bob, carol] {
        let _ = browser.close().await;
    }
}

/// The browser's cookie is shared by its tabs: a reviewer who signs in to another tenant in a
/// second tab must not see that tenant's list appear in the first tab's page, under the first
/// tenant's name. The first tab stops following live and says why; what it showed stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_elsewhere_in_another_tab_is_not_swapped_into_an_open_page() {
    let app = TestApp::spawn().await;
    app.park("tab-1").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    let (first_tab, second_tab) = signed_in_with_a_second_tab(&browser, &app).await;
    until_true(
        &browser,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;

    another_tenant_signs_in_there(&browser, &app, &first_tab, &second_tab).await;

    // Something happens in the first tab's tenant: its page fetches itself again, with the
    // browser's cookie, which is now mallory's.
    app.park("tab-2").await;
    until_true(
        &browser,
        "document.getElementById('stale-notice')",
        "the first tab to say it is no longer live",
    )
    .await;
    assert!(
        script(
            &browser,
            "return document.getElementById('approval-tab-1') !== null;"
        )
        .await
        .as_bool()
        .unwrap_or(false),
        "the first tab still shows its own tenant's list: {}",
        text(&browser).await
    );
    assert!(
        text(&browser).await.contains("Reload"),
        "{}",
        text(&browser).await
    );
    screenshot(&browser, "stale-tab").await;
    let _ = browser.close().await;
}

/// A detail page opened from the list (its address names no tenant) whose browser then signed
/// in to another tenant in another tab: fetched again, it is not found there (404). It says
/// it is no longer live, as any page of another session does; it said "Live updates stopped
/// (404)", kept its decision form live, and a reload showed "Not found" for an approval still
/// waiting in its own tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detail_page_whose_browser_signed_in_to_another_tenant_says_it_is_no_longer_live() {
    let app = TestApp::spawn().await;
    app.park("only-here").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    let (first_tab, second_tab) = signed_in_with_a_second_tab(&browser, &app).await;
    browser
        .goto(&app.url("/ui/approvals/only-here"))
        .await
        .expect("the detail page");
    until_true(
        &browser,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;

    another_tenant_signs_in_there(&browser, &app, &first_tab, &second_tab).await;
    until_true(
        &browser,
        "document.getElementById('stale-notice')",
        "the page to say it is no longer live",
    )
    .await;
    let stopped = script(
        &browser,
        "return document.querySelector('#paused-notice[data-stopped]') !== null;",
    )
    .await;
    assert_eq!(stopped.as_bool(), Some(false), "{}", text(&browser).await);
    let _ = browser.close().await;
}

/// Signed out in another tab: the open page's live stream is refused from then on, and the
/// page says it is no longer live rather than going quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_session_was_signed_out_elsewhere_says_it_is_no_longer_live() {
    let app = TestApp::spawn().await;
    app.park("signed-out-1").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    until_true(
        &browser,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;
    let (first_tab, _second_tab) = open_second_tab(&browser).await;
    browser
        .goto(&app.url("/ui/approvals"))
        .await
        .expect("the inbox");
    browser
        .find(Locator::Css("form[action='/ui/logout'] button"))
        .await
        .expect("the sign-out button")
        .click()
        .await
        .expect("sign out");
    browser
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css("#token"))
        .await
        .expect("the sign-in page");
    to_tab(&browser, &first_tab).await;

    until_true(
        &browser,
        "document.getElementById('stale-notice')",
        "the first tab to say it is no longer live",
    )
    .await;
    assert!(
        script(
            &browser,
            "return document.getElementById('approval-signed-out-1') !== null;"
        )
        .await
        .as_bool()
        .unwrap_or(false),
        "what the page showed stays: {}",
        text(&browser).await
    );
    let _ = browser.close().await;
}

/// The store goes down under an open page: its stream ends and its reconnect is refused (503)
/// for good, as far as the browser's `EventSource` goes. The page says it is paused, opens
/// the stream again once the store is back, and follows live again, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_stream_was_refused_follows_again_once_the_store_is_back() {
    let mut app = TestApp::spawn_durable().await;
    app.park("outage-1").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    until_true(
        &browser,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;
    script(&browser, "window.notReloaded = true; return null;").await;

    app.redis.as_mut().expect("redis").stop();
    until_true(
        &browser,
        "document.getElementById('paused-notice')",
        "the page to say it is paused",
    )
    .await;
    screenshot(&browser, "paused").await;
    app.redis.as_mut().expect("redis").restart().await;
    until_true(
        &browser,
        "!document.getElementById('paused-notice')",
        "the stream to open again",
    )
    .await;

    app.park("outage-2").await;
    until_true(
        &browser,
        "document.getElementById('approval-outage-2')",
        "the new approval, live",
    )
    .await;
    assert_eq!(
        script(&browser, "return window.notReloaded === true;").await,
        json!(true),
        "followed without a reload"
    );
    let _ = browser.close().await;
}

/// What an open page tells a reviewer without anything else happening in the tenant: an
/// approval entering the last fifth of its life is marked expiring soon by the page's clock
/// (it was marked only when the page was rendered again, so a quiet tenant's open tab never
/// showed it); the window's title counts what waits and follows new arrivals (a tab in the
/// background says so); and a live refresh leaves the keyboard focus where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_page_marks_what_is_expiring_soon_and_its_title_counts_what_waits() {
    // Its last fifth starts 24 s after parking: time for a loaded machine to load the page.
    let app = TestApp::spawn_with(|s| s.approvals.default_ttl = Duration::from_secs(30)).await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    app.park("soon-1").await;
    browser
        .goto(&app.url("/ui/approvals"))
        .await
        .expect("the inbox");
    until_true(
        &browser,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;
    let rendered_soon = script(&browser, "return document.querySelector('.soon') !== null;")
        .await
        .as_bool()
        .unwrap_or(true);
    assert!(
        !rendered_soon,
        "rendered within 24 s of parking, nothing is expiring soon yet (a slow start?)"
    );
    assert_eq!(
        script(&browser, "return document.title;").await,
        "(1) Waiting for a decision · Approvals inbox"
    );

    // Focus on the first approval's link; another arrives and the list is swapped live.
    script(
        &browser,
        "document.getElementById('open-soon-1').focus(); return null;",
    )
    .await;
    app.park("soon-2").await;
    until_true(
        &browser,
        "document.title.startsWith('(2) ')",
        "the title to count the new arrival",
    )
    .await;
    until_true(
        &browser,
        "document.getElementById('approval-soon-2')",
        "the new arrival's row",
    )
    .await;
    assert_eq!(
        script(&browser, "return document.activeElement.id;").await,
        "open-soon-1",
        "the focus stays on the link it was on"
    );

    // Nothing else happens: the clock alone marks the first one (24 s after it was parked).
    until_true_within(
        &browser,
        "document.querySelector('#approval-soon-1.expiring .soon')",
        "the first approval to be marked expiring soon",
        Duration::from_secs(45),
    )
    .await;
    screenshot(&browser, "inbox-expiring-soon").await;
    let _ = browser.close().await;
}

/// An approval's page whose live stream was refused (the tenant's streams at their limit)
/// while another reviewer decided shows the decision without a reload. It kept the pending
/// badge and the form for good: a first stream that was refused never looked again once it
/// opened, and a detail page's look skipped the swap (to keep a reason being typed) even when
/// the approval had been decided meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_page_shows_a_decision_made_while_its_stream_was_refused() {
    let app = TestApp::spawn_with(|s| s.approvals.max_event_streams_per_tenant = 1).await;
    app.park("missed-1").await;
    // The tenant's one stream, held by someone else.
    let held = app
        .request(
            reqwest::Method::GET,
            &format!("/v1/tenants/{}/events", app.tenant),
            Some(&app.tokens.admin),
        )
        .send()
        .await
        .expect("a stream");
    assert_eq!(held.status(), reqwest::StatusCode::OK);
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    browser
        .goto(&app.url("/ui/approvals/missed-1"))
        .await
        .expect("the approval's page");
    until_true(
        &browser,
        "document.getElementById('paused-notice')",
        "the page to say it is not following",
    )
    .await;
    script(&browser, "window.notReloaded = true; return null;").await;

    let bob = app
        .decide("missed-1", "accept", &app.tokens.reviewer2)
        .await;
    assert_eq!(bob.status(), reqwest::StatusCode::OK);
    drop(held);
    // The slot is free once the server notices (its next keep-alive, 15 s), and the page's
    // next attempt follows its backoff.
    until_true_within(
        &browser,
        "document.getElementById('live-region').dataset.status === 'accepted'",
        "the decision on the page",
        Duration::from_secs(60),
    )
    .await;
    let page = text(&browser).await;
    assert!(page.contains("accepted by bob"), "{page}");
    assert_eq!(
        script(&browser, "return window.notReloaded === true;").await,
        json!(true),
        "followed without a reload"
    );
    let _ = browser.close().await;
}

/// A live refresh refused (here: the reviewer's token at its limit of requests in flight) is
/// said on the page and tried again until it works. It was dropped without a word ("the next
/// event tries again"), and in a quiet tenant no next event came: a decided approval stayed
/// on the list as waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_is_said_and_tried_again() {
    let app = TestApp::spawn_with(|s| s.limits.max_requests_per_caller = 2).await;
    app.park("limited-1").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    // The stream is open once an arrival shows live.
    app.park("limited-2").await;
    until_true(
        &browser,
        "document.getElementById('approval-limited-2')",
        "an arrival, live",
    )
    .await;

    // Submits whose bodies never finish hold the token's two places.
    let (bodies, requests) =
        crate::fairness::hold_token_places(&app, &app.tokens.reviewer, 2).await;
    let bob = app
        .decide("limited-1", "accept", &app.tokens.reviewer2)
        .await;
    assert_eq!(bob.status(), reqwest::StatusCode::OK);
    until_true(
        &browser,
        "document.getElementById('paused-notice')",
        "the page to say it is out of date",
    )
    .await;
    assert_eq!(
        script(
            &browser,
            "return document.getElementById('approval-limited-1') !== null;"
        )
        .await,
        json!(true),
        "the refresh was refused"
    );

    drop(bodies);
    for request in requests {
        let _ = request.await;
    }
    until_true(
        &browser,
        "!document.getElementById('approval-limited-1') && !document.getElementById('paused-notice')",
        "the refresh, tried again",
    )
    .await;
    let _ = browser.close().await;
}

/// A list filtered by agent (which reads up to 5 pages of the tenant to fill one) is fetched
/// again only for events that can change it: another agent's arrival costs it nothing. It was
/// fetched again for every event of the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_filtered_by_agent_follows_only_that_agents_arrivals() {
    let app = TestApp::spawn().await;
    app.park_for_agent("rare-1", "agent-rare").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    browser
        .goto(&app.url("/ui/approvals?agent=agent-rare"))
        .await
        .expect("the filtered inbox");
    until_true(
        &browser,
        "document.body.hasAttribute('data-stream-open')",
        "the live stream",
    )
    .await;
    // Its event received and every refresh it caused done: the stream's first look may show
    // the arrival before its event comes (up to a poll interval later), whose refresh then
    // ran after the count below began.
    app.park_for_agent("rare-2", "agent-rare").await;
    until_the_page_settles_after(&browser, "rare-2").await;
    screenshot(&browser, "inbox-filtered-by-agent").await;
    script(
        &browser,
        "window.fetched = 0; const real = window.fetch; \
         window.fetch = function () { window.fetched += 1; return real.apply(this, arguments); }; \
         return null;",
    )
    .await;
    // Another agent's arrival, then one of the filtered agent's: events come in order, so
    // once the second shows, the first was seen.
    app.park_for_agent("busy-1", "agent-busy").await;
    app.park_for_agent("rare-3", "agent-rare").await;
    until_the_page_settles_after(&browser, "rare-3").await;
    assert_eq!(
        script(&browser, "return window.fetched;").await,
        json!(1),
        "fetched for the agent's arrival only"
    );
    assert_eq!(
        script(
            &browser,
            "return document.getElementById('approval-busy-1') === null;"
        )
        .await,
        json!(true)
    );
    let _ = browser.close().await;
}

/// The countdown follows the server's clock, not the browser's: a browser two hours fast
/// showed "expired" for an approval with most of its hour left, and the reviewer left it to
/// expire. The page learns the server's time with each render (here a live swap after the
/// browser's clock jumped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_countdown_follows_the_servers_clock_not_the_browsers() {
    let app = TestApp::spawn_with(|s| s.approvals.default_ttl = Duration::from_secs(3600)).await;
    app.park("clock-1").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    until_true(
        &browser,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;
    let countdown = "document.querySelector('#approval-clock-1 [data-expires-at]').textContent";
    until_true(
        &browser,
        &format!("{countdown}.endsWith(' left')"),
        "a countdown",
    )
    .await;

    script(
        &browser,
        "const real = Date.now.bind(Date); Date.now = () => real() + 2 * 3600 * 1000; return null;",
    )
    .await;
    app.park("clock-2").await;
    until_true(
        &browser,
        "document.getElementById('approval-clock-2')",
        "the new arrival, live",
    )
    .await;
    // A second tick after the swap, with the new server time.
    until_true(
        &browser,
        &format!("{countdown}.endsWith(' left') && document.querySelector('#approval-clock-2 [data-expires-at]').textContent.endsWith(' left')"),
        "both countdowns running by the server's clock",
    )
    .await;
    let shown = script(&browser, &format!("return {countdown};")).await;
    assert!(
        shown.as_str().is_some_and(|t| t.contains("min left")),
        "{shown}"
    );
    let _ = browser.close().await;
}

/// A reviewer signed in follows a link to an approval from elsewhere (a chat, webmail: another
/// site) and lands on that approval. With a `SameSite=Strict` cookie the browser left the
/// session behind on such a navigation, and the link led to the sign-in page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_from_another_site_opens_the_approval_for_a_signed_in_reviewer() {
    let app = TestApp::spawn().await;
    app.park("linked-from-chat").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    // A page of another site (an opaque origin) holding the link a notification carries.
    let link = app.url("/ui/approvals/linked-from-chat");
    browser
        .goto(&format!(
            "data:text/html,<a id=\"go\" href=\"{link}\">Approval waiting</a>"
        ))
        .await
        .expect("the other site's page");
    browser
        .find(Locator::Css("#go"))
        .await
        .expect("the link")
        .click()
        .await
        .expect("follow the link");
    let landed = browser
        .wait()
        .at_most(WITHIN)
        .for_element(Locator::Css("button.accept, #token"))
        .await
        .expect("a page of the inbox");
    let url = browser.current_url().await.expect("url").to_string();
    assert_eq!(
        landed.attr("id").await.expect("attribute"),
        None,
        "the sign-in page, at {url}"
    );
    assert!(url.ends_with("/ui/approvals/linked-from-chat"), "{url}");
    let _ = browser.close().await;
}

/// A reason being typed on an approval's page survives refreshes that overlap: a "check only"
/// refresh (a reconnected stream's) asked for while another ran was queued as a full one, and
/// swapped the page, emptying the reason. Here each stream ends after a second and every
/// refresh takes 2.5 s, so they overlap every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reason_being_typed_survives_overlapping_refreshes() {
    let app =
        TestApp::spawn_with(|s| s.approvals.events_max_duration = Duration::from_secs(1)).await;
    app.park("typing-1").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    browser
        .goto(&app.url("/ui/approvals/typing-1"))
        .await
        .expect("the approval's page");
    until_true(
        &browser,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;
    script(
        &browser,
        "var real = window.fetch; window.refreshes = 0; \
         window.fetch = function (url, options) { \
           return new Promise(function (done) { setTimeout(done, 2500); }) \
             .then(function () { return real(url, options); }) \
             .then(function (r) { window.refreshes += 1; return r; }); }; \
         return null;",
    )
    .await;
    browser
        .find(Locator::Css("#reason"))
        .await
        .expect("the reason field")
        .send_keys("checked with the data owner")
        .await
        .expect("type a reason");
    // Two refreshes done: the second was asked for while the first ran.
    until_true_within(
        &browser,
        "window.refreshes >= 2",
        "two refreshes",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        script(&browser, "return document.getElementById('reason').value;").await,
        json!("checked with the data owner"),
        "{}",
        text(&browser).await
    );
    let _ = browser.close().await;
}

/// A page that can no longer be read (its approval gone: retention, a repair) says live
/// updates stopped and to reload; it said "Trying again" and never did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_cannot_be_read_again_says_live_updates_stopped() {
    let app =
        TestApp::spawn_with(|s| s.approvals.events_max_duration = Duration::from_secs(1)).await;
    app.park("gone-1").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    browser
        .goto(&app.url("/ui/approvals/gone-1"))
        .await
        .expect("the approval's page");
    until_true(
        &browser,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;
    let mut redis = app.redis.as_ref().expect("redis").connection().await;
    let removed: usize = redis::cmd("DEL")
        .arg(format!("approval:{}:gone-1", app.tenant))
        .arg(format!("approvals:shadow:{}:gone-1", app.tenant))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(removed >= 1);
    // The next stream's opening checks the page again, and finds it gone.
    until_true(
        &browser,
        "(document.getElementById('paused-notice') || {}).textContent \
           && document.getElementById('paused-notice').textContent.indexOf('stopped') >= 0",
        "the page to say live updates stopped",
    )
    .await;
    let notice = script(
        &browser,
        "return document.getElementById('paused-notice').textContent;",
    )
    .await;
    assert!(
        notice.as_str().unwrap_or_default().contains("404"),
        "{notice}"
    );
    let _ = browser.close().await;
}

/// An approval's page opened from a notification's link (naming its tenant) whose browser then
/// signs in to another tenant in another tab says it is no longer live, as a list does: it
/// said "live updates stopped (409)" and kept its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_page_whose_browser_signed_in_elsewhere_says_it_is_no_longer_live() {
    let app = TestApp::spawn().await;
    app.park("linked-tab-1").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    let (first_tab, second_tab) = signed_in_with_a_second_tab(&browser, &app).await;
    browser
        .goto(&app.url(&format!("/ui/approvals/linked-tab-1?tenant={}", app.tenant)))
        .await
        .expect("the linked page");
    until_true(
        &browser,
        "document.body.dataset.liveReady === 'true'",
        "the live stream",
    )
    .await;

    another_tenant_signs_in_there(&browser, &app, &first_tab, &second_tab).await;

    let bob = app
        .decide("linked-tab-1", "accept", &app.tokens.reviewer2)
        .await;
    assert_eq!(bob.status(), reqwest::StatusCode::OK);
    until_true(
        &browser,
        "document.getElementById('stale-notice')",
        "the page to say it is no longer live",
    )
    .await;
    assert_eq!(
        script(
            &browser,
            "return document.getElementById('paused-notice') === null;"
        )
        .await,
        json!(true),
        "{}",
        text(&browser).await
    );
    let _ = browser.close().await;
}

/// Sends a Chrome DevTools command to `browser`, through its chromedriver.
async fn devtools(driver: &Driver, browser: &Client, cmd: &str, params: Value) {
    let session = browser
        .session_id()
        .await
        .expect("a session id")
        .expect("a session");
    let response = reqwest::Client::new()
        .post(format!("{}/session/{session}/goog/cdp/execute", driver.url))
        .json(&json!({ "cmd": cmd, "params": params }))
        .send()
        .await
        .expect("chromedriver answers");
    assert!(response.status().is_success(), "{cmd}: {response:?}");
}

/// A decision made before the page's first live stream opened (here the stream's request is
/// held back, as on a slow link between the page and its stream) is shown once it opens. A
/// first stream starts at "now", and the page checked itself again only on a reconnect: the
/// approval stayed "pending" with its form, on a page that said it was live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_before_the_first_stream_opened_is_shown() {
    let app = TestApp::spawn().await;
    app.park("missed-2").await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    // The stream's request waits in the browser until the domain is disabled.
    devtools(
        &driver,
        &browser,
        "Fetch.enable",
        json!({"patterns": [{"urlPattern": "*/ui/events*", "requestStage": "Request"}]}),
    )
    .await;
    browser
        .goto(&app.url("/ui/approvals/missed-2"))
        .await
        .expect("the approval's page");
    until_true(
        &browser,
        "document.readyState === 'complete'",
        "the page and its script",
    )
    .await;
    script(&browser, "window.notReloaded = true; return null;").await;

    let bob = app
        .decide("missed-2", "accept", &app.tokens.reviewer2)
        .await;
    assert_eq!(bob.status(), reqwest::StatusCode::OK);
    devtools(&driver, &browser, "Fetch.disable", json!({})).await;
    until_true_within(
        &browser,
        "document.getElementById('live-region').dataset.status === 'accepted'",
        "the decision on the page",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        script(&browser, "return window.notReloaded === true;").await,
        json!(true),
        "followed without a reload"
    );
    let _ = browser.close().await;
}

/// At its deadline an approval's page stops offering a decision, though its expiry is not
/// recorded yet (no sweep, no reader): Accept stayed clickable under "expired", for a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_page_stops_offering_a_decision_at_the_deadline() {
    let app = TestApp::spawn_with(|s| {
        // Long enough for the page to load and be looked at before the deadline on a loaded
        // machine; the countdown is then waited for.
        s.approvals.default_ttl = Duration::from_secs(20);
        s.approvals.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    app.park("deadline-1").await;
    browser
        .goto(&app.url("/ui/approvals/deadline-1"))
        .await
        .expect("the approval's page");
    assert_eq!(
        script(
            &browser,
            "return document.querySelector('form.decide button.accept').disabled;"
        )
        .await,
        json!(false),
        "open before the deadline"
    );
    until_true_within(
        &browser,
        "document.querySelector('[data-expires-at]').textContent === 'expired'",
        "the countdown to reach the deadline",
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(
        script(
            &browser,
            "return [...document.querySelectorAll('form.decide button')].every(b => b.disabled);"
        )
        .await,
        json!(true)
    );
    assert!(text(&browser).await.contains("Time is up"));
    let _ = browser.close().await;
}

/// A list of accepted approvals is not fetched again for each approval parked (none can
/// appear on it; on Temporal each fetch read the tenant's whole history), and still is for a
/// decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_page_is_not_fetched_again_for_each_arrival() {
    let app = TestApp::spawn().await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    sign_in(&browser, &app, &app.tokens.reviewer).await;
    browser
        .goto(&app.url("/ui/approvals?status=accepted"))
        .await
        .expect("the accepted list");
    let fetches = "performance.getEntriesByType('resource')\
                   .filter(e => e.name.includes('/ui/approvals?status=accepted')).length";
    // The look the page takes when its stream opens.
    until_true(&browser, &format!("{fetches} === 1"), "the first look").await;

    for n in 0..3 {
        app.park(&format!("arrival-{n}")).await;
    }
    let bob = app
        .decide("arrival-0", "accept", &app.tokens.reviewer2)
        .await;
    assert_eq!(bob.status(), reqwest::StatusCode::OK);
    until_true(
        &browser,
        "document.getElementById('approval-arrival-0')",
        "the accepted approval on the list",
    )
    .await;
    assert_eq!(
        script(&browser, &format!("return {fetches};")).await,
        json!(2),
        "fetched again for the decision only"
    );
    let _ = browser.close().await;
}
