//! Health, readiness, metrics and the OpenAPI document.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use approvals_testkit::tool;

use crate::support::{assert_problem, Harness, TestApp};

/// The `method` label values `/metrics` may show.
const METHOD_LABELS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "other",
];

contract_tests!(
    health_and_readiness,
    a_fresh_install_reports_its_backend_up,
    metrics_show_pending_count_and_age_per_tenant,
);

async fn health_and_readiness(h: Harness) {
    let app = h.spawn().await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(
        ready.headers().contains_key("x-request-id"),
        "every response carries a request id"
    );
    // A caller's id is echoed (and logged) when it looks like one; 4 KiB of text, or one
    // with spaces and quotes that would forge log fields, is replaced by a made-up id.
    let with_id = |id: String| app.http.get(app.url("/readyz")).header("x-request-id", id);
    let echoed = |response: reqwest::Response| {
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let chosen = "trace-4bf92f3577b34da6a3ce929d0e0e4736".to_owned();
    assert_eq!(
        echoed(with_id(chosen.clone()).send().await.unwrap()),
        chosen
    );
    for unfit in ["x".repeat(4096), "a\" tenant=\"other".to_owned()] {
        let answered = echoed(with_id(unfit.clone()).send().await.unwrap());
        assert_ne!(answered, unfit);
        assert_eq!(answered.len(), 36, "a UUID in its place: {answered}");
    }
}

async fn a_fresh_install_reports_its_backend_up(h: Harness) {
    let app = h.spawn().await;
    // Nothing submitted yet: the background figures must still compute (an empty store is
    // not an outage), which is what the on-call alerts read.
    let text = app
        .metrics_until(
            &app.base,
            Duration::from_secs(15),
            "a pending snapshot on an empty store, and the backend up",
            |t| {
                t.contains("approvals_pending_snapshot_age_seconds ")
                    && t.contains("approvals_backend_up 1")
            },
        )
        .await;
    // Which engine answers: the missing-worker alert selects on it.
    let engine = match h.backend {
        crate::support::Backend::Redis => "redis",
        #[cfg(feature = "temporal")]
        crate::support::Backend::Temporal => "temporal",
    };
    let info = format!("approvals_engine_info{{engine=\"{engine}\",primary=\"\"}} 1");
    assert!(text.contains(&info), "{info} in\n{text}");
}

async fn metrics_show_pending_count_and_age_per_tenant(h: Harness) {
    let tenant = &h.tenant;
    let app = h.spawn().await;
    for n in 0..3 {
        app.park(&format!("req-{n}")).await;
    }
    app.decide("req-0", "accept", &app.tokens.reviewer).await;
    // The figures are recomputed in the background; wait for a snapshot that has them.
    let text = app
        .metrics_until(
            &app.base,
            // Temporal's figures come from visibility, recomputed in the background.
            Duration::from_secs(20),
            "a pending figure of 2",
            |t| t.contains(&format!("approvals_pending{{tenant=\"{tenant}\"}} 2")),
        )
        .await;
    assert!(text.contains("# TYPE approvals_pending_age_seconds histogram"));
    assert!(
        text.contains(&format!(
            "approvals_pending_age_seconds_bucket{{tenant=\"{tenant}\",le=\"60\"}} 2"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "approvals_pending_age_seconds_bucket{{tenant=\"{tenant}\",le=\"+Inf\"}} 2"
    )));
    assert!(text.contains(&format!(
        "approvals_pending_age_seconds_count{{tenant=\"{tenant}\"}} 2"
    )));
    assert!(text.contains("approvals_submitted_total{"));
    assert!(text.contains("approvals_http_requests_total{"));
}

/// Every answer is counted once, under its route, method and status class, the first of a
/// kind as every later one (the metric handles are looked up once per kind, then reused).
#[tokio::test]
async fn each_answer_is_counted_once_under_its_route_method_and_class() {
    let app = TestApp::spawn().await;
    // A kind no other test sends (the recorder is the process's).
    let series =
        r#"approvals_http_requests_total{route="/healthz",method="PATCH",status_class="4xx"}"#;
    let count = |text: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series))
            .map_or(0, |value| value.trim().parse().expect("a count"))
    };
    let before = count(&app.metrics().await);
    for _ in 0..3 {
        let response = app.http.patch(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = app.metrics().await;
    assert_eq!(count(&text) - before, 3, "{text}");
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/tenants/{tenant}/approvals",
        "/v1/tenants/{tenant}/approvals/{id}",
        "/v1/tenants/{tenant}/approvals/{id}/decision",
        "/v1/tenants/{tenant}/approvals/{id}/accept",
        "/v1/tenants/{tenant}/approvals/{id}/reject",
        "/v1/tenants/{tenant}/audit",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Approval"].is_object());
}

/// The served document is valid OpenAPI 3.1 and says what the service does: query parameters
/// in the query, identifiers with their patterns on every path, errors as problem+json, the
/// bounds the service enforces, `action.type` required.
#[tokio::test]
async fn the_openapi_document_is_valid_and_matches_the_service() {
    let app = TestApp::spawn().await;
    let text = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let output =
        std::process::Command::new(tool("OPENAPI_SPEC_VALIDATOR", "openapi-spec-validator"))
            .arg(&file)
            .output()
            .expect("openapi-spec-validator (scripts/test.sh installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut query_names = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for param in operation["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().unwrap();
                let place = param["in"].as_str().unwrap();
                if path.contains(&format!("{{{name}}}")) {
                    assert_eq!(place, "path", "{method} {path}: {name}");
                    assert!(
                        param["schema"]["pattern"].is_string(),
                        "{method} {path}: {name} has no pattern"
                    );
                } else if place == "header" {
                    // SSE's resume position, and the policy changes' precondition.
                    let expected = if path.ends_with("/events") {
                        "Last-Event-ID"
                    } else {
                        "If-Match"
                    };
                    assert_eq!(name, expected, "{method} {path}");
                } else {
                    assert_eq!(place, "query", "{method} {path}: {name}");
                    assert_ne!(param["required"], true, "{method} {path}: {name}");
                    query_names.push(name.to_owned());
                }
            }
            // An unreadable record answers 500 internal on every route that reads one; a
            // generated client must know the status (ADR-0005 makes `internal` a contract code).
            if path.starts_with("/v1/") {
                assert!(
                    operation["responses"]["500"]["description"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("internal")),
                    "{method} {path} does not list 500 internal"
                );
            }
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = response["content"].as_object();
                    assert!(
                        content.is_some_and(|c| c.contains_key("application/problem+json")
                            && !c.contains_key("application/json")),
                        "{method} {path} {status}: {response}"
                    );
                }
            }
        }
    }
    // A 429 too_many_pending sends no Retry-After (it waits for reviewers): the document
    // does not promise one for every 429.
    let submit_429 = &doc["paths"]["/v1/tenants/{tenant}/approvals"]["post"]["responses"]["429"];
    assert!(
        submit_429["headers"]["Retry-After"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("too_many_requests and upload_in_progress only")),
        "{submit_429}"
    );
    for name in ["status", "limit", "cursor", "wait_seconds", "since"] {
        assert!(query_names.iter().any(|n| n == name), "{name} missing");
    }
    let submit = &doc["components"]["schemas"]["SubmitBody"];
    assert!(
        submit["required"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r == "action"),
        "{submit}"
    );
    let list = &doc["paths"]["/v1/tenants/{tenant}/approvals"]["get"]["parameters"];
    let limit = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["minimum"], 1, "{limit}");
    assert_eq!(limit["schema"]["maximum"], 500, "{limit}");
    let action = serde_json::to_string(&doc).unwrap();
    assert!(
        action.contains("\"Action\""),
        "an Action schema with a required type"
    );
    assert_eq!(
        doc["components"]["schemas"]["Action"]["required"][0],
        "type"
    );
}

