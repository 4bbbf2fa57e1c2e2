//! The bundle's own tests, run the way `opa test` runs them: every rule named `test_*`, in any
//! package, is one test, and passes only when it evaluates to `true`.
//!
//! A pure library function (no printing, no I/O): `approvals policy test` prints the report,
//! and the service uses the same report to refuse an uploaded bundle whose tests fail.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use regorus::unstable::{Expr, Rule, RuleHead};
use regorus::utils::limits::ExecutionTimerConfig;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::{PolicyFile, PolicyGate};

/// The longest message kept of one test's failure or one refusal: regorus quotes the offending
/// value or source line whole, and a test that builds a string of tens of megabytes (well
/// inside a sandbox child's memory) had it copied into the service's memory, its 10-minute
/// refusal cache and the 422 answer, several times over.
pub const MAX_MESSAGE_CHARS: usize = 2_000;
/// The most refusal reasons an upload is answered with; the rest are counted.
pub const MAX_REFUSALS: usize = 100;

/// What makes a rule a test (OPA's convention).
const TEST_PREFIX: &str = "test_";

/// Per test, replacing the gate's one-second limit for decisions: a test may legitimately
/// sweep a vocabulary (and runs in debug builds under `cargo test`), but one that loops must
/// still end, since the service runs an uploaded bundle's tests inside a request.
const TEST_TIME_LIMIT: Duration = Duration::from_secs(10);
/// All of a bundle's tests together: the service validates one upload at a time, so a bundle
/// of many slow tests must not hold every tenant's uploads for minutes.
pub const TESTS_TIME_BUDGET: Duration = Duration::from_secs(30);
const TEST_TIME_CHECK_INTERVAL: NonZeroU32 = match NonZeroU32::new(256) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// The outcome of one `test_*` rule.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TestResult {
    /// The rule's full path, e.g. `data.approvals_test.test_delete_is_denied`.
    pub name: String,
    /// The file that defines it, as the bundle labels it (path on disk, or upload path).
    pub file: String,
    pub passed: bool,
    /// Why it failed: what it evaluated to instead of `true`, or the evaluation error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds in JSON: a consumer reads a number, not serde's `{secs, nanos}`.
    #[serde(
        rename = "duration_ms",
        serialize_with = "as_millis",
        deserialize_with = "from_millis"
    )]
    pub duration: Duration,
}

/// Every test of a bundle, in file order and then rule order. A bundle without tests gives
/// an empty report: whether that is acceptable is the caller's decision.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct TestReport {
    /// The version of the bundle that was tested (`sha256:...`).
    pub policy_version: String,
    pub results: Vec<TestResult>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    pub fn all_passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &TestResult> {
        self.results.iter().filter(|r| !r.passed)
    }
}

// By hand, so the JSON carries the counts a consumer would otherwise recompute.
impl Serialize for TestReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut report = serializer.serialize_struct("TestReport", 4)?;
        report.serialize_field("policy_version", &self.policy_version)?;
        report.serialize_field("passed", &self.passed())?;
        report.serialize_field("failed", &self.failed())?;
        report.serialize_field("results", &self.results)?;
        report.end()
    }
}

fn from_millis<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let millis = <f64 as serde::Deserialize>::deserialize(deserializer)?;
    Ok(Duration::from_secs_f64(millis.max(0.0) / 1000.0))
}

fn as_millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    // Whole microseconds: finer is noise, and `0.069` reads better than `0.06905599999999999`.
    serializer.serialize_f64(duration.as_micros() as f64 / 1000.0)
}

