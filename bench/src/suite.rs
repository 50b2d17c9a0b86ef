//! Which scenarios run on which farm, in which order.
//!
//! A farm (a supervisor with N jobs) is expensive to start, so the
//! scenarios share farms: each farm gives one mass-start sample when it
//! starts and one shutdown sample when it stops, and the first farm of each
//! size also hosts the at-rest, crash, configuration and status scenarios.

use std::time::Duration;

use crate::bench::{Bench, Descriptors, Plan, Sizing, WorkerMode};
use crate::lrpm::JobSet;
use crate::peers::{Installed, Kind};
use crate::procfs;
use crate::report::{self, jobs};
use crate::results::{Metric, Results, Subject};
use crate::scenarios::restart::Series;
use crate::scenarios::{
    config_push, floor, job_set, mass_start, rest, restart, shutdown, status, storm,
};

/// The parts of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The floor: the harness's own spawns and restarts.
    Floor,
    /// lrpm.
    Lrpm,
    /// supervisord.
    Supervisord,
    /// pm2.
    Pm2,
    /// circus.
    Circus,
    /// s6.
    S6,
    /// The postgres source: a row changed → the new worker (and its
    /// floor), against a PostgreSQL 15 server the suite starts.
    Postgres,
}

impl Part {
    /// The part that measures the peer `kind`.
    pub fn of(kind: Kind) -> Part {
        match kind {
            Kind::Supervisord => Part::Supervisord,
            Kind::Pm2 => Part::Pm2,
            Kind::Circus => Part::Circus,
            Kind::S6 => Part::S6,
        }
    }
}

/// A peer whose farm of 1,000 takes longer than this (in milliseconds) to
/// start and stop is started only once.
const SLOW_PEER_MS: f64 = 60_000.0;

/// A big farm whose start takes longer than this (in milliseconds) is
/// started only once.
const SLOW_START_MS: f64 = 60_000.0;

/// How long a peer with one job is left alone between two crashes: more
/// than a second, so that none of their defaults throttles the restart
/// (supervisord marks a program RUNNING on its next tick, up to a second
/// later, and backs off a crash before that as a failed start; s6 starts
/// a service at most once a second; pm2 counts a process that lived less
/// than its `min_uptime` of 1 s as unstable and gives up after 16).
const PEER_SETTLE: Duration = Duration::from_millis(1500);

/// A farm size of the run, and how lrpm gets the descriptors it needs.
#[derive(Debug, Clone, Copy)]
pub struct Farm {
    /// How many jobs.
    pub jobs: usize,
    /// The hard descriptor limit the harness gives lrpm, when the current
    /// one is too low.
    pub raise: Option<u64>,
}

