//! Text for the machine-readable reports: characters a format cannot carry rendered
//! visibly, so a message is never dropped or written raw, and its summary line.

use std::borrow::Cow;

/// `text` with every character `keep` refuses written as an escape: `\x00` for a
/// control character, `\u{fffe}` above U+00FF. The backslash itself is left alone:
/// reports are read by people, and Windows paths in messages stay readable.
pub fn visible(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if text.chars().all(&keep) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if keep(c) {
            out.push(c);
        } else if (c as u32) <= 0xff {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// The first non-blank line of `text`, trimmed: a message's summary.
pub fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_characters_are_escaped_visibly() {
        let keep = |c: char| !c.is_control() && c != '\u{fffe}';
        assert_eq!(visible("plain", keep), "plain");
        assert!(matches!(visible("plain", keep), Cow::Borrowed(_)));
        assert_eq!(
            visible("a\0b\x1b[0m\u{fffe}\\x", keep),
            "a\\x00b\\x1b[0m\\u{fffe}\\x"
        );
    }

    #[test]
    fn first_line_skips_blank_lines() {
        assert_eq!(first_line("\n  boom  \nmore"), "boom");
        assert_eq!(first_line(""), "");
    }
}
