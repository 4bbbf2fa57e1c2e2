//! Limits on what an agent may send, checked before the policy sees it: the cost of a policy
//! evaluation grows with its input, so a bounded input is what makes that cost (and so the
//! verdict under load) bounded and the same for everyone.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::AppError;

/// `[limits]`: the largest `action` and `context` the service evaluates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputLimits {
    /// Serialised size of `action`, and of `context`, in bytes.
    pub max_object_bytes: usize,
    /// Characters in any one string (keys included).
    pub max_string_chars: usize,
    /// Items in any one list, and members of any one object.
    pub max_items: usize,
    /// Nesting of objects and lists.
    pub max_depth: usize,
    /// Policy evaluations running at once (0: one per CPU); the rest wait their turn.
    pub policy_concurrency: usize,
    /// Instructions one policy evaluation may execute before it fails closed: a budget that
    /// does not depend on how busy the machine is.
    pub policy_instructions: usize,
    /// Requests one bearer token may have in flight at once, decision long-polls aside;
    /// past it `429 too_many_requests`.
    pub max_requests_per_caller: usize,
    /// Decision long-polls one bearer token may have waiting at once; past it `429`.
    pub max_long_polls_per_caller: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_object_bytes: 16 * 1024,
            max_string_chars: 2_048,
            max_items: 256,
            max_depth: 16,
            policy_concurrency: 0,
            policy_instructions: 1_000_000,
            max_requests_per_caller: 256,
            max_long_polls_per_caller: 2_000,
        }
    }
}

impl InputLimits {
    /// Refuses `value` (named `field` in the message) if it is beyond any limit.
    pub fn check(&self, field: &str, value: &Map<String, Value>) -> Result<(), AppError> {
        // Serialising plain JSON cannot fail; the length is what the policy will walk.
        let bytes = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
        if bytes > self.max_object_bytes {
            return Err(AppError::InputTooLarge(format!(
                "{field}: {bytes} bytes, more than the {} allowed",
                self.max_object_bytes
            )));
        }
        self.walk(field, value.iter(), 1)
    }

    fn walk<'a>(
        &self,
        path: &str,
        members: impl Iterator<Item = (&'a String, &'a Value)>,
        depth: usize,
    ) -> Result<(), AppError> {
        if depth > self.max_depth {
            return Err(AppError::InputTooLarge(format!(
                "{path}: nested deeper than {} levels",
                self.max_depth
            )));
        }
        for (n, (key, value)) in members.enumerate() {
            if n >= self.max_items {
                return Err(AppError::InputTooLarge(format!(
                    "{path}: more than {} members",
                    self.max_items
                )));
            }
            self.string(path, key)?;
            self.value(&format!("{path}.{key}"), value, depth)?;
        }
        Ok(())
    }

    fn value(&self, path: &str, value: &Value, depth: usize) -> Result<(), AppError> {
        match value {
            Value::String(text) => self.string(path, text),
            Value::Object(map) => self.walk(path, map.iter(), depth + 1),
            Value::Array(items) => {
                if depth + 1 > self.max_depth {
                    return Err(AppError::InputTooLarge(format!(
                        "{path}: nested deeper than {} levels",
                        self.max_depth
                    )));
                }
                if items.len() > self.max_items {
                    return Err(AppError::InputTooLarge(format!(
                        "{path}: {} items, more than the {} allowed",
                        items.len(),
                        self.max_items
                    )));
                }
                items
                    .iter()
                    .enumerate()
                    .try_for_each(|(n, item)| self.value(&format!("{path}[{n}]"), item, depth + 1))
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
        }
    }

    /// Refuses a string field (`agent_id`) longer than any string inside `action` may be.
    pub fn check_string(&self, field: &str, text: &str) -> Result<(), AppError> {
        self.string(field, text)
    }

    fn string(&self, path: &str, text: &str) -> Result<(), AppError> {
        // Bytes bound characters from above: count only when the bytes could be too many.
        if text.len() > self.max_string_chars && text.chars().count() > self.max_string_chars {
            return Err(AppError::InputTooLarge(format!(
                "{path}: a string of more than {} characters",
                self.max_string_chars
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(value: Value) -> Result<(), AppError> {
        let Value::Object(map) = value else {
            panic!("an object")
        };
        InputLimits::default().check("action", &map)
    }

    #[test]
    fn ordinary_actions_pass_and_each_limit_names_where_it_was_hit() {
        assert!(check(
            json!({"type": "document_read", "resource": "finance/q3.xlsx",
            "tags": ["a", "b"], "n": 1})
        )
        .is_ok());
        let refused = |value: Value, needle: &str| match check(value) {
            Err(AppError::InputTooLarge(message)) => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("{other:?}"),
        };
        refused(json!({"type": "aB".repeat(1_100)}), "action.type: a string");
        refused(
            json!({"type": "x", "tags": vec!["t"; 300]}),
            "action.tags: 300 items",
        );
        let mut deep = json!("bottom");
        for _ in 0..20 {
            deep = json!({ "d": deep });
        }
        refused(json!({"type": "x", "deep": deep}), "nested deeper");
        refused(json!({"type": "x", "pad": "p".repeat(17_000)}), "bytes");
        // Characters, not bytes: 2,048 two-byte characters are within the limit.
        assert!(check(json!({"type": "é".repeat(2_048)})).is_ok());
    }
}
