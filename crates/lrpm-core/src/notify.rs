//! Worker notifications: systemd's sd_notify protocol, parsed.
//!
//! # Theory of operation
//!
//! Every worker gets `NOTIFY_SOCKET`, naming a datagram socket of lrpm's.
//! A worker (or any sd_notify library it uses) sends one datagram per
//! notification: newline-separated `KEY=VALUE` assignments, such as
//! `READY=1\nSTATUS=Serving 12 clients`. The shell receives the datagram,
//! learns *who* sent it from the kernel's credentials (never from its
//! text), and hands the text to [`parse`], which keeps only what lrpm acts
//! on: [`Notification`].
//!
//! The parser is total: any bytes give a notification (garbage gives an
//! empty one), and nothing it returns grows with the input: the status text
//! is cut at [`MAX_STATUS`] bytes.

/// The longest status text kept (`STATUS=`), in bytes: a longer one is cut
/// at a character boundary. systemd keeps the whole text; lrpm shows it in
/// every status answer of a farm of thousands, so it keeps a line's worth.
pub const MAX_STATUS: usize = 256;

/// The largest datagram the shell reads; a longer one is cut by the kernel
/// (systemd's own limit is higher, but no notification lrpm acts on needs
/// more).
pub const MAX_DATAGRAM: usize = 4096;

/// What one datagram says, of what lrpm acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notification {
    /// `READY=1`: the worker finished starting up.
    pub ready: bool,
    /// `STOPPING=1`: the worker is shutting down by itself.
    pub stopping: bool,
    /// `WATCHDOG=1`: the worker is alive (a keep-alive).
    pub watchdog: bool,
    /// `WATCHDOG=trigger`: the worker asks to be treated as hung now.
    pub watchdog_trigger: bool,
    /// `STATUS=…`: free text shown in status (cut at [`MAX_STATUS`] bytes,
    /// invalid UTF-8 replaced). The last one of the datagram wins.
    pub status: Option<String>,
}

impl Notification {
    /// Whether the datagram said nothing lrpm acts on.
    pub fn is_empty(&self) -> bool {
        *self == Notification::default()
    }
}

/// Parses one datagram. Unknown assignments and lines without `=` are
/// ignored, as systemd ignores them.
pub fn parse(datagram: &[u8]) -> Notification {
    let mut n = Notification::default();
    for line in datagram.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        match key {
            b"READY" => n.ready |= value == b"1",
            b"STOPPING" => n.stopping |= value == b"1",
            b"WATCHDOG" if value == b"1" => n.watchdog = true,
            b"WATCHDOG" if value == b"trigger" => n.watchdog_trigger = true,
            b"STATUS" => n.status = Some(status_text(value)),
            _ => {}
        }
    }
    n
}

/// The status text as kept: valid UTF-8 of [`MAX_STATUS`] bytes at most.
fn status_text(value: &[u8]) -> String {
    let value = &value[..value.len().min(MAX_STATUS + 4)];
    let mut text = String::from_utf8_lossy(value).into_owned();
    if text.len() > MAX_STATUS {
        let mut cut = MAX_STATUS;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_usual_messages() {
        assert!(parse(b"READY=1").ready);
        assert!(parse(b"READY=1\n").ready);
        assert!(parse(b"STOPPING=1").stopping);
        assert!(parse(b"WATCHDOG=1").watchdog);
        assert!(parse(b"WATCHDOG=trigger").watchdog_trigger);
        let n = parse(b"READY=1\nSTATUS=Serving 12 clients\nMAINPID=4");
        assert!(n.ready && !n.watchdog);
        assert_eq!(n.status.as_deref(), Some("Serving 12 clients"));
    }

    #[test]
    fn garbage_says_nothing() {
        for junk in [
            &b""[..],
            b"\n\n",
            b"READY",
            b"READY=0",
            b"ready=1",
            b"\0\xff=1",
            b"=1",
        ] {
            assert!(parse(junk).is_empty(), "{junk:?}");
        }
    }

    #[test]
    fn an_empty_status_clears_the_text() {
        assert_eq!(parse(b"STATUS=").status.as_deref(), Some(""));
    }

    #[test]
    fn a_long_status_is_cut_at_a_character_boundary() {
        let mut long = b"STATUS=".to_vec();
        long.extend("é".repeat(1000).as_bytes());
        let text = parse(&long).status.expect("a status");
        assert!(text.len() <= MAX_STATUS && text.len() >= MAX_STATUS - 1);
        assert!(text.chars().all(|c| c == 'é'));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_within_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let n = parse(&bytes);
            prop_assert!(n.status.map_or(0, |s| s.len()) <= MAX_STATUS);
        }

        #[test]
        fn assignments_are_found_among_others(
            before in "[A-Z_]{1,8}=[a-z0-9 ]{0,8}",
            after in "[A-Z_]{1,8}=[a-z0-9 ]{0,8}",
        ) {
            prop_assume!(!before.starts_with("READY=") && !after.starts_with("READY="));
            let text = format!("{before}\nREADY=1\n{after}");
            prop_assert!(parse(text.as_bytes()).ready);
        }
    }
}
