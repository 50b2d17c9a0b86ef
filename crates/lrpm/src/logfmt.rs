//! The fields of lrpm's text log, with the control characters of every
//! value escaped ([`lrpm_core::escape`]): a job id, a command or a source's
//! error holds text a declaration chose, and none of it may reach an
//! operator's terminal raw (an `ESC[2J` that clears it, a newline that
//! forges a log line). The JSON log escapes by itself.

use std::fmt::{self, Write as _};

use lrpm_core::escape::EscapingWriter;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Formats the fields of an event or a span as `tracing_subscriber`'s
/// default does (the message, then `name=value` separated by spaces),
/// every value escaped.
#[derive(Debug, Default)]
pub(crate) struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = Visitor {
            writer: &mut writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes each field it is shown.
struct Visitor<'a, 'writer> {
    /// Where the fields go.
    writer: &'a mut Writer<'writer>,
    /// Whether nothing was written yet (no space before the first field).
    empty: bool,
    /// The first error.
    result: fmt::Result,
}

impl Visit for Visitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        self.record_debug(field, &format_args!("{text}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        if !self.empty {
            self.result = self.writer.write_char(' ');
        }
        self.empty = false;
        let name = name.strip_prefix("r#").unwrap_or(name);
        if name != "message" {
            self.result = self.result.and_then(|()| write!(self.writer, "{name}="));
        }
        self.result = self
            .result
            .and_then(|()| write!(EscapingWriter(&mut *self.writer), "{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the text log shows of one event with a hostile job id and
    /// message.
    fn logged(emit: impl FnOnce()) -> String {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(std::sync::Arc::clone(&sink)))
            .with_ansi(false)
            .without_time()
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buf.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_value_is_escaped_and_one_event_is_one_line() {
        let job = "evil\u{1b}[2J\nforged";
        let error = std::io::Error::other("bad\u{9b}31m");
        let line = logged(|| {
            tracing::warn!(job = %job, pid = 7, quoted = job, "cannot start: {error}\u{7}");
        });
        assert_eq!(line.lines().count(), 1, "{line:?}");
        assert!(
            !line.trim_end_matches('\n').chars().any(char::is_control),
            "{line:?}"
        );
        assert!(
            line.contains(r"cannot start: bad\u{9b}31m\x07 job=evil\x1b[2J\nforged pid=7"),
            "{line}"
        );
        // A string field keeps its quotes (Rust's escaping is already safe).
        assert!(line.contains(r#"quoted="evil\u{1b}[2J\nforged""#), "{line}");
    }
}
