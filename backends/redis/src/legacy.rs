//! Records this backend did not write: the ADR v1 Python service's four-field JSON
//! (`status`, `agent_action`, `context`, `submitted_at`) and the FastAPI peer's fuller one.
//!
//! They are valid approvals; this turns one into an `Approval` so it can be adopted (rewritten
//! in the current format with its indexes) and from then on decided and expired like any other.

use std::time::Duration;

use approvals_core::{Approval, ApprovalId, Status, TenantId, Timestamp};
use chrono::NaiveDateTime;
use serde_json::{Map, Value};

/// Who submitted a record the ADR v1 service wrote: it did not say.
pub const LEGACY_SUBMITTER: &str = "adr-v1";

/// `key_expiry` is when the key expires (PEXPIRETIME; `None` if it never does): that is the
/// approval's deadline. An absolute time, not now + PTTL, so every read of the same record
/// derives the same deadline (a migration compares two reads).
pub fn to_approval(
    tenant: TenantId,
    id: ApprovalId,
    mut map: Map<String, Value>,
    key_expiry: Option<Timestamp>,
    default_ttl: Duration,
    now: Timestamp,
) -> Approval {
    let mut text = |field: &str| match map.remove(field) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let status = match text("status").as_deref() {
        Some("accepted" | "approved") => Status::Accepted,
        Some("rejected" | "denied") => Status::Rejected,
        Some("expired") => Status::Expired,
        _ => Status::Pending,
    };
    let agent_id = text("agent_id").unwrap_or_else(|| LEGACY_SUBMITTER.to_owned());
    let submitted_by = text("submitted_by").unwrap_or_else(|| LEGACY_SUBMITTER.to_owned());
    let policy_version = text("policy_version").unwrap_or_else(|| "adr-v1".to_owned());
    let decided_by = text("decided_by");
    let decision_reason = text("decision_reason");
    let decided_at = text("decided_at").and_then(|t| Timestamp::parse_rfc3339(&t));
    // Every field is read the same whenever the record is read (before adoption, `migrate`
    // reads it twice and compares): what v1 did not record is derived from the key's expiry,
    // or left unknown, never taken from the clock.
    let submitted_at = map
        .get("submitted_at")
        .and_then(parse_submitted_at)
        .or_else(|| key_expiry.map(|expiry| expiry.minus(default_ttl)))
        .unwrap_or(now);
    // A decided v1 record's key lives for the decided retention, not its lifetime: the
    // record's own `expires_at`, where it has one, is the deadline it had.
    let expires_at = map
        .get("expires_at")
        .and_then(parse_submitted_at)
        .or(key_expiry)
        .unwrap_or_else(|| submitted_at.plus(default_ttl));
    let object = |v: Option<Value>| match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let reasons = match map.remove("reasons") {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => vec!["parked by the ADR v1 service before the policy engine existed".to_owned()],
    };
    let action = object(map.remove("agent_action"));
    Approval {
        id,
        tenant,
        status,
        agent_id,
        submitted_by,
        // Fixed on adoption: from here on, the decision binds to the action as adopted.
        action_digest: Some(approvals_core::action_digest(&action)),
        action,
        context: object(map.remove("context")),
        reasons,
        policy_version,
        submitted_at,
        expires_at,
        // A v1 record that only flipped `status` does not say when: unknown, not "now".
        decided_at: if status == Status::Pending {
            None
        } else {
            decided_at
        },
        decided_by,
        decision_reason,
    }
}

/// RFC 3339, ISO 8601 without offset (read as UTC), or Unix seconds (integer or float);
/// `None` for a time before 1970 or past the year 33,000 (Python's `datetime.min`,
/// milliseconds written as seconds): the index orders records by 15 digits of epoch
/// milliseconds, and such a time broke its order, its page cursors and the age figures.
pub fn parse_submitted_at(value: &Value) -> Option<Timestamp> {
    const INDEXABLE_MS: std::ops::Range<i64> = 0..1_000_000_000_000_000;
    let parsed = match value {
        Value::Number(n) => n
            .as_f64()
            .map(|secs| Timestamp::from_millis((secs * 1000.0) as i64)),
        Value::String(s) => Timestamp::parse_rfc3339(s).or_else(|| {
            [
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d %H:%M:%S%.f",
            ]
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(s, format).ok())
            .map(|t| Timestamp::from_millis(t.and_utc().timestamp_millis()))
        }),
        _ => None,
    };
    parsed.filter(|t| INDEXABLE_MS.contains(&t.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn submitted_at_in_every_v1_shape() {
        let expected = Timestamp::parse_rfc3339("2026-11-21T09:23:41.500Z");
        for shape in [
            json!("2026-11-21T09:23:41.500Z"),
            json!("2026-11-21T10:23:41.500+01:00"),
            json!("2026-11-21T09:23:41.500"),
            json!(1_795_253_021.5),
        ] {
            assert_eq!(parse_submitted_at(&shape), expected, "{shape}");
        }
        assert_eq!(
            parse_submitted_at(&json!(1_795_253_021)),
            Timestamp::parse_rfc3339("2026-11-21T09:23:41Z")
        );
    }

    #[test]
    fn four_fields_make_a_pending_approval_expiring_with_the_key() {
        let now = Timestamp::now();
        let Value::Object(map) = json!({
            "status": "pending",
            "agent_action": {"type": "document_read"},
            "context": {"k": 1},
            "submitted_at": 1_795_253_021,
        }) else {
            unreachable!()
        };
        let a = to_approval(
            TenantId::parse("acme").unwrap(),
            ApprovalId::parse("r1").unwrap(),
            map,
            Some(now.plus(Duration::from_secs(60))),
            Duration::from_secs(86_400),
            now,
        );
        assert_eq!(a.status, Status::Pending);
        assert_eq!(a.expires_at, now.plus(Duration::from_secs(60)));
        assert_eq!(a.action["type"], "document_read");
        assert_eq!(a.submitted_by, LEGACY_SUBMITTER);
    }

    #[test]
    fn a_decided_record_reads_the_same_whenever_it_is_read() {
        let v1 = json!({
            "status": "approved",
            "agent_action": {"type": "document_read"},
            "context": {},
        });
        let expiry = Timestamp::now().plus(Duration::from_secs(3_600));
        let read_at = |now: Timestamp| {
            let Value::Object(map) = v1.clone() else {
                unreachable!()
            };
            to_approval(
                TenantId::parse("acme").unwrap(),
                ApprovalId::parse("r1").unwrap(),
                map,
                Some(expiry),
                Duration::from_secs(86_400),
                now,
            )
        };
        let first = read_at(Timestamp::now());
        let later = read_at(Timestamp::now().plus(Duration::from_secs(90)));
        assert_eq!(first, later);
        assert_eq!(first.status, Status::Accepted);
        assert_eq!(first.decided_at, None);
        assert_eq!(
            first.submitted_at,
            expiry.minus(Duration::from_secs(86_400))
        );
    }
}
