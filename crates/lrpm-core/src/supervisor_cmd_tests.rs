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
                Action::Signal { run, signal, .. } => {
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

fn ids(list: &[&str]) -> Vec<JobId> {
    list.iter().map(|id| JobId::from(*id)).collect()
}

#[test]
fn a_paused_job_is_stopped_and_held_until_resumed() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a", None)), ("b", spec("b", None))]));
    assert_eq!(sim.sup.pause(sim.now, &ids(&["a"])), Ok(ids(&["a"])));
    sim.run_actions();
    assert_eq!(sim.signals, [(JobId::from("a"), Signal::Term)]);
    assert_eq!(sim.job("a").state, JobState::Stopping);
    sim.exit("a");
    assert_eq!(sim.job("a").state, JobState::Paused);
    assert_eq!(sim.spawns.len(), 2, "not started again");
    sim.advance(3600 * SEC);
    assert_eq!(sim.spawns.len(), 2, "nor later");
    assert_eq!(
        sim.sup.pause(sim.now, &ids(&["a"])),
        Ok(vec![]),
        "already paused"
    );
    assert_eq!(sim.sup.resume(sim.now, &ids(&["a", "b"])), Ok(ids(&["a"])));
    sim.run_actions();
    assert_eq!(sim.job("a").state, JobState::Running);
    assert_eq!(sim.spawns.len(), 3);
    assert!(!sim.sup.is_paused(&JobId::from("a")));
}

#[test]
fn a_pause_survives_configuration_changes_and_an_update_waits_for_resume() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("v1", None))]));
    sim.sup.pause(sim.now, &ids(&["a"])).expect("paused");
    sim.run_actions();
    sim.exit("a");
    sim.config(decl(&[("a", spec("v1", None)), ("b", spec("b", None))]));
    sim.config(decl(&[("a", spec("v2", None)), ("b", spec("b", None))]));
    assert_eq!(sim.job("a").state, JobState::Paused);
    assert_eq!(sim.spawns, ids(&["a", "b"]));
    sim.sup.resume(sim.now, &ids(&["a"])).expect("resumed");
    sim.run_actions();
    let a = sim.job("a");
    assert_eq!((a.state, a.command.as_str()), (JobState::Running, "v2"));
}

#[test]
fn a_job_paused_while_stopping_for_an_update_is_held_with_the_update() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("v1", None))]));
    sim.config(decl(&[("a", spec("v2", None))]));
    sim.sup.pause(sim.now, &ids(&["a"])).expect("paused");
    sim.run_actions();
    assert_eq!(sim.signals.len(), 1, "one stop");
    sim.exit("a");
    assert_eq!(sim.job("a").state, JobState::Paused);
    sim.sup.resume(sim.now, &ids(&["a"])).expect("resumed");
    sim.run_actions();
    assert_eq!(sim.job("a").command, "v2");
}

#[test]
fn a_paused_job_in_backoff_is_held_and_a_removed_one_forgotten() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a", None))]));
    sim.exit("a");
    assert_eq!(sim.job("a").state, JobState::Backoff);
    sim.sup.pause(sim.now, &ids(&["a"])).expect("paused");
    assert_eq!(sim.job("a").state, JobState::Paused);
    assert_eq!(sim.sup.poll_timeout(), None, "no backoff deadline left");
    sim.config(decl(&[]));
    assert!(sim.ids().is_empty(), "removed from the source: forgotten");
    sim.config(decl(&[("a", spec("a", None))]));
    assert_eq!(
        sim.job("a").state,
        JobState::Running,
        "declared anew, not paused"
    );
}

#[test]
fn commands_refuse_unknown_ids_and_do_nothing_then() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a", None))]));
    let now = sim.now;
    assert_eq!(
        sim.sup.pause(now, &ids(&["a", "x"])),
        Err(CommandError::UnknownJob(JobId::from("x")))
    );
    assert_eq!(
        sim.sup.restart_jobs(now, &ids(&["x", "y", "a"])),
        Err(CommandError::UnknownJobs(ids(&["x", "y"])))
    );
    assert_eq!(sim.sup.resume(now, &[]), Err(CommandError::NoIds));
    assert_eq!(
        sim.sup.signal(&ids(&["z"]), Signal::Usr1),
        Err(CommandError::UnknownJob(JobId::from("z")))
    );
    assert!(sim.sup.status_jobs_of(now, 0.0, &ids(&["q"])).is_err());
    sim.run_actions();
    assert!(sim.signals.is_empty());
    assert_eq!(sim.job("a").state, JobState::Running);
    assert_eq!(
        CommandError::UnknownJobs(ids(&["x", "y"])).to_string(),
        "no such jobs: x, y"
    );
}

