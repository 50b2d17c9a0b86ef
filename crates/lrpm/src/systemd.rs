//! What lrpm tells systemd when it runs as a `Type=notify` service: that it
//! is ready, what it is doing, that it is stopping, and that its event loop
//! is alive (the watchdog).
//!
//! Everything here is a no-op without `NOTIFY_SOCKET`. The messages are
//! sent with the `sd-notify` crate, one datagram each, from the event loop:
//! `READY=1` once, `STATUS=` at most once a second and only when its text
//! changed, `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1` once. A
//! failed send is logged once and never stops lrpm.
//!
//! lrpm's own `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` never reach
//! a worker (they are in `base::HIDDEN_ENV`).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How often `STATUS=` may change at most.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// lrpm's link to systemd.
#[derive(Debug)]
pub(crate) struct Systemd {
    /// Whether `NOTIFY_SOCKET` was set when lrpm started.
    enabled: bool,
    /// Whether `READY=1` was sent.
    ready: bool,
    /// The last `STATUS=` text sent.
    status: String,
    /// When `STATUS=` may be sent next.
    status_at: Option<Instant>,
    /// The watchdog's period (half of `WATCHDOG_USEC`), when the unit
    /// has `WatchdogSec=`.
    watchdog: Option<Duration>,
    /// Whether a failed send was logged.
    failed: bool,
}

impl Systemd {
    /// Reads lrpm's environment: `NOTIFY_SOCKET`, and `WATCHDOG_USEC` when
    /// `WATCHDOG_PID` is lrpm's pid or unset.
    pub(crate) fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = enabled
            .then(sd_notify::watchdog_enabled)
            .flatten()
            .filter(|usec| !usec.is_zero())
            .map(|usec| usec / 2);
        Self {
            enabled,
            ready: false,
            status: String::new(),
            status_at: None,
            watchdog,
            failed: false,
        }
    }

    /// The watchdog's period, if systemd expects `WATCHDOG=1`.
    pub(crate) fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Whether `READY=1` was sent (or there is no systemd to tell).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready || !self.enabled
    }

    /// Sends `READY=1`, with `status`, once.
    pub(crate) fn ready(&mut self, status: String) {
        if self.is_ready() {
            return;
        }
        self.ready = true;
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.status = status;
        self.status_at = Some(Instant::now() + STATUS_EVERY);
    }

    /// Whether a new `STATUS=` may be sent at `now`.
    pub(crate) fn status_due(&self, now: Instant) -> bool {
        self.enabled && self.ready && self.status_at.is_none_or(|at| now >= at)
    }

    /// Sends `STATUS=status` if it changed; the next one waits a second.
    pub(crate) fn status(&mut self, now: Instant, status: String) {
        if !self.status_due(now) || status == self.status {
            return;
        }
        self.send(&[NotifyState::Status(&status)]);
        self.status = status;
        self.status_at = Some(now + STATUS_EVERY);
    }

    /// Sends `WATCHDOG=1`.
    pub(crate) fn watchdog(&mut self) {
        if self.enabled && self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// Sends `STOPPING=1` with why.
    pub(crate) fn stopping(&mut self, why: &str) {
        if self.enabled {
            let status = format!("stopping ({why})");
            self.send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
        }
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            if !std::mem::replace(&mut self.failed, true) {
                tracing::warn!("cannot notify systemd on NOTIFY_SOCKET: {e}");
            }
        }
    }
}

/// The `STATUS=` text: how many jobs are in each state, e.g.
/// `5 jobs: 4 running, 1 backoff`; `no jobs` for none.
pub(crate) fn status_text<'a>(states: impl Iterator<Item = &'a str>) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut total = 0;
    for state in states {
        total += 1;
        match counts.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => counts.push((state, 1)),
        }
    }
    if total == 0 {
        return "no jobs".into();
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let noun = if total == 1 { "job" } else { "jobs" };
    format!("{total} {noun}: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_text_counts_states_most_first() {
        assert_eq!(status_text(std::iter::empty()), "no jobs");
        assert_eq!(status_text(["running"].into_iter()), "1 job: 1 running");
        assert_eq!(
            status_text(["backoff", "running", "running", "stopping"].into_iter()),
            "4 jobs: 2 running, 1 backoff, 1 stopping"
        );
    }

    #[test]
    fn status_waits_a_second_and_only_changes_are_sent() {
        let mut systemd = Systemd {
            enabled: true,
            ready: true,
            status: "1 job: 1 running".into(),
            status_at: None,
            watchdog: None,
            failed: true,
        };
        let t = Instant::now();
        assert!(systemd.status_due(t));
        systemd.status(t, "1 job: 1 running".into());
        assert!(systemd.status_due(t), "an unchanged text is not sent");
        systemd.status(t, "1 job: 1 backoff".into());
        assert!(!systemd.status_due(t + Duration::from_millis(500)));
        assert!(systemd.status_due(t + STATUS_EVERY));
    }
}
