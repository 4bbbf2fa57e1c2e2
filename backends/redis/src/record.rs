//! The JSON stored under `approval:{tenant}:{id}`, and the exact bytes the Lua scripts splice.
//!
//! Field order is load-bearing: the four mutable fields come first, so a decision or an expiry
//! is a splice of the document's head in Lua (`pending_head()` → a decided head) and the rest —
//! the agent's action and context — is never decoded and re-encoded by Lua's cjson, which would
//! round numbers and turn `[]` into `{}`.

use approvals_core::{
    Approval, ApprovalId, BackendError, Status, TenantId, Timestamp, EXPIRED_REASON,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The stored form. ADR field names (`agent_action`), plus the two instants in milliseconds
/// for the scripts, which cannot parse RFC 3339 cheaply.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredRecord {
    #[serde(deserialize_with = "stored_status")]
    pub status: Status,
    pub decided_at: Option<Timestamp>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub agent_action: Map<String, Value>,
    pub context: Map<String, Value>,
    pub submitted_at: Timestamp,
    pub expires_at: Timestamp,
    pub id: ApprovalId,
    pub tenant: TenantId,
    pub agent_id: String,
    pub submitted_by: String,
    pub reasons: Vec<String>,
    pub policy_version: String,
    pub submitted_ms: i64,
    pub expires_ms: i64,
    /// The digest of `action` as parked. The service compares it with the digest a reviewer
    /// saw before it decides; an approval's action never changes, so no script reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_digest: Option<String>,
}

/// A record's status, in this service's names or the ADR v1 service's: a v1 instance still
/// running beside this one decides a record this one adopted by rewriting its `status` as
/// `approved` or `denied`, keeping every other field. Read as this service's names only, such
/// a record was unreadable (every read of it answered 500, and a migration passed it over).
fn stored_status<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Status, D::Error> {
    let name = String::deserialize(deserializer)?;
    match name.as_str() {
        "approved" => Ok(Status::Accepted),
        "denied" => Ok(Status::Rejected),
        other => Status::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(other)),
    }
}

/// The head of a record: what a decision rewrites.
#[derive(Serialize)]
struct Head<'a> {
    status: Status,
    decided_at: Option<Timestamp>,
    decided_by: Option<&'a str>,
    decision_reason: Option<&'a str>,
}

impl Head<'_> {
    /// `{"status":…,"decision_reason":…,` — the object opened, the head's fields, a comma.
    fn to_prefix(&self) -> String {
        let mut json = serde_json::to_string(self).unwrap_or_default();
        json.pop(); // the closing brace
        json.push(',');
        json
    }
}

/// The exact prefix of every pending record written by this backend.
pub fn pending_head() -> String {
    Head {
        status: Status::Pending,
        decided_at: None,
        decided_by: None,
        decision_reason: None,
    }
    .to_prefix()
}

/// The prefix that replaces [`pending_head`] when a reviewer decides.
pub fn decided_head(status: Status, at: Timestamp, by: &str, reason: Option<&str>) -> String {
    Head {
        status,
        decided_at: Some(at),
        decided_by: Some(by),
        decision_reason: reason,
    }
    .to_prefix()
}

/// The prefix that replaces [`pending_head`] when an approval expires, with the slot
/// `"$expires_at"` for the script to fill with the record's deadline (it is the expiry's
/// `decided_at`). Rendered here so the expired record has the same form as every other head.
pub fn expired_head_template() -> String {
    let epoch = Timestamp::from_millis(0);
    Head {
        status: Status::Expired,
        decided_at: Some(epoch),
        decided_by: None,
        decision_reason: Some(EXPIRED_REASON),
    }
    .to_prefix()
    .replace(&format!("\"{epoch}\""), "\"$expires_at\"")
}

