//! The gate against real bundles on disk: verdicts, fail-closed answers, versions, loading.

use super::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fs;

const ALLOW_ALL: &str = r#"package approvals
import rego.v1
decision := {"decision": "allow", "reasons": ["everything goes"]}
"#;

fn bundle(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    dir
}

fn gate(files: &[(&str, &str)]) -> PolicyGate {
    let dir = bundle(files);
    PolicyGate::load(dir.path()).unwrap()
}

fn decision_policy(body: &str) -> String {
    format!("package approvals\nimport rego.v1\n{body}\n")
}

fn assert_fails_closed(verdict: &PolicyVerdict, needle: &str) {
    assert_eq!(
        verdict.decision,
        PolicyDecision::RequireApproval,
        "{verdict:?}"
    );
    assert_eq!(verdict.reasons.len(), 1, "{verdict:?}");
    assert!(
        verdict.reasons[0].contains(needle) && verdict.reasons[0].contains("failing closed"),
        "{verdict:?}"
    );
}

#[test]
fn gate_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyGate>();
}

#[test]
fn allow_passes_through_with_version() {
    let g = gate(&[("approvals.rego", ALLOW_ALL)]);
    let v = g.evaluate(&json!({"action": {"type": "read"}}));
    assert_eq!(v.decision, PolicyDecision::Allow);
    assert_eq!(v.reasons, vec!["everything goes".to_string()]);
    assert_eq!(v.policy_version, g.version());
    assert!(g.version().starts_with("sha256:"));
    assert_eq!(g.version().len(), "sha256:".len() + 64);
}

#[test]
fn decision_uses_input() {
    let g = gate(&[(
        "approvals.rego",
        &decision_policy(
            r#"decision := {"decision": "deny", "reasons": [sprintf("no %s", [input.action.type])]} if input.action.type == "delete"
decision := {"decision": "require_approval", "reasons": ["ask"]} if input.action.type != "delete""#,
        ),
    )]);
    let deny = g.evaluate(&json!({"action": {"type": "delete"}}));
    assert_eq!(deny.decision, PolicyDecision::Deny);
    assert_eq!(deny.reasons, vec!["no delete".to_string()]);
    let ask = g.evaluate(&json!({"action": {"type": "read"}}));
    assert_eq!(ask.decision, PolicyDecision::RequireApproval);
    assert_eq!(ask.reasons, vec!["ask".to_string()]);
}

#[test]
fn version_is_stable_for_the_same_files() {
    let files = [
        ("approvals.rego", ALLOW_ALL),
        ("lib/util.rego", "package util\n"),
    ];
    let a = gate(&files);
    let b = gate(&files);
    assert_eq!(a.version(), b.version());
}

#[test]
fn version_is_independent_of_creation_order() {
    // Directory iteration order follows creation order on many filesystems, so creating
    // the same files in opposite orders exercises the sort.
    let names = ["b.rego", "a.rego", "z/c.rego", "m/a.rego", "c.rego"];
    let text = |n: &str| format!("package p_{}\n", n.replace(['/', '.'], "_"));
    let forward: Vec<(String, String)> = names.iter().map(|n| (n.to_string(), text(n))).collect();
    let make = |v: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        gate(&refs)
    };
    let backward: Vec<(String, String)> = forward.iter().rev().cloned().collect();
    let a = make(&forward);
    let b = make(&backward);
    assert_eq!(a.version(), b.version());

    // And it is exactly the documented digest over the sorted relative paths.
    let mut sorted = forward.clone();
    sorted.sort();
    let mut h = Sha256::new();
    for (name, body) in &sorted {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update(body.as_bytes());
        h.update([0u8]);
    }
    assert_eq!(a.version(), format!("sha256:{}", hex::encode(h.finalize())));
}

