//! What lrpm knows of a running process beyond "it has not exited":
//! whether it is ready (`notify`), whether it is alive (`watchdogSeconds`)
//! and whether it is healthy (`healthCheck`).
//!
//! # Theory of operation
//!
//! A [`Liveness`] belongs to one run of a job, from its start to its exit,
//! and is pure: each method takes the time and the job's declaration and
//! says what follows. A run is *up* from its spawn, or, for a `notify` job,
//! from its `READY=1`. From then on:
//!
//! * with `watchdogSeconds`, it must send `WATCHDOG=1` before
//!   `up + watchdogSeconds`, and each keep-alive pushes the deadline on; a
//!   deadline that passes makes it hung ([`Due::Hung`]);
//! * with a `healthCheck`, a probe is due every `intervalSeconds` (from the
//!   last probe's result); after `retries` failures in a row it is unhealthy
//!   ([`Probed::Unhealthy`]). Failures within `startSeconds` of being up
//!   do not count until a first success, as Docker's start period.
//!
//! Architecture invariant: only a running process has a liveness deadline
//! (the supervisor keeps a [`Liveness`] inside its running state only), so
//! neither the watchdog nor a health check ever fires for a job that is not
//! running. `STOPPING=1` disarms both: a worker that says it is going away is
//! not hung.

use std::time::Instant;

use crate::job::JobSpec;
use crate::notify::Notification;
use crate::status::Health;

/// One run's readiness, watchdog and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Liveness {
    /// Whether the run is ready: at once for a job without `notify`, at
    /// `READY=1` for the others.
    ready: bool,
    /// When it became ready.
    up_since: Option<Instant>,
    /// When it is hung, unless a keep-alive comes first.
    watchdog_at: Option<Instant>,
    /// When the next probe is due; `None` while one is under way.
    probe_at: Option<Instant>,
    /// Whether a probe is under way (its result is awaited).
    probing: bool,
    /// Failed probes in a row.
    failures: u32,
    /// What the probes say, with a health check.
    health: Option<Health>,
}

/// What a passed deadline means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// The watchdog's deadline passed: the run is hung.
    Hung,
    /// A probe is due: the shell runs one and reports it.
    Probe,
    /// Nothing (the deadline moved).
    Nothing,
}

/// What a probe's result means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probed {
    /// The run goes on; the next probe is scheduled.
    Fine,
    /// `retries` failures in a row: the run is unhealthy.
    Unhealthy,
    /// Not a result the run waited for (stale); ignored.
    Ignored,
}

impl Liveness {
    /// A run started at `now`.
    pub(crate) fn new(now: Instant, spec: &JobSpec) -> Self {
        let mut live = Liveness {
            ready: false,
            up_since: None,
            watchdog_at: None,
            probe_at: None,
            probing: false,
            failures: 0,
            health: spec.health_check.as_ref().map(|_| Health::Starting),
        };
        if !spec.notify {
            live.up(now, spec);
        }
        live
    }

    /// The run's process was spawned at `now`: for a run already up (no
    /// `notify`), its deadlines count from then rather than from when the
    /// spawn was asked for.
    pub(crate) fn spawned(&mut self, now: Instant, spec: &JobSpec) {
        if self.ready && self.up_since.is_some_and(|at| at < now) {
            self.up(now, spec);
        }
    }

    fn up(&mut self, now: Instant, spec: &JobSpec) {
        self.ready = true;
        self.up_since = Some(now);
        self.watchdog_at = spec.watchdog.map(|d| now + d);
        self.probe_at = spec.health_check.as_ref().map(|c| now + c.interval);
        self.probing = false;
    }

