//! Tests of `instances` and of the operator's commands in the state
//! machine: scenarios in virtual time with a fake process table, and
//! property tests of their invariants over random events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::decl::Declaration;
use crate::job::{JobId, JobSpec, Program, Signal};
use crate::status::{ExitStatus, JobState, JobStatus};

const SEC: Duration = Duration::from_secs(1);

/// A job running `cmd`, with `instances` when it is `Some`.
fn spec(cmd: &str, instances: Option<u32>) -> JobSpec {
    let mut s = JobSpec::new(format!("job {cmd}"), Program::Shell(cmd.to_owned()));
    s.instances = instances;
    s.shutdown_timeout = 2 * SEC;
    s
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

/// The supervisor with a fake process table and a virtual clock.
struct Sim {
    sup: Supervisor,
    now: Instant,
    /// Live processes: run → (job, pid).
    live: HashMap<RunId, (JobId, u32)>,
    next_pid: u32,
    /// Every spawn, in order.
    spawns: Vec<JobId>,
    /// Every signal, in order.
    signals: Vec<(JobId, Signal)>,
}

impl Sim {
    fn new() -> Self {
        Self {
            sup: Supervisor::new(Config::default()),
            now: Instant::now(),
            live: HashMap::new(),
            next_pid: 100,
            spawns: Vec::new(),
            signals: Vec::new(),
        }
    }

    /// Performs the queued actions, as the shell would; a SIGKILL ends its
    /// process at once.
    fn run_actions(&mut self) {
        while let Some(action) = self.sup.poll_action() {
            match action {
                Action::Spawn { run, job, .. } => {
                    assert!(
                        self.live.values().all(|(j, _)| *j != job),
                        "job {job} would have two processes"
                    );
                    self.next_pid += 1;
                    self.live.insert(run, (job.clone(), self.next_pid));
                    self.spawns.push(job);
                    self.sup.handle_spawned(self.now, run, self.next_pid);
                }
                Action::Signal { run, signal } => {
                    if let Some((job, _)) = self.live.get(&run) {
                        self.signals.push((job.clone(), signal));
                        if signal == Signal::Kill {
                            self.live.remove(&run);
                            self.sup.handle_exit(self.now, run, ExitStatus::signal(9));
                        }
                    }
                }
                Action::Probe { .. } => {}
            }
        }
    }

    fn config(&mut self, d: Declaration) {
        self.sup.handle_config(self.now, d);
        self.run_actions();
    }

    /// The process of job `id` exits with `code`.
    fn exit(&mut self, id: &str) {
        let run = self.run_of(id).expect("the job has a process");
        self.live.remove(&run);
        self.sup.handle_exit(self.now, run, ExitStatus::code(0));
        self.run_actions();
    }

    fn run_of(&self, id: &str) -> Option<RunId> {
        self.live
            .iter()
            .find(|(_, (job, _))| job.as_str() == id)
            .map(|(run, _)| *run)
    }

    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(at) = self.sup.poll_timeout().filter(|at| *at <= target) {
            self.now = self.now.max(at);
            self.sup.handle_timeout(self.now);
            self.run_actions();
        }
        self.now = target;
    }

    fn jobs(&self) -> Vec<JobStatus> {
        self.sup.status(self.now, 0.0).1
    }

    fn job(&self, id: &str) -> JobStatus {
        self.jobs()
            .into_iter()
            .find(|j| j.id == id)
            .unwrap_or_else(|| panic!("no job {id}"))
    }

    fn ids(&self) -> Vec<String> {
        self.jobs().into_iter().map(|j| j.id).collect()
    }

    fn pid(&self, id: &str) -> Option<u32> {
        self.job(id).pid
    }

    fn signalled(&self, id: &str) -> usize {
        self.signals
            .iter()
            .filter(|(j, _)| j.as_str() == id)
            .count()
    }
}

#[test]
fn instances_run_as_jobs_of_their_own() {
    let mut sim = Sim::new();
    sim.config(decl(&[("w", spec("w", Some(3))), ("s", spec("s", None))]));
    assert_eq!(sim.ids(), ["s", "w#0", "w#1", "w#2"]);
    assert_eq!(sim.spawns.len(), 4);
    assert_eq!(sim.job("w#1").state, JobState::Running);
}

#[test]
fn fewer_instances_stop_only_the_copies_removed() {
    let mut sim = Sim::new();
    sim.config(decl(&[("w", spec("w", Some(3)))]));
    let (p0, p1) = (sim.pid("w#0"), sim.pid("w#1"));
    sim.advance(SEC);
    sim.config(decl(&[("w", spec("w", Some(2)))]));
    assert_eq!(sim.signals, [(JobId::from("w#2"), Signal::Term)]);
    sim.exit("w#2");
    assert_eq!(sim.ids(), ["w#0", "w#1"]);
    assert_eq!((sim.pid("w#0"), sim.pid("w#1")), (p0, p1));
    assert_eq!(sim.spawns.len(), 3, "nothing started again");
    sim.config(decl(&[("w", spec("w", Some(4)))]));
    assert_eq!(sim.ids(), ["w#0", "w#1", "w#2", "w#3"]);
    assert_eq!((sim.pid("w#0"), sim.pid("w#1")), (p0, p1));
    assert_eq!(sim.spawns.len(), 5, "the two copies added started");
}

#[test]
fn an_update_restarts_every_copy() {
    let mut sim = Sim::new();
    sim.config(decl(&[("w", spec("v1", Some(2)))]));
    sim.config(decl(&[("w", spec("v2", Some(2)))]));
    assert_eq!(sim.signalled("w#0"), 1);
    assert_eq!(sim.signalled("w#1"), 1);
    sim.exit("w#0");
    sim.exit("w#1");
    for id in ["w#0", "w#1"] {
        let job = sim.job(id);
        assert_eq!((job.command.as_str(), job.state), ("v2", JobState::Running));
    }
}

#[test]
fn an_invalid_declaration_keeps_the_copies_running() {
    let mut sim = Sim::new();
    sim.config(decl(&[("w", spec("w", Some(2)))]));
    let mut d = decl(&[]);
    d.invalid
        .insert(JobId::from("w"), "command: is required".into());
    sim.config(d);
    assert!(
        sim.signals.is_empty(),
        "the copies of an invalid job run on"
    );
    for id in ["w#0", "w#1"] {
        let job = sim.job(id);
        assert_eq!(job.state, JobState::Running);
        assert!(job.declared);
        assert_eq!(job.invalid.as_deref(), Some("command: is required"));
    }
    sim.config(decl(&[]));
    assert_eq!(sim.signals.len(), 2, "removed at last");
}

#[test]
fn copies_crash_and_back_off_alone() {
    let mut sim = Sim::new();
    sim.config(decl(&[("w", spec("w", Some(2)))]));
    let p1 = sim.pid("w#1");
    sim.exit("w#0");
    assert_eq!(sim.job("w#0").state, JobState::Backoff);
    assert_eq!(sim.pid("w#1"), p1);
}
