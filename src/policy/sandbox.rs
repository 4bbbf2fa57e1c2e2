//! Tenants' uploaded bundles evaluated in a child process (`approvals policy-sandbox`) under an
//! address-space limit, so that a policy whose builtins allocate without bound (regorus checks
//! no limit inside a builtin, and Rust aborts on a failed allocation) takes down its child, not
//! the service every tenant shares (ADR-0019).
//!
//! Each evaluation thread keeps one child and talks to it over its pipes, one JSON line each
//! way: the bundle's files the first time the child meets a version, then only the input. A
//! child that dies, answers nonsense or overruns its deadline is killed; that evaluation fails
//! closed, and the thread's next evaluation starts a new child.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::testing::{validate_bundle, TestReport};
use super::{PolicyFile, PolicyGate, PolicyVerdict, EVAL_TIME_LIMIT};

/// Compiled bundles a child keeps; past it, it forgets the one used longest ago (the parent
/// sends the files again when it meets a version the child dropped). It forgot them all at
/// once: with more versions in use than this, most evaluations recompiled their bundle.
const VERSIONS_KEPT: usize = 64;

/// The child allocator's arena reservation, in KiB: a quarter of the smallest memory limit the
/// settings accept (64 MiB), so the limit binds within a few MiB.
const ARENA_RESERVE_KIB: u64 = 16 << 10;

/// A child's compiled bundles by version, each with when it was last used.
#[derive(Default)]
struct Gates {
    by_version: HashMap<String, (PolicyGate, u64)>,
    uses: u64,
}

impl Gates {
    fn insert(&mut self, version: String, gate: PolicyGate) {
        if self.by_version.len() >= VERSIONS_KEPT && !self.by_version.contains_key(&version) {
            let oldest = self
                .by_version
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(version, _)| version.clone());
            if let Some(oldest) = oldest {
                self.by_version.remove(&oldest);
            }
        }
        self.uses += 1;
        self.by_version.insert(version, (gate, self.uses));
    }

    fn get_mut(&mut self, version: &str) -> Option<&mut PolicyGate> {
        self.uses += 1;
        let uses = self.uses;
        self.by_version.get_mut(version).map(|(gate, used)| {
            *used = uses;
            gate
        })
    }
}

/// The longest reply line read from a child: a verdict is a few kilobytes, a validation's
/// report at most [`testing::MAX_REFUSALS`] clipped reasons and its tests' clipped errors.
const MAX_REPLY_BYTES: u64 = 16 << 20;

/// Where children come from and what they may use.
#[derive(Debug)]
pub struct Sandbox {
    /// The service's own binary.
    pub binary: PathBuf,
    /// The child's address-space limit (`RLIMIT_AS`), in bytes.
    pub memory_limit: u64,
    /// Bundles (by origin, i.e. tenant, and version: tenants may upload the same bundle)
    /// whose evaluations stopped their child lately (see [`STRIKES`]).
    stopped_by: std::sync::Mutex<HashMap<(String, String), Strikes>>,
}

/// Evaluations of one version in a row that stopped their child, before the version is held
/// back: each one cost a fork and exec of the service, a compile, and the recompiles of every
/// other tenant's bundle on that thread's new child, as fast as one tenant could submit.
const STRIKES: u32 = 3;
/// How long a bundle held back fails closed without a child; then one evaluation tries again
/// (and the others wait as long again, unless it succeeds).
const HELD_BACK_FOR: Duration = Duration::from_secs(30);

/// Why an evaluation in a child gave no verdict.
enum Failure {
    /// The child died or overran its deadline while it evaluated: the bundle's doing, as far
    /// as anyone can tell (it counts towards holding the bundle back).
    ByTheBundle(String),
    /// No child could be started, or it spoke another protocol: this instance's fault.
    Instance(String),
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    last: Instant,
}

/// One line to the child: sent from borrowed parts (no copy of the input or the bundle),
/// read back owned.
#[derive(Serialize, Deserialize)]
enum Request<'a> {
    Evaluate {
        version: Cow<'a, str>,
        budget: usize,
        /// [`PolicyGate::confirming_allows`]; absent (a parent from before it), off, as then.
        #[serde(default)]
        confirm_allows: bool,
        /// The bundle, the first time this child meets `version`.
        files: Option<Cow<'a, [PolicyFile]>>,
        input: Cow<'a, serde_json::Value>,
    },
    /// An upload's validation: compile, trial, its tests.
    Validate {
        files: Cow<'a, [PolicyFile]>,
        budget: usize,
    },
}

