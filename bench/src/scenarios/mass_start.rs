//! Mass start: from the moment the configuration is given to the moment
//! the last worker's `main` ran.
//!
//! lrpm is started on an empty jobs file first, so that its own start-up
//! is not counted; the clock starts when the full jobs file is written
//! (renamed into place), and lrpm picks it up through inotify.
//! supervisord has no such push: its clock starts at its own spawn, with
//! every program in its configuration. Each start returns the running
//! farm, which the other scenarios then use.

use std::time::Duration;

use anyhow::ensure;

use crate::bench::{Bench, Plan, WorkerMode};
use crate::collector::Roster;
use crate::lrpm::{JobSet, Lrpm};
use crate::procfs::monotonic_ns;
use crate::results::{Metric, Results, Subject};
use crate::supervisord::{Programs, Supervisord};

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
    let last = match roster.wait_all(&bench.collector, Plan::start_timeout(jobs)) {
        Ok(last) => last,
        Err(e) => return Err(e.context(format!("lrpm's log ends with:\n{}", lrpm.log_tail()))),
    };
    results
        .times(metric, Subject::Lrpm, jobs)
        .push_ns(last.saturating_sub(t0));
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

/// A running supervisord farm.
#[derive(Debug)]
pub struct SupervisordFarm {
    /// The supervisor.
    pub supervisord: Supervisord,
    /// The current worker of each program.
    pub roster: Roster,
    /// How many programs.
    pub jobs: usize,
}

/// Starts supervisord with `jobs` programs and records how long they took
/// to be all running: by their reports, and (when `poll_running`) by
/// `supervisorctl status` showing every one RUNNING.
pub fn supervisord(
    bench: &Bench,
    programs: &Programs,
    jobs: usize,
    poll_running: bool,
    results: &mut Results,
) -> anyhow::Result<SupervisordFarm> {
    let mut roster = Roster::new(jobs);
    bench.collector.drain();
    let (mut supervisord, t0) = Supervisord::start(bench, programs, jobs, WorkerMode::Pause)?;
    let last = roster.wait_all(&bench.collector, Plan::start_timeout(jobs) * 4)?;
    results
        .times(Metric::MassStart, Subject::Supervisord, jobs)
        .push_ns(last.saturating_sub(t0));
    supervisord.wait_ready(Duration::from_secs(30))?;
    if poll_running {
        let deadline = std::time::Instant::now() + Plan::start_timeout(jobs) * 4;
        loop {
            let (_, running) = supervisord.ctl_status()?;
            if running == jobs {
                let now = monotonic_ns();
                results
                    .times(Metric::AllRunning, Subject::Supervisord, jobs)
                    .push_ns(now.saturating_sub(t0));
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "supervisorctl shows {running} of {jobs} programs RUNNING"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(SupervisordFarm {
        supervisord,
        roster,
        jobs,
    })
}