/// Decides the farm sizes of the run: the plan's, except that a farm lrpm
/// cannot get the descriptors for is cut down to the largest that fits.
/// lrpm's descriptors per worker are measured on a farm of 200 jobs first.
pub fn size_farms(bench: &Bench, results: &mut Results) -> anyhow::Result<Vec<Farm>> {
    const PROBE: usize = 200;
    let probe = mass_start::lrpm(bench, PROBE, None, &mut Results::default())?;
    let base = procfs::fd_count(probe.lrpm.pid())?;
    probe.lrpm.write_jobs("# no jobs\n")?;
    std::thread::sleep(Duration::from_millis(500));
    let empty = procfs::fd_count(probe.lrpm.pid())?;
    shutdown::lrpm(probe, &mut Results::default())?;
    let per_worker = base.saturating_sub(empty) as f64 / PROBE as f64;
    let with_hubs = probe_with_hubs(bench)?;
    eprintln!(
        "[sizing] lrpm uses {per_worker:.2} descriptors per worker, {with_hubs:.2} beyond half \
         of its limit (output hubs)"
    );
    let sizing = Sizing {
        in_process: per_worker,
        with_hubs,
    };
    let mut farms = Vec::new();
    for &wanted in &bench.plan.farms {
        let farm = match bench.descriptors(wanted, sizing) {
            Descriptors::Fit => {
                let needed = sizing.needed(wanted, bench.nofile_hard);
                if (wanted as f64 * per_worker) as u64 + 256 > bench.nofile_hard {
                    results.note(format!(
                        "RLIMIT_NOFILE: the hard limit here is {}; {} jobs would need about \
                         {} descriptors in lrpm alone at {per_worker:.1} per worker. Beyond \
                         half of its limit lrpm hands its workers' output pipes to output hubs \
                         (child processes) and keeps {with_hubs:.1} descriptor per worker: \
                         about {} in all. Its memory and CPU figures add up lrpm and its \
                         hubs.",
                        jobs(bench.nofile_hard as usize),
                        jobs(wanted),
                        jobs((wanted as f64 * per_worker) as usize),
                        jobs(needed as usize),
                    ));
                }
                Farm {
                    jobs: wanted,
                    raise: None,
                }
            }
            Descriptors::Raise(hard) => {
                results.note(format!(
                    "RLIMIT_NOFILE: the hard limit here is {}, and lrpm needs about {} \
                     descriptors for {} jobs ({per_worker:.1} per worker). The harness \
                     raised the hard limit of the lrpm it starts to {hard} before exec; lrpm \
                     then raises its own soft limit to it.",
                    bench.nofile_hard,
                    jobs((wanted as f64 * per_worker) as usize),
                    jobs(wanted),
                ));
                Farm {
                    jobs: wanted,
                    raise: Some(hard),
                }
            }
            Descriptors::Cap(fit) => {
                results.note(format!(
                    "RLIMIT_NOFILE: {w} jobs do not fit here. lrpm needs {per_worker:.1} \
                     descriptors per worker (measured on {PROBE} jobs) up to half of its \
                     limit and {with_hubs:.1} beyond (output hubs hold the pipes), about {} \
                     for {w} jobs; the hard limit is {} and cannot be raised ({}). The big \
                     farm (lrpm's and the floor's) has {} jobs instead, and the targets for \
                     {w} jobs are not measurable here.",
                    jobs(sizing.needed(wanted, bench.nofile_hard) as usize),
                    jobs(bench.nofile_hard as usize),
                    crate::bench::raise_obstacle(),
                    jobs(fit),
                    w = jobs(wanted),
                ));
                Farm {
                    jobs: fit,
                    raise: None,
                }
            }
        };
        if farm.jobs > 1000 {
            results.set_big_farm(farm.jobs);
        }
        farms.push(farm);
    }
    Ok(farms)
}

/// Measures lrpm's descriptors per worker beyond half of its limit, where
/// output hubs hold the workers' pipes: an lrpm limited to 1,024
/// descriptors runs 400 jobs (past its threshold of 512 descriptors), then
/// 600; the growth per added job is the figure.
fn probe_with_hubs(bench: &Bench) -> anyhow::Result<f64> {
    const LIMIT: u64 = 1024;
    const FIRST: usize = 400;
    const THEN: usize = 600;
    let probe = mass_start::lrpm(bench, FIRST, Some(LIMIT), &mut Results::default())?;
    let pid = probe.lrpm.pid();
    let at_first = procfs::fd_count(pid)?;
    probe
        .lrpm
        .write_jobs(&JobSet::new(THEN, WorkerMode::Pause).to_toml(bench))?;
    let deadline = std::time::Instant::now() + Plan::start_timeout(THEN);
    while probe.lrpm.running()? != (THEN, THEN) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "lrpm limited to {LIMIT} descriptors did not run {THEN} jobs:\n{}",
            probe.lrpm.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let at_then = procfs::fd_count(pid)?;
    let hubs = procfs::supervisor_processes(pid).len() - 1;
    anyhow::ensure!(
        hubs > 0,
        "no output hub for {THEN} jobs under a limit of {LIMIT} descriptors"
    );
    shutdown::lrpm(probe, &mut Results::default())?;
    Ok(at_then.saturating_sub(at_first) as f64 / (THEN - FIRST) as f64)
}

