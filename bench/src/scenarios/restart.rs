//! Crash → restart latency: SIGKILL one worker of a running farm at t0,
//! wait for its replacement's report, and take the replacement's `main`
//! time minus t0. The same method serves lrpm and its peers.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, ensure};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use crate::bench::Bench;
use crate::cleanup;
use crate::collector::Roster;
use crate::procfs::{self, monotonic_ns};
use crate::stats::{Rng, Samples};

/// How long a supervisor is left alone after a replacement reported,
/// before the next crash: lrpm's crash series and the floor's pause this
/// long, so that their crashes meet the machine in the same state.
pub const PAUSE: Duration = Duration::from_millis(5);

/// How one series of crashes is run.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    /// How many crashes.
    pub samples: usize,
    /// How long to let the supervisor settle after each replacement
    /// reported, before the next crash.
    pub settle: Duration,
    /// How long a replacement may take.
    pub timeout: Duration,
    /// Whether each crash hits a job not crashed before in the series (a
    /// peer's own restart throttle then never decides; see `suite::peer`).
    pub distinct: bool,
}

/// Crashes `series.samples` workers of a farm of `jobs` jobs whose current
/// workers `roster` knows, one at a time, picked at random; adds each
/// crash → replacement latency to `out`.
pub fn measure(
    bench: &Bench,
    roster: &mut Roster,
    jobs: usize,
    series: Series,
    out: &mut Samples,
) -> anyhow::Result<()> {
    let mut rng = Rng::new(jobs as u64);
    let mut crashed = HashSet::new();
    ensure!(
        !series.distinct || series.samples <= jobs,
        "{} distinct crashes among {jobs} jobs",
        series.samples
    );
    for _ in 0..series.samples {
        let mut id = rng.below(jobs);
        while series.distinct && !crashed.insert(id) {
            id = rng.below(jobs);
        }
        let old = roster
            .pid(id)
            .with_context(|| format!("job {id} has no known worker"))?;
        let pidfd = pidfd_open(
            Pid::from_raw(old as i32).context("a worker's pid is positive")?,
            PidfdFlags::empty(),
        )
        .with_context(|| format!("pidfd_open of job {id}'s worker {old}"))?;
        // The pidfd pins the process; make sure it is this run's worker.
        ensure!(
            procfs::carries(old, cleanup::token()),
            "pid {old} is not a worker of this run"
        );
        let t0 = monotonic_ns();
        pidfd_send_signal(pidfd.as_fd(), Signal::KILL)?;
        let hello = roster
            .wait_for(&bench.collector, series.timeout, |h| {
                h.id as usize == id && h.pid != old
            })
            .with_context(|| format!("job {id} was not restarted"))?;
        out.push_ns(hello.ns.saturating_sub(t0));
        std::thread::sleep(series.settle);
    }
    Ok(())
}
