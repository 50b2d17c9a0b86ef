//! Tests of the state machine: a deterministic simulation with virtual time
//! and a fake process table, driven through every transition, and property
//! tests of its invariants over random event sequences.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::decl::Declaration;
use crate::job::{JobId, JobSpec, Program, Signal};
use crate::status::{ExitReason, ExitStatus, JobState, JobStatus};

const SEC: Duration = Duration::from_secs(1);

fn spec(cmd: &str) -> JobSpec {
    JobSpec::new(format!("job {cmd}"), Program::Shell(cmd.to_owned()))
}

fn decl(jobs: &[(&str, JobSpec)]) -> Declaration {
    Declaration {
        jobs: jobs
            .iter()
            .map(|(id, s)| (JobId::from(*id), Arc::new(s.clone())))
            .collect(),
        ..Declaration::default()
    }
}

/// A simulated process: which job it belongs to and which signals it got.
#[derive(Debug)]
struct SimProc {
    job: JobId,
    pid: u32,
    signals: Vec<Signal>,
}

/// The supervisor with a fake process table and a virtual clock. It checks
/// the invariants of every action it executes.
struct Sim {
    sup: Supervisor,
    start: Instant,
    now: Instant,
    live: HashMap<RunId, SimProc>,
    next_pid: u32,
    /// Every spawn, in order: (time since start, job).
    spawns: Vec<(Duration, JobId)>,
    /// Every signal, in order: (time since start, job, signal).
    signals: Vec<(Duration, JobId, Signal)>,
    /// Every spawn's and signal's reason, in order: (job, "start" or
    /// "stop", reason).
    reasons: Vec<(JobId, &'static str, Reason)>,
    /// The ids of the last configuration (valid or invalid).
    declared: BTreeSet<JobId>,
    /// The valid ids of the last configuration.
    valid: BTreeSet<JobId>,
    max_backoff: Duration,
    /// Until when the removal guard is lifted, as the supervisor was told.
    lifted_until: Option<Instant>,
    /// The jobs the last cluster share held waiting: none may spawn.
    waiting: BTreeSet<JobId>,
}

impl Sim {
    fn new() -> Self {
        Self::with_max_backoff(DEFAULT_MAX_DELAY)
    }

    fn with_max_backoff(max_backoff: Duration) -> Self {
        Self::with_config(Config {
            max_backoff,
            source_uri: "test".into(),
            max_removal_ratio: None,
            ..Config::default()
        })
    }

    fn with_guard(ratio: f64) -> Self {
        Self::with_config(Config {
            max_removal_ratio: Some(ratio),
            source_uri: "test".into(),
            ..Config::default()
        })
    }

    fn with_config(config: Config) -> Self {
        let start = Instant::now();
        let max_backoff = config.max_backoff;
        Self {
            sup: Supervisor::new(config),
            start,
            now: start,
            live: HashMap::new(),
            next_pid: 1000,
            spawns: Vec::new(),
            signals: Vec::new(),
            reasons: Vec::new(),
            declared: BTreeSet::new(),
            valid: BTreeSet::new(),
            max_backoff,
            lifted_until: None,
            waiting: BTreeSet::new(),
        }
    }

    fn t(&self) -> Duration {
        self.now - self.start
    }

    /// Executes the queued actions, as the shell would.
    fn run_actions(&mut self) {
        while let Some(action) = self.sup.poll_action() {
            match action {
                Action::Spawn {
                    run,
                    job,
                    spec: _,
                    reason,
                } => {
                    self.reasons.push((job.clone(), "start", reason));
                    assert!(
                        self.live.values().all(|p| p.job != job),
                        "job {job} would have two live processes"
                    );
                    assert!(
                        self.declared.contains(&job),
                        "job {job} spawned while not in the configuration"
                    );
                    assert!(!self.sup.is_shutting_down(), "spawn during shutdown");
                    assert!(
                        !self.waiting.contains(&job),
                        "job {job} spawned while waiting for its ownership"
                    );
                    self.next_pid += 1;
                    let pid = self.next_pid;
                    self.live.insert(
                        run,
                        SimProc {
                            job: job.clone(),
                            pid,
                            signals: vec![],
                        },
                    );
                    self.spawns.push((self.t(), job));
                    self.sup.handle_spawned(self.now, run, pid);
                }
                Action::Probe { run, .. } => {
                    assert!(
                        self.live.contains_key(&run),
                        "probe of a process that ended"
                    );
                }
                Action::Signal {
                    run,
                    signal,
                    reason,
                } => {
                    let t = self.t();
                    if let Some(p) = self.live.get_mut(&run) {
                        self.reasons.push((p.job.clone(), "stop", reason));
                        p.signals.push(signal);
                        self.signals.push((t, p.job.clone(), signal));
                        if signal == Signal::Kill {
                            // The kernel does not negotiate.
                            self.exit_run(run, ExitStatus::signal(9));
                        }
                    }
                }
            }
        }
        self.check_invariants();
    }

    fn check_invariants(&self) {
        let (_, jobs) = self.sup.status(self.now, 0.0);
        // The borrowed status serializes exactly as the owned one.
        let owned = serde_json::to_string(&jobs).expect("serializes");
        let borrowed =
            serde_json::to_string(&self.sup.status_jobs(self.now, 0.0)).expect("serializes");
        assert_eq!(borrowed, owned, "status_jobs differs from status");
        let by_id: BTreeMap<&str, &JobStatus> = jobs.iter().map(|j| (j.id.as_str(), j)).collect();
        for j in &jobs {
            assert!(
                j.backoff_seconds <= self.max_backoff.as_secs_f64(),
                "backoff over the cap"
            );
            if let Some(wait) = j.restart_at {
                // With `wall_now` 0, times are relative to now.
                assert!(
                    wait <= self.max_backoff.as_secs_f64() + 1e-6,
                    "restart beyond the cap"
                );
            }
            let live: Vec<_> = self
                .live
                .values()
                .filter(|p| p.job.as_str() == j.id)
                .collect();
            match j.state {
                JobState::Starting | JobState::Running | JobState::Stopping => {
                    assert_eq!(live.len(), 1, "job {} has no process", j.id);
                    assert_eq!(j.pid, Some(live[0].pid));
                }
                JobState::Backoff | JobState::Paused | JobState::Waiting => {
                    assert!(live.is_empty());
                }
            }
        }
        for p in self.live.values() {
            assert!(
                by_id.contains_key(p.job.as_str()),
                "process of forgotten job {}",
                p.job
            );
        }
        if !self.sup.is_shutting_down() {
            for id in &self.valid {
                let j = by_id.get(id.as_str());
                assert!(j.is_some_and(|j| j.declared), "valid job {id} unsupervised");
            }
        }
    }

    /// Hands a configuration to the supervisor, checking the removal guard:
    /// a configuration is held exactly when the guard is on, not lifted, and
    /// it removes more than the ratio of the declared jobs; a held one
    /// changes nothing at all.
    fn config(&mut self, d: Declaration) -> ConfigOutcome {
        let (_, before) = self.sup.status(self.now, 0.0);
        let declared_before: BTreeSet<String> = before
            .iter()
            .filter(|j| j.declared)
            .map(|j| j.id.clone())
            .collect();
        let removals = declared_before
            .iter()
            .filter(|id| {
                let id = JobId::from(id.as_str());
                !d.jobs.contains_key(&id) && !d.invalid.contains_key(&id)
            })
            .count();
        let lifted = self.lifted_until.take().is_some_and(|t| self.now <= t);
        let should_hold = !self.sup.is_shutting_down()
            && !lifted
            && removals > 0
            && self
                .sup
                .config
                .max_removal_ratio
                .is_some_and(|r| removals as f64 > r * declared_before.len() as f64);
        let declared = d.jobs.keys().chain(d.invalid.keys()).cloned().collect();
        let valid = d.jobs.keys().cloned().collect();
        let outcome = self.sup.handle_config(self.now, d);
        match &outcome {
            ConfigOutcome::Held(message) => {
                assert!(should_hold, "held without reason: {message}");
                assert_eq!(self.sup.poll_action(), None, "a held configuration acts");
                let (source, after) = self.sup.status(self.now, 0.0);
                assert_eq!(before, after, "a held configuration changed the jobs");
                let held = source.held.expect("a held configuration shows");
                assert_eq!(held.removals, removals);
                assert_eq!(held.declared, declared_before.len());
                assert_eq!(source.last_error.as_deref(), Some(message.as_str()));
            }
            ConfigOutcome::Applied => {
                assert!(!should_hold, "applied past the guard");
                assert_eq!(self.sup.status(self.now, 0.0).0.held, None);
                self.declared = declared;
                self.valid = valid;
            }
            ConfigOutcome::Ignored => assert!(self.sup.is_shutting_down()),
        }
        self.run_actions();
        outcome
    }