/// Compiles an uploaded bundle and runs its tests: its version and the report, or every
/// reason to refuse it (it does not compile, defines no decision, or a test fails).
pub fn validate_bundle(
    files: &[PolicyFile],
    origin: &str,
    budget: usize,
) -> Result<(String, TestReport), Vec<String>> {
    let gate = PolicyGate::from_files(files, origin)
        .map_err(|e| vec![clipped(e.to_string())])?
        .with_budget(budget);
    let mut errors = upload_checks(&gate);
    let tests = run_tests(&gate);
    for failed in tests.results.iter().filter(|t| !t.passed) {
        errors.push(match &failed.error {
            Some(error) => format!("test {} ({}) failed: {error}", failed.name, failed.file),
            None => format!("test {} ({}) failed", failed.name, failed.file),
        });
    }
    if errors.is_empty() {
        return Ok((gate.version().to_owned(), tests));
    }
    let more = errors.len().saturating_sub(MAX_REFUSALS);
    errors.truncate(MAX_REFUSALS);
    let mut errors: Vec<String> = errors.into_iter().map(clipped).collect();
    if more > 0 {
        errors.push(format!("and {more} more"));
    }
    Err(errors)
}

/// What refuses a bundle that compiles, besides its tests: no decision rule, or a decision
/// (for an empty input) that is not of the contract's shape. Either would make every submit
/// fail closed to `require_approval` once the bundle is active.
pub fn upload_checks(gate: &PolicyGate) -> Vec<String> {
    if !gate.defines_decision() {
        return vec![
            "no file defines data.approvals.decision (package approvals, rule decision)".to_owned(),
        ];
    }
    // One refusal for one mistake: an unconditional value off shape fails both checks.
    match gate.check_decision_on_empty_input() {
        Err(refusal) => vec![refusal],
        Ok(()) => literal_decisions_off_shape(gate),
    }
}

/// Every definition of the decision whose value is written out as an object (`decision :=
/// {"decision": "allow"} if ...`), checked against the contract's shape where it is literal:
/// the empty input reaches only the default, and a conditional answer without `reasons`
/// passed its tests (which compared `.decision` only) and failed closed on every submit it
/// answered once active. Parts computed by the policy (a variable, a comprehension) stand in
/// as valid.
fn literal_decisions_off_shape(gate: &PolicyGate) -> Vec<String> {
    let mut engine = gate.engine().clone();
    let mut refusals = Vec::new();
    for module in engine.get_modules() {
        if rule_path(&module.package.refr).as_deref() != Ok(".approvals") {
            continue;
        }
        for rule in &module.policy {
            for value in decision_values(rule) {
                let Some(shape) = shape_of(value) else {
                    continue;
                };
                if let Err(problem) = super::verdict::read(&shape) {
                    let span = value.span();
                    refusals.push(format!(
                        "{}:{}: data.approvals.decision as written here: {problem}; every submit \
                         this answers would fail closed to require_approval",
                        span.source.get_path(),
                        span.line
                    ));
                }
            }
        }
    }
    refusals
}

/// The values a rule gives `decision` (its head's, its default's, each `else`'s), if it is a
/// definition of `decision` itself.
fn decision_values(rule: &Rule) -> Vec<&Expr> {
    let is_decision =
        |refr: &Expr| matches!(refr, Expr::Var { span, .. } if span.text() == "decision");
    match rule {
        Rule::Spec {
            head: RuleHead::Compr { refr, assign, .. },
            bodies,
            ..
        } if is_decision(refr) => assign
            .iter()
            .chain(bodies.iter().filter_map(|b| b.assign.as_ref()))
            .map(|a| &*a.value)
            .collect(),
        Rule::Default {
            refr, args, value, ..
        } if args.is_empty() && is_decision(refr) => {
            vec![&**value]
        }
        _ => Vec::new(),
    }
}

/// The shape of a decision value as far as it is written out: `None` when nothing of it is
/// (a variable, a call). In an object, a computed `decision` stands in as `deny` and computed
/// `reasons` (or reasons) as text.
fn shape_of(value: &Expr) -> Option<serde_json::Value> {
    let Expr::Object { fields, .. } = value else {
        return literal(value);
    };
    let mut shape = serde_json::Map::new();
    for (_, key, value) in fields {
        let Some(serde_json::Value::String(key)) = literal(key) else {
            return None;
        };
        let written = match (key.as_str(), &**value) {
            ("reasons", Expr::Array { items, .. }) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|item| literal(item).unwrap_or_else(|| "computed".into()))
                    .collect(),
            ),
            ("reasons", other) => literal(other).unwrap_or_else(|| serde_json::json!(["computed"])),
            ("decision", other) => literal(other).unwrap_or_else(|| "deny".into()),
            (_, other) => literal(other).unwrap_or(serde_json::Value::Null),
        };
        shape.insert(key, written);
    }
    Some(serde_json::Value::Object(shape))
}

