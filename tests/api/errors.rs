//! Bad input: a clear problem+json with a stable code, and nothing reaches Redis.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{assert_problem, sensitive_read, Harness};

contract_tests!(
    bad_identifiers_are_400_and_never_reach_redis,
    malformed_bodies_name_the_field,
    bodies_that_are_not_json_are_415,
    bodies_over_the_limit_are_413,
    query_parameters_out_of_range_are_400,
    unknown_routes_are_problem_json_404,
);

/// Path segments the contract refuses, percent-encoded where a URL needs it.
const BAD_IDS: &[&str] = &[
    "a%3Ab",
    "%2A",
    "a%2A",
    "%7Ba%7D",
    "a%20b",
    "-a",
    "%C3%A9t%C3%A9",
    "x%0Ay",
];

async fn bad_identifiers_are_400_and_never_reach_redis(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    let long_tenant = "t".repeat(65);
    let long_id = "i".repeat(129);
    let agent = &app.tokens.agent;
    let reviewer = &app.tokens.reviewer;
    for bad in BAD_IDS.iter().copied().chain([long_id.as_str()]) {
        let get = app
            .request(
                Method::GET,
                &format!("/v1/tenants/{tenant}/approvals/{bad}"),
                Some(reviewer),
            )
            .send()
            .await
            .unwrap();
        assert_problem(get, StatusCode::BAD_REQUEST, "invalid_identifier").await;
        let accept = app
            .request(
                Method::POST,
                &format!("/v1/tenants/{tenant}/approvals/{bad}/accept"),
                Some(reviewer),
            )
            .send()
            .await
            .unwrap();
        assert_problem(accept, StatusCode::BAD_REQUEST, "invalid_identifier").await;
    }
    for bad in BAD_IDS.iter().copied().chain([long_tenant.as_str()]) {
        let submit = app
            .request(
                Method::POST,
                &format!("/v1/tenants/{bad}/approvals"),
                Some(agent),
            )
            .json(&json!({"action": sensitive_read()}))
            .send()
            .await
            .unwrap();
        // 400 before 403: the identifier is checked before the tenant is compared.
        assert_problem(submit, StatusCode::BAD_REQUEST, "invalid_identifier").await;
    }
    for bad in ["a:b", "*", "a*", "{a}", "a b", "", "é", &long_id] {
        let submit = app
            .request(
                Method::POST,
                &format!("/v1/tenants/{tenant}/approvals"),
                Some(agent),
            )
            .json(&json!({"request_id": bad, "action": sensitive_read()}))
            .send()
            .await
            .unwrap();
        assert_problem(submit, StatusCode::BAD_REQUEST, "invalid_identifier").await;
    }
    assert_eq!(
        app.listed().await,
        Vec::<Value>::new(),
        "nothing was stored"
    );
    if app.redis.is_some() {
        let keys = app.redis_keys().await;
        assert!(keys.is_empty(), "nothing reached Redis: {keys:?}");
    }
}