    /// Hands a cluster share to the supervisor: `d`, of which `waiting`
    /// are not owned here, and `moved` left for another node. Checks that
    /// a waiting job has no process but one already asked to stop, and is
    /// shown `waiting` once its process is gone.
    fn share(
        &mut self,
        d: Declaration,
        waiting: BTreeSet<JobId>,
        moved: BTreeSet<JobId>,
    ) -> ConfigOutcome {
        let declared = d.jobs.keys().chain(d.invalid.keys()).cloned().collect();
        let valid = d.jobs.keys().cloned().collect();
        self.waiting = waiting.clone();
        // The core spends a lifted guard on any configuration, a share too.
        if !self.sup.is_shutting_down() {
            self.lifted_until = None;
        }
        let outcome = self.sup.handle_share(self.now, d, waiting, moved);
        if outcome == ConfigOutcome::Applied {
            self.declared = declared;
            self.valid = valid;
        }
        self.run_actions();
        self.check_waiting();
        outcome
    }

    /// Every waiting job's process, if it has one, is stopping; one with
    /// none (and declared, not paused) is shown `waiting`.
    fn check_waiting(&self) {
        if self.sup.is_shutting_down() {
            return;
        }
        // A job the gate no longer holds waits no more.
        for (id, job) in &self.sup.jobs {
            assert!(
                self.waiting.contains(id) || job.state != State::Waiting,
                "job {id} still waits, owned"
            );
        }
        for id in &self.waiting {
            let Some(job) = self.sup.jobs.get(id) else {
                continue;
            };
            match job.state {
                State::Running(_) => panic!("waiting job {id} runs"),
                State::Stopping { .. } => {}
                State::Waiting | State::Paused => {}
                State::Backoff { .. } => panic!("waiting job {id} is to start after a backoff"),
            }
        }
    }

    /// `lrpmctl reload --force`: the next configuration within `window`
    /// passes the guard.
    fn force(&mut self, window: Duration) {
        self.lifted_until = Some(self.now + window);
        self.sup.lift_guard_until(self.now + window);
    }

    fn run_of(&self, id: &str) -> Option<RunId> {
        self.live
            .iter()
            .find(|(_, p)| p.job.as_str() == id)
            .map(|(r, _)| *r)
    }

    /// Process `run` ends with `status`. Checks the crash accounting: the
    /// exit counts as a crash exactly when lrpm had not asked the process
    /// to stop (every signal of this simulation is a deliberate stop), and
    /// a job never has more crashes than starts.
    fn exit_run(&mut self, run: RunId, status: ExitStatus) {
        let asked = self
            .live
            .remove(&run)
            .is_some_and(|p| !p.signals.is_empty());
        let id = self.sup.runs.get(&run).cloned();
        let crashes = |sup: &Supervisor, id: &JobId| sup.jobs.get(id).map(|j| j.crashes);
        let before = id.as_ref().and_then(|id| crashes(&self.sup, id));
        self.sup.handle_exit(self.now, run, status);
        let (Some(id), Some(before)) = (id, before) else {
            return;
        };
        let Some(job) = self.sup.jobs.get(&id) else {
            return; // Forgotten: removed, or shutdown.
        };
        let (exit, _) = job.last_exit.as_ref().expect("an exit was recorded");
        assert_eq!(job.crashes - before, u32::from(!asked), "job {id}: {exit}");
        assert_eq!(
            exit.reason == ExitReason::Stopped,
            asked,
            "job {id}: {exit}"
        );
        assert!(
            job.crashes <= job.restarts + 1,
            "job {id}: more crashes than runs"
        );
    }

    /// The process of job `id` exits with `code`.
    fn exit(&mut self, id: &str, code: i32) {
        let run = self.run_of(id).expect("job has a process");
        self.exit_run(run, ExitStatus::code(code));
        self.run_actions();
    }

    /// Moves the clock forward, firing every deadline on its time.
    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(at) = self.sup.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.sup.handle_timeout(self.now);
            self.run_actions();
        }
        self.now = target;
    }

    fn job(&self, id: &str) -> JobStatus {
        let (_, jobs) = self.sup.status(self.now, 0.0);
        jobs.into_iter()
            .find(|j| j.id == id)
            .unwrap_or_else(|| panic!("no job {id}"))
    }

    fn has_job(&self, id: &str) -> bool {
        let (_, jobs) = self.sup.status(self.now, 0.0);
        jobs.iter().any(|j| j.id == id)
    }

    fn spawn_count(&self, id: &str) -> usize {
        self.spawns.iter().filter(|(_, j)| j.as_str() == id).count()
    }
}

#[test]
fn added_jobs_start_at_once() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a")), ("b", spec("b"))]));
    assert_eq!(sim.spawns.len(), 2);
    assert_eq!(sim.job("a").state, JobState::Running);
    assert_eq!(sim.job("a").restarts, 0);
    assert!(sim.job("a").pid.is_some());
    assert_eq!(sim.sup.poll_timeout(), None, "nothing to wake up for");
}

#[test]
fn every_start_and_stop_says_why() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a")), ("b", spec("b"))]));
    sim.advance(SEC * 60);
    // Updated: the old process stops, the new declaration starts.
    sim.config(decl(&[("a", spec("a2")), ("b", spec("b"))]));
    sim.exit("a", 0);
    // A crash after a long run, and one after a short run (backoff).
    sim.advance(SEC * 60);
    sim.exit("b", 1);
    sim.exit("b", 1);
    sim.advance(SEC * 5);
    // An operator's restart.
    sim.sup
        .restart(sim.now, &JobId::from("a"))
        .expect("restart");
    sim.run_actions();
    sim.exit("a", 0);
    // Removed.
    sim.config(decl(&[("b", spec("b"))]));
    sim.exit("a", 0);
    // Shutdown.
    sim.sup.shutdown(sim.now);
    sim.run_actions();
    let got: Vec<(&str, &str, &str)> = sim
        .reasons
        .iter()
        .map(|(job, what, why)| (job.as_str(), *what, why.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", "start", "added"),
            ("b", "start", "added"),
            ("a", "stop", "updated"),
            ("a", "start", "updated"),
            ("b", "start", "crashed"),
            ("b", "start", "crashed"),
            ("a", "stop", "operator"),
            ("a", "start", "operator"),
            ("a", "stop", "removed"),
            ("b", "stop", "shutdown"),
        ]
    );
}

#[test]
fn an_exit_after_a_stop_says_why_it_was_stopped() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.config(decl(&[]));
    let run = sim.run_of("a").expect("a process");
    sim.live.remove(&run);
    assert_eq!(
        sim.sup.handle_exit(sim.now, run, ExitStatus::code(0)),
        AfterExit::Stopped(Reason::Removed, ExitReason::Stopped)
    );
    // Removed while stopping, then declared again: it starts as a new job.
    sim.config(decl(&[("b", spec("b"))]));
    sim.config(decl(&[]));
    sim.config(decl(&[("b", spec("b2"))]));
    sim.exit("b", 0);
    assert_eq!(sim.reasons.last().map(|r| r.2), Some(Reason::Added));
}

#[test]
fn a_change_ignored_for_its_mtime_is_reported_once() {
    let mut sim = Sim::new();
    let mut first = spec("a");
    first.mtime = Some(10);
    sim.config(decl(&[("a", first.clone())]));
    assert!(sim.sup.take_ignored().is_empty());
    let mut changed = spec("a2");
    changed.mtime = Some(10);
    sim.config(decl(&[("a", changed.clone())]));
    assert_eq!(sim.sup.take_ignored(), [JobId::from("a")]);
    // Delivered again (a polled source): said already.
    sim.config(decl(&[("a", changed.clone())]));
    assert!(sim.sup.take_ignored().is_empty());
    // Another ignored change is reported; the same text as the running
    // one is no change at all.
    let mut again = spec("a3");
    again.mtime = Some(9);
    sim.config(decl(&[("a", again)]));
    assert_eq!(sim.sup.take_ignored(), [JobId::from("a")]);
    sim.config(decl(&[("a", first)]));
    assert!(sim.sup.take_ignored().is_empty());
    assert_eq!(sim.spawn_count("a"), 1);
}

