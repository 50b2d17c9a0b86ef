//! Tests of readiness, the watchdog and health checks in the state machine:
//! scenarios in virtual time with a fake process table, and a property test
//! of their invariants over random events (notifications, probe results,
//! exits, configurations, restarts).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::decl::Declaration;
use crate::health::{HealthCheck, Probe};
use crate::job::{JobId, JobSpec, Program, Signal};
use crate::notify::parse;
use crate::status::{ExitReason, ExitStatus, Health, JobState, JobStatus};

const SEC: Duration = Duration::from_secs(1);

fn spec(notify: bool, watchdog: Option<u64>, check: Option<(u64, u32)>) -> JobSpec {
    let mut s = JobSpec::new("j", Program::Shell("w".into()));
    s.notify = notify;
    s.watchdog = watchdog.map(Duration::from_secs);
    s.short_run = Duration::ZERO;
    s.shutdown_timeout = 2 * SEC;
    s.health_check = check.map(|(interval, retries)| HealthCheck {
        probe: Probe::Tcp {
            host: "127.0.0.1".into(),
            port: 1,
        },
        interval: Duration::from_secs(interval),
        timeout: SEC,
        retries,
        start: Duration::ZERO,
    });
    s
}

fn decl(jobs: &[(&str, &JobSpec)]) -> Declaration {
    Declaration {
        jobs: jobs
            .iter()
            .map(|(id, s)| (JobId::from(*id), Arc::new((*s).clone())))
            .collect(),
        ..Declaration::default()
    }
}

/// The supervisor with a fake process table, a virtual clock, and a record
/// of what it asked for.
struct Sim {
    sup: Supervisor,
    now: Instant,
    /// Live processes: run → (job, whether it was stopped by a signal).
    live: HashMap<RunId, JobId>,
    spawns: Vec<JobId>,
    stops: Vec<(JobId, Signal)>,
    /// Probes asked for and not yet answered.
    probes: Vec<RunId>,
}

impl Sim {
    fn new() -> Self {
        Self {
            sup: Supervisor::new(Config::default()),
            now: Instant::now(),
            live: HashMap::new(),
            spawns: Vec::new(),
            stops: Vec::new(),
            probes: Vec::new(),
        }
    }

    fn run_actions(&mut self) {
        while let Some(action) = self.sup.poll_action() {
            match action {
                Action::Spawn { run, job, .. } => {
                    self.live.insert(run, job.clone());
                    self.spawns.push(job);
                    self.sup.handle_spawned(self.now, run, 100 + run.0 as u32);
                }
                Action::Signal { run, signal, .. } => {
                    if let Some(job) = self.live.get(&run).cloned() {
                        self.stops.push((job, signal));
                        // Every worker here obeys its stop signal at once.
                        self.live.remove(&run);
                        self.sup.handle_exit(self.now, run, ExitStatus::signal(15));
                    }
                }
                Action::Probe { run, job, spec } => {
                    // Invariant: a probe only ever targets a running process.
                    assert!(self.live.contains_key(&run), "probe of an ended process");
                    assert!(spec.health_check.is_some());
                    let state = self.job(job.as_str()).state;
                    assert!(
                        matches!(state, JobState::Running | JobState::Starting),
                        "probe of a job that is {state:?}"
                    );
                    self.probes.push(run);
                }
            }
        }
    }

    fn config(&mut self, d: Declaration) {
        self.sup.handle_config(self.now, d);
        self.run_actions();
    }

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

    fn run_of(&self, id: &str) -> RunId {
        *self
            .live
            .iter()
            .find(|(_, j)| j.as_str() == id)
            .expect("a live process")
            .0
    }

    fn notify(&mut self, id: &str, text: &[u8]) -> Notified {
        let run = self.run_of(id);
        let out = self.sup.handle_notify(self.now, run, &parse(text));
        self.run_actions();
        out
    }

    fn answer_probes(&mut self, healthy: bool) -> Vec<ProbeOutcome> {
        let probes = std::mem::take(&mut self.probes);
        let out = probes
            .into_iter()
            .map(|run| self.sup.handle_probe(self.now, run, healthy))
            .collect();
        self.run_actions();
        out
    }

    fn job(&self, id: &str) -> JobStatus {
        let (_, jobs) = self.sup.status(self.now, 0.0);
        jobs.into_iter().find(|j| j.id == id).expect("the job")
    }
}