/// One line back.
#[derive(Serialize, Deserialize)]
enum Reply {
    Verdict(Verdict),
    /// The child has not compiled this version (it forgot it): send the files.
    Unknown,
    /// The files do not compile in the child (they did in the service: a version skew).
    Unloadable(String),
    /// The version and test report, or every reason to refuse the bundle.
    Validated(Result<(String, TestReport), Vec<String>>),
}

/// A verdict, with what the evaluation noted (counted and logged by the service, see
/// `notes`). In the verdict's own object, so that a child and a parent one version apart (a
/// `policy.sandbox.binary` replaced before the restart) still read each other's answers: a
/// reply they could not read failed every tenant's submit closed, blamed on its bundle.
#[derive(Serialize, Deserialize)]
struct Verdict {
    #[serde(flatten)]
    verdict: PolicyVerdict,
    #[serde(default)]
    notes: super::notes::Notes,
}

/// A running child, as its evaluation thread holds it.
struct Running {
    process: Child,
    to: BufWriter<ChildStdin>,
    from: BufReader<ChildStdout>,
    /// Versions sent to it.
    compiled: HashSet<String>,
}

impl Drop for Running {
    /// Killed and reaped: on a failure (what it was doing is unknown) and when its thread ends.
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

thread_local! {
    /// This evaluation thread's child, started on its first sandboxed evaluation.
    static CHILD: std::cell::RefCell<Option<Running>> = const { std::cell::RefCell::new(None) };
}

impl Sandbox {
    pub fn new(binary: PathBuf, memory_limit: u64) -> Self {
        Self {
            binary,
            memory_limit,
            stopped_by: std::sync::Mutex::default(),
        }
    }

    /// `gate`'s verdict on `input`, from this thread's child. `Err` says why there is none (the
    /// child died, overran its deadline, or could not be started; or the version stopped its
    /// child [`STRIKES`] times in a row lately); the caller fails closed.
    pub(super) fn evaluate(
        &self,
        gate: &PolicyGate,
        files: &[PolicyFile],
        input: &serde_json::Value,
    ) -> Result<PolicyVerdict, String> {
        let key = (gate.origin().to_owned(), gate.version().to_owned());
        if let Some(strikes) = self.held_back(&key) {
            return Err(format!(
                "this bundle stopped its sandbox {} times in a row; it is not run for {}s \
                 after the last",
                strikes.count,
                HELD_BACK_FOR.as_secs()
            ));
        }
        let answer = self.evaluate_in_child(gate, files, input);
        let mut stopped_by = self
            .stopped_by
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match answer {
            Ok(verdict) => {
                stopped_by.remove(&key);
                Ok(verdict)
            }
            Err(Failure::Instance(why)) => Err(why),
            Err(Failure::ByTheBundle(why)) => {
                let strikes = stopped_by.entry(key).or_insert(Strikes {
                    count: 0,
                    last: Instant::now(),
                });
                strikes.count += 1;
                strikes.last = Instant::now();
                // Bounded: bundles that stopped once and were never evaluated again go.
                if stopped_by.len() > VERSIONS_KEPT {
                    stopped_by.retain(|_, s| s.last.elapsed() < HELD_BACK_FOR);
                }
                Err(why)
            }
        }
    }

    /// The strikes of `key` if it is held back now. Once the hold is over, one evaluation goes
    /// through, and the hold starts again for the others meanwhile.
    fn held_back(&self, key: &(String, String)) -> Option<Strikes> {
        let mut stopped_by = self
            .stopped_by
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let strikes = stopped_by.get_mut(key).filter(|s| s.count >= STRIKES)?;
        if strikes.last.elapsed() < HELD_BACK_FOR {
            return Some(*strikes);
        }
        strikes.last = Instant::now();
        None
    }

    fn evaluate_in_child(
        &self,
        gate: &PolicyGate,
        files: &[PolicyFile],
        input: &serde_json::Value,
    ) -> Result<PolicyVerdict, Failure> {
        CHILD.with(|cell| {
            let mut slot = cell.borrow_mut();
            // A child that died while idle (the OOM killer, an operator's kill) is replaced
            // before it is asked: the evaluation that met its closed pipe failed closed, for a
            // tenant whose bundle had nothing to do with it.
            if let Some(child) = slot.as_mut() {
                if !matches!(child.process.try_wait(), Ok(None)) {
                    drop(slot.take());
                }
            }
            if slot.is_none() {
                *slot = Some(self.start().map_err(Failure::Instance)?);
            }
            let Some(child) = slot.as_mut() else {
                return Err(Failure::Instance("no policy sandbox".into()));
            };
            let answer = self.ask(child, gate, files, input);
            if answer.is_err() {
                // What the child was doing is unknown: it goes, and the next call starts one.
                drop(slot.take());
            }
            answer
        })
    }