#[test]
fn unchanged_jobs_are_left_alone() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.advance(SEC);
    sim.config(decl(&[("a", spec("a"))]));
    assert_eq!(sim.spawns.len(), 1);
    assert!(sim.signals.is_empty());
}

#[test]
fn removed_job_is_stopped_then_forgotten() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a")), ("b", spec("b"))]));
    sim.config(decl(&[("b", spec("b"))]));
    assert_eq!(sim.signals.len(), 1);
    assert_eq!(sim.signals[0].1.as_str(), "a");
    assert_eq!(sim.signals[0].2, Signal::Term);
    let a = sim.job("a");
    assert_eq!(a.state, JobState::Stopping);
    assert!(!a.declared);
    sim.exit("a", 0);
    assert!(!sim.has_job("a"));
    assert_eq!(sim.spawn_count("a"), 1, "a removed job is never restarted");
}

#[test]
fn stop_escalates_to_sigkill_after_the_timeout() {
    let mut sim = Sim::new();
    let mut s = spec("a");
    s.shutdown_timeout = 3 * SEC;
    s.stop_signal = Signal::Int;
    sim.config(decl(&[("a", s)]));
    sim.config(decl(&[]));
    assert_eq!(sim.signals.last().map(|s| s.2), Some(Signal::Int));
    sim.advance(Duration::from_millis(2999));
    assert_eq!(sim.signals.len(), 1);
    assert!(sim.has_job("a"));
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.signals.len(), 2);
    assert_eq!(sim.signals[1], (3 * SEC, JobId::from("a"), Signal::Kill));
    assert!(!sim.has_job("a"), "SIGKILL reaped it");
}

#[test]
fn updated_job_is_stopped_then_started_with_the_new_declaration() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("v1"))]));
    sim.advance(SEC);
    sim.config(decl(&[("a", spec("v2"))]));
    assert_eq!(
        sim.spawn_count("a"),
        1,
        "no second process before the first ends"
    );
    assert_eq!(sim.job("a").state, JobState::Stopping);
    assert_eq!(sim.job("a").command, "v1");
    sim.exit("a", 0);
    assert_eq!(sim.spawn_count("a"), 2);
    let a = sim.job("a");
    assert_eq!(a.state, JobState::Running);
    assert_eq!(a.command, "v2");
    assert_eq!(a.restarts, 1);
}

#[test]
fn newest_declaration_wins_when_updated_twice_while_stopping() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("v1"))]));
    sim.config(decl(&[("a", spec("v2"))]));
    sim.config(decl(&[("a", spec("v3"))]));
    assert_eq!(sim.signals.len(), 1, "one stop is enough");
    sim.exit("a", 0);
    assert_eq!(sim.job("a").command, "v3");
}

#[test]
fn update_back_to_the_running_declaration_while_stopping_still_restarts() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("v1"))]));
    sim.config(decl(&[("a", spec("v2"))]));
    sim.config(decl(&[("a", spec("v1"))]));
    sim.exit("a", 0);
    assert_eq!(sim.job("a").command, "v1");
    assert_eq!(sim.job("a").state, JobState::Running);
}

#[test]
fn mtime_rule_restarts_only_on_a_newer_mtime() {
    let mut sim = Sim::new();
    let mut v1 = spec("v1");
    v1.mtime = Some(100);
    sim.config(decl(&[("a", v1.clone())]));
    let mut same_mtime = spec("v2");
    same_mtime.mtime = Some(100);
    sim.config(decl(&[("a", same_mtime)]));
    assert!(sim.signals.is_empty(), "same mtime: unchanged");
    assert_eq!(sim.job("a").command, "v1", "and the old declaration stays");
    let mut newer = v1.clone();
    newer.mtime = Some(101);
    sim.config(decl(&[("a", newer)]));
    assert_eq!(sim.signals.len(), 1);
    sim.exit("a", 0);
    assert_eq!(sim.job("a").mtime, Some(101));
}

#[test]
fn removed_then_readded_while_stopping_starts_again() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("v1"))]));
    sim.config(decl(&[]));
    sim.config(decl(&[("a", spec("v2"))]));
    assert_eq!(sim.spawn_count("a"), 1);
    assert!(sim.job("a").declared);
    sim.exit("a", 0);
    assert_eq!(sim.spawn_count("a"), 2);
    assert_eq!(sim.job("a").command, "v2");
}

#[test]
fn long_run_crash_restarts_at_once_and_resets_backoff() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.advance(10 * SEC);
    sim.exit("a", 1);
    assert_eq!(sim.spawn_count("a"), 2);
    assert_eq!(sim.spawns[1].0, 10 * SEC, "restarted in the same instant");
    let a = sim.job("a");
    assert_eq!(a.restarts, 1);
    assert_eq!(a.backoff_seconds, 1.0);
    assert_eq!(a.last_exit.map(|e| e.status.code), Some(Some(1)));
}

#[test]
fn short_runs_back_off_exponentially() {
    let mut sim = Sim::with_max_backoff(5 * SEC);
    sim.config(decl(&[("a", spec("a"))]));
    let mut restarts_at = vec![];
    for _ in 0..5 {
        sim.exit("a", 1);
        assert_eq!(sim.job("a").state, JobState::Backoff);
        let before = sim.spawn_count("a");
        sim.advance(10 * SEC);
        assert_eq!(sim.spawn_count("a"), before + 1);
        restarts_at.push(sim.spawns.last().map(|s| s.0).expect("spawned"));
        // Crash at once again: the time in `advance` above after the spawn
        // does count as running time, so pull the clock back to the spawn.
        sim.now = sim.start + *restarts_at.last().expect("spawned");
    }
    let gaps: Vec<u64> = restarts_at
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(restarts_at[0], SEC);
    assert_eq!(gaps, [2, 4, 5, 5], "1 s, 2 s, 4 s… capped at 5 s");
}

#[test]
fn a_long_run_after_short_ones_resets_the_backoff() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.exit("a", 1);
    sim.advance(SEC);
    sim.exit("a", 1);
    assert_eq!(sim.job("a").backoff_seconds, 4.0);
    sim.advance(2 * SEC); // restarted
    sim.advance(5 * SEC); // ran 5 s = shortRunTime: not short
    sim.exit("a", 1);
    assert_eq!(sim.job("a").state, JobState::Running);
    assert_eq!(sim.job("a").backoff_seconds, 1.0);
}

#[test]
fn spawn_failure_is_a_short_run() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    let run = sim.run_of("a").expect("run");
    sim.advance(100 * SEC);
    sim.exit_run(run, ExitStatus::spawn_failed("no such file"));
    sim.run_actions();
    let a = sim.job("a");
    assert_eq!(a.state, JobState::Backoff);
    assert_eq!(
        a.last_exit.and_then(|e| e.status.error).as_deref(),
        Some("no such file")
    );
}

#[test]
fn a_deferred_spawn_retries_after_its_delay_and_leaves_the_backoff_alone() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    // Fail it once for real: its next backoff is 2 s.
    sim.exit("a", 1);
    sim.advance(SEC);
    let before = sim.job("a").backoff_seconds;
    for _ in 0..5 {
        let run = sim.run_of("a").expect("run");
        sim.live.remove(&run);
        let after = sim.sup.handle_spawn_deferred(
            sim.now,
            run,
            ExitStatus::spawn_failed("Too many open files"),
            2 * SEC,
        );
        assert_eq!(after, AfterExit::Backoff(ExitReason::SpawnFailed, 2 * SEC));
        sim.run_actions();
        let a = sim.job("a");
        assert_eq!(a.state, JobState::Backoff);
        assert!(sim.sup.is_waiting(&JobId::from("a")));
        assert_eq!(a.backoff_seconds, before, "the backoff did not grow");
        assert_eq!(
            a.last_exit.and_then(|e| e.status.error).as_deref(),
            Some("Too many open files")
        );
        sim.advance(2 * SEC);
        assert_eq!(sim.job("a").state, JobState::Running);
    }
}

