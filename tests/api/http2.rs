//! HTTP/2 with prior knowledge (h2c): many long-polls share one connection, and the
//! connection-level limits hold for it as they do for HTTP/1.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::connections::closed_by_server;
use crate::support::TestApp;
use crate::waiting::until_parked;

/// One HTTP/2 connection to the app: every request sent on it is a stream of that socket.
async fn http2_connection(app: &TestApp) -> SendRequest<Empty<Bytes>> {
    http2_connection_watched(app).await.0
}

/// [`http2_connection`], with the task that drives it: it ends when the connection closes.
async fn http2_connection_watched(
    app: &TestApp,
) -> (
    SendRequest<Empty<Bytes>>,
    JoinHandle<Result<(), hyper::Error>>,
) {
    http2_handshake(
        app,
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()),
    )
    .await
}

/// An HTTP/2 connection to the app whose client grants no window for any answer: the server
/// can send heads, never a byte of a body. The task drives it and ends when it closes.
async fn http2_connection_granting_no_window(
    app: &TestApp,
) -> (
    SendRequest<Empty<Bytes>>,
    JoinHandle<Result<(), hyper::Error>>,
) {
    let mut client = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    client.initial_stream_window_size(0);
    http2_handshake(app, client).await
}

/// Connects `client` to the app with prior knowledge, and drives the connection on a task.
async fn http2_handshake<B>(
    app: &TestApp,
    client: hyper::client::conn::http2::Builder<TokioExecutor>,
) -> (SendRequest<B>, JoinHandle<Result<(), hyper::Error>>)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (sender, connection) = client
        .handshake(TokioIo::new(tcp))
        .await
        .expect("the server speaks HTTP/2 with prior knowledge");
    (sender, tokio::spawn(connection))
}

/// A GET of `path` as the app's agent.
fn agent_get(app: &TestApp, path: &str) -> Request<Empty<Bytes>> {
    Request::get(app.url(path))
        .header("authorization", format!("Bearer {}", app.tokens.agent))
        .body(Empty::new())
        .unwrap()
}

/// Sends `request` on `sender`'s connection: status and JSON body.
async fn send(
    mut sender: SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
) -> (StatusCode, Value) {
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

/// A proxy or an agent fleet's client parks hundreds of long-polls on one socket, not one each,
/// and the decision reaches every one of them.
#[tokio::test]
async fn long_polls_multiplexed_on_one_http2_connection_all_learn_the_decision() {
    const WAITERS: usize = 200;
    let app = TestApp::spawn().await;
    app.park("shared").await;
    let sender = http2_connection(&app).await;
    let path = format!(
        "/v1/tenants/{}/approvals/shared/decision?wait_seconds=60",
        app.tenant
    );
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| tokio::spawn(send(sender.clone(), agent_get(&app, &path))))
        .collect();
    until_parked(&app, &app.base, WAITERS, Duration::from_secs(30)).await;
    let decided = app.decide("shared", "accept", &app.tokens.reviewer).await;
    assert_eq!(decided.status(), reqwest::StatusCode::OK);
    for waiter in waiters {
        let (status, body) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "accepted", "{body}");
    }
}