/// Measures the floor.
pub fn floor(bench: &Bench, farms: &[Farm], results: &mut Results) -> anyhow::Result<()> {
    let sizes: Vec<usize> = farms.iter().map(|f| f.jobs).collect();
    floor::run(bench, &sizes, results)
}

/// Measures lrpm on every scenario.
pub fn lrpm(bench: &Bench, farms: &[Farm], results: &mut Results) -> anyhow::Result<()> {
    let plan = &bench.plan;
    let series = Series {
        samples: plan.restart_samples,
        settle: restart::PAUSE,
        timeout: Duration::from_secs(10),
        distinct: false,
    };

    eprintln!("[lrpm] 1 job: crash → restart");
    let mut farm = mass_start::lrpm(bench, 1, None, results)?;
    restart::measure(
        bench,
        &mut farm.roster,
        1,
        series,
        results.times(Metric::Restart, Subject::Lrpm, 1),
    )?;
    shutdown::lrpm(farm, results)?;

    for &Farm { jobs, raise } in farms {
        for session in 0..plan.sessions(jobs) {
            eprintln!(
                "[lrpm] {jobs} jobs: mass start ({}/{})",
                session + 1,
                plan.sessions(jobs)
            );
            let mut farm = mass_start::lrpm(bench, jobs, raise, results)?;
            if session == 0 {
                eprintln!("[lrpm] {jobs} jobs: at rest for {:?}", plan.rest_window);
                let at_rest = rest::measure(farm.lrpm.pid(), plan.rest_window)?;
                results.set_rest(Subject::Lrpm, jobs, at_rest);
                eprintln!("[lrpm] {jobs} jobs: crash → restart");
                restart::measure(
                    bench,
                    &mut farm.roster,
                    jobs,
                    series,
                    results.times(Metric::Restart, Subject::Lrpm, jobs),
                )?;
                if jobs == 1000 {
                    eprintln!("[lrpm] {jobs} jobs: configuration change → effect");
                    config_push::lrpm(bench, &mut farm, plan.push_samples, results)?;
                    eprintln!("[lrpm] {jobs} jobs: a job added and removed");
                    job_set::lrpm(bench, &mut farm, plan.job_set_samples, results)?;
                }
                eprintln!("[lrpm] {jobs} jobs: status");
                status::lrpm(
                    bench,
                    &farm,
                    plan.status_samples(jobs),
                    plan.table_samples(jobs),
                    results,
                )?;
            }
            eprintln!("[lrpm] {jobs} jobs: shutdown");
            shutdown::lrpm(farm, results)?;
            // Keeps the full run well under 15 minutes when lrpm is slow.
            let start = results.median(Metric::MassStart, Subject::Lrpm, jobs);
            if jobs > 1000 && start.is_some_and(|ms| ms > SLOW_START_MS) {
                if session + 1 < plan.sessions(jobs) {
                    results.note(format!(
                        "lrpm took over {} s to start {} jobs, so the suite started that \
                         farm only once.",
                        SLOW_START_MS / 1000.0,
                        report::jobs(jobs),
                    ));
                }
                break;
            }
        }
    }

    // What containment costs a mass start: the same start without a
    // cgroup per run.
    let jobs = 1000;
    for session in 0..plan.sessions(jobs) {
        eprintln!(
            "[lrpm] {jobs} jobs, --cgroup off: mass start ({}/{})",
            session + 1,
            plan.sessions(jobs)
        );
        let farm = mass_start::lrpm_uncontained(bench, jobs, results)?;
        shutdown::lrpm(farm, &mut Results::default())?;
    }

    eprintln!("[lrpm] crash storm of {} jobs", plan.storm_jobs);
    storm::lrpm(bench, plan.storm_jobs, plan.storm_window, results)?;
    report_progress(results, Subject::Lrpm);
    Ok(())
}