#[test]
fn update_during_backoff_starts_at_once() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("v1"))]));
    sim.exit("a", 1);
    assert_eq!(sim.job("a").state, JobState::Backoff);
    assert!(sim.sup.poll_timeout().is_some());
    sim.config(decl(&[("a", spec("v2"))]));
    assert_eq!(sim.job("a").state, JobState::Running);
    assert_eq!(sim.job("a").command, "v2");
    assert_eq!(sim.sup.poll_timeout(), None, "the backoff timer is gone");
}

#[test]
fn removal_during_backoff_forgets_at_once() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.exit("a", 1);
    sim.config(decl(&[]));
    assert!(!sim.has_job("a"));
    sim.advance(100 * SEC);
    assert_eq!(sim.spawn_count("a"), 1);
}

#[test]
fn invalid_new_declaration_keeps_the_job_on_its_last_valid_one() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("v1")), ("b", spec("b"))]));
    let mut d = decl(&[("b", spec("b"))]);
    d.invalid.insert(
        "a".into(),
        "shortRunTimeSeconds: must be a number >= 0".into(),
    );
    d.invalid.insert("c".into(), "name: is required".into());
    sim.config(d);
    assert!(sim.signals.is_empty());
    let a = sim.job("a");
    assert_eq!(a.state, JobState::Running);
    assert_eq!(
        a.invalid.as_deref(),
        Some("shortRunTimeSeconds: must be a number >= 0")
    );
    assert!(!sim.has_job("c"), "a job never valid is not supervised");
    let (source, _) = sim.sup.status(sim.now, 0.0);
    assert_eq!(source.invalid_jobs.len(), 2);
    // It still restarts on a crash, with its last valid declaration.
    sim.advance(10 * SEC);
    sim.exit("a", 1);
    assert_eq!(sim.job("a").command, "v1");
    assert_eq!(sim.job("a").state, JobState::Running);
    // And is removed when it leaves the source.
    sim.config(decl(&[("b", spec("b"))]));
    assert_eq!(sim.job("a").state, JobState::Stopping);
    assert_eq!(sim.job("a").invalid, None);
}

#[test]
fn source_errors_change_nothing_but_show() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.sup
        .handle_source_error("jobs.toml: cannot parse".into());
    sim.run_actions();
    let (source, jobs) = sim.sup.status(sim.now, 0.0);
    assert_eq!(
        source.last_error.as_deref(),
        Some("jobs.toml: cannot parse")
    );
    assert_eq!(jobs.len(), 1);
    assert!(sim.signals.is_empty());
    sim.config(decl(&[("a", spec("a"))]));
    assert_eq!(sim.sup.status(sim.now, 0.0).0.last_error, None);
}

#[test]
fn restart_request_stops_and_starts_with_backoff_reset() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.exit("a", 1);
    sim.advance(SEC);
    assert_eq!(sim.job("a").backoff_seconds, 2.0);
    sim.sup.restart(sim.now, &"a".into()).expect("restart");
    sim.run_actions();
    assert_eq!(sim.job("a").state, JobState::Stopping);
    sim.exit("a", 0);
    let a = sim.job("a");
    assert_eq!(a.state, JobState::Running);
    assert_eq!(a.backoff_seconds, 1.0);
}

#[test]
fn restart_request_in_backoff_starts_at_once() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.exit("a", 1);
    sim.sup.restart(sim.now, &"a".into()).expect("restart");
    sim.run_actions();
    assert_eq!(sim.job("a").state, JobState::Running);
    assert_eq!(sim.spawn_count("a"), 2);
}

#[test]
fn restart_request_for_unknown_or_removed_job_is_refused() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    assert_eq!(
        sim.sup.restart(sim.now, &"zz".into()),
        Err(CommandError::UnknownJob("zz".into()))
    );
    sim.config(decl(&[]));
    assert!(sim.sup.restart(sim.now, &"a".into()).is_err());
}

#[test]
fn shutdown_stops_everything_in_parallel() {
    let mut sim = Sim::new();
    let jobs: Vec<(String, JobSpec)> = (0..50).map(|i| (i.to_string(), spec("w"))).collect();
    let refs: Vec<(&str, JobSpec)> = jobs.iter().map(|(i, s)| (i.as_str(), s.clone())).collect();
    sim.config(decl(&refs));
    sim.exit("7", 1); // one in backoff
    sim.sup.shutdown(sim.now);
    sim.run_actions();
    assert_eq!(
        sim.signals.len(),
        49,
        "every live process signalled at once"
    );
    assert!(!sim.has_job("7"), "backoff jobs are dropped");
    assert!(!sim.sup.is_finished());
    for (id, _) in &jobs[..10] {
        if id != "7" {
            sim.exit(id, 0);
        }
    }
    sim.config(decl(&[("new", spec("n"))]));
    assert_eq!(
        sim.spawn_count("new"),
        0,
        "no config applies during shutdown"
    );
    sim.advance(10 * SEC);
    assert!(sim.sup.is_finished(), "stragglers were killed");
    assert_eq!(
        sim.signals.iter().filter(|s| s.2 == Signal::Kill).count(),
        40
    );
}

#[test]
fn force_kill_kills_at_once() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a")), ("b", spec("b"))]));
    sim.sup.shutdown(sim.now);
    sim.run_actions();
    sim.sup.force_kill(sim.now);
    sim.run_actions();
    assert!(sim.sup.is_finished());
    assert_eq!(sim.sup.poll_timeout(), None);
}

#[test]
fn kill_stopping_kills_the_stopping_processes_and_nothing_else() {
    let mut sim = Sim::new();
    let mut slow = spec("slow");
    slow.shutdown_timeout = 30 * SEC;
    let kept = spec("kept");
    sim.config(decl(&[("slow", slow), ("kept", kept.clone())]));
    // A cluster node gives `slow` up: it is asked to stop, politely.
    sim.config(decl(&[("kept", kept)]));
    sim.run_actions();
    assert_eq!(
        sim.signals.iter().map(|s| s.2).collect::<Vec<_>>(),
        [Signal::Term]
    );
    sim.sup.kill_stopping();
    sim.run_actions();
    let sent: Vec<Signal> = sim.signals.iter().map(|s| s.2).collect();
    assert_eq!(sent, [Signal::Term, Signal::Kill], "one SIGKILL, to slow");
    assert!(!sim.sup.is_shutting_down());
    // A second call has nothing left to kill.
    sim.sup.kill_stopping();
    sim.run_actions();
    assert_eq!(sim.signals.len(), 2);
}

#[test]
fn a_first_interrupt_stops_gracefully_and_a_second_kills_at_once() {
    let mut sim = Sim::new();
    let mut slow = spec("slow");
    slow.shutdown_timeout = 30 * SEC;
    sim.config(decl(&[("a", spec("a")), ("slow", slow), ("c", spec("c"))]));
    sim.exit("c", 1); // in backoff: forgotten by the shutdown
    assert_eq!(
        sim.sup.handle_interrupt(sim.now),
        Interrupted::Shutdown { jobs: 3 }
    );
    sim.run_actions();
    assert!(sim.sup.is_shutting_down());
    let polite: Vec<Signal> = sim.signals.iter().map(|s| s.2).collect();
    assert_eq!(polite, [Signal::Term, Signal::Term], "asked, not killed");
    sim.exit("a", 0);
    sim.advance(SEC);
    assert!(!sim.sup.is_finished(), "slow has 30 s to stop");

    assert_eq!(sim.sup.handle_interrupt(sim.now), Interrupted::ForceKill);
    sim.run_actions();
    assert_eq!(sim.signals.last().map(|s| s.2), Some(Signal::Kill));
    assert!(sim.sup.is_finished(), "killed at once, not after 30 s");
    assert_eq!(sim.sup.poll_timeout(), None);
    // A third one has nothing left to do.
    assert_eq!(sim.sup.handle_interrupt(sim.now), Interrupted::ForceKill);
    assert_eq!(sim.sup.poll_action(), None);
}

#[test]
fn an_interrupt_during_another_shutdown_kills_at_once() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.sup.shutdown(sim.now); // SIGTERM or `lrpmctl stop`
    sim.run_actions();
    assert_eq!(sim.sup.handle_interrupt(sim.now), Interrupted::ForceKill);
    sim.run_actions();
    assert!(sim.sup.is_finished());
    let sent: Vec<Signal> = sim.signals.iter().map(|s| s.2).collect();
    assert_eq!(sent, [Signal::Term, Signal::Kill]);
}

