//! Audit events: the per-tenant history of what happened to each approval.
//!
//! Every event is built here, by one function per kind, so that both engines record the same
//! facts in the same words. An engine only adds the event's id (its stream id, or a
//! deterministic id in a workflow). The one event written inside Redis by a Lua script, the
//! expiry, is rendered from [`AuditEntry::expiry_template`], which comes from the same code.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::{Approval, ApprovalId, DecisionRequest, Status, TenantId, Timestamp};

/// The actor of events nobody caused: expiries.
pub const SYSTEM_ACTOR: &str = "system";
/// The actor of events `approvals migrate` caused.
pub const MIGRATION_ACTOR: &str = "migration";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Submitted,
    Accepted,
    Rejected,
    Expired,
    Migrated,
    /// A change to the tenant's policy: a bundle uploaded, activated, rolled back, trialled.
    Policy,
}

impl AuditKind {
    /// What happens to approvals: the contract's audit export, unless a `kind` filter asks
    /// for policy changes.
    pub const OF_APPROVALS: [Self; 5] = [
        Self::Submitted,
        Self::Accepted,
        Self::Rejected,
        Self::Expired,
        Self::Migrated,
    ];
}

/// What a policy answered about one submit, as the decision log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAnswer {
    /// `allow`, `deny` or `require_approval`.
    pub decision: String,
    pub reasons: Vec<String>,
    pub policy_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Unique within the tenant and increasing with time.
    pub event_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
    #[schema(value_type = String)]
    pub tenant: TenantId,
    #[schema(value_type = String)]
    pub approval_id: ApprovalId,
    pub kind: AuditKind,
    /// Who caused it: a token subject, or `system` for expiries.
    pub actor: String,
    /// Kind-specific facts: the policy decision and reasons, a decision reason, ...
    #[schema(value_type = Object)]
    pub details: Value,
}

impl AuditEvent {
    /// The instant an event id of either engine stands for: both start with the event's
    /// timestamp in milliseconds (Redis `1733…-0`, Temporal `0001733…-1-{id}`), which carries
    /// a reader's position across a change of engine.
    pub fn instant_of_id(event_id: &str) -> Option<Timestamp> {
        event_id
            .split('-')
            .next()
            .and_then(|millis| millis.parse().ok())
            .map(Timestamp::from_millis)
    }

    /// An id of no event that both engines read as "just before `at`": a stream that started
    /// at `at` without any event to show hands it out, so its client can resume from there.
    pub fn id_just_before(at: Timestamp) -> String {
        format!("{}-{}", at.as_millis().saturating_sub(1).max(0), u64::MAX)
    }

    /// The `at` of an [`AuditEvent::id_just_before`] id; `None` for an event's id.
    pub fn start_of(id: &str) -> Option<Timestamp> {
        let (millis, seq) = id.split_once('-')?;
        if seq != u64::MAX.to_string() {
            return None;
        }
        millis
            .parse::<i64>()
            .ok()
            .map(|ms| Timestamp::from_millis(ms + 1))
    }
}

/// An audit event before an engine gave it an id: what engines store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub timestamp: Timestamp,
    pub tenant: TenantId,
    pub approval_id: ApprovalId,
    pub kind: AuditKind,
    pub actor: String,
    pub details: Value,
}

impl AuditEntry {
    fn about(a: &Approval, kind: AuditKind, actor: &str, at: Timestamp, details: Value) -> Self {
        Self {
            timestamp: at,
            tenant: a.tenant.clone(),
            approval_id: a.id.clone(),
            kind,
            actor: actor.to_owned(),
            details,
        }
    }

    /// An agent's request was parked.
    pub fn submitted(a: &Approval) -> Self {
        Self::parked(a, None)
    }

    /// An agent's request was parked; `shadow` is the candidate policy's answer, when the
    /// tenant trials one.
    pub fn parked(a: &Approval, shadow: Option<&PolicyAnswer>) -> Self {
        let answer = PolicyAnswer {
            decision: "require_approval".to_owned(),
            reasons: a.reasons.clone(),
            policy_version: a.policy_version.clone(),
        };
        let mut details = decision_log(a, &answer, shadow);
        details["expires_at"] = json!(a.expires_at);
        Self::about(
            a,
            AuditKind::Submitted,
            &a.submitted_by,
            a.submitted_at,
            details,
        )
    }