/// A value written out in full (strings, numbers, booleans, null, arrays and objects of them).
fn literal(expr: &Expr) -> Option<serde_json::Value> {
    match expr {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => serde_json::to_value(value).ok(),
        Expr::Array { items, .. } => items.iter().map(|i| literal(i)).collect::<Option<_>>(),
        Expr::Object { fields, .. } => fields
            .iter()
            .map(|(_, k, v)| match (literal(k)?, literal(v)?) {
                (serde_json::Value::String(k), v) => Some((k, v)),
                _ => None,
            })
            .collect::<Option<serde_json::Map<_, _>>>()
            .map(serde_json::Value::Object),
        _ => None,
    }
}

/// Whether a refusal reason says a test ran out of time: on a busy machine the same bundle may
/// pass, so a retry must be judged afresh rather than answered from memory.
pub fn depends_on_load(reason: &str) -> bool {
    reason.contains(NOT_RUN) || reason.contains("execution exceeded time limit")
}

/// How a test left unrun for want of time says so.
const NOT_RUN: &str = "not run: the bundle's tests used up their";

/// Runs every `test_*` rule of the bundle, each on its own clone of the prepared engine (so
/// one test's state, or failure, cannot leak into the next), without input or data, as
/// `opa test` does.
pub fn run_tests(gate: &PolicyGate) -> TestReport {
    run_tests_within(gate, TESTS_TIME_BUDGET)
}

/// [`run_tests`] with `budget` for all the tests together: each runs with what is left (at
/// most [`TEST_TIME_LIMIT`]); once it is spent, the rest fail unrun.
pub fn run_tests_within(gate: &PolicyGate, budget: Duration) -> TestReport {
    run_tests_reporting(gate, budget, &mut |_| {})
}

/// [`run_tests_within`], handing each result to `finished` as soon as its test has run: the
/// command line prints it then, so a long run shows its progress and a run that dies (a test
/// that takes all memory) has said which tests passed before it.
pub fn run_tests_reporting(
    gate: &PolicyGate,
    budget: Duration,
    finished: &mut dyn FnMut(&TestResult),
) -> TestReport {
    let deadline = Instant::now() + budget;
    let (rewritten, found) = discover(gate);
    let runs_on = rewritten.as_ref().unwrap_or(gate);
    let results = found
        .into_iter()
        .map(|found| match found {
            Found::Test { rule, name, file } => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    TestResult {
                        name,
                        file,
                        passed: false,
                        error: Some(format!("{NOT_RUN} {budget:?} together")),
                        duration: Duration::ZERO,
                    }
                } else {
                    run_one(runs_on, &rule, name, file, left.min(TEST_TIME_LIMIT))
                }
            }
            Found::Unnamed { file, message } => TestResult {
                name: format!("<package of {file}>"),
                file,
                passed: false,
                error: Some(format!("cannot name this file's tests: {message}")),
                duration: Duration::ZERO,
            },
        })
        .inspect(|result| finished(result))
        .collect();
    TestReport {
        policy_version: gate.version().to_owned(),
        results,
    }
}

fn run_one(
    gate: &PolicyGate,
    rule: &str,
    name: String,
    file: String,
    limit: Duration,
) -> TestResult {
    let mut engine = gate.engine().clone();
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit,
        check_interval: TEST_TIME_CHECK_INTERVAL,
    });
    let started = Instant::now();
    let outcome = engine.eval_rule(rule.to_owned());
    let duration = started.elapsed();
    let error = match outcome {
        Ok(value) if value == regorus::Value::from(true) => None,
        Ok(regorus::Value::Undefined) => Some("undefined (a test passes only when true)".into()),
        Ok(value) => Some(format!("evaluated to {}, not true", describe(&value))),
        Err(err) => Some(clipped(format!(
            "evaluation error: {}",
            headline_first(&err.to_string())
        ))),
    };
    TestResult {
        name,
        file,
        passed: error.is_none(),
        error,
        duration,
    }
}

