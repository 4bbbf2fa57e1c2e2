//! Opaque cursors: decoded and re-validated before use, so a forged one is `InvalidCursor`.

use std::borrow::Cow;

use approvals_core::{ApprovalId, BackendError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// A `list` position: the last item's (`submitted_at` millis, id).
pub fn encode_list(submitted_ms: i64, id: &ApprovalId) -> String {
    URL_SAFE_NO_PAD.encode(format!("L{submitted_ms}:{id}"))
}

pub fn decode_list(cursor: &str) -> Result<(i64, ApprovalId), BackendError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| BackendError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| BackendError::InvalidCursor)?;
    let (ms, id) = text
        .strip_prefix('L')
        .and_then(|t| t.split_once(':'))
        .ok_or(BackendError::InvalidCursor)?;
    let ms = ms.parse().map_err(|_| BackendError::InvalidCursor)?;
    let id = ApprovalId::parse(id).map_err(|_| BackendError::InvalidCursor)?;
    Ok((ms, id))
}

/// An `audit` position: the last event's id (`{millis:015}-{seq}-{approval id}`, and
/// `~{nonce}` after it for a decision-log event: see `record::logged_event`), or an event id
/// the Redis engine handed out (`{millis}-{seq}`), resumed just before its millisecond: a
/// client's saved position then survives the cutover from Redis (at least once: events of that
/// millisecond come again). It was refused with 400, as a forgery.
pub fn decode_audit(cursor: &str) -> Result<Cow<'_, str>, BackendError> {
    if let Some(millis) = redis_stream_id_millis(cursor) {
        // Before every id of that millisecond (`-` then a digit) and after every id of the one
        // before: `~` sorts after the digits.
        return Ok(Cow::Owned(format!("{:015}-~", millis.saturating_sub(1))));
    }
    decode_event_id(cursor).map(Cow::Borrowed)
}

/// The milliseconds of a Redis stream id (`{millis}-{seq}`, both decimal), if `cursor` is one.
fn redis_stream_id_millis(cursor: &str) -> Option<u64> {
    let (millis, seq) = cursor.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(millis) || !digits(seq) {
        return None;
    }
    let millis: u64 = millis.parse().ok()?;
    seq.parse::<u64>().ok()?;
    // Past the 15 digits an event id of this engine has: no instant either engine stamps.
    (millis < 10u64.pow(15)).then_some(millis)
}

/// [`decode_audit`] of this engine's own event ids.
fn decode_event_id(cursor: &str) -> Result<&str, BackendError> {
    let tail_valid = |tail: &str| {
        let (id, nonce) = match tail.split_once(crate::record::NONCE_SEPARATOR) {
            Some((id, nonce)) => (id, Some(nonce)),
            None => (tail, None),
        };
        ApprovalId::parse(id).is_ok()
            && nonce.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    let valid = cursor.len() > 18
        && cursor.as_bytes()[..15].iter().all(u8::is_ascii_digit)
        && cursor.as_bytes()[15] == b'-'
        && cursor.as_bytes()[16].is_ascii_digit()
        && cursor.as_bytes()[17] == b'-'
        && tail_valid(&cursor[18..]);
    if valid {
        Ok(cursor)
    } else {
        Err(BackendError::InvalidCursor)
    }
}

/// A `scan` position: when the scan started (millis) and the visibility API's next-page token.
pub fn encode_scan(started_ms: i64, token: &[u8]) -> String {
    format!("S{started_ms}.{}", URL_SAFE_NO_PAD.encode(token))
}

pub fn decode_scan(cursor: &str) -> Result<(i64, Vec<u8>), BackendError> {
    let (ms, token) = cursor
        .strip_prefix('S')
        .and_then(|t| t.split_once('.'))
        .ok_or(BackendError::InvalidCursor)?;
    let ms = ms.parse().map_err(|_| BackendError::InvalidCursor)?;
    let token = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or(BackendError::InvalidCursor)?;
    Ok((ms, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_cursor_round_trips_and_refuses_forgeries() {
        let id = ApprovalId::parse("req-01").unwrap();
        let c = encode_list(1_763_717_021_842, &id);
        assert_eq!(decode_list(&c).unwrap(), (1_763_717_021_842, id));
        assert!(decode_list("not-a-cursor").is_err());
        assert!(decode_list(&URL_SAFE_NO_PAD.encode("L12:bad id")).is_err());
    }

    #[test]
    fn scan_cursor_round_trips() {
        let c = encode_scan(42, b"token");
        assert_eq!(decode_scan(&c).unwrap(), (42, b"token".to_vec()));
        assert!(decode_scan("not-a-cursor").is_err());
    }

    #[test]
    fn audit_cursor_is_an_event_id() {
        assert!(decode_audit("001763717021842-1-req-1").is_ok());
        assert!(decode_audit("not-a-cursor").is_err());
        assert!(decode_audit("001763717021842-1-").is_err());
        assert!(decode_audit("001763717021842-0-req-1~9f8e7d6c5b4a").is_ok());
        for bad in [
            "001763717021842-0-req-1~",
            "001763717021842-0-~ab",
            "001763717021842-0-a~b~c",
            "1763717021842-",
            "-0",
            "1763717021842-0x",
            "9999999999999999-0",
        ] {
            assert!(decode_audit(bad).is_err(), "{bad}");
        }
    }

    /// A Redis stream id resumes before its millisecond: after every event of the one before,
    /// before every event of its own (at least once).
    #[test]
    fn a_redis_stream_id_resumes_before_its_millisecond() {
        let position = decode_audit("1763717021842-3").unwrap();
        for (id, after) in [
            ("001763717021841-1-req-9", false),
            ("001763717021841-0-zzz~ab12", false),
            ("001763717021842-0-req-1", true),
            ("001763717021842-1-a", true),
            ("001763717021843-0-a", true),
        ] {
            assert_eq!(id > position.as_ref(), after, "{id}");
        }
    }
}
