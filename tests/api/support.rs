//! The harness: the real application on a free port, a real redis-server of its own, and
//! tokens for every role. zero2prod-style: tests talk HTTP to what `approvals serve` runs.

use std::path::PathBuf;
use std::time::Duration;

use approvals::auth::{mint, Role, TokenEntry};
use approvals::config::Settings;
use approvals::startup::Application;
use approvals_testkit::RedisServer;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const TENANT: &str = "acme";
pub const OTHER_TENANT: &str = "globex";

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
    fn mint() -> (Self, Vec<TokenEntry>) {
        let mut entries = Vec::new();
        let mut token = |tenant: &str, role: Role, subject: &str| {
            let (token, entry) = mint(tenant, role, subject);
            entries.push(entry);
            token
        };
        let tokens = Self {
            agent: token(TENANT, Role::Agent, "agent-1"),
            agent2: token(TENANT, Role::Agent, "agent-2"),
            reviewer: token(TENANT, Role::Reviewer, "alice"),
            reviewer2: token(TENANT, Role::Reviewer, "bob"),
            admin: token(TENANT, Role::Admin, "carol"),
            platform_admin: token("*", Role::Admin, "root"),
            other_tenant_reviewer: token(OTHER_TENANT, Role::Reviewer, "mallory"),
            other_tenant_agent: token(OTHER_TENANT, Role::Agent, "globex-agent"),
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
    settings.auth.tokens = tokens;
    settings.approvals.sweep_interval = Duration::from_millis(100);
    settings.approvals.stats_interval = Duration::from_millis(200);
    settings.approvals.adopt_interval = Duration::from_millis(500);
    settings
}

pub struct TestApp {
    pub base: String,
    pub tokens: Tokens,
    pub http: reqwest::Client,
    pub redis: RedisServer,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// With `adjust` applied to the settings before start.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_on(RedisServer::start().await, adjust).await
    }

    /// On a Redis with AOF (`appendfsync always`), for tests that restart it.
    pub async fn spawn_durable() -> Self {
        Self::spawn_on(RedisServer::start_durable().await, |s| {
            s.redis.call_timeout = Duration::from_secs(1);
        })
        .await
    }

    async fn spawn_on(redis: RedisServer, adjust: impl FnOnce(&mut Settings)) -> Self {
        let (tokens, entries) = Tokens::mint();
        let mut settings = test_settings(&redis.url(), entries);
        adjust(&mut settings);
        let (base, stop, server) = serve(settings).await;
        Self {
            base,
            tokens,
            http: reqwest::Client::new(),
            redis,
            stop,
            server: Some(server),
        }
    }

    /// A second instance of the service on the same Redis and tokens.
    pub async fn second_instance(&self) -> (String, CancellationToken) {
        let mut settings = test_settings(&self.redis.url(), Vec::new());
        settings.auth.tokens = self.token_entries();
        let (base, stop, _server) = serve(settings).await;
        (base, stop)
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
            entry(&t.agent, TENANT, Role::Agent, "agent-1"),
            entry(&t.reviewer, TENANT, Role::Reviewer, "alice"),
            entry(&t.reviewer2, TENANT, Role::Reviewer, "bob"),
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
            &format!("/v1/tenants/{TENANT}/approvals"),
            Some(&self.tokens.agent),
        )
        .json(&json!({"request_id": request_id, "action": action, "context": {"ticket": "T-1"}}))
        .send()
        .await
        .expect("submit")
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

    pub async fn decide(&self, request_id: &str, verdict: &str, token: &str) -> Response {
        self.request(
            Method::POST,
            &format!("/v1/tenants/{TENANT}/approvals/{request_id}/{verdict}"),
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
            &format!("/v1/tenants/{TENANT}/approvals/{request_id}"),
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

    /// Polls `{base}/metrics` until `ready` holds for its text (the event a test waits for,
    /// not a guessed delay); panics naming `what` after `within`. Returns the text.
    pub async fn metrics_until(
        &self,
        base: &str,
        within: Duration,
        what: &str,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let text = self
                .http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            if ready(&text) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} never happened:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn redis_keys(&self) -> Vec<String> {
        let mut conn = self.redis.connection().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        keys.sort();
        keys
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
