//! An agent asks to act: the policy decides, and a `require_approval` verdict is parked.
//!
//! A repeated `request_id` is answered from its record, in any status, and never parks a
//! second approval: the same request gets the record (`Existing`), a different one is a
//! conflict. The policy's verdict on a repeat is not used, so the answer does not change when
//! the policy does.

use approvals_core::{Approval, ApprovalId, Status, SubmitOutcome, TenantId, Timestamp};
use serde_json::{json, Map, Value};

use super::{AppError, Approvals};
use crate::auth::{Permission, Principal};
use crate::policy::{PolicyDecision, PolicyVerdict};

/// What the agent sent.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// The caller's idempotency key; a fresh id when absent.
    pub request_id: Option<String>,
    /// Defaults to the caller's subject.
    pub agent_id: Option<String>,
    pub action: Map<String, Value>,
    pub context: Option<Map<String, Value>>,
}

/// How a submit was answered.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// `allow` or `deny`: nothing parked.
    Answered(PolicyVerdict),
    /// `require_approval`: parked now.
    Parked(Approval),
    /// A repeat of an earlier request: its record as it is now.
    Existing(Approval),
}

impl Approvals {
    pub async fn submit(
        &self,
        caller: &Principal,
        tenant: TenantId,
        request: SubmitRequest,
    ) -> Result<Submitted, AppError> {
        if !matches!(request.action.get("type"), Some(Value::String(_))) {
            return Err(AppError::InvalidContent(
                "action.type: must be a string".into(),
            ));
        }
        self.limits.check("action", &request.action)?;
        if let Some(context) = &request.context {
            self.limits.check("context", context)?;
        }
        let (id, chosen_by_caller) = match request.request_id {
            Some(raw) => {
                let id = ApprovalId::parse(raw)
                    .map_err(|e| AppError::InvalidIdentifier(format!("request_id: {e}")))?;
                (id, true)
            }
            None => (ApprovalId::generate(), false),
        };
        self.authorize(caller, Permission::Submit, &tenant)?;
        tracing::Span::current().record("approval_id", id.as_str());
        let now = Timestamp::now();
        let asked = Approval {
            id,
            expires_at: now.plus(self.settings.ttl_for(&tenant)),
            tenant,
            status: Status::Pending,
            agent_id: request.agent_id.unwrap_or_else(|| caller.subject.clone()),
            submitted_by: caller.subject.clone(),
            action: request.action,
            context: request.context.unwrap_or_default(),
            reasons: Vec::new(),
            policy_version: String::new(),
            submitted_at: now,
            decided_at: None,
            decided_by: None,
            decision_reason: None,
        };
        let verdict = self.evaluate(policy_input(&asked)).await?;
        if verdict.decision != PolicyDecision::RequireApproval {
            // Nothing to park; but a caller's id may name an earlier, parked request.
            if chosen_by_caller {
                if let Some(existing) = self.read(&asked.tenant, &asked.id).await? {
                    return repeated(existing, &asked);
                }
            }
            crate::metrics::submitted(&asked.tenant, verdict.decision);
            return Ok(Submitted::Answered(verdict));
        }
        // Checked against the figures, not the store: approximate, and free.
        let pending = self.metrics.pending_count(&asked.tenant);
        if pending >= self.settings.max_pending_per_tenant {
            return Err(AppError::TooManyPending {
                tenant: asked.tenant,
                pending,
            });
        }
        let parked = Approval {
            reasons: verdict.reasons,
            policy_version: verdict.policy_version,
            ..asked
        };
        match self.engine.submit(parked.clone()).await {
            Ok(SubmitOutcome::Created(approval)) => {
                crate::metrics::submitted(&approval.tenant, PolicyDecision::RequireApproval);
                Ok(Submitted::Parked(approval))
            }
            Ok(SubmitOutcome::Existing(existing)) => repeated(existing, &parked),
            Err(error) => Err(self.engine_failed(error)),
        }
    }
}

impl Approvals {
    /// The policy's verdict, computed on an evaluation thread (CPU work must not hold up the
    /// request workers), at most `limits.policy_concurrency` at once.
    async fn evaluate(&self, input: Value) -> Result<PolicyVerdict, AppError> {
        self.evaluators.evaluate(self.policy.clone(), input).await
    }
}

/// What the policy sees of a request (the contract's policy input).
fn policy_input(asked: &Approval) -> Value {
    json!({
        "tenant": asked.tenant, "agent_id": asked.agent_id, "submitted_by": asked.submitted_by,
        "action": asked.action, "context": asked.context,
    })
}

/// The existing record for a repeated `request_id`, if it asks the same; else a conflict.
fn repeated(existing: Approval, asked: &Approval) -> Result<Submitted, AppError> {
    if existing.same_request(asked) {
        Ok(Submitted::Existing(existing))
    } else {
        Err(AppError::RequestIdConflict(existing.id))
    }
}
