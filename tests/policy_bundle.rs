//! Runs the shipped policy bundle (`policies/`) the way the service will: loads it through
//! `PolicyGate`, runs every OPA-style `test_*` rule of the bundle in regorus (so the bundle's
//! own tests hold in the engine we actually ship, not only in `opa test`), and checks a few
//! end-to-end verdicts against the contract.

use std::path::{Path, PathBuf};

use approvals::policy::testing::run_tests;
use approvals::policy::{PolicyDecision, PolicyGate};
use serde_json::json;

/// Fewer test rules than this means the tests were gutted or the runner no longer finds them;
/// either way a green run would mean nothing.
const MIN_TEST_RULES: usize = 12;

fn bundle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

#[test]
fn bundle_rego_tests_pass_in_regorus() {
    let dir = bundle_dir();
    // The gate must accept the bundle, test files included.
    let gate = PolicyGate::load(&dir).unwrap();
    let report = run_tests(&gate);
    assert!(
        report.results.len() >= MIN_TEST_RULES,
        "found only {} test rules in {}: {:#?}",
        report.results.len(),
        dir.display(),
        report.results
    );

    let failures: Vec<String> = report
        .failures()
        .map(|r| format!("{}: {}", r.name, r.error.as_deref().unwrap_or("failed")))
        .collect();
    println!("ran {} bundle test rules", report.results.len());
    assert!(
        failures.is_empty(),
        "{} of {} bundle test rules failed:\n  {}",
        failures.len(),
        report.results.len(),
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

/// A signal for the process can land on the thread that waits for a sandbox child (tokio's
/// SIGTERM handler is process-wide): the wait goes on; the validation does not fail for it.
#[test]
fn a_signal_on_the_waiting_thread_does_not_fail_a_sandboxed_validation() {
    use approvals::policy::sandbox::Sandbox;
    use approvals::policy::PolicyFile;
    use nix::sys::pthread::{pthread_kill, pthread_self};
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

    extern "C" fn ignore(_: nix::libc::c_int) {}
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    unsafe {
        sigaction(
            Signal::SIGUSR1,
            &SigAction::new(
                SigHandler::Handler(ignore),
                SaFlags::empty(),
                SigSet::empty(),
            ),
        )
    }
    .expect("a SIGUSR1 handler");

    let sandbox = Sandbox::new(env!("CARGO_BIN_EXE_approvals").into(), 512 << 20);
    // A test that keeps the child busy for a while, so that signals land during the wait.
    let files = vec![
        PolicyFile {
            relative: "approvals.rego".into(),
            text: "package approvals\ndecision := {\"decision\": \"allow\", \"reasons\": []}\n"
                .into(),
        },
        PolicyFile {
            relative: "slow_test.rego".into(),
            text: "package approvals_test\nimport rego.v1\n\
                   test_slow if { every i in numbers.range(0, 300000) { i >= 0 } }\n"
                .into(),
        },
    ];
    let (thread_id, waiting_thread) = std::sync::mpsc::channel();
    let validating = std::thread::spawn(move || {
        thread_id.send(pthread_self()).expect("the test listens");
        sandbox.validate(&files, 1_000_000)
    });
    let target = waiting_thread.recv().expect("the validating thread");
    let mut signals = 0;
    while !validating.is_finished() {
        if pthread_kill(target, Signal::SIGUSR1).is_ok() {
            signals += 1;
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    let outcome = validating.join().expect("the validation does not panic");
    assert!(signals > 10, "only {signals} signals were sent");
    match outcome {
        Ok(Ok((_, report))) => assert_eq!(report.passed(), 1, "{report:?}"),
        other => panic!("the validation failed: {other:?}"),
    }
}

/// A sandbox child at the smallest memory limit the settings accept (64 MiB) still validates
/// a bundle: its threads are started before its address space is limited. Started after, a
/// child below about 2 GiB could not start the thread it answers on, and died at once: every
/// upload was refused and every tenant's submit failed closed.
#[test]
fn a_sandbox_at_the_smallest_memory_limit_answers() {
    use approvals::policy::sandbox::Sandbox;
    use approvals::policy::PolicyFile;

    let sandbox = Sandbox::new(env!("CARGO_BIN_EXE_approvals").into(), 64 << 20);
    let files = vec![PolicyFile {
        relative: "approvals.rego".into(),
        text: "package approvals\ndecision := {\"decision\": \"allow\", \"reasons\": [\"fine\"]}\n"
            .into(),
    }];
    match sandbox.validate(&files, 1_000_000) {
        Ok(Ok((version, _))) => assert!(version.starts_with("sha256:"), "{version}"),
        other => panic!("the validation failed: {other:?}"),
    }
}