/// regorus puts the source excerpt first and the message ("error: ...") last; a report (and a
/// one-line-per-test listing) wants the message first, with the excerpt under it.
fn headline_first(message: &str) -> String {
    let message = message.trim();
    let lines: Vec<&str> = message.lines().collect();
    match lines.iter().position(|l| l.starts_with("error: ")) {
        Some(at) if at > 0 => {
            let headline = lines[at..].join("\n");
            let headline = headline.strip_prefix("error: ").unwrap_or(&headline);
            format!("{headline}\n{}", lines[..at].join("\n"))
        }
        _ => message.to_owned(),
    }
}

/// `text` cut to [`MAX_MESSAGE_CHARS`], with an ellipsis.
fn clipped(text: String) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => text,
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

fn describe(value: &regorus::Value) -> String {
    const MAX: usize = 200;
    let text = serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"));
    if text.chars().count() <= MAX {
        text
    } else {
        format!("{}…", text.chars().take(MAX).collect::<String>())
    }
}

enum Found {
    Test {
        /// The rule evaluated (in the rewritten bundle, for a repeated name).
        rule: String,
        /// The name it is reported by.
        name: String,
        file: String,
    },
    /// A file whose package path cannot be written as a rule path: reported as a failure,
    /// because tests that cannot be run must not let the bundle pass.
    Unnamed { file: String, message: String },
}

/// The test rules, read from the parsed modules (regorus' AST, via its `unstable` module and
/// `Engine::get_modules`), not from the text: comments, strings, odd formatting and rules
/// split over lines cannot fool it. regorus 0.14's stable API lists packages and can confirm a
/// rule name it is given (`has_declared_rule_rooted_at`), but lists no rules; `get_ast_as_json`
/// would, behind a cargo feature (`ast`) we do not build. If an upgrade moves these hidden
/// items, this stops compiling rather than silently finding no tests.
///
/// Each definition is a test of its own, as `opa test` runs them: a name defined twice (a
/// copy-pasted test, or the same name in two files of a package) would otherwise evaluate as
/// one rule, true when any of its definitions is, and a failing copy passed. As OPA does, the
/// second and later definitions are renamed (reported as `name#01`, ...): in a copy of the
/// bundle, returned beside the tests when there is any such name.
fn discover(gate: &PolicyGate) -> (Option<PolicyGate>, Vec<Found>) {
    // `get_modules` takes `&mut self` though it only reads; a clone shares the parsed modules.
    let mut engine = gate.engine().clone();
    let mut found = Vec::new();
    let mut definitions: HashMap<String, usize> = HashMap::new();
    // Per module, in order: the rule heads to rename in its text (byte range, new name).
    let mut renames: Vec<Vec<(usize, usize, String)>> = Vec::new();
    let modules = engine.get_modules();
    // Every name defined in each package, which a renamed test must not take.
    let mut taken: HashSet<String> = HashSet::new();
    for module in modules.iter() {
        if let Ok(package) = rule_path(&module.package.refr) {
            for rule in &module.policy {
                if let Some(head) = head_root(rule) {
                    taken.insert(format!("data{package}{}", path_component(head.text())));
                }
            }
        }
    }
    for module in modules.iter() {
        let file = module.package.span.source.get_path().clone();
        renames.push(Vec::new());
        let package = match rule_path(&module.package.refr) {
            Ok(package) => package,
            Err(message) => {
                found.push(Found::Unnamed { file, message });
                continue;
            }
        };
        for rule in &module.policy {
            let Some(rule_name) = test_rule_name(rule) else {
                continue;
            };
            let name = format!("data{package}{}", path_component(&rule_name));
            let seen = definitions.entry(name.clone()).or_default();
            *seen += 1;
            if *seen == 1 {
                found.push(Found::Test {
                    rule: name.clone(),
                    name,
                    file: file.clone(),
                });
                continue;
            }
            let Some(head) = head_root(rule) else {
                continue;
            };
            let ordinal = *seen - 1;
            let (renamed, rule) = (0..)
                .map(|n| {
                    let renamed = format!("{rule_name}__{ordinal:02}{}", "_".repeat(n));
                    let rule = format!("data{package}{}", path_component(&renamed));
                    (renamed, rule)
                })
                .find(|(_, rule)| taken.insert(rule.clone()))
                .unwrap_or_default();
            if let Some(in_module) = renames.last_mut() {
                in_module.push((head.start as usize, head.end as usize, renamed));
            }
            found.push(Found::Test {
                rule,
                name: format!("{name}#{ordinal:02}"),
                file: file.clone(),
            });
        }
    }
    // Copied only when a name repeats: most bundles' tests run on the bundle as it is.
    if renames.iter().all(Vec::is_empty) {
        return (None, found);
    }
    let rewritten: Vec<PolicyFile> = modules
        .iter()
        .zip(renames)
        .map(|(module, mut renames)| {
            let source = &module.package.span.source;
            let (relative, mut text) = (source.get_path().clone(), source.get_contents().clone());
            renames.sort_by_key(|(start, ..)| std::cmp::Reverse(*start));
            for (start, end, renamed) in renames {
                if text.is_char_boundary(start) && text.is_char_boundary(end) && start <= end {
                    text.replace_range(start..end, &renamed);
                }
            }
            PolicyFile { relative, text }
        })
        .collect();
    match PolicyGate::from_files_untried(&rewritten, "its tests, each definition on its own") {
        Ok(rewritten) => (Some(rewritten), found),
        // Not expected (only names changed); the tests must not pass for want of a run.
        Err(error) => (
            None,
            vec![Found::Unnamed {
                file: "(bundle)".into(),
                message: format!(
                    "cannot run the definitions of a repeated test name one by one: {}",
                    clipped(error.to_string())
                ),
            }],
        ),
    }
}

