//! The on-call surface, checked for real: the alert rules with Debian's `promtool` (syntax and
//! the unit tests of prometheus/alerts_test.yml), the alerts' documentation, and every PromQL
//! expression of the Grafana dashboard and of the alert rules against a real `prometheus` that
//! scraped the real service while it held pending, decided and expired approvals in two
//! tenants, had HTTP errors and lived through a Redis outage; and, with the `temporal` feature,
//! the alerts' inputs from a Temporal-backed service and its worker (which counts expiries).
//!
//! The dashboard and the rules are read from grafana/dashboards/approvals.json and
//! prometheus/alerts.yml, never copied here: a panel or alert added there is checked too.
//!
//! Needs `redis-server`, `prometheus` and `promtool` (`apt-get install redis-server prometheus`),
//! and for the Temporal test the dev server (`TEMPORAL_BIN`, which scripts/test.sh installs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvals::auth::{mint, Role, TokenEntry};
use approvals::config::Settings;
use approvals::startup::Application;
use approvals_testkit::prometheus_server::{PrometheusConfig, PrometheusServer};
use approvals_testkit::RedisServer;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const DASHBOARD: &str = "grafana/dashboards/approvals.json";
const ALERTS: &str = "prometheus/alerts.yml";
/// The alert that always fires: a heartbeat for a dead man's switch.
const WATCHDOG: &str = "ApprovalsWatchdog";
const ALERT_TESTS: &str = "prometheus/alerts_test.yml";
const PROMETHEUS_CONFIG: &str = "prometheus/prometheus.yml";
const RUNBOOK: &str = "docs/runbook.md";

/// Alerts on inputs only a dual soak or a Temporal-backed service exports.
const ENGINE_ALERTS: &[&str] = &[
    "ApprovalsDualDisagreements",
    "ApprovalsDualSecondaryDown",
    "ApprovalsTemporalWorkerMissing",
    "ApprovalsTemporalWorkerMissingDuringSoak",
];

/// The Redis live test's tenants (see [`Tenants`]): acme's approvals keep the default TTL,
/// globex's expire during the test.
const ACME: &str = "acme";
const GLOBEX: &str = "globex";

/// What Grafana would put in place of its variables, for a Prometheus that has a minute or so
/// of data scraped every second: `$tenant` as Grafana renders a multi-value selection inside
/// `=~"…"`, rate windows of 15 scrapes, a range covering the whole test.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("${tenant:regex}", "(acme|globex)"),
    ("${tenant}", "(acme|globex)"),
    ("$tenant", "(acme|globex)"),
    ("$__rate_interval", "15s"),
    ("$__interval", "5s"),
    ("$__range", "5m"),
];

