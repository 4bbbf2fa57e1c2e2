//! What a webhook receives: this service's JSON event, or a Slack incoming-webhook message; and
//! the signature over it.

use std::time::Duration;

use approvals_core::{Approval, AuditEvent, TenantId};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{NotifyEvent, Webhook, WebhookFormat};

/// Hex HMAC-SHA256 of `"{timestamp}.{body}"` under the webhook's secret: binding the timestamp
/// lets receivers refuse replays of an old body (docs/webhooks.md has a verification snippet).
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(format!("{timestamp}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Text for Slack's mrkdwn: `<…>` there is a link or a mention (`<https://…|label>`,
/// `<!channel>`), and agents choose part of what is quoted (their `agent_id`, the words of an
/// action type the reasons quote). Escaped as Slack documents, so it shows as typed.
fn mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The approval's page in the inbox. It names the tenant: approval ids are the agents' own
/// request ids, unique within a tenant only, and a reviewer signed in to another tenant was
/// shown (and could decide) that tenant's approval of the same id.
fn inbox_link(base: Option<&str>, tenant: &TenantId, approval_id: &str) -> Option<String> {
    base.map(|b| format!("{b}/ui/approvals/{approval_id}?tenant={tenant}"))
}

/// The body for an audit event (parked, decided, expired).
pub fn event_body(
    hook: &Webhook,
    kind: NotifyEvent,
    event: &AuditEvent,
    inbox: Option<&str>,
) -> String {
    let link = inbox_link(inbox, &event.tenant, event.approval_id.as_str());
    let body = match hook.format {
        WebhookFormat::Json => json!({
            "id": format!("{}:{}", hook.id, event.event_id),
            "type": kind.as_str(),
            "tenant": hook.tenant,
            "approval_id": event.approval_id,
            "occurred_at": event.timestamp,
            "actor": event.actor,
            "event": event,
            "inbox_url": link,
        }),
        WebhookFormat::Slack => {
            let what = match kind {
                NotifyEvent::Parked => {
                    let reasons = event
                        .details
                        .get("reasons")
                        .and_then(Value::as_array)
                        .map(|r| {
                            r.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join("; ")
                        })
                        .unwrap_or_default();
                    format!(
                        ":hourglass: *Approval waiting* in `{}`: `{}` from {}. {}",
                        hook.tenant,
                        event.approval_id,
                        mrkdwn(&event.actor),
                        mrkdwn(&reasons)
                    )
                }
                NotifyEvent::Decided => format!(
                    ":white_check_mark: `{}` in `{}` was {} by {}.",
                    event.approval_id,
                    hook.tenant,
                    serde_json::to_value(event.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    mrkdwn(&event.actor)
                ),
                NotifyEvent::Expired | NotifyEvent::ExpiringSoon => format!(
                    ":x: `{}` in `{}` expired without a decision (an automatic rejection).",
                    event.approval_id, hook.tenant
                ),
            };
            slack(&what, link.as_deref())
        }
    };
    body.to_string()
}

/// The body for a pending approval in the last share of its TTL.
pub fn expiring_body(
    hook: &Webhook,
    approval: &Approval,
    left: Duration,
    inbox: Option<&str>,
) -> String {
    let link = inbox_link(inbox, &approval.tenant, approval.id.as_str());
    let body = match hook.format {
        WebhookFormat::Json => json!({
            "id": format!("{}:soon:{}", hook.id, approval.id),
            "type": NotifyEvent::ExpiringSoon.as_str(),
            "tenant": hook.tenant,
            "approval_id": approval.id,
            "expires_at": approval.expires_at,
            "seconds_left": left.as_secs(),
            "approval": approval,
            "inbox_url": link,
        }),
        WebhookFormat::Slack => slack(
            &format!(
                ":warning: *Expiring soon* in `{}`: `{}` from {} expires in {} unless someone decides.",
                hook.tenant,
                approval.id,
                mrkdwn(&approval.agent_id),
                crate::ui::span(left)
            ),
            link.as_deref(),
        ),
    };
    body.to_string()
}

/// The most characters Slack takes in a section block's text: past it the whole message is
/// refused (`400 invalid_blocks`) on every attempt, until the delivery goes dead. A verdict
/// may carry 16 reasons of 1,000 characters.
const SLACK_SECTION_CHARS: usize = 3_000;

/// `text` cut to fit a section block, with `…` where it was cut; never inside an escape
/// (`&amp;`, `&lt;`, `&gt;`), which Slack would show half.
fn fit_section(text: &str) -> std::borrow::Cow<'_, str> {
    let Some((cut, _)) = text.char_indices().nth(SLACK_SECTION_CHARS - 1) else {
        return text.into();
    };
    let mut kept = &text[..cut];
    if let Some(amp) = kept.rfind('&') {
        if !kept[amp..].contains(';') {
            kept = &kept[..amp];
        }
    }
    format!("{kept}…").into()
}

/// A Slack incoming-webhook message: the text, and a button that opens the inbox (decisions
/// happen there, where the reviewer is signed in).
fn slack(text: &str, link: Option<&str>) -> Value {
    let text = fit_section(text);
    let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})];
    if let Some(link) = link {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": "Open in the inbox"},
                "url": link,
            }],
        }));
    }
    json!({"text": text, "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231-style check against an independent computation of the same construction.
        let sig = signature("whsec_test", 1_700_000_000, r#"{"a":1}"#);
        assert_eq!(sig.len(), 64);
        assert_ne!(sig, signature("whsec_test", 1_700_000_001, r#"{"a":1}"#));
        assert_ne!(sig, signature("whsec_other", 1_700_000_000, r#"{"a":1}"#));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        assert!(mac.verify_slice(&hex::decode(&sig).unwrap()).is_ok());
    }

    #[test]
    fn slack_messages_carry_a_button_only_with_a_link() {
        let with = slack("hi", Some("https://a.example/ui/approvals/x"));
        assert_eq!(
            with["blocks"][1]["elements"][0]["url"],
            "https://a.example/ui/approvals/x"
        );
        let without = slack("hi", None);
        assert_eq!(without["blocks"].as_array().map(Vec::len), Some(1));
        assert_eq!(without["text"], "hi");
    }

    #[test]
    fn a_long_message_is_cut_to_what_slack_takes_and_never_inside_an_escape() {
        // 16 reasons of 1,000 characters: Slack refused the message on every attempt.
        for text in [mrkdwn(&"<a&b>".repeat(3_200)), "é".repeat(16_000)] {
            let message = slack(&text, None);
            let shown = message["blocks"][0]["text"]["text"]
                .as_str()
                .expect("section text");
            assert!(
                shown.chars().count() <= SLACK_SECTION_CHARS,
                "{}",
                shown.len()
            );
            assert!(shown.ends_with('…'));
            let before_cut = shown.trim_end_matches('…');
            let last_amp = before_cut.rfind('&').unwrap_or(0);
            assert!(
                !before_cut.contains('&') || before_cut[last_amp..].contains(';'),
                "an escape was cut: {:?}",
                &before_cut[last_amp..]
            );
            assert_eq!(message["text"], shown);
        }
        assert_eq!(slack("short & sweet", None)["text"], "short & sweet");
    }
}