/// A long-poll longer than the header-read timeout is not cut off on HTTP/2: the server pings a
/// silent client, and a live one answers.
#[tokio::test]
async fn an_http2_long_poll_outlasts_the_silence_limit() {
    let app = TestApp::spawn_with(|s| s.server.header_read_timeout = Duration::from_secs(1)).await;
    app.park("slow").await;
    let sender = http2_connection(&app).await;
    let path = format!(
        "/v1/tenants/{}/approvals/slow/decision?wait_seconds=4",
        app.tenant
    );
    let (status, body) = send(sender.clone(), agent_get(&app, &path)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    // The same connection still serves.
    let at_once = format!(
        "/v1/tenants/{}/approvals/slow/decision?wait_seconds=0",
        app.tenant
    );
    let (status, body) = send(sender, agent_get(&app, &at_once)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A client that keeps an HTTP/2 connection open but sends nothing on it (it answers the
/// server's pings, as any HTTP/2 client does) does not keep its connection slot for ever: with
/// no request in flight for the header-read timeout, the server says goodbye and closes it, as
/// it does an idle HTTP/1.1 keep-alive.
#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let app = TestApp::spawn_with(|s| s.server.header_read_timeout = Duration::from_secs(1)).await;
    let (sender, connection) = http2_connection_watched(&app).await;
    let health = Request::get(app.url("/healthz"))
        .body(Empty::new())
        .unwrap();
    let (status, _) = send(sender.clone(), health).await;
    assert_eq!(status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the idle connection was closed by the server");
    assert!(
        matches!(ended, Ok(Ok(()))),
        "closed with a goodbye, not an error: {ended:?}"
    );
    assert!(sender.is_closed());
}

/// A connection is idle only when no answer is still being sent: a live event stream, whose
/// handler returned long ago, keeps its HTTP/2 connection open past the header-read timeout
/// (the client may still send other requests on it), and still delivers what happens.
#[tokio::test]
async fn a_live_event_stream_keeps_its_http2_connection() {
    let app = TestApp::spawn_with(|s| s.server.header_read_timeout = Duration::from_secs(1)).await;
    let (sender, connection) = http2_connection_watched(&app).await;
    let events = Request::get(app.url(&format!("/v1/tenants/{}/events", app.tenant)))
        .header("authorization", format!("Bearer {}", app.tokens.reviewer))
        .body(Empty::new())
        .unwrap();
    let response = sender.clone().send_request(events).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Past the idle limit (nothing to wait for: the time passing is what is tested).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!connection.is_finished(), "the connection was closed");
    let health = Request::get(app.url("/healthz"))
        .body(Empty::new())
        .unwrap();
    let (status, _) = send(sender, health).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the connection still takes requests"
    );
    app.park("seen-live").await;
    let mut read = String::new();
    while !read.contains("seen-live") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the parked approval arrives on the stream")
            .expect("the stream is open")
            .expect("the stream reads");
        if let Ok(data) = frame.into_data() {
            read.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

/// A connection that sends the HTTP/2 preface and then nothing is closed within the header-read
/// timeout, as a stalled HTTP/1 one is: it cannot keep its connection slot.
#[tokio::test]
async fn a_connection_stalled_after_the_http2_preface_is_closed() {
    let app = TestApp::spawn_with(|s| s.server.header_read_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // The server's SETTINGS arrive first; then it must close.
    tokio::time::timeout(Duration::from_secs(10), closed_by_server(&mut stream))
        .await
        .expect("the stalled HTTP/2 connection was closed");
}

/// A connection that has sent part of the preface and then nothing is closed too.
#[tokio::test]
async fn a_connection_stalled_inside_the_http2_preface_is_closed() {
    let app = TestApp::spawn_with(|s| s.server.header_read_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(b"PRI * HT").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the stalled connection was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// On shutdown an HTTP/2 long-poll is answered at once with the current state, as an HTTP/1.1
/// one is, and its connection, though its client would keep it (as a proxy's pool does), does
/// not hold up the drain.
#[tokio::test]
async fn shutdown_answers_http2_long_polls_and_drains() {
    let mut app = TestApp::spawn().await;
    app.park("open").await;
    let sender = http2_connection(&app).await;
    let path = format!(
        "/v1/tenants/{}/approvals/open/decision?wait_seconds=60",
        app.tenant
    );
    let waiting = tokio::spawn(send(sender.clone(), agent_get(&app, &path)));
    until_parked(&app, &app.base, 1, Duration::from_secs(10)).await;
    tokio::time::timeout(Duration::from_secs(10), app.shut_down())
        .await
        .expect("the HTTP/2 connection does not hold up the drain")
        .expect("stopped");
    drop(sender);
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pending", "{body}");
}

/// An HTTP/2 client that grants no window for its answers cannot make the server hold them
/// for everyone: each unsent answer keeps one of its caller's places in flight, so that caller
/// is refused (`429`) once they are used up, while other callers are served. When it lets go
/// of the answers, its places are free again.
#[tokio::test]
async fn an_http2_client_that_reads_no_answers_holds_only_its_own_places() {
    let app = TestApp::spawn_with(|s| s.limits.max_requests_per_caller = 2).await;
    app.park("req-1").await;
    // No window for any stream: the server can send the answers' heads, never their bodies.
    let (sender, _connection) = http2_connection_granting_no_window(&app).await;
    let path = format!("/v1/tenants/{}/approvals/req-1", app.tenant);
    let mut unread = Vec::new();
    for _ in 0..2 {
        let response = sender
            .clone()
            .send_request(agent_get(&app, &path))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        unread.push(response);
    }
    let refused = app.get("req-1", &app.tokens.agent).await;
    assert_eq!(refused.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        app.get("req-1", &app.tokens.reviewer).await.status(),
        reqwest::StatusCode::OK,
        "another caller is served"
    );
    // Dropping the unread answers resets their streams; the server lets go of them.
    drop(unread);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.get("req-1", &app.tokens.agent).await.status() != reqwest::StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "the places were never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An answer built whole that its client never takes (it grants no window) does not keep its
/// connection in flight for ever: `server.write_timeout` later the connection is closed, as an
/// HTTP/1 connection whose client stopped reading is. No token is needed for such an answer
/// (a probe, a `401`), so no caller's places bounded it, and such connections, each held
/// busy, could take every place of `server.max_connections` and shut everyone else out.
#[tokio::test]
async fn an_http2_answer_never_taken_closes_its_connection() {
    let app = TestApp::spawn_with(|s| s.server.write_timeout = Duration::from_secs(1)).await;
    let cases = [
        ("/healthz", None, StatusCode::OK),
        ("/openapi.json", None, StatusCode::OK),
        (
            "/v1/tenants/acme/approvals/x",
            None,
            StatusCode::UNAUTHORIZED,
        ),
        // A made-up token is a caller of its own, a new one for each: its places bound nothing.
        (
            "/v1/tenants/acme/approvals/x",
            Some("made-up"),
            StatusCode::UNAUTHORIZED,
        ),
        // Outside `/v1` a made-up token is not refused, and still bounds nothing: a new random
        // token per request pinned answers (and their connections) for ever.
        ("/healthz", Some("made-up"), StatusCode::OK),
        ("/openapi.json", Some("made-up"), StatusCode::OK),
        ("/no-such-path", Some("made-up"), StatusCode::NOT_FOUND),
    ];
    // Each on a connection of its own: each alone must close it.
    let closed = cases.map(|(path, token, status)| {
        let app = &app;
        async move {
            let (sender, connection) = http2_connection_granting_no_window(app).await;
            let mut request = Request::get(app.url(path));
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let unread = sender
                .clone()
                .send_request(request.body(Empty::new()).unwrap())
                .await
                .unwrap();
            assert_eq!(unread.status(), status, "{path}");
            let closed = tokio::time::timeout(Duration::from_secs(15), connection).await;
            assert!(
                closed.is_ok(),
                "{path} ({token:?}): the connection stayed open"
            );
            drop(unread);
        }
    });
    futures::future::join_all(closed).await;
}

/// The tenant's live events as its reviewer, on `sender`'s connection: the answer's head.
async fn open_events_unread(
    app: &TestApp,
    sender: &SendRequest<Empty<Bytes>>,
) -> hyper::Response<hyper::body::Incoming> {
    let events = Request::get(app.url(&format!("/v1/tenants/{}/events", app.tenant)))
        .header("authorization", format!("Bearer {}", app.tokens.reviewer))
        .body(Empty::new())
        .unwrap();
    let response = sender.clone().send_request(events).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
}

/// A live event stream ends at `approvals.events_max_duration` whether or not its client reads
/// it. A client that grants no window leaves the stream's first frame waiting in hyper, which
/// then never reads the stream again; yet at the stream's end its caller's place is free for a
/// new stream, and the connection, which can no longer be told that the stream ended, is closed
/// `server.write_timeout` later.
#[tokio::test]
async fn a_live_event_stream_never_read_over_http2_still_ends_at_its_time() {
    let app = TestApp::spawn_with(|s| {
        s.approvals.events_max_duration = Duration::from_secs(1);
        // One stream per caller (a fifth of the tenant's, at least one).
        s.approvals.max_event_streams_per_tenant = 1;
        // Well past the stream's end: the place must come back before the connection goes.
        s.server.write_timeout = Duration::from_secs(3);
    })
    .await;
    let (sender, connection) = http2_connection_granting_no_window(&app).await;
    let _unread = open_events_unread(&app, &sender).await;
    let path = format!("/v1/tenants/{}/events", app.tenant);
    let another = || {
        app.request(reqwest::Method::GET, &path, Some(&app.tokens.reviewer))
            .send()
    };
    assert_eq!(
        another().await.unwrap().status(),
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        "the open stream holds the reviewer's one place"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = another().await.unwrap().status();
        if status == reqwest::StatusCode::OK {
            assert!(
                !connection.is_finished(),
                "the place came back with the connection, not at the stream's end"
            );
            break;
        }
        assert_eq!(status, reqwest::StatusCode::TOO_MANY_REQUESTS);
        assert!(
            std::time::Instant::now() < deadline,
            "the unread stream kept its place past its maximum duration"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(15), connection).await;
    assert!(
        closed.is_ok(),
        "the connection holding the ended stream was closed"
    );
}

/// On shutdown a live event stream ends whether or not its client reads it: one left unread
/// over HTTP/2 does not hold the drain for `server.shutdown_grace`.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_live_event_stream_never_read_over_http2() {
    let mut app = TestApp::spawn_with(|s| {
        s.server.write_timeout = Duration::from_secs(1);
        s.server.shutdown_grace = Duration::from_secs(60);
    })
    .await;
    let (sender, connection) = http2_connection_granting_no_window(&app).await;
    let _unread = open_events_unread(&app, &sender).await;
    tokio::time::timeout(Duration::from_secs(15), app.shut_down())
        .await
        .expect("the unread stream did not hold up the drain")
        .expect("stopped");
    let closed = tokio::time::timeout(Duration::from_secs(15), connection).await;
    assert!(closed.is_ok(), "its connection was closed");
}

/// Nor for a known caller's answer built whole and never read (its client grants no window):
/// `server.write_timeout` after the drain began, its connection is closed, as an HTTP/1 write
/// blocked that long is. Only live streams were cut: a stalled answer to an agent's read held
/// every deploy for the whole grace period.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_known_callers_answer_never_read_over_http2() {
    let mut app = TestApp::spawn_with(|s| {
        s.server.write_timeout = Duration::from_secs(1);
        s.server.shutdown_grace = Duration::from_secs(60);
    })
    .await;
    app.park("req-1").await;
    let (sender, connection) = http2_connection_granting_no_window(&app).await;
    let read = Request::get(app.url(&format!("/v1/tenants/{}/approvals/req-1", app.tenant)))
        .header("authorization", format!("Bearer {}", app.tokens.agent))
        .body(Empty::new())
        .unwrap();
    let unread = sender.clone().send_request(read).await.unwrap();
    assert_eq!(unread.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(15), app.shut_down())
        .await
        .expect("the unread answer did not hold up the drain")
        .expect("stopped");
    let closed = tokio::time::timeout(Duration::from_secs(15), connection).await;
    assert!(closed.is_ok(), "its connection was closed");
    drop(unread);
}

/// An HTTP/2 request names its host in `:authority`, not in a `Host` header: a browser's sign-in
/// relayed over h2c (its `Origin` that authority) is accepted, as over HTTP/1.1, and one from
/// another site is still refused.
#[tokio::test]
async fn an_inbox_sign_in_over_http2_is_checked_against_its_authority() {
    let app = TestApp::spawn().await;
    let (mut sender, _connection) = http2_handshake(
        &app,
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()),
    )
    .await;
    let form = format!("token={}", app.tokens.reviewer);
    let mut sign_in = |origin: String| {
        let request = Request::post(app.url("/ui/login"))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(Bytes::from(form.clone())))
            .unwrap();
        assert!(request.headers().get("host").is_none());
        let sent = sender.send_request(request);
        async move { sent.await.unwrap().status() }
    };
    let ours = app.base.clone();
    assert_eq!(sign_in(ours).await, StatusCode::SEE_OTHER);
    assert_eq!(
        sign_in("http://evil.example".into()).await,
        StatusCode::FORBIDDEN
    );
}

/// The payload of the ping h2 sends with its first goodbye (`GOAWAY`): only once it is
/// answered does it send the last and close.
const GOODBYE_PING: [u8; 8] = [0x0b, 0x7b, 0xa2, 0xf0, 0x8b, 0x9b, 0xfe, 0x54];

/// A raw HTTP/2 client that acknowledges the server's settings and answers its keep-alive
/// pings, but never its goodbye ping; resolves when the server closes the socket.
async fn client_ignoring_the_goodbye(app: &TestApp) -> JoinHandle<()> {
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame.
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return;
            }
            let length =
                usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let mut payload = vec![0u8; length];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            let answer = match (kind, flags & 1) {
                // SETTINGS, not an ACK: acknowledged.
                (4, 0) => vec![0, 0, 0, 4, 1, 0, 0, 0, 0],
                // PING, not an ACK: answered, unless it is the goodbye's.
                (6, 0) if payload != GOODBYE_PING => {
                    let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(&payload);
                    ack
                }
                _ => continue,
            };
            if stream.write_all(&answer).await.is_err() {
                return;
            }
        }
    })
}

/// An HTTP/2 client that answers the keep-alive pings but not the goodbye's keeps neither its
/// idle connection (closed after the header-read timeout) nor the shutdown waiting. hyper
/// sends its last goodbye and closes only once that ping is answered, so a review feared such
/// a connection would hold its place for ever and every shutdown for its whole grace; the
/// keep-alive's own timeout (half the header-read timeout) ends it instead. This holds that.
#[tokio::test]
async fn an_http2_client_that_ignores_the_goodbye_is_dropped() {
    let mut app = TestApp::spawn_with(|s| {
        s.server.header_read_timeout = Duration::from_secs(2);
        s.server.shutdown_grace = Duration::from_secs(30);
    })
    .await;
    let idle = client_ignoring_the_goodbye(&app).await;
    tokio::time::timeout(Duration::from_secs(10), idle)
        .await
        .expect("the idle connection was dropped")
        .unwrap();

    let held = client_ignoring_the_goodbye(&app).await;
    tokio::time::timeout(Duration::from_secs(10), app.shut_down())
        .await
        .expect("the connection does not hold up the drain")
        .expect("stopped");
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("and is closed")
        .unwrap();
}