#[test]
fn stale_exits_are_ignored() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    let run = sim.run_of("a").expect("run");
    sim.exit("a", 0);
    sim.sup.handle_exit(sim.now, run, ExitStatus::code(0));
    sim.run_actions();
    assert_eq!(
        sim.spawn_count("a"),
        1,
        "short run: in backoff, not restarted twice"
    );
}

#[test]
fn status_converts_times_to_wall_clock() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.advance(3 * SEC);
    sim.exit("a", 2);
    sim.advance(Duration::from_millis(500));
    let (source, jobs) = sim.sup.status(sim.now, 1000.0);
    let a = &jobs[0];
    assert_eq!(source.last_load_at, Some(996.5));
    assert_eq!(a.last_exit.as_ref().map(|e| e.at), Some(999.5));
    assert_eq!(a.restart_at, Some(1000.5));
}

// ---------------------------------------------------------------------------
// The removal guard.

fn farm(n: usize) -> Vec<(String, JobSpec)> {
    (0..n).map(|i| (format!("j{i}"), spec("w"))).collect()
}

fn decl_of(jobs: &[(String, JobSpec)]) -> Declaration {
    let refs: Vec<(&str, JobSpec)> = jobs.iter().map(|(i, s)| (i.as_str(), s.clone())).collect();
    decl(&refs)
}

#[test]
fn without_the_guard_an_empty_map_stops_everything() {
    let mut sim = Sim::new();
    sim.config(decl_of(&farm(10)));
    assert_eq!(sim.config(decl(&[])), ConfigOutcome::Applied);
    assert_eq!(sim.signals.len(), 10, "php-lrpm semantics by default");
}

#[test]
fn the_guard_holds_a_configuration_that_removes_too_much() {
    let mut sim = Sim::with_guard(0.5);
    let jobs = farm(10);
    sim.config(decl_of(&jobs));
    sim.advance(SEC);
    let loaded_at = sim.sup.status(sim.now, 100.0).0.last_load_at;
    // Keeps 4 (removes 6 of 10), changes one, adds one.
    let mut kept = jobs[..4].to_vec();
    kept[0].1 = spec("changed");
    kept.push(("new".into(), spec("new")));
    let outcome = sim.config(decl_of(&kept));
    let ConfigOutcome::Held(message) = outcome else {
        panic!("expected a hold, got {outcome:?}");
    };
    assert!(message.contains("remove 6 of the 10"), "{message}");
    assert!(message.contains("lrpmctl reload --force"), "{message}");
    // Not partially applied: no stop, no start, no update.
    assert_eq!(sim.spawns.len(), 10);
    assert!(sim.signals.is_empty());
    assert!(!sim.has_job("new"));
    assert_eq!(sim.job("j0").command, "w");
    let (source, _) = sim.sup.status(sim.now, 100.0);
    assert_eq!(
        source.last_load_at, loaded_at,
        "a held configuration is not loaded"
    );
    let held = source.held.expect("held");
    assert_eq!((held.removals, held.declared), (6, 10));
    assert_eq!(held.max_removal_ratio, 0.5);
    assert_eq!(held.would_remove, ["j4", "j5", "j6", "j7", "j8", "j9"]);
    assert_eq!(held.since, 100.0);
}

#[test]
fn the_guard_lets_removals_up_to_its_ratio_through() {
    let mut sim = Sim::with_guard(0.5);
    let jobs = farm(10);
    sim.config(decl_of(&jobs));
    assert_eq!(sim.config(decl_of(&jobs[..5])), ConfigOutcome::Applied);
    assert_eq!(sim.signals.len(), 5);
    // Additions and invalid declarations are never removals.
    let mut d = decl_of(&farm(20)[15..]);
    for (id, _) in &jobs[..5] {
        d.invalid
            .insert(JobId::from(id.as_str()), "name: is required".into());
    }
    assert_eq!(sim.config(d), ConfigOutcome::Applied);
}

#[test]
fn an_empty_map_from_a_broken_source_is_held() {
    let mut sim = Sim::with_guard(0.9);
    sim.config(decl_of(&farm(3)));
    assert!(matches!(sim.config(decl(&[])), ConfigOutcome::Held(_)));
    assert_eq!(sim.sup.status(sim.now, 0.0).1.len(), 3);
    // Even a one-job farm is protected from losing its only job.
    let mut sim = Sim::with_guard(0.9);
    sim.config(decl(&[("a", spec("a"))]));
    assert!(matches!(sim.config(decl(&[])), ConfigOutcome::Held(_)));
}

#[test]
fn the_first_configuration_is_never_held() {
    let mut sim = Sim::with_guard(0.1);
    assert_eq!(sim.config(decl(&[])), ConfigOutcome::Applied);
    assert_eq!(sim.config(decl_of(&farm(5))), ConfigOutcome::Applied);
}

#[test]
fn a_configuration_within_the_ratio_clears_the_hold() {
    let mut sim = Sim::with_guard(0.5);
    let jobs = farm(4);
    sim.config(decl_of(&jobs));
    sim.advance(SEC);
    assert!(matches!(sim.config(decl(&[])), ConfigOutcome::Held(_)));
    sim.advance(SEC);
    assert!(matches!(
        sim.config(decl_of(&jobs[..1])),
        ConfigOutcome::Held(_)
    ));
    let held = sim.sup.status(sim.now, 0.0).0.held.expect("held");
    assert_eq!(held.since, -1.0, "held since the first held configuration");
    assert_eq!(held.removals, 3, "the latest held configuration is shown");
    // The source is repaired.
    assert_eq!(sim.config(decl_of(&jobs[..3])), ConfigOutcome::Applied);
    let (source, _) = sim.sup.status(sim.now, 0.0);
    assert_eq!(source.held, None);
    assert_eq!(source.last_error, None);
    assert_eq!(sim.signals.len(), 1);
}

#[test]
fn a_forced_reload_lets_the_next_configuration_through_once() {
    let mut sim = Sim::with_guard(0.5);
    let jobs = farm(6);
    sim.config(decl_of(&jobs));
    assert!(matches!(sim.config(decl(&[])), ConfigOutcome::Held(_)));
    sim.force(10 * SEC);
    // The source's content after the confirmation is applied, not the
    // held one: here the operator put one job back meanwhile.
    assert_eq!(sim.config(decl_of(&jobs[..1])), ConfigOutcome::Applied);
    assert_eq!(sim.signals.len(), 5);
    assert_eq!(sim.job("j0").state, JobState::Running);
    assert_eq!(sim.sup.status(sim.now, 0.0).0.held, None);
    // The guard is back for the next one.
    for (id, _) in &jobs[1..] {
        sim.exit(id, 0);
    }
    sim.config(decl_of(&farm(4)));
    assert!(matches!(sim.config(decl(&[])), ConfigOutcome::Held(_)));
}

#[test]
fn a_forced_reload_expires() {
    let mut sim = Sim::with_guard(0.5);
    sim.config(decl_of(&farm(2)));
    sim.force(SEC);
    sim.advance(2 * SEC);
    assert!(matches!(sim.config(decl(&[])), ConfigOutcome::Held(_)));
    // And a forced reload consumed by a harmless configuration is spent.
    sim.force(SEC);
    assert_eq!(sim.config(decl_of(&farm(2))), ConfigOutcome::Applied);
    assert!(matches!(sim.config(decl(&[])), ConfigOutcome::Held(_)));
}

#[test]
fn source_errors_leave_the_hold_in_place() {
    let mut sim = Sim::with_guard(0.5);
    sim.config(decl_of(&farm(2)));
    sim.config(decl(&[]));
    sim.sup.handle_source_error("broken".into());
    let (source, jobs) = sim.sup.status(sim.now, 0.0);
    assert_eq!(source.last_error.as_deref(), Some("broken"));
    assert!(source.held.is_some());
    assert_eq!(jobs.len(), 2);
}

