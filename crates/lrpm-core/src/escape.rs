//! The one escaping of outside text for a terminal: job ids and names,
//! commands, source errors, anything a configuration or a client chose.
//!
//! The C0 controls, DEL and the C1 controls (Unicode's `Cc`) are written as
//! escapes: `\t`, `\n` and `\r` by those names, the rest of C0 and DEL as
//! `\x1b`, C1 as `\u{9b}`. Everything else is written as it is, so that
//! ordinary text (a backslash included) reads the same. Used by the status
//! table of `lrpmctl` and every field of lrpm's text log, so that no
//! declaration can clear an operator's screen, move the cursor or forge a
//! log line.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// `text`, displayed with its control characters escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

/// Whether `c` is written as an escape: C0, DEL or C1.
pub fn is_escaped(c: char) -> bool {
    c.is_control()
}

/// Writes `text` to `out` with its control characters escaped.
pub fn write_escaped<W: Write + ?Sized>(out: &mut W, text: &str) -> fmt::Result {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if !is_escaped(c) {
            continue;
        }
        out.write_str(&text[start..i])?;
        match c {
            '\t' => out.write_str("\\t")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            c if u32::from(c) < 0x80 => write!(out, "\\x{:02x}", u32::from(c))?,
            c => write!(out, "\\u{{{:x}}}", u32::from(c))?,
        }
        start = i + c.len_utf8();
    }
    out.write_str(&text[start..])
}

/// `text` with its control characters escaped; borrowed when it has none.
pub fn escape(text: &str) -> Cow<'_, str> {
    if text.chars().any(is_escaped) {
        Cow::Owned(Escaped(text).to_string())
    } else {
        Cow::Borrowed(text)
    }
}

/// A [`fmt::Write`] that escapes everything written through it into the
/// writer it wraps: for text that is formatted piecemeal (a log field).
#[derive(Debug)]
pub struct EscapingWriter<'a, W: Write + ?Sized>(pub &'a mut W);

impl<W: Write + ?Sized> Write for EscapingWriter<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("job\u{1b}[2J\nnext"), "job\\x1b[2J\\nnext");
        assert_eq!(escape("a\tb\rc\u{7f}\u{0}"), "a\\tb\\rc\\x7f\\x00");
        assert_eq!(escape("csi \u{9b}2J \u{85}"), "csi \\u{9b}2J \\u{85}");
        assert!(matches!(escape("plain é 中 \\x1b"), Cow::Borrowed(_)));
        let mut out = String::new();
        let a = "a\u{1b}";
        write!(EscapingWriter(&mut out), "{a}-{:?}", 'b').expect("write");
        assert_eq!(out, "a\\x1b-'b'");
    }

    proptest! {
        #[test]
        fn nothing_escaped_is_left_and_plain_text_is_kept(text in any::<String>()) {
            let escaped = escape(&text);
            prop_assert!(!escaped.chars().any(is_escaped));
            if !text.chars().any(is_escaped) {
                prop_assert_eq!(escaped.as_ref(), text.as_str());
            }
        }
    }
}