/// The span of the name a rule defines (`test_x` in `test_x if ...`, `test_x.y := ...`).
fn head_root(rule: &Rule) -> Option<&regorus::unstable::Span> {
    let refr = match rule {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => refr,
        },
        Rule::Default { refr, .. } => refr,
    };
    let mut expr: &Expr = refr;
    loop {
        match expr {
            Expr::Var { span, .. } => return Some(span),
            Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => expr = refr,
            _ => return None,
        }
    }
}

/// The name a test is known by, for a rule that is a test: the first component of its head
/// (`test_x` in `test_x if ...`). Functions are not tests, whatever their name: they cannot be
/// evaluated without arguments.
fn test_rule_name(rule: &Rule) -> Option<String> {
    if let Rule::Spec {
        head: RuleHead::Func { args, .. },
        ..
    }
    | Rule::Default { args, .. } = rule
    {
        if !args.is_empty() {
            return None;
        }
    }
    let name = head_root(rule)?.text();
    name.starts_with(TEST_PREFIX).then(|| name.to_owned())
}

/// A package reference as the tail of a rule path (`.a.b`, or `.a["1.0"]` for a component
/// that is not an identifier).
fn rule_path(expr: &Expr) -> Result<String, String> {
    let mut components = Vec::new();
    let mut current = expr;
    loop {
        match current {
            Expr::Var { span, .. } => {
                components.push(span.text().to_owned());
                break;
            }
            Expr::RefDot { refr, field, .. } => {
                components.push(field.0.text().to_owned());
                current = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                let Expr::String { value, .. } = index.as_ref() else {
                    return Err(format!(
                        "package component {} is not a string",
                        index.span().text()
                    ));
                };
                let text = value.as_string().map_err(|err| err.to_string())?;
                components.push(text.as_ref().to_owned());
                current = refr;
            }
            other => return Err(format!("{} is not a package path", other.span().text())),
        }
    }
    Ok(components.iter().rev().map(|c| path_component(c)).collect())
}

