//! The policy gate: loads the tenant policy bundle (a folder of `.rego` files) into one regorus
//! engine, fingerprints it as `policy_version`, and turns `data.approvals.decision` into a
//! verdict. Anything the policy does not answer cleanly fails closed to `require_approval`,
//! always with a reason, because a silent allow (or a silent, unexplained hold) is the one
//! outcome an approval service must never produce.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::RegoVM;
use regorus::rvm::Program;
use regorus::utils::limits::ExecutionTimerConfig;
use sha2::{Digest, Sha256};

/// The one rule the service asks the bundle about (the contract's policy entry point).
const DECISION_RULE: &str = "data.approvals.decision";
const DECISION_PACKAGE: &str = "data.approvals";
const DECISION_RULE_NAME: &str = "decision";

/// A small policy evaluates in microseconds; a policy that runs for a second is looping or
/// pathological, and evaluation happens on a request thread, so it is cut off and the request
/// fails closed instead of stalling the worker.
const EVAL_TIME_LIMIT: Duration = Duration::from_secs(1);
const EVAL_TIME_CHECK_INTERVAL: NonZeroU32 = match NonZeroU32::new(256) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// Policy output echoed back in a fail-closed reason is cut to this many characters, so that
/// a runaway policy cannot flood approval records and audit events.
const ECHO_LIMIT: usize = 200;

/// A compiled policy bundle. Cheap to evaluate from many threads: every evaluation works on its
/// own clone of the (already prepared) engine, so no lock is held.
#[derive(Clone)]
pub struct PolicyGate {
    engine: regorus::Engine,
    /// The decision rule compiled for regorus' register VM (RVM), about 4x faster per call
    /// than the tree-walking interpreter on the default bundle. `None` when the bundle uses
    /// something the RVM compiler does not support: the interpreter then answers alone.
    program: Option<Arc<Program>>,
    version: String,
    dir: PathBuf,
}

// The engine's own Debug dumps every parsed module; a log line needs only which bundle it is.
impl std::fmt::Debug for PolicyGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyGate")
            .field("version", &self.version)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PolicyDecision {
    Allow,
    Deny,
    RequireApproval,
}

impl PolicyDecision {
    fn as_str(self) -> &'static str {
        match self {
            PolicyDecision::Allow => "allow",
            PolicyDecision::Deny => "deny",
            PolicyDecision::RequireApproval => "require_approval",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicyVerdict {
    pub decision: PolicyDecision,
    /// Never empty: every verdict explains itself to the agent and the reviewer.
    pub reasons: Vec<String>,
    pub policy_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy folder {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy {path} does not compile: {message}")]
    Compile { path: String, message: String },
    #[error("policy folder {0} holds no .rego files")]
    Empty(PathBuf),
}

/// One `.rego` file of the bundle: its '/'-separated path relative to the bundle folder (the
/// name that goes into the version) and its text.
struct PolicyFile {
    relative: String,
    full: PathBuf,
    text: String,
}

impl PolicyGate {
    /// Loads every `*.rego` file under `dir` (recursively, `_test.rego` files included) into one
    /// engine. Fails if a file cannot be read, does not compile, or there is none at all: an
    /// empty bundle would make every request `require_approval`, which is better reported at
    /// start-up than discovered in the queue.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let files = collect_rego_files(dir)?;
        if files.is_empty() {
            return Err(PolicyError::Empty(dir.to_path_buf()));
        }

        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            check_interval: EVAL_TIME_CHECK_INTERVAL,
        });
        let mut declares_decision = false;
        for file in &files {
            let label = file.full.display().to_string();
            let package = engine
                .add_policy(label.clone(), file.text.clone())
                .map_err(|err| PolicyError::Compile {
                    path: label.clone(),
                    message: err.to_string(),
                })?;
            declares_decision |= package == DECISION_PACKAGE
                && matches!(
                    engine.has_declared_rule_rooted_at(&label, DECISION_RULE_NAME),
                    Ok(true)
                );
        }
        // Parsing is per file; some analysis (unsafe variables, clashing definitions across
        // files) only happens when the engine is first prepared. Preparing here reports those
        // at load time and leaves a prepared engine behind, so per-call clones skip that work.
        // A constant query prepares without evaluating any rule.
        engine
            .eval_query("true".to_string(), false)
            .map_err(|err| compile_error(&files, dir, &err))?;

        // regorus resolves function names, head variables and recursion only while evaluating,
        // so a typo'd builtin would otherwise surface as "every request fails closed". A rule
        // that errors on an empty input is broken for practically every input, so running it
        // once here turns that into a start-up error naming the file.
        if declares_decision {
            let mut trial = engine.clone();
            trial.set_input(regorus::Value::new_object());
            trial
                .eval_rule(DECISION_RULE.to_string())
                .map_err(|err| compile_error(&files, dir, &err))?;
        } else {
            tracing::warn!(
                dir = %dir.display(),
                rule = DECISION_RULE,
                "policy bundle does not define the decision rule: every request will require approval"
            );
        }

        let program = if declares_decision {
            compile_for_vm(&mut engine.clone(), dir)
        } else {
            None
        };
        Ok(PolicyGate {
            engine,
            program,
            version: bundle_version(&files),
            dir: dir.to_path_buf(),
        })
    }

