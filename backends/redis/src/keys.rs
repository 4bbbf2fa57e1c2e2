//! Every Redis key and channel the backend touches, in one place.
//!
//! Identifiers are `TenantId`/`ApprovalId`, which cannot contain `:`, `*`, `{` or spaces, so
//! no key built here can collide with another or be globbed from outside.

use approvals_core::{ApprovalId, BackendError, Status, TenantId};
use base64::Engine as _;

/// Decisions and expiries are published here as `{tenant}:{id}` (what earlier versions listen
/// to; kept so a rolling upgrade wakes their waiters too).
pub const DECIDED_CHANNEL: &str = "approvals:decided";
/// Decisions and expiries with the settled record: `{tenant}:{id}\n{record}`, in database 0;
/// see [`settled_channel`].
pub const SETTLED_CHANNEL: &str = "approvals:settled";

/// The settled channel of Redis database `db`. Pub/sub ignores databases: deployments sharing
/// one server in databases 0 and 1 heard each other's decisions, and a waiter on an approval
/// id both hold (a rollback into another database holds copies) was answered with the other
/// deployment's decision, which its own reads then contradicted. Database 0 keeps the name
/// every earlier version uses, so a rolling upgrade there still wakes every instance's waiters.
pub fn settled_channel(db: i64) -> String {
    match db {
        0 => SETTLED_CHANNEL.to_owned(),
        db => format!("{SETTLED_CHANNEL}:db{db}"),
    }
}
/// Pending approvals of every tenant, scored by `expires_at` (ms), members `{tenant}:{ms}:{id}`.
pub const DEADLINES: &str = "approvals:deadlines";
/// Decided and expired index entries to drop once their record's retention ends, scored by
/// that instant (ms), members `{tenant}:{status}:{index member}`.
pub const RETENTION: &str = "approvals:retention";
/// Every tenant that ever parked an approval (for metrics).
pub const TENANTS: &str = "approvals:tenants";
/// Per tenant: the sum of `submitted_at` (ms) of its pending approvals, so the age sum of a
/// million pending approvals is one HGET.
pub const SUBMITTED_SUM: &str = "approvals:pending_submitted_ms";
/// Written by every readiness check: a Redis out of memory refuses it.
pub const WRITE_PROBE: &str = "approvals:write_probe";
/// `SCAN` pattern of the records and of this service's own keys (shadows among them); callers
/// tell them apart by prefix.
pub const RECORD_OR_SHADOW_PATTERN: &str = "approval*";
/// `SCAN` pattern of the records (the ADR's layout).
pub const RECORD_PATTERN: &str = "approval:*";

pub fn record(tenant: &TenantId, id: &ApprovalId) -> String {
    format!("approval:{tenant}:{id}")
}

/// A pending record's second copy. The record key's TTL is the approval's lifetime (the ADR's
/// layout: a reader never finds a pending record past its deadline); this copy outlives it by
/// the expired-retention, so the expiry is still recorded, once, and readable, however late
/// the service comes back within that time. Gone once the approval is settled.
pub fn shadow(tenant: &TenantId, id: &ApprovalId) -> String {
    format!("approvals:shadow:{tenant}:{id}")
}

/// Splits `approval:{tenant}:{id}`; `None` for keys that are not valid records.
pub fn parse_record(key: &str) -> Option<(TenantId, ApprovalId)> {
    let mut parts = key.strip_prefix("approval:")?.splitn(2, ':');
    let tenant = TenantId::parse(parts.next()?).ok()?;
    let id = ApprovalId::parse(parts.next()?).ok()?;
    Some((tenant, id))
}

/// Per tenant and status: a sorted set with every score 0, ordered by its members
/// `{submitted_ms:015}:{id}`. Lexical order is then submission order with ties by id, which
/// gives exact keyset paging (ZRANGE BYLEX) and age counts (ZLEXCOUNT) on one structure.
pub fn index(tenant: &TenantId, status: Status) -> String {
    format!("approvals:index:{tenant}:{}", status.as_str())
}

pub fn index_member(submitted_ms: i64, id: &ApprovalId) -> String {
    format!("{submitted_ms:015}:{id}")
}

/// The smallest member submitted at or after `ms`, for ZLEXCOUNT.
pub fn index_bound(ms: i64) -> String {
    format!("[{:015}", ms.max(0))
}

pub fn deadline_member(tenant: &TenantId, submitted_ms: i64, id: &ApprovalId) -> String {
    format!("{tenant}:{submitted_ms}:{id}")
}

pub fn parse_deadline_member(member: &str) -> Option<(TenantId, i64, ApprovalId)> {
    let mut parts = member.splitn(3, ':');
    let tenant = TenantId::parse(parts.next()?).ok()?;
    let submitted_ms = parts.next()?.parse().ok()?;
    let id = ApprovalId::parse(parts.next()?).ok()?;
    Some((tenant, submitted_ms, id))
}

pub fn retention_member(tenant: &TenantId, status: Status, index_member: &str) -> String {
    format!("{tenant}:{}:{index_member}", status.as_str())
}

pub fn parse_retention_member(member: &str) -> Option<(TenantId, Status, &str)> {
    let mut parts = member.splitn(3, ':');
    let tenant = TenantId::parse(parts.next()?).ok()?;
    let status = Status::parse(parts.next()?)?;
    Some((tenant, status, parts.next()?))
}

pub fn audit(tenant: &TenantId) -> String {
    format!("approvals:audit:{tenant}")
}

/// Every tenant's policy state (JSON), by tenant: the one key each instance polls to reload.
pub const POLICY_STATES: &str = "policy:states";
/// Counts the changes to [`POLICY_STATES`], so an instance's idle reload poll reads one number,
/// not every tenant's state.
pub const POLICY_STATES_CHANGES: &str = "policy:states_changes";

