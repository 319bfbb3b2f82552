//! Untrusted text printed for a person: file names from an index's `entries.json`,
//! fields of a run's `metrics.jsonl`, paths from the command line. Control characters
//! are shown escaped, never sent raw, so a file named `\x1b]0;…` cannot retitle,
//! recolour or clear the user's terminal. Every command prints file-derived text
//! through [`escape_controls`] (or [`json`] for `--json`); the dashboard draws through
//! ratatui, whose buffer drops control characters, and escapes them to show them.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with every control character (C0, DEL and C1) written as `\n`, `\r`, `\t`
/// or `\xNN`; other text, backslashes included, is unchanged.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Every control character is below U+0100 (Unicode category Cc).
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `value` as one line of JSON that is safe on a terminal. serde_json escapes the C0
/// controls inside strings but writes DEL and the C1 controls (U+0080–U+009F, which
/// some terminals obey) raw; here they become `\u00XX` too. Only strings can hold
/// them, so this is the same JSON.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string(value).map(escape_json_controls)
}

/// [`json`], indented.
pub fn json_pretty<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(value).map(escape_json_controls)
}

fn escape_json_controls(text: String) -> String {
    // C0 controls are already escaped inside strings; outside, only layout remains.
    let raw = |c: char| c.is_control() && u32::from(c) >= 0x7f;
    if !text.chars().any(raw) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if raw(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape_controls`] line by line: a multi-line message keeps its line breaks.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\n') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.split('\n')
            .map(escape_controls)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape_controls("shop_01.jpg"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\u{1b}[31mb.jpg"), "a\\x1b[31mb.jpg");
        assert_eq!(escape_controls("x\ny\tz\r"), "x\\ny\\tz\\r");
        assert_eq!(escape_controls("\u{7f}\u{9b}2J"), "\\x7f\\x9b2J");
        assert_eq!(escape_controls("é/中\\n"), "é/中\\n");
        assert_eq!(escape_lines("one\u{1b}c\ntwo"), "one\\x1bc\ntwo");
        assert!(!escape_lines("a\u{7}\nb").contains('\u{7}'));
    }

    #[test]
    fn json_output_escapes_every_control_and_stays_the_same_json() {
        let value =
            serde_json::json!({"name": "a\u{1b}]0;x\u{7}b\u{7f}\u{9b}2J\u{85}é", "n": [1, 2]});
        for text in [
            json(&value).expect("json"),
            json_pretty(&value).expect("json"),
        ] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{text:?}"
            );
            let back: serde_json::Value = serde_json::from_str(&text).expect("parses");
            assert_eq!(back, value);
        }
    }
}
