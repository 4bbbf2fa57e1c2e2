//! Runs the shipped policy bundle (`policies/`) the way the service will: loads it through
//! `PolicyGate`, runs every OPA-style `test_*` rule of its `*_test.rego` files in regorus (so
//! the bundle's own tests hold in the engine we actually ship, not only in `opa test`), and
//! checks a few end-to-end verdicts against the contract.

use std::path::{Path, PathBuf};

use approvals::policy::{PolicyDecision, PolicyGate};
use serde_json::json;

/// Fewer test rules than this means the scan is broken or the tests were gutted; either way
/// a green run would mean nothing.
const MIN_TEST_RULES: usize = 12;

fn bundle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn rego_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            out.extend(rego_files(&path));
        } else if path.extension().is_some_and(|e| e == "rego") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `(package, rule)` for every `test_*` rule, found by a line scan: good enough for files we
/// write ourselves, and the minimum-count assertion catches a scan that silently finds nothing.
fn test_rules(files: &[PathBuf]) -> Vec<(String, String)> {
    let mut rules = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy();
        if !name.ends_with("_test.rego") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let package = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .unwrap_or_else(|| panic!("{} has no package line", file.display()))
            .trim()
            .to_string();
        for line in text.lines().filter(|l| l.starts_with("test_")) {
            let rule: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let entry = (package.clone(), rule);
            if !rules.contains(&entry) {
                rules.push(entry);
            }
        }
    }
    rules
}

#[test]
fn bundle_rego_tests_pass_in_regorus() {
    let dir = bundle_dir();
    // The gate must accept the bundle, test files included.
    PolicyGate::load(&dir).unwrap();

    let files = rego_files(&dir);
    let mut engine = regorus::Engine::new();
    for file in &files {
        engine
            .add_policy(
                file.display().to_string(),
                std::fs::read_to_string(file).unwrap(),
            )
            .unwrap();
    }

    let rules = test_rules(&files);
    assert!(
        rules.len() >= MIN_TEST_RULES,
        "found only {} test rules in {}: {rules:?}",
        rules.len(),
        dir.display()
    );

    let mut failures = Vec::new();
    for (package, rule) in &rules {
        let path = format!("data.{package}.{rule}");
        match engine.eval_rule(path.clone()) {
            Ok(v) if v == regorus::Value::from(true) => {}
            Ok(regorus::Value::Undefined) => failures.push(format!("{path}: failed (undefined)")),
            Ok(other) => failures.push(format!("{path}: returned {other:?}")),
            Err(err) => failures.push(format!("{path}: error: {err}")),
        }
    }
    println!("ran {} bundle test rules", rules.len());
    assert!(
        failures.is_empty(),
        "{} of {} bundle test rules failed:\n  {}",
        failures.len(),
        rules.len(),
        failures.join("\n  ")
    );
}

fn input(action: serde_json::Value) -> serde_json::Value {
    json!({
        "tenant": "acme",
        "agent_id": "retrieval-agent-v1",
        "submitted_by": "agent-token-subject",
        "action": action,
        "context": {"on_behalf_of": "project_alpha"},
    })
}

#[test]
fn end_to_end_verdicts() {
    let gate = PolicyGate::load(&bundle_dir()).unwrap();
    assert!(gate.version().starts_with("sha256:"));

    let finance = gate.evaluate(&input(
        json!({"type": "document_read", "resource": "finance/q3-forecast.xlsx"}),
    ));
    assert_eq!(
        finance.decision,
        PolicyDecision::RequireApproval,
        "{finance:?}"
    );
    assert!(
        finance.reasons.iter().any(|r| r.contains("finance")),
        "{finance:?}"
    );

    let ordinary = gate.evaluate(&input(
        json!({"type": "document_read", "resource": "docs/handbook/onboarding.md"}),
    ));
    assert_eq!(ordinary.decision, PolicyDecision::Allow, "{ordinary:?}");
    assert!(!ordinary.reasons.is_empty());

    let delete = gate.evaluate(&input(
        json!({"type": "file_delete", "resource": "docs/old.md"}),
    ));
    assert_eq!(delete.decision, PolicyDecision::Deny, "{delete:?}");
    assert!(
        delete.reasons.iter().any(|r| r.contains("read-only")),
        "{delete:?}"
    );

    let unknown = gate.evaluate(&input(
        json!({"type": "frobnicate", "resource": "docs/a.md"}),
    ));
    assert_eq!(
        unknown.decision,
        PolicyDecision::RequireApproval,
        "{unknown:?}"
    );

    // Whatever the input, the bundle answers with a well-formed, explained decision (not the
    // gate's fail-closed fallback).
    for odd in [
        json!({}),
        json!(null),
        json!({"action": "read"}),
        input(json!([1, 2])),
    ] {
        let v = gate.evaluate(&odd);
        assert_eq!(v.decision, PolicyDecision::RequireApproval, "{odd}: {v:?}");
        assert!(!v.reasons.is_empty());
        assert!(
            v.reasons.iter().all(|r| !r.contains("failing closed")),
            "{odd}: {v:?}"
        );
        assert_eq!(v.policy_version, gate.version());
    }
}