#[test]
fn a_run_is_timed_from_its_spawn_to_its_exit_not_to_their_handling() {
    let t0 = Instant::now();
    let mut sup = Supervisor::new(Config::default());
    let mut s = spec("a");
    s.short_run = 2 * SEC;
    sup.handle_config(t0, decl(&[("a", s)]));
    let Some(Action::Spawn { run, .. }) = sup.poll_action() else {
        panic!("a spawn");
    };
    // A busy shell gets to the spawn 3 s late, and the process ends 1 s
    // after it started: a short run, although 4 s passed since the config.
    sup.handle_spawned(t0 + 3 * SEC, run, 42);
    let after = sup.handle_exit(t0 + 4 * SEC, run, ExitStatus::code(1));
    assert_eq!(after, AfterExit::Backoff(ExitReason::Exit, SEC));
    // The exit is handled 3 s late too: the delay counts from the exit, so
    // the restart is due at once.
    let late = t0 + 7 * SEC;
    assert_eq!(sup.poll_timeout(), Some(t0 + 5 * SEC));
    sup.handle_timeout(late);
    assert!(matches!(sup.poll_action(), Some(Action::Spawn { .. })));
}

#[test]
fn a_hundred_thousand_jobs_reconcile_in_linear_time() {
    let mut sup = Supervisor::new(Config::default());
    let now = Instant::now();
    let jobs = farm(100_000);
    let started = std::time::Instant::now();
    sup.handle_config(now, decl_of(&jobs));
    let mut spawns = 0;
    let mut run = 0;
    while let Some(action) = sup.poll_action() {
        if let Action::Spawn { run: r, .. } = action {
            sup.handle_spawned(now, r, 1000 + r.0 as u32);
            spawns += 1;
            run = r.0;
        }
    }
    assert_eq!(spawns, 100_000);
    // The same configuration again: nothing to do.
    sup.handle_config(now, decl_of(&jobs));
    assert_eq!(sup.poll_action(), None);
    // Every job removed: one stop signal each.
    sup.handle_config(now, decl(&[]));
    let mut signals = 0;
    while sup.poll_action().is_some() {
        signals += 1;
    }
    assert_eq!(signals, 100_000);
    let (_, status) = sup.status(now, 0.0);
    assert_eq!(status.len(), 100_000);
    assert_eq!(run, 99_999);
    // Unoptimised, on a loaded machine: a few seconds at most; quadratic
    // work would take hours.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
}

// ---------------------------------------------------------------------------
// Property tests.

/// One step of a random scenario.
#[derive(Debug, Clone)]
enum Op {
    /// A configuration: for each of the ids 0..8, absent, valid in one of
    /// three variants, or invalid.
    Config(Vec<Option<Decl>>),
    /// The process of job `n` (mod live processes) exits.
    Exit(usize, i32),
    /// Time passes.
    Advance(u64),
    /// `lrpmctl restart` of job id `n`.
    Restart(u8),
    /// `lrpmctl reload --force`: the guard is lifted for this many ms.
    ForceReload(u64),
    /// A source error.
    SourceError,
    /// Graceful shutdown.
    Shutdown,
    /// SIGINT.
    Interrupt,
    /// A cluster share: the configuration, the ids (bit i: job i) not
    /// owned here, and those moved to another node.
    Share(Vec<Option<Decl>>, u8, u8),
}

#[derive(Debug, Clone, Copy)]
enum Decl {
    Valid(u8),
    ValidMtime(u64),
    Invalid,
}

fn op() -> impl Strategy<Value = Op> {
    let decl = prop_oneof![
        (0u8..3).prop_map(Decl::Valid),
        (0u64..3).prop_map(Decl::ValidMtime),
        Just(Decl::Invalid),
    ];
    prop_oneof![
        3 => proptest::collection::vec(proptest::option::of(decl.clone()), 8).prop_map(Op::Config),
        4 => (any::<usize>(), -1i32..3).prop_map(|(n, c)| Op::Exit(n, c)),
        4 => (0u64..20_000).prop_map(Op::Advance),
        1 => (0u8..10).prop_map(Op::Restart),
        1 => (0u64..5_000).prop_map(Op::ForceReload),
        1 => Just(Op::SourceError),
        1 => Just(Op::Shutdown),
        1 => Just(Op::Interrupt),
        3 => (proptest::collection::vec(proptest::option::of(decl), 8), any::<u8>(), any::<u8>())
            .prop_map(|(slots, waiting, moved)| Op::Share(slots, waiting, moved)),
    ]
}

/// The ids 0..8 whose bit is set in `mask`.
fn ids_of(mask: u8) -> BTreeSet<JobId> {
    (0..8)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| JobId::new(i.to_string()))
        .collect()
}

fn to_declaration(slots: &[Option<Decl>]) -> Declaration {
    let mut d = Declaration::default();
    for (i, slot) in slots.iter().enumerate() {
        let id = JobId::new(i.to_string());
        match slot {
            None => {}
            Some(Decl::Valid(v)) => {
                let mut s = spec(&format!("v{v}"));
                s.short_run = Duration::from_millis(1500);
                s.shutdown_timeout = Duration::from_millis(700 * u64::from(*v));
                d.jobs.insert(id, Arc::new(s));
            }
            Some(Decl::ValidMtime(m)) => {
                let mut s = spec("m");
                s.mtime = Some(*m);
                d.jobs.insert(id, Arc::new(s));
            }
            Some(Decl::Invalid) => {
                d.invalid.insert(id, "name: is required".into());
            }
        }
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_over_random_scenarios(
        ops in proptest::collection::vec(op(), 1..60),
        max_backoff_s in 1u64..30,
        ratio in proptest::option::of(0.05f64..=1.0),
    ) {
        let mut sim = Sim::with_config(Config {
            max_backoff: Duration::from_secs(max_backoff_s),
            source_uri: "test".into(),
            max_removal_ratio: ratio,
            ..Config::default()
        });
        let mut valid_ever: BTreeSet<JobId> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Config(slots) => {
                    let d = to_declaration(&slots);
                    let valid: Vec<JobId> = d.jobs.keys().cloned().collect();
                    // `Sim::config` checks that the guard holds exactly the
                    // configurations it should, and that a held one changes
                    // nothing.
                    if sim.config(d) == ConfigOutcome::Applied {
                        valid_ever.extend(valid.iter().cloned());
                        // Every valid declared job is running, stopping or
                        // scheduled to restart.
                        for id in valid {
                            let j = sim.job(id.as_str());
                            prop_assert!(j.declared);
                            if j.state == JobState::Backoff {
                                prop_assert!(j.restart_at.is_some());
                            }
                        }
                    }
                }
                Op::Exit(n, code) => {
                    let mut runs: Vec<RunId> = sim.live.keys().copied().collect();
                    runs.sort();
                    if !runs.is_empty() {
                        let run = runs[n % runs.len()];
                        let status = if code < 0 {
                            ExitStatus::spawn_failed("boom")
                        } else {
                            ExitStatus::code(code)
                        };
                        sim.exit_run(run, status);
                        sim.run_actions();
                    }
                }
                Op::Advance(ms) => sim.advance(Duration::from_millis(ms)),
                Op::ForceReload(ms) => sim.force(Duration::from_millis(ms)),
                Op::Restart(n) => {
                    let id = JobId::new(n.to_string());
                    let known = sim.has_job(id.as_str()) && sim.job(id.as_str()).declared;
                    let r = sim.sup.restart(sim.now, &id);
                    prop_assert_eq!(r.is_ok(), known && !sim.sup.is_shutting_down());
                    sim.run_actions();
                }
                Op::SourceError => {
                    sim.sup.handle_source_error("broken".into());
                    sim.run_actions();
                }
                Op::Shutdown => {
                    sim.sup.shutdown(sim.now);
                    sim.run_actions();
                }
                Op::Share(slots, waiting, moved) => {
                    let d = to_declaration(&slots);
                    let valid: Vec<JobId> = d.jobs.keys().cloned().collect();
                    if sim.share(d, ids_of(waiting), ids_of(moved)) == ConfigOutcome::Applied {
                        valid_ever.extend(valid);
                    }
                }
                Op::Interrupt => {
                    let (was_shutting_down, jobs) =
                        (sim.sup.is_shutting_down(), sim.sup.job_count());
                    let signalled = sim.signals.len();
                    let outcome = sim.sup.handle_interrupt(sim.now);
                    sim.run_actions();
                    prop_assert!(sim.sup.is_shutting_down());
                    if was_shutting_down {
                        // Every process had SIGKILL, which the simulated
                        // kernel obeys at once: nothing is left to wait for.
                        prop_assert_eq!(outcome, Interrupted::ForceKill);
                        prop_assert!(sim.sup.is_finished());
                        prop_assert!(sim.live.is_empty());
                        prop_assert_eq!(sim.sup.poll_timeout(), None);
                    } else {
                        prop_assert_eq!(outcome, Interrupted::Shutdown { jobs });
                        // Asked to stop, each with its stop timeout.
                        for (_, _, signal) in &sim.signals[signalled..] {
                            prop_assert_ne!(*signal, Signal::Kill);
                        }
                    }
                }
            }
            // Only ever-declared jobs were ever spawned.
            for (_, id) in &sim.spawns {
                prop_assert!(valid_ever.contains(id));
            }
        }
        // Whatever happened, a shutdown ends with every process gone once the
        // longest stop timeout has passed.
        sim.sup.shutdown(sim.now);
        sim.run_actions();
        sim.advance(Duration::from_secs(20));
        prop_assert!(sim.sup.is_finished());
        prop_assert!(sim.live.is_empty());
        prop_assert_eq!(sim.sup.poll_timeout(), None);
    }

    #[test]
    fn removed_jobs_never_start_again(
        crash_after_ms in proptest::collection::vec(0u64..10_000, 0..10),
    ) {
        let mut sim = Sim::new();
        sim.config(decl(&[("a", spec("a")), ("b", spec("b"))]));
        sim.config(decl(&[("b", spec("b"))]));
        let spawned = sim.spawn_count("a");
        for ms in crash_after_ms {
            sim.advance(Duration::from_millis(ms));
            if sim.run_of("a").is_some() {
                sim.exit("a", 1);
            }
            if sim.run_of("b").is_some() {
                sim.exit("b", 1);
            }
        }
        sim.advance(Duration::from_secs(100));
        prop_assert_eq!(sim.spawn_count("a"), spawned);
        prop_assert!(!sim.has_job("a"));
    }
}