#[test]
fn a_notify_job_is_starting_until_ready_and_shows_its_status_text() {
    let mut sim = Sim::new();
    sim.config(decl(&[
        ("a", &spec(true, None, None)),
        ("b", &spec(false, None, None)),
    ]));
    assert_eq!(sim.job("a").state, JobState::Starting);
    assert!(!sim.sup.is_up(&"a".into()));
    assert_eq!(sim.job("b").state, JobState::Running);
    assert!(sim.sup.is_up(&"b".into()), "a plain job is up once spawned");
    assert_eq!(sim.notify("a", b"STATUS=loading"), Notified::Noted);
    assert_eq!(sim.job("a").status_text.as_deref(), Some("loading"));
    assert_eq!(sim.job("a").state, JobState::Starting);
    assert_eq!(
        sim.notify("a", b"READY=1\nSTATUS=serving"),
        Notified::Ready("a".into())
    );
    let a = sim.job("a");
    assert_eq!(a.state, JobState::Running);
    assert_eq!(a.status_text.as_deref(), Some("serving"));
    assert!(sim.sup.is_up(&"a".into()));
    assert_eq!(sim.notify("a", b"READY=1"), Notified::Noted, "ready once");
}

#[test]
fn a_new_run_starts_again_without_status_text_nor_readiness() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", &spec(true, None, None))]));
    sim.notify("a", b"READY=1\nSTATUS=up");
    let run = sim.run_of("a");
    sim.live.remove(&run);
    sim.sup.handle_exit(sim.now, run, ExitStatus::code(1));
    sim.run_actions();
    let a = sim.job("a");
    assert_eq!(a.state, JobState::Starting);
    assert_eq!(a.status_text, None);
    // The old run's late notification is not the new one's.
    assert_eq!(
        sim.sup.handle_notify(sim.now, run, &parse(b"READY=1")),
        Notified::Noted
    );
    assert_eq!(sim.job("a").state, JobState::Starting);
}

#[test]
fn a_silent_worker_is_stopped_as_hung_and_restarted() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", &spec(false, Some(5), None))]));
    sim.advance(4 * SEC);
    assert!(sim.stops.is_empty());
    sim.advance(SEC);
    assert_eq!(sim.stops, [("a".into(), Signal::Term)], "hung at 5 s");
    assert_eq!(sim.spawns.len(), 2, "and restarted");
}

#[test]
fn a_hung_or_unhealthy_worker_is_a_crash_with_its_reason() {
    let mut sim = Sim::new();
    sim.config(decl(&[
        ("w", &spec(false, Some(5), None)),
        ("h", &spec(false, None, Some((1, 1)))),
    ]));
    sim.advance(5 * SEC);
    sim.answer_probes(false);
    for (id, reason) in [("w", ExitReason::Watchdog), ("h", ExitReason::Unhealthy)] {
        let j = sim.job(id);
        let exit = j.last_exit.expect("an exit").status;
        assert_eq!(exit.reason, reason, "{id}");
        assert_eq!(exit.signal, Some(15), "{id}: stopped with SIGTERM");
        assert_eq!(exit.to_string(), format!("{reason} (killed by SIGTERM)"));
        assert_eq!((j.crashes, j.restarts), (1, 1), "{id}");
    }
}

#[test]
fn a_worker_hung_again_and_again_backs_off() {
    let mut sim = Sim::new();
    let mut s = spec(false, Some(5), None);
    s.short_run = 10 * SEC;
    sim.config(decl(&[("a", &s)]));
    sim.notify("a", b"WATCHDOG=trigger");
    assert_eq!(sim.job("a").state, JobState::Backoff, "a short run");
    assert_eq!(sim.spawns.len(), 1);
    sim.advance(SEC);
    assert_eq!(sim.spawns.len(), 2, "after its backoff");
    sim.notify("a", b"WATCHDOG=trigger");
    sim.advance(SEC);
    assert_eq!(sim.spawns.len(), 2, "the backoff doubled");
    sim.advance(SEC);
    assert_eq!(sim.spawns.len(), 3);
    assert_eq!(sim.job("a").crashes, 2);
}

#[test]
fn keep_alives_keep_a_worker_running() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", &spec(false, Some(5), None))]));
    for _ in 0..20 {
        sim.advance(4 * SEC);
        sim.notify("a", b"WATCHDOG=1");
    }
    assert!(sim.stops.is_empty());
    assert_eq!(sim.spawns.len(), 1);
}

#[test]
fn a_notify_jobs_watchdog_counts_from_ready() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", &spec(true, Some(5), None))]));
    sim.advance(60 * SEC);
    assert!(sim.stops.is_empty(), "no watchdog while starting");
    sim.notify("a", b"READY=1");
    sim.advance(4 * SEC);
    assert!(sim.stops.is_empty());
    sim.advance(SEC);
    assert_eq!(sim.stops.len(), 1);
}

