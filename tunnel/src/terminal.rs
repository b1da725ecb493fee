//! Text from the network made safe to print on a terminal.

use std::borrow::Cow;

/// `text` with control characters (C0, DEL, C1: escape sequences that can retitle, clear or
/// rewrite a terminal), bidirectional overrides (which reorder what is shown) and backslashes
/// written as Rust escapes (`\n`, `\u{1b}`, `\\`), so the output is one line that shows exactly
/// what was received. Borrowed when nothing needs escaping, which is nearly always.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    // Printable ASCII other than the backslash needs nothing: checked per byte, which costs a
    // fraction of decoding each char (the CLI escapes every request's path).
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
    {
        return Cow::Borrowed(text);
    }
    let unsafe_char = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(
            escape_controls("the subdomain \"www\" is taken"),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape_controls("café ✓ /a?b=c d"), "café ✓ /a?b=c d");
        assert_eq!(
            escape_controls("\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nx\u{9b}y\u{7f}"),
            "\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\r\\nx\\u{9b}y\\u{7f}"
        );
        assert_eq!(escape_controls("a\u{202e}b\\n"), "a\\u{202e}b\\\\n");
        // Every ASCII byte: the printable ones other than the backslash stay as they are.
        for b in 0u8..0x80 {
            let text = char::from(b).to_string();
            let kept = (0x20..0x7f).contains(&b) && b != b'\\';
            assert_eq!(escape_controls(&text) == text, kept, "{b:#x}");
            assert_eq!(matches!(escape_controls(&text), Cow::Borrowed(_)), kept);
        }
    }
}
