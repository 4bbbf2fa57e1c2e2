//! The loader against the keys operators write: files, variables, and what they get wrong.

use super::*;

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    Settings::load_from(
        Some(&path),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn reads_the_contract_keys() {
    let s = load(
        "[approvals]\ndefault_ttl = \"2s\"\n[approvals.tenant_ttl]\nacme = \"72h\"\n",
        &[
            ("APPROVALS_REDIS__URL", "redis://x:1/0"),
            ("APPROVALS_CONFIG", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(s.approvals.default_ttl, Duration::from_secs(2));
    assert_eq!(
        s.approvals.ttl_for(&TenantId::parse("acme").unwrap()),
        Duration::from_secs(72 * 3600)
    );
    assert_eq!(s.redis.url, "redis://x:1/0");
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    let e = load("[server]\nlisten = \"127.0.0.1:1\"\nbody_limt = 5\n", &[]).unwrap_err();
    assert!(e.to_string().contains("body_limt"), "{e}");
    let e = load("[approvals]\ndefault_ttl = \"soon\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("approvals.default_ttl"), "{e}");
    let e = load("", &[("APPROVALS_REDIS__ULR", "x")]).unwrap_err();
    assert!(e.to_string().contains("APPROVALS_REDIS__ULR"), "{e}");
    let e = load("[approvals.tenant_ttl]\n\"a:b\" = \"1h\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("approvals.tenant_ttl.a:b"), "{e}");
}

#[test]
fn a_redis_url_that_cannot_be_used_names_the_key_not_the_password() {
    for url in [
        "localhost:6379",
        "rediss://:hunter2@cache.example:6380/0",
        "redis://:hunter2@[::1/0",
    ] {
        let e = load("", &[("APPROVALS_REDIS__URL", url)]).unwrap_err();
        let said = e.to_string();
        assert!(said.contains("redis.url"), "{url}: {said}");
        assert!(!said.contains("hunter2"), "{url}: {said}");
    }
    assert!(load(
        "",
        &[("APPROVALS_REDIS__URL", "redis://:pw@10.0.0.1:6379/2")]
    )
    .is_ok());
}

#[test]
fn dual_needs_an_engine_as_primary() {
    let e = load("[backend]\nkind = \"dual\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("backend.primary: required"), "{e}");
    let e = load("[backend]\nkind = \"dual\"\nprimary = \"dual\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("backend"), "{e}");
    let e = load("[backend]\nkind = \"dual\"\nprimary = \"mysql\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("backend.primary"), "{e}");
    let s = load(
        "[backend]\nkind = \"dual\"\n",
        &[
            ("APPROVALS_BACKEND__PRIMARY", "temporal"),
            ("APPROVALS_BACKEND__SECONDARY_TIMEOUT", "250ms"),
        ],
    )
    .unwrap();
    assert_eq!(
        s.backend,
        BackendChoice::Dual {
            primary: EngineKind::Temporal,
            secondary_timeout: Duration::from_millis(250)
        }
    );
    let s = load("[backend]\nkind = \"dual\"\nprimary = \"redis\"\n", &[]).unwrap();
    assert_eq!(
        s.backend,
        BackendChoice::Dual {
            primary: EngineKind::Redis,
            secondary_timeout: DEFAULT_SECONDARY_TIMEOUT
        }
    );
    // Left in place while rolling back from dual: harmless.
    let s = load("[backend]\nkind = \"redis\"\nprimary = \"temporal\"\n", &[]).unwrap();
    assert_eq!(s.backend, BackendChoice::Redis);
    let e = load("[backend]\nkind = \"redis\"\nprimari = \"temporal\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("primari"), "{e}");
}

#[test]
fn env_overrides_the_file() {
    let s = load(
        "[approvals]\ndefault_ttl = \"2s\"\n",
        &[("APPROVALS_APPROVALS__DEFAULT_TTL", "5m")],
    )
    .unwrap();
    assert_eq!(s.approvals.default_ttl, Duration::from_secs(300));
}

#[test]
fn the_policy_clis_variables_are_not_configuration() {
    let s = load(
        "",
        &[
            ("APPROVALS_URL", "http://approvals:8080"),
            ("APPROVALS_TOKEN", "an admin token"),
        ],
    )
    .unwrap();
    assert_eq!(s.server.listen, ServerSettings::default().listen);
}

#[test]
fn a_background_loop_with_a_zero_period_is_refused() {
    for var in [
        "APPROVALS_APPROVALS__SWEEP_INTERVAL",
        "APPROVALS_APPROVALS__STATS_INTERVAL",
        "APPROVALS_APPROVALS__ADOPT_INTERVAL",
        "APPROVALS_APPROVALS__EVENTS_POLL_INTERVAL",
        "APPROVALS_POLICY__RELOAD_INTERVAL",
        "APPROVALS_NOTIFICATIONS__SEND_INTERVAL",
        "APPROVALS_DECISION_LOG__FLUSH_INTERVAL",
        "APPROVALS_NOTIFICATIONS__RETRY_BASE",
    ] {
        assert_must_be_positive(var, "0s", "1s");
    }
}

/// `var` set to `zero` is refused as "{key}: must be positive"; set to `some`, accepted.
fn assert_must_be_positive(var: &str, zero: &str, some: &str) {
    let e = load("", &[(var, zero)]).unwrap_err();
    let key = var["APPROVALS_".len()..]
        .to_ascii_lowercase()
        .replace("__", ".");
    assert!(
        matches!(&e, ConfigError::Invalid(m) if m.starts_with(&format!("{key}: must be positive"))),
        "{var}: {e}"
    );
    assert!(load("", &[(var, some)]).is_ok(), "{var}");
}

#[test]
fn kubernetes_service_links_are_ignored_and_typos_still_named() {
    let links = [
        ("APPROVALS_PORT", "tcp://10.0.0.7:8080"),
        ("APPROVALS_SERVICE_HOST", "10.0.0.7"),
        ("APPROVALS_SERVICE_PORT", "8080"),
        ("APPROVALS_SERVICE_PORT_HTTP", "8080"),
        ("APPROVALS_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
        ("APPROVALS_PORT_8080_TCP_PROTO", "tcp"),
        ("APPROVALS_PORT_8080_TCP_PORT", "8080"),
        ("APPROVALS_PORT_8080_TCP_ADDR", "10.0.0.7"),
        // A Service named approvals-worker in the same namespace.
        ("APPROVALS_WORKER_SERVICE_HOST", "10.0.0.8"),
        ("APPROVALS_WORKER_PORT_8081_TCP_ADDR", "10.0.0.8"),
    ];
    let s = load("", &links).unwrap();
    assert_eq!(s.server.listen, ServerSettings::default().listen);
    let mut with_typo = links.to_vec();
    with_typo.push(("APPROVALS_REDIS_URL", "redis://x:1/0"));
    let e = load("", &with_typo).unwrap_err();
    assert!(e.to_string().contains("APPROVALS_REDIS_URL"), "{e}");
    // A key mistyped with one underscore before `PORT` holds no link: named, not skipped (it
    // was skipped as a link, and the default port served without a word).
    for typo in ["APPROVALS_SERVER_PORT", "APPROVALS_REDIS_PORT"] {
        let e = load("", &[(typo, "9090")]).unwrap_err();
        assert!(e.to_string().contains(typo), "{e}");
    }
    let e = load("", &[("APPROVALS_TEMPORAL__ADRESS", "http://x:1")]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::UnknownVariable { var, key }
            if var == "APPROVALS_TEMPORAL__ADRESS" && key == "temporal.adress"),
        "{e}"
    );
    let e = load("", &[("APPROVALS_BACKEND__PRIMAR", "redis")]).unwrap_err();
    assert!(e.to_string().contains("APPROVALS_BACKEND__PRIMAR"), "{e}");
}

#[test]
fn every_section_is_settable_from_the_environment() {
    let s = load(
        "",
        &[
            ("APPROVALS_SERVER__BODY_LIMIT", "1000"),
            ("APPROVALS_REDIS__MAX_IN_FLIGHT", "7"),
            ("APPROVALS_REDIS__AUDIT_MAX_LEN", "99"),
            ("APPROVALS_TEMPORAL__STICKY_QUEUE_TIMEOUT", "3s"),
            ("APPROVALS_WORKER__LISTEN", "127.0.0.1:9"),
            ("APPROVALS_APPROVALS__TENANT_TTL__ACME", "72h"),
            ("APPROVALS_LOG__FORMAT", "json"),
        ],
    )
    .unwrap();
    assert_eq!(s.server.body_limit, 1000);
    assert_eq!(s.redis.max_in_flight, 7);
    assert_eq!(s.redis.audit_max_len, 99);
    assert_eq!(s.temporal.sticky_queue_timeout, Duration::from_secs(3));
    assert_eq!(s.worker.listen.port(), 9);
    assert_eq!(s.log.format, LogFormat::Json);
    let e = load("", &[("APPROVALS_SERVER__BODY_LIMIT", "lots")]).unwrap_err();
    assert!(
        e.to_string().contains("APPROVALS_SERVER__BODY_LIMIT"),
        "{e}"
    );
}

#[test]
fn two_tokens_with_one_digest_are_refused() {
    let entry = |subject: &str| {
        format!(
            "[[auth.tokens]]\nsubject = \"{subject}\"\ntenant = \"acme\"\nrole = \"agent\"\n\
             sha256 = \"{}\"\n",
            "a".repeat(64)
        )
    };
    let e = load(&format!("{}{}", entry("one"), entry("two")), &[]).unwrap_err();
    assert!(e.to_string().contains("auth.tokens[1]"), "{e}");
    assert!(e.to_string().contains("auth.tokens[0]"), "{e}");
    assert!(load(&entry("one"), &[]).is_ok());
}

#[test]
fn webhook_networks_and_proxy_are_checked_when_read() {
    let settings = load(
        "[notifications]\nallowed_networks = [\"10.20.0.0/16\"]\nproxy = \"http://proxy.internal:3128\"\n",
        &[],
    )
    .expect("valid");
    assert_eq!(settings.notifications.allowed_networks.len(), 1);
    let bad_network = load(
        "[notifications]\nallowed_networks = [\"10.20.0.0/33\"]\n",
        &[],
    )
    .expect_err("not a network");
    assert!(
        bad_network.to_string().contains("allowed_networks"),
        "{bad_network}"
    );
    // Without a scheme too: reqwest reads `host:port` as http, but the proxy's host was then
    // unknown to the egress guard, which refused it, and every delivery failed.
    for proxy in [
        "not a url",
        "proxy.internal:3128",
        "ftp://proxy.internal:21",
    ] {
        let bad_proxy = load(&format!("[notifications]\nproxy = \"{proxy}\"\n"), &[])
            .expect_err("not a proxy URL");
        assert!(
            bad_proxy.to_string().contains("notifications.proxy"),
            "{bad_proxy}"
        );
    }
}

#[test]
fn lifetimes_and_retentions_out_of_range_are_refused() {
    for (var, value, message) in [
        ("APPROVALS_APPROVALS__DEFAULT_TTL", "3651d", "at most 3650d"),
        (
            "APPROVALS_APPROVALS__DECIDED_RETENTION",
            "0s",
            "at least 1s",
        ),
        (
            "APPROVALS_APPROVALS__EXPIRED_RETENTION",
            "0s",
            "at least 1s",
        ),
        ("APPROVALS_APPROVALS__AUDIT_RETENTION", "0s", "at least 1s"),
        // Past what Redis takes as a key's lifetime: every decision would fail.
        (
            "APPROVALS_APPROVALS__DECIDED_RETENTION",
            "300000000y",
            "at most 3650d",
        ),
        (
            "APPROVALS_APPROVALS__EXPIRED_RETENTION",
            "3651d",
            "at most 3650d",
        ),
        (
            "APPROVALS_APPROVALS__AUDIT_RETENTION",
            "3651d",
            "at most 3650d",
        ),
        ("APPROVALS_APPROVALS__STATS_INTERVAL", "6s", "at most 5s"),
    ] {
        let e = load("", &[(var, value)]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid(m) if m.contains(message)),
            "{var}={value}: {e}"
        );
    }
    assert!(load("", &[("APPROVALS_APPROVALS__DEFAULT_TTL", "3650d")]).is_ok());
    assert!(load("", &[("APPROVALS_APPROVALS__AUDIT_RETENTION", "3650d")]).is_ok());
    assert!(load("", &[("APPROVALS_APPROVALS__STATS_INTERVAL", "5s")]).is_ok());
}

#[test]
fn a_limit_or_deadline_of_zero_is_refused() {
    for (var, zero, some) in [
        ("APPROVALS_LIMITS__MAX_REQUESTS_PER_CALLER", "0", "1"),
        ("APPROVALS_LIMITS__MAX_LONG_POLLS_PER_CALLER", "0", "1"),
        ("APPROVALS_LIMITS__MAX_OBJECT_BYTES", "0", "1"),
        ("APPROVALS_REDIS__MAX_IN_FLIGHT", "0", "1"),
        ("APPROVALS_REDIS__CONNECTIONS", "0", "1"),
        ("APPROVALS_REDIS__AUDIT_MAX_LEN", "0", "1"),
        ("APPROVALS_APPROVALS__MAX_PENDING_PER_TENANT", "0", "1"),
        (
            "APPROVALS_APPROVALS__MAX_EVENT_STREAMS_PER_TENANT",
            "0",
            "1",
        ),
        ("APPROVALS_POLICY__MAX_BUNDLE_BYTES", "0", "1"),
        ("APPROVALS_POLICY__MAX_STORED_BUNDLES", "0", "1"),
        ("APPROVALS_SERVER__REQUEST_TIMEOUT", "0s", "3s"),
        ("APPROVALS_NOTIFICATIONS__REQUEST_TIMEOUT", "0s", "1s"),
        ("APPROVALS_APPROVALS__LONG_POLL_MAX", "0s", "1s"),
        ("APPROVALS_REDIS__CALL_TIMEOUT", "0s", "1s"),
        ("APPROVALS_TEMPORAL__CALL_TIMEOUT", "0s", "1s"),
        ("APPROVALS_TEMPORAL__SCAN_TIMEOUT", "0s", "1s"),
        ("APPROVALS_SERVER__WRITE_TIMEOUT", "0s", "1s"),
        ("APPROVALS_SERVER__HEADER_READ_TIMEOUT", "0s", "1s"),
        ("APPROVALS_SERVER__SHUTDOWN_GRACE", "0s", "1s"),
        ("APPROVALS_APPROVALS__EVENTS_MAX_DURATION", "0s", "1s"),
        ("APPROVALS_APPROVALS__EVENTS_RESUME_WINDOW", "0s", "1s"),
    ] {
        assert_must_be_positive(var, zero, some);
    }
}

#[test]
fn a_decision_log_url_without_a_scheme_is_refused() {
    let sink = ("APPROVALS_DECISION_LOG__SINK", "http");
    let e = load(
        "",
        &[
            sink,
            ("APPROVALS_DECISION_LOG__URL", "siem.internal:9000/ingest"),
        ],
    )
    .unwrap_err();
    assert!(e.to_string().contains("decision_log.url"), "{e}");
    assert!(load(
        "",
        &[
            sink,
            (
                "APPROVALS_DECISION_LOG__URL",
                "https://siem.internal/ingest"
            )
        ]
    )
    .is_ok());
}

#[test]
fn a_log_filter_that_would_log_nothing_is_refused() {
    for filter in ["", "warning", "info,approvals=loud"] {
        let e = load("", &[("APPROVALS_LOG__FILTER", filter)]).unwrap_err();
        assert!(e.to_string().contains("log.filter"), "{filter:?}: {e}");
    }
    for filter in ["warn", "info,approvals=debug,tower_http=warn"] {
        assert!(
            load("", &[("APPROVALS_LOG__FILTER", filter)]).is_ok(),
            "{filter:?}"
        );
    }
}

#[test]
fn a_file_key_an_environment_variable_overrides_is_noted() {
    let s = load(
        "[policy]\ndir = \"/etc/approvals/policies\"\n[server]\nbody_limit = 1000\n",
        &[
            ("APPROVALS_POLICY__DIR", "/opt/approvals/policies"),
            ("APPROVALS_LOG__FORMAT", "json"),
        ],
    )
    .unwrap();
    assert_eq!(
        s.policy.dir,
        std::path::PathBuf::from("/opt/approvals/policies")
    );
    assert_eq!(
        s.file_keys_overridden,
        ["APPROVALS_POLICY__DIR → policy.dir"],
        "only what the file sets too"
    );
}

#[test]
fn a_dual_mirror_deadline_past_the_request_deadline_is_refused() {
    let dual = |secondary: &str| {
        load(
            &format!(
                "[backend]\nkind = \"dual\"\nprimary = \"redis\"\nsecondary_timeout = \"{secondary}\"\n\
                 [server]\nrequest_timeout = \"30s\"\n"
            ),
            &[],
        )
    };
    let e = dual("30s").unwrap_err();
    assert!(e.to_string().contains("backend.secondary_timeout"), "{e}");
    assert!(dual("5s").is_ok());
    // After the primary's own call: a Temporal primary's 15 s and a 20 s mirror pass 30 s.
    let e = load(
        "[backend]\nkind = \"dual\"\nprimary = \"temporal\"\nsecondary_timeout = \"20s\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("temporal.call_timeout"), "{e}");
}

/// A Temporal decision answers 503 within one `temporal.call_timeout`: a request deadline as
/// short answered 408 instead, which reads as the client's own slowness.
#[test]
fn a_temporal_call_deadline_past_the_request_deadline_is_refused() {
    let e = load(
        "[backend]\nkind = \"temporal\"\n[temporal]\ncall_timeout = \"30s\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("temporal.call_timeout"), "{e}");
    assert!(load("[backend]\nkind = \"temporal\"\n", &[]).is_ok());
    // Redis alone never calls Temporal.
    assert!(load("[temporal]\ncall_timeout = \"30s\"\n", &[]).is_ok());
}

/// Below 625 ms no decision's update was sent to Temporal (every accept and reject answered
/// 503); half of a short request deadline got there unnoticed.
#[test]
fn a_temporal_call_deadline_too_short_for_a_decision_is_refused() {
    let e = load(
        "[backend]\nkind = \"temporal\"\n[temporal]\ncall_timeout = \"600ms\"\n",
        &[],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("temporal.call_timeout: at least 625ms"),
        "{e}"
    );
    let short_requests = [
        ("APPROVALS_SERVER__REQUEST_TIMEOUT", "1200ms"),
        ("APPROVALS_REDIS__CALL_TIMEOUT", "500ms"),
    ];
    let e = load("[backend]\nkind = \"temporal\"\n", &short_requests).unwrap_err();
    assert!(e.to_string().contains("server.request_timeout"), "{e}");
    assert!(load(
        "[backend]\nkind = \"temporal\"\n[temporal]\ncall_timeout = \"700ms\"\n",
        &short_requests
    )
    .is_ok());
    // Redis answering: Temporal, a soak's secondary at most, is bounded by secondary_timeout,
    // which must then leave a decision the time it needs to land (at 200 ms none did).
    assert!(load(
        "[backend]\nkind = \"dual\"\nprimary = \"redis\"\nsecondary_timeout = \"650ms\"\n",
        &short_requests
    )
    .is_ok());
    let e = load(
        "[backend]\nkind = \"dual\"\nprimary = \"redis\"\nsecondary_timeout = \"200ms\"\n",
        &short_requests,
    )
    .unwrap_err();
    assert!(e.to_string().contains("backend.secondary_timeout"), "{e}");
    assert!(load("", &short_requests).is_ok());
}

#[test]
fn a_long_poll_longer_than_the_contract_allows_is_refused() {
    let e = load("", &[("APPROVALS_APPROVALS__LONG_POLL_MAX", "300s")]).unwrap_err();
    assert!(e.to_string().contains("approvals.long_poll_max"), "{e}");
    assert!(load("", &[("APPROVALS_APPROVALS__LONG_POLL_MAX", "60s")]).is_ok());
    assert!(load("", &[("APPROVALS_APPROVALS__LONG_POLL_MAX", "20s")]).is_ok());
}

#[test]
fn deadlines_and_limits_that_contradict_each_other_are_refused() {
    let e = load(
        "",
        &[
            ("APPROVALS_SERVER__REQUEST_TIMEOUT", "2s"),
            ("APPROVALS_REDIS__CALL_TIMEOUT", "2s"),
        ],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("redis.call_timeout: must be shorter than server.request_timeout"),
        "{e}"
    );
    // A visibility walk that may outlast the request answers 408 for Temporal's slowness.
    let temporal = [("APPROVALS_BACKEND__KIND", "temporal")];
    let e = load(
        "",
        &[temporal[0], ("APPROVALS_TEMPORAL__SCAN_TIMEOUT", "30s")],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("temporal.scan_timeout: must be shorter than server.request_timeout"),
        "{e}"
    );
    assert!(load("", &temporal).is_ok(), "the defaults agree");
    // Left at their defaults, they follow a lowered request deadline: a configuration that
    // started before the rule still starts.
    let lowered = load(
        "",
        &[temporal[0], ("APPROVALS_SERVER__REQUEST_TIMEOUT", "12s")],
    )
    .expect("derived deadlines");
    assert_eq!(lowered.temporal.call_timeout, Duration::from_secs(6));
    assert_eq!(lowered.temporal.scan_timeout, Duration::from_secs(10));
    let e = load(
        "[temporal]\ncall_timeout = \"12s\"\n",
        &[temporal[0], ("APPROVALS_SERVER__REQUEST_TIMEOUT", "12s")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("temporal.call_timeout"), "{e}");
    let e = load("", &[("APPROVALS_SERVER__MAX_CONNECTIONS", "2000")]).unwrap_err();
    assert!(
        e.to_string()
            .contains("limits.max_long_polls_per_caller: must be below"),
        "{e}"
    );
    // One token's long-polls (2,000) and requests (256) at once: past half the connections,
    // a caution at start-up (a refusal would stop configurations that started before).
    let crowded = load("", &[("APPROVALS_SERVER__MAX_CONNECTIONS", "4511")]).expect("starts");
    let cautions = crowded.cautions();
    assert_eq!(cautions.len(), 1, "{cautions:?}");
    assert!(
        cautions[0].contains("(2256) is more than half of server.max_connections (4511)"),
        "{cautions:?}"
    );
    let roomy = load("", &[("APPROVALS_SERVER__MAX_CONNECTIONS", "4512")]).expect("starts");
    assert_eq!(roomy.cautions(), Vec::<String>::new());
    let e = load("", &[("APPROVALS_NOTIFICATIONS__SEND_CONCURRENCY", "12")]).unwrap_err();
    assert!(
        e.to_string()
            .contains("notifications.per_tenant_concurrency (8) must be at most half"),
        "{e}"
    );
    assert!(load("", &[("APPROVALS_NOTIFICATIONS__SEND_CONCURRENCY", "16")]).is_ok());
}

#[test]
fn retries_sandboxes_and_threads_out_of_range_are_refused() {
    let refused = |vars: &[(&str, &str)], key: &str| {
        let e = load("", vars).unwrap_err();
        assert!(e.to_string().contains(key), "{vars:?}: {e}");
    };
    refused(
        &[
            ("APPROVALS_NOTIFICATIONS__RETRY_BASE", "10m"),
            ("APPROVALS_NOTIFICATIONS__RETRY_MAX", "1m"),
        ],
        "notifications.retry_max",
    );
    refused(
        &[("APPROVALS_POLICY__SANDBOX__MEMORY_LIMIT_MIB", "1")],
        "policy.sandbox.memory_limit_mib",
    );
    refused(
        &[("APPROVALS_LIMITS__POLICY_CONCURRENCY", "100000")],
        "limits.policy_concurrency",
    );
    // Off, the sandbox's memory limit is not read.
    assert!(load(
        "",
        &[
            ("APPROVALS_POLICY__SANDBOX__ENABLED", "false"),
            ("APPROVALS_POLICY__SANDBOX__MEMORY_LIMIT_MIB", "1")
        ]
    )
    .is_ok());
}

#[test]
fn a_rust_log_naming_a_target_is_kept_and_one_naming_no_level_is_not() {
    for kept in [
        "approvals",
        "debug",
        "approvals=debug,tower_http=warn",
        "info,approvals::api",
    ] {
        assert!(check_env_log_filter(kept).is_ok(), "{kept}");
    }
    for refused in ["warning", "info,err", "NONE"] {
        assert!(check_env_log_filter(refused).is_err(), "{refused}");
    }
}

/// With the defaults, a receiver down for a deploy or an incident (over an hour) misses no
/// notification, and one that stays down has an attempt fail in every 10 minutes, as
/// `ApprovalsWebhooksFailing` expects, until the delivery goes dead. (The defaults were 8
/// attempts and at most 1 h between them: given up after about 4 minutes.)
#[test]
fn default_webhook_retries_outlast_an_outage_and_keep_the_alert_fed() {
    let settings = NotificationSettings::default();
    let jitter = crate::notify::JITTER;
    let waits: Vec<Duration> = (1..settings.max_attempts)
        .map(|attempt| settings.retry_after(attempt))
        .collect();
    let shortest_total: Duration = waits.iter().map(|w| w.mul_f64(jitter.start)).sum();
    assert!(
        shortest_total >= Duration::from_secs(80 * 60),
        "deliveries are given up after {shortest_total:?}"
    );
    let longest_gap = waits
        .iter()
        .map(|w| w.mul_f64(jitter.end) + settings.request_timeout)
        .max()
        .unwrap_or_default();
    assert!(
        longest_gap < Duration::from_secs(10 * 60),
        "{longest_gap:?} between two attempts"
    );
}

/// A decision on Temporal after a worker crash waits out the sticky queue's timeout; a call
/// deadline that leaves less is named at start-up (the default request timeout's derived
/// deadline leaves enough, a 15 s one's does not).
#[test]
fn a_temporal_deadline_shorter_than_the_sticky_timeout_is_named() {
    let on_temporal = "[backend]\nkind = \"temporal\"\n";
    let fine = load(on_temporal, &[]).unwrap();
    assert_eq!(fine.cautions(), Vec::<String>::new());
    let short = load(
        &format!("{on_temporal}[server]\nrequest_timeout = \"15s\"\n"),
        &[],
    )
    .unwrap();
    let cautions = short.cautions();
    assert_eq!(cautions.len(), 1, "{cautions:?}");
    assert!(
        cautions[0].contains("temporal.call_timeout (7s 500ms)")
            && cautions[0].contains("temporal.sticky_queue_timeout (10s)"),
        "{cautions:?}"
    );
    let lowered = load(
        &format!(
            "{on_temporal}[server]\nrequest_timeout = \"15s\"\n\
             [temporal]\nsticky_queue_timeout = \"5s\"\n"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(lowered.cautions(), Vec::<String>::new());
    // Redis answering: Temporal's deadlines are not the decisions'.
    let redis = load("[server]\nrequest_timeout = \"15s\"\n", &[]).unwrap();
    assert_eq!(redis.cautions(), Vec::<String>::new());
}

/// Tokens are a list of tables, which a variable holds as TOML's inline form (the compose
/// files said no variable could).
#[test]
fn tokens_can_be_given_as_one_variable() {
    let digest = "ab".repeat(32);
    let s = load(
        "",
        &[(
            "APPROVALS_AUTH__TOKENS",
            &format!("[{{subject=\"bot\",tenant=\"acme\",role=\"agent\",sha256=\"{digest}\"}}]"),
        )],
    )
    .unwrap();
    assert_eq!(s.auth.tokens.len(), 1);
    assert_eq!(s.auth.tokens[0].subject, "bot");
    assert_eq!(s.auth.tokens[0].sha256, digest);
}

/// A configuration error goes to the container's log: it names the key and what was wrong,
/// never the value, which may be a secret. figment quoted a TOML line with its syntax error
/// (a Redis URL whose closing quote is missing) and the value of a mistyped variable.
#[test]
fn a_configuration_error_never_quotes_a_value() {
    let secret = "hunter2-S3CRET";
    for (toml, env) in [
        (
            format!("[redis]\nurl = \"redis://:{secret}@r:6379/0\n"),
            vec![],
        ),
        (
            String::new(),
            vec![("APPROVALS_REDIS", format!("redis://:{secret}@r:6379/0"))],
        ),
        (
            "[ui]\nsession_secret = 123456789012345678\n".to_owned(),
            vec![],
        ),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let message = load(&toml, &env).expect_err("refused").to_string();
        assert!(
            !message.contains(secret) && !message.contains("123456789012345678"),
            "{message}"
        );
        assert!(
            message.contains("redis") || message.contains("ui") || message.contains("line"),
            "{message}"
        );
    }
    let message = load("[redis]\nurl = \"unclosed\n", &[])
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains("line 2") && message.contains("not valid TOML"),
        "{message}"
    );
    // An error at a line's start is on that line, not the one before.
    let message = load("[redis]\nurl = \"a\"\nurl = \"b\"\n", &[])
        .expect_err("refused")
        .to_string();
    assert!(message.contains("line 3"), "{message}");
}

/// A unit mistyped (`10ms` for `10m`) is refused, naming the key and its floor: it made a
/// background loop a busy one against the shared Redis, or every wait return at once.
#[test]
fn a_loop_interval_below_its_floor_is_refused() {
    for (var, below, floor) in [
        ("APPROVALS_APPROVALS__ADOPT_INTERVAL", "10ms", "100ms"),
        ("APPROVALS_APPROVALS__EVENTS_POLL_INTERVAL", "1ms", "10ms"),
        ("APPROVALS_NOTIFICATIONS__POLL_INTERVAL", "1ns", "10ms"),
        ("APPROVALS_APPROVALS__LONG_POLL_MAX", "1ms", "1s"),
        ("APPROVALS_SERVER__HEADER_READ_TIMEOUT", "10ms", "1s"),
        ("APPROVALS_SERVER__WRITE_TIMEOUT", "10ms", "1s"),
        ("APPROVALS_SERVER__SHUTDOWN_GRACE", "30ms", "1s"),
    ] {
        let e = load("", &[(var, below)]).unwrap_err().to_string();
        let key = var["APPROVALS_".len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        assert!(
            e.contains(&format!("{key}: at least {floor}")),
            "{var}: {e}"
        );
        assert!(load("", &[(var, floor)]).is_ok(), "{var} at {floor}");
    }
    assert_must_be_positive("APPROVALS_NOTIFICATIONS__POLL_INTERVAL", "0s", "1s");
    let e = load("", &[("APPROVALS_SERVER__REQUEST_TIMEOUT", "10ms")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.request_timeout: at least 100ms"), "{e}");
}

/// An empty Temporal namespace or task queue is refused at start-up, naming the key: every
/// workflow call failed at run time, with the service started and ready.
#[test]
fn an_empty_temporal_namespace_or_task_queue_is_refused() {
    for key in ["namespace", "task_queue"] {
        let e = load(&format!("[temporal]\n{key} = \" \"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("temporal.{key}: must not be empty")),
            "{e}"
        );
    }
}

/// An empty variable unsets its key: the image sets `APPROVALS_SERVER__METRICS_LISTEN`, which a
/// container cannot remove, so `/metrics` could not go back to `server.listen` (an empty value
/// was refused as a socket address). A key that cannot be unset says so.
#[test]
fn an_empty_variable_unsets_an_optional_key() {
    let s = load(
        "[server]\nmetrics_listen = \"0.0.0.0:9\"\n",
        &[("APPROVALS_SERVER__METRICS_LISTEN", "")],
    )
    .unwrap();
    assert_eq!(s.server.metrics_listen, None);
    let e = load("", &[("APPROVALS_SERVER__LISTEN", "")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.listen"), "{e}");
}

/// `temporal.address` is a URL, checked at load naming the key: written as Temporal's CLI
/// takes it, it failed only at connect ("cannot reach Temporal"), and with `dual` and primary
/// `redis` the service started, ready, and mirrored nothing.
#[test]
fn a_temporal_address_that_is_not_a_url_is_refused_naming_the_key() {
    for address in [
        "temporal:7233",
        "127.0.0.1:7233",
        "grpc://temporal:7233",
        "http://",
    ] {
        let toml = format!("[temporal]\naddress = \"{address}\"\n");
        let e = load(&toml, &[]).unwrap_err();
        assert!(e.to_string().contains("temporal.address"), "{address}: {e}");
    }
    for address in ["http://temporal:7233", "https://temporal.example:443"] {
        let toml = format!("[temporal]\naddress = \"{address}\"\n");
        assert!(load(&toml, &[]).is_ok(), "{address}");
    }
}

/// A bad per-tenant TTL in the file is blamed on the file and named by its tenant, not on a
/// variable that sets another tenant's TTL correctly.
#[test]
fn a_bad_tenant_ttl_names_its_tenant_and_its_source() {
    let e = load(
        "[approvals.tenant_ttl]\nacme = \"three days\"\n",
        &[("APPROVALS_APPROVALS__TENANT_TTL__GLOBEX", "72h")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("approvals.tenant_ttl.acme: "), "{e}");
    assert!(e.contains("(file "), "{e}");
    assert!(!e.contains("GLOBEX"), "{e}");
    let e = load(
        "",
        &[("APPROVALS_APPROVALS__TENANT_TTL__GLOBEX", "seventy hours")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("approvals.tenant_ttl.globex: ")
            && e.contains("(from APPROVALS_APPROVALS__TENANT_TTL__GLOBEX)"),
        "{e}"
    );
}
