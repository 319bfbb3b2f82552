//! Untrusted text printed for a person: file names from an index's `entries.json`,
//! fields of a run's `metrics.jsonl`, paths from the command line. Control characters
//! are shown escaped, never sent raw, so a file named `\x1b]0;…` cannot retitle,
//! recolour or clear the user's terminal. Every command prints file-derived text
//! through [`escape_controls`] (or [`json`] for `--json`); the dashboard draws through
//! ratatui, whose buffer drops control characters, and escapes them to show them.
//!
//! Times for a person, the same in the commands and the dashboard: [`duration`]
//! (`3m04s`) and how long ago something was ([`ago`], [`ago_exact`]).

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

/// A length of time: `1h02m`, `3m04s` or `12s`, rounded to the second (a negative
/// one is `0s`); `?` where it is not a number.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".into();
    }
    let s = seconds.round().max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// How long before `now` the time `then` was (both in seconds since the Unix epoch),
/// in its largest unit: `12s ago`, `5m ago`, `3h ago`, `2d ago`; `—` where unknown.
pub fn ago(then: Option<f64>, now: f64) -> String {
    let Some(t) = then else {
        return "—".into();
    };
    let d = (now - t).max(0.0) as u64;
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// [`ago`] as a [`duration`]: `12s ago`, `5m04s ago`, `50h02m ago`; `—` where
/// unknown.
pub fn ago_exact(then: Option<f64>, now: f64) -> String {
    then.map_or_else(|| "—".into(), |t| format!("{} ago", duration(now - t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ages_read_the_same_everywhere() {
        assert_eq!(duration(5.2), "5s");
        assert_eq!(duration(59.6), "1m00s");
        assert_eq!(duration(245.0), "4m05s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(-3.0), "0s");
        assert_eq!(duration(f64::NAN), "?");
        assert_eq!(duration(f64::INFINITY), "?");
        assert_eq!(ago(None, 100.0), "—");
        assert_eq!(ago(Some(88.0), 100.0), "12s ago");
        assert_eq!(ago(Some(0.0), 330.0), "5m ago");
        assert_eq!(ago(Some(0.0), 3.0 * 86400.0), "3d ago");
        assert_eq!(ago(Some(200.0), 100.0), "0s ago");
        assert_eq!(ago_exact(Some(0.0), 304.0), "5m04s ago");
        assert_eq!(ago_exact(Some(0.0), 50.0 * 3600.0 + 120.0), "50h02m ago");
        assert_eq!(ago_exact(None, 1.0), "—");
    }

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