    fn start(&self) -> Result<Running, String> {
        let mut command = Command::new(&self.binary);
        command
            .arg("policy-sandbox")
            .arg("--memory-limit")
            .arg(self.memory_limit.to_string())
            // mimalloc reserves address space an arena at a time, 1 GiB by default, and the
            // child's first arena is reserved before it limits itself: a bundle then had that
            // gigabyte whatever the limit (under 512 MiB, an evaluation used 720 MB). In KiB.
            .env("MIMALLOC_ARENA_RESERVE", ARENA_RESERVE_KIB.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its last words (an allocation that failed) belong in the service's log.
            .stderr(Stdio::inherit());
        crate::children::die_with_this_process(&mut command);
        // A group of its own: a signal to the service's group (ctrl-c in a terminal, systemd's
        // KillMode) stopped the children at once, and through the shutdown delay every
        // tenant-policy submit failed closed. They end with the service (above) or with stdin.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut process = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let (Some(to), Some(from)) = (process.stdin.take(), process.stdout.take()) else {
            let _ = process.kill();
            let _ = process.wait();
            return Err("the policy sandbox has no pipes".into());
        };
        metrics::counter!("approvals_policy_sandboxes_started_total").increment(1);
        Ok(Running {
            process,
            to: BufWriter::new(to),
            from: BufReader::new(from),
            compiled: HashSet::new(),
        })
    }

    fn ask(
        &self,
        child: &mut Running,
        gate: &PolicyGate,
        files: &[PolicyFile],
        input: &serde_json::Value,
    ) -> Result<PolicyVerdict, Failure> {
        let version = gate.version();
        let mut with_files = !child.compiled.contains(version);
        // Twice at most: a child that forgot the version gets the files again.
        for _ in 0..2 {
            let request = Request::Evaluate {
                version: Cow::Borrowed(version),
                budget: gate.budget,
                confirm_allows: gate.confirm_allows,
                files: with_files.then_some(Cow::Borrowed(files)),
                input: Cow::Borrowed(input),
            };
            let deadline = if with_files {
                LOADING_DEADLINE
            } else {
                EVALUATION_DEADLINE
            };
            match exchange(child, &request, deadline).map_err(Failure::ByTheBundle)? {
                Reply::Verdict(Verdict { verdict, notes }) => {
                    child.compiled.insert(version.to_owned());
                    super::notes::record(
                        notes,
                        gate.origin(),
                        version,
                        verdict.reasons.first().map(String::as_str),
                    );
                    return Ok(verdict);
                }
                Reply::Unknown if !with_files => {
                    child.compiled.remove(version);
                    with_files = true;
                }
                Reply::Unloadable(message) => {
                    return Err(Failure::Instance(format!(
                        "the bundle does not load in its sandbox: {message}"
                    )))
                }
                _ => {
                    return Err(Failure::Instance(
                        "the policy sandbox answered out of turn".into(),
                    ))
                }
            }
        }
        Err(Failure::Instance(
            "the policy sandbox lost the bundle".into(),
        ))
    }

    /// Starts a child and has it validate a one-rule bundle: `Err` says why a child cannot
    /// work here.
    pub fn probe(&self) -> Result<(), String> {
        let files = [PolicyFile {
            relative: "probe.rego".into(),
            text: "package approvals\ndecision := {\"decision\": \"allow\", \"reasons\": []}\n"
                .into(),
        }];
        match self
            .validate(&files, 100_000)
            .map_err(|stopped| stopped.to_string())?
        {
            Ok(_) => Ok(()),
            Err(reasons) => Err(format!(
                "it refused a bundle that is fine: {}",
                reasons.join("; ")
            )),
        }
    }

    /// An upload's validation (compile, trial evaluation, the bundle's tests) in a child of
    /// its own, ended afterwards: `Ok` holds what the validation found, `Err` why there is no
    /// answer (the child died: out of memory, or overran the tests' time).
    pub fn validate(
        &self,
        files: &[PolicyFile],
        budget: usize,
    ) -> Result<Result<(String, TestReport), Vec<String>>, ValidationStopped> {
        let mut child = self.start().map_err(ValidationStopped::NoSandbox)?;
        let request = Request::Validate {
            files: Cow::Borrowed(files),
            budget,
        };
        let reply = exchange(&mut child, &request, VALIDATION_DEADLINE);
        drop(child);
        match reply.map_err(ValidationStopped::ByTheBundle)? {
            Reply::Validated(validated) => Ok(validated),
            // A child that speaks another protocol (its binary replaced by another version):
            // nothing the bundle did.
            _ => Err(ValidationStopped::NoSandbox(
                "the policy sandbox answered out of turn".into(),
            )),
        }
    }
}

/// Why a validation in a child gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationStopped {
    /// No child could be started (the binary gone in an upgrade, a process limit), or it
    /// answered in another protocol (the binary replaced by another version): a fault of this
    /// instance, not of the bundle.
    #[error("{0}")]
    NoSandbox(String),
    /// The child died or overran its deadline while it worked on the bundle (memory, a stuck
    /// builtin): the bundle's doing, as far as anyone can tell.
    #[error("{0}")]
    ByTheBundle(String),
}

