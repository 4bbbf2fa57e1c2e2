//! An agent asks to act: the tenant's policy decides, and a `require_approval` verdict is
//! parked. Every verdict is written to the tenant's audit (the decision log) before it is
//! answered: an `allow` or `deny` that cannot be logged answers 503, never an unlogged verdict.
//! A tenant trialling a candidate policy gets it evaluated beside the active one; the
//! candidate's answer is logged and counted, never used.
//!
//! A repeated `request_id` of a parked request is answered from its record, in any status,
//! and never parks a second approval: the same request gets the record (`Existing`), a
//! different one is a conflict. The policy's verdict on such a repeat is not used, so the
//! answer does not change when the policy does. An `allow` or `deny` is not stored, so its
//! repeat is evaluated again (and audited again): its answer follows the policy in force.

use approvals_core::{
    action_digest, Approval, ApprovalId, AuditEntry, PolicyAnswer, Status, SubmitOutcome, TenantId,
    Timestamp,
};
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
        if let Err(oversized) = self.check_limits(&request) {
            return match self
                .parked_before_the_limits(caller, &tenant, &request)
                .await
            {
                Some(existing) => Ok(Submitted::Existing(existing)),
                None => Err(oversized),
            };
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
        let gates = self.policies.gates(&tenant);
        let now = Timestamp::now();
        let digest = action_digest(&request.action);
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
            action_digest: Some(digest),
        };
        // A repeat is answered from its record, policy or not: the contract does not evaluate
        // it again, so a policy that cannot be loaded, or an evaluation refused as overloaded
        // or failed, must not fail it. (Looked up only then: a repeat that evaluates is found
        // by the park script or the read below, without a round trip more per submit.)
        let evaluated = match gates {
            Ok(gates) => {
                self.evaluators
                    .evaluate(
                        &asked.tenant,
                        gates.active.clone(),
                        gates.candidate.clone(),
                        policy_input(&asked),
                    )
                    .await
            }
            Err(error) => Err(error),
        };
        let (verdict, shadow) = match evaluated {
            Ok(evaluated) => evaluated,
            Err(error) => {
                if chosen_by_caller {
                    if let Some(existing) = self.read(&asked.tenant, &asked.id).await? {
                        return repeated(existing, &asked);
                    }
                }
                return Err(error);
            }
        };
        let shadow = shadow.map(|s| answer(&s));
        // Counted only where the verdict is used: a retried request answered from its record
        // would count the same request again in the candidate's trial.
        let agrees = shadow
            .as_ref()
            .map(|shadow| shadow.decision == verdict.decision.as_str());
        let count_shadow = move |tenant: &TenantId| {
            if let Some(agrees) = agrees {
                crate::metrics::shadow_evaluated(tenant, agrees);
            }
        };
        if verdict.decision != PolicyDecision::RequireApproval {
            // Nothing to park; but a caller's id may name an earlier, parked request.
            if chosen_by_caller {
                if let Some(existing) = self.read(&asked.tenant, &asked.id).await? {
                    return repeated(existing, &asked);
                }
            }
            let logged = AuditEntry::answered(&asked, &answer(&verdict), shadow.as_ref());
            let (tenant, decision) = (asked.tenant.clone(), verdict.decision);
            self.to_the_end(|engine, decision_log| async move {
                engine.record(logged.clone()).await?;
                decision_log.offer(&logged);
                count_shadow(&tenant);
                crate::metrics::submitted(&tenant, decision);
                Ok(())
            })
            .await?;
            return Ok(Submitted::Answered(verdict));
        }
        // Checked against the figures, not the store: approximate, and free.
        let pending = self.metrics.pending_count(&asked.tenant);
        if pending >= self.settings.max_pending_per_tenant {
            // An agent retrying a request that did park gets its record, cap or not: a 429
            // would tell it nothing was parked while a reviewer can still accept it.
            if chosen_by_caller {
                if let Some(existing) = self.read(&asked.tenant, &asked.id).await? {
                    return repeated(existing, &asked);
                }
            }
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
        let logged = AuditEntry::parked(&parked, shadow.as_ref());
        let asked = parked.clone();
        let outcome = self
            .to_the_end(|engine, decision_log| async move {
                let outcome = engine.park(asked, logged.clone()).await?;
                if let SubmitOutcome::Created(approval) = &outcome {
                    decision_log.offer(&logged);
                    count_shadow(&approval.tenant);
                    crate::metrics::submitted(&approval.tenant, PolicyDecision::RequireApproval);
                }
                Ok(outcome)
            })
            .await;
        match outcome? {
            SubmitOutcome::Created(approval) => Ok(Submitted::Parked(approval)),
            SubmitOutcome::Existing(existing) => repeated(existing, &parked),
        }
    }
}

impl Approvals {
    fn check_limits(&self, request: &SubmitRequest) -> Result<(), AppError> {
        self.limits.check("action", &request.action)?;
        if let Some(context) = &request.context {
            self.limits.check("context", context)?;
        }
        if let Some(agent_id) = &request.agent_id {
            // Evaluated, stored, shown in every listing and sent in webhooks: bounded as well.
            self.limits.check_string("agent_id", agent_id)?;
        }
        Ok(())
    }

    /// For a request beyond the input limits: its record, if this very request was parked
    /// before the limits were lowered. A repeat is answered from its record, so its retry
    /// must not turn into a `422` that tells the agent nothing was parked. `None` (the `422`
    /// stands) for anyone not allowed to submit here, and for any other request.
    async fn parked_before_the_limits(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        request: &SubmitRequest,
    ) -> Option<Approval> {
        let id = ApprovalId::parse(request.request_id.clone()?).ok()?;
        self.authorize(caller, Permission::Submit, tenant).ok()?;
        let existing = self.read(tenant, &id).await.ok()??;
        let agent = request.agent_id.as_deref().unwrap_or(&caller.subject);
        let no_context = Map::new();
        let context = request.context.as_ref().unwrap_or(&no_context);
        existing
            .asked_for(&request.action, context, agent)
            .then_some(existing)
    }
}

/// A verdict as the decision log records it.
fn answer(verdict: &PolicyVerdict) -> PolicyAnswer {
    PolicyAnswer {
        decision: verdict.decision.as_str().to_owned(),
        reasons: verdict.reasons.clone(),
        policy_version: verdict.policy_version.clone(),
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
