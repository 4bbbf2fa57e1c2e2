//! The api-v1 calls the scenarios make, as pre-built requests on lean connections.

use serde_json::Value;

use crate::http::{authority, Connection, Request, Response};
use crate::report::sum_waiter_samples;

/// The action every scenario submits: our default policy answers `require_approval` for a
/// finance read, and the ADR peer has no policy engine (it always does).
pub const SUBMIT_BODY: &str = r#"{"action":{"type":"document_read","resource":"finance/q3-report"},"context":{"on_behalf_of":"project_alpha","purpose":"benchmark"}}"#;
const DECIDE_BODY: &str = "{}";

/// Why one operation failed, as a short label for `error_kinds`.
#[derive(Debug)]
pub struct OpError {
    pub kind: String,
    /// A connection-level failure: the connection is dropped and reopened.
    pub transport: bool,
}

impl OpError {
    pub fn status(call: &str, status: u16) -> Self {
        Self {
            kind: format!("{call}_{status}"),
            transport: false,
        }
    }

    pub fn transport(call: &str, err: &std::io::Error) -> Self {
        let what = match err.kind() {
            std::io::ErrorKind::ConnectionRefused => "connect",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "transport",
        };
        Self {
            kind: format!("{call}_{what}"),
            transport: true,
        }
    }

    pub fn other(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            transport: false,
        }
    }
}

/// One server (of one or more instances behind the same Redis) and the calls against it.
pub struct Api {
    /// `host:port` of every instance; workers are spread over them in turn.
    pub instances: Vec<String>,
    approvals_path: String,
    agent: String,
    reviewer: String,
    pub submit: Request,
}

impl Api {
    pub fn new(urls: &[String], tenant: &str, agent: &str, reviewer: &str) -> Result<Self, String> {
        let instances = urls
            .iter()
            .map(|u| authority(u))
            .collect::<Result<Vec<_>, _>>()?;
        if instances.is_empty() {
            return Err("no --url given".into());
        }
        let approvals_path = format!("/v1/tenants/{tenant}/approvals");
        Ok(Self {
            submit: Request::new("POST", &approvals_path, agent, Some(SUBMIT_BODY)),
            instances,
            approvals_path,
            agent: agent.to_owned(),
            reviewer: reviewer.to_owned(),
        })
    }

    pub fn accept_request(&self, id: &str) -> Request {
        let path = format!("{}/{id}/accept", self.approvals_path);
        Request::new("POST", &path, &self.reviewer, Some(DECIDE_BODY))
    }

    pub fn get_request(&self, id: &str) -> Request {
        let path = format!("{}/{id}", self.approvals_path);
        Request::new("GET", &path, &self.agent, None)
    }

    pub fn wait_path(&self, id: &str, wait_seconds: u64) -> String {
        format!(
            "{}/{id}/decision?wait_seconds={wait_seconds}",
            self.approvals_path
        )
    }

    pub fn wait_request(&self, id: &str, wait_seconds: u64) -> Request {
        Request::new("GET", &self.wait_path(id, wait_seconds), &self.agent, None)
    }

    pub fn agent_token(&self) -> &str {
        &self.agent
    }

    pub async fn connect(&self, worker: usize) -> Result<Connection, OpError> {
        let instance = &self.instances[worker % self.instances.len()];
        Connection::open(instance)
            .await
            .map_err(|e| OpError::transport("connect", &e))
    }

    /// Submits one approval; `201` is the only success. Returns the approval's id when asked.
    pub async fn submit(
        &self,
        conn: &mut Connection,
        want_id: bool,
    ) -> Result<Option<String>, OpError> {
        let response = conn
            .call(&self.submit)
            .await
            .map_err(|e| OpError::transport("submit", &e))?;
        if response.status != 201 {
            return Err(OpError::status("submit", response.status));
        }
        if !want_id {
            return Ok(None);
        }
        approval_id(&response).map(Some)
    }

    /// `expect`-status call of `request`.
    pub async fn expect(
        &self,
        conn: &mut Connection,
        call: &str,
        request: &Request,
        expect: u16,
    ) -> Result<Response, OpError> {
        let response = conn
            .call(request)
            .await
            .map_err(|e| OpError::transport(call, &e))?;
        if response.status == expect {
            Ok(response)
        } else {
            Err(OpError::status(call, response.status))
        }
    }

    /// The sum of the server's waiter gauge, or `None` when /metrics is absent or has none.
    pub async fn waiter_gauge(&self, exact: Option<&str>) -> Option<f64> {
        let mut conn = Connection::open(&self.instances[0]).await.ok()?;
        let response = conn
            .call(&Request::new("GET", "/metrics", "-", None))
            .await
            .ok()?;
        if response.status != 200 {
            return None;
        }
        sum_waiter_samples(response.body_text(), exact)
    }

    /// One submit (and accept) before measuring, so a misconfigured run fails loudly with the
    /// server's answer instead of reporting a throughput of errors.
    pub async fn preflight(&self, decide: bool) -> Result<(), String> {
        for (worker, instance) in self.instances.iter().enumerate() {
            let mut conn = self
                .connect(worker)
                .await
                .map_err(|e| format!("preflight: cannot connect to {instance}: {}", e.kind))?;
            let response = conn
                .call(&self.submit)
                .await
                .map_err(|e| format!("preflight submit to {instance}: {e}"))?;
            if response.status != 201 {
                return Err(format!(
                    "preflight submit: expected 201 (require_approval), got {}: {}",
                    response.status,
                    response.body_text()
                ));
            }
            if decide {
                let id = approval_id(&response).map_err(|e| format!("preflight: {}", e.kind))?;
                self.expect(&mut conn, "accept", &self.accept_request(&id), 200)
                    .await
                    .map_err(|e| format!("preflight accept of {id}: {}", e.kind))?;
            }
        }
        Ok(())
    }
}

fn approval_id(response: &Response) -> Result<String, OpError> {
    let json: Value =
        serde_json::from_slice(&response.body).map_err(|_| OpError::other("submit_bad_json"))?;
    json.pointer("/approval/id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| OpError::other("submit_no_id"))
}