/// A property-based run over the served document (examples, coverage, fuzzing, and stateful
/// sequences following its links) finds nothing the service does that the document does not
/// say, nor the reverse. Long-polls and live event streams are capped at a second so the run
/// stays short. One check
/// is left out: a random string is schema-valid as a `cursor` or `since`, yet the service
/// refuses it (cursors are opaque, handed out by the service), and no schema can say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_disagreement_between_document_and_service() {
    let app = TestApp::spawn_with(|s| {
        s.approvals.long_poll_max = Duration::from_secs(1);
        s.approvals.events_max_duration = Duration::from_secs(1);
    })
    .await;
    let output = tokio::process::Command::new(tool("SCHEMATHESIS", "schemathesis"))
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args([
            "-H",
            &format!("Authorization: Bearer {}", app.tokens.platform_admin),
        ])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args([
            "--max-examples",
            "15",
            "--seed",
            "20261202",
            "--request-timeout",
            "10",
        ])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("schemathesis (scripts/test.sh installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A client generated from the served document by a mainstream generator
/// (openapi-python-client) submits, waits, lists and decides against the running service; the
/// driver script (tests/clients/generated_client.py) uses only the generated code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_document_works_against_the_service() {
    let app = TestApp::spawn().await;
    let scratch = tempfile::tempdir().unwrap();
    let document = scratch.path().join("openapi.json");
    let served = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    std::fs::write(&document, served.bytes().await.unwrap()).unwrap();
    // No post-generation hooks: they would format the code with ruff, which is not needed here.
    let config = scratch.path().join("generator.yml");
    std::fs::write(&config, "post_hooks: []\n").unwrap();
    let generator = tool("OPENAPI_PYTHON_CLIENT", "openapi-python-client");
    let generated = tokio::process::Command::new(&generator)
        .args(["generate", "--meta", "none", "--path"])
        .arg(&document)
        .arg("--config")
        .arg(&config)
        .arg("--output-path")
        .arg(scratch.path().join("approvals_client"))
        .output()
        .await
        .expect("openapi-python-client (scripts/test.sh installs it)");
    let report = String::from_utf8_lossy(&generated.stdout).into_owned()
        + &String::from_utf8_lossy(&generated.stderr);
    assert!(generated.status.success(), "{report}");
    assert!(
        !report.contains("Warning"),
        "the generator skipped parts of the document: {report}"
    );
    // The generator's own venv has what the generated code imports (httpx, attrs).
    let python = generator.with_file_name("python");
    let driver = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/generated_client.py"
    );
    let run = tokio::process::Command::new(python)
        .arg(driver)
        .env("PYTHONPATH", scratch.path())
        .env("APPROVALS_URL", &app.base)
        .env("TENANT", &app.tenant)
        .env("AGENT_TOKEN", &app.tokens.agent)
        .env("REVIEWER_TOKEN", &app.tokens.reviewer)
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // What the generated client did is what the service holds.
    let approval: Value = app
        .get("generated-1", &app.tokens.agent)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(approval["status"], "accepted", "{approval}");
    assert_eq!(
        out.trim(),
        format!(
            "accepted generated-1 by {}",
            approval["decided_by"].as_str().unwrap()
        )
    );
}

