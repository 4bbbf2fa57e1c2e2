//! The harness: the real application on a free port, on a real backend, and tokens for every
//! role. zero2prod-style: tests talk HTTP to what `approvals serve` runs.
//!
//! Contract tests take a [`Harness`] and are listed in [`contract_tests!`], which runs each of
//! them on every backend this build has: Redis (a redis-server of the test's own) and, with
//! `--features temporal`, Temporal (the binary's shared dev server and in-process worker, with
//! tenants of the test's own). Tests of one engine's internals take no harness.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use approvals::auth::{mint, Role, TokenEntry};
use approvals::config::Settings;
use approvals::startup::Application;
use approvals_testkit::RedisServer;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The tenants of a Redis-backed app (its Redis is its own, so the names can be fixed).
pub const TENANT: &str = "acme";
pub const OTHER_TENANT: &str = "globex";

/// Runs each named `async fn(Harness)` of the calling module as a test on every backend:
/// `on_redis::name` and, with the `temporal` feature, `on_temporal::name`.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod on_redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Harness::new($crate::support::Backend::Redis))
                        .await
                }
            )*
        }
        #[cfg(feature = "temporal")]
        mod on_temporal {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(
                        $crate::support::Harness::new($crate::support::Backend::Temporal),
                    )
                    .await
                }
            )*
        }
    };
}

/// Which engine the service under test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    #[cfg(feature = "temporal")]
    Temporal,
}

/// What a contract test gets: its backend and tenants nobody else uses on that backend.
pub struct Harness {
    pub backend: Backend,
    pub tenant: String,
    pub other_tenant: String,
}

impl Harness {
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Redis => Self {
                backend,
                tenant: TENANT.into(),
                other_tenant: OTHER_TENANT.into(),
            },
            // One Temporal server for the whole binary: tenants must be unique instead.
            #[cfg(feature = "temporal")]
            Backend::Temporal => Self {
                backend,
                tenant: approvals_core::conformance::fresh_tenant(TENANT).to_string(),
                other_tenant: approvals_core::conformance::fresh_tenant(OTHER_TENANT).to_string(),
            },
        }
    }

    pub async fn spawn(&self) -> TestApp {
        self.spawn_with(|_| {}).await
    }

    /// With `adjust` applied to the settings before start.
    pub async fn spawn_with(&self, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        match self.backend {
            Backend::Redis => {
                TestApp::spawn_on(Some(RedisServer::start().await), self, adjust).await
            }
            #[cfg(feature = "temporal")]
            Backend::Temporal => {
                let shared = temporal::shared().await;
                TestApp::spawn_on(None, self, |settings| {
                    temporal::point_at(settings, &shared);
                    adjust(settings);
                })
                .await
            }
        }
    }

    /// With tenants' bundles and webhooks in Redis whichever engine answers
    /// (`tenant_store.kind = "redis"`): on Temporal, beside its own redis-server.
    pub async fn spawn_with_tenant_store(&self, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let redis = RedisServer::start().await;
        let with_store = |settings: &mut Settings| {
            settings.tenant_store.kind = approvals::config::TenantStoreKind::Redis;
            adjust(settings);
        };
        match self.backend {
            Backend::Redis => TestApp::spawn_on(Some(redis), self, with_store).await,
            #[cfg(feature = "temporal")]
            Backend::Temporal => {
                let shared = temporal::shared().await;
                TestApp::spawn_on(Some(redis), self, |settings| {
                    temporal::point_at(settings, &shared);
                    with_store(settings);
                })
                .await
            }
        }
    }
}

/// One Temporal dev server and one in-process worker for the whole test binary.
#[cfg(feature = "temporal")]
mod temporal {
    use std::time::Duration;

    use approvals::config::{BackendChoice, Settings};
    use approvals_temporal::TemporalSettings;

    pub use crate::shared_temporal::shared;

    /// The service's settings for that server and the worker's task queue.
    pub fn point_at(settings: &mut Settings, shared: &TemporalSettings) {
        settings.backend = BackendChoice::Temporal;
        settings.temporal.address = shared.address.clone();
        settings.temporal.task_queue = shared.task_queue.clone();
        // Every app scans the shared namespace for its pending figures: not five times a second.
        settings.approvals.stats_interval = Duration::from_secs(1);
        // The 40-way race queues 40 updates on one workflow: on a loaded two-core machine the
        // last is answered after more than the 5 s default.
        settings.temporal.call_timeout = Duration::from_secs(20);
    }
}

