//! `approvals policy`: work on a policy bundle offline, with the engine the service runs.
//!
//! - `test DIR`: runs the bundle's `test_*` rules as `opa test` does, and the checks the
//!   service makes at upload. Exit 0: all pass; 1: some fail, or the service would refuse the
//!   bundle; 2: the bundle does not load.
//! - `eval DIR --input FILE`: prints the verdict the service would give for one policy input.
//!   Exit 0, or 2 when the bundle or the input is unusable.
//!
//! Neither connects to anything, so both run in CI and on a laptop in seconds.
//!
//! - `push --tenant T DIR`: uploads the bundle through the policy admin API (the service
//!   validates it again and refuses it with every message), and with `--activate` or
//!   `--candidate` puts it in effect or on trial. Exit 0 done, 1 refused, 2 unusable input
//!   or a service that keeps no bundles, 3 try again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::policy::testing::{
    run_tests_reporting, upload_checks, TestReport, TestResult, TESTS_TIME_BUDGET,
};
use crate::policy::PolicyGate;

use super::EXIT_CONFIG;

/// The keys of the policy input the service builds for a request; anything else in an input
/// file is something the policy would never see in production.
const INPUT_KEYS: [&str; 5] = ["tenant", "agent_id", "submitted_by", "action", "context"];

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run the bundle's `test_*` rules (as `opa test` does) in the engine the service uses.
    #[command(after_help = "Exit status:\n  0 every test passed\n  \
        1 a test failed, or the service would refuse the bundle (no decision rule, or a \
        decision of the wrong shape)\n  \
        2 the bundle does not load")]
    Test(TestArgs),
    /// Print the verdict the service would give for one policy input.
    #[command(after_help = "Exit status:\n  0 the verdict is printed\n  \
        2 the bundle does not load, or the input is unusable")]
    Eval(EvalArgs),
    /// Upload the bundle to a running service (an admin token of the tenant, or a platform
    /// admin's), optionally activating it or trialling it as the candidate.
    #[command(
        after_help = "Exit status:\n  0 stored (and activated or trialled, if asked)\n  \
        1 the service refused it (its reasons are printed): fix the bundle\n  \
        2 the folder holds no bundle, the service keeps no tenant bundles (501), or the token, \
        tenant or URL is wrong (401, 403, 404)\n  \
        3 the service did not get to decide (unreachable, busy, another upload validating): \
        push again"
    )]
    Push(PushArgs),
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The bundle folder (every `.rego` file under it; its tests run on the service too).
    dir: PathBuf,
    /// The tenant whose bundle it is (checked here: a malformed one is a setting at fault,
    /// exit 2, not a bundle to fix).
    #[arg(long, value_parser = tenant_id)]
    tenant: approvals_core::TenantId,
    /// The service's base URL.
    #[arg(long, env = "APPROVALS_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin bearer token (prefer the variable: a flag shows in `ps`).
    #[arg(long, env = "APPROVALS_TOKEN", hide_env_values = true)]
    token: String,
    /// Make it the active version once uploaded.
    #[arg(long, conflicts_with = "candidate")]
    activate: bool,
    /// Trial it beside the active version (shadow evaluation) once uploaded.
    #[arg(long)]
    candidate: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The bundle folder (every `.rego` file under it, `_test.rego` files included).
    dir: PathBuf,
    /// Print the report as JSON instead of one line per test.
    #[arg(long)]
    json: bool,
    /// The service's `policy.max_bundle_bytes`, where its operator changed it (default: the
    /// service's default).
    #[arg(long, value_name = "BYTES")]
    max_bundle_bytes: Option<usize>,
    /// The service's `limits.policy_instructions`, where its operator changed it (default:
    /// the service's default).
    #[arg(long, value_name = "N")]
    policy_instructions: Option<usize>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The bundle folder.
    dir: PathBuf,
    /// A JSON file holding the policy input `{tenant, agent_id, submitted_by, action,
    /// context}`; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// The service's `limits.policy_instructions`, where its operator changed it (default:
    /// the service's default).
    #[arg(long, value_name = "N")]
    policy_instructions: Option<usize>,
    /// The service runs with `policy.confirm_allows = false` (an `allow` of the VM is not
    /// checked on the interpreter).
    #[arg(long)]
    no_confirm_allows: bool,
}

pub async fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Test(args) => on_sandbox_stack(|| test(&args)),
        PolicyCommand::Eval(args) => on_sandbox_stack(|| eval(&args)),
        PolicyCommand::Push(args) => push(&args).await,
    }
}