fn repo(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(relative: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// promtool

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo("."))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool cannot run ({e}); install it: apt-get install prometheus")
        });
    assert!(
        output.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_the_config_and_the_alert_unit_tests() {
    promtool(&["check", "rules", ALERTS]);
    // The docker-compose configuration as it is: its target (approvals:8080) is not resolved by
    // a check, and its rule_files are found relative to it, so they are checked again here.
    promtool(&["check", "config", PROMETHEUS_CONFIG]);
    promtool(&["test", "rules", ALERT_TESTS]);
}

// ---------------------------------------------------------------------------------------------
// The alerts' documentation and test coverage

struct AlertRule {
    name: String,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn string_map(value: &serde_yaml::Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn alert_rules() -> Vec<AlertRule> {
    let doc = yaml(ALERTS);
    let mut rules = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            rules.push(AlertRule {
                name: name.to_owned(),
                expr: rule["expr"].as_str().expect("expr").trim().to_owned(),
                labels: string_map(&rule["labels"]),
                annotations: string_map(&rule["annotations"]),
            });
        }
    }
    assert!(!rules.is_empty(), "{ALERTS} has no alerts");
    rules
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_summary_a_description_a_runbook_section_and_unit_tests() {
    let runbook = read(RUNBOOK);
    let readme = read("README.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();

    // Per alert: has a case where it must fire, has a case where it must stay quiet.
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let tests = yaml(ALERT_TESTS);
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            let fires = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty());
            let entry = cases.entry(name).or_default();
            if fires {
                entry.0 = true;
            } else {
                entry.1 = true;
            }
        }
    }

    let mut problems = Vec::new();
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), rules.len(), "alert names are unique");
    for rule in &rules {
        let name = &rule.name;
        for key in ["summary", "description", "runbook_url"] {
            if rule
                .annotations
                .get(key)
                .is_none_or(|v| v.trim().is_empty())
            {
                problems.push(format!("{name}: no {key} annotation"));
            }
        }
        let description = rule
            .annotations
            .get("description")
            .cloned()
            .unwrap_or_default();
        // Tenant-scoped alerts name the tenant; service-wide ones say which tenants they hit.
        let per_tenant = rule.expr.contains("by (tenant)");
        if per_tenant && !description.contains("$labels.tenant") {
            problems.push(format!("{name}: description does not name the tenant"));
        }
        if !description.contains("tenant") {
            problems.push(format!(
                "{name}: description does not say which tenants suffer"
            ));
        }
        // Absolute under Prometheus' external label `runbook_base`, the repository path without.
        let expected_url = format!(
            "{{{{ with $externalLabels.runbook_base }}}}{{{{ . }}}}/{{{{ end }}}}{RUNBOOK}#{}",
            name.to_lowercase()
        );
        match rule.annotations.get("runbook_url") {
            Some(url) if *url == expected_url => {}
            other => problems.push(format!(
                "{name}: runbook_url {other:?}, expected {expected_url}"
            )),
        }
        if !anchors.contains(&name.to_lowercase()) {
            problems.push(format!("{name}: no section `## {name}` in {RUNBOOK}"));
        }
        // The README's alert table is where a platform team first reads what pages them.
        let in_table = readme.lines().any(|line| {
            line.starts_with("| ")
                && line
                    .split('|')
                    .nth(1)
                    .is_some_and(|cell| cell.split(',').any(|n| n.trim() == name))
        });
        if !in_table {
            problems.push(format!("{name}: not in README.md's alert table"));
        }
        // The heartbeat always fires (its silence is the alarm): it pages no one itself.
        let heartbeat = name == WATCHDOG;
        if !matches!(
            (heartbeat, rule.labels.get("severity").map(String::as_str)),
            (false, Some("warning" | "critical")) | (true, Some("none"))
        ) {
            problems.push(format!("{name}: severity label is not warning or critical"));
        }
        let (fires, quiet) = cases.get(name).copied().unwrap_or_default();
        if !fires {
            problems.push(format!("{name}: no case in {ALERT_TESTS} where it fires"));
        }
        if !quiet && !heartbeat {
            problems.push(format!(
                "{name}: no case in {ALERT_TESTS} where it stays quiet"
            ));
        }
    }
    for tested in cases.keys() {
        if !names.contains(tested.as_str()) {
            problems.push(format!("{ALERT_TESTS} tests {tested}, which is no alert"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Probing alert expressions
//
// An alert expression is meant to be empty while nothing is wrong, so "it returned nothing"
// proves nothing about it: a misspelt metric or a label matching that pairs no series looks
// the same. So each alert is checked twice against the live Prometheus:
//
// 1. the expression as written must evaluate without error (an empty result is fine);
// 2. its probes must each return at least one series. A probe is the expression with every
//    top-level comparison turned into its `bool` form (`a > 0.8 * b` becomes
//    `a > bool 0.8 * b`), which keeps every series the comparison pairs up, with value 0 or 1,
//    instead of filtering: it is empty only if an operand, or the vector matching between
//    them, is. Set operators (`and`, `or`, `unless`) are split first, because `unless` and `or`
//    combine operands that are each meant to be non-empty on their own (`x unless y` is empty
//    exactly when both sides have data), so every operand is probed separately; parentheses
//    around a whole operand are looked through, and `absent(v)` is probed as `v`.
//
// The parser is PromQL's own precedence, reduced to what matters here: set operators bind
// loosest, comparisons next, and anything inside (), {}, [] or a string is not top level.

/// For each byte of `expr`: whether it is at the top level (nesting depth 0, outside strings).
fn top_level(expr: &str) -> Vec<bool> {
    let bytes = expr.as_bytes();
    let mut top = vec![false; bytes.len()];
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' && q != b'`' {
                i += 1;
            } else if b == q {
                quote = None;
            }
        } else {
            match b {
                b'"' | b'\'' | b'`' => quote = Some(b),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                _ if depth == 0 => top[i] = true,
                _ => {}
            }
        }
        i += 1;
    }
    top
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// `(x)` -> `x` when the parentheses enclose everything.
fn strip_parens(expr: &str) -> &str {
    let mut e = expr.trim();
    while e.starts_with('(') && e.ends_with(')') {
        let inner = &e[1..e.len() - 1];
        // The first '(' closes at the very end only if the inner text is balanced.
        let mut depth = 0i32;
        let balanced = inner.bytes().all(|b| {
            match b {
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ => {}
            }
            depth >= 0
        }) && depth == 0;
        if !balanced {
            break;
        }
        e = inner.trim();
    }
    e
}

/// Drops a leading `on (…)` / `ignoring (…)` (left over after splitting at a set operator).
fn strip_matching_modifier(operand: &str) -> &str {
    let e = operand.trim_start();
    for keyword in ["on", "ignoring"] {
        if let Some(rest) = e.strip_prefix(keyword) {
            let rest = rest.trim_start();
            if rest.starts_with('(') {
                if let Some(close) = rest.find(')') {
                    return rest[close + 1..].trim_start();
                }
            }
        }
    }
    e
}

/// Splits at top-level `and`, `or`, `unless`.
fn split_set_operators(expr: &str) -> Vec<&str> {
    let top = top_level(expr);
    let bytes = expr.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let word = ["and", "or", "unless"].into_iter().find(|w| {
            let end = i + w.len();
            end <= bytes.len()
                && expr[i..end].eq_ignore_ascii_case(w)
                && top[i..end].iter().all(|t| *t)
                && (i == 0 || !is_ident(bytes[i - 1]))
                && (end == bytes.len() || !is_ident(bytes[end]))
        });
        match word {
            Some(w) => {
                parts.push(expr[start..i].trim());
                start = i + w.len();
                i = start;
            }
            None => i += 1,
        }
    }
    parts.push(expr[start..].trim());
    parts.into_iter().map(strip_matching_modifier).collect()
}

/// `expr` with ` bool` after every top-level comparison operator that lacks it; `None` if it
/// has no top-level comparison.
fn with_bool_comparisons(expr: &str) -> Option<String> {
    let top = top_level(expr);
    let bytes = expr.as_bytes();
    let mut out = String::new();
    let mut last = 0;
    let mut found = false;
    let mut i = 0;
    while i < bytes.len() {
        if !top[i] {
            i += 1;
            continue;
        }
        let two = bytes.get(i..i + 2);
        let len = match (bytes[i], two) {
            (_, Some(b"==" | b"!=" | b">=" | b"<=")) => 2,
            (b'>' | b'<', _) => 1,
            _ => 0,
        };
        if len == 0 {
            i += 1;
            continue;
        }
        found = true;
        let end = i + len;
        out.push_str(&expr[last..end]);
        let rest = expr[end..].trim_start();
        let has_bool = rest.starts_with("bool")
            && !rest[4..].starts_with(|c: char| c == '_' || c.is_ascii_alphanumeric());
        if !has_bool {
            out.push_str(" bool");
        }
        last = end;
        i = end;
    }
    out.push_str(&expr[last..]);
    found.then_some(out)
}

/// The expressions that must each return data when the alert's inputs exist (see above).
fn probes(expr: &str) -> Vec<String> {
    let e = strip_parens(expr);
    let parts = split_set_operators(e);
    if parts.len() > 1 {
        return parts.into_iter().flat_map(probes).collect();
    }
    if let Some(inner) = e
        .strip_prefix("absent")
        .map(str::trim_start)
        .filter(|rest| rest.starts_with('(') && strip_parens(rest) != *rest)
    {
        return probes(strip_parens(inner));
    }
    vec![with_bool_comparisons(e).unwrap_or_else(|| e.to_owned())]
}

#[test]
fn probes_keep_comparisons_as_bool_and_split_set_operators() {
    assert_eq!(probes("up{job=\"a\"} == 0"), ["up{job=\"a\"} == bool 0"]);
    assert_eq!(
        probes("max by (t) (x{l=~\"a|b\"}) > on (t) 0.8 * (y{t!=\"*\"} or on (t) z)"),
        ["max by (t) (x{l=~\"a|b\"}) > bool on (t) 0.8 * (y{t!=\"*\"} or on (t) z)"]
    );
    assert_eq!(
        probes("a >= 5\nunless on (tenant)\nb > 0"),
        ["a >= bool 5", "b > bool 0"]
    );
    assert_eq!(
        probes("a > 30 or on (i, j) (up == 1 unless on (i, j) s)"),
        ["a > bool 30", "up == bool 1", "s"]
    );
    assert_eq!(probes("absent(up{job=\"a\"})"), ["up{job=\"a\"}"]);
    assert_eq!(probes("a / b > bool 0.5"), ["a / b > bool 0.5"]);
    assert_eq!(probes("rate(x_total[5m])"), ["rate(x_total[5m])"]);
    assert_eq!(
        probes("sort_desc(x) and on (t) (y > 0)"),
        ["sort_desc(x)", "y > bool 0"]
    );
}

// ---------------------------------------------------------------------------------------------
// The dashboard

/// Every `targets[].expr` of every panel, rows' nested panels included: (panel title, expr).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.to_owned(), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Metrics with a tenant label: every panel over them follows the tenant selection.
const PER_TENANT_METRICS: &[&str] = &[
    "approvals_pending",
    "approvals_pending_oldest_age_seconds",
    "approvals_pending_age_seconds_bucket",
    "approvals_pending_age_seconds_sum",
    "approvals_pending_age_seconds_count",
    "approvals_submitted_total",
    "approvals_decisions_total",
    "approvals_time_to_decision_seconds_bucket",
    "approvals_time_to_decision_seconds_sum",
    "approvals_time_to_decision_seconds_count",
    "approvals_time_to_first_view_seconds_bucket",
    "approvals_notifications_total",
    "approvals_notifications_queued_total",
    "approvals_notifications_reader_lag_seconds",
    "approvals_notifications_audit_gaps_total",
];

/// The metric names (and other identifiers) in a PromQL expression.
fn identifiers(expr: &str) -> BTreeSet<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
        .collect()
}

