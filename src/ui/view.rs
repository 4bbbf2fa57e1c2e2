//! What the inbox's templates show of an approval: plain strings and flags, computed once per
//! render, so the templates hold no logic beyond loops and ifs.

use std::time::Duration;

use approvals_core::{Approval, Status, Timestamp};
use serde_json::{Map, Value};

/// The longest context summary a list row shows.
pub const CONTEXT_SUMMARY_CHARS: usize = 120;

/// The share of its TTL under which a pending approval is shown as expiring soon.
pub const EXPIRING_SOON_SHARE: f64 = 0.2;

/// One approval as a row of the inbox.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub status: &'static str,
    pub action_type: String,
    /// The action's `resource`, when it names one.
    pub resource: String,
    pub agent: String,
    pub submitted_by: String,
    pub reasons: Vec<String>,
    /// The context as one line of JSON, cut at [`CONTEXT_SUMMARY_CHARS`] (the detail page has
    /// it whole).
    pub context: String,
    pub submitted_at: String,
    /// RFC 3339, for `<time datetime>`.
    pub submitted_rfc3339: String,
    /// "12 min", since it was submitted.
    pub age: String,
    /// RFC 3339, for the page's clock to count down.
    pub expires_at: String,
    /// The deadline as a person reads it: a reviewer planning their day needs the hour, not
    /// only the time left.
    pub expires_clock: String,
    /// RFC 3339: from when the page's clock marks it expiring soon (a page left open is not
    /// rendered again until something happens in the tenant).
    pub soon_at: String,
    /// "3 h 5 min" left, or what became of it.
    pub left: String,
    pub expiring_soon: bool,
    pub decided_by: String,
    pub decided_at: String,
    pub decision_reason: String,
}

impl Row {
    pub fn of(approval: &Approval, now: Timestamp) -> Self {
        // `a.elapsed_at(b)` is how long after `a` `b` is (zero when before).
        let ttl = approval.submitted_at.elapsed_at(approval.expires_at);
        let pending = approval.status == Status::Pending;
        let remaining = if pending {
            now.elapsed_at(approval.expires_at)
        } else {
            Duration::ZERO
        };
        Self {
            id: approval.id.to_string(),
            status: approval.status.as_str(),
            action_type: named(visible(&text(&approval.action, "type"))),
            resource: visible(&text(&approval.action, "resource")),
            agent: visible(&approval.agent_id),
            submitted_by: approval.submitted_by.clone(),
            reasons: approval.reasons.iter().map(|r| visible(r)).collect(),
            context: visible(&summary(&approval.context)),
            submitted_at: clock(approval.submitted_at),
            submitted_rfc3339: approval.submitted_at.to_string(),
            age: span(approval.submitted_at.elapsed_at(now)),
            expires_at: approval.expires_at.to_string(),
            expires_clock: clock(approval.expires_at),
            soon_at: approval
                .expires_at
                .minus(ttl.mul_f64(EXPIRING_SOON_SHARE))
                .to_string(),
            left: if pending {
                format!("{} left", span(remaining))
            } else {
                String::new()
            },
            expiring_soon: pending
                && remaining.as_secs_f64() <= ttl.as_secs_f64() * EXPIRING_SOON_SHARE,
            decided_by: approval.decided_by.clone().unwrap_or_default(),
            decided_at: approval.decided_at.map(clock).unwrap_or_default(),
            decision_reason: visible(approval.decision_reason.as_deref().unwrap_or_default()),
        }
    }
}