    /// Whether the run is ready (see [`Liveness`]).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready
    }

    /// What the probes say, if the job has a health check.
    pub(crate) fn health(&self) -> Option<Health> {
        self.health
    }

    /// The earliest of the run's deadlines.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.watchdog_at, self.probe_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes a notification from the run; returns whether it asked to be
    /// taken for hung (`WATCHDOG=trigger`, with a watchdog).
    pub(crate) fn notified(&mut self, now: Instant, n: &Notification, spec: &JobSpec) -> bool {
        if n.stopping {
            self.watchdog_at = None;
            self.probe_at = None;
            self.probing = false;
            return false;
        }
        if n.ready && !self.ready {
            self.up(now, spec);
        }
        if n.watchdog_trigger && self.watchdog_at.is_some() {
            return true;
        }
        if n.watchdog && self.watchdog_at.is_some() {
            self.watchdog_at = spec.watchdog.map(|d| now + d);
        }
        false
    }

    /// The deadline has passed at `now`: what it means. A probe marked due
    /// is under way until [`Liveness::probed`].
    pub(crate) fn due(&mut self, now: Instant) -> Due {
        if self.watchdog_at.is_some_and(|at| at <= now) {
            self.watchdog_at = None;
            self.probe_at = None;
            return Due::Hung;
        }
        if self.probe_at.is_some_and(|at| at <= now) {
            self.probe_at = None;
            self.probing = true;
            return Due::Probe;
        }
        Due::Nothing
    }

    /// A probe's result, at `now`.
    pub(crate) fn probed(&mut self, now: Instant, healthy: bool, spec: &JobSpec) -> Probed {
        let Some(check) = spec.health_check.as_ref().filter(|_| self.probing) else {
            return Probed::Ignored;
        };
        self.probing = false;
        if healthy {
            self.failures = 0;
            self.health = Some(Health::Healthy);
        } else {
            let grace = self.health == Some(Health::Starting)
                && self.up_since.is_some_and(|up| now < up + check.start);
            if !grace {
                self.failures += 1;
            }
            if self.failures >= check.retries {
                self.health = Some(Health::Unhealthy);
                return Probed::Unhealthy;
            }
        }
        self.probe_at = Some(now + check.interval);
        Probed::Fine
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::{HealthCheck, Probe};
    use crate::job::Program;
    use crate::notify::parse;

    const SEC: Duration = Duration::from_secs(1);

    fn spec(notify: bool, watchdog: Option<u64>, check: Option<(u64, u32, u64)>) -> JobSpec {
        let mut s = JobSpec::new("j", Program::Shell("w".into()));
        s.notify = notify;
        s.watchdog = watchdog.map(Duration::from_secs);
        s.health_check = check.map(|(interval, retries, start)| HealthCheck {
            probe: Probe::Tcp {
                host: "h".into(),
                port: 1,
            },
            interval: Duration::from_secs(interval),
            timeout: SEC,
            retries,
            start: Duration::from_secs(start),
        });
        s
    }

    #[test]
    fn a_plain_job_is_ready_at_once_and_has_no_deadline() {
        let t0 = Instant::now();
        let l = Liveness::new(t0, &spec(false, None, None));
        assert!(l.is_ready());
        assert_eq!(l.deadline(), None);
        assert_eq!(l.health(), None);
    }

    #[test]
    fn a_notify_job_is_ready_at_ready_and_its_watchdog_counts_from_then() {
        let t0 = Instant::now();
        let s = spec(true, Some(5), None);
        let mut l = Liveness::new(t0, &s);
        assert!(!l.is_ready());
        assert_eq!(l.deadline(), None, "no watchdog before READY=1");
        assert!(!l.notified(t0 + SEC, &parse(b"WATCHDOG=1"), &s));
        assert_eq!(l.deadline(), None, "a keep-alive does not make it ready");
        l.notified(t0 + 2 * SEC, &parse(b"READY=1"), &s);
        assert!(l.is_ready());
        assert_eq!(l.deadline(), Some(t0 + 7 * SEC));
    }

    #[test]
    fn keep_alives_push_the_watchdog_on_and_silence_hangs() {
        let t0 = Instant::now();
        let s = spec(false, Some(3), None);
        let mut l = Liveness::new(t0, &s);
        l.spawned(t0 + SEC, &s);
        assert_eq!(l.deadline(), Some(t0 + 4 * SEC), "counted from the spawn");
        l.notified(t0 + 3 * SEC, &parse(b"WATCHDOG=1"), &s);
        assert_eq!(l.deadline(), Some(t0 + 6 * SEC));
        assert_eq!(l.due(t0 + 5 * SEC), Due::Nothing);
        assert_eq!(l.due(t0 + 6 * SEC), Due::Hung);
        assert_eq!(l.deadline(), None, "hung once");
    }

    #[test]
    fn watchdog_trigger_and_stopping() {
        let t0 = Instant::now();
        let s = spec(false, Some(3), Some((1, 1, 0)));
        let mut l = Liveness::new(t0, &s);
        assert!(l.notified(t0, &parse(b"WATCHDOG=trigger"), &s));
        let mut l = Liveness::new(t0, &s);
        assert!(!l.notified(t0, &parse(b"STOPPING=1"), &s));
        assert_eq!(
            l.deadline(),
            None,
            "a stopping worker is neither hung nor probed"
        );
        let plain = spec(false, None, None);
        let mut l = Liveness::new(t0, &plain);
        assert!(
            !l.notified(t0, &parse(b"WATCHDOG=trigger"), &plain),
            "no watchdog, no trigger"
        );
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy() {
        let t0 = Instant::now();
        let s = spec(false, None, Some((10, 3, 0)));
        let mut l = Liveness::new(t0, &s);
        assert_eq!(l.health(), Some(Health::Starting));
        assert_eq!(l.deadline(), Some(t0 + 10 * SEC));
        let mut t = t0 + 10 * SEC;
        assert_eq!(l.due(t), Due::Probe);
        assert_eq!(l.deadline(), None, "one probe at a time");
        assert_eq!(l.probed(t, true, &s), Probed::Fine);
        assert_eq!(l.health(), Some(Health::Healthy));
        for _ in 0..2 {
            t += 10 * SEC;
            assert_eq!(l.due(t), Due::Probe);
            assert_eq!(l.probed(t, false, &s), Probed::Fine);
        }
        t += 10 * SEC;
        assert_eq!(l.due(t), Due::Probe);
        assert_eq!(
            l.probed(t, true, &s),
            Probed::Fine,
            "a success resets the count"
        );
        for _ in 0..2 {
            t += 10 * SEC;
            l.due(t);
            assert_eq!(l.probed(t, false, &s), Probed::Fine);
        }
        t += 10 * SEC;
        l.due(t);
        assert_eq!(l.probed(t, false, &s), Probed::Unhealthy);
        assert_eq!(l.health(), Some(Health::Unhealthy));
        assert_eq!(l.probed(t, false, &s), Probed::Ignored, "nothing under way");
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let t0 = Instant::now();
        let s = spec(false, None, Some((1, 1, 5)));
        let mut l = Liveness::new(t0, &s);
        for i in 1..5 {
            l.due(t0 + i * SEC);
            assert_eq!(l.probed(t0 + i * SEC, false, &s), Probed::Fine);
        }
        l.due(t0 + 5 * SEC);
        assert_eq!(l.probed(t0 + 5 * SEC, false, &s), Probed::Unhealthy);
    }
}
