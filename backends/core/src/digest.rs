//! The action digest: what binds a decision to exactly the action that was parked.
//!
//! SHA-256 over the action's canonical JSON: object keys sorted (by their UTF-8 bytes), no
//! whitespace, strings and numbers as serde_json writes them. An agent can compute the same
//! digest from the action it sent (Python: `json.dumps(action, sort_keys=True,
//! separators=(",", ":"), ensure_ascii=False)`) and compare it with the decision's.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `sha256:` and the hex digest of `action`'s canonical JSON.
pub fn action_digest(action: &Map<String, Value>) -> String {
    let mut text = String::new();
    write_object(action, &mut text);
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        // Scalars: serde_json's own form (escapes, shortest round-trip numbers).
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Sorted here rather than relying on `Map`'s order: with serde_json's `preserve_order`
/// feature (which any dependency may switch on) a map keeps insertion order.
fn write_object(map: &Map<String, Value>, out: &mut String) {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        write_value(value, out);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_the_digest() {
        let a: Value =
            serde_json::from_str(r#"{"type":"t","b":[1,{"y":2,"x":"é"}],"a":null}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{ "a": null, "b": [1, {"x": "é", "y": 2}], "type": "t" }"#)
                .unwrap();
        assert_eq!(action_digest(&object(a)), action_digest(&object(b)));
    }

    #[test]
    fn any_change_of_content_changes_the_digest() {
        let base = action_digest(&object(json!({"type": "t", "amount": 10})));
        assert_ne!(
            base,
            action_digest(&object(json!({"type": "t", "amount": 11})))
        );
        assert_ne!(
            base,
            action_digest(&object(json!({"type": "t", "amount": "10"})))
        );
        assert_ne!(base, action_digest(&object(json!({"type": "t"}))));
    }

    #[test]
    fn the_digest_is_sha256_of_the_documented_text() {
        // The text Python's json.dumps(sort_keys=True, separators=(",", ":")) produces.
        let text = r#"{"amount":10,"type":"refund"}"#;
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
        assert_eq!(
            action_digest(&object(json!({"type": "refund", "amount": 10}))),
            expected
        );
    }
}