/// The last exit of job `id`: its reason, and the error text.
fn last_exit(sim: &Sim, id: &str) -> (ExitReason, Option<String>) {
    let exit = sim.job(id).last_exit.expect("an exit");
    (exit.status.reason, exit.status.error)
}

#[test]
fn an_exit_lrpm_did_not_ask_for_is_a_crash_with_its_reason() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.advance(10 * SEC);
    sim.exit("a", 3);
    assert_eq!(last_exit(&sim, "a"), (ExitReason::Exit, None));
    assert_eq!((sim.job("a").crashes, sim.job("a").restarts), (1, 1));
    sim.advance(10 * SEC);
    let run = sim.run_of("a").expect("restarted");
    sim.exit_run(run, ExitStatus::signal(11));
    sim.run_actions();
    assert_eq!(last_exit(&sim, "a"), (ExitReason::Signal, None));
    assert_eq!(
        format!("{:#}", sim.job("a").last_exit.expect("exit").status),
        "SIGSEGV"
    );
    assert_eq!((sim.job("a").crashes, sim.job("a").oom_kills), (2, 0));
}

#[test]
fn a_spawn_failure_is_a_crash_with_the_error_text() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    let run = sim.run_of("a").expect("run");
    sim.exit_run(
        run,
        ExitStatus::spawn_failed("/nowhere: No such file or directory"),
    );
    sim.run_actions();
    assert_eq!(
        last_exit(&sim, "a"),
        (
            ExitReason::SpawnFailed,
            Some("/nowhere: No such file or directory".into())
        )
    );
    assert_eq!(sim.job("a").crashes, 1);
    assert_eq!(sim.job("a").state, JobState::Backoff);
}

#[test]
fn deliberate_restarts_are_stops_not_crashes() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.advance(10 * SEC);
    // Updated: the stop signal, and an exit by SIGTERM.
    sim.config(decl(&[("a", spec("a2"))]));
    let run = sim.run_of("a").expect("stopping");
    sim.exit_run(run, ExitStatus::signal(15));
    sim.run_actions();
    assert_eq!(last_exit(&sim, "a"), (ExitReason::Stopped, None));
    let shown = sim.job("a").last_exit.expect("exit").status;
    assert_eq!(format!("{shown:#}"), "stopped");
    assert_eq!(shown.to_string(), "stopped (killed by SIGTERM)");
    // An operator's restart, which the process answers with an exit code.
    sim.sup.restart(sim.now, &"a".into()).expect("restart");
    sim.run_actions();
    sim.exit("a", 143);
    // Stubborn: killed after its stop timeout.
    sim.sup.restart(sim.now, &"a".into()).expect("restart");
    sim.run_actions();
    sim.advance(30 * SEC);
    assert_eq!(last_exit(&sim, "a"), (ExitReason::Stopped, None));
    let a = sim.job("a");
    assert_eq!((a.restarts, a.crashes), (3, 0));
}

#[test]
fn an_oom_kill_is_counted_and_shown_even_during_a_stop() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.advance(10 * SEC);
    let oom = || ExitStatus::signal(9).because(ExitReason::OomKilled);
    let run = sim.run_of("a").expect("run");
    sim.exit_run(run, oom());
    sim.run_actions();
    assert_eq!(last_exit(&sim, "a"), (ExitReason::OomKilled, None));
    let a = sim.job("a");
    assert_eq!((a.crashes, a.oom_kills, a.restarts), (1, 1, 1));
    assert_eq!(a.state, JobState::Running, "a long run: restarted at once");
    // Killed while lrpm stops it for an update: a stop, but still an OOM kill.
    sim.config(decl(&[("a", spec("a2"))]));
    let run = sim.run_of("a").expect("stopping");
    sim.exit_run(run, oom());
    sim.run_actions();
    assert_eq!(last_exit(&sim, "a"), (ExitReason::Stopped, None));
    let a = sim.job("a");
    assert_eq!((a.crashes, a.oom_kills), (1, 2));
}

#[test]
fn the_status_document_carries_reasons_and_counters() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a"))]));
    sim.advance(10 * SEC);
    sim.exit("a", 2);
    let json = serde_json::to_value(sim.sup.status_jobs(sim.now, 0.0)).expect("serializes");
    assert_eq!(json[0]["crashes"], 1);
    assert_eq!(json[0]["oom_kills"], 0);
    assert_eq!(json[0]["last_exit"]["reason"], "exit");
    assert_eq!(json[0]["last_exit"]["code"], 2);
}

#[test]
fn spawn_carries_the_declaration() {
    let mut sup = Supervisor::new(Config::default());
    let s = spec("x");
    sup.handle_config(Instant::now(), decl(&[("a", s.clone())]));
    match sup.poll_action() {
        Some(Action::Spawn { job, spec, .. }) => {
            assert_eq!(job.as_str(), "a");
            assert_eq!(spec, Arc::new(s));
        }
        other => panic!("expected a spawn, got {other:?}"),
    }
    assert_eq!(sup.poll_action(), None);
}

#[test]
fn the_borrowed_status_serializes_as_the_owned_one_in_every_state() {
    let mut sim = Sim::new();
    let mut argv = JobSpec::new(
        "N\u{e4}me \"quoted\"\n",
        Program::Argv(vec![
            "/bin/echo".into(),
            "a b".into(),
            "\\ \u{1f600}".into(),
        ]),
    );
    argv.mtime = Some(42);
    let worker = JobSpec::new("w", Program::WorkerClass("Mock".into()));
    sim.config(decl(&[
        ("running", argv),
        ("backoff", spec("b")),
        ("failed", spec("f")),
        ("stopping", spec("s")),
        ("worker", worker),
        ("invalid", spec("i")),
    ]));
    sim.exit("backoff", 3);
    let run = sim.run_of("failed").expect("run");
    sim.exit_run(run, ExitStatus::spawn_failed("no such file: \"x\""));
    sim.sup
        .restart(sim.now, &JobId::from("stopping"))
        .expect("known");
    sim.run_actions();
    let mut d = decl(&[
        (
            "running",
            sim.sup.jobs[&JobId::from("running")].spec.as_ref().clone(),
        ),
        ("backoff", spec("b")),
        ("failed", spec("f")),
        ("stopping", spec("s")),
        (
            "worker",
            JobSpec::new("w", Program::WorkerClass("Mock".into())),
        ),
    ]);
    d.invalid
        .insert("invalid".into(), "name: is required".into());
    sim.config(d);
    let states: BTreeSet<&str> = sim
        .sup
        .status(sim.now, 0.0)
        .1
        .iter()
        .map(|j| j.state.as_str())
        .collect();
    assert_eq!(states.len(), 3, "every state is listed: {states:?}");
    for wall in [0.0, 1_764_000_000.123_456, -5.5] {
        let (_, jobs) = sim.sup.status(sim.now, wall);
        let status_jobs = sim.sup.status_jobs(sim.now, wall);
        assert_eq!(status_jobs.len(), jobs.len());
        assert_eq!(
            serde_json::to_string(&status_jobs).expect("serializes"),
            serde_json::to_string(&jobs).expect("serializes")
        );
    }
}