#[tokio::test]
async fn readiness_fails_fast_when_redis_is_gone() {
    let mut app = TestApp::spawn().await;
    app.redis.as_mut().expect("redis").stop();
    let started = Instant::now();
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Made-up methods and paths from unauthenticated callers add no label values: `/metrics`
/// holds only the standard methods and `other`, and route templates or `unmatched`.
#[tokio::test]
async fn odd_methods_and_paths_cannot_grow_the_metrics() {
    let app = TestApp::spawn().await;
    for n in 0..300 {
        let method = reqwest::Method::from_bytes(format!("X{n}{}", "Q".repeat(500)).as_bytes())
            .expect("a token method");
        let path = if n % 2 == 0 {
            "/healthz".to_owned()
        } else {
            format!("/nowhere/{n}")
        };
        let response = app
            .http
            .request(method, app.url(&path))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let text = app.metrics().await;
    let labels = |name: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| l.starts_with("approvals_http_requests_total{"))
            .filter_map(|l| l.split(&format!("{name}=\"")).nth(1))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    };
    let methods = labels("method");
    assert!(
        methods.iter().all(|m| METHOD_LABELS.contains(&m.as_str())),
        "{methods:?}"
    );
    assert!(methods.contains("other"), "{methods:?}");
    let routes = labels("route");
    assert!(
        routes
            .iter()
            .all(|r| r == "unmatched" || r.starts_with('/')),
        "{routes:?}"
    );
    assert!(
        !routes.iter().any(|r| r.starts_with("/nowhere")),
        "{routes:?}"
    );
    assert!(text.len() < 512 * 1024, "/metrics is {} bytes", text.len());
}