    /// `sha256:` + hex digest over each file's relative path and content, in path order.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The folder the bundle was loaded from (for reloads and log lines).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Evaluates `data.approvals.decision` for `input`. Never fails: an undefined rule, an
    /// evaluation error or a malformed result becomes `require_approval` with a reason.
    pub fn evaluate(&self, input: &serde_json::Value) -> PolicyVerdict {
        let (decision, reasons) = match self.raw_decision(input) {
            Ok(Some(value)) => interpret(&value),
            Ok(None) => fail_closed(format!(
                "policy returned no decision ({DECISION_RULE} is undefined for this input): \
                 failing closed to require_approval"
            )),
            Err(message) if message.contains("not a valid rule path") => fail_closed(format!(
                "policy returned no decision (no loaded policy defines {DECISION_RULE}): \
                 failing closed to require_approval"
            )),
            Err(message) => fail_closed(format!(
                "policy evaluation failed ({}): failing closed to require_approval",
                one_line(&message)
            )),
        };
        PolicyVerdict {
            decision,
            reasons,
            policy_version: self.version.clone(),
        }
    }

    /// Runs the rule on the VM when it compiled, else (or if the VM fails) on a private clone
    /// of the interpreter. `Ok(None)` means undefined.
    fn raw_decision(&self, input: &serde_json::Value) -> Result<Option<serde_json::Value>, String> {
        if let Some(program) = &self.program {
            let mut vm = RegoVM::new();
            vm.load_program(program.clone());
            vm.set_input(regorus::Value::from(input.clone()));
            // Undefined and errors are rare and are where the VM is known to differ (it reads a
            // conflict between rule bodies as undefined): the interpreter has the last word.
            match vm.execute_entry_point_by_name(DECISION_RULE) {
                Ok(value) if value != regorus::Value::Undefined => return to_json(value),
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "policy VM failed; using the interpreter"),
            }
            // Counted, because a bundle that often lands here runs several times slower.
            metrics::counter!("approvals_policy_interpreter_fallbacks_total").increment(1);
        }
        self.interpreter_decision(input)
    }

    /// The tree-walking interpreter: the reference semantics.
    fn interpreter_decision(
        &self,
        input: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, String> {
        let mut engine = self.engine.clone();
        engine.set_input(regorus::Value::from(input.clone()));
        let value = engine
            .eval_rule(DECISION_RULE.to_string())
            .map_err(|err| err.to_string())?;
        to_json(value)
    }
}

/// `Ok(None)` for undefined. Undefined serialises as the string "<undefined>", which would
/// then look like a (malformed) decision, so it has to be caught before conversion.
fn to_json(value: regorus::Value) -> Result<Option<serde_json::Value>, String> {
    if value == regorus::Value::Undefined {
        return Ok(None);
    }
    serde_json::to_value(&value)
        .map(Some)
        .map_err(|err| format!("result is not JSON: {err}"))
}

/// Compiles the decision rule for the VM; `None` (interpreter only) if the compiler refuses.
fn compile_for_vm(engine: &mut regorus::Engine, dir: &Path) -> Option<Arc<Program>> {
    let compiled = engine
        .compile_with_entrypoint(&DECISION_RULE.into())
        .and_then(|policy| {
            Compiler::compile_from_policy(&policy, &[DECISION_RULE]).map_err(Into::into)
        });
    match compiled {
        Ok(program) => Some(program),
        Err(error) => {
            tracing::info!(dir = %dir.display(), %error, "policy runs on the interpreter (the VM compiler refused it)");
            None
        }
    }
}