fn path_component(component: &str) -> String {
    let identifier = component
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && component
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier {
        format!(".{component}")
    } else {
        // A JSON string is a Rego string literal.
        format!("[{}]", serde_json::Value::from(component))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyFile;

    fn gate(files: &[(&str, &str)]) -> PolicyGate {
        let files = files
            .iter()
            .map(|(relative, text)| PolicyFile {
                relative: (*relative).to_owned(),
                text: (*text).to_owned(),
            })
            .collect::<Vec<_>>();
        PolicyGate::from_files(&files, "test bundle").unwrap()
    }

    fn result<'a>(report: &'a TestReport, name: &str) -> &'a TestResult {
        report
            .results
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no {name} in {report:#?}"))
    }

    const POLICY: &str = r#"package approvals
import rego.v1
decision := {"decision": "allow", "reasons": ["ok"]} if input.action.type == "read"
"#;

    /// Slow tests share one budget: a bundle of many cannot hold the upload slot for long.
    #[test]
    fn slow_tests_share_one_budget() {
        let slow = |name: &str| {
            format!(
                "{name} if {{ every i in numbers.range(1, 3000) {{ every j in numbers.range(1, 3000) {{ i + j > 0 }} }} }}\n"
            )
        };
        let tests = format!(
            "package approvals_test\nimport rego.v1\n{}{}{}",
            slow("test_slow_a"),
            slow("test_slow_b"),
            slow("test_slow_c")
        );
        let started = Instant::now();
        let report = run_tests_within(
            &gate(&[("approvals.rego", POLICY), ("approvals_test.rego", &tests)]),
            Duration::from_millis(500),
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "ran for {took:?}");
        assert_eq!(report.failed(), 3, "{report:#?}");
        let unrun = report
            .results
            .iter()
            .filter(|r| r.error.as_deref().is_some_and(|e| e.starts_with("not run")))
            .count();
        assert!(unrun >= 1, "{report:#?}");
        // Every one of these failures is the machine's time, not the bundle's logic: an
        // upload refused for them is judged again when retried, not answered from memory.
        for result in &report.results {
            let error = result.error.as_deref().unwrap_or_default();
            assert!(depends_on_load(error), "{error}");
        }
        assert!(!depends_on_load("evaluated to false, not true"));
    }

    #[test]
    fn passing_failing_undefined_and_erroring_tests() {
        let tests = r#"package approvals_test
import rego.v1
import data.approvals

# a comment mentioning test_in_a_comment if { false }
test_read_is_allowed if {
    approvals.decision.decision == "allow" with input as {"action": {"type": "read"}}
}

test_false := false

test_undefined if {
    approvals.decision with input as {"action": {"type": "write"}}
}

test_error if {
    x := "abc"
    to_number(x) == 1
}

test_helper(x) := x

not_a_test := false
"#;
        let report = run_tests(&gate(&[
            ("approvals.rego", POLICY),
            ("approvals_test.rego", tests),
        ]));
        let names: Vec<&str> = report.results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "data.approvals_test.test_read_is_allowed",
                "data.approvals_test.test_false",
                "data.approvals_test.test_undefined",
                "data.approvals_test.test_error",
            ],
            "{report:#?}"
        );
        let pass = result(&report, "data.approvals_test.test_read_is_allowed");
        assert!(pass.passed && pass.error.is_none(), "{pass:?}");
        assert_eq!(pass.file, "approvals_test.rego");

        let false_ = result(&report, "data.approvals_test.test_false");
        assert!(!false_.passed);
        assert!(
            false_.error.as_deref().is_some_and(|e| e.contains("false")),
            "{false_:?}"
        );

        let undefined = result(&report, "data.approvals_test.test_undefined");
        assert!(!undefined.passed);
        assert!(
            undefined
                .error
                .as_deref()
                .is_some_and(|e| e.contains("undefined")),
            "{undefined:?}"
        );

        let error = result(&report, "data.approvals_test.test_error");
        assert!(!error.passed);
        let message = error.error.as_deref().unwrap_or_default();
        assert!(
            message.starts_with("evaluation error: could not parse string as number\n"),
            "{error:?}"
        );
        // ...and then where.
        assert!(message.contains("approvals_test.rego:"), "{error:?}");

        assert_eq!((report.passed(), report.failed()), (1, 3));
        assert!(!report.all_passed());
        assert_eq!(report.failures().count(), 3);
        assert_eq!(
            report.policy_version,
            gate(&[("approvals.rego", POLICY), ("approvals_test.rego", tests)]).version()
        );
    }

    #[test]
    fn tests_in_any_package_and_file_count_once_each() {
        let first = "package checks.a\nimport rego.v1\ntest_one if true\n";
        let second = "package checks.a\nimport rego.v1\ntest_two := true\n";
        let odd = "package checks[\"v1.0\"]\nimport rego.v1\ntest_three if true\n";
        let report = run_tests(&gate(&[
            ("approvals.rego", POLICY),
            ("a.rego", first),
            ("b.rego", second),
            ("c.rego", odd),
        ]));
        let names: Vec<(&str, &str, bool)> = report
            .results
            .iter()
            .map(|r| (r.name.as_str(), r.file.as_str(), r.passed))
            .collect();
        assert_eq!(
            names,
            [
                ("data.checks.a.test_one", "a.rego", true),
                ("data.checks.a.test_two", "b.rego", true),
                ("data.checks[\"v1.0\"].test_three", "c.rego", true),
            ],
            "{report:#?}"
        );
        assert!(report.all_passed());
    }

    /// A name defined twice, in one file or in two of a package, is two tests, as `opa test`
    /// runs them: evaluated as one rule it was true when either definition was, and the failing
    /// copy passed.
    #[test]
    fn each_definition_of_a_repeated_test_name_is_a_test_of_its_own() {
        let first = "package checks\nimport rego.v1\ntest_x if false\n\
                     test_x if true\ntest_x__01 if true\ntest_y if true\n";
        let second =
            "package checks\nimport rego.v1\n# ünïcode before the head\ntest_x if { 1 == 2 }\n\
                      test_x__02 := true\n";
        let report = run_tests(&gate(&[
            ("approvals.rego", POLICY),
            ("a.rego", first),
            ("b.rego", second),
        ]));
        let names: Vec<(&str, &str, bool)> = report
            .results
            .iter()
            .map(|r| (r.name.as_str(), r.file.as_str(), r.passed))
            .collect();
        assert_eq!(
            names,
            [
                ("data.checks.test_x", "a.rego", false),
                ("data.checks.test_x#01", "a.rego", true),
                ("data.checks.test_x__01", "a.rego", true),
                ("data.checks.test_y", "a.rego", true),
                ("data.checks.test_x#02", "b.rego", false),
                ("data.checks.test_x__02", "b.rego", true),
            ],
            "{report:#?}"
        );
        assert_eq!(report.failed(), 2);
        // The version is the bundle's own, not its rewritten copy's.
        assert_eq!(
            report.policy_version,
            gate(&[
                ("approvals.rego", POLICY),
                ("a.rego", first),
                ("b.rego", second)
            ])
            .version()
        );
    }

    #[test]
    fn a_bundle_without_tests_gives_an_empty_report() {
        let report = run_tests(&gate(&[("approvals.rego", POLICY)]));
        assert!(report.results.is_empty());
        assert!(report.all_passed());
        assert_eq!((report.passed(), report.failed()), (0, 0));
    }

    #[test]
    fn the_report_serialises_with_counts_and_milliseconds() {
        let tests = "package t\nimport rego.v1\ntest_ok if true\ntest_bad if false\n";
        let report = run_tests(&gate(&[("approvals.rego", POLICY), ("t.rego", tests)]));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["policy_version"], report.policy_version);
        assert_eq!(json["passed"], 1);
        assert_eq!(json["failed"], 1);
        assert_eq!(json["results"][0]["name"], "data.t.test_ok");
        assert!(json["results"][0]["duration_ms"].is_f64());
        assert!(json["results"][0].get("error").is_none());
        assert!(json["results"][1]["error"].is_string());
    }
}
