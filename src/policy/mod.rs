//! The policy gate: loads a policy bundle (a folder of `.rego` files, or a tenant's uploaded
//! bundle) into one regorus engine, fingerprints it as `policy_version`, and turns `data.approvals.decision` into a
//! verdict. Anything the policy does not answer cleanly fails closed to `require_approval`,
//! always with a reason, because a silent allow (or a silent, unexplained hold) is the one
//! outcome an approval service must never produce.
//!
//! `bundle` reads the folder and computes the version; `verdict` reads the policy's answer.

mod bundle;
pub mod notes;
pub mod sandbox;
pub mod stack;
pub mod testing;
mod verdict;

pub use bundle::{
    bundle_version, check_text, check_upload_paths, collect_rego_files, PolicyFile,
    MAX_BUNDLE_FILES,
};

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::{RegoVM, VmError};
use regorus::rvm::Program;
use regorus::utils::limits::ExecutionTimerConfig;

use verdict::{fail_closed, interpret, one_line, read};
pub use verdict::{PolicyDecision, PolicyVerdict};

/// The one rule the service asks the bundle about (the contract's policy entry point).
const DECISION_RULE: &str = "data.approvals.decision";
const DECISION_PACKAGE: &str = "data.approvals";
const DECISION_RULE_NAME: &str = "decision";

/// Instructions one evaluation may execute unless configured (`limits.policy_instructions`).
pub const DEFAULT_BUDGET: usize = 1_000_000;

/// The interpreter's only limit (the VM has the instruction budget): a small policy evaluates
/// in microseconds, one that runs for a second is looping or pathological, so it is cut off
/// and the request fails closed instead of holding an evaluation thread.
const EVAL_TIME_LIMIT: Duration = Duration::from_secs(1);
const EVAL_TIME_CHECK_INTERVAL: NonZeroU32 = match NonZeroU32::new(256) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

thread_local! {
    /// This thread's VM, with the program it was loaded with: set up once per thread and
    /// bundle, not per evaluation (a run resets the VM's execution state by itself).
    static THREAD_VM: std::cell::RefCell<Option<(Arc<Program>, RegoVM)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `run` on this thread's VM for `program`, loading the program first when the thread's
/// VM has another (or none).
fn with_thread_vm<T>(
    program: &Arc<Program>,
    budget: usize,
    run: impl FnOnce(&mut RegoVM) -> T,
) -> T {
    THREAD_VM.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !matches!(&*slot, Some((loaded, _)) if Arc::ptr_eq(loaded, program)) {
            *slot = None;
        }
        let (_, vm) = slot.get_or_insert_with(|| {
            let mut vm = RegoVM::new();
            vm.load_program(program.clone());
            (program.clone(), vm)
        });
        // Per call: two gates may share a program with different budgets.
        vm.set_max_instructions(budget);
        let result = run(vm);
        // Do not keep the last input alive until the next evaluation.
        vm.set_input(regorus::Value::Undefined);
        result
    })
}

/// Whether compiling a bundle also runs its decision once on an empty input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trial {
    Run,
    Skip,
}

/// A compiled policy bundle. Cheap to evaluate from many threads without a lock: each thread
/// runs the compiled program on a VM of its own (`with_thread_vm`), and the rare interpreter
/// fallback works on its own clone of the prepared engine.
#[derive(Clone)]
pub struct PolicyGate {
    engine: regorus::Engine,
    /// The decision rule compiled for regorus' register VM (RVM), about 4x faster per call
    /// than the tree-walking interpreter on the default bundle. `None` when the bundle uses
    /// something the RVM compiler does not support: the interpreter then answers alone.
    program: Option<Arc<Program>>,
    version: String,
    /// Where the bundle came from (a folder, or a tenant's upload), for log lines.
    origin: String,
    /// Instructions one evaluation may execute on the VM (see [`PolicyGate::with_budget`]).
    budget: usize,
    /// Whether an `allow` from the VM is checked on the interpreter first (see
    /// [`PolicyGate::confirming_allows`]).
    confirm_allows: bool,
    declares_decision: bool,
    /// Set for a tenant's upload: evaluated in a sandbox child, not here (ADR-0019).
    isolation: Option<sandbox::Isolation>,
}