#[test]
fn restart_of_several_jobs_and_of_all_leaves_paused_ones_alone() {
    let mut sim = Sim::new();
    sim.config(decl(&[
        ("a", spec("a", None)),
        ("b", spec("b", None)),
        ("c", spec("c", None)),
    ]));
    sim.sup.pause(sim.now, &ids(&["c"])).expect("paused");
    sim.run_actions();
    sim.exit("c");
    assert_eq!(
        sim.sup.restart_jobs(sim.now, &ids(&["a", "c"])),
        Err(CommandError::Paused(ids(&["c"])))
    );
    assert_eq!(
        sim.sup.restart_jobs(sim.now, &ids(&["a", "b", "a"])),
        Ok(ids(&["a", "b"]))
    );
    sim.run_actions();
    sim.exit("a");
    sim.exit("b");
    assert_eq!(sim.spawns.len(), 5);
    assert_eq!(sim.sup.restart_all(sim.now), Ok(ids(&["a", "b"])));
    sim.run_actions();
    assert_eq!(sim.signalled("a"), 2);
    assert_eq!(sim.signalled("b"), 2);
    assert_eq!(sim.job("c").state, JobState::Paused);
}

#[test]
fn a_signal_goes_to_the_jobs_with_a_process() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", spec("a", None)), ("b", spec("b", None))]));
    sim.exit("b");
    assert_eq!(
        sim.sup.signal(&ids(&["a", "b"]), Signal::Usr1),
        Ok(Signalled {
            sent: ids(&["a"]),
            skipped: ids(&["b"])
        })
    );
    sim.run_actions();
    assert_eq!(sim.signals, [(JobId::from("a"), Signal::Usr1)]);
    assert_eq!(
        sim.job("a").state,
        JobState::Running,
        "the signal is the job's business"
    );
    assert_eq!(
        sim.sup.signal(&ids(&["b"]), Signal::Hup),
        Err(CommandError::NotRunning(ids(&["b"])))
    );
}

#[test]
fn an_instances_id_names_every_copy() {
    let mut sim = Sim::new();
    sim.config(decl(&[("w", spec("w", Some(3))), ("w#x", spec("x", None))]));
    assert_eq!(
        sim.sup.resolve(&ids(&["w", "w#1"])),
        Ok(ids(&["w#0", "w#1", "w#2"]))
    );
    assert_eq!(sim.sup.resolve(&ids(&["w#x"])), Ok(ids(&["w#x"])));
    sim.sup.pause(sim.now, &ids(&["w#1"])).expect("paused");
    sim.run_actions();
    assert_eq!(sim.signals, [(JobId::from("w#1"), Signal::Term)]);
    let status = sim
        .sup
        .status_jobs_of(sim.now, 0.0, &ids(&["w#x", "w"]))
        .expect("known");
    let listed: Vec<JobStatus> =
        serde_json::from_value(serde_json::to_value(&status).expect("serializes")).expect("reads");
    let listed: Vec<&str> = listed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed, ["w#0", "w#1", "w#2", "w#x"]);
    assert_eq!(status.len(), 4);
}

mod props {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::instances::copy_id;