fn text(object: &Map<String, Value>, field: &str) -> String {
    match object.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `object` as one line of JSON, cut with an ellipsis; empty for `{}`.
fn summary(object: &Map<String, Value>) -> String {
    if object.is_empty() {
        return String::new();
    }
    let text = serde_json::to_string(object).unwrap_or_default();
    match text.char_indices().nth(CONTEXT_SUMMARY_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// "2026-12-03 14:05 UTC".
pub fn clock(at: Timestamp) -> String {
    let text = at.to_string();
    // RFC 3339 "2026-12-03T14:05:09.123Z": the minute is enough to read; the title keeps the rest.
    match (text.get(..10), text.get(11..16)) {
        (Some(day), Some(minute)) => format!("{day} {minute} UTC"),
        _ => text,
    }
}

/// "45 s", "12 min", "3 h 5 min", "2 d 4 h".
pub fn span(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => match (secs / 3600, secs % 3600 / 60) {
            (h, 0) => format!("{h} h"),
            (h, m) => format!("{h} h {m} min"),
        },
        _ => match (secs / 86_400, secs % 86_400 / 3600) {
            (d, 0) => format!("{d} d"),
            (d, h) => format!("{d} d {h} h"),
        },
    }
}

/// A JSON object as indented text for a `<pre>`.
pub fn pretty(object: &Map<String, Value>) -> String {
    visible(&serde_json::to_string_pretty(object).unwrap_or_default())
}

/// `text` with every character a reader cannot see written out as `\u{…}`: bidirectional
/// overrides and isolates, zero-width and other format characters, controls (a JSON text's
/// own line breaks and indentation stay). An agent chooses what a reviewer reads here; with
/// them, `invoice\u{202e}fdp.exe` read as `invoiceexe.pdf`, or a key hid itself.
/// An action's type as the link that opens it: the agent writes it, and an empty or blank
/// one (`""`, an ideographic space) left a link with nothing to click.
fn named(action_type: String) -> String {
    if action_type.trim().is_empty() {
        "(no action type)".to_owned()
    } else {
        action_type
    }
}

pub fn visible(text: &str) -> String {
    if !text.chars().any(hidden) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Controls other than line breaks and tabs, Unicode's format characters (category Cf, from
/// its tables), the line and paragraph separators, and the default-ignorable characters that
/// are not format characters: Hangul fillers (they render as blank space), the combining
/// grapheme joiner, Khmer inherent vowels, Mongolian variation selectors, and variation
/// selectors (the supplement's 240 can carry hidden text, one byte each). The emoji
/// presentation selector (U+FE0F) stays, as it follows most emoji.
fn hidden(c: char) -> bool {
    use unicode_general_category::{get_general_category, GeneralCategory as G};
    if matches!(c, '\n' | '\t' | '\u{fe0f}') {
        return false;
    }
    matches!(
        get_general_category(c),
        G::Control | G::Format | G::LineSeparator | G::ParagraphSeparator
    ) || matches!(u32::from(c),
        0x034F | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F | 0x3164 | 0xFE00..=0xFE0E
        | 0xFFA0 | 0xE0100..=0xE01EF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_reader_cannot_see_is_written_out() {
        assert_eq!(visible("invoice\u{202e}fdp.exe"), "invoice\\u{202e}fdp.exe");
        assert_eq!(visible("a\u{200b}b\u{2066}c"), "a\\u{200b}b\\u{2066}c");
        // Blank-looking letters, variation selectors carrying hidden bytes, a paragraph
        // separator, and a format character newer than the old hand-written list.
        assert_eq!(visible("x\u{3164}y\u{ffa0}"), "x\\u{3164}y\\u{ffa0}");
        assert_eq!(visible("ok\u{e0101}\u{e0102}"), "ok\\u{e0101}\\u{e0102}");
        assert_eq!(visible("a\u{2029}b"), "a\\u{2029}b");
        assert_eq!(visible("a\u{13430}b"), "a\\u{13430}b");
        // An emoji keeps its presentation selector.
        assert_eq!(visible("ok \u{2764}\u{fe0f}"), "ok \u{2764}\u{fe0f}");
        assert_eq!(
            visible("plain text, ünïcödé and 中文"),
            "plain text, ünïcödé and 中文"
        );
        let action: Map<String, Value> =
            serde_json::from_str(r#"{"resource": "x\u202ey", "note": "line"}"#).unwrap();
        let shown = pretty(&action);
        assert!(shown.contains("x\\u{202e}y"), "{shown}");
        assert!(shown.contains('\n'), "the layout stays: {shown}");
    }

    #[test]
    fn spans_read_like_a_person_would_say_them() {
        assert_eq!(span(Duration::from_secs(45)), "45 s");
        assert_eq!(span(Duration::from_secs(12 * 60 + 5)), "12 min");
        assert_eq!(span(Duration::from_secs(3 * 3600)), "3 h");
        assert_eq!(span(Duration::from_secs(3 * 3600 + 5 * 60)), "3 h 5 min");
        assert_eq!(span(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2 d 4 h");
    }

    #[test]
    fn context_summaries_are_one_line_and_cut() {
        let mut context = Map::new();
        assert_eq!(summary(&context), "");
        context.insert("ticket".into(), Value::String("T-1".into()));
        assert_eq!(summary(&context), r#"{"ticket":"T-1"}"#);
        context.insert("note".into(), Value::String("x".repeat(500)));
        let cut = summary(&context);
        assert_eq!(cut.chars().count(), CONTEXT_SUMMARY_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn the_clock_shows_the_minute_in_utc() {
        let at = Timestamp::parse_rfc3339("2026-12-03T14:05:09.123Z").unwrap();
        assert_eq!(clock(at), "2026-12-03 14:05 UTC");
    }
}