    /// An agent's request was answered `allow` or `deny` (nothing parked): `asked` is the
    /// request as it would have been parked, its id the request's.
    pub fn answered(
        asked: &Approval,
        answer: &PolicyAnswer,
        shadow: Option<&PolicyAnswer>,
    ) -> Self {
        let details = decision_log(asked, answer, shadow);
        Self::about(
            asked,
            AuditKind::Submitted,
            &asked.submitted_by,
            asked.submitted_at,
            details,
        )
    }

    /// `actor` changed `tenant`'s policy (`change`: `uploaded`, `activated`, `rolled_back`,
    /// `candidate_set`, `candidate_cleared`) concerning `version` (`None`: the platform
    /// default). The event's `approval_id` names the version: `policy-` and 16 hex digits.
    pub fn policy(
        tenant: &TenantId,
        actor: &str,
        change: &str,
        version: Option<&str>,
        mut details: Value,
    ) -> Self {
        let short = version
            .and_then(|v| v.strip_prefix("sha256:"))
            .map_or("default", |hex| &hex[..hex.len().min(16)]);
        let approval_id =
            ApprovalId::parse(format!("policy-{short}")).unwrap_or_else(|_| ApprovalId::generate());
        details["change"] = json!(change);
        details["version"] = json!(version);
        Self {
            timestamp: Timestamp::now(),
            tenant: tenant.clone(),
            approval_id,
            kind: AuditKind::Policy,
            actor: actor.to_owned(),
            details,
        }
    }

    /// A record an earlier system wrote (`from`, e.g. `adr-v1`) was taken over. Its policy's
    /// answer was `require_approval` (it parked it), with the reasons and version the record
    /// carries: as a submit here records, so `?decision=require_approval` finds it too.
    pub fn adopted(a: &Approval, from: &str) -> Self {
        let answer = PolicyAnswer {
            decision: "require_approval".to_owned(),
            reasons: a.reasons.clone(),
            policy_version: a.policy_version.clone(),
        };
        let mut details = decision_log(a, &answer, None);
        details["adopted_from"] = json!(from);
        details["status"] = json!(a.status);
        details["expires_at"] = json!(a.expires_at);
        Self::about(
            a,
            AuditKind::Submitted,
            &a.submitted_by,
            a.submitted_at,
            details,
        )
    }

    /// A record was carried over from another engine at `at`.
    pub fn migrated(a: &Approval, at: Timestamp) -> Self {
        let details = json!({
            "status": a.status, "submitted_at": a.submitted_at, "expires_at": a.expires_at,
            "decided_at": a.decided_at, "decided_by": a.decided_by,
        });
        Self::about(a, AuditKind::Migrated, MIGRATION_ACTOR, at, details)
    }

    /// A reviewer's decision on `tenant`'s approval `id`.
    pub fn decision(tenant: &TenantId, id: &ApprovalId, request: &DecisionRequest) -> Self {
        Self {
            timestamp: request.at,
            tenant: tenant.clone(),
            approval_id: id.clone(),
            kind: match request.verdict.status() {
                Status::Rejected => AuditKind::Rejected,
                _ => AuditKind::Accepted,
            },
            actor: request.decided_by.clone(),
            details: json!({"reason": request.reason}),
        }
    }

    /// The approval's deadline passed with nobody deciding; the expiry was recorded at
    /// `recorded_at` (its own time: the deadline is in the details).
    pub fn expired(a: &Approval, recorded_at: Timestamp) -> Self {
        let details = expired_details(a.submitted_at, a.expires_at);
        Self::about(a, AuditKind::Expired, SYSTEM_ACTOR, recorded_at, details)
    }

    /// The reviewer's decision that settled `a`; `None` unless accepted or rejected.
    pub fn decided(a: &Approval) -> Option<Self> {
        match a.status {
            Status::Accepted | Status::Rejected => {
                a.decision().map(|d| Self::decision(&a.tenant, &a.id, &d))
            }
            Status::Pending | Status::Expired => None,
        }
    }