impl From<Approval> for StoredRecord {
    fn from(a: Approval) -> Self {
        Self {
            status: a.status,
            decided_at: a.decided_at,
            decided_by: a.decided_by,
            decision_reason: a.decision_reason,
            agent_action: a.action,
            context: a.context,
            submitted_ms: a.submitted_at.as_millis(),
            expires_ms: a.expires_at.as_millis(),
            submitted_at: a.submitted_at,
            expires_at: a.expires_at,
            id: a.id,
            tenant: a.tenant,
            agent_id: a.agent_id,
            submitted_by: a.submitted_by,
            reasons: a.reasons,
            policy_version: a.policy_version,
            action_digest: a.action_digest,
        }
    }
}

impl From<StoredRecord> for Approval {
    fn from(r: StoredRecord) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant,
            status: r.status,
            agent_id: r.agent_id,
            submitted_by: r.submitted_by,
            action: r.agent_action,
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

pub fn encode(approval: &Approval) -> String {
    // Serialising plain data into a String cannot fail.
    serde_json::to_string(&StoredRecord::from(approval.clone())).unwrap_or_default()
}

/// What a stored value turned out to be.
pub enum Decoded {
    Current(Box<Approval>),
    /// Not written by this backend (ADR v1 or the Python peer): adopt it first.
    Foreign(Map<String, Value>),
}

pub fn decode(key: &str, raw: &str) -> Result<Decoded, BackendError> {
    let corrupt = |reason: String| BackendError::Corrupt {
        key: key.to_owned(),
        reason,
    };
    let value: Value = serde_json::from_str(raw).map_err(|e| corrupt(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(corrupt("not a JSON object".into()));
    };
    if !map.contains_key("expires_ms") {
        // The ADR's four fields make an ADR v1 record; without its action it is nothing.
        if !matches!(map.get("agent_action"), Some(Value::Object(_))) {
            return Err(corrupt(
                "neither this service's record nor an ADR v1 one (no agent_action object)".into(),
            ));
        }
        return Ok(Decoded::Foreign(map));
    }
    let record: StoredRecord =
        serde_json::from_value(Value::Object(map)).map_err(|e| corrupt(e.to_string()))?;
    Ok(Decoded::Current(Box::new(record.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_record_starts_with_the_pending_head() {
        let now = Timestamp::now();
        let approval = Approval {
            id: ApprovalId::parse("r").unwrap(),
            tenant: TenantId::parse("t").unwrap(),
            status: Status::Pending,
            agent_id: "a".into(),
            submitted_by: "s".into(),
            action: Map::new(),
            context: Map::new(),
            reasons: vec![],
            policy_version: "v".into(),
            submitted_at: now,
            expires_at: now,
            decided_at: None,
            decided_by: None,
            decision_reason: None,
            action_digest: Some(approvals_core::action_digest(&Map::new())),
        };
        let raw = encode(&approval);
        assert!(raw.starts_with(&pending_head()), "{raw}");
        // Splicing a decided head yields a record that decodes to the decided approval.
        let at = Timestamp::now();
        let head = decided_head(Status::Accepted, at, "alice \"quoted\"", Some("ok"));
        let spliced = format!("{head}{}", &raw[pending_head().len()..]);
        let Ok(Decoded::Current(decided)) = decode("k", &spliced) else {
            panic!("{spliced}")
        };
        assert_eq!(decided.status, Status::Accepted);
        assert_eq!(decided.decided_by.as_deref(), Some("alice \"quoted\""));
        assert_eq!(decided.decided_at, Some(at));
        assert_eq!(
            decided.reasons,
            Vec::<String>::new(),
            "empty arrays stay arrays"
        );
        // The expired head, filled as the script fills it, is the record as readers see it.
        let expires_at = serde_json::to_string(&approval.expires_at).unwrap();
        let head = expired_head_template().replace("\"$expires_at\"", &expires_at);
        let spliced = format!("{head}{}", &raw[pending_head().len()..]);
        let Ok(Decoded::Current(expired)) = decode("k", &spliced) else {
            panic!("{spliced}")
        };
        assert_eq!(*expired, approval.clone().as_of(approval.expires_at));
    }
}