/// Checks the contract shape `{"decision": ..., "reasons": [string, ...]}`; extra fields are
/// tolerated so a policy can carry its own diagnostics.
fn interpret(value: &serde_json::Value) -> (PolicyDecision, Vec<String>) {
    let decision = value
        .get("decision")
        .and_then(serde_json::Value::as_str)
        .and_then(|d| match d {
            "allow" => Some(PolicyDecision::Allow),
            "deny" => Some(PolicyDecision::Deny),
            "require_approval" => Some(PolicyDecision::RequireApproval),
            _ => None,
        });
    let reasons = value
        .get("reasons")
        .and_then(serde_json::Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
        });

    match (decision, reasons) {
        (Some(decision), Some(mut reasons)) => {
            reasons.retain(|r| !r.trim().is_empty());
            if reasons.is_empty() {
                reasons.push(format!(
                    "policy decided {} without giving a reason",
                    decision.as_str()
                ));
            }
            (decision, reasons)
        }
        (None, _) => fail_closed(format!(
            "policy returned an invalid decision (expected \"decision\" to be one of \"allow\", \
             \"deny\", \"require_approval\"; got {}): failing closed to require_approval",
            echo(value)
        )),
        (Some(_), None) => fail_closed(format!(
            "policy returned an invalid decision (expected \"reasons\" to be a list of strings; \
             got {}): failing closed to require_approval",
            echo(value)
        )),
    }
}

/// regorus names the offending file in its message; point at that file when we can, at the
/// folder when the problem spans files.
fn compile_error(files: &[PolicyFile], dir: &Path, err: &dyn std::fmt::Display) -> PolicyError {
    let message = err.to_string();
    let path = files
        .iter()
        .map(|f| f.full.display().to_string())
        .find(|p| message.contains(p.as_str()))
        .unwrap_or_else(|| dir.display().to_string());
    PolicyError::Compile { path, message }
}

fn fail_closed(reason: String) -> (PolicyDecision, Vec<String>) {
    tracing::warn!(rule = DECISION_RULE, %reason, "policy failed closed");
    (PolicyDecision::RequireApproval, vec![reason])
}

/// Compact JSON of a policy result, cut to `ECHO_LIMIT` characters.
fn echo(value: &serde_json::Value) -> String {
    truncate(value.to_string())
}

/// regorus errors span several lines (a source excerpt with a caret); a reason is one line.
fn one_line(message: &str) -> String {
    truncate(message.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn truncate(text: String) -> String {
    match text.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Every `*.rego` file under `dir`, sorted by relative path. Entries whose name starts with '.'
/// are skipped: Kubernetes ConfigMap mounts keep a second copy of every file under hidden
/// `..data`/`..<timestamp>` folders, and loading both would define every rule twice. Symlinks
/// are followed (those same mounts are symlinks), with a guard against directory cycles.
fn collect_rego_files(dir: &Path) -> Result<Vec<PolicyFile>, PolicyError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Read { path, source }
    };

    let mut files = Vec::new();
    let mut visited = HashSet::new();
    // (folder on disk, its relative path components)
    let mut pending: Vec<(PathBuf, Vec<String>)> = vec![(dir.to_path_buf(), Vec::new())];
    while let Some((folder, prefix)) = pending.pop() {
        let canonical = folder.canonicalize().map_err(read_err(&folder))?;
        if !visited.insert(canonical) {
            continue;
        }
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&folder).map_err(read_err(&folder))? {
            let entry = entry.map_err(read_err(&folder))?;
            entries.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
        // Which of two routes to one folder (a real path and a symlink) is walked first decides
        // the relative paths, and so the version: walk in name order, never in disk order.
        entries.sort();
        let mut subfolders = Vec::new();
        for (name, path) in entries {
            if name.starts_with('.') {
                continue;
            }
            let is_rego = name.ends_with(".rego");
            // metadata() follows symlinks, unlike DirEntry::file_type(). A dangling link is
            // only an error if it claims to be a policy.
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(_) if !is_rego => continue,
                Err(source) => return Err(PolicyError::Read { path, source }),
            };
            let mut components = prefix.clone();
            components.push(name);
            if meta.is_dir() {
                subfolders.push((path, components));
            } else if meta.is_file() && is_rego {
                let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
                files.push(PolicyFile {
                    relative: components.join("/"),
                    full: path,
                    text,
                });
            }
        }
        pending.extend(subfolders.into_iter().rev());
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// The NUL separators keep (path, content) boundaries unambiguous, so moving text from one
/// file into another, or renaming a file, always changes the version.
fn bundle_version(files: &[PolicyFile]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.relative.as_bytes());
        hasher.update([0u8]);
        hasher.update(file.text.as_bytes());
        hasher.update([0u8]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
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
        let forward: Vec<(String, String)> =
            names.iter().map(|n| (n.to_string(), text(n))).collect();
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
        ];
        let actions = types.iter().flat_map(|t| {
            [
                "finance/q3.xlsx",
                "wiki/onboarding",
                "hr/payroll",
                "news/finance-weekly.md",
                "",
                "secrets:db",
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
            assert_eq!(by_vm, g.interpreter_decision(&input), "{input}");
            checked += 1;
        }
        assert!(checked > 60);
    }
}