#[test]
fn watchdog_trigger_restarts_at_once() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", &spec(false, Some(5), None))]));
    assert_eq!(
        sim.notify("a", b"WATCHDOG=trigger"),
        Notified::Hung("a".into())
    );
    assert_eq!(sim.stops.len(), 1);
    assert_eq!(sim.spawns.len(), 2);
}

#[test]
fn a_failing_health_check_restarts_the_job_after_retries() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", &spec(false, None, Some((10, 3))))]));
    assert_eq!(sim.job("a").health, Some(Health::Starting));
    sim.advance(9 * SEC);
    assert!(sim.probes.is_empty(), "the first probe after an interval");
    sim.advance(SEC);
    assert_eq!(sim.probes.len(), 1);
    sim.advance(60 * SEC);
    assert_eq!(sim.probes.len(), 1, "one probe at a time");
    sim.answer_probes(true);
    assert_eq!(sim.job("a").health, Some(Health::Healthy));
    for _ in 0..2 {
        sim.advance(10 * SEC);
        assert_eq!(sim.answer_probes(false), [ProbeOutcome::Noted]);
    }
    assert!(sim.stops.is_empty());
    sim.advance(10 * SEC);
    assert_eq!(
        sim.answer_probes(false),
        [ProbeOutcome::Unhealthy("a".into())]
    );
    assert_eq!(sim.stops.len(), 1);
    assert_eq!(sim.spawns.len(), 2);
    assert_eq!(sim.job("a").health, Some(Health::Starting), "a new run");
}

#[test]
fn a_late_probe_result_is_ignored() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", &spec(false, None, Some((1, 1))))]));
    sim.advance(SEC);
    let run = sim.probes[0];
    sim.sup.restart(sim.now, &"a".into()).expect("restarts");
    sim.run_actions();
    assert_eq!(
        sim.sup.handle_probe(sim.now, run, false),
        ProbeOutcome::Ignored
    );
    assert_eq!(sim.stops.len(), 1, "only the restart's stop");
}

