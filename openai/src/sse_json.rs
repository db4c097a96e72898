//! JSON for one SSE `data:` line. The SSE spec ends lines only at CR and LF (which JSON
//! always escapes), but clients that split with a general line splitter (Python's
//! `str.splitlines`, some JavaScript readers) also break at U+0085, U+2028 and U+2029,
//! which JSON may carry raw inside strings. Model text can hold any of them, so they go
//! out escaped: the same JSON value, on one line for every reader.

use serde::Serialize;

/// `v` as compact JSON with U+0085, U+2028 and U+2029 escaped.
pub fn sse_json(v: &impl Serialize) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    escape_line_breaks(s)
}

/// JSON text with U+0085, U+2028 and U+2029 escaped (they can only occur in strings).
pub fn escape_line_breaks(s: String) -> String {
    if !s.contains(['\u{85}', '\u{2028}', '\u{2029}']) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\u{85}' => out.push_str("\\u0085"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn unicode_line_breaks_are_escaped_and_the_value_is_unchanged() {
        let v = json!({"text": "a\u{85}b\u{2028}c\u{2029}d\ne", "n": 1});
        let s = sse_json(&v);
        assert_eq!(s.lines().count(), 1, "{s}");
        // Python's str.splitlines breaks at these too.
        assert!(!s.contains(['\u{85}', '\u{2028}', '\u{2029}', '\u{1c}', '\u{1d}', '\u{1e}']));
        assert_eq!(serde_json::from_str::<Value>(&s).unwrap(), v);
        assert_eq!(sse_json(&json!({"t": "plain"})), r#"{"t":"plain"}"#);
    }
}
