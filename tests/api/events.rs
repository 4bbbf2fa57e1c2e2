//! Live events (`GET /v1/tenants/{t}/events`, Server-Sent Events): what reviewers' tools and
//! the inbox watch. Parked, decided and expired approvals appear as they happen on any
//! instance, a reconnect resumes after its `Last-Event-ID`, and the stream keeps the tenant
//! rules of the rest of `/v1`.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{assert_problem, Backend, Harness, TestApp};

contract_tests!(
    parked_decided_and_expired_approvals_appear_live_from_any_instance,
    a_reconnect_resumes_after_its_last_event_id,
    the_stream_keeps_the_tenant_rules_and_refuses_bad_ids,
    what_another_instance_wrote_shows_up_once_even_when_late,
    a_resume_repeats_only_what_it_could_have_missed,
    a_stream_left_before_its_first_event_resumes_from_its_start,
    a_stream_opened_without_an_id_starts_now,
);

/// One SSE event as a client parses it.
#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    id: String,
    data: Value,
}

/// Reads SSE frames from a streaming response.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn open(app: &TestApp, base: &str, token: &str, last_event_id: Option<&str>) -> Self {
        let mut request = app
            .http
            .get(format!("{base}/v1/tenants/{}/events", app.tenant))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The `id:` of the stream's first frame (its `retry:` advice), if it has one.
    async fn greeting_id(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while !self.buffer.contains("\n\n") {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("the greeting comes at once")
                .expect("the stream reads")
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
        let end = self.buffer.find("\n\n").unwrap_or_default();
        let frame: String = self.buffer.drain(..end + 2).collect();
        assert!(frame.contains("retry:"), "the first frame: {frame:?}");
        frame
            .lines()
            .find_map(|line| line.strip_prefix("id:"))
            .map(|id| id.trim().to_owned())
    }

    /// The next frame that carries an `id:`, named or not: `(event, id)`.
    async fn next_with_id(&mut self, within: Duration) -> (Option<String>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                if let Some(id) = field("id:") {
                    return (field("event:"), id);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no id within {within:?}; read {:?}", self.buffer))
                .expect("the stream reads")
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event with a name (comments, keep-alives and `retry:` skipped).
    async fn next(&mut self, within: Duration) -> SseEvent {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (None, None, String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if let (Some(event), Some(id)) = (event, id) {
                    let data = serde_json::from_str(&data).expect("data is JSON");
                    return SseEvent { event, id, data };
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {within:?}; read {:?}", self.buffer))
                .expect("the stream reads")
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

const WITHIN: Duration = Duration::from_secs(15);

/// A reviewer's reason holding a line separator other than CR and LF (U+2028, U+2029, U+0085,
/// which JSON leaves unescaped) reaches a client as an escape on one `data:` line: clients that
/// split lines with their language's line splitting (Python's httpx) cut the raw character's
/// line in two, could not read the event, and every reconnect replayed it. Behind nginx, the
/// stream is not buffered (`X-Accel-Buffering: no`).
#[tokio::test]
async fn a_reason_with_a_line_separator_arrives_on_one_data_line() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .get(app.url(&format!("/v1/tenants/{}/events", app.tenant)))
        .bearer_auth(&app.tokens.reviewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut live = SseReader {
        response,
        buffer: String::new(),
    };
    app.park("odd-reason").await;
    let reason = "no\u{2028}not now\u{2029}and\u{85}never";
    let decided = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{}/approvals/odd-reason/reject", app.tenant),
            Some(&app.tokens.reviewer),
        )
        .json(&json!({ "reason": reason }))
        .send()
        .await
        .unwrap();
    assert_eq!(decided.status(), StatusCode::OK);
    let mut raw = String::new();
    while !raw.contains("event: decided") || !raw.ends_with("\n\n") {
        let chunk = tokio::time::timeout(WITHIN, live.response.chunk())
            .await
            .expect("the decision, live")
            .expect("the stream reads")
            .expect("the stream stays open");
        raw.push_str(&String::from_utf8_lossy(&chunk));
    }
    let frame = &raw[raw.find("event: decided").unwrap_or_default()..];
    // Split as Python splits text: every data line is still whole JSON.
    let data: Vec<&str> = frame
        .split(['\n', '\r', '\u{2028}', '\u{2029}', '\u{85}'])
        .filter_map(|line| line.strip_prefix("data:"))
        .collect();
    assert_eq!(data.len(), 1, "{frame:?}");
    let event: Value = serde_json::from_str(data[0].trim()).expect("one line of JSON");
    assert_eq!(event["details"]["reason"], reason, "{event}");
}

async fn parked_decided_and_expired_approvals_appear_live_from_any_instance(h: Harness) {
    let tenant = h.tenant.clone();
    let app = h
        .spawn_with(|s| {
            s.approvals
                .tenant_ttl
                .insert(tenant.clone(), Duration::from_secs(8));
        })
        .await;
    let (other, _stop) = app.second_instance().await;
    let mut live = SseReader::open(&app, &app.base, &app.tokens.reviewer, None).await;

    app.park("first").await;
    let allowed = app
        .submit(
            "allowed",
            json!({"type": "document_read", "resource": "docs/handbook.md"}),
        )
        .await;
    assert_eq!(allowed.status(), StatusCode::OK, "an allow parks nothing");
    // Decided on the other instance: the stream on this one shows it.
    let decided = app
        .http
        .post(format!(
            "{other}/v1/tenants/{}/approvals/first/accept",
            app.tenant
        ))
        .bearer_auth(&app.tokens.reviewer)
        .json(&json!({"reason": "fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(decided.status(), StatusCode::OK);

    let parked = live.next(WITHIN).await;
    assert_eq!(
        (parked.event.as_str(), parked.data["approval_id"].as_str()),
        ("parked", Some("first")),
        "{parked:?}"
    );
    assert_eq!(parked.data["event_id"], parked.id.as_str());
    assert_eq!(parked.data["details"]["decision"], "require_approval");
    let accepted = live.next(WITHIN).await;
    assert_eq!(
        (
            accepted.event.as_str(),
            accepted.data["approval_id"].as_str()
        ),
        ("decided", Some("first")),
        "{accepted:?}"
    );
    assert_eq!(accepted.data["kind"], "accepted");
    assert_eq!(accepted.data["actor"], "alice");
    // Parked once the decision was seen: on Temporal another instance's event reaches the
    // audit through visibility, a moment after this instance's own would.
    app.park("second").await;
    let second = live.next(WITHIN).await;
    assert_eq!(
        (second.event.as_str(), second.data["approval_id"].as_str()),
        ("parked", Some("second")),
        "{second:?} (the allowed submit is no live event)"
    );
    // Nobody decides the second: its TTL (8 s) runs out.
    let expired = live.next(WITHIN).await;
    assert_eq!(
        (expired.event.as_str(), expired.data["approval_id"].as_str()),
        ("expired", Some("second")),
        "{expired:?}"
    );
}

/// What another instance writes can show up in Temporal's audit a moment after what this
/// instance wrote later (its own writes it sees at once): the stream still shows every event,
/// each once.
async fn what_another_instance_wrote_shows_up_once_even_when_late(h: Harness) {
    let app = h
        // Read right after each of this instance's writes, before the other's show up.
        .spawn_with(|s| s.approvals.events_poll_interval = Duration::from_millis(5))
        .await;
    let (other, _stop) = app.second_instance().await;
    let mut live = SseReader::open(&app, &app.base, &app.tokens.reviewer, None).await;
    let expected = app.park_alternately(&other, 10).await;
    let mut shown = Vec::new();
    while shown.len() < expected.len() {
        let event = live.next(WITHIN).await;
        assert_eq!(event.event, "parked", "{event:?}");
        shown.push(event.data["approval_id"].as_str().unwrap().to_owned());
    }
    let distinct: std::collections::BTreeSet<String> = shown.iter().cloned().collect();
    assert_eq!(distinct, expected, "each parked approval once: {shown:?}");
}

async fn a_reconnect_resumes_after_its_last_event_id(h: Harness) {
    let app = h.spawn().await;
    let mut live = SseReader::open(&app, &app.base, &app.tokens.admin, None).await;
    app.park("one").await;
    let one = live.next(WITHIN).await;
    assert_eq!(one.data["approval_id"], "one");
    drop(live);

    // While nobody watches.
    app.park("two").await;
    assert_eq!(
        app.decide("one", "reject", &app.tokens.reviewer)
            .await
            .status(),
        StatusCode::OK
    );

    let mut resumed = SseReader::open(&app, &app.base, &app.tokens.admin, Some(&one.id)).await;
    let seen: Vec<(String, String)> = [resumed.next(WITHIN).await, resumed.next(WITHIN).await]
        .into_iter()
        .map(|e| (e.event, e.data["approval_id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        seen,
        [
            ("parked".to_owned(), "two".to_owned()),
            ("decided".to_owned(), "one".to_owned())
        ]
    );
}

/// A client whose stream ends or breaks before its first event (a quiet tenant, a network
/// blip) resumes from where that stream started, not from its reconnect: what was parked in
/// between is not lost. The stream's greeting hands out that position as an event id.
async fn a_stream_left_before_its_first_event_resumes_from_its_start(h: Harness) {
    let app = h.spawn().await;
    // Recorded (and visible) before the stream starts: the resumed stream does not send it,
    // for its client saw nothing before its start. On Temporal it sent the settle window.
    app.park("before-start").await;
    until_in_audit(&app, "before-start").await;
    let mut live = SseReader::open(&app, &app.base, &app.tokens.admin, None).await;
    let start = live
        .greeting_id(WITHIN)
        .await
        .expect("a stream opened without Last-Event-ID tells where it started");
    drop(live);

    // While the client is away, before it saw any event.
    app.park("while-away").await;

    let mut resumed = SseReader::open(&app, &app.base, &app.tokens.admin, Some(&start)).await;
    assert_eq!(
        resumed.greeting_id(WITHIN).await,
        None,
        "it has an id already"
    );
    let event = resumed.next(WITHIN).await;
    assert_eq!(
        (event.event.as_str(), &event.data["approval_id"]),
        ("parked", &json!("while-away"))
    );
}

/// On an engine whose audit settles late (Temporal), an event can become visible after a
/// client left, behind the last id it saw. A resumed stream there shows again what was recorded
/// in the settle window before its `Last-Event-ID` (never that event itself): at least once,
/// and clients drop ids they saw. On Redis, whose audit is appended in order, nothing repeats.
async fn a_resume_repeats_only_what_it_could_have_missed(h: Harness) {
    let settles_late = !matches!(h.backend, Backend::Redis);
    let app = h.spawn().await;
    let mut live = SseReader::open(&app, &app.base, &app.tokens.admin, None).await;
    app.park("zero").await;
    assert_eq!(live.next(WITHIN).await.data["approval_id"], "zero");
    app.park("one").await;
    let one = live.next(WITHIN).await;
    assert_eq!(one.data["approval_id"], "one");
    drop(live);
    app.park("two").await;

    let mut resumed = SseReader::open(&app, &app.base, &app.tokens.admin, Some(&one.id)).await;
    let mut seen = Vec::new();
    if settles_late {
        seen.push(resumed.next(WITHIN).await);
    }
    seen.push(resumed.next(WITHIN).await);
    let ids: Vec<&str> = seen
        .iter()
        .map(|e| e.data["approval_id"].as_str().unwrap_or_default())
        .collect();
    if settles_late {
        assert_eq!(ids, ["zero", "two"]);
    } else {
        assert_eq!(ids, ["two"]);
    }
}

async fn the_stream_keeps_the_tenant_rules_and_refuses_bad_ids(h: Harness) {
    let app = h
        .spawn_with(|s| s.approvals.max_event_streams_per_tenant = 1)
        .await;
    let path = format!("/v1/tenants/{}/events", app.tenant);
    let response = app
        .request(Method::GET, &path, Some(&app.tokens.agent))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    let response = app
        .request(Method::GET, &path, Some(&app.tokens.other_tenant_reviewer))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    let response = app.request(Method::GET, &path, None).send().await.unwrap();
    assert_problem(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    for bad in ["not-an-event-id", &"9".repeat(300)] {
        let response = app
            .request(Method::GET, &path, Some(&app.tokens.reviewer))
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
    // Identifiers before authorization (the contract's order), and before the stream cap.
    let response = app
        .request(Method::GET, &path, Some(&app.tokens.other_tenant_reviewer))
        .header("Last-Event-ID", "not-an-event-id")
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    // One stream per tenant here: a second is refused while the first is open.
    let _first = SseReader::open(&app, &app.base, &app.tokens.reviewer, None).await;
    let response = app
        .request(Method::GET, &path, Some(&app.tokens.admin))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "too_many_streams").await;
    let response = app
        .request(Method::GET, &path, Some(&app.tokens.admin))
        .header("Last-Event-ID", "not-an-event-id")
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
}

/// Streams opened together (a deploy's clients reconnecting) do not all end together: each
/// lasts `approvals.events_max_duration` less a random part of its last tenth, so the next
/// reconnects, and the audit reads each resume costs, are spread rather than one wave every
/// time.
#[tokio::test]
async fn streams_opened_together_end_spread_over_the_last_tenth_of_their_time() {
    let max = Duration::from_secs(10);
    let app = crate::support::TestApp::spawn_with(move |s| {
        s.approvals.events_max_duration = max;
        s.approvals.max_event_streams_per_tenant = 100;
    })
    .await;
    let lifetimes = futures::future::join_all((0..8).map(|_| async {
        let opened = Instant::now();
        let mut reader = SseReader::open(&app, &app.base, &app.tokens.reviewer, None).await;
        while let Some(_chunk) = tokio::time::timeout(max * 3, reader.response.chunk())
            .await
            .expect("the stream ends")
            .expect("the stream reads")
        {}
        opened.elapsed()
    }))
    .await;
    for lifetime in &lifetimes {
        assert!(*lifetime >= max * 9 / 10, "a stream lasted {lifetime:?}");
    }
    let (shortest, longest) = (lifetimes.iter().min(), lifetimes.iter().max());
    let spread = longest
        .zip(shortest)
        .map(|(l, s)| *l - *s)
        .unwrap_or_default();
    assert!(
        spread >= Duration::from_millis(200),
        "8 streams opened together ended within {spread:?} of each other: {lifetimes:?}"
    );
}

/// One caller (here a reviewer's token; a session is its subject too) holds at most a fifth of
/// the tenant's live streams: its tabs or a script cannot take all of them from the others.
#[tokio::test]
async fn one_caller_cannot_take_every_live_stream_of_its_tenant() {
    let app = crate::support::TestApp::spawn_with(|s| {
        s.approvals.max_event_streams_per_tenant = 10;
    })
    .await;
    let path = format!("/v1/tenants/{}/events", app.tenant);
    let _held = [
        SseReader::open(&app, &app.base, &app.tokens.reviewer, None).await,
        SseReader::open(&app, &app.base, &app.tokens.reviewer, None).await,
    ];
    let third = app
        .request(Method::GET, &path, Some(&app.tokens.reviewer))
        .send()
        .await
        .unwrap();
    assert_problem(third, StatusCode::TOO_MANY_REQUESTS, "too_many_streams").await;
    // Another reviewer of the tenant still gets one.
    let _other = SseReader::open(&app, &app.base, &app.tokens.reviewer2, None).await;
}

/// A resume is for what a reconnect missed: a reviewer's `Last-Event-ID` older than
/// `approvals.events_resume_window` resumes from the window's start, not from the tenant's first
/// event (the history is the audit's, which only admins read). An admin resumes from anywhere.
/// On Redis: Temporal's resumes also re-read the 15 s before (its audit settles late), which a
/// short window would only blur; the window itself is the engines' common code.
#[tokio::test]
async fn a_reviewer_resumes_only_within_the_window_an_admin_from_anywhere() {
    // "recent" stays inside it unless the machine stalls that long before the reviewer's
    // stream opens (2 s was not always enough on a loaded machine).
    let window = Duration::from_secs(6);
    let app = TestApp::spawn_with(|s| s.approvals.events_resume_window = window).await;
    app.park("old").await;
    // The time the window is about; no event to wait for.
    tokio::time::sleep(window + Duration::from_millis(500)).await;
    app.park("recent").await;

    let from_the_start = Some("1-0");
    let mut reviewer = SseReader::open(&app, &app.base, &app.tokens.reviewer, from_the_start).await;
    let mut admin = SseReader::open(&app, &app.base, &app.tokens.admin, from_the_start).await;
    assert_eq!(admin.next(WITHIN).await.data["approval_id"], "old");
    assert_eq!(admin.next(WITHIN).await.data["approval_id"], "recent");

    let first = reviewer.next(WITHIN).await;
    assert_eq!(
        first.data["approval_id"], "recent",
        "the reviewer's replay starts within the window: {first:?}"
    );
}

/// A stream opened without a `Last-Event-ID` shows what happens from then on, not what was
/// recorded just before: on Temporal, whose reads go back over a settle window, the first read
/// sent the last 15 s again, and a bot restarted with no memory of ids acted on them twice.
async fn a_stream_opened_without_an_id_starts_now(h: Harness) {
    let app = h.spawn().await;
    app.park("before").await;
    // Visible in the audit before the stream opens: not merely late to show up.
    until_in_audit(&app, "before").await;
    let mut live = SseReader::open(&app, &app.base, &app.tokens.reviewer, None).await;
    app.park("after").await;
    let first = live.next(WITHIN).await;
    assert_eq!(first.data["approval_id"], "after", "{first:?}");
}

/// A `Last-Event-ID` the Temporal engine handed out resumes on Redis from its instant: after a
/// rollback from Temporal to Redis (the cutover runbook's), a client's saved id was refused
/// with 400 for good, and an `EventSource` stops on a refusal.
#[tokio::test]
async fn an_event_id_from_temporal_resumes_on_redis_after_a_rollback() {
    let app = TestApp::spawn().await;
    app.park("one").await;
    let audit = app
        .get_json(
            &format!("/v1/tenants/{}/audit", app.tenant),
            &app.tokens.admin,
        )
        .await;
    let at: chrono::DateTime<chrono::Utc> = audit["items"][0]["timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("the parked event's time");
    // The shape of a Temporal event id: padded milliseconds, a sequence, the approval.
    let saved = format!("{:015}-0-one", at.timestamp_millis());
    let mut live = SseReader::open(&app, &app.base, &app.tokens.admin, Some(&saved)).await;
    app.park("two").await;
    // At least once: the saved event's own millisecond may come again, then what followed.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("two") {
        let event = live.next(WITHIN).await;
        seen.push(event.data["approval_id"].as_str().unwrap_or("").to_owned());
    }
    assert!(seen.len() <= 2, "{seen:?}");
}

/// Waits until the audit lists an event of approval `id` (Temporal's shows it a moment late).
async fn until_in_audit(app: &TestApp, id: &str) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let audit = app
            .get_json(
                &format!("/v1/tenants/{}/audit", app.tenant),
                &app.tokens.admin,
            )
            .await;
        let items = audit["items"].as_array().cloned().unwrap_or_default();
        if items.iter().any(|e| e["approval_id"] == id) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never in the audit: {audit}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reviewer may resume from up to an hour back. Across a long stretch of events a stream
/// does not send (allowed actions), it pauses every few pages and tells the client how far it
/// has read: the walk is paced, and a reconnect resumes past what was walked. It read the
/// whole stretch back to back, and the client's id never moved.
#[tokio::test]
async fn a_long_stretch_of_unsent_events_is_walked_in_steps_that_move_the_resume_point() {
    let app = TestApp::spawn().await;
    let resume_from = format!("{}-0", chrono::Utc::now().timestamp_millis() - 1);
    // More allowed reads than the pages a stream reads between two pauses hold.
    let ids: Vec<String> = (0..1_200).map(|n| format!("allowed-{n:04}")).collect();
    for chunk in ids.chunks(50) {
        let submits = chunk.iter().map(|id| {
            app.submit(
                id,
                json!({"type": "document_read", "resource": "wiki/onboarding"}),
            )
        });
        for answer in futures::future::join_all(submits).await {
            assert_eq!(answer.status(), StatusCode::OK);
        }
    }
    app.park("after-the-stretch").await;

    let mut reader =
        SseReader::open(&app, &app.base, &app.tokens.reviewer, Some(&resume_from)).await;
    assert_eq!(reader.greeting_id(WITHIN).await, None);
    let (event, progress) = reader.next_with_id(WITHIN).await;
    assert_eq!(event, None, "first, how far the stream has read");
    let position = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').expect("a stream id");
        (ms.parse().expect("ms"), seq.parse().expect("seq"))
    };
    assert!(position(&progress) > position(&resume_from), "{progress}");
    // Resumed from there, the stream goes on to what it sends.
    drop(reader);
    let mut resumed = SseReader::open(&app, &app.base, &app.tokens.reviewer, Some(&progress)).await;
    let parked = loop {
        let event = resumed.next(WITHIN).await;
        if event.event == "parked" {
            break event;
        }
    };
    assert_eq!(parked.data["approval_id"], "after-the-stretch");
}

/// A platform admin's token may read every tenant: its streams are bounded across tenants too
/// (as many as one tenant may hold), not only per tenant, where made-up tenant names gave it
/// as many as it liked, each an audit read every poll interval.
#[tokio::test]
async fn one_callers_streams_are_bounded_across_tenants() {
    let app = TestApp::spawn_with(|s| s.approvals.max_event_streams_per_tenant = 5).await;
    let open = |tenant: String| {
        app.http
            .get(app.url(&format!("/v1/tenants/{tenant}/events")))
            .bearer_auth(&app.tokens.platform_admin)
            .send()
    };
    let mut streams = Vec::new();
    for n in 0..5 {
        let stream = open(format!("watched-{n}")).await.expect("open");
        assert_eq!(stream.status(), StatusCode::OK, "stream {n}");
        streams.push(stream);
    }
    let sixth = open("watched-5".into()).await.expect("open");
    assert_problem(sixth, StatusCode::TOO_MANY_REQUESTS, "too_many_streams").await;
    // Another caller is not held back.
    let mut reviewer = SseReader::open(&app, &app.base, &app.tokens.reviewer, None).await;
    reviewer.greeting_id(WITHIN).await;
}

/// The bound across tenants is per token holder, not per subject name: reviewers of different
/// tenants who happen to share a name ("ana" at six customers) are different people, and one
/// tenant's streams must not use up another's.
#[tokio::test]
async fn same_named_reviewers_of_different_tenants_do_not_share_a_stream_bound() {
    let tenants: Vec<String> = (0..6).map(|n| format!("customer-{n}")).collect();
    let minted: Vec<_> = tenants
        .iter()
        .map(|tenant| approvals::auth::mint(tenant, approvals::auth::Role::Reviewer, "ana"))
        .collect();
    let entries: Vec<_> = minted.iter().map(|(_, entry)| entry.clone()).collect();
    let app = TestApp::spawn_with(|s| {
        s.approvals.max_event_streams_per_tenant = 5;
        s.auth.tokens.extend(entries);
    })
    .await;
    let mut streams = Vec::new();
    for (tenant, (token, _)) in tenants.iter().zip(&minted) {
        let stream = app
            .http
            .get(app.url(&format!("/v1/tenants/{tenant}/events")))
            .bearer_auth(token)
            .send()
            .await
            .expect("open");
        assert_eq!(stream.status(), StatusCode::OK, "ana of {tenant}");
        streams.push(stream);
    }
}

/// On Redis, event ids are Redis' clock: a stream opened without `Last-Event-ID` starts after
/// the audit's last event, not at the instance's clock. From the instance's clock, an event
/// Redis stamped a moment before it (its clock behind the instance's) was never sent, though
/// it happened after the stream opened. Here such an event is written with an id between the
/// last event's and the instance's now, as a Redis whose clock runs behind would stamp it.
#[tokio::test]
async fn a_stream_on_redis_starts_after_the_last_event_whatever_the_clocks() {
    let app = TestApp::spawn().await;
    app.park("before").await;
    let mut admin = app.redis().connection().await;
    let audit = format!("approvals:audit:{}", app.tenant);
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&audit)
        .arg("-")
        .arg("+")
        .query_async(&mut admin)
        .await
        .unwrap();
    let last = entries.ids.last().expect("the submit's event");
    let last_ms: u64 = last.id.split('-').next().unwrap().parse().unwrap();
    let parked: String = last.get("e").expect("the event's JSON");
    // The stream opens a little after that event, on the instance's clock.
    while approvals_core::Timestamp::now().as_millis() <= i64::try_from(last_ms).unwrap() + 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut stream = SseReader::open(&app, &app.base, &app.tokens.reviewer, None).await;
    stream.greeting_id(WITHIN).await;
    let late = parked.replace("\"before\"", "\"stamped-behind\"");
    let _: String = redis::cmd("XADD")
        .arg(&audit)
        .arg(format!("{}-0", last_ms + 1))
        .arg("e")
        .arg(&late)
        .query_async(&mut admin)
        .await
        .unwrap();
    let event = stream.next(WITHIN).await;
    assert_eq!(event.event, "parked");
    assert_eq!(
        event.data["approval_id"], "stamped-behind",
        "{:?}",
        event.data
    );
}