/// How long a child may take to answer an evaluation: the evaluation's own time limit stops a
/// long one in the child; this stops a child that is stuck (inside one huge builtin call, or
/// swapping), with a margin for compiling the bundle first.
const EVALUATION_DEADLINE: Duration = Duration::from_secs(EVAL_TIME_LIMIT.as_secs() * 2 + 2);
/// And one that carries the bundle: a new child's first (its start, an exec of the service's
/// binary, comes first) or a version it has not compiled. On a loaded machine those took
/// seconds, and the evaluation after each child restart failed closed.
const LOADING_DEADLINE: Duration = Duration::from_secs(EVALUATION_DEADLINE.as_secs() + 4);
/// And a validation: the tests' own time budget, plus compiling and the trial.
const VALIDATION_DEADLINE: Duration =
    Duration::from_secs(super::testing::TESTS_TIME_BUDGET.as_secs() + 10);

/// Sends one request and reads its reply within `deadline`.
fn exchange(child: &mut Running, request: &Request, deadline: Duration) -> Result<Reply, String> {
    let gone = |what: &str| format!("the policy sandbox {what}");
    serde_json::to_writer(&mut child.to, request).map_err(|_| gone("stopped reading"))?;
    child
        .to
        .write_all(b"\n")
        .and_then(|()| child.to.flush())
        .map_err(|_| gone("stopped reading (it died: out of memory or stack?)"))?;
    if child.from.buffer().is_empty() {
        let until = Instant::now() + deadline;
        loop {
            let mut fds = [nix::poll::PollFd::new(
                child.from.get_ref().as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let left = until.saturating_duration_since(Instant::now());
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match nix::poll::poll(&mut fds, millis) {
                // poll waits at most u16::MAX ms at a time.
                Ok(0) if Instant::now() < until => continue,
                Ok(0) => {
                    return Err(gone(&format!(
                        "did not answer within {}",
                        humantime::format_duration(deadline)
                    )))
                }
                Ok(_) => break,
                // A signal for the process (SIGTERM, say) can land on this thread; the child
                // is still working, so wait out what is left of the deadline.
                Err(nix::errno::Errno::EINTR) => continue,
                Err(error) => return Err(format!("the policy sandbox cannot be read: {error}")),
            }
        }
    }
    let mut line = String::new();
    // Bounded: the reply lands in the service's memory, which has no limit of its own.
    match std::io::Read::take(&mut child.from, MAX_REPLY_BYTES).read_line(&mut line) {
        Ok(0) => Err(gone("died (out of memory or stack?)")),
        Ok(_) if !line.ends_with('\n') => Err(gone("answered more than it may")),
        Ok(_) => serde_json::from_str(&line).map_err(|_| gone("answered nonsense")),
        Err(error) => Err(format!("the policy sandbox cannot be read: {error}")),
    }
}

/// `approvals policy-sandbox`: the child. Limits its own address space to `memory_limit`
/// bytes, then answers requests from standard input until it closes. Never called by people.
pub fn serve(memory_limit: u64) -> ExitCode {
    // On a stack of a known size, not the main thread's (whatever `ulimit -s` says, unlimited
    // included): the service compiles what this accepts on a stack four times larger. Started
    // before the address-space limit: the allocator has reserved its arena by then, and a
    // thread started past the limit could not map its stack (the child exited at once).
    super::stack::on_sandbox_stack(|| match limit(memory_limit) {
        Ok(()) => answer_requests(),
        Err(code) => code,
    })
    .unwrap_or(ExitCode::FAILURE)
}

/// Limits the child's address space (and core files, and the signals it heeds); the exit code
/// when it cannot.
fn limit(memory_limit: u64) -> Result<(), ExitCode> {
    use nix::sys::resource::{setrlimit, Resource};
    if let Err(error) = setrlimit(Resource::RLIMIT_AS, memory_limit, memory_limit) {
        eprintln!("approvals policy-sandbox: cannot limit its memory: {error}");
        return Err(ExitCode::FAILURE);
    }
    // Its end by abort is expected: no core file of up to the memory limit, each time.
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    // Signals meant for the service are not the child's: systemd's KillMode=control-group
    // sends SIGTERM to every process of the unit, and the children died at the start of the
    // shutdown delay (every tenant-policy submit then failed closed). It ends when the service
    // does (PDEATHSIG) or closes its stdin.
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn) };
    }
    Ok(())
}