/// The input limits are in the served document, as this deployment configures them: the
/// contract has them documented there, and a limit changed in `[limits]` must not leave the
/// document saying the default.
#[tokio::test]
async fn the_openapi_document_states_the_configured_input_limits() {
    let app = TestApp::spawn_with(|s| {
        s.limits.max_string_chars = 100;
        s.limits.max_items = 50;
        s.limits.max_object_bytes = 4_096;
    })
    .await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    let submit = &schemas["SubmitBody"]["properties"];
    assert_eq!(submit["agent_id"]["maxLength"], 100, "{submit}");
    assert_eq!(submit["context"]["maxProperties"], 50, "{submit}");
    assert_eq!(
        schemas["Action"]["maxProperties"], 50,
        "{}",
        schemas["Action"]
    );
    for described in [
        &schemas["Action"]["description"],
        &submit["context"]["description"],
    ] {
        let text = described.as_str().unwrap_or_default();
        for said in [
            "422 input_too_large",
            "4096 bytes",
            "100 characters",
            "50 items",
        ] {
            assert!(text.contains(said), "{said} not in {text:?}");
        }
    }
}

/// With `server.metrics_listen` set, `/metrics` (every tenant's name and activity) is served
/// there only: the API's port, which agents and reviewers reach, answers 404 for it.
#[tokio::test]
async fn metrics_move_to_their_own_listener_when_asked() {
    let port = approvals_testkit::free_port();
    let app = TestApp::spawn_with(|s| {
        s.server.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    })
    .await;
    app.park("m-1").await;
    let on_api = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_problem(on_api, StatusCode::NOT_FOUND, "not_found").await;
    let metrics_base = format!("http://127.0.0.1:{port}");
    let tenant = format!("approvals_pending{{tenant=\"{}\"}} 1", app.tenant);
    app.metrics_until(
        &metrics_base,
        Duration::from_secs(10),
        "the pending figure",
        |t| t.contains(&tenant),
    )
    .await;
    // Nothing else is served there.
    let other = app
        .http
        .get(format!(
            "{metrics_base}/v1/tenants/{}/approvals",
            app.tenant
        ))
        .bearer_auth(&app.tokens.reviewer)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

/// Anyone may ask `/readyz`, and on Redis each probe is a round trip with a write: a flood of
/// asks shares the probe in flight rather than sending one each, ahead of tenants' calls.
#[tokio::test]
async fn a_flood_of_readiness_asks_shares_the_probe_in_flight() {
    let app = TestApp::spawn().await;
    let before = app.redis_calls("set").await;
    let asks = (0..200).map(|_| async {
        let ready = app.http.get(app.url("/readyz")).send().await;
        ready.map(|r| r.status()).expect("readyz")
    });
    let answers = futures::future::join_all(asks).await;
    assert!(answers.iter().all(|s| *s == StatusCode::OK), "{answers:?}");
    let probes = app.redis_calls("set").await - before;
    assert!(probes <= 20, "{probes} probes for 200 asks");
}

/// Anyone may ask `/metrics` on the API port (unless `server.metrics_listen` moves it), and a
/// render walks every series: a flood of asks shares the render in flight rather than running
/// one each, which kept every core rendering while tenants' requests waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_metrics_asks_shares_the_render_in_flight() {
    let app = TestApp::spawn().await;
    // Each render then differs from the last (how old the figures are, to the nanosecond).
    app.metrics_until(&app.base, Duration::from_secs(10), "figures", |m| {
        m.contains("approvals_pending_snapshot_age_seconds ")
    })
    .await;
    let asks = (0..200).map(|_| async {
        let answer = app.http.get(app.url("/metrics")).send().await;
        answer.expect("metrics").text().await.expect("text")
    });
    let bodies = futures::future::join_all(asks).await;
    // One text per render. Asks that arrive while none is in flight each get their own: fewer
    // renders than asks is what sharing shows (each ask rendered its own: 200).
    let renders: std::collections::BTreeSet<&String> = bodies.iter().collect();
    assert!(
        renders.len() < 150,
        "{} renders for 200 asks",
        renders.len()
    );
}