// The engine's own Debug dumps every parsed module; a log line needs only which bundle it is.
impl std::fmt::Debug for PolicyGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyGate")
            .field("version", &self.version)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
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
    #[error("the bundle holds no .rego files")]
    NoFiles,
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
        // Compiler messages name a file by its label: the full path, for a folder on disk.
        let origin = dir.display().to_string();
        let labelled = files
            .iter()
            .map(|f| (dir.join(&f.relative).display().to_string(), f))
            .collect::<Vec<_>>();
        Self::compile(&labelled, &origin, bundle_version(&files), Trial::Run)
    }

    /// A bundle from its files (an upload): labelled by their relative paths.
    pub fn from_files(files: &[PolicyFile], origin: &str) -> Result<Self, PolicyError> {
        Self::from_labelled_files(files, origin, Trial::Run)
    }

    /// A stored bundle that will be evaluated in sandbox children only: compiled here (for its
    /// version and its compile errors) but its decision is not tried here. The trial ran in a
    /// child when the bundle was uploaded, yet it need not behave the same now (`time.now_ns`,
    /// `rand.intn`): run in this process, a bundle that allocates without bound only after some
    /// date would abort every instance that loads it from then on, at start-up included.
    pub fn from_files_untried(files: &[PolicyFile], origin: &str) -> Result<Self, PolicyError> {
        Self::from_labelled_files(files, origin, Trial::Skip)
    }

    fn from_labelled_files(
        files: &[PolicyFile],
        origin: &str,
        trial: Trial,
    ) -> Result<Self, PolicyError> {
        if files.is_empty() {
            return Err(PolicyError::NoFiles);
        }
        let mut sorted = files.to_vec();
        sorted.sort_by(|a, b| a.relative.cmp(&b.relative));
        let labelled = sorted
            .iter()
            .map(|f| (f.relative.clone(), f))
            .collect::<Vec<_>>();
        Self::compile(&labelled, origin, bundle_version(&sorted), trial)
    }

    /// Whether the bundle defines the decision rule; a bundle without it would hold every
    /// request (a folder only warns, an upload is refused).
    pub fn defines_decision(&self) -> bool {
        self.declares_decision
    }

    fn compile(
        files: &[(String, &PolicyFile)],
        origin: &str,
        version: String,
        trial: Trial,
    ) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            check_interval: EVAL_TIME_CHECK_INTERVAL,
        });
        // regorus writes a policy's `print` output straight to stderr, which is the service's
        // log: a tenant's bundle could forge log lines or copy agents' actions into it.
        // Gathered instead, in each per-call clone, and dropped with it.
        engine.set_gather_prints(true);
        let mut declares_decision = false;
        for (label, file) in files {
            let package = engine
                .add_policy(label.clone(), file.text.clone())
                .map_err(|err| PolicyError::Compile {
                    path: label.clone(),
                    message: err.to_string(),
                })?;
            declares_decision |= package == DECISION_PACKAGE
                && matches!(
                    engine.has_declared_rule_rooted_at(label, DECISION_RULE_NAME),
                    Ok(true)
                );
        }
        // Parsing is per file; some analysis (unsafe variables, clashing definitions across
        // files) only happens when the engine is first prepared. Preparing here reports those
        // at load time and leaves a prepared engine behind, so per-call clones skip that work.
        // A constant query prepares without evaluating any rule.
        engine
            .eval_query("true".to_string(), false)
            .map_err(|err| compile_error(files, origin, &err))?;

        // regorus resolves function names, head variables and recursion only while evaluating,
        // so a typo'd builtin would otherwise surface as "every request fails closed". A rule
        // that errors on an empty input is broken for practically every input, so running it
        // once here turns that into a load error naming the file.
        if declares_decision && trial == Trial::Run {
            let mut trial = engine.clone();
            trial.set_input(regorus::Value::new_object());
            trial
                .eval_rule(DECISION_RULE.to_string())
                .map_err(|err| compile_error(files, origin, &err))?;
        } else if !declares_decision {
            tracing::warn!(
                origin,
                rule = DECISION_RULE,
                "policy bundle does not define the decision rule: every request will require approval"
            );
        }

        let program = if declares_decision {
            compile_for_vm(&mut engine.clone(), origin)
        } else {
            None
        };
        Ok(PolicyGate {
            engine,
            program,
            version,
            origin: origin.to_owned(),
            budget: DEFAULT_BUDGET,
            confirm_allows: true,
            declares_decision,
            isolation: None,
        })
    }

    /// Evaluates in `sandbox`'s child processes from now on, sending them `files` (the ones
    /// this gate was built from).
    pub fn isolated(mut self, sandbox: Arc<sandbox::Sandbox>, files: &[PolicyFile]) -> Self {
        self.isolation = Some(sandbox::Isolation {
            sandbox,
            files: files.into(),
        });
        self
    }

    /// Caps each evaluation at `instructions` VM instructions. Past it the verdict fails
    /// closed, on an idle machine as on a busy one: unlike a time limit, the budget gives the
    /// same verdict for the same input whatever else runs.
    pub fn with_budget(mut self, instructions: usize) -> Self {
        self.budget = instructions;
        self
    }

    /// Whether an `allow` the VM answers is only given once the interpreter, the engine the
    /// bundle's tests run on, agrees (on by default). The VM takes an error inside a rule
    /// body (a builtin that fails, such as `to_number("1,500")`, or definitions that
    /// disagree) for an unmet condition, where the interpreter reports it: a `deny` whose
    /// conversion failed left a default `allow`, or a `not` over a conflicted rule granted,
    /// live, while the tests reported the error. Off, an allowed request costs one VM run
    /// instead of both (about a fifth of the time on the default bundle).
    pub fn confirming_allows(mut self, confirm: bool) -> Self {
        self.confirm_allows = confirm;
        self
    }

    /// `sha256:` + hex digest over each file's relative path and content, in path order.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the bundle came from (a folder, or a tenant's upload), for log lines.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The prepared interpreter, for running the bundle's own tests.
    pub(crate) fn engine(&self) -> &regorus::Engine {
        &self.engine
    }

    /// Evaluates `data.approvals.decision` for `input`. Never fails: an undefined rule, an
    /// evaluation error or a malformed result becomes `require_approval` with a reason.
    pub fn evaluate(&self, input: &serde_json::Value) -> PolicyVerdict {
        self.evaluate_owned(input.clone())
    }

    /// [`PolicyGate::evaluate`] for an input the caller no longer needs (no copy is made).
    pub fn evaluate_owned(&self, input: serde_json::Value) -> PolicyVerdict {
        self.evaluate_as(input, "active")
    }

    /// [`PolicyGate::evaluate_owned`] of a candidate (shadow evaluation): a sandbox failure
    /// is counted as the candidate's. It decides nothing, so it must not read, to on-call, as
    /// submits parked for a reviewer.
    pub fn evaluate_candidate(&self, input: serde_json::Value) -> PolicyVerdict {
        self.evaluate_as(input, "candidate")
    }

    fn evaluate_as(&self, input: serde_json::Value, role: &'static str) -> PolicyVerdict {
        if let Some(isolation) = &self.isolation {
            return isolation
                .sandbox
                .evaluate(self, &isolation.files, &input)
                .unwrap_or_else(|why| {
                    // It may quote a whole compiler report: the reason is copied into the
                    // record, its events and every webhook, so one line of bounded length.
                    let why = one_line(&why);
                    metrics::counter!("approvals_policy_sandbox_failures_total", "role" => role)
                        .increment(1);
                    tracing::warn!(origin = %self.origin, version = %self.version, role, %why,
                        "policy sandbox failed; the evaluation fails closed");
                    let (decision, reasons) = fail_closed(format!(
                        "policy evaluation stopped ({why}): failing closed to require_approval"
                    ));
                    PolicyVerdict {
                        decision,
                        reasons,
                        policy_version: self.version.clone(),
                    }
                });
        }
        // A panic in the engine fails this evaluation closed, not the thread it ran on (a
        // policy thread that died took its share of every later submit with it).
        let raw = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.raw_decision(regorus::Value::from(input))
        }))
        .unwrap_or_else(|_| {
            // What the VM was doing is unknown: the next evaluation loads a fresh one.
            THREAD_VM.with(|cell| {
                if let Ok(mut slot) = cell.try_borrow_mut() {
                    *slot = None;
                }
            });
            Err("the policy engine failed unexpectedly".to_owned())
        });
        let (decision, reasons) = match raw {
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

    /// Whether the decision for an empty input, where it is defined, has the contract's shape
    /// and fits the instruction budget. Checked at upload: a bundle answering
    /// `{"decision": "allow"}` (no `reasons`) compiles and may pass its own tests, then fails
    /// closed to `require_approval` on every submit once active.
    pub fn check_decision_on_empty_input(&self) -> Result<(), String> {
        let problem = match self.raw_decision(regorus::Value::new_object()) {
            Ok(Some(value)) => read(&value).err(),
            Ok(None) => None,
            Err(message) => Some(one_line(&message)),
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(format!(
                "{DECISION_RULE} for an empty input: {problem}; every submit would fail closed \
                 to require_approval"
            )),
        }
    }

    /// Runs the rule on the VM when it compiled, else (or if the VM fails) on a private clone
    /// of the interpreter, which also has the last word on an `allow` the VM answers
    /// ([`PolicyGate::confirming_allows`]). `Ok(None)` means undefined.
    fn raw_decision(&self, input: regorus::Value) -> Result<Option<serde_json::Value>, String> {
        if let Some(program) = &self.program {
            // Undefined and errors are rare and are where the VM is known to differ (it reads a
            // conflict between rule bodies as undefined): the interpreter has the last word.
            // Not on a spent budget: the interpreter's only limit is time, which would make
            // the verdict depend on the load.
            let outcome = with_thread_vm(program, self.budget, |vm| {
                // A regorus value is reference-counted: the copy is cheap.
                vm.set_input(input.clone());
                vm.execute_entry_point_by_name(DECISION_RULE)
            });
            match outcome {
                Ok(value) if value != regorus::Value::Undefined => {
                    let decided = to_json(value)?;
                    if !(allows(&decided) && self.confirm_allows) {
                        return Ok(decided);
                    }
                    // Not a fallback: the interpreter has the last word on what grants.
                    let confirmed = self.interpreter_decision(input);
                    if !confirmed.as_ref().is_ok_and(allows) {
                        // The bundle leans on the VM's reading of an error as "not met":
                        // its owners should know (the answer now is the interpreter's).
                        tracing::debug!(origin = %self.origin, version = %self.version,
                            "the policy VM allowed what the interpreter does not");
                        notes::allow_overruled();
                    }
                    return confirmed;
                }
                Ok(_) => {}
                Err(VmError::InstructionLimitExceeded { limit, .. }) => {
                    return Err(format!(
                        "the evaluation exceeded its budget of {limit} instructions"
                    ))
                }
                Err(error) => tracing::debug!(%error, "policy VM failed; using the interpreter"),
            }
            // Counted, because a bundle that often lands here runs several times slower.
            notes::interpreter_fallback();
        }
        self.interpreter_decision(input)
    }

    /// The tree-walking interpreter: the reference semantics.
    fn interpreter_decision(
        &self,
        input: regorus::Value,
    ) -> Result<Option<serde_json::Value>, String> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let value = engine
            .eval_rule(DECISION_RULE.to_string())
            .map_err(|err| err.to_string())?;
        to_json(value)
    }
}