/// An uploaded policy bundle (immutable; no TTL).
pub fn policy_bundle(tenant: &TenantId, version: &str) -> String {
    format!("policy:{tenant}:bundle:{version}")
}

/// A tenant's bundles, scored by upload time (ms).
pub fn policy_bundles(tenant: &TenantId) -> String {
    format!("policy:{tenant}:bundles")
}

/// A tenant's bundle summaries (who uploaded each version, when), by version: what listings read.
pub fn policy_summaries(tenant: &TenantId) -> String {
    format!("policy:{tenant}:summaries")
}

pub fn channel_message(tenant: &TenantId, id: &ApprovalId) -> String {
    format!("{tenant}:{id}")
}

/// List cursors are the last index member seen, base64url-encoded so clients treat them as
/// opaque; decoding re-validates, so a forged cursor cannot become a ZRANGE bound.
pub fn encode_cursor(member: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(member)
}

pub fn decode_cursor(cursor: &str) -> Result<String, BackendError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| BackendError::InvalidCursor)?;
    let member = String::from_utf8(bytes).map_err(|_| BackendError::InvalidCursor)?;
    let (ms, id) = member.split_once(':').ok_or(BackendError::InvalidCursor)?;
    let well_formed =
        ms.len() == 15 && ms.bytes().all(|b| b.is_ascii_digit()) && ApprovalId::parse(id).is_ok();
    if well_formed {
        Ok(member)
    } else {
        Err(BackendError::InvalidCursor)
    }
}

/// Audit cursors are stream ids (`{ms}-{seq}`).
/// The largest stream id there can be.
pub const LAST_STREAM_ID: &str = "18446744073709551615-18446744073709551615";

pub fn decode_stream_cursor(cursor: &str) -> Result<&str, BackendError> {
    let (ms, seq) = cursor.split_once('-').ok_or(BackendError::InvalidCursor)?;
    // Redis refuses an id part beyond 64 bits; that is the caller's mistake, not an outage.
    // Written as Redis writes ids: no leading zero. Redis reads `01-0` as `1-0`, so a padded
    // copy of the largest id passed the check below and failed in Redis (a 503), and so did
    // one padded past Redis' 127 characters.
    let part = |s: &str| {
        s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'))
            && s.parse::<u64>().is_ok()
    };
    if part(ms) && part(seq) {
        Ok(cursor)
    } else {
        Err(BackendError::InvalidCursor)
    }
}

/// Where a reader resumes in a tenant's stream from `cursor`: a stream id, or the id of an
/// event the Temporal engine handed out (`{millis:015}-{seq}-{approval id}`), resumed just
/// before its instant. A client's saved `Last-Event-ID` then survives a rollback from Temporal
/// to Redis (at least once: events of that millisecond come again); it was refused with 400
/// for good, and an `EventSource` stops on that.
pub fn stream_position(cursor: &str) -> Result<std::borrow::Cow<'_, str>, BackendError> {
    if let Ok(id) = decode_stream_cursor(cursor) {
        return Ok(std::borrow::Cow::Borrowed(id));
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = cursor.splitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ms), Some(seq), Some(id))
            if ms.len() == 15 && digits(ms) && digits(seq) && !id.is_empty() =>
        {
            let ms: u64 = ms.parse().map_err(|_| BackendError::InvalidCursor)?;
            Ok(std::borrow::Cow::Owned(format!(
                "{}-{}",
                ms.saturating_sub(1),
                u64::MAX
            )))
        }
        _ => Err(BackendError::InvalidCursor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporal_event_id_is_a_position_just_before_its_instant() {
        assert_eq!(stream_position("5-1").unwrap(), "5-1");
        assert_eq!(
            stream_position("001763717021842-1-req-1").unwrap(),
            format!("1763717021841-{}", u64::MAX)
        );
        for bad in [
            "not-an-event-id",
            "1763717021842-1-req-1",
            "001763717021842--x",
            "01-0",
        ] {
            assert!(stream_position(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_keys_round_trip() {
        let (t, i) = (
            TenantId::parse("acme").unwrap(),
            ApprovalId::parse("req-1").unwrap(),
        );
        assert_eq!(record(&t, &i), "approval:acme:req-1");
        assert_eq!(parse_record("approval:acme:req-1"), Some((t, i)));
        assert_eq!(parse_record("approval:acme:a:b"), None);
        assert_eq!(parse_record("approvals:index:acme:pending"), None);
    }

    #[test]
    fn index_members_sort_by_time_then_id() {
        let id = |s| ApprovalId::parse(s).unwrap();
        let mut members = [
            index_member(1_000, &id("b")),
            index_member(999, &id("z")),
            index_member(1_000, &id("a")),
        ];
        members.sort();
        assert_eq!(members[0], index_member(999, &id("z")));
        assert_eq!(members[1], index_member(1_000, &id("a")));
    }

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let member = index_member(42, &ApprovalId::parse("req-1").unwrap());
        assert_eq!(decode_cursor(&encode_cursor(&member)).unwrap(), member);
        for forged in [
            "",
            "not-a-cursor",
            &encode_cursor("+"),
            &encode_cursor("000000000000042:a*"),
        ] {
            assert!(decode_cursor(forged).is_err(), "{forged}");
        }
        assert!(decode_stream_cursor("1-0").is_ok());
        assert!(decode_stream_cursor("(1-0").is_err());
        for padded in [
            "018446744073709551615-18446744073709551615",
            "1-00",
            &format!("1-{}", "0".repeat(130)),
        ] {
            assert!(decode_stream_cursor(padded).is_err(), "{padded}");
        }
    }
}
