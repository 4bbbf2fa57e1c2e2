//! Opaque cursors: decoded and re-validated before use, so a forged one is `InvalidCursor`.

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
/// `~{nonce}` after it for a decision-log event: see `record::logged_event`).
pub fn decode_audit(cursor: &str) -> Result<&str, BackendError> {
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
        ] {
            assert!(decode_audit(bad).is_err(), "{bad}");
        }
    }
}