/// Whether a raw decision grants (`{"decision": "allow", …}`).
fn allows(decision: &Option<serde_json::Value>) -> bool {
    decision
        .as_ref()
        .is_some_and(|d| d.get("decision").and_then(|v| v.as_str()) == Some("allow"))
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
fn compile_for_vm(engine: &mut regorus::Engine, origin: &str) -> Option<Arc<Program>> {
    let compiled = engine
        .compile_with_entrypoint(&DECISION_RULE.into())
        .and_then(|policy| {
            Compiler::compile_from_policy(&policy, &[DECISION_RULE]).map_err(Into::into)
        });
    match compiled {
        Ok(program) => Some(program),
        Err(error) => {
            tracing::info!(origin, %error, "policy runs on the interpreter (the VM compiler refused it)");
            None
        }
    }
}

/// regorus names the offending file in its message; point at that file when we can, at the
/// folder when the problem spans files.
fn compile_error(
    files: &[(String, &PolicyFile)],
    origin: &str,
    err: &dyn std::fmt::Display,
) -> PolicyError {
    let message = err.to_string();
    // Where regorus points (`--> file:line:col`), else the longest name the message holds:
    // `a.rego` is inside `beta.rego`, and the first name found was blamed.
    let pointed = files
        .iter()
        .find(|(label, _)| message.contains(&format!("--> {label}:")));
    let named = || {
        files
            .iter()
            .filter(|(label, _)| message.contains(label.as_str()))
            .max_by_key(|(label, _)| label.len())
    };
    let path = pointed
        .or_else(named)
        .map_or_else(|| origin.to_owned(), |(label, _)| label.clone());
    PolicyError::Compile { path, message }
}

#[cfg(test)]
mod tests;