async fn push(args: &PushArgs) -> ExitCode {
    let files = match crate::policy::collect_rego_files(&args.dir) {
        Ok(files) if !files.is_empty() => files,
        Ok(_) => {
            eprintln!("approvals: {} holds no .rego files", args.dir.display());
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(error) => {
            eprintln!("approvals: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let body = upload_body(&files);
    let base = format!(
        "{}/v1/tenants/{}/policy",
        args.url.trim_end_matches('/'),
        args.tenant
    );
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("approvals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let uploaded = match send(
        client.post(format!("{base}/bundles")).json(&body),
        &args.token,
    )
    .await
    {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let version = uploaded["bundle"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let stored = if uploaded["created"] == true {
        "stored"
    } else {
        "already stored"
    };
    println!(
        "{version}: {stored} ({} tests passed on the service)",
        uploaded["tests"]["passed"]
    );
    // Older versions the upload deleted to keep the tenant within its stored count.
    for pruned in uploaded["pruned"].as_array().into_iter().flatten() {
        println!(
            "{}: deleted (policy.max_stored_bundles)",
            pruned.as_str().unwrap_or("?")
        );
    }
    let (path, what) = match (args.activate, args.candidate) {
        (true, _) => ("active", "active"),
        (_, true) => ("candidate", "the candidate"),
        _ => return ExitCode::SUCCESS,
    };
    let request = client
        .put(format!("{base}/{path}"))
        .json(&serde_json::json!({"version": version}));
    match send(request, &args.token).await {
        Ok(_) => {
            println!("{version}: now {what} for tenant {}", args.tenant);
            ExitCode::SUCCESS
        }
        Err(code) => {
            eprintln!("approvals: {version} is stored, but not {what}: push again to finish");
            code
        }
    }
}

/// `policy push`'s exit code when the service did not decide (unreachable, `408`, `429`, `5xx`):
/// a pipeline retries this one, and fixes the bundle on 1.
const EXIT_TRY_AGAIN: u8 = 3;

/// Sends `request`; a problem answer is printed (its `errors` one per line) as exit 1 when the
/// service refused the bundle, [`EXIT_CONFIG`] when the settings are at fault (token, tenant,
/// URL), [`EXIT_TRY_AGAIN`] when it did not get to decide.
async fn send(
    request: reqwest::RequestBuilder,
    token: &str,
) -> Result<serde_json::Value, ExitCode> {
    let response = request.bearer_auth(token).send().await.map_err(|error| {
        eprintln!("approvals: cannot reach the service (try again): {error}");
        ExitCode::from(EXIT_TRY_AGAIN)
    })?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        return Ok(body);
    }
    if status == reqwest::StatusCode::NOT_IMPLEMENTED {
        // Permanent (Temporal answering with no tenant store): retrying would loop forever.
        eprintln!(
            "approvals: this service keeps no tenant bundles ({status}, {}): {}",
            body["code"].as_str().unwrap_or("?"),
            body["detail"].as_str().unwrap_or("")
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    // The token, the tenant or the URL is wrong, not the bundle: a pipeline that fixes the
    // bundle on 1 would chase a fault that is in its own settings.
    let wrong_settings = matches!(status.as_u16(), 401 | 403)
        || (status == reqwest::StatusCode::NOT_FOUND
            && body["code"].as_str() != Some("policy_version_not_found"));
    if wrong_settings {
        eprintln!(
            "approvals: check the token, --tenant and --url ({status}, {}): {}",
            body["code"].as_str().unwrap_or("?"),
            body["detail"].as_str().unwrap_or("")
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    let try_again = status.is_server_error()
        || matches!(status.as_u16(), 408 | 429)
        // A validation already running for this tenant (its own turn comes), other admins'
        // changes that kept winning the race, or the version just uploaded pruned by another
        // upload before this activation: pushing again stores and activates it.
        || matches!(
            body["code"].as_str(),
            Some("upload_in_progress" | "policy_changed" | "policy_version_not_found")
        );
    eprintln!(
        "approvals: {} ({status}, {}): {}",
        if try_again {
            "not done, try again"
        } else {
            "refused"
        },
        body["code"].as_str().unwrap_or("?"),
        body["detail"].as_str().unwrap_or("")
    );
    for error in body["errors"].as_array().into_iter().flatten() {
        eprintln!("  {}", error.as_str().unwrap_or_default());
    }
    Err(if try_again {
        ExitCode::from(EXIT_TRY_AGAIN)
    } else {
        ExitCode::FAILURE
    })
}

/// On the stack the service's sandbox validates and evaluates on: a bundle it accepts runs here.
fn on_sandbox_stack(work: impl FnOnce() -> ExitCode + Send) -> ExitCode {
    crate::policy::stack::on_sandbox_stack(work).unwrap_or_else(|error| {
        eprintln!("approvals: {error}");
        ExitCode::FAILURE
    })
}

fn tenant_id(raw: &str) -> Result<approvals_core::TenantId, String> {
    approvals_core::TenantId::parse(raw).map_err(|e| e.to_string())
}

fn test(args: &TestArgs) -> ExitCode {
    let Some(gate) = load(&args.dir) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    // The service's own limits, as this deployment sets them: checked against the defaults
    // only, a bundle a raised limit lets through kept a tenant's CI red, and one a lowered
    // limit refuses passed here.
    let gate = match args.policy_instructions {
        Some(budget) => gate.with_budget(budget),
        None => gate,
    };
    // Each test's line as soon as it has run (a test may take seconds).
    let report = run_tests_reporting(&gate, TESTS_TIME_BUDGET, &mut |result| {
        if !args.json {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", line(result));
            let _ = out.flush();
        }
    });
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("approvals: cannot write the report as JSON: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", summary(&report));
    }
    if report.results.is_empty() {
        eprintln!(
            "approvals: note: {} holds no test_* rules",
            args.dir.display()
        );
    }
    // What the service checks at upload besides the tests: a pipeline that passes here must
    // not be refused by `policy push`.
    let mut refusals = upload_checks(&gate);
    let max_bundle_bytes = args
        .max_bundle_bytes
        .unwrap_or_else(|| crate::config::PolicySettings::default().max_bundle_bytes);
    refusals.extend(upload_shape(&args.dir, max_bundle_bytes));
    for refusal in &refusals {
        eprintln!("approvals: the service would refuse this bundle: {refusal}");
    }
    if report.all_passed() && refusals.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the service refuses in an upload's shape: its paths and number of files, and a body
/// past `limit` (its `policy.max_bundle_bytes`).
fn upload_shape(dir: &Path, limit: usize) -> Vec<String> {
    let Ok(files) = crate::policy::collect_rego_files(dir) else {
        return Vec::new();
    };
    let mut refusals: Vec<String> =
        crate::policy::check_upload_paths(files.iter().map(|f| f.relative.as_str()))
            .err()
            .into_iter()
            .collect();
    let body = upload_body(&files);
    let size = body.to_string().len();
    if size > limit {
        refusals.push(format!(
            "the upload is {size} bytes, past policy.max_bundle_bytes ({limit}): the service \
             answers 413 (--max-bundle-bytes names a limit its operator changed)"
        ));
    }
    refusals
}

/// The body `policy push` sends.
fn upload_body(files: &[crate::policy::PolicyFile]) -> serde_json::Value {
    serde_json::json!({"files": files.iter()
        .map(|f| serde_json::json!({"path": f.relative, "text": f.text}))
        .collect::<Vec<_>>()})
}

/// The last line, after each test's own.
fn summary(report: &TestReport) -> String {
    format!(
        "{} passed, {} failed, bundle {}\n",
        report.passed(),
        report.failed(),
        report.policy_version
    )
}

/// A test's line. A multi-line error (regorus quotes the source) is indented under its test
/// so the PASS/FAIL column stays readable.
fn line(result: &TestResult) -> String {
    let took = millis(result.duration);
    match &result.error {
        None => format!("PASS {} ({took})", result.name),
        Some(error) => {
            let mut lines = error.lines();
            let mut text = format!(
                "FAIL {} ({took}): {}",
                result.name,
                lines.next().unwrap_or_default()
            );
            for more in lines {
                text.push_str("\n    ");
                text.push_str(more);
            }
            text
        }
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn eval(args: &EvalArgs) -> ExitCode {
    let input = match read_input(&args.input) {
        Ok(input) => input,
        Err(message) => {
            eprintln!("approvals: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(gate) = load(&args.dir) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    if !gate.defines_decision() {
        eprintln!(
            "approvals: note: {} does not define data.approvals.decision: the service would \
             refuse it at upload, and hold every request for approval",
            args.dir.display()
        );
    }
    // The service's own limits, as this deployment sets them: with the defaults only, the
    // verdict printed was not the one a service with other limits gives.
    let gate = match args.policy_instructions {
        Some(budget) => gate.with_budget(budget),
        None => gate,
    }
    .confirming_allows(!args.no_confirm_allows);
    let verdict = gate.evaluate_owned(input);
    match serde_json::to_string_pretty(&verdict) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("approvals: cannot write the verdict as JSON: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The input object, or a message naming the file and what is wrong with it.
fn read_input(path: &Path) -> Result<serde_json::Value, String> {
    let (name, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|error| format!("cannot read the input from standard input: {error}"))?;
        ("standard input".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read input file {}: {error}", path.display()))?;
        (path.display().to_string(), text)
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| format!("the input in {name} is not valid JSON: {error}"))?;
    let Some(object) = value.as_object() else {
        return Err(format!(
            "the input in {name} must be a JSON object {{tenant, agent_id, submitted_by, \
             action, context}}, not {}",
            kind(&value)
        ));
    };
    // Not an error: a policy author may probe with a partial or extended input. But a typo
    // ("actoin") would otherwise look like a policy bug.
    let extra: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|key| !INPUT_KEYS.contains(key))
        .collect();
    if !extra.is_empty() {
        eprintln!(
            "approvals: note: the service's policy input has only {}; {name} also has {}",
            INPUT_KEYS.join(", "),
            extra.join(", ")
        );
    }
    Ok(value)
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The bundle, or `None` after printing why it does not load (the compiler's message names
/// the file).
fn load(dir: &Path) -> Option<PolicyGate> {
    match PolicyGate::load(dir) {
        Ok(gate) => Some(gate),
        Err(error) => {
            eprintln!("approvals: {error}");
            None
        }
    }
}
