//! Connection-level limits: clients that never finish their headers, trickle them, or open
//! more connections than the service allows cannot keep it from answering others.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TestApp;

/// A connection that sent part of a request's headers and then nothing.
async fn stalled(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: stalled\r\nX-Partial: yes")
        .await
        .unwrap();
    stream
}

/// Resolves when the server closes `stream` (EOF or reset).
pub(crate) async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_neither_block_health_nor_stay_open() {
    crate::support::raise_open_files_limit();
    // Long enough that opening the 1,500 does not already set their timeouts off in bulk
    // during the measurement, on a loaded machine too.
    let app = TestApp::spawn_with(|s| s.server.header_read_timeout = Duration::from_secs(15)).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut streams = Vec::new();
    for _ in 0..1_500 {
        streams.push(stalled(&addr).await);
    }
    let started = Instant::now();
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        // Well under the 15 s a queue behind the stalled ones would take.
        started.elapsed() < Duration::from_secs(5),
        "/healthz took {:?}",
        started.elapsed()
    );
    // Every stalled connection is closed by the header timeout, not left open.
    let closing = streams.iter_mut().map(closed_by_server);
    tokio::time::timeout(Duration::from_secs(40), futures::future::join_all(closing))
        .await
        .expect("the stalled connections were closed");
}

#[tokio::test]
async fn a_trickled_header_is_cut_off() {
    let app = TestApp::spawn_with(|s| s.server.header_read_timeout = Duration::from_secs(2)).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for n in 0..20 {
        // One header line every half second: never the whole request.
        if stream
            .write_all(format!("X-Line-{n}: trickle\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !closed {
        tokio::time::timeout(Duration::from_secs(5), closed_by_server(&mut stream))
            .await
            .expect("the trickling connection was closed");
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// The first request's head must arrive within one header-read timeout of the connection,
/// however its bytes are spread: a byte just before the deadline (ending the wait for the
/// protocol) started a second whole timeout for the rest, so a connection could be held twice
/// as long.
#[tokio::test]
async fn a_first_header_is_cut_off_one_timeout_after_the_connection() {
    // Seconds of margin either side, for a loaded machine: cut off at 5 s, a second timeout
    // would hold it past 9.5 s.
    let app = TestApp::spawn_with(|s| s.server.header_read_timeout = Duration::from_secs(5)).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&addr).await.unwrap();
    let connected = Instant::now();
    let (mut reading, mut writing) = stream.into_split();
    // The slow client's own pace: a first byte late, then one every 300 ms.
    let trickle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: yes" {
            if writing.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(n) = reading.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    });
    closed.await.expect("closed");
    trickle.abort();
    let held = connected.elapsed();
    assert!(
        held < Duration::from_millis(7_500),
        "held {held:?}: one 5 s header-read timeout from the connection, not two"
    );
}

/// At `server.max_connections`, a new connection takes the place of the one seated longest
/// with no request in flight: idle keep-alives, and connections that say nothing (or half a
/// header), no longer hold every place for the header-read timeout, from one host with no
/// token.
#[tokio::test]
async fn at_capacity_a_new_connection_takes_the_place_of_an_idle_one() {
    let app = TestApp::spawn_with(|s| {
        s.server.max_connections = 20;
        // Well beyond the wait below: no header timeout frees a place first.
        s.server.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Seated first: keep-alives that were answered once; then ones that never finish a header.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
        streams.push(stream);
    }
    for _ in 0..10 {
        streams.push(stalled(&addr).await);
    }
    // Each request on a new connection of its own, each taking an idle one's place: as many
    // as there are places, so both kinds (and the harness' own idle connections, seated
    // before them) make way.
    // Kept open after their answer: each takes a place, none frees one.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let fresh = reqwest::Client::new();
        let health = tokio::time::timeout(
            Duration::from_secs(10),
            fresh.get(app.url("/healthz")).send(),
        )
        .await
        .expect("served before any timeout")
        .expect("served");
        assert_eq!(health.status(), StatusCode::OK);
        clients.push(fresh);
    }
    // The ones seated longest made way: the keep-alives, then the first stalled ones.
    for n in [0, 9, 10] {
        tokio::time::timeout(Duration::from_secs(5), closed_by_server(&mut streams[n]))
            .await
            .unwrap_or_else(|_| panic!("connection {n}, seated long and idle, was closed"));
    }
}

/// When every place holds a request in flight, a new connection is closed at once, and none
/// of those requests is cut short for it.
#[tokio::test]
async fn at_capacity_with_every_connection_busy_a_new_one_is_closed() {
    let metrics_port = approvals_testkit::free_port();
    let app = TestApp::spawn_with(|s| {
        s.server.max_connections = 20;
        s.server.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port)));
    })
    .await;
    app.park("busy-1").await;
    let wait = app.url(&format!(
        "/v1/tenants/{}/approvals/busy-1/decision?wait_seconds=8",
        app.tenant
    ));
    // Twenty long-polls, each on a connection of its own.
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let request = reqwest::Client::new()
                .get(&wait)
                .bearer_auth(&app.tokens.agent);
            tokio::spawn(async move { request.send().await.map(|r| r.status()) })
        })
        .collect();
    app.metrics_until(
        &format!("http://127.0.0.1:{metrics_port}"),
        Duration::from_secs(10),
        "20 long-polls in flight",
        |text| {
            text.lines()
                .any(|l| l == "approvals_long_polls_in_flight 20")
        },
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), closed_by_server(&mut extra))
        .await
        .expect("a connection beyond the cap is closed at once");
    for waiter in waiters {
        let status = waiter
            .await
            .expect("join")
            .expect("answered, not cut short");
        assert_eq!(status, StatusCode::OK);
    }
    // Their places free as they end: served again.
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// Requests with no known caller behind them (here sign-in forms whose body never comes; a
/// client needs no token for those) do not keep their connections' places: at the cap, the
/// one seated longest is cut short for a newcomer. They kept every place busy for the request
/// timeout, and every agent's and reviewer's new connection was closed at once.
#[tokio::test]
async fn at_capacity_nobodys_requests_in_flight_make_way() {
    let app = TestApp::spawn_with(|s| {
        s.server.max_connections = 20;
        s.server.header_read_timeout = Duration::from_secs(30);
        s.server.request_timeout = Duration::from_secs(30);
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut sign_ins = Vec::new();
    for n in 0..20 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(
                b"POST /ui/login HTTP/1.1\r\nHost: x\r\n\
                  Content-Type: application/x-www-form-urlencoded\r\n\
                  Content-Length: 4096\r\nExpect: 100-continue\r\n\r\n",
            )
            .await
            .unwrap();
        // `100 Continue` once the sign-in reads its body: it is in flight.
        let mut answer = [0u8; 12];
        stream
            .read_exact(&mut answer)
            .await
            .unwrap_or_else(|e| panic!("sign-in {n}: {e}"));
        assert_eq!(&answer, b"HTTP/1.1 100", "sign-in {n}");
        stream.write_all(b"token=").await.unwrap();
        sign_ins.push(stream);
    }
    let listed = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::Client::new()
            .get(app.url(&format!("/v1/tenants/{}/approvals", app.tenant)))
            .bearer_auth(&app.tokens.reviewer)
            .send(),
    )
    .await
    .expect("served before any timeout")
    .expect("served, not closed");
    assert_eq!(listed.status(), StatusCode::OK);
    // The sign-in seated longest made way.
    tokio::time::timeout(Duration::from_secs(5), closed_by_server(&mut sign_ins[0]))
        .await
        .expect("the sign-in seated longest was cut short");
}