fn grafana_to_promql(expr: &str) -> String {
    let mut out = expr.to_owned();
    for (variable, value) in GRAFANA_VARIABLES {
        out = out.replace(variable, value);
    }
    out
}

#[test]
fn the_dashboard_is_grafana_json_with_a_tenant_variable_and_titled_panels() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    assert_eq!(dashboard["uid"], "approvals");
    assert_eq!(dashboard["title"], "Approvals");
    let tenant = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .find(|v| v["name"] == "tenant")
        .expect("a tenant variable");
    assert_eq!(tenant["multi"], true);
    assert_eq!(tenant["includeAll"], true);
    assert_eq!(
        tenant["definition"],
        "label_values(approvals_pending, tenant)"
    );

    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    fn visit<'a>(panels: &'a Value, all: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            all.push(panel);
            visit(&panel["panels"], all);
        }
    }
    let mut all = Vec::new();
    visit(&dashboard["panels"], &mut all);
    for panel in all {
        let title = panel["title"].as_str().unwrap_or_default();
        if title.trim().is_empty() {
            problems.push(format!("panel {} has no title", panel["id"]));
        }
        if !ids.insert(panel["id"].as_i64().unwrap_or(-1)) {
            problems.push(format!("{title}: duplicate or missing id"));
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{title}: no query"));
        }
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            if PER_TENANT_METRICS
                .iter()
                .any(|m| identifiers(expr).contains(m))
                && !expr.contains("$tenant")
            {
                problems.push(format!("{title}: per-tenant query ignores $tenant: {expr}"));
            }
            if grafana_to_promql(expr).contains('$') {
                problems.push(format!("{title}: unknown Grafana variable in {expr}"));
            }
            // Shared figures are the same on every instance: a sum would multiply them.
            for shared in ["approvals_pending", "approvals_ttl_seconds"] {
                if expr.contains(&format!("sum({shared}"))
                    || expr.contains(&format!("sum by (tenant) ({shared}"))
                {
                    problems.push(format!("{title}: sums {shared} across instances"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The live check

struct Prom {
    http: reqwest::Client,
    base: String,
}

enum Answer {
    Data(Vec<Value>),
    Error(String),
}

impl Prom {
    async fn query(&self, expr: &str) -> Answer {
        let response = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await;
        let body: Value = match response {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(e) => return Answer::Error(e.to_string()),
        };
        if body["status"] != "success" {
            return Answer::Error(format!("{}: {}", body["errorType"], body["error"]));
        }
        let result = &body["data"]["result"];
        match body["data"]["resultType"].as_str() {
            Some("vector" | "matrix") => {
                Answer::Data(result.as_array().cloned().unwrap_or_default())
            }
            // A scalar or string always has a value.
            _ => Answer::Data(vec![result.clone()]),
        }
    }

    async fn series(&self, expr: &str) -> Vec<Value> {
        match self.query(expr).await {
            Answer::Data(series) => series,
            Answer::Error(_) => Vec::new(),
        }
    }

    /// label value -> sample value, of an instant vector.
    async fn by_label(&self, expr: &str, label: &str) -> BTreeMap<String, f64> {
        self.series(expr)
            .await
            .iter()
            .filter_map(|s| {
                let key = s["metric"][label].as_str()?.to_owned();
                let value = s["value"][1].as_str()?.parse().ok()?;
                Some((key, value))
            })
            .collect()
    }

    async fn rules(&self) -> Vec<Value> {
        let body: Value = match self
            .http
            .get(format!("{}/api/v1/rules", self.base))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// Two tenants and their agents' and reviewers' tokens: `steady` keeps the default TTL (24 h),
/// `expiring`'s approvals live two seconds, so they expire during the test.
struct Tenants {
    steady: &'static str,
    expiring: &'static str,
    steady_agent: String,
    steady_reviewer: String,
    steady_admin: String,
    expiring_agent: String,
    expiring_reviewer: String,
}

impl Tenants {
    /// The tenants' tokens, and the entries the service's config holds for them.
    fn new(steady: &'static str, expiring: &'static str) -> (Self, Vec<TokenEntry>) {
        let mut entries = Vec::new();
        let mut token = |tenant: &str, role: Role, subject: &str| {
            let (token, entry) = mint(tenant, role, subject);
            entries.push(entry);
            token
        };
        let tenants = Self {
            steady,
            expiring,
            steady_agent: token(steady, Role::Agent, &format!("{steady}-agent")),
            steady_reviewer: token(steady, Role::Reviewer, &format!("{steady}-reviewer")),
            steady_admin: token(steady, Role::Admin, &format!("{steady}-admin")),
            expiring_agent: token(expiring, Role::Agent, &format!("{expiring}-agent")),
            expiring_reviewer: token(expiring, Role::Reviewer, &format!("{expiring}-reviewer")),
        };
        (tenants, entries)
    }
}

/// The expiring tenant's TTL.
const EXPIRING_TTL_SECS: u64 = 5;

/// The service's settings for `tenants`: the expiring tenant's TTL, background passes often
/// enough for a test that lasts a minute.
fn service_settings(tenants: &Tenants, tokens: Vec<TokenEntry>) -> Settings {
    let mut settings = Settings::default();
    settings.server.listen = "127.0.0.1:0".parse().expect("addr");
    settings.policy.dir = repo("policies");
    // The service runs in this test process: its sandbox children are the real binary.
    settings.policy.sandbox.binary = Some(env!("CARGO_BIN_EXE_approvals").into());
    settings.auth.tokens = tokens;
    settings
        .approvals
        .tenant_ttl
        // Long enough that an approval decided right after its park is still pending when the
        // decision lands (through a worker process on Temporal, on a loaded machine).
        .insert(
            tenants.expiring.into(),
            Duration::from_secs(EXPIRING_TTL_SECS),
        );
    settings.approvals.sweep_interval = Duration::from_millis(100);
    settings.approvals.stats_interval = Duration::from_millis(200);
    settings.approvals.adopt_interval = Duration::from_millis(500);
    settings.notifications.poll_interval = Duration::from_millis(100);
    settings.notifications.send_interval = Duration::from_millis(50);
    settings.notifications.retry_base = Duration::from_millis(100);
    // The test's receiver listens on loopback, which webhooks may not reach by default.
    settings.notifications.allowed_networks = vec!["127.0.0.0/8".parse().expect("a network")];
    settings
}

/// A webhook receiver on a free port that refuses the first delivery (500) and takes the
/// rest, so that sent and failed deliveries both exist; counts what it took.
async fn start_receiver() -> (String, Arc<AtomicUsize>) {
    let posts = Arc::new(AtomicUsize::new(0));
    let counter = posts.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, posts)
}

/// The service, in this process, on a free port; stopped when dropped.
struct Service {
    base: String,
    _stop: tokio_util::sync::DropGuard,
}

async fn start_service(settings: Settings) -> Service {
    let app = Application::build(settings)
        .await
        .expect("application builds");
    let base = format!("http://{}", app.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(app.run_until(async move { signal.cancelled().await }));
    Service {
        base,
        _stop: stop.drop_guard(),
    }
}

/// Polls `check` every 200 ms until it returns `Ok`; after `limit`, panics with `what` and
/// the last `Err` (what was still missing).
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let missing = match check().await {
            Ok(()) => return,
            Err(missing) => missing,
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {missing}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn of(service: &Service) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: service.base.clone(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> StatusCode {
        self.call(reqwest::Method::GET, path, token, None).await.0
    }

    async fn submit(&self, tenant: &str, agent: &str, id: &str, action: Value) -> StatusCode {
        let body = json!({"request_id": id, "action": action});
        let path = format!("/v1/tenants/{tenant}/approvals");
        self.call(reqwest::Method::POST, &path, Some(agent), Some(body))
            .await
            .0
    }

    async fn park(&self, tenant: &str, agent: &str, id: &str) {
        let action = json!({"type": "document_read", "resource": "finance/q3-report"});
        assert_eq!(
            self.submit(tenant, agent, id, action).await,
            StatusCode::CREATED,
            "parking {tenant}/{id}"
        );
    }

    async fn decide(&self, tenant: &str, reviewer: &str, id: &str, verdict: &str) {
        let path = format!("/v1/tenants/{tenant}/approvals/{id}/{verdict}");
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(reviewer),
                Some(json!({"reason": "checked"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{verdict} {tenant}/{id}: {body}");
    }

    async fn metrics(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics");
        response.text().await.unwrap_or_default()
    }

    /// Traffic in both tenants: three pending, one accepted, one rejected, an allowed and a
    /// denied submit, a 404 and a 401; then the expiring tenant's pending approvals expire (the
    /// long-polls return when they do).
    async fn drive_traffic(&self, tenants: &Tenants) {
        for (tenant, agent, reviewer) in [
            (
                tenants.steady,
                &tenants.steady_agent,
                &tenants.steady_reviewer,
            ),
            (
                tenants.expiring,
                &tenants.expiring_agent,
                &tenants.expiring_reviewer,
            ),
        ] {
            for n in 0..3 {
                self.park(tenant, agent, &format!("{tenant}-pending-{n}"))
                    .await;
            }
            self.park(tenant, agent, &format!("{tenant}-accepted"))
                .await;
            self.decide(tenant, reviewer, &format!("{tenant}-accepted"), "accept")
                .await;
            self.park(tenant, agent, &format!("{tenant}-rejected"))
                .await;
            self.decide(tenant, reviewer, &format!("{tenant}-rejected"), "reject")
                .await;
            let read = json!({"type": "document_read", "resource": "docs/handbook.md"});
            let allowed = format!("{tenant}-allowed");
            assert_eq!(
                self.submit(tenant, agent, &allowed, read).await,
                StatusCode::OK
            );
            let write = json!({"type": "file_delete", "resource": "docs/handbook.md"});
            let denied = format!("{tenant}-denied");
            assert_eq!(
                self.submit(tenant, agent, &denied, write).await,
                StatusCode::OK
            );
            let missing = format!("/v1/tenants/{tenant}/approvals/no-such-approval");
            assert_eq!(
                self.get(&missing, Some(reviewer)).await,
                StatusCode::NOT_FOUND
            );
            assert_eq!(self.get(&missing, None).await, StatusCode::UNAUTHORIZED);
        }
        let tenant = tenants.expiring;
        for n in 0..3 {
            let path = format!(
                "/v1/tenants/{tenant}/approvals/{tenant}-pending-{n}/decision?wait_seconds=20"
            );
            let (status, body) = self
                .call(
                    reqwest::Method::GET,
                    &path,
                    Some(&tenants.expiring_agent),
                    None,
                )
                .await;
            assert_eq!(
                (status, body["status"].as_str()),
                (StatusCode::OK, Some("expired")),
                "{body}"
            );
        }
    }
}

/// Waits until Prometheus shows the state after the traffic: the pending figures (3 in the
/// steady tenant, 0 in the expiring one), four scrapes of every job since `traffic_done` (so
/// every series has samples across any 15 s rate window) and every rule evaluated.
async fn until_scraped(
    prom: &Prom,
    tenants: &Tenants,
    jobs: &[&str],
    traffic_done: Instant,
    rules: usize,
) {
    until(
        Duration::from_secs(30),
        "Prometheus to scrape the final state",
        || async {
            let pending = prom
                .by_label("max by (tenant) (approvals_pending)", "tenant")
                .await;
            let caught_up = pending.get(tenants.steady) == Some(&3.0)
                && pending.get(tenants.expiring) == Some(&0.0);
            let since = traffic_done.elapsed().as_millis();
            let scrapes = prom
                .by_label(&format!("count_over_time(up[{since}ms])"), "job")
                .await;
            let scraped = jobs
                .iter()
                .all(|job| scrapes.get(*job).copied().unwrap_or(0.0) >= 4.0);
            let evaluated = prom.rules().await;
            let evaluated = evaluated
                .iter()
                .filter(|r| r["health"] != "unknown")
                .count();
            if caught_up && scraped && evaluated == rules {
                Ok(())
            } else {
                Err(format!(
                    "pending {pending:?}, scrapes since the traffic {scrapes:?}, \
                     {evaluated} of {rules} rules evaluated"
                ))
            }
        },
    )
    .await;
}

/// What is wrong with the alert rules against the live Prometheus: a rule that does not
/// evaluate, an expression Prometheus rejects, and, for the rules `probed` selects, an input
/// (each operand of the expression) without series.
async fn rule_failures(
    prom: &Prom,
    rules: &[AlertRule],
    probed: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    for rule in prom.rules().await {
        if rule["health"] != "ok" {
            failures.push(format!(
                "rule {} does not evaluate: {}",
                rule["name"], rule["lastError"]
            ));
        }
    }
    for rule in rules {
        if let Answer::Error(e) = prom.query(&rule.expr).await {
            failures.push(format!("alert {}: {e}\n    {}", rule.name, rule.expr));
        }
        if !probed(&rule.name) {
            continue;
        }
        for probe in probes(&rule.expr) {
            match prom.query(&probe).await {
                Answer::Error(e) => {
                    failures.push(format!("alert {} probe: {e}\n    {probe}", rule.name))
                }
                Answer::Data(series) if series.is_empty() => {
                    failures.push(format!("alert {} probe: no series\n    {probe}", rule.name))
                }
                Answer::Data(_) => {}
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_query_answers_from_a_real_prometheus() {
    let mut redis = RedisServer::start().await;
    let (tenants, tokens) = Tenants::new(ACME, GLOBEX);
    let mut settings = service_settings(&tenants, tokens);
    settings.redis.url = redis.url();
    settings.redis.call_timeout = Duration::from_secs(1);
    let service = start_service(settings).await;
    let client = Client::of(&service);

    let prometheus = PrometheusServer::start(&PrometheusConfig {
        job: "approvals".into(),
        targets: vec![service.base.trim_start_matches("http://").to_owned()],
        rule_files: vec![repo(ALERTS)],
        interval: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let prom = Prom {
        http: reqwest::Client::new(),
        base: prometheus.url(),
    };

    // A Redis outage first (nothing is lost: nothing is stored yet): backend errors, 503s and
    // failed sweeper passes, so the error panels and alerts have series to work on.
    redis.stop();
    assert_eq!(
        client.get("/readyz", None).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let unknown = format!("/v1/tenants/{ACME}/approvals/during-outage");
    assert_eq!(
        client.get(&unknown, Some(&tenants.steady_reviewer)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    until(Duration::from_secs(10), "a failed sweeper pass", || async {
        let text = client.metrics().await;
        let failed_pass = text.contains("approvals_sweeper_runs_total{result=\"error\"}");
        let backend_error = text
            .lines()
            .any(|l| l.starts_with("approvals_backend_errors_total{") && !l.ends_with(" 0"));
        if failed_pass && backend_error {
            Ok(())
        } else {
            Err(format!(
                "failed sweeper pass: {failed_pass}, backend error: {backend_error}"
            ))
        }
    })
    .await;
    redis.restart().await;
    until(
        Duration::from_secs(15),
        "ready again after the outage",
        || async {
            match client.get("/readyz", None).await {
                StatusCode::OK => Ok(()),
                other => Err(format!("/readyz answers {other}")),
            }
        },
    )
    .await;

    // A damaged record read by a client: answered 500 and counted `corrupt`, which the
    // unreadable-records warning reads (and the backend-errors page leaves out).
    let mut conn = redis.connection().await;
    let _: () = redis::AsyncCommands::set(
        &mut conn,
        format!("approval:{ACME}:damaged"),
        "{not a record",
    )
    .await
    .expect("plant a damaged record");
    let damaged = format!("/v1/tenants/{ACME}/approvals/damaged");
    assert_eq!(
        client.get(&damaged, Some(&tenants.steady_reviewer)).await,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // Notifications and a reviewer's first look, for the panels on reaching reviewers.
    let (hook, posts) = start_receiver().await;
    let path = format!("/v1/tenants/{ACME}/webhooks");
    let (status, body) = client
        .call(
            reqwest::Method::POST,
            &path,
            Some(&tenants.steady_admin),
            Some(json!({"url": hook, "events": ["parked", "decided"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    client.drive_traffic(&tenants).await;
    let inbox = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client");
    let signed_in = inbox
        .post(format!("{}/ui/login", service.base))
        .form(&[("token", tenants.steady_reviewer.as_str())])
        .send()
        .await
        .expect("sign in");
    assert_eq!(
        signed_in.status(),
        StatusCode::OK,
        "the inbox after signing in"
    );
    let page = inbox
        .get(format!("{}/ui/approvals/{ACME}-pending-0", service.base))
        .send()
        .await
        .expect("detail page");
    assert_eq!(page.status(), StatusCode::OK);
    until(Duration::from_secs(15), "webhook deliveries", || {
        let taken = posts.load(Ordering::SeqCst);
        async move {
            // acme: 5 parked, 2 decided, the first post refused and retried. A parked
            // notification whose approval was decided before its attempt is withdrawn, not
            // posted: 6 posts at least (the 3 left pending, the 2 decided, the refused one).
            if taken >= 6 {
                Ok(())
            } else {
                Err(format!("{taken} posts"))
            }
        }
    })
    .await;
    let rules = alert_rules();
    until_scraped(&prom, &tenants, &["approvals"], Instant::now(), rules.len()).await;

    // This run serves from Redis alone: the engine alerts' inputs (a dual soak's comparisons,
    // Temporal workers) do not exist here. promtool's unit tests and the Temporal test below
    // cover them.
    let mut failures = rule_failures(&prom, &rules, |name| !ENGINE_ALERTS.contains(&name)).await;

    // The tenant variable lists both tenants.
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let definition = variable["definition"].as_str().unwrap_or_default();
        if let Some(args) = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let (metric, label) = args.rsplit_once(',').expect("label_values(metric, label)");
            let values = prom
                .by_label(
                    &format!("count by ({0}) ({1})", label.trim(), metric.trim()),
                    label.trim(),
                )
                .await;
            let values: BTreeSet<&str> = values.keys().map(String::as_str).collect();
            if !(values.contains(ACME) && values.contains(GLOBEX)) {
                failures.push(format!(
                    "variable {}: {definition} lists {values:?}",
                    variable["name"]
                ));
            }
        }
    }

    let queries = dashboard_queries(&dashboard);
    assert!(
        queries.len() >= 20,
        "the dashboard has {} queries",
        queries.len()
    );
    for (title, expr) in &queries {
        let promql = grafana_to_promql(expr);
        match prom.query(&promql).await {
            Answer::Error(e) => failures.push(format!("panel \"{title}\": {e}\n    {promql}")),
            Answer::Data(series) if series.is_empty() => {
                failures.push(format!("panel \"{title}\": no series\n    {promql}"))
            }
            Answer::Data(_) => {}
        }
    }

    assert!(
        failures.is_empty(),
        "{} of the dashboard's and alerts' expressions failed against the live Prometheus:\n{}\n\nprometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        prometheus.log()
    );
    drop(prometheus);
    drop(service);
}

/// The alerts whose inputs a healthy Temporal-backed service and its worker export: what is
/// pending and about to expire, expiries, the API and the worker up. (The sweeper's and the
/// Redis pool's alerts watch parts Temporal does not have; error alerts need an outage, the
/// disagreement alert a dual soak: the Redis test and promtool cover those.)
#[cfg(feature = "temporal")]
const TEMPORAL_LIVE_ALERTS: &[&str] = &[
    "ApprovalsAboutToExpire",
    "ApprovalsPendingGrowingWithoutDecisions",
    "ApprovalsExpiryRateHigh",
    "ApprovalsServiceDown",
    "ApprovalsMetricsMissing",
    "ApprovalsNotReady",
    "ApprovalsPendingFiguresStale",
    "ApprovalsTemporalWorkerMissing",
];

/// On Temporal, expiries happen in the workflows and the worker counts them: the same alert
/// inputs as on Redis, each expiry counted once across the API's and the worker's jobs, with
/// its time to decision; the tenant whose approvals all expired reads 0 pending (Temporal's
/// visibility no longer lists it); and the missing-worker alert arms when the worker goes.
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_temporal_the_alert_inputs_answer_and_each_expiry_is_counted_once() {
    use approvals::config::BackendChoice;
    use approvals_testkit::free_port;
    use approvals_testkit::process::{wait_ready, Process};
    use approvals_testkit::temporal_server::DevServer;

    // On the test's own thread: the server dies with the thread that started it
    // (PR_SET_PDEATHSIG), and a blocking-pool thread exits after 10 s idle.
    let server = tokio::task::block_in_place(|| DevServer::start(None));
    // Tenants of its own: the other live test's counters share this process's recorder.
    let (tenants, tokens) = Tenants::new("initech", "umbrella");
    let queue = format!("observability-{}", server.port);
    let worker_port = free_port();

    // The worker as operators run it: its own process, config and /metrics.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\nkind = \"temporal\"\n[temporal]\naddress = \"{}\"\ntask_queue = \"{queue}\"\n\
             [worker]\nlisten = \"127.0.0.1:{worker_port}\"\n[policy]\ndir = \"{}\"\n",
            server.address(),
            repo("policies").display()
        ),
    )
    .expect("worker config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_approvals"));
    command
        .args(["worker", "--config"])
        .arg(&config)
        .env_remove("APPROVALS_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let mut worker = Process::spawn(command);
    worker.wait_for_line("worker polling", Duration::from_secs(30));
    let worker_target = format!("127.0.0.1:{worker_port}");
    wait_ready(
        &format!("http://{worker_target}/readyz"),
        Duration::from_secs(30),
    )
    .await;
    // The worker ships its expiries to the decision log: a batch it drops is counted at once,
    // and only a series that was there at 0 before shows it to `increase()`.
    let scraped = reqwest::get(format!("http://{worker_target}/metrics"))
        .await
        .expect("the worker's /metrics")
        .text()
        .await
        .expect("its text");
    for reason in ["queue_full", "stopped", "undeliverable"] {
        let series = format!("approvals_decision_log_dropped_total{{reason=\"{reason}\"}} 0");
        assert!(scraped.contains(&series), "{series} in\n{scraped}");
    }

    let mut settings = service_settings(&tenants, tokens);
    settings.backend = BackendChoice::Temporal;
    settings.temporal.address = server.address();
    settings.temporal.task_queue = queue;
    settings.temporal.call_timeout = Duration::from_secs(20);
    let service = start_service(settings).await;
    let client = Client::of(&service);

    let prometheus = PrometheusServer::start(&PrometheusConfig {
        job: "approvals".into(),
        targets: vec![service.base.trim_start_matches("http://").to_owned()],
        more_jobs: vec![("approvals-worker".into(), vec![worker_target])],
        rule_files: vec![repo(ALERTS)],
        interval: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let prom = Prom {
        http: reqwest::Client::new(),
        base: prometheus.url(),
    };

    client.drive_traffic(&tenants).await;
    // A read reports an approval expired from its deadline on; the workflow's timer records
    // the expiry (and the worker counts it) right after.
    let expired = r#"sum by (tenant) (approvals_decisions_total{outcome="expired"})"#;
    until(
        Duration::from_secs(30),
        "the worker's expiries in Prometheus",
        || async {
            let counted = prom.by_label(expired, "tenant").await;
            match counted.get(tenants.expiring) {
                Some(n) if *n >= 3.0 => Ok(()),
                _ => Err(format!("expired: {counted:?}")),
            }
        },
    )
    .await;
    let rules = alert_rules();
    until_scraped(
        &prom,
        &tenants,
        &["approvals", "approvals-worker"],
        Instant::now(),
        rules.len(),
    )
    .await;

    // Counted once, by the worker, summed over both jobs as the alerts and panels do. (Over
    // the last minute, so that one slow scrape cannot hide a series; the other live test in
    // this process has tenants of its own.) The service's own counter is there at 0.
    let expiring = tenants.expiring;
    let counted = prom
        .by_label(
            &format!(
                r#"sum by (job) (max_over_time(approvals_decisions_total{{outcome="expired", tenant="{expiring}"}}[1m])) > 0"#
            ),
            "job",
        )
        .await;
    assert_eq!(
        counted,
        BTreeMap::from([("approvals-worker".to_owned(), 3.0)]),
        "which job counts the expiries, how many"
    );
    let timed = prom
        .by_label(
            &format!(
                r#"sum by (tenant) (max_over_time(approvals_time_to_decision_seconds_count{{outcome="expired", tenant="{expiring}"}}[1m]))"#
            ),
            "tenant",
        )
        .await;
    assert_eq!(timed.get(expiring), Some(&3.0), "{timed:?}");
    // Each of the 3 expired approvals waited its whole TTL before it expired.
    let waited = prom
        .by_label(
            &format!(
                r#"sum by (tenant) (max_over_time(approvals_time_to_decision_seconds_sum{{outcome="expired", tenant="{expiring}"}}[1m]))"#
            ),
            "tenant",
        )
        .await;
    let waited = waited.get(expiring).copied().unwrap_or_default();
    let whole = 3.0 * EXPIRING_TTL_SECS as f64;
    assert!(
        (whole - 0.1..=whole + 0.1).contains(&waited),
        "time to expiry summed: {waited}"
    );
    let steady = tenants.steady;
    // Its counter is there from the start (at 0, so that a first expiry shows as an
    // increase), and stays 0.
    let none = prom
        .by_label(
            &format!(r#"approvals_decisions_total{{outcome="expired", tenant="{steady}"}} > 0"#),
            "tenant",
        )
        .await;
    assert!(none.is_empty(), "nothing of {steady} expired: {none:?}");

    let names: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    for name in TEMPORAL_LIVE_ALERTS {
        assert!(names.contains(name), "no alert named {name}");
    }
    let failures = rule_failures(&prom, &rules, |name| TEMPORAL_LIVE_ALERTS.contains(&name)).await;
    assert!(
        failures.is_empty(),
        "{} of the alerts' expressions failed against the live Prometheus on Temporal:\n{}\n\nprometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        prometheus.log()
    );

    // With the worker running the missing-worker alert has nothing to say; with it gone, its
    // expression selects the service (the alert's `for` then pages).
    let missing = rules
        .iter()
        .find(|r| r.name == "ApprovalsTemporalWorkerMissing")
        .expect("the rule");
    // Until: one slow scrape of the worker (1 s timeout here) reads as a worker gone.
    until(
        Duration::from_secs(20),
        "the missing-worker alert's expression to be empty while the worker runs",
        || async {
            let selected = prom.series(&missing.expr).await;
            if selected.is_empty() {
                Ok(())
            } else {
                Err(format!("{selected:?}"))
            }
        },
    )
    .await;
    let (status, _) = worker.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "the worker drained: {status}");
    until(
        Duration::from_secs(20),
        "the missing-worker alert's expression to select the service",
        || async {
            if prom.series(&missing.expr).await.is_empty() {
                Err("no series yet".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    drop(prometheus);
    drop(service);
}
