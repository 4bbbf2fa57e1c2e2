//! Reading the policy's answer: the contract's shape `{"decision": ..., "reasons": [...]}`, or
//! a fail-closed `require_approval` that says what was wrong.

use super::DECISION_RULE;

/// Policy output echoed back in a fail-closed reason is cut to this many characters, so that
/// a runaway policy cannot flood approval records and audit events.
const ECHO_LIMIT: usize = 200;

/// A verdict keeps at most this many reasons, each of at most [`REASON_LIMIT`] characters.
/// Reasons are copied into the approval record, every audit event (allow and deny too, which
/// no pending cap bounds), webhook payloads and the decision log: without a bound, a tenant's
/// policy answering megabytes per call could fill the Redis every tenant shares. The decision
/// itself stands; only its explanation is cut, visibly.
pub const MAX_REASONS: usize = 16;
pub const REASON_LIMIT: usize = 1_000;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PolicyDecision {
    Allow,
    Deny,
    RequireApproval,
}

impl PolicyDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyDecision::Allow => "allow",
            PolicyDecision::Deny => "deny",
            PolicyDecision::RequireApproval => "require_approval",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyVerdict {
    pub decision: PolicyDecision,
    /// Never empty: every verdict explains itself to the agent and the reviewer.
    pub reasons: Vec<String>,
    pub policy_version: String,
}

/// Checks the contract shape `{"decision": ..., "reasons": [string, ...]}`; extra fields are
/// tolerated so a policy can carry its own diagnostics.
pub(super) fn interpret(value: &serde_json::Value) -> (PolicyDecision, Vec<String>) {
    read(value)
        .unwrap_or_else(|why| fail_closed(format!("{why}: failing closed to require_approval")))
}

/// [`interpret`] without the fail-closed answer: what is wrong with a malformed result.
pub(super) fn read(value: &serde_json::Value) -> Result<(PolicyDecision, Vec<String>), String> {
    let decision = value
        .get("decision")
        .and_then(serde_json::Value::as_str)
        .and_then(|d| match d {
            "allow" => Some(PolicyDecision::Allow),
            "deny" => Some(PolicyDecision::Deny),
            "require_approval" => Some(PolicyDecision::RequireApproval),
            _ => None,
        });
    let reasons = value
        .get("reasons")
        .and_then(serde_json::Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
        });

    match (decision, reasons) {
        (Some(decision), Some(mut reasons)) => {
            reasons.retain(|r| !r.trim().is_empty());
            if reasons.is_empty() {
                reasons.push(format!(
                    "policy decided {} without giving a reason",
                    decision.as_str()
                ));
            }
            Ok((decision, bounded(reasons)))
        }
        (None, _) => Err(format!(
            "policy returned an invalid decision (expected \"decision\" to be one of \"allow\", \
             \"deny\", \"require_approval\"; got {})",
            echo(value)
        )),
        (Some(_), None) => Err(format!(
            "policy returned an invalid decision (expected \"reasons\" to be a list of strings; \
             got {})",
            echo(value)
        )),
    }
}

/// The first [`MAX_REASONS`] reasons, each cut to [`REASON_LIMIT`] characters; when some are
/// left out, the last place says how many.
fn bounded(mut reasons: Vec<String>) -> Vec<String> {
    if reasons.len() > MAX_REASONS {
        let left_out = reasons.len() - (MAX_REASONS - 1);
        reasons.truncate(MAX_REASONS - 1);
        reasons.push(format!(
            "…and {left_out} more reasons, not kept (a verdict keeps {MAX_REASONS})"
        ));
    }
    for reason in &mut reasons {
        if let Some((cut, _)) = reason.char_indices().nth(REASON_LIMIT) {
            reason.truncate(cut);
            reason.push('…');
        }
    }
    reasons
}

pub(super) fn fail_closed(reason: String) -> (PolicyDecision, Vec<String>) {
    tracing::warn!(rule = DECISION_RULE, %reason, "policy failed closed");
    super::notes::failed_closed();
    (PolicyDecision::RequireApproval, vec![reason])
}

/// Compact JSON of a policy result, cut to `ECHO_LIMIT` characters.
fn echo(value: &serde_json::Value) -> String {
    truncate(value.to_string())
}

/// regorus errors span several lines (a source excerpt with a caret); a reason is one line.
pub(super) fn one_line(message: &str) -> String {
    truncate(message.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn truncate(text: String) -> String {
    match text.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
