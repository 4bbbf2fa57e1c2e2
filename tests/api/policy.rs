//! Tenant policy bundles (Redis): upload with validation, activation and rollback, shadow
//! evaluation of a candidate, and hot reload across instances under load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{assert_problem, sensitive_read, Backend, Harness, TestApp, OTHER_TENANT};

/// A bundle that lets every read through (the default parks sensitive ones), with its test.
fn reads_allowed() -> Value {
    json!({"files": [
        {"path": "approvals.rego", "text": r#"package approvals
import rego.v1

default decision := {"decision": "require_approval", "reasons": ["v2: anything else waits"]}

decision := {"decision": "allow", "reasons": ["v2: every read is fine"]} if {
	input.action.type == "document_read"
}
"#},
        {"path": "tests/approvals_test.rego", "text": r#"package approvals_test
import rego.v1

test_reads_are_allowed if {
	data.approvals.decision.decision == "allow" with input as {"action": {"type": "document_read"}}
}
"#},
    ]})
}

fn policy_path(app: &TestApp, rest: &str) -> String {
    format!("/v1/tenants/{}/policy{rest}", app.tenant)
}

async fn call(
    app: &TestApp,
    method: Method,
    rest: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.request(method, &policy_path(app, rest), Some(token));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("policy call")
}

/// `POST …/policy/bundles` with `bundle`, as `token`.
async fn post_bundle(app: &TestApp, token: &str, bundle: Value) -> reqwest::Response {
    call(app, Method::POST, "/bundles", token, Some(bundle)).await
}

/// `PUT …/policy/candidate` of `version`, as the tenant admin.
async fn put_candidate(app: &TestApp, version: &str) -> reqwest::Response {
    let body = json!({ "version": version });
    call(
        app,
        Method::PUT,
        "/candidate",
        &app.tokens.admin,
        Some(body),
    )
    .await
}

/// Uploads `bundle` as the tenant admin; its version.
async fn upload(app: &TestApp, bundle: Value) -> String {
    let response = post_bundle(app, &app.tokens.admin, bundle).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tests"]["failed"], 0, "{body}");
    body["bundle"]["version"].as_str().unwrap().to_owned()
}

/// Activates `version` as the tenant admin; the answer (checked: 200) holds the overview.
async fn activate(app: &TestApp, version: &str) -> reqwest::Response {
    let response = call(
        app,
        Method::PUT,
        "/active",
        &app.tokens.admin,
        Some(json!({ "version": version })),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    response
}

contract_tests!(a_redis_tenant_store_keeps_tenants_bundles_whichever_engine_answers);

/// With `tenant_store.kind = "redis"` a tenant's own bundle governs its submits on either
/// engine, so the cutover to Temporal keeps it; without it Temporal has no bundles to offer.
async fn a_redis_tenant_store_keeps_tenants_bundles_whichever_engine_answers(h: Harness) {
    if h.backend != Backend::Redis {
        let without_store = h.spawn().await;
        let response =
            post_bundle(&without_store, &without_store.tokens.admin, reads_allowed()).await;
        assert_problem(
            response,
            StatusCode::NOT_IMPLEMENTED,
            "policy_store_disabled",
        )
        .await;
        // `policy push` calls it what it is: no bundle of any tenant is taken here, so a
        // pipeline must not push again (exit 3 made one that retries loop forever).
        let dir = tempfile::tempdir().unwrap();
        for file in reads_allowed()["files"].as_array().unwrap() {
            let path = dir.path().join(file["path"].as_str().unwrap());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, file["text"].as_str().unwrap()).unwrap();
        }
        let pushed = tokio::process::Command::new(env!("CARGO_BIN_EXE_approvals"))
            .args(["policy", "push", "--tenant", &without_store.tenant, "--url"])
            .arg(&without_store.base)
            .arg(dir.path())
            .env("APPROVALS_TOKEN", &without_store.tokens.admin)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&pushed.stderr);
        assert_eq!(pushed.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("keeps no tenant bundles"), "{stderr}");
    }
    let app = h.spawn_with_tenant_store(|_| {}).await;
    // Fields the service does not know are ignored, as in every body the contract names.
    let mut bundle = reads_allowed();
    bundle["message"] = json!("ci: commit 1a2b3c");
    let version = upload(&app, bundle).await;
    let response = call(
        &app,
        Method::PUT,
        "/active",
        &app.tokens.admin,
        Some(json!({ "version": version, "reason": "ticket POL-7" })),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let allowed: Value = app
        .submit("read-it", sensitive_read())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    assert_eq!(allowed["policy_version"], version);
}

#[tokio::test]
async fn a_bundle_is_validated_before_it_is_stored() {
    let app = TestApp::spawn().await;
    let broken = json!({"files": [{"path": "approvals.rego", "text": "package approvals\n\ndecision := {\n"}]});
    let failing = json!({"files": [
        {"path": "approvals.rego", "text": "package approvals\nimport rego.v1\ndecision := {\"decision\": \"deny\", \"reasons\": [\"no\"]}\n"},
        {"path": "approvals_test.rego", "text": "package approvals_test\nimport rego.v1\ntest_reads_are_allowed if {\n\tdata.approvals.decision.decision == \"allow\"\n}\n"},
    ]});
    let no_decision = json!({"files": [{"path": "other.rego", "text": "package other\nimport rego.v1\nx := 1\n"}]});
    // Compiles and passes its own test, but answers without the contract's `reasons`, or
    // with a decision the contract lacks: once active, every submit would wait for a human.
    let shapeless = |decision: &str| {
        json!({"files": [
            {"path": "approvals.rego", "text": format!("package approvals\nimport rego.v1\ndecision := {decision}\n")},
            {"path": "approvals_test.rego", "text": "package approvals_test\nimport rego.v1\ntest_decides if {\n\tdata.approvals.decision.decision\n}\n"},
        ]})
    };
    for (bundle, names) in [
        (broken, "approvals.rego"),
        (failing, "data.approvals_test.test_reads_are_allowed"),
        (no_decision, "data.approvals.decision"),
        (
            shapeless(r#"{"decision": "allow"}"#),
            r#"expected "reasons" to be a list of strings"#,
        ),
        (
            shapeless(r#"{"decision": "approve", "reasons": ["ok"]}"#),
            r#"expected "decision" to be one of"#,
        ),
        // The empty input reaches only the default; the conditional answer lacks `reasons`.
        (
            shapeless(
                "{\"decision\": \"require_approval\", \"reasons\": [\"ask\"]} if input.x == 1\n\
                 decision := {\"decision\": \"allow\"} if input.action.type == \"read\"",
            ),
            r#"approvals.rego:4: data.approvals.decision as written here: policy returned an invalid decision (expected "reasons""#,
        ),
    ] {
        let response = post_bundle(&app, &app.tokens.admin, bundle).await;
        let problem =
            assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid").await;
        let errors = problem["errors"].as_array().expect("every message listed");
        assert!(
            errors.iter().any(|e| e.as_str().unwrap().contains(names)),
            "{names} in {problem}"
        );
    }
    let bad_path = json!({"files": [{"path": "../evil.rego", "text": "package approvals\n"}]});
    let response = post_bundle(&app, &app.tokens.admin, bad_path).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    // A NUL ends a file for regorus: a deny rule after it would be stored and never applied
    // (and the text would share its version with the two files it spells out).
    let mut nul = reads_allowed();
    let text = nul["files"][0]["text"].as_str().unwrap().to_owned();
    nul["files"][0]["text"] = json!(format!("{text}\u{0}deny.rego\u{0}package approvals\n"));
    let response = post_bundle(&app, &app.tokens.admin, nul).await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("U+0000"),
        "{problem}"
    );
    // Only admins manage policy; a reviewer learns nothing.
    let response = post_bundle(&app, &app.tokens.reviewer, reads_allowed()).await;
    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    let response = call(
        &app,
        Method::GET,
        "",
        &app.tokens.other_tenant_reviewer,
        None,
    )
    .await;
    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    // A malformed version is the caller's mistake before it is a matter of rights (the
    // contract's order: identifiers, then authorization).
    for (method, rest, body) in [
        (Method::GET, "/bundles/sha256:XYZ", None),
        (Method::PUT, "/active", Some(json!({"version": "latest"}))),
    ] {
        let response = call(&app, method, rest, &app.tokens.agent, body).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_identifier").await;
    }

    // Nothing refused was stored.
    let overview = app
        .get_json(&policy_path(&app, ""), &app.tokens.admin)
        .await;
    assert_eq!(overview["bundles"], json!([]), "{overview}");
    assert_eq!(overview["active"], Value::Null);

    // A good one is, once; the platform admin may manage every tenant.
    let version = upload(&app, reads_allowed()).await;
    let again = post_bundle(&app, &app.tokens.platform_admin, reads_allowed()).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap()["created"], false);
    let stored = app
        .get_json(
            &policy_path(&app, &format!("/bundles/{version}")),
            &app.tokens.admin,
        )
        .await;
    assert_eq!(stored["uploaded_by"], "carol");
    assert_eq!(stored["files"], reads_allowed()["files"]);
    let listed = app
        .get_json(&policy_path(&app, "/bundles"), &app.tokens.admin)
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    // Both uploads are in the audit, the repeat too: a retry whose first attempt stored the
    // bundle and then lost its event (a Redis blip, the request deadline) would otherwise
    // leave the upload out of the audit for good.
    let events = app
        .get_json(
            &format!("/v1/tenants/{}/audit?kind=policy", app.tenant),
            &app.tokens.admin,
        )
        .await;
    let uploads: Vec<(&Value, &Value)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (&e["details"]["change"], &e["details"]["created"]))
        .collect();
    assert_eq!(
        uploads,
        [
            (&json!("uploaded"), &json!(true)),
            (&json!("uploaded"), &json!(false))
        ],
        "{events}"
    );
    // The contract's export (no `kind`) holds the approvals' five kinds only: a client that
    // knows those broke on a `policy` event, whose `approval_id` names no approval.
    app.park("beside-the-uploads").await;
    let export = app
        .get_json(
            &format!("/v1/tenants/{}/audit", app.tenant),
            &app.tokens.admin,
        )
        .await;
    let kinds: Vec<&Value> = export["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["kind"])
        .collect();
    assert_eq!(kinds, [&json!("submitted")], "{export}");
    // Uploading does not activate.
    assert_eq!(
        app.submit("still-default", sensitive_read()).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn activation_and_rollback_change_verdicts_and_parked_approvals_keep_their_version() {
    let app = TestApp::spawn().await;
    let default_parked = app.park("before").await;
    let default_version = default_parked["policy_version"]
        .as_str()
        .unwrap()
        .to_owned();
    let version = upload(&app, reads_allowed()).await;
    assert_ne!(version, default_version);

    let response = activate(&app, &version).await;
    let overview: Value = response.json().await.unwrap();
    assert_eq!(overview["active"], version);
    assert_eq!(overview["effective_version"], version);
    assert_eq!(overview["history"], json!([null]));

    // In effect on this instance as soon as the activation answered.
    let allowed: Value = app
        .submit("after", sensitive_read())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    assert_eq!(allowed["policy_version"], version);
    assert_eq!(allowed["reasons"], json!(["v2: every read is fine"]));
    // The approval parked before keeps the version it was parked under.
    let before: Value = app
        .get("before", &app.tokens.agent)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before["policy_version"], default_version);

    let unknown = json!({ "version": format!("sha256:{}", "0".repeat(64)) });
    let response = call(
        &app,
        Method::PUT,
        "/active",
        &app.tokens.admin,
        Some(unknown),
    )
    .await;
    assert_problem(response, StatusCode::NOT_FOUND, "policy_version_not_found").await;
    // Something that is no version at all is the caller's mistake, not a missing version.
    for (method, rest, body) in [
        (
            Method::PUT,
            "/active".to_owned(),
            Some(json!({"version": "sha256:0000"})),
        ),
        (
            Method::PUT,
            "/candidate".to_owned(),
            Some(json!({"version": "latest"})),
        ),
        (Method::GET, "/bundles/sha256:XYZ".to_owned(), None),
    ] {
        let response = call(&app, method, &rest, &app.tokens.admin, body).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_identifier").await;
    }

    let response = call(&app, Method::POST, "/rollback", &app.tokens.admin, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["active"],
        Value::Null
    );
    let parked: Value = app
        .submit("rolled-back", sensitive_read())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(parked["decision"], "require_approval");
    assert_eq!(parked["policy_version"], default_version);
    let response = call(&app, Method::POST, "/rollback", &app.tokens.admin, None).await;
    assert_problem(response, StatusCode::CONFLICT, "no_earlier_policy").await;

    // Every change is an audit event, by who made it.
    let events = app
        .get_json(
            &format!("/v1/tenants/{}/audit?kind=policy", app.tenant),
            &app.tokens.admin,
        )
        .await;
    let changes: Vec<(&str, &str)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["details"]["change"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("uploaded", "carol"),
            ("activated", "carol"),
            ("rolled_back", "carol")
        ]
    );
}

/// A rollback sent with the `ETag` it was decided on applies once: retried after its answer
/// was lost, it is refused instead of rolling back a second version.
async fn assert_healthy(app: &TestApp) {
    let health = app.request(Method::GET, "/healthz", None).send().await;
    assert_eq!(
        health.unwrap().status(),
        StatusCode::OK,
        "the service is up"
    );
}

/// A tenant's policy whose builtin allocates what the input says (here terabytes at once: Rust
/// aborts on a failed allocation, and no regorus limit is checked inside a builtin) is
/// evaluated in a sandbox child: the child dies, that submit fails closed, and the service and
/// the next submit go on. An upload whose tests do the same is refused the same way (ADR-0019).
#[tokio::test]
async fn a_tenant_policy_that_exhausts_memory_stops_its_sandbox_not_the_service() {
    let app = TestApp::spawn().await;
    let version = upload(&app, greedy()).await;
    activate(&app, &version).await;

    let submit = |request_id: &'static str, n: u64| asking_greedy(&app, request_id, n);
    let stopped = submit("huge", 300_000_000_000).await;
    assert_eq!(stopped["decision"], "require_approval", "{stopped}");
    let reason = stopped["reasons"][0].as_str().unwrap_or_default();
    assert!(
        reason.contains("policy evaluation stopped") && reason.contains("failing closed"),
        "{stopped}"
    );
    assert_eq!(stopped["policy_version"], version);

    // The service is still here, and this tenant's next submit is answered (by a new child).
    let fine = submit("small", 3).await;
    assert_eq!(fine["decision"], "allow", "{fine}");
    assert_eq!(fine["reasons"], json!(["4 numbers"]));
    assert_healthy(&app).await;

    // An upload whose own tests do the same is validated in a sandbox too: refused, not fatal.
    let greedy_tests = json!({"files": [
        {"path": "approvals.rego", "text": "package approvals\nimport rego.v1\ndecision := {\"decision\": \"allow\", \"reasons\": [\"fine\"]}\n"},
        {"path": "greedy_test.rego", "text": "package approvals_test\nimport rego.v1\ntest_greedy if { count(numbers.range(0, 300000000000)) > 0 }\n"},
    ]});
    let refused = post_bundle(&app, &app.tokens.admin, greedy_tests).await;
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid").await;
    assert!(
        problem.to_string().contains("validation stopped"),
        "{problem}"
    );
    assert_healthy(&app).await;
}

/// A rule as deep as it is long (`1 + 1 + … + 1` over a thousand lines, a few kilobytes) needs
/// megabytes of stack to compile: a bundle the sandbox accepted aborted the service that
/// activated it (on a thread of tokio's 2 MiB), and every instance at each restart. It now
/// serves; one too deep for the sandbox child's stack is refused, and the service goes on.
#[tokio::test]
async fn a_bundle_too_deep_for_a_small_stack_is_served_and_one_too_deep_for_the_sandbox_refused() {
    let app = TestApp::spawn().await;
    let version = upload(&app, with_a_chain_of(1_000)).await;
    activate(&app, &version).await;
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{}/approvals", app.tenant),
            Some(&app.tokens.agent),
        )
        .json(&json!({"request_id": "deep", "action": {"type": "document_read", "resource": "notes.txt"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let verdict: Value = response.json().await.unwrap();
    assert_eq!(
        verdict["reasons"],
        json!(["v2: every read is fine"]),
        "{verdict}"
    );
    assert_eq!(verdict["policy_version"], version);

    let refused = post_bundle(&app, &app.tokens.admin, with_a_chain_of(9_000)).await;
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid").await;
    assert!(problem.to_string().contains("stopped"), "{problem}");
    assert_healthy(&app).await;
}

/// [`reads_allowed`] with an unused rule adding `links` ones, one per line.
fn with_a_chain_of(links: usize) -> Value {
    let mut bundle = reads_allowed();
    let chain = vec!["1"; links].join(" +\n");
    let text = format!("package deep\nimport rego.v1\n\nn := ({chain})\n");
    bundle["files"]
        .as_array_mut()
        .expect("files")
        .push(json!({"path": "deep.rego", "text": text}));
    bundle
}

/// A bundle whose builtin allocates what `input.context.n` says: terabytes for a large `n`,
/// which stops its sandbox child.
fn greedy() -> Value {
    json!({"files": [{"path": "approvals.rego", "text": r#"package approvals
import rego.v1

default decision := {"decision": "allow", "reasons": ["small enough"]}

decision := {"decision": "allow", "reasons": [sprintf("%d numbers", [count(numbers.range(0, input.context.n))])]} if {
	input.context.n > 0
}
"#}]})
}

/// A small memory limit binds: under 512 MiB, an evaluation that needs 720 MB stops its child.
/// The child's allocator had reserved 1 GiB of address space before it limited itself, and a
/// bundle had that gigabyte whatever the limit.
#[tokio::test]
async fn a_small_sandbox_memory_limit_binds() {
    let app = TestApp::spawn_with(|s| s.policy.sandbox.memory_limit_mib = 512).await;
    activate(&app, &upload(&app, greedy()).await).await;
    let submit = |request_id: &'static str, n: u64| asking_greedy(&app, request_id, n);

    // 30 million values of 24 bytes each.
    let stopped = submit("past-the-limit", 30_000_000).await;
    assert_eq!(stopped["decision"], "require_approval", "{stopped}");
    let reason = stopped["reasons"][0].as_str().unwrap_or_default();
    // It died (an allocation refused), not overran its deadline.
    assert!(reason.contains("the policy sandbox died"), "{stopped}");
    let fine = submit("within-it", 3).await;
    assert_eq!(fine["reasons"], json!(["4 numbers"]), "{fine}");
}

/// A read submitted to [`greedy`] with `context.n = n`: its answer, which must be a success.
async fn asking_greedy(app: &TestApp, request_id: &str, n: u64) -> Value {
    let response = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{}/approvals", app.tenant),
            Some(&app.tokens.agent),
        )
        .json(&json!({"request_id": request_id,
            "action": {"type": "document_read", "resource": "notes.txt"},
            "context": {"n": n}}))
        .send()
        .await
        .expect("submit");
    assert!(response.status().is_success(), "{}", response.status());
    response.json::<Value>().await.unwrap()
}

/// A candidate whose sandbox child dies decides nothing: the active policy answers, and the
/// failure is counted as the candidate's, which the alert that tells on-call "submits fail
/// closed" leaves out (it was counted as any evaluation's, and paged for it).
#[tokio::test]
async fn a_candidate_that_stops_its_sandbox_decides_nothing_and_is_counted_as_such() {
    let app = TestApp::spawn().await;
    let active = upload(&app, reads_allowed()).await;
    activate(&app, &active).await;
    let candidate = upload(&app, greedy()).await;
    assert_eq!(
        put_candidate(&app, &candidate).await.status(),
        StatusCode::OK
    );
    let candidate_failures = |text: &str| {
        text.lines()
            .find_map(|line| {
                line.strip_prefix(r#"approvals_policy_sandbox_failures_total{role="candidate"} "#)
            })
            .map_or(0.0, |value| value.parse::<f64>().unwrap())
    };
    let before = candidate_failures(&app.metrics().await);

    let answered = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{}/approvals", app.tenant),
            Some(&app.tokens.agent),
        )
        .json(&json!({"request_id": "huge",
            "action": {"type": "document_read", "resource": "notes.txt"},
            "context": {"n": 300_000_000_000u64}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(answered.status(), StatusCode::OK);
    let answered: Value = answered.json().await.unwrap();
    assert_eq!(answered["decision"], "allow", "{answered}");
    assert_eq!(answered["policy_version"], active);
    assert!(
        candidate_failures(&app.metrics().await) > before,
        "counted as the candidate's"
    );
}

#[tokio::test]
async fn a_retried_rollback_with_if_match_does_not_roll_back_twice() {
    let app = TestApp::spawn().await;
    let first = upload(&app, reads_allowed()).await;
    activate(&app, &first).await;
    let mut second_bundle = reads_allowed();
    second_bundle["files"][0]["text"] = json!(second_bundle["files"][0]["text"]
        .as_str()
        .unwrap()
        .replace("v2:", "v3:"));
    let second = upload(&app, second_bundle).await;
    let activated = activate(&app, &second).await;
    let etag = activated.headers()["etag"].to_str().unwrap().to_owned();

    let read = call(&app, Method::GET, "", &app.tokens.admin, None).await;
    assert_eq!(read.headers()["etag"].to_str().unwrap(), etag);
    let overview: Value = read.json().await.unwrap();
    assert!(
        etag.starts_with(&format!("\"{}-", overview["generation"])),
        "{etag}"
    );

    let rollback = || {
        app.request(
            Method::POST,
            &policy_path(&app, "/rollback"),
            Some(&app.tokens.admin),
        )
        .header("if-match", &etag)
        .send()
    };
    let response = rollback().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_ne!(response.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(response.json::<Value>().await.unwrap()["active"], first);

    // The same request again (a client retrying after a lost answer).
    let again = rollback().await.unwrap();
    assert_problem(
        again,
        StatusCode::PRECONDITION_FAILED,
        "policy_precondition_failed",
    )
    .await;
    let overview = app
        .get_json(&policy_path(&app, ""), &app.tokens.admin)
        .await;
    assert_eq!(overview["active"], first, "rolled back only once");

    // The other changes honour it too; `*` and no If-Match apply to any state.
    let stale = app
        .request(
            Method::PUT,
            &policy_path(&app, "/candidate"),
            Some(&app.tokens.admin),
        )
        .header("if-match", &etag)
        .json(&json!({ "version": second }))
        .send()
        .await
        .unwrap();
    assert_problem(
        stale,
        StatusCode::PRECONDITION_FAILED,
        "policy_precondition_failed",
    )
    .await;
    let any = app
        .request(
            Method::DELETE,
            &policy_path(&app, "/candidate"),
            Some(&app.tokens.admin),
        )
        .header("if-match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(any.status(), StatusCode::OK);
}

/// A candidate's verdict on a parked approval (`details.shadow`) is for admins, as the audit
/// and the tenant's policy are: their live stream carries it, a reviewer's (or a bot's, or
/// the inbox's) does not. Reviewers saw an unreleased policy's answers and reasons on every
/// parked approval.
#[tokio::test]
async fn a_candidates_verdicts_reach_admins_live_streams_not_reviewers() {
    let app = TestApp::spawn().await;
    let version = upload(&app, reads_allowed()).await;
    assert_eq!(put_candidate(&app, &version).await.status(), StatusCode::OK);
    let mut reviewer = EventFrames::open(&app, &app.tokens.reviewer).await;
    let mut admin = EventFrames::open(&app, &app.tokens.admin).await;
    app.park("trialled").await;
    let seen_by_admin = admin.next_parked().await;
    assert_eq!(
        seen_by_admin["details"]["shadow"]["policy_version"], version,
        "{seen_by_admin}"
    );
    let seen_by_reviewer = reviewer.next_parked().await;
    assert_eq!(seen_by_reviewer["approval_id"], "trialled");
    assert_eq!(
        seen_by_reviewer["details"]["policy_version"],
        seen_by_admin["details"]["policy_version"]
    );
    assert!(
        seen_by_reviewer["details"].get("shadow").is_none(),
        "{seen_by_reviewer}"
    );
}

/// A tenant's live event stream, read frame by frame.
struct EventFrames {
    response: reqwest::Response,
    buffer: String,
}

impl EventFrames {
    async fn open(app: &TestApp, token: &str) -> Self {
        let response = app
            .request(
                Method::GET,
                &format!("/v1/tenants/{}/events", app.tenant),
                Some(token),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The data of the next `parked` event.
    async fn next_parked(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if frame.lines().any(|line| line == "event: parked") {
                    let data = frame
                        .lines()
                        .find_map(|line| line.strip_prefix("data: "))
                        .expect("a data line");
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(15), self.response.chunk())
                .await
                .expect("an event within 15 s")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn a_candidate_is_evaluated_beside_the_active_policy_without_deciding() {
    // A tenant of its own: the metrics recorder, and its count below, are shared by every
    // test in this binary.
    let app = crate::support::Harness {
        backend: crate::support::Backend::Redis,
        tenant: approvals_core::conformance::fresh_tenant("shadow").to_string(),
        other_tenant: approvals_core::conformance::fresh_tenant("other").to_string(),
    }
    .spawn()
    .await;
    let version = upload(&app, reads_allowed()).await;
    let response = put_candidate(&app, &version).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["candidate"],
        version
    );

    // The active (default) policy decides; the candidate would have allowed.
    let parked = app.park("trialled-1").await;
    assert_ne!(parked["policy_version"], version);
    let events = app
        .get_json(
            &format!("/v1/tenants/{}/audit?kind=submitted", app.tenant),
            &app.tokens.admin,
        )
        .await;
    let shadow = &events["items"][0]["details"]["shadow"];
    assert_eq!(shadow["policy_version"], version, "{events}");
    assert_eq!(shadow["decision"], "allow");
    assert_eq!(shadow["agrees"], false);
    let tenant = app.tenant.clone();
    app.metrics_until(
        &app.base,
        Duration::from_secs(5),
        "the disagreement counted",
        |text| {
            text.lines().any(|l| {
                l.starts_with(&format!(
                    "approvals_policy_shadow_disagreements_total{{tenant=\"{tenant}\"}} 1"
                ))
            })
        },
    )
    .await;
    // A retry is answered from its record: the trial counts each request once.
    let retried = app.submit("trialled-1", sensitive_read()).await;
    assert_eq!(retried.status(), StatusCode::OK);
    app.park("trialled-2").await;
    app.metrics_until(
        &app.base,
        Duration::from_secs(5),
        "two requests trialled, not three",
        |text| {
            text.lines().any(|l| {
                l == format!("approvals_policy_shadow_evaluations_total{{tenant=\"{tenant}\"}} 2")
            })
        },
    )
    .await;

    let response = call(&app, Method::DELETE, "/candidate", &app.tokens.admin, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    app.park("untrialled").await;
    let events = app
        .get_json(
            &format!("/v1/tenants/{}/audit?kind=submitted", app.tenant),
            &app.tokens.admin,
        )
        .await;
    let untrialled = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["approval_id"] == "untrialled")
        .expect("the last submit's event");
    assert!(untrialled["details"].get("shadow").is_none(), "{events}");
}

/// The acceptance test of hot reload: two instances under submit load, an activation on one,
/// the other serving the new version after a few polls (one is 250 ms; the bound leaves room
/// for a stall of the loaded machine, which the two instances and the load share), and no
/// request failing meanwhile (the Redis deadline, too, is long enough for such a stall: a 503
/// there would be the machine's, not the activation's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_activation_reaches_every_instance_within_a_few_polls_under_load() {
    // One evaluation thread per instance, so one sandbox child each, started below before the
    // clock runs: what is timed is the activation reaching the instance, not a child's start.
    let app = Arc::new(
        TestApp::spawn_with(|s| {
            s.redis.call_timeout = Duration::from_secs(10);
            s.limits.policy_concurrency = 1;
        })
        .await,
    );
    let (other, _stop_other) = app.second_instance().await;
    let warm_up = upload(&app, reads_allowed_marked(1)).await;
    activate(&app, &warm_up).await;
    for (n, base) in [app.base.clone(), other.clone()].iter().enumerate() {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let body: Value = app
                .submit_on(base, &format!("warm-{n}-{attempt}"))
                .await
                .json()
                .await
                .unwrap();
            if body["policy_version"] == warm_up && body["decision"] == "allow" {
                break;
            }
            assert!(attempt < 500, "never warmed up: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let version = upload(&app, reads_allowed()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let base = if worker % 2 == 0 {
            app.base.clone()
        } else {
            other.clone()
        };
        let (app, stop, failures, sent) =
            (app.clone(), stop.clone(), failures.clone(), sent.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let response = app.submit_on(&base, &format!("load-{worker}-{n}")).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if !response.status().is_success() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    activate(&app, &version).await;
    // From the activation's answer: the admin's call itself is not the propagation.
    let activated = Instant::now();
    // Polled on the other instance until it answers with the new version.
    let mut probe = 0;
    let reached = loop {
        probe += 1;
        let body: Value = app
            .submit_on(&other, &format!("probe-{probe}"))
            .await
            .json()
            .await
            .unwrap();
        if body["policy_version"] == version {
            assert_eq!(body["decision"], "allow");
            break activated.elapsed();
        }
        assert!(
            activated.elapsed() < Duration::from_secs(15),
            "never reached the other instance"
        );
    };
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        reached < Duration::from_secs(4),
        "the other instance took {reached:?}"
    );
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the activation"
    );
}

/// `approvals policy push` as a compliance team's CI would run it: a refused bundle exits 1
/// with the service's messages; a good one is uploaded and activated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_push_uploads_and_activates_through_the_api() {
    let app = TestApp::spawn().await;
    let push_as = |url: String, token: &str, dir: &std::path::Path| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_approvals"))
            .args([
                "policy",
                "push",
                "--tenant",
                &app.tenant,
                "--activate",
                "--url",
            ])
            .arg(url)
            .arg(dir)
            .env("APPROVALS_TOKEN", token)
            .output()
    };
    let push_to = |url: String, dir: &std::path::Path| push_as(url, &app.tokens.admin, dir);
    let push = |dir: &std::path::Path| push_to(app.base.clone(), dir);
    let write = |bundle: &Value| {
        let dir = tempfile::tempdir().unwrap();
        for file in bundle["files"].as_array().unwrap() {
            let path = dir.path().join(file["path"].as_str().unwrap());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, file["text"].as_str().unwrap()).unwrap();
        }
        dir
    };

    let mut failing = reads_allowed();
    failing["files"][1]["text"] = json!(
        "package approvals_test\nimport rego.v1\ntest_reads_wait if {\n\tdata.approvals.decision.decision == \"deny\" with input as {\"action\": {\"type\": \"document_read\"}}\n}\n"
    );
    let refused = push(write(&failing).path()).await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("policy_invalid") && stderr.contains("test_reads_wait"),
        "{stderr}"
    );

    // No service there: not the bundle's fault, and a pipeline can tell (exit 3, not 1).
    let nobody = format!("http://127.0.0.1:{}", approvals_testkit::free_port());
    let unreached = push_to(nobody, write(&reads_allowed()).path())
        .await
        .unwrap();
    assert_eq!(unreached.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unreached.stderr).contains("try again"));

    // A token that may not upload, or a URL that is not the service's: the pipeline's
    // settings are wrong, not the bundle (exit 2, not 1).
    let good = write(&reads_allowed());
    let wrong_settings = [
        (app.base.clone(), app.tokens.reviewer.clone()),
        (app.base.clone(), "not-a-token".to_owned()),
        (format!("{}/nowhere", app.base), app.tokens.admin.clone()),
    ];
    for (url, token) in wrong_settings {
        let refused = push_as(url.clone(), &token, good.path()).await.unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("check the token"), "{stderr}");
    }

    let pushed = push(good.path()).await.unwrap();
    let stdout = String::from_utf8_lossy(&pushed.stdout);
    assert!(
        pushed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let overview = app
        .get_json(&policy_path(&app, ""), &app.tokens.admin)
        .await;
    let version = overview["active"].as_str().expect("activated").to_owned();
    assert!(stdout.contains(&version), "{stdout}");
    let answer: Value = app
        .submit("pushed", sensitive_read())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["policy_version"], version);
    assert_eq!(answer["decision"], "allow");
}

/// Bundle validations run one at a time even when their requests give up: an upload whose
/// tests outlast `server.request_timeout` is answered `408`, but its validation runs on (it
/// cannot be stopped) and holds the turn, so another tenant's upload waits instead of running
/// beside it, and gets its own turn once the first is done. The same tenant's next upload is
/// refused at once meanwhile (one at a time per tenant).
#[tokio::test]
async fn an_upload_that_timed_out_still_holds_the_validation_turn() {
    let app = TestApp::spawn_with(|s| {
        s.server.request_timeout = Duration::from_secs(1);
        s.redis.call_timeout = Duration::from_millis(500);
    })
    .await;
    // About 25 million iterations that collect nothing: seconds of CPU (the test time limit
    // ends it at 10 s), little memory.
    let slow = json!({"files": [
        {"path": "approvals.rego", "text": "package approvals\nimport rego.v1\ndecision := {\"decision\": \"allow\", \"reasons\": [\"x\"]}\n"},
        {"path": "approvals_test.rego", "text": "package approvals_test\nimport rego.v1\ntest_slow if {\n\tcount([a | some a in numbers.range(1, 5000); some b in numbers.range(1, 5000); a == -1]) == 0\n}\n"},
    ]});
    let started = Instant::now();
    let first = post_bundle(&app, &app.tokens.admin, slow).await;
    assert_problem(first, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;
    let same_tenant = post_bundle(&app, &app.tokens.admin, reads_allowed()).await;
    assert_problem(
        same_tenant,
        StatusCode::TOO_MANY_REQUESTS,
        "upload_in_progress",
    )
    .await;

    let other_tenant = || async {
        app.request(
            Method::POST,
            &format!("/v1/tenants/{OTHER_TENANT}/policy/bundles"),
            Some(&app.tokens.platform_admin),
        )
        .json(&reads_allowed())
        .send()
        .await
        .unwrap()
    };
    let second = other_tenant().await;
    assert_problem(second, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;

    // Once the first validation is done, the other tenant's upload goes through (its own
    // timed-out validation may have stored it meanwhile: 200 then).
    let stored = loop {
        let response = other_tenant().await;
        if response.status().is_success() {
            break response;
        }
        if matches!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            // Its own earlier upload still waits for the turn (or a Redis call of this one met
            // its deadline on a loaded machine): poll again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            assert_problem(response, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the turn was never given back"
        );
    };
    let body: Value = stored.json().await.unwrap();
    assert_eq!(body["tests"]["failed"], 0, "{body}");
}

/// Makes the stored bundle `version` of the app's tenant unreadable, as a bad restore or a hand
/// edit would.
async fn spoil_bundle(app: &TestApp, version: &str) {
    let mut conn = app.redis().connection().await;
    let () = redis::cmd("SET")
        .arg(format!("policy:{}:bundle:{version}", app.tenant))
        .arg("{")
        .query_async(&mut conn)
        .await
        .expect("set");
}

/// An instance that cannot load a tenant's own bundle (here unreadable in the store; a Redis
/// timeout does the same) answers that tenant's new submits `503 policy_not_loaded` and keeps
/// trying; it never evaluates them with the platform default, which the tenant replaced. A
/// repeated `request_id` still gets its record.
#[tokio::test]
async fn a_tenant_whose_bundle_cannot_be_loaded_is_not_answered_with_the_default() {
    let mut app = TestApp::spawn().await;
    let version = upload(&app, reads_allowed()).await;
    activate(&app, &version).await;
    assert_eq!(
        app.submit("before", sensitive_read()).await.status(),
        StatusCode::OK,
        "the tenant's bundle allows reads"
    );
    let write = json!({"type": "email_send", "to": "cfo@example.com"});
    let parked = app.submit("parked-before", write.clone()).await;
    assert_eq!(parked.status(), StatusCode::CREATED);
    spoil_bundle(&app, &version).await;
    // A fresh instance: nothing loaded yet for the tenant.
    app.restart().await;
    let response = app.submit("after", sensitive_read()).await;
    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "policy_not_loaded",
    )
    .await;
    // A repeat is answered from its record, which needs no policy.
    let repeat = app.submit("parked-before", write).await;
    assert_eq!(repeat.status(), StatusCode::OK);
    let record: Value = repeat.json().await.unwrap();
    assert_eq!(record["approval"]["id"], "parked-before", "{record}");
    assert_eq!(record["approval"]["policy_version"], version);
}

/// A candidate that cannot be loaded never decides, so it must not keep the active bundle out:
/// the tenant's submits are answered by its active bundle, without the trial.
#[tokio::test]
async fn a_candidate_that_cannot_be_loaded_does_not_keep_the_active_bundle_out() {
    let mut app = TestApp::spawn().await;
    let active = upload(&app, reads_allowed()).await;
    activate(&app, &active).await;
    let trial = json!({"files": [{"path": "approvals.rego", "text": "package approvals\nimport rego.v1\ndecision := {\"decision\": \"deny\", \"reasons\": [\"trial\"]}\n"}]});
    let trial = upload(&app, trial).await;
    let response = put_candidate(&app, &trial).await;
    assert_eq!(response.status(), StatusCode::OK);
    spoil_bundle(&app, &trial).await;
    app.restart().await;
    let response = app.submit("after", sensitive_read()).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the active bundle allows reads"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["policy_version"], active, "{body}");
}

/// One tenant's unreadable policy state (a bad restore, a hand edit) stops neither the other
/// tenants' reloads nor its own service: the others' activations still reach every instance,
/// and the tenant keeps the policy it was served, never the platform default.
#[tokio::test]
async fn an_unreadable_policy_state_holds_up_no_other_tenant() {
    let app = TestApp::spawn().await;
    let (other, _stop_other) = app.second_instance().await;
    let mut conn = app.redis().connection().await;
    let () = redis::cmd("HSET")
        .arg("policy:states")
        .arg("someone-else")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .expect("hset");
    let version = upload(&app, reads_allowed()).await;
    activate(&app, &version).await;
    // Served by the other instance once its reload has it.
    let served_on_other = |n: usize| {
        let app = &app;
        let other = other.clone();
        async move {
            let body: Value = app
                .submit_on(&other, &format!("probe-{n}"))
                .await
                .json()
                .await
                .unwrap();
            body["policy_version"].as_str().map(str::to_owned)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        if served_on_other(n).await.as_deref() == Some(version.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the activation never reached the other instance"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Now the tenant's own state is unreadable: it keeps what it was served.
    let () = redis::cmd("HSET")
        .arg("policy:states")
        .arg(app.tenant.as_str())
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .expect("hset");
    for _ in 0..5 {
        n += 1;
        assert_eq!(served_on_other(n).await.as_deref(), Some(version.as_str()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A change whose audit event cannot be written (here Redis refuses XADD) is still a change
/// made: it answers 200, so that a caller's retry does not apply it twice.
#[tokio::test]
async fn a_policy_change_made_answers_made_even_if_its_audit_write_fails() {
    let app = TestApp::spawn().await;
    let version = upload(&app, reads_allowed()).await;
    let mut admin = app.redis().connection().await;
    let () = crate::support::acl_rule("-xadd")
        .query_async(&mut admin)
        .await
        .unwrap();
    let response = call(
        &app,
        Method::PUT,
        "/active",
        &app.tokens.admin,
        Some(json!({ "version": version })),
    )
    .await;
    let () = crate::support::acl_rule("+xadd")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let overview = app
        .get_json(&policy_path(&app, ""), &app.tokens.admin)
        .await;
    assert_eq!(overview["active"], version, "{overview}");
}

/// A change answers with the state it committed, whatever a read after it meets: here the
/// bundle listing fails (Redis refuses HMGET), and the activation still answers 200 with its
/// own generation's ETag instead of a 503 that a retry without If-Match would apply again.
#[tokio::test]
async fn a_policy_change_answers_with_what_it_committed_even_if_a_later_read_fails() {
    let app = TestApp::spawn().await;
    let version = upload(&app, reads_allowed()).await;
    let before = call(&app, Method::GET, "", &app.tokens.admin, None).await;
    let generation: u64 = before.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut admin = app.redis().connection().await;
    let () = crate::support::acl_rule("-hmget")
        .query_async(&mut admin)
        .await
        .unwrap();
    let response = call(
        &app,
        Method::PUT,
        "/active",
        &app.tokens.admin,
        Some(json!({ "version": version })),
    )
    .await;
    let () = crate::support::acl_rule("+hmget")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with(&format!("\"{}-", generation + 1)),
        "{etag}"
    );
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["active"], version, "{answer}");
}

/// An upload that was stored answers so, though what it reads afterwards for its answer
/// fails (here another version's summary is unreadable): it read the whole policy view and
/// answered 500 (or 503 for a Redis blip), and the client's retry got `created: false`.
#[tokio::test]
async fn an_upload_stored_answers_created_though_another_versions_summary_is_unreadable() {
    let app = TestApp::spawn().await;
    let first = upload(&app, reads_allowed()).await;
    let mut conn = app.redis().connection().await;
    let () = redis::cmd("HSET")
        .arg(format!("policy:{}:summaries", app.tenant))
        .arg(&first)
        .arg("{")
        .query_async(&mut conn)
        .await
        .unwrap();
    let response = post_bundle(&app, &app.tokens.admin, reads_allowed_marked(1)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["created"], true, "{answer}");
    assert_ne!(answer["bundle"]["version"], first.as_str(), "{answer}");
    assert_eq!(answer["bundle"]["active"], false, "{answer}");
}

/// A bundle an instance could not read (here: not there yet, as on a replica promoted before
/// it caught up; the same goes for a read Redis refused) is read again at its next poll, not
/// held as a broken bundle: the tenant's submits answer `503 policy_not_loaded` only while the
/// store lacks it. A failed read was cached for 10 s like a bundle that does not compile.
#[tokio::test]
async fn a_bundle_read_that_failed_is_tried_again_at_the_next_poll() {
    let app = TestApp::spawn().await;
    let version = upload(&app, reads_allowed()).await;
    activate(&app, &version).await;
    let key = format!("policy:{}:bundle:{version}", app.tenant);
    let aside = format!("{key}:aside");
    let mut admin = app.redis().connection().await;
    let () = redis::cmd("RENAME")
        .arg(&key)
        .arg(&aside)
        .query_async(&mut admin)
        .await
        .unwrap();
    // An instance that starts now reads the tenant's state, but finds no bundle.
    let (other, _stop) = app.second_instance_with(|_| {}).await;
    let unloaded = app.submit_on(&other, "while-missing").await;
    assert_problem(
        unloaded,
        StatusCode::SERVICE_UNAVAILABLE,
        "policy_not_loaded",
    )
    .await;
    let () = redis::cmd("RENAME")
        .arg(&aside)
        .arg(&key)
        .query_async(&mut admin)
        .await
        .unwrap();
    // A few polls (250 ms each), well inside the 10 s a cached failure would last.
    let deadline = Instant::now() + Duration::from_secs(7);
    let mut n = 0;
    loop {
        n += 1;
        let answer = app.submit_on(&other, &format!("after-{n}")).await;
        if answer.status().is_success() {
            let body: Value = answer.json().await.unwrap();
            assert_eq!(body["policy_version"], version, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after the bundle is back",
            answer.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An upload whose tests outlast the request's deadline answers 408, but is still validated,
/// stored and recorded: the client's retry finds it. It used to be dropped with the request,
/// so a bundle whose tests took about `server.request_timeout` could never be uploaded.
#[tokio::test]
async fn an_upload_cut_off_by_the_request_deadline_is_still_stored() {
    // Deadlines every other call of the test meets on a loaded machine too; the bundle's test
    // takes a few seconds (a debug build), well past the upload's.
    let app = TestApp::spawn_with(|s| {
        s.server.request_timeout = Duration::from_secs(1);
        s.redis.call_timeout = Duration::from_millis(700);
    })
    .await;
    let bundle = reads_allowed_with_a_test_of(2_000_000);
    let response = post_bundle(&app, &app.tokens.admin, bundle.clone()).await;
    assert_problem(response, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = app
            .request(
                Method::GET,
                &policy_path(&app, "/bundles"),
                Some(&app.tokens.admin),
            )
            .send()
            .await
            .unwrap();
        // A poll that itself met a deadline (408, 503) polls again.
        let status = listed.status();
        let listed: Value = listed.json().await.unwrap_or_default();
        if status == StatusCode::OK
            && listed["items"]
                .as_array()
                .is_some_and(|items| items.len() == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never stored: {status} {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = app
        .get_json(
            &format!("/v1/tenants/{}/audit?kind=policy", app.tenant),
            &app.tokens.admin,
        )
        .await;
    assert_eq!(
        events["items"][0]["details"]["change"], "uploaded",
        "{events}"
    );
}

/// An upload refused after the request's deadline (its tests outlast it, then fail) is not
/// lost: the same bundle sent again is told why at once. It was validated anew every time,
/// answered 408 every time, and `policy push` told its team to retry for ever.
#[tokio::test]
async fn a_refusal_found_after_the_request_deadline_answers_the_retry() {
    // As above: deadlines the test's other calls meet, a test that outlasts them.
    let app = TestApp::spawn_with(|s| {
        s.server.request_timeout = Duration::from_secs(1);
        s.redis.call_timeout = Duration::from_millis(700);
    })
    .await;
    let mut bundle = reads_allowed();
    let text = bundle["files"][1]["text"].as_str().unwrap().to_owned();
    bundle["files"][1]["text"] = json!(format!(
        "{text}\ntest_takes_a_while_then_fails if {{\n\tcount([x | some x in numbers.range(1, 2000000)]) == 0\n}}\n"
    ));
    let response = post_bundle(&app, &app.tokens.admin, bundle.clone()).await;
    assert_problem(response, StatusCode::REQUEST_TIMEOUT, "request_timeout").await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let refused = loop {
        let response = post_bundle(&app, &app.tokens.admin, bundle.clone()).await;
        match response.status() {
            // The first one is still being validated, or this call met a deadline of its own.
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::SERVICE_UNAVAILABLE => {
                assert!(Instant::now() < deadline, "the validation never ended");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => break response,
        }
    };
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid").await;
    assert!(
        problem["errors"]
            .to_string()
            .contains("test_takes_a_while_then_fails"),
        "{problem}"
    );
}

/// The load-time trial (the decision on an empty input) runs at upload, not again when a
/// sandbox child compiles the stored bundle: a bundle whose trial fails only from some time on
/// (`time.now_ns`) made every submit of its tenant fail closed from then, though the inputs it
/// is asked about evaluate fine.
#[tokio::test]
async fn a_bundle_is_not_tried_again_each_time_a_sandbox_compiles_it() {
    let app = TestApp::spawn().await;
    // Far enough out for the upload's own trial, in a fresh child, to run before it on a
    // loaded machine too (2 s was not always).
    let from = chrono::Utc::now().timestamp_nanos_opt().unwrap() + 15_000_000_000;
    let text = format!(
        r#"package approvals
import rego.v1

default decision := {{"decision": "require_approval", "reasons": ["anything else waits"]}}

decision := {{"decision": "allow", "reasons": ["a read"]}} if input.action.type == "document_read"

# Two values at once, an evaluation error, for an empty input only, and only from fifteen
# seconds after the upload.
decision := {{"decision": "allow", "reasons": ["one"]}} if {{
	not input.action
	time.now_ns() > {from}
}}

decision := {{"decision": "deny", "reasons": ["another"]}} if {{
	not input.action
	time.now_ns() > {from}
}}
"#
    );
    let version = upload(
        &app,
        json!({"files": [{"path": "approvals.rego", "text": text}]}),
    )
    .await;
    activate(&app, &version).await;
    while chrono::Utc::now().timestamp_nanos_opt().unwrap() <= from {
        // The bundle's own clock is what the test is about: past `from`, the trial fails.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = app
        .submit(
            "read-later",
            json!({"type": "document_read", "resource": "a"}),
        )
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["decision"], "allow", "{answer}");
}

/// An instance that can no longer start a sandbox child (its binary removed in an upgrade, a
/// process limit) answers an upload `503 policy_sandbox_unavailable`: the bundle
/// was not judged. It answered `422 policy_invalid` (and `policy push` exit 1, "fix the
/// bundle"), sending the team to debug a bundle that was fine.
#[tokio::test]
async fn an_upload_this_instance_cannot_validate_is_503_not_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("approvals");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_approvals"), &binary).unwrap();
    let app = TestApp::spawn_with(|s| s.policy.sandbox.binary = Some(binary.clone())).await;
    std::fs::remove_file(&binary).unwrap();
    let response = post_bundle(&app, &app.tokens.admin, reads_allowed()).await;
    let problem = assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "policy_sandbox_unavailable",
    )
    .await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("cannot validate"), "{problem}");
    // The install path and the OS error are the operator's, in the log.
    assert!(
        !detail.contains(&dir.path().display().to_string()),
        "{problem}"
    );
    // With the binary back, the same bundle is stored: nothing was held against it.
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_approvals"), &binary).unwrap();
    let response = post_bundle(&app, &app.tokens.admin, reads_allowed()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// One upload per tenant at a time on an instance: a second one sent while the first is still
/// being validated is refused at once (429 upload_in_progress, with Retry-After) instead of
/// queueing ahead of other tenants' uploads; once the first is answered, uploads go on.
#[tokio::test]
async fn a_tenant_validates_one_upload_at_a_time() {
    let app = TestApp::spawn().await;
    // About a second of tests in a debug build: long enough to be seen in progress, far from
    // the 10 s a test may take on a loaded CI machine (3 million took 5 s here, over 10 there).
    let slow = reads_allowed_with_a_test_of(600_000);
    let first = {
        let (http, url, token) = (
            app.http.clone(),
            app.url(&policy_path(&app, "/bundles")),
            app.tokens.admin.clone(),
        );
        // Sent again while one of the loop's quick uploads below holds the tenant's slot (it
        // may get there first): the slow upload is what must take the slot and keep it.
        tokio::spawn(async move {
            loop {
                let status = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&slow)
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status != StatusCode::TOO_MANY_REQUESTS {
                    return status;
                }
            }
        })
    };
    let refused = loop {
        let response = post_bundle(&app, &app.tokens.admin, reads_allowed_marked(1)).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break response;
        }
        assert!(
            !first.is_finished(),
            "never refused while the first upload ran"
        );
        assert!(
            response.status().is_success(),
            "before the first took its place"
        );
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "upload_in_progress").await;
    assert_eq!(first.await.unwrap(), StatusCode::CREATED);
    let after = post_bundle(&app, &app.tokens.admin, reads_allowed_marked(2)).await;
    assert_eq!(after.status(), StatusCode::CREATED);
}

/// A version pushed again counts as the latest upload for what is kept: the next upload's
/// prune deletes an older one, not the version a pipeline just pushed (and is about to
/// activate, which would then be 404).
#[tokio::test]
async fn a_version_pushed_again_is_kept_as_the_newest() {
    let app = TestApp::spawn_with(|s| s.policy.max_stored_bundles = 2).await;
    let first = upload(&app, reads_allowed_marked(0)).await;
    let second = upload(&app, reads_allowed_marked(1)).await;
    let again = post_bundle(&app, &app.tokens.admin, reads_allowed_marked(0)).await;
    assert_eq!(again.status(), StatusCode::OK);
    let third = post_bundle(&app, &app.tokens.admin, reads_allowed_marked(2)).await;
    assert_eq!(third.status(), StatusCode::CREATED);
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["pruned"], json!([second]), "{body}");
    assert_eq!(activate(&app, &first).await.status(), StatusCode::OK);
}

/// `reads_allowed` with one more test, which counts to `n`: its validation takes a while.
fn reads_allowed_with_a_test_of(n: u64) -> Value {
    let mut bundle = reads_allowed();
    let text = bundle["files"][1]["text"].as_str().unwrap().to_owned();
    bundle["files"][1]["text"] = json!(format!(
        "{text}\ntest_takes_a_while if {{\n\tcount([x | some x in numbers.range(1, {n})]) > 0\n}}\n"
    ));
    bundle
}

/// `reads_allowed` with `mark` in a comment: a version of its own.
fn reads_allowed_marked(mark: usize) -> Value {
    let mut bundle = reads_allowed();
    let text = bundle["files"][0]["text"].as_str().unwrap().to_owned();
    bundle["files"][0]["text"] = json!(format!("{text}# upload {mark}\n"));
    bundle
}

/// A pipeline that uploads on every commit must not grow the store (and every listing, which
/// reads it) for good: past `policy.max_stored_bundles` an upload deletes the oldest versions
/// the tenant's policy does not name, and says which. Versions it names (active, candidate,
/// rollback history) stay whatever their age; a deleted one cannot be activated.
#[tokio::test]
async fn uploads_past_the_stored_count_delete_the_oldest_versions_no_policy_names() {
    let app = TestApp::spawn_with(|s| s.policy.max_stored_bundles = 2).await;
    let mut versions = Vec::new();
    let mut pruned = Vec::new();
    for n in 0..6 {
        let response = post_bundle(&app, &app.tokens.admin, reads_allowed_marked(n)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        versions.push(body["bundle"]["version"].as_str().unwrap().to_owned());
        pruned.push(body["pruned"].clone());
        match n {
            0 => drop(activate(&app, &versions[0]).await),
            1 => assert_eq!(
                put_candidate(&app, &versions[1]).await.status(),
                StatusCode::OK
            ),
            _ => {}
        }
    }
    // Besides the active and the candidate, two others are kept: the fifth upload made three
    // and deleted the oldest of them, the sixth the next.
    assert_eq!(
        pruned,
        [
            json!([]),
            json!([]),
            json!([]),
            json!([]),
            json!([versions[2]]),
            json!([versions[3]])
        ]
    );
    // The stored versions, as listed, newest upload first.
    let listed = || async {
        let body: Value = call(&app, Method::GET, "/bundles", &app.tokens.admin, None)
            .await
            .json()
            .await
            .unwrap();
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["version"].as_str().unwrap().to_owned())
            .collect::<Vec<String>>()
    };
    let kept = [
        versions[5].clone(),
        versions[4].clone(),
        versions[1].clone(),
        versions[0].clone(),
    ];
    assert_eq!(listed().await, kept);
    let gone = call(
        &app,
        Method::GET,
        &format!("/bundles/{}", versions[2]),
        &app.tokens.admin,
        None,
    )
    .await;
    assert_problem(gone, StatusCode::NOT_FOUND, "policy_version_not_found").await;
    let activate_gone = call(
        &app,
        Method::PUT,
        "/active",
        &app.tokens.admin,
        Some(json!({ "version": versions[3] })),
    )
    .await;
    assert_problem(
        activate_gone,
        StatusCode::NOT_FOUND,
        "policy_version_not_found",
    )
    .await;

    // Bundles stored before listings read summaries are listed from the bundles themselves.
    let mut conn = app.redis().connection().await;
    let () = redis::cmd("DEL")
        .arg(format!("policy:{}:summaries", app.tenant))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(listed().await, kept);
}

/// A stored bundle is evaluated in sandbox children only, its load-time trial included. This
/// one passed its validation (in a child) and was activated, but its decision allocates
/// terabytes once a moment has passed (`time.now_ns`): an instance that starts after that
/// moment aborted at start-up, loading it in-process, so every instance crash-looped, for every
/// tenant. It now starts, and that tenant's submits fail closed in a child.
#[tokio::test]
async fn an_instance_starting_after_a_stored_bundle_turned_greedy_still_serves() {
    let app = TestApp::spawn().await;
    // Far enough out that its upload and activation (trials in fresh sandbox children) are
    // done before it turns, on a loaded machine too.
    let turns_at = std::time::SystemTime::now() + Duration::from_secs(15);
    let turns_at_ns = turns_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bundle = json!({"files": [{"path": "approvals.rego", "text": format!(r#"package approvals
import rego.v1

default decision := {{"decision": "allow", "reasons": ["not yet"]}}

decision := {{"decision": "allow", "reasons": [sprintf("%d", [count(numbers.range(0, 300000000000))])]}} if {{
	time.now_ns() > {turns_at_ns}
}}
"#)}]});
    let version = upload(&app, bundle).await;
    assert_eq!(activate(&app, &version).await.status(), StatusCode::OK);
    assert!(
        std::time::SystemTime::now() < turns_at,
        "activated only after the bundle turned greedy: the test's margin is too short"
    );

    // Waiting for the moment itself (the bundle's own clock), not for an event.
    if let Ok(left) = turns_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(100)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = approvals_testkit::free_port();
    let config = app.config_file(dir.path(), port);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_approvals"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info");
    let mut instance = approvals_testkit::process::Process::spawn(command);
    instance.wait_for_line("serving", Duration::from_secs(30));

    let response = app
        .http
        .post(format!(
            "http://127.0.0.1:{port}/v1/tenants/{}/approvals",
            app.tenant
        ))
        .bearer_auth(&app.tokens.agent)
        .json(&json!({"request_id": "after-the-turn", "action": {"type": "document_read", "resource": "notes.txt"}}))
        .send()
        .await
        .expect("the new instance answers");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["decision"], "require_approval", "{answer}");
    assert!(
        answer["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("policy evaluation stopped")),
        "{answer}"
    );
}

/// A change's answer says whether the instance that answered runs it (`loaded_here`): a
/// bundle this instance cannot load (here: changed in the store since it was validated, so
/// its content no longer matches its version) is activated in the store, but the answer no
/// longer claims it is in effect; the tenant's submits keep the version this instance had.
#[tokio::test]
async fn an_activation_says_whether_the_answering_instance_runs_it() {
    let app = TestApp::spawn().await;
    let version = upload(&app, reads_allowed()).await;
    let fine: Value = activate(&app, &version).await.json().await.unwrap();
    assert_eq!(fine["loaded_here"], true, "{fine}");

    // A second version, altered in Redis behind the service's back.
    let mut other = reads_allowed();
    other["files"][0]["text"] = json!(format!(
        "{}\n# another version\n",
        other["files"][0]["text"].as_str().unwrap()
    ));
    let tampered = upload(&app, other).await;
    let key = format!("policy:{}:bundle:{tampered}", app.tenant);
    let mut conn = app.redis().connection().await;
    let stored: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut stored: Value = serde_json::from_str(&stored).unwrap();
    stored["files"][0]["text"] = json!("package approvals\nimport rego.v1\ndecision := {\"decision\": \"allow\", \"reasons\": [\"changed\"]}\n");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(stored.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();

    // As the candidate: stored, but no shadow evaluation runs here.
    let response = put_candidate(&app, &tampered).await;
    assert_eq!(response.status(), StatusCode::OK);
    let overview: Value = response.json().await.unwrap();
    assert_eq!(overview["candidate"], tampered.as_str());
    assert_eq!(overview["loaded_here"], false, "{overview}");

    let response = activate(&app, &tampered).await;
    assert_eq!(response.status(), StatusCode::OK);
    let overview: Value = response.json().await.unwrap();
    assert_eq!(overview["active"], tampered.as_str());
    assert_eq!(overview["loaded_here"], false, "{overview}");
    let read = app
        .get_json(&policy_path(&app, ""), &app.tokens.admin)
        .await;
    assert_eq!(read["loaded_here"], false, "{read}");
    let answer: Value = app
        .submit("still-the-old-one", sensitive_read())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["policy_version"], version.as_str(), "{answer}");
}

/// Any token may send a bundle: one that may not upload is refused before its body is read
/// (up to 1 MiB each, for as long as the request's timeout), not after. Here the body never
/// ends, and the refusal comes all the same.
#[tokio::test]
async fn a_caller_that_may_not_upload_is_refused_before_its_body_is_read() {
    let app = TestApp::spawn_with(|s| {
        s.server.request_timeout = Duration::from_secs(5);
        s.redis.call_timeout = Duration::from_secs(2);
    })
    .await;
    use futures::StreamExt;
    let endless =
        futures::stream::once(async { Ok::<_, std::io::Error>(b"{\"files\": [".to_vec()) })
            .chain(futures::stream::pending());
    let response = app
        .request(
            Method::POST,
            &policy_path(&app, "/bundles"),
            Some(&app.tokens.agent),
        )
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(endless))
        .send()
        .await
        .expect("answered while the body is still coming");
    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
}

/// A tenant's bundle whose `deny` rests on a conversion that can fail, under a default
/// `allow`: live (in its sandbox, on regorus' VM), a request whose conversion fails is not
/// allowed, as the bundle's tests on the interpreter would have reported. The VM took the
/// failing builtin for an unmet condition and answered `allow`. The overruled `allow` is
/// counted by the service (`approvals_policy_allows_overruled_total`): counted in the child,
/// which has no metrics recorder, it never was for a tenant's bundle.
#[tokio::test]
async fn an_allow_resting_on_a_failed_conversion_fails_closed_in_the_sandbox() {
    let app = TestApp::spawn().await;
    let bundle = json!({"files": [{"path": "approvals.rego", "text": r#"package approvals
import rego.v1

default decision := {"decision": "allow", "reasons": ["small payments go through"]}

decision := {"decision": "deny", "reasons": ["too large"]} if {
	to_number(input.action.amount) > 100
}
"#}]});
    let version = upload(&app, bundle).await;
    activate(&app, &version).await;
    let version = &version;
    let submit = |id: &'static str, amount: &'static str| {
        let app = &app;
        async move {
            let answer: Value = app
                .submit(id, json!({"type": "payment_read", "amount": amount}))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(answer["policy_version"], *version, "{answer}");
            answer
        }
    };
    assert_eq!(submit("small", "5").await["decision"], "allow");
    assert_eq!(submit("large", "500").await["decision"], "deny");
    // No tenant label: other tests of this binary may add to it, never take away.
    let overruled = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("approvals_policy_allows_overruled_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let before = overruled(&app.metrics().await);
    let unreadable = submit("unreadable", "1,500").await;
    assert_eq!(unreadable["decision"], "require_approval", "{unreadable}");
    assert!(
        unreadable["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("failing closed")),
        "{unreadable}"
    );
    let after = overruled(&app.metrics().await);
    assert!(
        after > before,
        "the overruled allow counted: {before} then {after}"
    );
}

/// A test whose failure quotes a value of a megabyte: the refusal says what failed in a few
/// kilobytes. regorus quotes the offending value whole, and the service copied it into its
/// own (unlimited) memory, its refusal cache and the answer: a few such uploads, each well
/// inside its sandbox child's memory, could exhaust the service's.
#[tokio::test]
async fn a_test_failure_quoting_a_huge_value_is_refused_in_a_few_kilobytes() {
    let app = TestApp::spawn().await;
    let mut bundle = reads_allowed();
    bundle["files"][1]["text"] = json!(
        "package approvals_test\nimport rego.v1\ntest_huge if {\n\tabs(concat(\"\", [s | some _ in numbers.range(1, 100000); s := \"aaaaaaaaaa\"])) > 0\n}\n"
    );
    let response = post_bundle(&app, &app.tokens.admin, bundle).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = response.text().await.unwrap();
    assert!(body.len() < 64 * 1024, "{} bytes", body.len());
    let problem: Value = serde_json::from_str(&body).unwrap();
    let errors = problem["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("test_huge"))),
        "{problem}"
    );
}

/// A sandbox child that dies while idle (the OOM killer, an operator's `kill`) is replaced
/// before the next evaluation: that submit, whatever its tenant, met the closed pipe and failed
/// closed with a reason blaming its own bundle.
#[tokio::test]
async fn a_sandbox_child_killed_while_idle_costs_the_next_submit_nothing() {
    // A limit no other test uses names this test's child among the test process's children.
    let memory_limit_mib = 3_000 + u64::from(std::process::id() % 1_000);
    let app = TestApp::spawn_with(|s| {
        s.limits.policy_concurrency = 1;
        s.policy.sandbox.memory_limit_mib = memory_limit_mib;
    })
    .await;
    activate(&app, &upload(&app, reads_allowed()).await).await;
    let read = |request_id: &'static str| {
        let app = &app;
        async move {
            let answer = app
                .submit(
                    request_id,
                    json!({"type": "document_read", "resource": "a"}),
                )
                .await;
            let status = answer.status();
            let body = answer.json::<Value>().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{request_id}: {body}");
            body
        }
    };
    assert_eq!(read("before").await["decision"], "allow");

    let limit = (memory_limit_mib << 20).to_string();
    let child = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&&b"policy-sandbox"[..]) && args.contains(&limit.as_bytes())
        })
        .expect("this test's sandbox child");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &child.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Dead once every one of its threads is: its main thread shows as a zombie while the
    // others are still exiting, and until they have, its parent cannot reap it (and a submit
    // meanwhile met a child that died while it was asked, as one killed mid-evaluation is).
    while std::fs::read_dir(format!("/proc/{child}/task"))
        .is_ok_and(|threads| threads.count() > 1 || !zombie(child))
    {
        tokio::task::yield_now().await;
    }
    let after = read("after").await;
    assert_eq!(after["decision"], "allow", "{after}");
}

/// Whether process `pid`'s main thread has exited (a zombie: its parent has not reaped it).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A rollback to the version on trial ends the trial, as an activation of it does: each submit
/// evaluated the one bundle twice, and the overview showed it both active and candidate.
#[tokio::test]
async fn a_rollback_to_the_candidate_ends_its_trial() {
    let app = TestApp::spawn().await;
    let first = upload(&app, reads_allowed()).await;
    let second = upload(&app, reads_allowed_marked(2)).await;
    activate(&app, &first).await;
    activate(&app, &second).await;
    assert_eq!(put_candidate(&app, &first).await.status(), StatusCode::OK);

    let rolled_back = call(&app, Method::POST, "/rollback", &app.tokens.admin, None).await;
    assert_eq!(rolled_back.status(), StatusCode::OK);
    let state: Value = rolled_back.json().await.unwrap();
    assert_eq!(state["active"], first, "{state}");
    assert_eq!(state["candidate"], Value::Null, "{state}");
}

/// A change whose compare-and-set answered after its deadline (Redis held every write
/// meanwhile) was made all the same: it answers 200 and is in the audit. It answered 503 with
/// no audit event for a version then in effect everywhere, and a retry without If-Match
/// applied it again.
#[tokio::test]
async fn a_change_whose_answer_came_too_late_is_answered_made_and_audited() {
    // A deadline the uploads and reads meet on a loaded machine too; a pause of writes that
    // outlasts it for the swap, and ends within the read-backs that follow it.
    let app = TestApp::spawn_with(|s| {
        s.redis.call_timeout = Duration::from_secs(2);
        // The reads after the swap go behind it on its one connection.
        s.redis.connections = 1;
    })
    .await;
    let first = upload(&app, reads_allowed()).await;
    let second = upload(&app, reads_allowed_marked(2)).await;
    activate(&app, &first).await;

    let mut side = app.redis().connection().await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(5000)
        .arg("WRITE")
        .query_async(&mut side)
        .await
        .unwrap();
    let response = call(
        &app,
        Method::PUT,
        "/active",
        &app.tokens.admin,
        Some(json!({ "version": second })),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let state: Value = response.json().await.unwrap();
    assert_eq!(state["active"], second, "{state}");

    let events = app
        .get_json(
            &format!("/v1/tenants/{}/audit?kind=policy", app.tenant),
            &app.tokens.admin,
        )
        .await;
    let activated: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["details"]["change"] == "activated")
        .map(|e| &e["details"]["version"])
        .collect();
    assert_eq!(activated, [&json!(first), &json!(second)], "{events}");
}

/// A bundle that stops its sandbox child on every evaluation is held back after three in a
/// row: its submits fail closed at once, without a child each (a fork and exec of the service
/// and a compile per submit, and every other tenant's bundle compiled again in the new child,
/// as fast as one tenant could send them).
#[tokio::test]
async fn a_bundle_that_keeps_stopping_its_sandbox_is_held_back() {
    let app = TestApp::spawn_with(|s| s.limits.policy_concurrency = 1).await;
    let version = upload(&app, greedy()).await;
    activate(&app, &version).await;
    let mut reasons = Vec::new();
    for n in 0..6 {
        let answer = app
            .request(
                Method::POST,
                &format!("/v1/tenants/{}/approvals", app.tenant),
                Some(&app.tokens.agent),
            )
            .json(&json!({"request_id": format!("huge-{n}"),
                "action": {"type": "document_read", "resource": "notes.txt"},
                "context": {"n": 300_000_000_000u64}}))
            .send()
            .await
            .expect("submit");
        assert_eq!(answer.status(), StatusCode::CREATED);
        let answer: Value = answer.json().await.unwrap();
        assert_eq!(answer["decision"], "require_approval", "{answer}");
        reasons.push(answer["reasons"][0].as_str().unwrap_or_default().to_owned());
    }
    let held = |reason: &String| reason.contains("stopped its sandbox 3 times in a row");
    assert!(!reasons[..3].iter().any(held), "{reasons:#?}");
    assert!(reasons[3..].iter().all(held), "{reasons:#?}");

    // Only that version is held back: another one is evaluated as ever.
    activate(&app, &upload(&app, reads_allowed()).await).await;
    let answer = app
        .submit("a-read", json!({"type": "document_read", "resource": "a"}))
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.json::<Value>().await.unwrap()["decision"], "allow");
}

/// A change decided on a state a Redis failover lost is refused, though the next change took
/// that state's generation again: the ETag was the generation alone, and a rollback sent with
/// the lost state's tag applied to the other one.
#[tokio::test]
async fn a_tag_of_a_state_lost_in_a_failover_matches_no_other_state() {
    use redis::AsyncCommands;

    let app = TestApp::spawn().await;
    let versions = [
        upload(&app, reads_allowed()).await,
        upload(&app, reads_allowed_marked(2)).await,
        upload(&app, reads_allowed_marked(3)).await,
    ];
    activate(&app, &versions[0]).await;
    let mut conn = app.redis().connection().await;
    let before: String = conn.hget("policy:states", &app.tenant).await.unwrap();
    let lost = activate(&app, &versions[1]).await;
    let lost_tag = lost.headers()["etag"].to_str().unwrap().to_owned();
    // The failover: the replica that takes over never had that change.
    let () = conn
        .hset("policy:states", &app.tenant, &before)
        .await
        .unwrap();
    let taken_again = activate(&app, &versions[2]).await;
    let tag = taken_again.headers()["etag"].to_str().unwrap().to_owned();
    let generation = |tag: &str| tag.trim_matches('"').split('-').next().unwrap().to_owned();
    assert_eq!(
        generation(&tag),
        generation(&lost_tag),
        "the same generation"
    );
    assert_ne!(tag, lost_tag);

    let rollback = app
        .request(
            Method::POST,
            &policy_path(&app, "/rollback"),
            Some(&app.tokens.admin),
        )
        .header("if-match", &lost_tag)
        .send()
        .await
        .unwrap();
    assert_problem(
        rollback,
        StatusCode::PRECONDITION_FAILED,
        "policy_precondition_failed",
    )
    .await;
    let overview = app
        .get_json(&policy_path(&app, ""), &app.tokens.admin)
        .await;
    assert_eq!(overview["active"], versions[2], "{overview}");
}