/// Every kind of caller a test may need.
pub struct Tokens {
    pub agent: String,
    pub agent2: String,
    pub reviewer: String,
    pub reviewer2: String,
    pub admin: String,
    pub platform_admin: String,
    pub other_tenant_reviewer: String,
    pub other_tenant_agent: String,
}

impl Tokens {
    fn mint(tenant: &str, other_tenant: &str) -> (Self, Vec<TokenEntry>) {
        let mut entries = Vec::new();
        let mut token = |tenant: &str, role: Role, subject: &str| {
            let (token, entry) = mint(tenant, role, subject);
            entries.push(entry);
            token
        };
        let tokens = Self {
            agent: token(tenant, Role::Agent, "agent-1"),
            agent2: token(tenant, Role::Agent, "agent-2"),
            reviewer: token(tenant, Role::Reviewer, "alice"),
            reviewer2: token(tenant, Role::Reviewer, "bob"),
            admin: token(tenant, Role::Admin, "carol"),
            platform_admin: token("*", Role::Admin, "root"),
            other_tenant_reviewer: token(other_tenant, Role::Reviewer, "mallory"),
            other_tenant_agent: token(other_tenant, Role::Agent, "globex-agent"),
        };
        (tokens, entries)
    }
}

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Settings for a test: the repo's policies, fast background loops, the given Redis.
pub fn test_settings(redis_url: &str, tokens: Vec<TokenEntry>) -> Settings {
    let mut settings = Settings::default();
    settings.server.listen = "127.0.0.1:0".parse().expect("addr");
    settings.redis.url = redis_url.to_owned();
    settings.policy.dir = repo_path("policies");
    // The service runs in this test process: its sandbox children are the real binary.
    settings.policy.sandbox.binary = Some(env!("CARGO_BIN_EXE_approvals").into());
    settings.auth.tokens = tokens;
    settings.approvals.sweep_interval = Duration::from_millis(100);
    settings.approvals.stats_interval = Duration::from_millis(200);
    settings.approvals.adopt_interval = Duration::from_millis(500);
    settings
}