/// A farm of `n` jobs, all of version `v`.
fn versioned_farm(n: usize, v: u32) -> Declaration {
    let jobs: Vec<(String, JobSpec)> = (0..n)
        .map(|i| (format!("j{i:02}"), spec(&format!("v{v}"))))
        .collect();
    decl_of(&jobs)
}

/// How many jobs are stopping.
fn stopping(sim: &Sim) -> usize {
    let (_, jobs) = sim.sup.status(sim.now, 0.0);
    jobs.iter()
        .filter(|j| j.state == JobState::Stopping)
        .count()
}

/// A farm of `n` jobs of version 1 under `--max-restarting k`.
fn wave_sim(n: usize, k: usize) -> Sim {
    let mut sim = Sim::with_config(Config {
        max_restarting: Some(k),
        ..Config::default()
    });
    sim.config(versioned_farm(n, 1));
    sim
}

#[test]
fn an_update_of_many_jobs_restarts_them_in_waves() {
    let mut sim = wave_sim(12, 3);
    sim.advance(10 * SEC);
    sim.config(versioned_farm(12, 2));
    assert_eq!(sim.signals.len(), 3, "a wave of three");
    assert_eq!(sim.sup.wave_counts(), (3, 9));
    // One of the wave ends and its new process is up: the next one stops.
    let (_, first, _) = sim.signals[0].clone();
    sim.exit(first.as_str(), 0);
    assert_eq!(sim.signals.len(), 4);
    assert_eq!(stopping(&sim), 3);
    // A crash meanwhile is restarted at once, not queued.
    let crashing = "j11";
    sim.exit(crashing, 1);
    assert_eq!(sim.job(crashing).crashes, 1);
    assert_eq!(sim.job(crashing).state, JobState::Running);
    assert_eq!(sim.job(crashing).restarts, 1);
    assert_eq!(sim.job(crashing).command, "v2", "the crash took its turn");
    // Every job ends on the new declaration, three at a time at most.
    while let Some((_, id, _)) = sim
        .signals
        .iter()
        .find(|(_, id, _)| sim.job(id.as_str()).state == JobState::Stopping)
        .cloned()
    {
        sim.exit(id.as_str(), 0);
        assert!(stopping(&sim) <= 3);
    }
    assert_eq!(sim.sup.wave_counts(), (0, 0));
    assert_eq!(stopping(&sim), 0);
    assert_eq!(
        sim.signals.len(),
        11,
        "each job once, but the crashed one: its restart took the new declaration"
    );
    for i in 0..12 {
        assert_eq!(sim.job(&format!("j{i:02}")).command, "v2");
    }
}

#[test]
fn restart_all_goes_in_waves_too() {
    let mut sim = wave_sim(5, 2);
    sim.sup.restart_all(sim.now).expect("restart --all");
    sim.run_actions();
    assert_eq!(sim.signals.len(), 2);
    assert_eq!(sim.sup.wave_counts(), (2, 3));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever exits, crashes and time come, a wave never has more than K
    /// jobs stopping, and every job ends up on the new declaration.
    #[test]
    fn waves_never_restart_more_than_k_at_once(
        n in 1usize..16,
        k in 1usize..5,
        ops in proptest::collection::vec((0usize..16, 0u8..4, 0u64..3000), 0..60),
    ) {
        let mut sim = wave_sim(n, k);
        sim.advance(10 * SEC);
        sim.config(versioned_farm(n, 2));
        prop_assert!(stopping(&sim) <= k);
        for (pick, what, ms) in ops {
            let id = format!("j{:02}", pick % n);
            match what {
                // The stop is answered (or a crash, if it was running).
                0 | 1 => {
                    if sim.run_of(&id).is_some() {
                        sim.exit(&id, i32::from(what));
                    }
                }
                _ => sim.advance(Duration::from_millis(ms)),
            }
            prop_assert!(stopping(&sim) <= k, "{} stopping", stopping(&sim));
        }
        // The stops are answered until no job is stopping.
        for _ in 0..=n {
            for i in 0..n {
                let id = format!("j{i:02}");
                if sim.job(&id).state == JobState::Stopping {
                    sim.exit(&id, 0);
                    prop_assert!(stopping(&sim) <= k);
                }
            }
            sim.advance(60 * SEC);
        }
        prop_assert_eq!(sim.sup.wave_counts(), (0, 0));
        for i in 0..n {
            prop_assert_eq!(sim.job(&format!("j{i:02}")).command, "v2");
        }
    }
}

/// The ids `names` as a set.
fn id_set(names: &[&str]) -> BTreeSet<JobId> {
    names.iter().map(|name| JobId::from(*name)).collect()
}

#[test]
fn a_waiting_job_starts_only_once_owned_and_a_job_that_loses_its_ownership_stops() {
    let mut sim = Sim::new();
    let d = || decl(&[("a", spec("a")), ("b", spec("b"))]);
    // `b` is another node's still: it waits, and never spawns.
    sim.share(d(), id_set(&["b"]), BTreeSet::new());
    assert_eq!(sim.job("a").state, JobState::Running);
    assert_eq!(sim.job("b").state, JobState::Waiting);
    assert_eq!(sim.job("b").pid, None);
    sim.advance(60 * SEC);
    assert_eq!(sim.job("b").state, JobState::Waiting);
    // Owned now: it starts at once, for that reason.
    sim.share(d(), BTreeSet::new(), BTreeSet::new());
    assert_eq!(sim.job("b").state, JobState::Running);
    assert!(
        sim.reasons
            .contains(&(JobId::from("b"), "start", Reason::Owned))
    );
    // `a` loses its ownership: stopped, then held, not restarted.
    sim.share(d(), id_set(&["a"]), BTreeSet::new());
    assert!(
        sim.reasons
            .contains(&(JobId::from("a"), "stop", Reason::Waiting))
    );
    let run = sim.run_of("a").expect("a stopping");
    sim.exit_run(run, ExitStatus::signal(15));
    sim.run_actions();
    assert_eq!(sim.job("a").state, JobState::Waiting);
    assert_eq!(sim.run_of("a"), None);
    // `b` moves to another node: its stop says so, and it is forgotten.
    sim.share(decl(&[("a", spec("a"))]), id_set(&["a"]), id_set(&["b"]));
    assert!(
        sim.reasons
            .contains(&(JobId::from("b"), "stop", Reason::Moved))
    );
    let run = sim.run_of("b").expect("b stopping");
    sim.exit_run(run, ExitStatus::signal(15));
    sim.run_actions();
    assert!(!sim.sup.knows_declared(&JobId::from("b")));
}

#[test]
fn a_waiting_job_starts_on_its_latest_declaration_whatever_its_mtime() {
    let mut sim = Sim::new();
    let with_token = |token: Option<&str>| {
        let mut s = spec("a");
        s.mtime = Some(1);
        if let Some(token) = token {
            s.env.insert("LRPM_FENCING_TOKEN".into(), token.into());
        }
        decl(&[("a", s)])
    };
    sim.share(with_token(None), id_set(&["a"]), BTreeSet::new());
    assert_eq!(sim.job("a").state, JobState::Waiting);
    // Owned, with its token: the same mtime, yet its spawn carries it.
    sim.share(with_token(Some("42")), BTreeSet::new(), BTreeSet::new());
    assert_eq!(sim.job("a").state, JobState::Running);
    assert_eq!(
        sim.sup.jobs[&JobId::from("a")]
            .spec
            .env
            .get("LRPM_FENCING_TOKEN")
            .map(String::as_str),
        Some("42")
    );
}