#[test]
fn version_changes_on_any_change() {
    let base = gate(&[
        ("approvals.rego", ALLOW_ALL),
        ("extra.rego", "package extra\n"),
    ]);
    let variants = [
        // content edit (one byte)
        gate(&[
            ("approvals.rego", ALLOW_ALL),
            ("extra.rego", "package extrb\n"),
        ]),
        // rename
        gate(&[
            ("approvals.rego", ALLOW_ALL),
            ("extra2.rego", "package extra\n"),
        ]),
        // move into a subfolder
        gate(&[
            ("approvals.rego", ALLOW_ALL),
            ("sub/extra.rego", "package extra\n"),
        ]),
        // a file added
        gate(&[
            ("approvals.rego", ALLOW_ALL),
            ("extra.rego", "package extra\n"),
            ("more.rego", "package more\n"),
        ]),
        // a file removed
        gate(&[("approvals.rego", ALLOW_ALL)]),
    ];
    for v in &variants {
        assert_ne!(base.version(), v.version());
    }
}

#[test]
fn non_rego_and_hidden_files_are_ignored() {
    let plain = gate(&[("approvals.rego", ALLOW_ALL)]);
    let noisy = gate(&[
        ("approvals.rego", ALLOW_ALL),
        ("README.md", "docs"),
        ("data.json", "{}"),
        // a ConfigMap-style hidden duplicate would clash if it were loaded
        ("..data/approvals.rego", ALLOW_ALL),
    ]);
    assert_eq!(plain.version(), noisy.version());
}

#[test]
fn test_files_are_loaded_and_versioned_but_do_not_decide() {
    let with_tests = gate(&[
        ("approvals.rego", ALLOW_ALL),
        (
            "approvals_test.rego",
            "package approvals_test\nimport rego.v1\nimport data.approvals\ntest_allow if approvals.decision.decision == \"allow\"\n",
        ),
    ]);
    let without = gate(&[("approvals.rego", ALLOW_ALL)]);
    assert_ne!(with_tests.version(), without.version());
    let v = with_tests.evaluate(&json!({}));
    assert_eq!(v.decision, PolicyDecision::Allow);
    let mut engine = with_tests.engine.clone();
    assert_eq!(
        engine
            .eval_rule("data.approvals_test.test_allow".to_string())
            .unwrap(),
        regorus::Value::from(true)
    );
}

#[test]
fn undefined_decision_fails_closed() {
    let g = gate(&[(
        "approvals.rego",
        &decision_policy(
            r#"decision := {"decision": "allow", "reasons": ["ok"]} if input.action.type == "read""#,
        ),
    )]);
    let v = g.evaluate(&json!({"action": {"type": "write"}}));
    assert_fails_closed(&v, "undefined");
    assert_eq!(v.policy_version, g.version());
}

#[test]
fn missing_rule_path_fails_closed() {
    let g = gate(&[("other.rego", "package other\nimport rego.v1\nx := 1\n")]);
    let v = g.evaluate(&json!({}));
    assert_fails_closed(&v, "no loaded policy defines data.approvals.decision");
}

