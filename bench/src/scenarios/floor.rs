//! The floor: what the harness itself achieves doing the least possible
//! work with the same worker, so that lrpm's figures can be read as a
//! multiple of what this machine allows.
//!
//! The harness spawns with `std::process::Command` and no hooks, which
//! lets std use `posix_spawn` (a vfork): the cheapest spawn there is.

use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use crate::bench::{Bench, Plan, WorkerMode};
use crate::cleanup::{self, Tracked};
use crate::collector::Roster;
use crate::procfs::monotonic_ns;
use crate::results::{Metric, Results, Subject};
use crate::scenarios::{mass_start, restart};

/// Runs every floor measurement, with sequential farms of each of `farms`
/// sizes.
pub fn run(bench: &Bench, farms: &[usize], results: &mut Results) -> anyhow::Result<()> {
    let plan = &bench.plan;
    eprintln!("[floor] fork+exec+wait of /bin/true and of the worker");
    spawn_wait(
        results.times(Metric::SpawnTrue, Subject::Floor, 1),
        plan.spawn_samples,
        || {
            let mut cmd = Command::new("/bin/true");
            cmd.stdin(Stdio::null());
            cmd
        },
    )?;
    spawn_wait(
        results.times(Metric::SpawnWorker, Subject::Floor, 1),
        plan.spawn_samples,
        || bench.worker_command(0, WorkerMode::True),
    )?;
    eprintln!("[floor] exit → wake and exit → replacement");
    exit_replace(bench, restart::PAUSE, Metric::ExitReplace, results)?;
    exit_replace(
        bench,
        Duration::ZERO,
        Metric::ExitReplaceBackToBack,
        results,
    )?;
    for &jobs in farms {
        for session in 0..plan.floor_sessions(jobs) {
            eprintln!("[floor] {jobs} sequential spawns ({session})");
            sequential_farm(bench, jobs, results)?;
            eprintln!("[floor] {jobs} workers of lrpm-bench-floor: SIGTERM to it ({session})");
            shutdown(bench, jobs, results)?;
            eprintln!("[floor] {jobs} spawns on two threads ({session})");
            two_thread_farm(bench, jobs, results)?;
        }
    }
    for (metric, jobs) in [
        (Metric::SpawnTrue, 1),
        (Metric::SpawnWorker, 1),
        (Metric::ExitWake, 1),
        (Metric::ExitReplace, 1),
        (Metric::ExitReplaceBackToBack, 1),
    ] {
        if let Some(s) = results.get(metric, Subject::Floor, jobs) {
            eprintln!("[floor] {metric:?}: {}", s.summary());
        }
    }
    Ok(())
}

/// Times `samples` runs of the command `make` builds, each from spawn to
/// reaped.
fn spawn_wait(
    out: &mut crate::stats::Samples,
    samples: usize,
    make: impl Fn() -> Command,
) -> anyhow::Result<()> {
    for _ in 0..samples {
        cleanup::check_not_stopping()?;
        let mut cmd = make();
        let t0 = Instant::now();
        let status = cmd.status().context("running the floor's child")?;
        out.push(t0.elapsed());
        anyhow::ensure!(status.success(), "the floor's child failed: {status}");
    }
    Ok(())
}

/// The minimal supervisor loop: SIGKILL the child, wait for its pidfd,
/// reap it, spawn its replacement, receive the replacement's report.
/// Records exit → wake and exit → replacement's `main` (as `metric`),
/// with `pause` between a replacement's report and the next crash.
pub fn exit_replace(
    bench: &Bench,
    pause: Duration,
    metric: Metric,
    results: &mut Results,
) -> anyhow::Result<()> {
    let mut roster = Roster::new(1);
    bench.collector.drain();
    let mut child = Brood::default();
    child.spawn(bench, 0)?;
    roster.wait_for(&bench.collector, Duration::from_secs(10), |h| h.id == 0)?;
    for _ in 0..bench.plan.exit_samples {
        let pid = child.0[0].id();
        let raw = Pid::from_raw(pid as i32).context("invariant: a child's pid is positive")?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty())?;
        let t0 = monotonic_ns();
        pidfd_send_signal(pidfd.as_fd(), Signal::KILL)?;
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        poll(&mut fds, None)?;
        let woke = monotonic_ns();
        // Exit → wake is the paused series' only.
        if metric == Metric::ExitReplace {
            results
                .times(Metric::ExitWake, Subject::Floor, 1)
                .push_ns(woke - t0);
        }
        child.0[0].wait()?;
        child.0.clear();
        child.spawn(bench, 0)?;
        let new_pid = child.0[0].id();
        let hello = roster.wait_for(&bench.collector, Duration::from_secs(10), |h| {
            h.id == 0 && h.pid == new_pid
        })?;
        results
            .times(metric, Subject::Floor, 1)
            .push_ns(hello.ns.saturating_sub(t0));
        std::thread::sleep(pause);
    }
    Ok(())
}

