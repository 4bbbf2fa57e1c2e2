//! Authentication, roles and tenants: 401, 403, never 404 across tenants.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{assert_problem, sensitive_read, Harness};

contract_tests!(
    missing_or_unknown_tokens_are_401_with_a_challenge,
    roles_are_enforced,
    another_tenant_gets_403_whether_or_not_the_approval_exists,
    a_platform_admin_acts_in_every_tenant,
);

async fn missing_or_unknown_tokens_are_401_with_a_challenge(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    let path = format!("/v1/tenants/{tenant}/approvals");
    for token in [None, Some("not-a-token"), Some("")] {
        let response = app.request(Method::GET, &path, token).send().await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_problem(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    }
    let basic = app
        .http
        .get(app.url(&path))
        .header("authorization", format!("Basic {}", app.tokens.reviewer))
        .send()
        .await
        .unwrap();
    assert_problem(basic, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    // 401 comes before identifier checks.
    let bad_id = app
        .request(Method::GET, "/v1/tenants/a:b/approvals", None)
        .send()
        .await
        .unwrap();
    assert_problem(bad_id, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    // Counted apart from other 4xx, for on-call (the recorder is shared by this binary's
    // tests: the series is checked, not its value).
    app.metrics_until(
        &app.base,
        std::time::Duration::from_secs(5),
        "auth failures counted",
        |text| text.contains("approvals_auth_failures_total{surface=\"api\"}"),
    )
    .await;
    // The scheme name is case-insensitive (RFC 9110).
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let response = app
            .http
            .get(app.url(&path))
            .header("authorization", format!("{scheme} {}", app.tokens.reviewer))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
}

async fn roles_are_enforced(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    let list = format!("/v1/tenants/{tenant}/approvals");
    let agent_list = app
        .request(Method::GET, &list, Some(&app.tokens.agent))
        .send()
        .await
        .unwrap();
    assert_problem(agent_list, StatusCode::FORBIDDEN, "forbidden").await;
    assert_problem(
        app.decide("req-1", "accept", &app.tokens.agent2).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let reviewer_submit = app
        .request(Method::POST, &list, Some(&app.tokens.reviewer))
        .json(&json!({"action": sensitive_read()}))
        .send()
        .await
        .unwrap();
    assert_problem(reviewer_submit, StatusCode::FORBIDDEN, "forbidden").await;
    let audit = format!("/v1/tenants/{tenant}/audit");
    let reviewer_audit = app
        .request(Method::GET, &audit, Some(&app.tokens.reviewer))
        .send()
        .await
        .unwrap();
    assert_problem(reviewer_audit, StatusCode::FORBIDDEN, "forbidden").await;
    let admin_audit = app
        .request(Method::GET, &audit, Some(&app.tokens.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(admin_audit.status(), StatusCode::OK);
}

async fn another_tenant_gets_403_whether_or_not_the_approval_exists(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    let outsider = &app.tokens.other_tenant_reviewer;
    for id in ["req-1", "does-not-exist"] {
        assert_problem(
            app.get(id, outsider).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_problem(
            app.decide(id, "accept", outsider).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        let wait = app
            .request(
                Method::GET,
                &format!("/v1/tenants/{tenant}/approvals/{id}/decision?wait_seconds=0"),
                Some(outsider),
            )
            .send()
            .await
            .unwrap();
        assert_problem(wait, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let submit_elsewhere = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{tenant}/approvals"),
            Some(&app.tokens.other_tenant_agent),
        )
        .json(&json!({"action": sensitive_read()}))
        .send()
        .await
        .unwrap();
    assert_problem(submit_elsewhere, StatusCode::FORBIDDEN, "forbidden").await;
    let still: Value = app
        .get("req-1", &app.tokens.reviewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["status"], "pending");
}

async fn a_platform_admin_acts_in_every_tenant(h: Harness) {
    let other_tenant = &h.other_tenant;
    let app = h.spawn().await;
    app.park("req-1").await;
    let root = &app.tokens.platform_admin;
    assert_eq!(app.get("req-1", root).await.status(), StatusCode::OK);
    let elsewhere = app
        .request(
            Method::GET,
            &format!("/v1/tenants/{other_tenant}/approvals"),
            Some(root),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::OK);
    assert_eq!(
        app.decide("req-1", "accept", root).await.status(),
        StatusCode::OK
    );
}