/// A client that sends a body slower than `server.request_timeout` allows gets `408`.
#[tokio::test]
async fn a_body_slower_than_the_request_timeout_is_408() {
    let app = TestApp::spawn_with(|s| {
        s.server.request_timeout = Duration::from_secs(1);
        // As start-up requires: a Redis deadline inside the request's.
        s.redis.call_timeout = Duration::from_millis(500);
    })
    .await;
    let chunks = futures::stream::unfold(0, |n| async move {
        if n == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some((Ok::<_, std::io::Error>(vec![b' ']), n + 1))
    });
    let response = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/tenants/{}/approvals", app.tenant),
            Some(&app.tokens.agent),
        )
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    crate::support::assert_problem(response, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;
}

/// A client that asks for answers and never reads them: its connection is closed once the
/// server's writes have stalled for `server.write_timeout`, and its slot is free again. It
/// used to stay open for good, so a few hundred such clients per instance held every slot of
/// `server.max_connections` and the service refused everyone else.
#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection() {
    let app = TestApp::spawn_with(|s| {
        s.server.max_connections = 2;
        s.server.write_timeout = Duration::from_secs(1);
    })
    .await;
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    // A connection per request: a pooled one would keep a slot of its own.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let document = http.get(app.url("/openapi.json")).send().await.unwrap();
    let size = document.bytes().await.unwrap().len();
    // Enough answers to fill both ends' socket buffers (Linux grows a send buffer to 4 MiB)
    // several times over.
    let requests = (16 << 20) / size + 1;
    let pipelined = "GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n".repeat(requests);
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream.write_all(pipelined.as_bytes()).await.unwrap();
        stalled.push(stream); // never read
    }
    // Both slots are taken now, and freed once the stalled writes time out.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(response) = http.get(app.url("/healthz")).send().await {
            if response.status() == StatusCode::OK {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stalled readers keep every connection slot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the HTTP parser refuses before a request exists is answered by it, bare, and the
/// connection closed: a header block (or a request line) past `server.max_header_bytes` gets
/// `431`, a line that is no HTTP gets `400`, neither with a problem body (the README's table
/// says so). Nothing of the service runs for them: no route, no caller, no `code`.
#[tokio::test]
async fn what_the_http_parser_refuses_is_answered_bare_and_closed() {
    let app = TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let oversized = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    for (request, status) in [(oversized.as_str(), "431"), ("HELLO THERE\r\n\r\n", "400")] {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("answered and closed")
            .unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        assert!(answer.contains("content-length: 0"), "{answer}");
    }
}