/// Measures a peer on every scenario it supports, with one job and with
/// 1,000. With one job its crashes are [`PEER_SETTLE`] apart; with 1,000
/// each crash hits a job not crashed before, [`restart::PAUSE`] after the
/// last replacement reported, so that no peer's restart throttle (s6's
/// one start a second, supervisord's RUNNING after a tick, pm2's
/// `min_uptime`) decides a figure, while each stays at its defaults.
pub fn peer(
    bench: &Bench,
    kind: Kind,
    installed: &Installed,
    results: &mut Results,
) -> anyhow::Result<()> {
    let plan = &bench.plan;
    let subject = kind.subject();
    let name = subject.name();
    let series = |samples, settle, distinct| Series {
        samples,
        settle,
        timeout: Duration::from_secs(30),
        distinct,
    };

    eprintln!("[{name}] 1 job: crash → restart");
    let mut farm = mass_start::peer(bench, kind, installed, 1, false, results)?;
    std::thread::sleep(PEER_SETTLE);
    restart::measure(
        bench,
        &mut farm.roster,
        1,
        series(plan.peer_restart_samples, PEER_SETTLE, false),
        results.times(Metric::Restart, subject, 1),
    )?;
    shutdown::peer(farm, results)?;

    let jobs = 1000;
    let sessions = if plan.quick { 1 } else { 2 };
    for session in 0..sessions {
        eprintln!(
            "[{name}] {jobs} jobs: mass start ({}/{sessions})",
            session + 1
        );
        let mut farm = mass_start::peer(bench, kind, installed, jobs, session == 0, results)?;
        if session == 0 {
            eprintln!("[{name}] {jobs} jobs: at rest for {:?}", plan.rest_window);
            let at_rest = rest::measure_all(&farm.peer.processes(), plan.rest_window)?;
            results.set_rest(subject, jobs, at_rest);
            eprintln!("[{name}] {jobs} jobs: crash → restart");
            restart::measure(
                bench,
                &mut farm.roster,
                jobs,
                series(plan.peer_farm_restart_samples, restart::PAUSE, true),
                results.times(Metric::Restart, subject, jobs),
            )?;
            eprintln!("[{name}] {jobs} jobs: a job added and removed");
            job_set::peer(bench, &mut farm, plan.job_set_samples, results)?;
            eprintln!("[{name}] {jobs} jobs: status");
            let (socket, table) = if plan.quick { (5, 2) } else { (10, 5) };
            status::peer(&farm, socket, table, results)?;
        }
        eprintln!("[{name}] {jobs} jobs: shutdown");
        shutdown::peer(farm, results)?;
        // Keeps the full run within bounds when a peer is slow.
        let start = results.median(Metric::MassStart, subject, jobs);
        let stop = results.median(Metric::Shutdown, subject, jobs);
        let took = start.unwrap_or(0.0) + stop.unwrap_or(0.0);
        if took > SLOW_PEER_MS && session + 1 < sessions {
            results.note(format!(
                "{name} took {:.0} s to start and stop {} jobs, so the suite started that \
                 farm only once.",
                took / 1000.0,
                report::jobs(jobs),
            ));
            break;
        }
    }
    report_progress(results, subject);
    Ok(())
}

/// Prints the medians measured so far for `subject`.
fn report_progress(results: &Results, subject: Subject) {
    for metric in [
        Metric::Restart,
        Metric::ConfigPush,
        Metric::JobAdded,
        Metric::JobRemoved,
        Metric::MassStart,
        Metric::Shutdown,
        Metric::StatusSocket,
        Metric::StatusTable,
    ] {
        for jobs in [1, 1000, results.big_farm().unwrap_or(10_000)] {
            if let Some(s) = results.get(metric, subject, jobs) {
                eprintln!("[{}] {metric:?} at {jobs}: {}", subject.name(), s.summary());
            }
        }
    }
}