    /// One event of the property test.
    #[derive(Debug, Clone)]
    enum Ev {
        /// A configuration: which of `a`, `b`, `c` are declared, their
        /// declaration's version, and `c`'s instances.
        Config(u8, u8, Option<u32>),
        Pause(Vec<&'static str>),
        Resume(Vec<&'static str>),
        Restart(Vec<&'static str>),
        RestartAll,
        Signal(&'static str, bool),
        /// The process of the job with this index among the live ones
        /// exits.
        Exit(usize),
        Advance(u64),
    }

    const NAMES: [&str; 6] = ["a", "b", "c", "c#0", "c#1", "x"];

    fn names() -> impl Strategy<Value = Vec<&'static str>> {
        prop::collection::vec(prop::sample::select(NAMES.to_vec()), 1..3)
    }

    fn event() -> impl Strategy<Value = Ev> {
        prop_oneof![
            2 => (0u8..8, 0u8..2, prop::option::of(1u32..4)).prop_map(|(m, v, n)| Ev::Config(m, v, n)),
            2 => names().prop_map(Ev::Pause),
            2 => names().prop_map(Ev::Resume),
            1 => names().prop_map(Ev::Restart),
            1 => Just(Ev::RestartAll),
            1 => (prop::sample::select(NAMES.to_vec()), any::<bool>()).prop_map(|(n, k)| Ev::Signal(n, k)),
            3 => (0usize..4).prop_map(Ev::Exit),
            2 => (0u64..4000).prop_map(Ev::Advance),
        ]
    }

    impl Sim {
        /// Performs the queued actions, checking that none spawns a job
        /// the operator paused.
        fn run_checked(&mut self, paused: &BTreeSet<JobId>) {
            let before = self.spawns.len();
            self.run_actions();
            for job in &self.spawns[before..] {
                assert!(!paused.contains(job), "paused job {job} spawned");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the counts, a change of `instances` stops exactly the
        /// copies past the new count and starts exactly the new ones; the
        /// others keep their process.
        #[test]
        fn a_count_change_touches_only_the_copies_added_or_removed(
            counts in prop::collection::vec(1u32..6, 1..12),
        ) {
            let mut sim = Sim::new();
            let mut before: Vec<Option<u32>> = Vec::new();
            for n in counts {
                let signals = sim.signals.len();
                let spawns = sim.spawns.len();
                sim.config(decl(&[("w", spec("w", Some(n)))]));
                let old = before.len() as u32;
                let stopped: Vec<JobId> =
                    sim.signals[signals..].iter().map(|(id, _)| id.clone()).collect();
                let expected_stops: Vec<JobId> =
                    (n..old).map(|k| copy_id(&JobId::from("w"), k)).collect();
                prop_assert_eq!(stopped, expected_stops);
                let started = sim.spawns[spawns..].to_vec();
                let expected_starts: Vec<JobId> =
                    (old.min(n)..n).map(|k| copy_id(&JobId::from("w"), k)).collect();
                prop_assert_eq!(started, expected_starts);
                // The copies kept run the process they ran.
                for (k, pid) in before.iter().enumerate().take(n.min(old) as usize) {
                    prop_assert_eq!(sim.pid(&format!("w#{k}")), *pid);
                }
                // The stopped copies end; the farm is the N copies.
                for k in n..old {
                    sim.exit(&format!("w#{k}"));
                }
                let ids: Vec<String> = (0..n).map(|k| format!("w#{k}")).collect();
                prop_assert_eq!(sim.ids(), ids);
                before = (0..n).map(|k| sim.pid(&format!("w#{k}"))).collect();
            }
        }

        #[test]
        fn a_paused_job_never_runs(events in prop::collection::vec(event(), 1..60)) {
            let mut sim = Sim::new();
            // The jobs the operator paused, and not resumed, as the test
            // sees it.
            let mut paused: BTreeSet<JobId> = BTreeSet::new();
            for ev in events {
                let now = sim.now;
                match ev {
                    Ev::Config(mask, version, instances) => {
                        let mut jobs = Vec::new();
                        for (bit, name) in ["a", "b", "c"].into_iter().enumerate() {
                            if mask & (1 << bit) != 0 {
                                let n = if name == "c" { instances } else { None };
                                jobs.push((name, spec(&format!("{name}{version}"), n)));
                            }
                        }
                        sim.sup.handle_config(now, decl(&jobs));
                    }
                    Ev::Pause(names) => {
                        if let Ok(newly) = sim.sup.pause(now, &ids(&names)) {
                            paused.extend(newly);
                        }
                    }
                    Ev::Resume(names) => {
                        if let Ok(resumed) = sim.sup.resume(now, &ids(&names)) {
                            for id in &resumed {
                                paused.remove(id);
                            }
                        }
                    }
                    Ev::Restart(names) => {
                        let _ = sim.sup.restart_jobs(now, &ids(&names));
                    }
                    Ev::RestartAll => {
                        let _ = sim.sup.restart_all(now);
                    }
                    Ev::Signal(name, kill) => {
                        let signal = if kill { Signal::Kill } else { Signal::Usr1 };
                        let _ = sim.sup.signal(&ids(&[name]), signal);
                    }
                    Ev::Exit(i) => {
                        let mut runs: Vec<RunId> = sim.live.keys().copied().collect();
                        runs.sort();
                        if let Some(run) = runs.get(i).copied() {
                            sim.live.remove(&run);
                            sim.sup.handle_exit(now, run, ExitStatus::code(1));
                        }
                    }
                    Ev::Advance(ms) => {
                        let target = sim.now + Duration::from_millis(ms);
                        while let Some(at) = sim.sup.poll_timeout().filter(|at| *at <= target) {
                            sim.now = sim.now.max(at);
                            sim.sup.handle_timeout(sim.now);
                            sim.run_checked(&paused);
                        }
                        sim.now = target;
                    }
                }
                sim.run_checked(&paused);
                // A job removed from the source is forgotten, pause and all.
                let jobs = sim.jobs();
                paused.retain(|id| jobs.iter().any(|j| j.id == id.as_str() && j.declared));
                for job in &jobs {
                    let id = JobId::from(job.id.as_str());
                    prop_assert_eq!(sim.sup.is_paused(&id), paused.contains(&id), "{}", id);
                    if paused.contains(&id) {
                        prop_assert!(
                            matches!(job.state, JobState::Paused | JobState::Stopping),
                            "paused job {} is {:?}", id, job.state
                        );
                    } else {
                        prop_assert!(job.state != JobState::Paused, "{} paused unasked", id);
                    }
                }
            }
            // Resumed, every paused job runs again.
            let all: Vec<JobId> = paused.iter().cloned().collect();
            if !all.is_empty() {
                sim.sup.resume(sim.now, &all).expect("known jobs");
                sim.run_actions();
                // A SIGKILL ends a stopping process at once in this
                // simulation; the others end when they are told to.
                sim.advance(60 * SEC);
                for id in &all {
                    let state = sim.job(id.as_str()).state;
                    prop_assert!(state != JobState::Paused, "{} still paused", id);
                }
            }
        }
    }
}