pub struct TestApp {
    pub base: String,
    /// The tenant every helper below acts in (the `other_tenant_*` tokens are of another).
    pub tenant: String,
    pub tokens: Tokens,
    pub http: reqwest::Client,
    /// The app's own redis-server; `None` on Temporal (unless it keeps a tenant store).
    pub redis: Option<RedisServer>,
    settings: Settings,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    /// On Redis, for tests of the Redis engine itself.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// On Redis, with `adjust` applied to the settings before start.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Harness::new(Backend::Redis).spawn_with(adjust).await
    }

    /// On a Redis with AOF (`appendfsync always`), for tests that restart it.
    pub async fn spawn_durable() -> Self {
        let harness = Harness::new(Backend::Redis);
        Self::spawn_on(Some(RedisServer::start_durable().await), &harness, |s| {
            s.redis.call_timeout = Duration::from_secs(1)
        })
        .await
    }

    async fn spawn_on(
        redis: Option<RedisServer>,
        harness: &Harness,
        adjust: impl FnOnce(&mut Settings),
    ) -> Self {
        let (tokens, entries) = Tokens::mint(&harness.tenant, &harness.other_tenant);
        let redis_url = redis
            .as_ref()
            .map_or_else(|| Settings::default().redis.url, RedisServer::url);
        let mut settings = test_settings(&redis_url, entries);
        adjust(&mut settings);
        let (base, stop, server) = serve(settings.clone()).await;
        Self {
            base,
            tenant: harness.tenant.clone(),
            tokens,
            http: reqwest::Client::new(),
            redis,
            settings,
            stop,
            server: Some(server),
        }
    }

    /// The app's redis-server: only Redis-engine tests call this.
    pub fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("a Redis-backed app")
    }

    /// A second instance of the service on the same backend and tokens.
    pub async fn second_instance(&self) -> (String, CancellationToken) {
        self.second_instance_with(|_| {}).await
    }

    /// [`Self::second_instance`] with `adjust` applied to its settings.
    pub async fn second_instance_with(
        &self,
        adjust: impl FnOnce(&mut Settings),
    ) -> (String, CancellationToken) {
        let mut settings = self.settings.clone();
        adjust(&mut settings);
        settings.auth.tokens = self.token_entries();
        let (base, stop, _server) = serve(settings).await;
        (base, stop)
    }

    /// This app's settings as a config file for `approvals serve --config`, listening on
    /// `port`: another instance, in a process of its own, on the same backend and tokens.
    pub fn config_file(&self, dir: &std::path::Path, port: u16) -> std::path::PathBuf {
        let mut settings = self.settings.clone();
        settings.auth.tokens = self.token_entries();
        settings.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let path = dir.join("approvals.toml");
        let text = toml::to_string(&settings).expect("settings as TOML");
        std::fs::write(&path, text).expect("write the config file");
        path
    }

    fn token_entries(&self) -> Vec<TokenEntry> {
        let t = &self.tokens;
        let entry = |token: &str, tenant: &str, role, subject: &str| TokenEntry {
            subject: subject.into(),
            tenant: tenant.into(),
            role,
            sha256: approvals::auth::digest_hex(token),
        };
        vec![
            entry(&t.agent, &self.tenant, Role::Agent, "agent-1"),
            entry(&t.reviewer, &self.tenant, Role::Reviewer, "alice"),
            entry(&t.reviewer2, &self.tenant, Role::Reviewer, "bob"),
            entry(&t.admin, &self.tenant, Role::Admin, "carol"),
        ]
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Submits `action` as the agent, with a request id; returns the response.
    pub async fn submit(&self, request_id: &str, action: Value) -> Response {
        self.request(
            Method::POST,
            &format!("/v1/tenants/{}/approvals", self.tenant),
            Some(&self.tokens.agent),
        )
        .json(&json!({"request_id": request_id, "action": action, "context": {"ticket": "T-1"}}))
        .send()
        .await
        .expect("submit")
    }

    /// Submits, as the agent, an action the default policy parks to the instance at `base`
    /// (another instance of the same service); returns the response.
    pub async fn submit_on(&self, base: &str, request_id: &str) -> Response {
        self.http
            .post(format!("{base}/v1/tenants/{}/approvals", self.tenant))
            .bearer_auth(&self.tokens.agent)
            .json(&json!({"request_id": request_id, "action": sensitive_read()}))
            .send()
            .await
            .expect("submit")
    }

    /// Parks `rounds` approvals on the instance at `other`, each followed by one on this
    /// instance: what it writes itself a reader here sees at once, the other's a moment later
    /// on Temporal. Returns every id parked.
    pub async fn park_alternately(&self, other: &str, rounds: usize) -> BTreeSet<String> {
        let mut parked = BTreeSet::new();
        for n in 0..rounds {
            let elsewhere = format!("elsewhere-{n}");
            let response = self.submit_on(other, &elsewhere).await;
            assert_eq!(
                response.status(),
                StatusCode::CREATED,
                "parking {elsewhere}"
            );
            let here = format!("here-{n}");
            self.park(&here).await;
            parked.extend([elsewhere, here]);
        }
        parked
    }

    /// Submits an action the default policy parks, and checks it was parked.
    pub async fn park(&self, request_id: &str) -> Value {
        let response = self.submit(request_id, sensitive_read()).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "parking {request_id}"
        );
        response.json::<Value>().await.expect("json")["approval"].clone()
    }

    /// [`Self::park`], the action submitted for `agent` (its `agent_id`).
    pub async fn park_for_agent(&self, request_id: &str, agent: &str) -> Value {
        let body = json!({"request_id": request_id, "action": sensitive_read(), "agent_id": agent});
        self.park_with(&self.tokens.agent, request_id, body).await
    }

    /// [`Self::park_for_agent`] with about 14 kB of padding in the action and in the context,
    /// within the input limits (strings of 2,048 characters, objects of 16 KiB): records near
    /// the largest size, for what a page of them costs.
    pub async fn park_large_for_agent(&self, request_id: &str, agent: &str) -> Value {
        let filler: serde_json::Map<String, Value> = (0..7)
            .map(|n| (format!("note_{n}"), json!("x".repeat(2_000))))
            .collect();
        let mut action = sensitive_read();
        action
            .as_object_mut()
            .expect("an object")
            .extend(filler.clone());
        let body = json!({
            "request_id": request_id,
            "action": action,
            "agent_id": agent,
            "context": filler,
        });
        self.park_with(&self.tokens.agent, request_id, body).await
    }

    /// Parks an action the default policy parks, submitted with `token` (an admin's: its own
    /// submission, which it may not decide); returns the approval.
    pub async fn park_as(&self, token: &str, request_id: &str) -> Value {
        let body = json!({"request_id": request_id, "action": sensitive_read()});
        self.park_with(token, request_id, body).await
    }

    /// Submits `body` with `token`, checks it was parked, and returns the approval.
    async fn park_with(&self, token: &str, request_id: &str, body: Value) -> Value {
        let response = self
            .request(
                Method::POST,
                &format!("/v1/tenants/{}/approvals", self.tenant),
                Some(token),
            )
            .json(&body)
            .send()
            .await
            .expect("submit");
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "parking {request_id}"
        );
        response.json::<Value>().await.expect("json")["approval"].clone()
    }

    pub async fn decide(&self, request_id: &str, verdict: &str, token: &str) -> Response {
        self.request(
            Method::POST,
            &format!(
                "/v1/tenants/{}/approvals/{request_id}/{verdict}",
                self.tenant
            ),
            Some(token),
        )
        .json(&json!({"reason": "checked"}))
        .send()
        .await
        .expect("decide")
    }

    pub async fn get(&self, request_id: &str, token: &str) -> Response {
        self.request(
            Method::GET,
            &format!("/v1/tenants/{}/approvals/{request_id}", self.tenant),
            Some(token),
        )
        .send()
        .await
        .expect("get")
    }

    /// GET `path` with `token`, answered 200, as JSON.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let response = self
            .request(Method::GET, path, Some(token))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.expect("json")
    }

    /// The app's `/metrics` text, as scraped now.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await;
        response
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Polls `{base}/metrics` until `ready` holds for its text (the event a test waits for,
    /// not a guessed delay); panics naming `what` after `within`. Returns the text.
    pub async fn metrics_until(
        &self,
        base: &str,
        within: Duration,
        what: &str,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        crate::metrics::metrics_until(&self.http, base, within, what, ready).await
    }

    /// Every approval of the app's tenant, in any status, as the API lists them: what "nothing
    /// was stored" means on any backend.
    pub async fn listed(&self) -> Vec<Value> {
        let mut all = Vec::new();
        for status in ["pending", "accepted", "rejected", "expired"] {
            let page = self
                .get_json(
                    &format!("/v1/tenants/{}/approvals?status={status}", self.tenant),
                    &self.tokens.admin,
                )
                .await;
            all.extend(page["items"].as_array().cloned().unwrap_or_default());
        }
        all
    }

    /// No approval record exists in the tenant: none listed, and on Redis no `approval:*` key
    /// at all (not even one that no index points to).
    pub async fn assert_nothing_stored(&self) {
        assert_eq!(
            self.listed().await,
            Vec::<Value>::new(),
            "nothing was stored"
        );
        if self.redis.is_some() {
            let records: Vec<String> = self
                .redis_keys()
                .await
                .into_iter()
                .filter(|k| k.starts_with("approval:"))
                .collect();
            assert!(
                records.is_empty(),
                "no approval record in Redis: {records:?}"
            );
        }
    }

    /// How often Redis has run `command` so far (`INFO commandstats`): what a test counts to
    /// show work that is, or is not, done.
    pub async fn redis_calls(&self, command: &str) -> u64 {
        self.redis().calls(command).await
    }

    pub async fn redis_keys(&self) -> Vec<String> {
        let mut conn = self.redis().connection().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        // The readiness check's own write, not anything a request stored.
        keys.retain(|k| k != "approvals:write_probe");
        keys.sort();
        keys
    }

    /// Stops this instance and starts a new one with the same settings, backend and tokens
    /// (on a new port).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await
    }

    /// [`Self::restart`], with `adjust` applied to the settings first (a changed config).
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut Settings)) {
        adjust(&mut self.settings);
        self.shut_down().await.expect("stopped");
        let (base, stop, server) = serve(self.settings.clone()).await;
        self.base = base;
        self.stop = stop;
        self.server = Some(server);
    }

    /// Stops the service as SIGTERM would and waits for it to finish draining.
    pub async fn shut_down(&mut self) -> std::io::Result<()> {
        self.stop.cancel();
        match self.server.take() {
            Some(server) => server.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    settings: Settings,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let app = Application::build(settings)
        .await
        .expect("application builds");
    let base = format!("http://{}", app.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let server = tokio::spawn(app.run_until(async move { signal.cancelled().await }));
    (base, stop, server)
}

/// `ACL SETUSER default <rule>`: lets a test make Redis refuse (or allow again) one command.
pub fn acl_rule(rule: &str) -> redis::Cmd {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg(rule)
        .to_owned()
}

/// A read the default bundle sends to a reviewer.
pub fn sensitive_read() -> Value {
    json!({"type": "document_read", "resource": "finance/q3-report"})
}

/// Asserts a problem+json answer with `status` and `code`; returns the body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "status for expected code {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(),
        "{body}"
    );
    body
}

/// Lifts this process's open-files limit to its hard limit: a test holding thousands of
/// connections holds a descriptor at each end of them, both in this one process.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
