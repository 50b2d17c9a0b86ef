//! The configuration sandbox: runs the user's [`ConfigurationSource`] and
//! writes each configuration it loads to stdout.
//!
//! The protocol with the supervisor is one JSON object per line on stdout:
//! `{"ok":true,"jobs":{…}}` after a successful load, `{"ok":false,"error":"…"}`
//! after a failed one. Between loads the process sleeps for the interval
//! (its first argument, in seconds; `0` loads again at once) or until a
//! SIGHUP, which the supervisor sends for `lrpmctl reload`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::api::ConfigurationSource;

/// Runs the configuration source made by `factory`, loading every
/// `interval` (0: again as soon as a load is done).
pub(crate) fn run(
    interval: Duration,
    factory: Box<dyn FnOnce() -> Box<dyn ConfigurationSource>>,
) -> ExitCode {
    // SIGHUP writes a byte to this pipe; the wait between loads polls it.
    let (hup_rx, hup_tx) = match std::os::unix::net::UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("lrpm: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = hup_rx
        .set_nonblocking(true)
        .and_then(|()| signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, hup_tx))
    {
        eprintln!("lrpm: cannot install the SIGHUP handler: {e}");
        return ExitCode::FAILURE;
    }
    let mut source = factory();
    let stdout = std::io::stdout();
    loop {
        let line = match source.load_configuration() {
            Ok(jobs) => json!({"ok": true, "jobs": jobs}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        };
        let mut out = stdout.lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // The supervisor closed the pipe: it is gone.
            return ExitCode::SUCCESS;
        }
        drop(out);
        if !interval.is_zero() {
            wait(&hup_rx, interval);
        }
    }
}

/// Sleeps for `interval`, or less if a SIGHUP arrives.
fn wait(hup: &std::os::unix::net::UnixStream, interval: Duration) {
    use rustix::event::{PollFd, PollFlags, poll};
    let deadline = std::time::Instant::now() + interval;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let timeout = rustix::fs::Timespec::try_from(left).ok();
        let mut fds = [PollFd::new(hup, PollFlags::IN)];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) => return,
            Ok(_) => {
                // Drain the wake-up bytes, then load at once.
                let mut buf = [0u8; 64];
                while rustix::io::read(hup, &mut buf).is_ok_and(|n| n > 0) {}
                return;
            }
            // EINTR: a signal without a byte; keep waiting.
            Err(_) => continue,
        }
    }
}