    /// The expiry event as JSON with the quoted slots `"$tenant"`, `"$approval_id"`,
    /// `"$submitted_at"`, `"$expires_at"` and `"$recorded_at"`, each to be replaced by that
    /// value as JSON: for code that can only write the event where the record is (a Redis
    /// script).
    pub fn expiry_template() -> String {
        json!({
            "timestamp": "$recorded_at", "tenant": "$tenant", "approval_id": "$approval_id",
            "kind": AuditKind::Expired, "actor": SYSTEM_ACTOR,
            "details": expired_details("$submitted_at", "$expires_at"),
        })
        .to_string()
    }

    pub fn with_id(self, event_id: String) -> AuditEvent {
        AuditEvent {
            event_id,
            timestamp: self.timestamp,
            tenant: self.tenant,
            approval_id: self.approval_id,
            kind: self.kind,
            actor: self.actor,
            details: self.details,
        }
    }
}

impl AuditEvent {
    /// The event without its id, for comparing what two engines recorded.
    pub fn entry(&self) -> AuditEntry {
        AuditEntry {
            timestamp: self.timestamp,
            tenant: self.tenant.clone(),
            approval_id: self.approval_id.clone(),
            kind: self.kind,
            actor: self.actor.clone(),
            details: self.details.clone(),
        }
    }
}

/// The decision log's facts about a submit: the verdict and why, which policy gave it, who
/// asked, a digest of exactly what was asked, and the candidate policy's answer if any.
fn decision_log(a: &Approval, answer: &PolicyAnswer, shadow: Option<&PolicyAnswer>) -> Value {
    let digest = a
        .action_digest
        .clone()
        .unwrap_or_else(|| crate::action_digest(&a.action));
    let mut details = json!({
        "decision": answer.decision, "reasons": answer.reasons,
        "policy_version": answer.policy_version, "agent_id": a.agent_id,
        "submitted_by": a.submitted_by, "action_type": a.action.get("type"),
        "action_digest": digest,
    });
    if let Some(shadow) = shadow {
        details["shadow"] = json!({
            "decision": shadow.decision, "reasons": shadow.reasons,
            "policy_version": shadow.policy_version,
            "agrees": shadow.decision == answer.decision,
        });
    }
    details
}

fn expired_details(submitted_at: impl Serialize, expires_at: impl Serialize) -> Value {
    json!({"expires_at": expires_at, "submitted_at": submitted_at})
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_filled_expiry_template_is_the_expired_event() {
        let now = Timestamp::from_millis(1_700_000_000_123);
        let approval = Approval {
            id: ApprovalId::parse("req-1").unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            status: Status::Expired,
            agent_id: "agent".into(),
            submitted_by: "agent".into(),
            action: serde_json::Map::new(),
            context: serde_json::Map::new(),
            reasons: vec![],
            policy_version: "sha256:x".into(),
            submitted_at: now,
            expires_at: now.plus(Duration::from_secs(60)),
            decided_at: None,
            decided_by: None,
            decision_reason: None,
            action_digest: None,
        };
        let json = |v: &dyn erased::Json| v.json();
        let recorded_at = approval.expires_at.plus(Duration::from_millis(250));
        let filled = AuditEntry::expiry_template()
            .replace("\"$tenant\"", &json(&approval.tenant))
            .replace("\"$approval_id\"", &json(&approval.id))
            .replace("\"$submitted_at\"", &json(&approval.submitted_at))
            .replace("\"$expires_at\"", &json(&approval.expires_at))
            .replace("\"$recorded_at\"", &json(&recorded_at));
        let parsed: AuditEntry = serde_json::from_str(&filled).unwrap();
        assert_eq!(parsed, AuditEntry::expired(&approval, recorded_at));
        assert_eq!(parsed.details["expires_at"], json!(approval.expires_at));
        assert_eq!(AuditEntry::decided(&approval), None);
    }

    mod erased {
        pub trait Json {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }
}