/// The child's loop: one request per line of standard input, one reply per line out.
fn answer_requests() -> ExitCode {
    super::notes::gather();
    let mut gates = Gates::default();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Ok(request) = serde_json::from_str::<Request>(&line) else {
            eprintln!("approvals policy-sandbox: unreadable request");
            return ExitCode::FAILURE;
        };
        let reply = answer(&mut gates, request);
        let written = serde_json::to_writer(&mut out, &reply)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if written.is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn answer(gates: &mut Gates, request: Request) -> Reply {
    let (version, budget, confirm_allows, files, input) = match request {
        Request::Evaluate {
            version,
            budget,
            confirm_allows,
            files,
            input,
        } => (version, budget, confirm_allows, files, input),
        Request::Validate { files, budget } => {
            return Reply::Validated(validate_bundle(&files, "upload (sandbox)", budget))
        }
    };
    if let Some(files) = files {
        // Untried: the load-time trial ran when the bundle was uploaded. Run again here it
        // cost up to a second of the evaluation's deadline at every compile, and a bundle
        // whose decision on an empty input fails only now (`time.now_ns`) made every submit
        // of its tenant fail closed, though the inputs it is asked about evaluate fine.
        match PolicyGate::from_files_untried(&files, "tenant bundle (sandbox)") {
            Ok(gate) => gates.insert(version.to_string(), gate),
            Err(error) => return Reply::Unloadable(error.to_string()),
        }
    }
    match gates.get_mut(version.as_ref()) {
        Some(gate) => {
            gate.budget = budget;
            gate.confirm_allows = confirm_allows;
            let _earlier = super::notes::take();
            let verdict = gate.evaluate_owned(input.into_owned());
            Reply::Verdict(Verdict {
                verdict,
                notes: super::notes::take(),
            })
        }
        None => Reply::Unknown,
    }
}

/// What a gate evaluated in a sandbox carries: the files to send and where the sandbox is.
#[derive(Clone)]
pub(crate) struct Isolation {
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) files: Arc<[PolicyFile]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child and a parent one version apart read each other's verdicts: the notes added to a
    /// verdict are a field of its object, absent from an older child's.
    #[test]
    fn verdicts_read_across_one_version() {
        let older = r#"{"Verdict":{"decision":"allow","reasons":["fine"],"policy_version":"v1"}}"#;
        let Ok(Reply::Verdict(read)) = serde_json::from_str::<Reply>(older) else {
            panic!("an older child's verdict is not read");
        };
        assert_eq!(read.verdict.reasons, ["fine"]);
        assert_eq!(read.notes, super::super::notes::Notes::default());
        let newer = serde_json::to_value(Reply::Verdict(Verdict {
            verdict: read.verdict.clone(),
            notes: super::super::notes::Notes {
                allows_overruled: 1,
                ..Default::default()
            },
        }))
        .expect("serialises");
        let as_older: PolicyVerdict =
            serde_json::from_value(newer["Verdict"].clone()).expect("an older parent reads it");
        assert_eq!(as_older, read.verdict);
    }

    fn gate(n: usize) -> PolicyGate {
        let file = PolicyFile {
            relative: "p.rego".into(),
            text: format!("package approvals\nimport rego.v1\nn := {n}\n"),
        };
        PolicyGate::from_files_untried(&[file], "test").expect("compiles")
    }

    /// A child full of versions forgets the one used longest ago, not all of them: with more
    /// versions in use than it keeps, most evaluations recompiled their bundle.
    #[test]
    fn a_full_child_forgets_the_version_used_longest_ago() {
        let mut gates = Gates::default();
        for n in 0..VERSIONS_KEPT {
            gates.insert(format!("v{n}"), gate(n));
        }
        assert!(gates.get_mut("v0").is_some());
        gates.insert("new".into(), gate(VERSIONS_KEPT));
        assert_eq!(gates.by_version.len(), VERSIONS_KEPT);
        assert!(gates.get_mut("v0").is_some(), "used lately: kept");
        assert!(gates.get_mut("v1").is_none(), "used longest ago: forgotten");
        assert!(gates.get_mut("v2").is_some() && gates.get_mut("new").is_some());
    }
}
