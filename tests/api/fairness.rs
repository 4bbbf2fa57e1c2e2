//! No one caller can take the instance from the others: a token at its limit of requests or
//! long-polls in flight is answered `429 too_many_requests` (with `Retry-After`), while other
//! callers, and the same token's other kind of request, go on as usual.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{assert_problem, TestApp};

async fn refused_for_now(response: reqwest::Response) {
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
}

#[tokio::test]
async fn a_token_at_its_long_poll_limit_is_refused_and_nobody_else_notices() {
    let app = TestApp::spawn_with(|s| s.limits.max_long_polls_per_caller = 3).await;
    app.park("req-1").await;
    let wait = app.url(&format!(
        "/v1/tenants/{}/approvals/req-1/decision?wait_seconds=30",
        app.tenant
    ));
    let agent_waits = || app.http.get(&wait).bearer_auth(&app.tokens.agent);
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let request = agent_waits();
            tokio::spawn(async move { request.send().await.expect("long-poll") })
        })
        .collect();
    app.metrics_until(&app.base, Duration::from_secs(10), "3 waiters", |text| {
        text.lines()
            .any(|l| l == "approvals_long_polls_in_flight 3")
    })
    .await;

    let fourth = agent_waits().send().await.unwrap();
    refused_for_now(fourth).await;
    // The same token in a differently spelled header is the same caller, with no more places.
    for respelled in [
        format!("bearer  {}", app.tokens.agent),
        format!("BEARER {}", app.tokens.agent),
    ] {
        let response = app
            .http
            .get(&wait)
            .header("authorization", respelled)
            .send()
            .await
            .unwrap();
        refused_for_now(response).await;
    }
    // The same token's other requests, and other callers, are not held back.
    assert_eq!(
        app.get("req-1", &app.tokens.agent).await.status(),
        StatusCode::OK
    );
    let reviewer_waits = app
        .http
        .get(wait.replace("wait_seconds=30", "wait_seconds=0"))
        .bearer_auth(&app.tokens.reviewer)
        .send()
        .await
        .unwrap();
    assert_eq!(reviewer_waits.status(), StatusCode::OK);

    // The decision answers the three; the token may wait again.
    assert_eq!(
        app.decide("req-1", "accept", &app.tokens.reviewer)
            .await
            .status(),
        StatusCode::OK
    );
    for waiter in waiters {
        let answer: Value = waiter.await.unwrap().json().await.unwrap();
        assert_eq!(answer["status"], "accepted");
    }
    let again = agent_waits().send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

/// A request body that sends `start` and then waits for more, which the test sends (or not)
/// through the returned sender; dropping the sender ends the body.
pub(crate) fn stalled_body(
    start: &[u8],
) -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    reqwest::Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let start: Result<Vec<u8>, std::io::Error> = Ok(start.to_vec());
    let chunks =
        futures_util::stream::once(async move { start })
            .chain(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|c| (c, rx))
            }));
    (tx, reqwest::Body::wrap_stream(chunks))
}

/// The senders of stalled submits (drop one to end its submit) and the submits themselves.
pub(crate) type Stalled = (
    Vec<tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>>,
    Vec<tokio::task::JoinHandle<reqwest::Response>>,
);

/// Submits as `token` whose bodies never finish, until the token is at its limit of `places`
/// requests in flight (its next request is refused `429`). One refused at once (another
/// request of the token held a place at that moment, a page's refresh say) is replaced: the
/// stalled submits returned are the ones that hold a place.
pub(crate) async fn hold_token_places(app: &TestApp, token: &str, places: usize) -> Stalled {
    let mut stalled: Vec<(_, tokio::task::JoinHandle<reqwest::Response>)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while app.get("none", token).await.status() != StatusCode::TOO_MANY_REQUESTS {
        assert!(std::time::Instant::now() < deadline, "never at its limit");
        stalled.retain(|(_, request)| !request.is_finished());
        if stalled.len() < places {
            stalled.push(stalled_submit(app, token));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stalled.retain(|(_, request)| !request.is_finished());
    stalled.into_iter().unzip()
}

/// A submit as `token` whose body never finishes (until the sender is dropped): it stays in
/// flight.
pub(crate) fn stalled_submit(
    app: &TestApp,
    token: &str,
) -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Response>,
) {
    let (tx, chunks) = stalled_body(b"{\"request_id\": ");
    let request = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{}/approvals", app.tenant),
            Some(token),
        )
        .header("content-type", "application/json")
        .body(chunks);
    (
        tx,
        tokio::spawn(async move { request.send().await.expect("submit") }),
    )
}

#[tokio::test]
async fn a_token_at_its_request_limit_is_refused_until_one_is_answered() {
    let app = TestApp::spawn_with(|s| s.limits.max_requests_per_caller = 2).await;
    app.park("req-1").await;
    // Three submits that never finish their bodies: two hold the token's places, and the
    // third, whichever it is, is refused at once.
    let (mut bodies, requests): (Vec<_>, Vec<_>) = (0..3)
        .map(|_| stalled_submit(&app, &app.tokens.agent))
        .unzip();
    let (refused, which, mut in_flight) = futures_util::future::select_all(requests).await;
    refused_for_now(refused.unwrap()).await;
    bodies.remove(which);
    // Another caller is served meanwhile; the token itself stays refused.
    assert_eq!(
        app.get("req-1", &app.tokens.reviewer).await.status(),
        StatusCode::OK
    );
    let refused = app.get("req-1", &app.tokens.agent).await;
    refused_for_now(refused).await;
    // The stalled bodies end (cut short: refused as bad JSON), and the token is served again.
    drop(bodies);
    for request in in_flight.drain(..) {
        assert_eq!(request.await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(
        app.get("req-1", &app.tokens.agent).await.status(),
        StatusCode::OK
    );
}

/// An audit export streams its pages after its head: the caller's place is held until the
/// last one is sent, so one token cannot run more exports at once than its limit.
#[tokio::test]
async fn an_export_holds_its_callers_place_until_it_is_sent() {
    let app = TestApp::spawn_with(|s| s.limits.max_requests_per_caller = 1).await;
    app.park("seed").await;
    // An audit far larger than the sockets' buffers: copies of the seed's event, padded.
    let stream = format!("approvals:audit:{}", app.tenant);
    let mut conn = app.redis().connection().await;
    let seed: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut event: Value = serde_json::from_str(&seed[0].1[0].1).unwrap();
    event["details"]["pad"] = Value::String("x".repeat(1000));
    let event = event.to_string();
    const COPIES: usize = 20_000;
    let mut pipe = redis::pipe();
    for _ in 0..COPIES {
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("e")
            .arg(&event)
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();

    // Not read: the export's body stops where the sockets' buffers are full.
    let export = app
        .request(
            Method::GET,
            &format!("/v1/tenants/{}/audit", app.tenant),
            Some(&app.tokens.admin),
        )
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), StatusCode::OK);
    let list = || {
        app.request(
            Method::GET,
            &format!("/v1/tenants/{}/approvals", app.tenant),
            Some(&app.tokens.admin),
        )
        .send()
    };
    refused_for_now(list().await.unwrap()).await;

    // Read to its end, the place is free again.
    let lines = export.text().await.unwrap();
    assert_eq!(lines.lines().count(), COPIES + 1);
    assert_eq!(list().await.unwrap().status(), StatusCode::OK);
}
