//! How many start and stop lines lrpm's log carries one by one: a mass
//! start of 10,000 jobs is one event for an operator, not 10,000 lines at
//! info (which, on a stderr slower than the event loop, overflowed the
//! log's queue and lost lines).
//!
//! # Theory of operation
//!
//! Each kind of line ([`Kind`]: started, stopping, stopped) has a window
//! of [`WINDOW`] that opens with its first line. The first [`PER_WINDOW`]
//! lines of a window are logged one by one at info, each with its job and
//! its reason, as every ordinary change is; the rest go to the debug level
//! (still one line each, with the reason, for whoever runs with
//! `--log-level debug`) and are counted by reason. When a window that
//! counted lines ends, one info line says how many and why:
//! `… and 9980 more jobs started in 1s (added 9978; crashed 2); each at
//! debug level`. The end of such a window is a deadline of the event loop
//! ([`LogBurst::deadline`]), not a poll; a window that counted nothing
//! simply lapses.
//!
//! Architecture invariant: a base-level module; it imports nothing from
//! the crate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lrpm_core::human;

/// How long a window lasts.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// How many lines of one kind a window logs one by one at info.
pub(crate) const PER_WINDOW: usize = 20;

/// A kind of line whose bursts are summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `started: …`
    Started,
    /// `stopping: SIGTERM`
    Stopping,
    /// `stopped (killed by SIGTERM)` and the other ends that are no crash.
    Stopped,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Started, Kind::Stopping, Kind::Stopped];

    fn verb(self) -> &'static str {
        match self {
            Kind::Started => "started",
            Kind::Stopping => "stopping",
            Kind::Stopped => "stopped",
        }
    }
}

/// One kind's current window.
#[derive(Debug, Default)]
struct Window {
    /// When it opened; `None` when no window is open.
    began: Option<Instant>,
    /// Lines logged one by one in it.
    logged: usize,
    /// Lines sent to the debug level, by reason.
    unlogged: BTreeMap<&'static str, usize>,
}

impl Window {
    fn ends_at(&self) -> Option<Instant> {
        self.began.map(|began| began + WINDOW)
    }
}

/// The windows of every [`Kind`].
#[derive(Debug, Default)]
pub(crate) struct LogBurst {
    windows: [Window; 3],
}

impl LogBurst {
    /// Whether a `kind` line for `reason` at `now` is logged at info (the
    /// caller then logs it so) or goes to debug, counted for the window's
    /// summary.
    pub(crate) fn admit(&mut self, kind: Kind, reason: &'static str, now: Instant) -> bool {
        if self.windows[kind as usize]
            .ends_at()
            .is_some_and(|end| end <= now)
        {
            self.summarise(kind);
        }
        let window = &mut self.windows[kind as usize];
        window.began.get_or_insert(now);
        if window.logged < PER_WINDOW {
            window.logged += 1;
            return true;
        }
        *window.unlogged.entry(reason).or_default() += 1;
        false
    }

    /// When the first window that counted lines ends: the event loop then
    /// calls [`LogBurst::flush`].
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.windows
            .iter()
            .filter(|w| !w.unlogged.is_empty())
            .filter_map(Window::ends_at)
            .min()
    }

    /// Logs the summary of every window that has ended by `now` (of every
    /// window with `now` `None`: lrpm is exiting), and closes them.
    pub(crate) fn flush(&mut self, now: Option<Instant>) {
        for kind in Kind::ALL {
            let ended = match (now, self.windows[kind as usize].ends_at()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(now), Some(end)) => end <= now,
            };
            if ended {
                self.summarise(kind);
            }
        }
    }

    /// Logs `kind`'s summary, if its window counted lines, and closes it.
    fn summarise(&mut self, kind: Kind) {
        let window = std::mem::take(&mut self.windows[kind as usize]);
        if let Some(line) = summary(kind, &window.unlogged) {
            tracing::info!("{line}");
        }
    }
}

/// `… and 9980 more jobs started in 1s (added 9980); each at debug level`,
/// or `None` when nothing was counted.
fn summary(kind: Kind, unlogged: &BTreeMap<&'static str, usize>) -> Option<String> {
    let total: usize = unlogged.values().sum();
    if total == 0 {
        return None;
    }
    let reasons: Vec<String> = unlogged
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    Some(format!(
        "… and {} {} in {} ({}); each at debug level",
        human::count(total, "more job"),
        kind.verb(),
        human::duration(WINDOW),
        reasons.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_logs_its_first_lines_and_counts_the_rest_by_reason() {
        let mut burst = LogBurst::default();
        let t0 = Instant::now();
        for _ in 0..PER_WINDOW {
            assert!(burst.admit(Kind::Started, "added", t0));
        }
        assert_eq!(burst.deadline(), None, "nothing counted yet");
        assert!(!burst.admit(Kind::Started, "added", t0));
        assert!(!burst.admit(Kind::Started, "crashed", t0 + WINDOW / 2));
        // Other kinds have windows of their own.
        assert!(burst.admit(Kind::Stopping, "removed", t0));
        assert_eq!(burst.deadline(), Some(t0 + WINDOW));
        let window = &burst.windows[Kind::Started as usize];
        assert_eq!(
            summary(Kind::Started, &window.unlogged).as_deref(),
            Some("… and 2 more jobs started in 1s (added 1; crashed 1); each at debug level")
        );
        burst.flush(Some(t0 + WINDOW / 2));
        assert_eq!(burst.deadline(), Some(t0 + WINDOW), "not ended yet");
        burst.flush(Some(t0 + WINDOW));
        assert_eq!(burst.deadline(), None);
        // A new window logs one by one again.
        assert!(burst.admit(Kind::Started, "updated", t0 + WINDOW));
    }

    #[test]
    fn a_lapsed_window_reopens_at_the_next_line() {
        let mut burst = LogBurst::default();
        let t0 = Instant::now();
        for _ in 0..PER_WINDOW {
            assert!(burst.admit(Kind::Stopped, "removed", t0));
        }
        // A line after the window's end opens a new one: logged.
        assert!(burst.admit(Kind::Stopped, "removed", t0 + WINDOW));
        assert_eq!(burst.deadline(), None);
    }

    #[test]
    fn flush_at_exit_closes_every_window() {
        let mut burst = LogBurst::default();
        let t0 = Instant::now();
        for _ in 0..=PER_WINDOW {
            burst.admit(Kind::Stopping, "shutdown", t0);
        }
        assert!(burst.deadline().is_some());
        burst.flush(None);
        assert_eq!(burst.deadline(), None);
        assert!(burst.windows.iter().all(|w| w.began.is_none()));
    }

    #[test]
    fn nothing_counted_is_no_summary() {
        assert_eq!(summary(Kind::Started, &BTreeMap::new()), None);
    }
}