#[test]
fn stopping_1_disarms_the_watchdog_and_the_probes() {
    let mut sim = Sim::new();
    sim.config(decl(&[("a", &spec(false, Some(1), Some((1, 1))))]));
    assert_eq!(
        sim.notify("a", b"STOPPING=1"),
        Notified::Stopping("a".into())
    );
    sim.advance(60 * SEC);
    assert!(sim.stops.is_empty() && sim.probes.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Notify(usize, &'static str),
    Probe(bool),
    Exit(usize),
    Restart(usize),
    Update(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..4000).prop_map(Op::Advance),
        4 => (any::<usize>(), prop::sample::select(vec![
            "READY=1", "WATCHDOG=1", "WATCHDOG=trigger", "STOPPING=1", "STATUS=x", "junk",
        ])).prop_map(|(n, t)| Op::Notify(n, t)),
        2 => any::<bool>().prop_map(Op::Probe),
        1 => any::<usize>().prop_map(Op::Exit),
        1 => any::<usize>().prop_map(Op::Restart),
        1 => (any::<usize>(), 0u8..8).prop_map(|(n, v)| Op::Update(n, v)),
    ]
}

/// The declaration variant `v`: notify or not, a watchdog or not, a health
/// check or not.
fn variant(v: u8) -> JobSpec {
    let mut s = spec(
        v & 1 != 0,
        (v & 2 != 0).then_some(2),
        (v & 4 != 0).then_some((1, 2)),
    );
    s.short_run = Duration::from_millis(1500);
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever happens: a probe targets a running process only (checked
    /// in `run_actions`), and a worker is stopped as hung only when it had
    /// a watchdog, was ready and sent no keep-alive for a whole period.
    #[test]
    fn liveness_deadlines_fire_only_for_running_jobs(ops in proptest::collection::vec(op(), 1..80)) {
        let ids = ["0", "1", "2"];
        let mut sim = Sim::new();
        let mut specs: Vec<JobSpec> = (0..3u8).map(|i| variant(i * 3 % 8)).collect();
        let d: Vec<(&str, &JobSpec)> = ids.iter().copied().zip(specs.iter()).collect();
        sim.config(decl(&d));
        for op in ops {
            let before: Vec<(JobId, Signal)> = sim.stops.clone();
            let mut asked_stop = false;
            match op {
                Op::Advance(ms) => sim.advance(Duration::from_millis(ms)),
                Op::Notify(n, text) => {
                    let runs: Vec<RunId> = {
                        let mut r: Vec<RunId> = sim.live.keys().copied().collect();
                        r.sort();
                        r
                    };
                    if !runs.is_empty() {
                        let run = runs[n % runs.len()];
                        let out = sim.sup.handle_notify(sim.now, run, &parse(text.as_bytes()));
                        if text == "WATCHDOG=trigger" {
                            asked_stop = true;
                        } else {
                            prop_assert!(!matches!(out, Notified::Hung(_)));
                        }
                        sim.run_actions();
                    }
                }
                Op::Probe(healthy) => {
                    asked_stop = true;
                    sim.answer_probes(healthy);
                }
                Op::Exit(n) => {
                    let mut runs: Vec<RunId> = sim.live.keys().copied().collect();
                    runs.sort();
                    if !runs.is_empty() {
                        let run = runs[n % runs.len()];
                        sim.live.remove(&run);
                        sim.sup.handle_exit(sim.now, run, ExitStatus::code(1));
                        sim.run_actions();
                    }
                }
                Op::Restart(n) => {
                    asked_stop = true;
                    let _ = sim.sup.restart(sim.now, &ids[n % 3].into());
                    sim.run_actions();
                }
                Op::Update(n, v) => {
                    asked_stop = true;
                    specs[n % 3] = variant(v);
                    let d: Vec<(&str, &JobSpec)> = ids.iter().copied().zip(specs.iter()).collect();
                    sim.config(decl(&d));
                }
            }
            // Probes the sim holds for processes that ended are dropped,
            // as the shell's would be answered and ignored.
            let live = sim.live.clone();
            sim.probes.retain(|run| live.contains_key(run));
            if !asked_stop {
                // Only a watchdog can have stopped a job here: one with a
                // watchdog in its declaration.
                for (job, _) in &sim.stops[before.len()..] {
                    let i = ids.iter().position(|id| *id == job.as_str()).expect("known");
                    prop_assert!(specs[i].watchdog.is_some(), "job {job} stopped without a watchdog");
                }
            }
            for id in ids {
                let j = sim.job(id);
                prop_assert!(j.crashes <= j.restarts + 1, "job {id}: more crashes than runs");
                if j.state == JobState::Starting {
                    let i = ids.iter().position(|x| *x == id).expect("known");
                    prop_assert!(specs[i].notify, "only notify jobs are starting");
                }
            }
        }
    }
}

#[test]
fn an_operator_restart_or_an_update_during_a_failures_stop_starts_at_once() {
    // 0: nothing comes between; 1: an operator's restart; 2: an update;
    // 3: a pause, which holds it.
    for case in 0..4 {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(Config::default());
        let mut s = spec(false, Some(5), None);
        s.short_run = 60 * SEC;
        sup.handle_config(t0, decl(&[("a", &s)]));
        let Some(Action::Spawn { run, .. }) = sup.poll_action() else {
            panic!("a spawn");
        };
        sup.handle_spawned(t0, run, 7);
        sup.handle_timeout(t0 + 5 * SEC);
        assert!(matches!(sup.poll_action(), Some(Action::Signal { .. })));
        match case {
            1 => sup.restart(t0 + 6 * SEC, &"a".into()).expect("restart"),
            2 => {
                s.name = "j2".into();
                sup.handle_config(t0 + 6 * SEC, decl(&[("a", &s)]));
            }
            3 => {
                sup.pause(t0 + 6 * SEC, &["a".into()]).expect("pause");
            }
            _ => {}
        }
        let after = sup.handle_exit(t0 + 6 * SEC, run, ExitStatus::signal(15));
        let (_, jobs) = sup.status(t0 + 6 * SEC, 0.0);
        assert_eq!(jobs[0].crashes, 1, "case {case}");
        if case == 0 {
            assert_eq!(after, AfterExit::Backoff(ExitReason::Watchdog, SEC));
            assert_eq!(sup.poll_action(), None, "a short run backs off");
        } else if case == 3 {
            assert!(matches!(after, AfterExit::Stopped(_, ExitReason::Watchdog)));
            assert_eq!(jobs[0].state, JobState::Paused);
            assert_eq!(sup.poll_action(), None, "held");
            assert_eq!(sup.poll_timeout(), None, "no backoff to wait out");
        } else {
            assert_eq!(
                after,
                AfterExit::Stopped(
                    if case == 1 {
                        Reason::Operator
                    } else {
                        Reason::Updated
                    },
                    ExitReason::Watchdog
                ),
                "case {case}"
            );
            let Some(Action::Spawn { spec, .. }) = sup.poll_action() else {
                panic!("case {case}: started at once");
            };
            assert_eq!(spec.name, if case == 2 { "j2" } else { "j" });
        }
    }
}