async fn malformed_bodies_name_the_field(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    let path = format!("/v1/tenants/{tenant}/approvals");
    let cases: &[(&str, &str)] = &[
        ("{not json", "body"),
        ("[]", "body"),
        // serde fills a struct from an array by position: not a body the contract knows.
        (
            r#"[null, null, {"type": "document_read", "resource": "x"}, null]"#,
            "body",
        ),
        (r#"{"context": {}}"#, "action"),
        (r#"{"action": "read"}"#, "action"),
        (r#"{"action": {"resource": "x"}}"#, "action.type"),
        (r#"{"action": {"type": 7}}"#, "action.type"),
        (
            r#"{"action": {"type": "document_read"}, "context": [1]}"#,
            "context",
        ),
        (
            r#"{"action": {"type": "document_read"}, "agent_id": 5}"#,
            "agent_id",
        ),
        (
            r#"{"action": {"type": "document_read"}, "request_id": 5}"#,
            "request_id",
        ),
    ];
    for (body, field) in cases {
        let response = app
            .request(Method::POST, &path, Some(&app.tokens.agent))
            .header("content-type", "application/json")
            .body(*body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(field),
            "{body}: detail {detail:?} should name {field}"
        );
    }
    let long_reason = "r".repeat(2001);
    app.park("req-1").await;
    let response = app
        .request(
            Method::POST,
            &format!("{path}/req-1/accept"),
            Some(&app.tokens.reviewer),
        )
        .json(&json!({"reason": long_reason}))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    let positional = app
        .request(
            Method::POST,
            &format!("{path}/req-1/accept"),
            Some(&app.tokens.reviewer),
        )
        .header("content-type", "application/json")
        .body(r#"["by position"]"#)
        .send()
        .await
        .unwrap();
    assert_problem(positional, StatusCode::BAD_REQUEST, "invalid_body").await;
    let still: Value = app
        .get("req-1", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        still["status"], "pending",
        "a refused decision changes nothing"
    );
    let exactly_2000 = app
        .request(
            Method::POST,
            &format!("{path}/req-1/accept"),
            Some(&app.tokens.reviewer),
        )
        .json(&json!({"reason": "é".repeat(2000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        exactly_2000.status(),
        StatusCode::OK,
        "2,000 characters (not bytes) is allowed"
    );
}

/// A body must say it is JSON; anything else is refused before it is read.
async fn bodies_that_are_not_json_are_415(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    let body = json!({"request_id": "typed", "action": sensitive_read()}).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        let response = app
            .request(
                Method::POST,
                &format!("/v1/tenants/{tenant}/approvals"),
                Some(&app.tokens.agent),
            )
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_problem(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.agent+json",
    ] {
        let response = app
            .request(
                Method::POST,
                &format!("/v1/tenants/{tenant}/approvals"),
                Some(&app.tokens.agent),
            )
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{content_type}: {}",
            response.status()
        );
    }
    // A decision may come without a body at all, and so without a content type.
    app.park("bodiless").await;
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{tenant}/approvals/bodiless/accept"),
            Some(&app.tokens.reviewer),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn bodies_over_the_limit_are_413(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn_with(|s| s.server.body_limit = 1024).await;
    let big = json!({"action": {"type": "document_read", "resource": "finance/x", "pad": "p".repeat(2000)}});
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{tenant}/approvals"),
            Some(&app.tokens.agent),
        )
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // Without a Content-Length (chunked), the limit holds too.
    let chunks = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.to_string().into_bytes())]);
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{tenant}/approvals"),
            Some(&app.tokens.agent),
        )
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    app.assert_nothing_stored().await;
}

async fn query_parameters_out_of_range_are_400(h: Harness) {
    let tenant = &h.tenant;
    let on_redis = h.backend == crate::support::Backend::Redis;
    let other = h.other_tenant.clone();
    let app = h.spawn().await;
    app.park("req-1").await;
    let reviewer = &app.tokens.reviewer;
    let admin = &app.tokens.admin;
    let cases = [
        (format!("/v1/tenants/{tenant}/approvals?limit=0"), reviewer),
        (
            format!("/v1/tenants/{tenant}/approvals?limit=501"),
            reviewer,
        ),
        (
            format!("/v1/tenants/{tenant}/approvals?limit=ten"),
            reviewer,
        ),
        (
            format!("/v1/tenants/{tenant}/approvals?status=maybe"),
            reviewer,
        ),
        (
            format!("/v1/tenants/{tenant}/approvals?cursor=forged"),
            reviewer,
        ),
        (
            format!("/v1/tenants/{tenant}/approvals/req-1/decision?wait_seconds=-1"),
            reviewer,
        ),
        (
            format!("/v1/tenants/{tenant}/approvals/req-1/decision?wait_seconds=soon"),
            reviewer,
        ),
        (format!("/v1/tenants/{tenant}/audit?limit=1001"), admin),
        (format!("/v1/tenants/{tenant}/audit?since=yesterday"), admin),
        (format!("/v1/tenants/{tenant}/audit?cursor=nope"), admin),
        // Out of range (beyond 64 bits): still the caller's mistake, never a 503.
        (
            format!("/v1/tenants/{tenant}/audit?cursor=99999999999999999999-0"),
            admin,
        ),
        (
            format!("/v1/tenants/{tenant}/audit?since=99999-01-01T00:00:00Z"),
            admin,
        ),
    ];
    for (path, token) in cases {
        let response = app
            .request(Method::GET, &path, Some(token))
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{path}"
        );
    }
    // The contract's order: a malformed cursor is 400 before access is checked (403).
    for path in [
        format!("/v1/tenants/{other}/approvals?cursor=forged"),
        format!("/v1/tenants/{other}/audit?cursor=nope"),
    ] {
        let response = app
            .request(Method::GET, &path, Some(admin))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    }

    // The largest stream id there can be (Redis refuses a range after it): nothing comes after
    // it on Redis, whose cursors these are; a foreign cursor elsewhere. Never a 503.
    let path =
        format!("/v1/tenants/{tenant}/audit?cursor=18446744073709551615-18446744073709551615");
    let response = app
        .request(Method::GET, &path, Some(admin))
        .send()
        .await
        .unwrap();
    if on_redis {
        assert_eq!(response.status(), StatusCode::OK);
        let last: serde_json::Value = response.json().await.unwrap();
        assert_eq!(last["items"], serde_json::json!([]), "{last}");
    } else {
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
    for ok in ["limit=1", "limit=500", "status=accepted"] {
        let path = format!("/v1/tenants/{tenant}/approvals?{ok}");
        assert_eq!(
            app.request(Method::GET, &path, Some(reviewer))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK,
            "{ok}"
        );
    }
}

async fn unknown_routes_are_problem_json_404(h: Harness) {
    let app = h.spawn().await;
    let response = app
        .request(Method::GET, "/v2/nothing", None)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    // Under /v1 the caller comes first, then identifiers: a trailing slash is an empty one.
    let path = format!("/v1/tenants/{}/approvals/", app.tenant);
    let anonymous = app.request(Method::GET, &path, None).send().await.unwrap();
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let trailing = app
        .request(Method::GET, &path, Some(&app.tokens.reviewer))
        .send()
        .await
        .unwrap();
    assert_problem(trailing, StatusCode::BAD_REQUEST, "invalid_identifier").await;
    let unknown = app
        .request(Method::GET, "/v1/nothing-here", Some(&app.tokens.reviewer))
        .send()
        .await
        .unwrap();
    assert_problem(unknown, StatusCode::NOT_FOUND, "not_found").await;

    // A known route with a method it does not take: problem+json too, and what it takes.
    let response = app
        .request(
            Method::DELETE,
            &format!("/v1/tenants/{}/approvals", app.tenant),
            Some(&app.tokens.agent),
        )
        .send()
        .await
        .unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    // Without a token the caller comes first there too: nothing tells it which methods exist.
    let anonymous = app
        .request(
            Method::DELETE,
            &format!("/v1/tenants/{}/approvals", app.tenant),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}
