//! What this engine persists in Temporal: the workflow input, its memo and its results. These
//! are the engine's own types, not the API's, so a change to the HTTP schema can never change
//! the histories of running workflows. Each is versioned: a field added later must come with a
//! default, and a change of meaning with a new `version` that the reader branches on.
//!
//! Version 1 is the form written before versioning existed (the API's approval object, field
//! for field, with no `version` key): a missing `version` reads as 1.

use approvals_core::{
    Approval, ApprovalId, AuditEntry, AuditEvent, Status, TenantId, Timestamp, ENDED_REASON,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The version this code writes.
pub const RECORD_VERSION: u32 = 1;

fn version_one() -> u32 {
    1
}

/// An approval as the workflow input, memo, update replies and result carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    #[serde(default = "version_one")]
    pub version: u32,
    pub id: ApprovalId,
    pub tenant: TenantId,
    pub status: Status,
    pub agent_id: String,
    pub submitted_by: String,
    pub action: Map<String, Value>,
    pub context: Map<String, Value>,
    pub reasons: Vec<String>,
    pub policy_version: String,
    pub submitted_at: Timestamp,
    pub expires_at: Timestamp,
    pub decided_at: Option<Timestamp>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    /// Added after version 1 without a change of meaning: absent on older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_digest: Option<String>,
}

impl From<&Approval> for ApprovalRecord {
    fn from(a: &Approval) -> Self {
        Self {
            version: RECORD_VERSION,
            id: a.id.clone(),
            tenant: a.tenant.clone(),
            status: a.status,
            agent_id: a.agent_id.clone(),
            submitted_by: a.submitted_by.clone(),
            action: a.action.clone(),
            context: a.context.clone(),
            reasons: a.reasons.clone(),
            policy_version: a.policy_version.clone(),
            submitted_at: a.submitted_at,
            expires_at: a.expires_at,
            decided_at: a.decided_at,
            decided_by: a.decided_by.clone(),
            decision_reason: a.decision_reason.clone(),
            action_digest: a.action_digest.clone(),
        }
    }
}

impl From<ApprovalRecord> for Approval {
    fn from(r: ApprovalRecord) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant,
            status: r.status,
            agent_id: r.agent_id,
            submitted_by: r.submitted_by,
            action: r.action,
            context: r.context,
            reasons: r.reasons,
            policy_version: r.policy_version,
            submitted_at: r.submitted_at,
            expires_at: r.expires_at,
            decided_at: r.decided_at,
            decided_by: r.decided_by,
            decision_reason: r.decision_reason,
            action_digest: r.action_digest,
        }
    }
}

/// An audit event as the memo carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_id: String,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

impl EventRecord {
    /// `{millis:015}-{seq}-{approval id}`: unique in the tenant (one workflow per id, `seq` 0
    /// for the first event, 1 for the settling one) and, compared as text, ordered by time.
    pub fn new(entry: AuditEntry, seq: u8) -> Self {
        let event_id = format!(
            "{:015}-{seq}-{}",
            entry.timestamp.as_millis().max(0),
            entry.approval_id
        );
        Self { event_id, entry }
    }
}

impl From<EventRecord> for AuditEvent {
    fn from(r: EventRecord) -> Self {
        r.entry.with_id(r.event_id)
    }
}

/// The reviewer's decision that settled `approval`, with its id: the workflow writes it, and a
/// reader holding the decided record (before visibility has caught up) derives the very same
/// event, so merging never produces a duplicate. An expiry is not derived (its time is when the
/// workflow recorded it, which only the workflow knows), except one at a workflow's end by hand
/// ([`ended_event`]), which no workflow records.
pub fn decided_event(approval: &Approval) -> Option<AuditEvent> {
    AuditEntry::decided(approval).map(|entry| EventRecord::new(entry, 1).into())
}
/// The expiry of an approval whose workflow ended without a decision (an operator terminated
/// it: see `Approval::ended_undecided`), at the workflow's close: the workflow that would have
/// recorded it is gone, so every reader derives the same event, with the same id. Without it,
/// webhooks and live streams never told reviewers that the approval was over.
pub fn ended_event(approval: &Approval) -> Option<AuditEvent> {
    if approval.status != Status::Expired
        || approval.decision_reason.as_deref() != Some(ENDED_REASON)
    {
        return None;
    }
    let mut entry = AuditEntry::expired(approval, approval.decided_at?);
    if let Some(details) = entry.details.as_object_mut() {
        details.insert("reason".into(), ENDED_REASON.into());
    }
    Some(EventRecord::new(entry, 1).into())
}

/// The approval's first event (parked or carried over) with its id.
pub fn first_event(entry: AuditEntry) -> EventRecord {
    EventRecord::new(entry, 0)
}

/// Separates a decision-log event's id from its nonce: not in the approval id alphabet, so the
/// id stays parseable, and unreserved in URLs, so the id works as a cursor as it is.
pub const NONCE_SEPARATOR: char = '~';

/// A decision-log event that parks nothing (`ApprovalBackend::record`), with its id:
/// `{millis:015}-0-{approval id}~{nonce}`. The same request id may be answered (and recorded)
/// again, even within a millisecond, and may also be parked later: the nonce keeps each event
/// unique in the tenant, and the id still orders by time as text, next to approval events.
pub fn logged_event(entry: AuditEntry, nonce: &str) -> EventRecord {
    let mut record = EventRecord::new(entry, 0);
    record.event_id.push(NONCE_SEPARATOR);
    record.event_id.push_str(nonce);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_a_version_is_version_one() {
        let json = r#"{"id":"r","tenant":"t","status":"pending","agent_id":"a","submitted_by":"s",
            "action":{"type":"x"},"context":{},"reasons":[],"policy_version":"v",
            "submitted_at":"2026-12-02T11:05:46.517Z","expires_at":"2026-12-02T11:05:49.517Z",
            "decided_at":null,"decided_by":null,"decision_reason":null}"#;
        let record: ApprovalRecord = serde_json::from_str(json).unwrap();
        assert_eq!(record.version, 1);
        let approval = Approval::from(record.clone());
        assert_eq!(ApprovalRecord::from(&approval), record);
        let at = Timestamp::parse_rfc3339("2026-12-02T11:05:46.517Z").unwrap();
        let event = first_event(AuditEntry::submitted(&approval));
        assert_eq!(event.entry.timestamp, at);
        assert_eq!(event.event_id, format!("{:015}-0-r", at.as_millis()));
        let logged = logged_event(AuditEntry::submitted(&approval), "0a1b2c3d4e5f");
        assert_eq!(
            logged.event_id,
            format!("{:015}-0-r~0a1b2c3d4e5f", at.as_millis())
        );
        assert!(logged.event_id > event.event_id);
        assert!(crate::cursor::decode_audit(&logged.event_id).is_ok());
    }
}