#[test]
fn bad_shapes_fail_closed() {
    let cases = [
        (r#"decision := "allow""#, "invalid decision"),
        (
            r#"decision := {"decision": "yes", "reasons": ["x"]}"#,
            "invalid decision",
        ),
        (
            r#"decision := {"decision": "ALLOW", "reasons": ["x"]}"#,
            "invalid decision",
        ),
        (r#"decision := {"reasons": ["x"]}"#, "invalid decision"),
        (r#"decision := {"decision": "allow"}"#, "\"reasons\""),
        (
            r#"decision := {"decision": "allow", "reasons": "x"}"#,
            "\"reasons\"",
        ),
        (
            r#"decision := {"decision": "allow", "reasons": ["x", 1]}"#,
            "\"reasons\"",
        ),
        (
            r#"decision := {"decision": "deny", "reasons": {"x"}}"#,
            "invalid decision",
        ),
        (r#"decision := true"#, "invalid decision"),
    ];
    for (body, needle) in cases {
        let g = gate(&[("approvals.rego", &decision_policy(body))]);
        let v = g.evaluate(&json!({}));
        if body.contains(r#"{"x"}"#) {
            // A Rego set serialises as a list, which is a reasonable reading of the
            // contract; only insist that the verdict is well-formed.
            assert!(!v.reasons.is_empty());
            continue;
        }
        assert_fails_closed(&v, needle);
    }
}

#[test]
fn extra_fields_are_tolerated() {
    let g = gate(&[(
        "approvals.rego",
        &decision_policy(
            r#"decision := {"decision": "deny", "reasons": ["no"], "rule": "r1", "debug": {"a": 1}}"#,
        ),
    )]);
    let v = g.evaluate(&json!({}));
    assert_eq!(v.decision, PolicyDecision::Deny);
    assert_eq!(v.reasons, vec!["no".to_string()]);
}

#[test]
fn empty_reasons_get_a_generic_one() {
    for (d, expected) in [
        ("allow", PolicyDecision::Allow),
        ("deny", PolicyDecision::Deny),
        ("require_approval", PolicyDecision::RequireApproval),
    ] {
        let g = gate(&[(
            "approvals.rego",
            &decision_policy(&format!(
                r#"decision := {{"decision": "{d}", "reasons": []}}"#
            )),
        )]);
        let v = g.evaluate(&json!({}));
        assert_eq!(v.decision, expected);
        assert_eq!(v.reasons.len(), 1);
        assert!(
            v.reasons[0].contains(&format!("policy decided {d}")),
            "{v:?}"
        );
    }
}

#[test]
fn evaluation_error_fails_closed() {
    // Two complete-rule bodies producing different values is a runtime conflict in Rego.
    let g = gate(&[(
        "approvals.rego",
        &decision_policy(
            r#"decision := {"decision": "allow", "reasons": ["a"]} if input.x
decision := {"decision": "deny", "reasons": ["b"]} if input.x"#,
        ),
    )]);
    let ok = g.evaluate(&json!({"x": false}));
    assert_fails_closed(&ok, "undefined");
    let conflict = g.evaluate(&json!({"x": true}));
    assert_eq!(conflict.decision, PolicyDecision::RequireApproval);
    assert_fails_closed(&conflict, "policy evaluation failed");
    assert!(!conflict.reasons[0].contains('\n'), "{conflict:?}");
}

/// An `allow` is given only where the interpreter, which `policy test` runs, gives it too: the
/// VM took an error inside a rule body for an unmet condition, so a `deny` whose conversion
/// failed left the default `allow`, and a `not` over a rule whose definitions disagree
/// granted, live, while the bundle's tests reported the error.
#[test]
fn an_allow_that_rests_on_an_error_fails_closed_live_as_in_tests() {
    let conversion = [(
        "approvals.rego",
        decision_policy(
            r#"default decision := {"decision": "allow", "reasons": ["small"]}
decision := {"decision": "deny", "reasons": ["too large"]} if to_number(input.amount) > 100"#,
        ),
    )];
    let conversion: Vec<(&str, &str)> = conversion.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = gate(&conversion);
    assert_eq!(
        g.evaluate(&json!({"amount": "500"})).decision,
        PolicyDecision::Deny
    );
    assert_eq!(
        g.evaluate(&json!({"amount": "5"})).decision,
        PolicyDecision::Allow
    );
    assert_fails_closed(
        &g.evaluate(&json!({"amount": "1,500"})),
        "policy evaluation failed",
    );

    let negation = gate(&[(
        "approvals.rego",
        &decision_policy(
            r#"default decision := {"decision": "require_approval", "reasons": ["ask"]}
decision := {"decision": "allow", "reasons": ["low risk"]} if not high_risk
high_risk := true if input.amount > 1000
high_risk := false if input.type == "read""#,
        ),
    )]);
    assert_eq!(
        negation
            .evaluate(&json!({"amount": 5, "type": "write"}))
            .decision,
        PolicyDecision::Allow
    );
    let conflicted = negation.evaluate(&json!({"amount": 5000, "type": "read"}));
    assert_ne!(conflicted.decision, PolicyDecision::Allow, "{conflicted:?}");

    // Each such allow is counted: the bundle's owners should learn it leans on an error.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let counts = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        g.evaluate(&json!({"amount": "1,500"}));
    });
    assert!(
        counts
            .render()
            .contains("approvals_policy_allows_overruled_total 1"),
        "{}",
        counts.render()
    );

    // Turned off (`policy.confirm_allows = false`), the VM's answer stands.
    let unconfirmed = gate(&conversion).confirming_allows(false);
    assert_eq!(
        unconfirmed.evaluate(&json!({"amount": "1,500"})).decision,
        PolicyDecision::Allow
    );
}

#[test]
fn compile_error_names_the_file() {
    let dir = bundle(&[
        ("approvals.rego", ALLOW_ALL),
        // v0 syntax (no `if`) is a compile error under Rego v1
        ("broken/bad.rego", "package bad\nallow { true }\n"),
    ]);
    match PolicyGate::load(dir.path()) {
        Err(PolicyError::Compile { path, message }) => {
            assert!(path.ends_with("bad.rego"), "{path}");
            assert!(!message.is_empty());
            let shown = PolicyError::Compile { path, message }.to_string();
            assert!(shown.contains("bad.rego") && shown.contains("does not compile"));
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

/// An upload labels its files by their bare paths: an error in `beta.rego` was put on
/// `a.rego`, whose name it contains.
#[test]
fn a_compile_error_names_its_file_not_one_whose_name_is_inside_it() {
    let files = [
        PolicyFile {
            relative: "a.rego".into(),
            text: "package other\nimport rego.v1\ny := 1\n".into(),
        },
        PolicyFile {
            relative: "beta.rego".into(),
            text: decision_policy("decision := no_such_function(input)"),
        },
    ];
    match PolicyGate::from_files(&files, "upload") {
        Err(PolicyError::Compile { path, .. }) => assert_eq!(path, "beta.rego"),
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn static_errors_found_only_by_evaluating_are_compile_errors() {
    let cases = [
        // unknown function
        r#"decision := no_such_function(input)"#,
        // unsafe variable in a body (found when the engine is prepared)
        r#"decision := 1 if { y == 1 }"#,
        // unsafe variable in a head
        r#"decision := x"#,
        // recursion
        r#"decision := data.approvals.decision"#,
    ];
    for body in cases {
        let dir = bundle(&[
            ("ok.rego", "package ok\n"),
            ("approvals.rego", &decision_policy(body)),
        ]);
        match PolicyGate::load(dir.path()) {
            Err(PolicyError::Compile { path, .. }) => {
                assert!(path.ends_with("approvals.rego"), "{body}: {path}")
            }
            other => panic!("{body}: expected a compile error, got {other:?}"),
        }
    }
}

#[test]
fn empty_folder_is_an_error() {
    let dir = bundle(&[("README.md", "no policies here"), ("sub/notes.txt", "")]);
    match PolicyGate::load(dir.path()) {
        Err(PolicyError::Empty(p)) => assert_eq!(p, dir.path()),
        other => panic!("expected Empty, got {other:?}"),
    }
}

#[test]
fn missing_folder_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    match PolicyGate::load(&missing) {
        Err(PolicyError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Read, got {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn symlinks_are_followed_without_looping() {
    let dir = bundle(&[("real/approvals.rego", ALLOW_ALL)]);
    let root = dir.path();
    std::os::unix::fs::symlink(root.join("real"), root.join("real/loop")).unwrap();
    // a dangling link that is not a policy must not break the load
    std::os::unix::fs::symlink(root.join("gone"), root.join("notes.md")).unwrap();
    let g = PolicyGate::load(root).unwrap();
    assert_eq!(g.evaluate(&json!({})).decision, PolicyDecision::Allow);

    // a dangling link named like a policy is an error, not silently skipped
    std::os::unix::fs::symlink(root.join("gone"), root.join("extra.rego")).unwrap();
    assert!(matches!(
        PolicyGate::load(root),
        Err(PolicyError::Read { path, .. }) if path.ends_with("extra.rego")
    ));
}

#[test]
fn long_invalid_output_is_truncated_in_the_reason() {
    let g = gate(&[(
        "approvals.rego",
        &decision_policy(
            r#"decision := {"decision": concat("", array.concat(["x"], [y | some i in numbers.range(1, 500); y := "x"]))}"#,
        ),
    )]);
    let v = g.evaluate(&json!({}));
    assert_eq!(v.decision, PolicyDecision::RequireApproval);
    assert!(v.reasons[0].chars().count() < 400, "{}", v.reasons[0]);
}

/// A policy cannot make its verdicts large: they are copied into records, audit events,
/// webhooks and the decision log. Its decision stands; its reasons are kept to a bounded
/// number and length, saying what was left out.
#[test]
fn reasons_are_kept_to_a_bounded_count_and_length() {
    let g = gate(&[(
        "approvals.rego",
        &decision_policy(
            r#"decision := {"decision": "allow", "reasons": [r | some i in numbers.range(1, 40); r := concat("", [sprintf("%d", [i]), json.marshal(numbers.range(1, 2000))])]}"#,
        ),
    )]);
    let v = g.evaluate(&json!({}));
    assert_eq!(v.decision, PolicyDecision::Allow, "the decision stands");
    assert_eq!(
        v.reasons.len(),
        super::verdict::MAX_REASONS,
        "{:?}",
        v.reasons.len()
    );
    assert!(
        v.reasons[0].starts_with("1[1,2,3"),
        "{}",
        &v.reasons[0][..20]
    );
    for reason in &v.reasons {
        assert!(reason.chars().count() <= super::verdict::REASON_LIMIT + 1);
    }
    assert!(v.reasons[0].ends_with('…'), "a cut reason says so");
    let last = v.reasons.last().unwrap();
    assert!(last.contains("25 more reasons"), "{last}");
    let total: usize = v.reasons.iter().map(String::len).sum();
    assert!(total < 20_000, "{total} bytes of reasons");
}

/// The VM must answer exactly what the interpreter answers on the shipped bundle.
#[test]
fn the_vm_agrees_with_the_interpreter_on_the_default_bundle() {
    let g = PolicyGate::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
    assert!(
        g.program.is_some(),
        "the default bundle compiles for the VM"
    );
    let types = [
        "document_read",
        "document_delete",
        "deleteFile",
        "Files.Delete",
        "frobnicate",
        "search",
        "list_invoices",
        "order_get",
        "send_email",
        "",
        "read",
        "markAsRead",
    ];
    let actions = types.iter().flat_map(|t| {
        [
            "finance/q3.xlsx",
            "wiki/onboarding",
            "hr/payroll",
            "news/finance-weekly.md",
            "",
            "secrets:db",
            "home/alice/.ssh/id_rsa",
            "config/credentials.json",
        ]
        .into_iter()
        .map(move |r| json!({"type": t, "resource": r}))
    });
    let extra = [
        json!({"type": "document_read"}),
        json!({"type": 7}),
        json!({"type": "document_read", "resource": "wiki/x", "classification": "pii"}),
        json!({"type": "document_read", "resource": "wiki/x", "classification": ["public", "weird"]}),
        json!({"type": "document_read", "resource": "wiki/x", "tags": ["Legal"]}),
        json!({"type": "document_read", "resource": "wiki/x", "mutating": true}),
        json!({"resource": "wiki/x"}),
    ];
    let mut checked = 0;
    for action in actions.chain(extra) {
        let input = json!({"tenant": "acme", "agent_id": "a", "submitted_by": "a", "action": action, "context": {}});
        let program = g.program.clone().unwrap();
        let mut vm = RegoVM::new();
        vm.load_program(program);
        vm.set_input(regorus::Value::from(input.clone()));
        let by_vm = vm
            .execute_entry_point_by_name(DECISION_RULE)
            .map_err(|e| e.to_string())
            .and_then(to_json);
        assert_eq!(
            by_vm,
            g.interpreter_decision(regorus::Value::from(input.clone())),
            "{input}"
        );
        checked += 1;
    }
    assert!(checked > 60);
}

/// A NUL ends a file for regorus: the rules after it would be dropped without a word, and
/// the text with the NUL would share its version with another file set. Refused at load.
#[test]
fn a_policy_holding_a_control_character_is_refused_at_load() {
    let hidden = format!("{ALLOW_ALL}\0deny_all.rego\0package approvals.deny\n");
    let dir = bundle(&[("approvals.rego", &hidden)]);
    let Err(PolicyError::Compile { message, .. }) = PolicyGate::load(dir.path()) else {
        panic!("loaded a policy holding a NUL");
    };
    assert!(
        message.contains("line 4") && message.contains("U+0000"),
        "{message}"
    );
    // Tabs and Windows line ends are text.
    assert!(check_text("a.rego", "package approvals\r\n\tx := 1\r\n").is_ok());
}