/// Spawns `jobs` workers one after the other and waits for all their
/// reports (the floor of a mass start).
fn sequential_farm(bench: &Bench, jobs: usize, results: &mut Results) -> anyhow::Result<()> {
    let mut roster = Roster::new(jobs);
    bench.collector.drain();
    let mut brood = Brood::default();
    let t0 = monotonic_ns();
    for id in 0..jobs {
        brood.spawn(bench, id)?;
    }
    let stamps = roster.wait_all_stamps(&bench.collector, Plan::start_timeout(jobs))?;
    let last = stamps.iter().copied().max().unwrap_or(t0);
    results
        .times(Metric::MassStart, Subject::Floor, jobs)
        .push_ns(last.saturating_sub(t0));
    if jobs == mass_start::CURVE_JOBS && !results.has_curve(Subject::Floor) {
        results.set_curve(Subject::Floor, mass_start::since(t0, &stamps));
    }
    // Dropping the brood kills and reaps it.
    drop(brood);
    Ok(())
}

/// The floor of a shutdown: `lrpm-bench-floor` spawns `jobs` workers; once
/// they all reported, SIGTERM to it at t0, until it has exited, which it
/// does once it has sent SIGTERM to every worker and reaped them all. That
/// is the end point of lrpm's shutdown (SIGTERM to lrpm → lrpm exited, once
/// every worker is reaped): both figures include the signal's delivery to
/// the supervisor and the supervisor's own exit.
fn shutdown(bench: &Bench, jobs: usize, results: &mut Results) -> anyhow::Result<()> {
    let mut roster = Roster::new(jobs);
    bench.collector.drain();
    cleanup::check_not_stopping()?;
    let mut floor = Tracked::spawn(
        Command::new(&bench.bins.floor)
            .arg(jobs.to_string())
            .arg(&bench.bins.worker)
            .arg(bench.collector.path())
            .stdin(Stdio::null()),
    )?;
    roster.wait_all(&bench.collector, Plan::start_timeout(jobs))?;
    let t0 = Instant::now();
    floor.signal(Signal::TERM)?;
    let status = floor.wait()?;
    let took = t0.elapsed();
    anyhow::ensure!(status.success(), "lrpm-bench-floor exited with {status}");
    results
        .times(Metric::Shutdown, Subject::Floor, jobs)
        .push(took);
    Ok(())
}

/// Spawns `jobs` workers on two threads, each spawning every other one in
/// turn, and waits for all their reports: what a mass start can reach on
/// this machine when spawns overlap, as lrpm's do (two threads spawn).
fn two_thread_farm(bench: &Bench, jobs: usize, results: &mut Results) -> anyhow::Result<()> {
    let mut roster = Roster::new(jobs);
    bench.collector.drain();
    // The commands are made first, here: `Bench` stays on this thread.
    let commands = |first: usize| -> Vec<Command> {
        (first..jobs)
            .step_by(2)
            .map(|id| bench.worker_command(id, WorkerMode::Pause))
            .collect()
    };
    let (mine, theirs) = (commands(0), commands(1));
    let t0 = monotonic_ns();
    // Each brood kills and reaps its workers when dropped, at the end.
    let ((_mine, spawned), (_theirs, their_spawned)) = std::thread::scope(|scope| {
        let helper = scope.spawn(move || Brood::spawn_all(theirs));
        let mine = Brood::spawn_all(mine);
        let theirs = helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (mine, theirs)
    });
    spawned?;
    their_spawned?;
    let last = roster.wait_all(&bench.collector, Plan::start_timeout(jobs))?;
    results
        .times(Metric::MassStartTwoThreads, Subject::Floor, jobs)
        .push_ns(last.saturating_sub(t0));
    Ok(())
}

/// Workers spawned by the harness itself, killed and reaped when dropped.
#[derive(Debug, Default)]
struct Brood(Vec<Child>);

impl Brood {
    fn spawn(&mut self, bench: &Bench, id: usize) -> anyhow::Result<()> {
        self.spawn_command(bench.worker_command(id, WorkerMode::Pause))
    }

    fn spawn_command(&mut self, mut command: Command) -> anyhow::Result<()> {
        cleanup::check_not_stopping()?;
        let child = command.spawn().context("spawning a worker")?;
        self.0.push(child);
        Ok(())
    }

    /// Spawns `commands` one after the other; stops at the first failure,
    /// which comes with the workers spawned until then.
    fn spawn_all(commands: Vec<Command>) -> (Brood, anyhow::Result<()>) {
        let mut brood = Brood::default();
        let spawned = commands
            .into_iter()
            .try_for_each(|command| brood.spawn_command(command));
        (brood, spawned)
    }
}

impl Drop for Brood {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // Children not reaped yet: their pids are still theirs.
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}
