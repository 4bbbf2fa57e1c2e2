//! `approvals policy test` and `approvals policy eval` as a policy author runs them: on the
//! shipped bundle, on broken bundles and inputs, and their exit codes (0 ok, 1 failing tests,
//! 2 unusable bundle or input).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use approvals::policy::PolicyGate;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_approvals");

/// As in `tests/policy_bundle.rs`: fewer means the shipped tests were gutted or not found.
const MIN_TEST_RULES: usize = 12;

fn shipped_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn approvals(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("APPROVALS_CONFIG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn bundle(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

const SMALL_POLICY: &str = r#"package approvals
import rego.v1
default decision := {"decision": "require_approval", "reasons": ["unknown"]}
decision := {"decision": "allow", "reasons": ["a read"]} if input.action.type == "read"
"#;

/// The version on the summary line (`N passed, M failed, bundle sha256:...`).
fn summary_version(stdout: &str) -> String {
    let summary = stdout.lines().last().unwrap();
    summary
        .rsplit_once("bundle ")
        .unwrap_or_else(|| panic!("no version in {summary:?}"))
        .1
        .to_owned()
}

#[test]
fn shipped_bundle_passes_its_tests() {
    let dir = shipped_bundle();
    let output = approvals(&["policy", "test", dir.to_str().unwrap()]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );

    let (tests, summary) = stdout.trim_end().rsplit_once('\n').unwrap();
    let tests: Vec<&str> = tests.lines().collect();
    assert!(tests.len() >= MIN_TEST_RULES, "{stdout}");
    for line in &tests {
        assert!(
            line.starts_with("PASS data.approvals_test.test_") && line.ends_with(" ms)"),
            "{line:?}"
        );
    }
    assert!(
        summary.starts_with(&format!("{} passed, 0 failed, bundle sha256:", tests.len())),
        "{summary:?}"
    );
    let version = PolicyGate::load(&dir).unwrap().version().to_owned();
    assert_eq!(summary_version(&stdout), version);
}

#[test]
fn json_report_agrees_with_the_text() {
    let dir = shipped_bundle();
    let dir = dir.to_str().unwrap();
    let plain = approvals(&["policy", "test", dir]);
    let json = approvals(&["policy", "test", dir, "--json"]);
    assert_eq!(json.status.code(), Some(0), "{}", text(&json.stderr));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();

    let plain = text(&plain.stdout);
    let plain_names: BTreeSet<String> = plain
        .lines()
        .filter_map(|l| l.strip_prefix("PASS "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let results = report["results"].as_array().unwrap();
    let json_names: BTreeSet<String> = results
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(json_names, plain_names);
    assert_eq!(results.len(), json_names.len(), "a test is listed twice");
    assert!(results.len() >= MIN_TEST_RULES);
    for result in results {
        assert_eq!(result["passed"], true, "{result}");
        assert!(
            result["file"]
                .as_str()
                .unwrap()
                .ends_with("approvals_test.rego"),
            "{result}"
        );
        assert!(result["duration_ms"].as_f64().unwrap() >= 0.0, "{result}");
    }
    assert_eq!(report["passed"], results.len());
    assert_eq!(report["failed"], 0);
    assert_eq!(report["policy_version"], summary_version(&plain).as_str());
}

#[test]
fn a_failing_test_exits_1_and_is_named() {
    let tests = r#"package approvals_test
import rego.v1
import data.approvals

test_reads_are_allowed if {
    approvals.decision.decision == "allow" with input as {"action": {"type": "read"}}
}

test_writes_are_allowed if {
    approvals.decision.decision == "allow" with input as {"action": {"type": "write"}}
}
"#;
    let dir = bundle(&[
        ("approvals.rego", SMALL_POLICY),
        ("approvals_test.rego", tests),
    ]);
    let output = approvals(&["policy", "test", dir.path().to_str().unwrap()]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("PASS data.approvals_test.test_reads_are_allowed ")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(
            |l| l.starts_with("FAIL data.approvals_test.test_writes_are_allowed (")
                && l.contains("): ")
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 passed, 1 failed, bundle sha256:"),
        "{stdout}"
    );

    let json = approvals(&["policy", "test", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["failed"], 1);
    let failed = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["passed"] == false)
        .unwrap();
    assert_eq!(
        failed["name"],
        "data.approvals_test.test_writes_are_allowed"
    );
    assert!(failed["error"].is_string(), "{failed}");
}

/// `policy test` refuses what the service refuses at upload, though every test passes: no
/// decision rule, or a decision of the wrong shape. It exited 0 on both, and the pipeline's
/// `policy push` was then refused (or, for the shape, the bundle was accepted and held every
/// submit for approval).
#[test]
fn a_bundle_the_service_would_refuse_fails_its_test_run() {
    let passing = "package approvals_test\nimport rego.v1\ntest_one if { 1 == 1 }\n";
    let no_decision = "package other\nimport rego.v1\nx := 1\n";
    let shapeless = "package approvals\nimport rego.v1\ndecision := {\"decision\": \"allow\"}\n";
    // The usual layout: a default of the right shape (all the empty input reaches), and a
    // conditional answer without `reasons` that the tests (comparing `.decision`) let pass.
    let shapeless_when = "package approvals\nimport rego.v1\n\
        default decision := {\"decision\": \"require_approval\", \"reasons\": [\"ask\"]}\n\
        decision := {\"decision\": \"allow\"} if input.action.type == \"read\"\n";
    for (policy, named) in [
        (no_decision, "no file defines data.approvals.decision"),
        (shapeless, r#"expected "reasons" to be a list of strings"#),
        (
            shapeless_when,
            r#"policy.rego:4: data.approvals.decision as written here: policy returned an invalid decision (expected "reasons""#,
        ),
    ] {
        passes_its_test_but_would_be_refused(
            &[("policy.rego", policy), ("policy_test.rego", passing)],
            named,
        );
    }
}

/// `policy test` on a bundle of `files`, whose one test passes: exit 1, saying the service
/// would refuse it for `named`.
fn passes_its_test_but_would_be_refused(files: &[(&str, &str)], named: &str) {
    let dir = bundle(files);
    let output = approvals(&["policy", "test", dir.path().to_str().unwrap()]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
    assert!(
        stderr.contains("the service would refuse this bundle") && stderr.contains(named),
        "{stderr}"
    );
}

/// Nor does it pass what the service refuses in an upload's shape: a file name with a space
/// (or a letter outside ASCII), or a body past the default size. It passed them, and
/// `policy push` was then refused (400, 413).
#[test]
fn a_bundle_of_a_shape_the_service_refuses_fails_its_test_run() {
    let policy = "package approvals\nimport rego.v1\ndecision := {\"decision\": \"allow\", \"reasons\": [\"ok\"]}\n";
    let passing = "package approvals_test\nimport rego.v1\ntest_one if { 1 == 1 }\n";
    // Each file under regorus' own limit of 1 MiB a file; together past the upload's.
    let big = format!("package padding\n# {}\n", "x".repeat(400_000));
    for (files, named) in [
        (
            vec![("my rule.rego", policy), ("policy_test.rego", passing)],
            "\"my rule.rego\" is not a relative path",
        ),
        (
            vec![
                ("policy.rego", policy),
                ("policy_test.rego", passing),
                ("padding_a.rego", big.as_str()),
                ("padding_b.rego", big.as_str()),
                ("padding_c.rego", big.as_str()),
            ],
            "past policy.max_bundle_bytes (1048576)",
        ),
    ] {
        passes_its_test_but_would_be_refused(&files, named);
    }

    // Where the operator raised the limit, the same bundle passes when told so; and a lowered
    // one refuses a small bundle.
    let padded = bundle(&[
        ("policy.rego", policy),
        ("policy_test.rego", passing),
        ("padding_a.rego", big.as_str()),
        ("padding_b.rego", big.as_str()),
        ("padding_c.rego", big.as_str()),
    ]);
    let dir = padded.path().to_str().unwrap();
    let raised = approvals(&["policy", "test", dir, "--max-bundle-bytes", "4194304"]);
    assert!(raised.status.success(), "{}", text(&raised.stderr));
    let small = bundle(&[("policy.rego", policy), ("policy_test.rego", passing)]);
    let small = small.path().to_str().unwrap();
    let lowered = approvals(&["policy", "test", small, "--max-bundle-bytes", "10"]);
    assert_eq!(lowered.status.code(), Some(1));
    assert!(
        text(&lowered.stderr).contains("past policy.max_bundle_bytes (10)"),
        "{}",
        text(&lowered.stderr)
    );
}

#[test]
fn a_bundle_that_does_not_compile_exits_2_naming_the_file() {
    let dir = bundle(&[
        ("approvals.rego", SMALL_POLICY),
        (
            "broken.rego",
            "package broken\nimport rego.v1\nallow if {\n",
        ),
    ]);
    for json in [false, true] {
        let mut args = vec!["policy", "test", dir.path().to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let output = approvals(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("broken.rego"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"action": {"type": "read"}}"#).unwrap();
    let output = approvals(&[
        "policy",
        "eval",
        dir.path().to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("broken.rego"));
}

fn policy_input(action: Value) -> Value {
    json!({
        "tenant": "acme",
        "agent_id": "retrieval-agent-v1",
        "submitted_by": "agent-token-subject",
        "action": action,
        "context": {"on_behalf_of": "project_alpha"},
    })
}

fn eval_file(dir: &Path, input: &Value) -> (Output, Value) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), input.to_string()).unwrap();
    let output = approvals(&[
        "policy",
        "eval",
        dir.to_str().unwrap(),
        "--input",
        file.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let verdict = serde_json::from_slice(&output.stdout).unwrap();
    (output, verdict)
}

#[test]
fn eval_prints_the_services_verdict() {
    let dir = shipped_bundle();
    let version = PolicyGate::load(&dir).unwrap().version().to_owned();
    let tested = approvals(&["policy", "test", dir.to_str().unwrap()]);
    assert_eq!(summary_version(&text(&tested.stdout)), version);

    // An ordinary read goes through.
    let (output, verdict) = eval_file(
        &dir,
        &policy_input(json!({"type": "document_read", "resource": "docs/handbook/onboarding.md"})),
    );
    assert_eq!(verdict["decision"], "allow", "{verdict}");
    assert!(!verdict["reasons"].as_array().unwrap().is_empty());
    assert_eq!(verdict["policy_version"], version.as_str());
    // Pretty-printed, for a person reading it.
    assert!(text(&output.stdout).contains("\n  \"decision\""));
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));

    // A read of finance data waits for a human, saying why.
    let (_, verdict) = eval_file(
        &dir,
        &policy_input(json!({"type": "document_read", "resource": "finance/q3-forecast.xlsx"})),
    );
    assert_eq!(verdict["decision"], "require_approval", "{verdict}");
    assert!(
        verdict["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("finance")),
        "{verdict}"
    );
    assert_eq!(verdict["policy_version"], version.as_str());
}

/// `policy test` and `eval` run a bundle the service's sandbox accepts: one whose rule is a
/// long chain (`1 + 1 + … + 1`, a few thousand lines) needs more stack to compile than a main
/// thread's 8 MiB, and the commands aborted on it.
#[test]
fn a_bundle_the_sandbox_accepts_runs_in_the_cli() {
    let chain = vec!["1"; 2_400].join(" +\n");
    let deep = format!("package deep\nimport rego.v1\n\nn := ({chain})\n");
    let dir = bundle(&[
        (
            "approvals.rego",
            "package approvals\nimport rego.v1\n\
             decision := {\"decision\": \"allow\", \"reasons\": [\"fine\"]}\n",
        ),
        ("deep.rego", &deep),
        (
            "approvals_test.rego",
            "package approvals_test\nimport rego.v1\n\
             test_allowed if { data.approvals.decision.decision == \"allow\" }\n",
        ),
    ]);
    let tested = approvals(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(tested.status.code(), Some(0), "{}", text(&tested.stderr));
}

/// `eval` gives the verdict of a service whose instruction budget its operator lowered, as
/// `test` does: with the default budget only, it printed an `allow` that service never gives.
#[test]
fn eval_applies_the_services_instruction_budget() {
    let dir = bundle(&[(
        "approvals.rego",
        "package approvals\nimport rego.v1\n\
         decision := {\"decision\": \"allow\", \"reasons\": [\"counted\"]} if {\n\
         \tcount([x | some x in numbers.range(1, 5000); x > 0]) > 0\n}\n",
    )]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        policy_input(json!({"type": "document_read"})).to_string(),
    )
    .unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "eval",
            dir.path().to_str().unwrap(),
            "--input",
            file.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let output = approvals(&args);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    assert_eq!(eval(&[])["decision"], "allow");
    let limited = eval(&["--policy-instructions", "1000"]);
    assert_eq!(limited["decision"], "require_approval", "{limited}");
    assert!(
        limited["reasons"][0]
            .as_str()
            .unwrap_or_default()
            .contains("1000 instructions"),
        "{limited}"
    );
}

#[test]
fn eval_reads_standard_input() {
    let dir = shipped_bundle();
    let mut child = Command::new(BIN)
        .args(["policy", "eval", dir.to_str().unwrap(), "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = policy_input(json!({"type": "file_delete", "resource": "docs/old.md"}));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let verdict: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verdict["decision"], "deny", "{verdict}");
}

#[test]
fn unusable_input_exits_2_with_a_clear_message() {
    let dir = shipped_bundle();
    let scratch = tempfile::tempdir().unwrap();
    let missing = scratch.path().join("missing.json");
    let invalid = scratch.path().join("invalid.json");
    std::fs::write(&invalid, "{\"action\": ").unwrap();
    let array = scratch.path().join("array.json");
    std::fs::write(&array, "[1, 2]").unwrap();
    for (file, message) in [
        (&missing, "cannot read input file"),
        (&invalid, "is not valid JSON"),
        (&array, "must be a JSON object"),
    ] {
        let output = approvals(&[
            "policy",
            "eval",
            dir.to_str().unwrap(),
            "--input",
            file.to_str().unwrap(),
        ]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{file:?}: {stderr}");
        assert!(
            stderr.contains(message)
                && stderr.contains(file.file_name().unwrap().to_str().unwrap()),
            "{file:?}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{file:?}");
    }
}

/// A policy's `print` calls never reach the service's own output: a tenant's bundle could
/// otherwise forge log lines, or copy agents' actions into the logs.
#[test]
fn print_in_a_policy_does_not_reach_the_output() {
    let dir = bundle(&[
        (
            "approvals.rego",
            r#"package approvals
import rego.v1
decision := {"decision": "allow", "reasons": ["a read"]} if {
	print("FORGED-DECISION-LINE", input.action)
	input.action.type == "read"
}
"#,
        ),
        (
            "approvals_test.rego",
            r#"package approvals_test
import rego.v1
test_prints if {
	print("FORGED-TEST-LINE")
	data.approvals.decision.decision == "allow" with input as {"action": {"type": "read"}}
}
"#,
        ),
    ]);
    let tested = approvals(&["policy", "test", dir.path().to_str().unwrap()]);
    assert!(tested.status.success(), "{}", text(&tested.stdout));
    let (evaluated, verdict) = eval_file(dir.path(), &policy_input(json!({"type": "read"})));
    assert!(evaluated.status.success());
    assert_eq!(verdict["decision"], "allow", "{verdict}");
    for output in [&tested, &evaluated] {
        let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(!all.contains("FORGED"), "{all}");
    }
}

/// A pipeline author reads a command's exit codes in its `--help`, not only in the README: push's
/// 3 (push again) and 1 (fix the bundle) call for different handling.
#[test]
fn each_policy_command_lists_its_exit_codes_in_its_help() {
    for (command, codes) in [
        (
            "test",
            &["0 every test passed", "1 a test failed", "2 the bundle"][..],
        ),
        ("eval", &["0 the verdict", "2 the bundle"][..]),
        (
            "push",
            &[
                "1 the service refused",
                "2 the folder",
                "3 the service did not get to decide",
            ][..],
        ),
    ] {
        let out = approvals(&["policy", command, "--help"]);
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
        let help = text(&out.stdout);
        for code in codes {
            assert!(
                help.contains(code),
                "`policy {command} --help` lacks {code:?}:\n{help}"
            );
        }
    }
}

/// A malformed `--tenant` is a setting at fault (exit 2, as a wrong token or URL is), said
/// before anything is sent: the service's `400 invalid_identifier` made push exit 1, "fix the
/// bundle", and a pipeline would chase a fault in its own settings. (No service listens at
/// the URL: nothing is sent.)
#[test]
fn a_malformed_tenant_is_a_setting_at_fault() {
    let policies = shipped_bundle();
    let out = Command::new(BIN)
        .args([
            "policy",
            "push",
            "--tenant",
            "acme corp",
            "--url",
            "http://127.0.0.1:9",
        ])
        .arg(&policies)
        .env_remove("APPROVALS_CONFIG")
        .env("APPROVALS_TOKEN", "not-sent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--tenant"),
        "{}",
        text(&out.stderr)
    );
}

/// Each test's line is printed as soon as it has run: a slow test (or one that takes the
/// machine's memory and is killed) held back every line, and a run that died printed nothing.
#[test]
fn each_tests_line_is_printed_as_it_finishes() {
    let slow = "package approvals_test\nimport rego.v1\n\
        test_a_quick_one if { 1 == 1 }\n\
        test_b_slow_one if {\n\
        \tevery a in numbers.range(1, 1200) { every b in numbers.range(1, 1200) { a + b > 0 } }\n\
        }\n";
    let dir = bundle(&[("policy.rego", SMALL_POLICY), ("policy_test.rego", slow)]);
    let mut command = Command::new(BIN);
    command
        .args(["policy", "test", dir.path().to_str().unwrap()])
        .env_remove("APPROVALS_CONFIG");
    let started = std::time::Instant::now();
    let mut run = approvals_testkit::process::Process::spawn_reading(
        command,
        approvals_testkit::process::Output::Stdout,
    );
    run.wait_for_line(
        "PASS data.approvals_test.test_a_quick_one",
        std::time::Duration::from_secs(60),
    );
    let first = started.elapsed();
    let last = run.wait_for_line("passed,", std::time::Duration::from_secs(60));
    let all = started.elapsed();
    // The quick test's line came well before the slow one had run.
    assert!(
        first * 2 < all,
        "the first line after {first:?}, the last ({last}) after {all:?}"
    );
}

/// `--policy-instructions` checks the decision against the service's own budget, where its
/// operator changed it: the default budget passed a bundle a lowered one refuses.
#[test]
fn the_services_instruction_budget_can_be_named() {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let policies = policies.to_str().unwrap();
    let default = approvals(&["policy", "test", policies]);
    assert!(default.status.success(), "{}", text(&default.stderr));
    let lowered = approvals(&["policy", "test", policies, "--policy-instructions", "1"]);
    assert_eq!(lowered.status.code(), Some(1));
    assert!(
        text(&lowered.stderr).contains("exceeded its budget of 1 instructions"),
        "{}",
        text(&lowered.stderr)
    );
}
