//! Mass start: from the moment the configuration is given to the moment
//! the last worker's `main` ran.
//!
//! lrpm is started on an empty jobs file first, so that its own start-up
//! is not counted; the clock starts when the full jobs file is written
//! (renamed into place), and lrpm picks it up through inotify.
//! The peers are given their jobs the way they are meant to be: their
//! clock starts at their own spawn, with every job in their configuration. Each start returns the running
//! farm, which the other scenarios then use.

use std::time::Duration;

use anyhow::ensure;

use crate::bench::{Bench, Plan, WorkerMode};
use crate::collector::Roster;
use crate::lrpm::{JobSet, Lrpm};
use crate::peers::{Installed, Kind, Peer};
use crate::procfs::monotonic_ns;
use crate::results::{Metric, Results, Subject};

/// The farm size whose mass start is plotted (workers running against
/// time).
pub const CURVE_JOBS: usize = 1000;

/// A running lrpm farm.
#[derive(Debug)]
pub struct LrpmFarm {
    /// The supervisor.
    pub lrpm: Lrpm,
    /// The current worker of each job.
    pub roster: Roster,
    /// The declaration it runs.
    pub jobs: JobSet,
}

/// Starts lrpm (with its hard descriptor limit raised to `raise_nofile`
/// if given), then gives it `jobs` jobs at once, and records how long they
/// took to be all running.
pub fn lrpm(
    bench: &Bench,
    jobs: usize,
    raise_nofile: Option<u64>,
    results: &mut Results,
) -> anyhow::Result<LrpmFarm> {
    start(bench, jobs, raise_nofile, &[], Metric::MassStart, results)
}

/// The same with `--cgroup off` (no cgroup per run, a subreaper instead),
/// recorded as [`Metric::MassStartUncontained`]: what the containment
/// costs a mass start.
pub fn lrpm_uncontained(
    bench: &Bench,
    jobs: usize,
    results: &mut Results,
) -> anyhow::Result<LrpmFarm> {
    let off = ["--cgroup", "off"];
    start(
        bench,
        jobs,
        None,
        &off,
        Metric::MassStartUncontained,
        results,
    )
}

fn start(
    bench: &Bench,
    jobs: usize,
    raise_nofile: Option<u64>,
    args: &[&str],
    metric: Metric,
    results: &mut Results,
) -> anyhow::Result<LrpmFarm> {
    let lrpm = Lrpm::start(bench, raise_nofile, args)?;
    let set = JobSet::new(jobs, WorkerMode::Pause);
    let content = set.to_toml(bench);
    let mut roster = Roster::new(jobs);
    bench.collector.drain();
    let t0 = lrpm.write_jobs(&content)?;
    let stamps = match roster.wait_all_stamps(&bench.collector, Plan::start_timeout(jobs)) {
        Ok(stamps) => stamps,
        Err(e) => return Err(e.context(format!("lrpm's log ends with:\n{}", lrpm.log_tail()))),
    };
    let last = stamps.iter().copied().max().unwrap_or(t0);
    results
        .times(metric, Subject::Lrpm, jobs)
        .push_ns(last.saturating_sub(t0));
    if metric == Metric::MassStart && jobs == CURVE_JOBS && !results.has_curve(Subject::Lrpm) {
        results.set_curve(Subject::Lrpm, since(t0, &stamps));
    }
    // Every worker ran its main, so lrpm has recorded every spawn.
    let (listed, running) = lrpm.running()?;
    ensure!(
        listed == jobs && running == jobs,
        "lrpm lists {listed} jobs, {running} running, of {jobs}"
    );
    Ok(LrpmFarm {
        lrpm,
        roster,
        jobs: set,
    })
}

/// A running farm of a peer.
pub struct PeerFarm {
    /// The supervisor.
    pub peer: Box<dyn Peer>,
    /// Who it is in the results.
    pub subject: Subject,
    /// The current worker of each job.
    pub roster: Roster,
    /// How many jobs.
    pub jobs: usize,
}

/// Starts a peer with `jobs` jobs and records how long they took to be all
/// running: by their reports (when `curve`, also each worker's), and by
/// the peer's own account when it keeps one (supervisord's RUNNING).
pub fn peer(
    bench: &Bench,
    kind: Kind,
    installed: &Installed,
    jobs: usize,
    curve: bool,
    results: &mut Results,
) -> anyhow::Result<PeerFarm> {
    let subject = kind.subject();
    let mut roster = Roster::new(jobs);
    bench.collector.drain();
    let (mut peer, t0) = kind.start(bench, installed, jobs)?;
    let stamps = match roster.wait_all_stamps(&bench.collector, Plan::start_timeout(jobs) * 4) {
        Ok(stamps) => stamps,
        Err(e) => {
            return Err(e.context(format!(
                "{}'s log ends with:\n{}",
                subject.name(),
                peer.log_tail()
            )));
        }
    };
    let last = stamps.iter().copied().max().unwrap_or(t0);
    results
        .times(Metric::MassStart, subject, jobs)
        .push_ns(last.saturating_sub(t0));
    if curve {
        results.set_curve(subject, since(t0, &stamps));
    }
    peer.wait_ready(Duration::from_secs(60))?;
    if curve && peer.running_by_own_account()?.is_some() {
        let deadline = std::time::Instant::now() + Plan::start_timeout(jobs) * 4;
        loop {
            let running = peer.running_by_own_account()?.unwrap_or(0);
            if running == jobs {
                let now = monotonic_ns();
                results
                    .times(Metric::AllRunning, subject, jobs)
                    .push_ns(now.saturating_sub(t0));
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{} shows {running} of {jobs} jobs running",
                subject.name()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(PeerFarm {
        peer,
        subject,
        roster,
        jobs,
    })
}

/// The workers' `main` times in milliseconds after `t0`.
pub fn since(t0: u64, stamps: &[u64]) -> Vec<f64> {
    stamps
        .iter()
        .map(|ns| ns.saturating_sub(t0) as f64 / 1e6)
        .collect()
}
