//! The supervision state machine.
//!
//! # Theory of operation
//!
//! [`Supervisor`] holds one `Job` per job id it supervises. The shell feeds
//! it events, each with the current monotonic time:
//!
//! * [`Supervisor::handle_config`]: a new configuration was loaded; the farm is
//!   reconciled against it (ADDED → start, REMOVED → stop then forget,
//!   UPDATED → stop then start with the new declaration, UNCHANGED → nothing);
//! * [`Supervisor::handle_spawned`] and [`Supervisor::handle_exit`]: a process
//!   started, or ended (or could not be started at all);
//! * [`Supervisor::handle_timeout`]: the deadline returned by
//!   [`Supervisor::poll_timeout`] has passed;
//! * [`Supervisor::handle_interrupt`]: SIGINT; the first begins a graceful
//!   shutdown, a second one kills at once;
//! * [`Supervisor::restart`], [`Supervisor::lift_guard_until`],
//!   [`Supervisor::shutdown`], [`Supervisor::force_kill`]: control requests
//!   and the other signals.
//!
//! In return it queues [`Action`]s (spawn a process, signal a process group),
//! which the shell drains with [`Supervisor::poll_action`], and exposes the
//! next deadline. Processes are named by [`RunId`]s that the core allocates,
//! never by pid, so the core cannot be confused by pid reuse.
//!
//! A job's lifecycle:
//!
//! ```text
//!            spawn                 exit after a long run: spawn again at once
//!   ADDED ─────────► Running ───────────────────────────────────► Running
//!                     │   │  exit after a short run
//!                     │   └──────────────► Backoff ──(delay)──► Running
//!                     │ UPDATED / restart / REMOVED / shutdown
//!                     ▼
//!                  Stopping ──(shutdownTimeout)──► SIGKILL, still Stopping
//!                     │ exit
//!                     └──► Running (new declaration), or forgotten
//! ```
//!
//! An operator may pause a job ([`Supervisor::pause`]): it is stopped like
//! a restarted one, but when its process has ended it is held in `Paused`
//! (no process, no deadline) until [`Supervisor::resume`]. Every
//! configuration still updates it (the new declaration waits) or removes
//! it (forgotten, pause and all).
//!
//! A cluster node gives the core its share through
//! [`Supervisor::handle_share`]: the jobs assigned to it, those of them it
//! does not own yet (`waiting`: another node's worker may still run
//! them), and those that left the share for another node (stopped with
//! [`Reason::Moved`]). A waiting job is held in `Waiting` (no process, no
//! deadline) and starts ([`Reason::Owned`]) once a later share no longer
//! lists it; a running job that becomes waiting (the node lost its
//! ownership) is stopped ([`Reason::Waiting`]). `start` checks the gate,
//! as it checks a pause, so no path can start a waiting job.
//!
//! Architecture invariant: a job has at most one live process. A new one is
//! spawned only from `Backoff` (no process) or when the exit of the old one
//! has been handled.
//!
//! # The removal guard
//!
//! With [`Config::max_removal_ratio`] set, a configuration that would remove
//! more than that share of the declared jobs in one step is *held*: none of
//! it is applied (no removal, no addition, no update), exactly as if the
//! source had failed, and the status says why ([`SourceStatus::held`]). A
//! later configuration within the ratio is applied as usual and clears the
//! hold; [`Supervisor::lift_guard_until`] (`lrpmctl reload --force`) lets
//! the next configuration through whatever it removes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::{Backoff, DEFAULT_MAX_DELAY};
use crate::decl::Declaration;
use crate::job::{JobId, JobSpec, Signal};
use crate::liveness::{Due, Liveness, Probed};
use crate::notify::Notification;
use crate::status::{
    ExitInfo, ExitReason, ExitStatus, Health, HeldConfig, JobState, JobStatus, SourceStatus,
};

/// Settings of the supervisor that are not per job.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cap of the restart backoff (`--max-backoff`).
    pub max_backoff: Duration,
    /// The configuration source, for status.
    pub source_uri: String,
    /// The removal guard (`--max-removal-ratio`): a configuration that would
    /// remove more than this share of the declared jobs is held back rather
    /// than applied. `None` (the default, php-lrpm's behaviour) applies every
    /// configuration.
    pub max_removal_ratio: Option<f64>,
    /// `--max-restarting K`: at most this many jobs stop or start at once
    /// for a configuration change or `restart --all`; the others wait
    /// their turn (see [`Supervisor`]'s waves). `None`: no limit.
    pub max_restarting: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_restarting: None,
            max_backoff: DEFAULT_MAX_DELAY,
            source_uri: String::new(),
            max_removal_ratio: None,
        }
    }
}

/// Names one process that the core asked the shell to spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub u64);

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a process for `job` with `spec`, then report it with
    /// [`Supervisor::handle_spawned`], or its failure with
    /// [`Supervisor::handle_exit`] and [`ExitStatus::spawn_failed`].
    Spawn {
        /// The name of the new process.
        run: RunId,
        /// Its job.
        job: JobId,
        /// The declaration to run.
        spec: Arc<JobSpec>,
        /// Why it starts, for the log.
        reason: Reason,
    },
    /// Send `signal` to the process group of `run`, if it is still there.
    Signal {
        /// The process.
        run: RunId,
        /// The signal.
        signal: Signal,
        /// Why the process is stopped, for the log.
        reason: Reason,
    },
    /// Run the health check of `spec` against `run` (without waiting for
    /// it), and report its result with [`Supervisor::handle_probe`]: the
    /// shell gives up on it (killing a probe command) after the check's
    /// timeout and reports a failure.
    Probe {
        /// The process probed.
        run: RunId,
        /// Its job.
        job: JobId,
        /// Its declaration, which holds the check.
        spec: Arc<JobSpec>,
    },
}

/// Why a job's process starts or stops: every start and stop line of the
/// log names one ([`Action::Spawn`], [`Action::Signal`],
/// [`AfterExit::Stopped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The job is new in the configuration (or declared again after its
    /// removal).
    Added,
    /// Its declaration changed: the old process stops, the new one starts.
    Updated,
    /// It left the configuration.
    Removed,
    /// Its process ended without being asked to (or could not start), and
    /// it is started again.
    Crashed,
    /// Its watchdog expired, or it asked to be taken for hung
    /// (`WATCHDOG=trigger`): stopped and started again.
    Hung,
    /// Its health check failed: stopped and started again.
    Unhealthy,
    /// An operator restarted it (`lrpmctl restart`).
    Operator,
    /// An operator paused it (`lrpmctl pause`).
    Paused,
    /// An operator resumed it (`lrpmctl resume`).
    Resumed,
    /// An operator sent its process a signal (`lrpmctl signal`): not a
    /// stop, whatever the signal does.
    Signalled,
    /// lrpm is shutting down.
    Shutdown,
    /// Its cluster assigned it to another node: stopped here (and, once
    /// its worker is gone, given up).
    Moved,
    /// This node no longer owns it in its cluster (its lease was lost):
    /// stopped and held until it owns it again.
    Waiting,
    /// This node now owns it in its cluster: the wait is over.
    Owned,
}

impl Reason {
    /// The reason as one word, for the log's `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Added => "added",
            Reason::Updated => "updated",
            Reason::Removed => "removed",
            Reason::Crashed => "crashed",
            Reason::Hung => "hung",
            Reason::Unhealthy => "unhealthy",
            Reason::Operator => "operator",
            Reason::Paused => "paused",
            Reason::Resumed => "resumed",
            Reason::Signalled => "signalled",
            Reason::Shutdown => "shutdown",
            Reason::Moved => "moved",
            Reason::Waiting => "waiting",
            Reason::Owned => "owned",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a notification did; for the shell's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    /// Nothing lrpm reports (a keep-alive, a status text), or a sender that
    /// is no running process of a job.
    Noted,
    /// `READY=1`: the job is now up.
    Ready(JobId),
    /// `WATCHDOG=trigger`: the job asked to be taken for hung, and is
    /// being restarted.
    Hung(JobId),
    /// `STOPPING=1`: the job says it is going away.
    Stopping(JobId),
}

/// What a probe's result did; for the shell's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Recorded; the next probe is scheduled.
    Noted,
    /// The check failed `retries` times in a row: the job is being
    /// restarted.
    Unhealthy(JobId),
    /// Not a probe the core waited for (the process ended meanwhile).
    Ignored,
}

/// What the core made of a process's end, with the reason its exit shows
/// (`last_exit.reason`); for the shell's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// It was asked to stop, for this reason (removed, updated,
    /// restarted, shutdown…); its exit shows [`ExitReason::Stopped`], or
    /// the failure it was stopped for (a watchdog, a health check) when
    /// an update, an operator or a pause came before it ended.
    Stopped(Reason, ExitReason),
    /// It crashed (or was stopped as failed) after a long run and was
    /// restarted at once.
    Restarted(ExitReason),
    /// It crashed (or was stopped as failed) after a short run, or never
    /// started; it starts again after this delay.
    Backoff(ExitReason, Duration),
    /// The process was not one the core knows of (already handled).
    Unknown,
}

/// What [`Supervisor::handle_interrupt`] did; for the shell's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// A graceful shutdown began: every process was asked to stop, and
    /// gets its stop timeout before SIGKILL.
    Shutdown {
        /// How many jobs were supervised when it began.
        jobs: usize,
    },
    /// A shutdown was already under way: every process that had not had
    /// SIGKILL yet gets it now.
    ForceKill,
}

/// What [`Supervisor::handle_config`] did with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOutcome {
    /// The farm is being reconciled with it.
    Applied,
    /// The removal guard held it back; nothing of it was applied. The
    /// message says why and how to apply it, for the log.
    Held(String),
    /// lrpm is shutting down; configurations are ignored.
    Ignored,
}

/// Why an operator's command (restart, pause, resume, signal, status of
/// some jobs) was refused; nothing of it was done then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No job has this id (or it is being removed).
    #[error("no such job: {0}")]
    UnknownJob(JobId),
    /// Several ids name no job.
    #[error("no such jobs: {}", ids(.0))]
    UnknownJobs(Vec<JobId>),
    /// lrpm is shutting down.
    #[error("lrpm is shutting down")]
    ShuttingDown,
    /// The jobs are paused: held stopped until they are resumed.
    #[error("paused, so not restarted: {}; resume first (lrpmctl resume)", ids(.0))]
    Paused(Vec<JobId>),
    /// None of the jobs has a process to signal.
    #[error("no process to signal: {} (not running)", ids(.0))]
    NotRunning(Vec<JobId>),
    /// The command names no job.
    #[error("no job id given")]
    NoIds,
}

/// A list of job ids, for messages: `a, b, c`.
fn ids(ids: &[JobId]) -> String {
    ids.iter().map(JobId::as_str).collect::<Vec<_>>().join(", ")
}

/// What [`Supervisor::signal`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signalled {
    /// The jobs whose process group gets the signal.
    pub sent: Vec<JobId>,
    /// The jobs named that have no process (backoff, paused).
    pub skipped: Vec<JobId>,
}

/// A process of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    run: RunId,
    pid: Option<u32>,
    since: Instant,
    /// Its readiness, watchdog and health; its deadlines count while it
    /// runs only.
    live: Liveness,
}

/// What happens when a stopping job's process has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Start it again at once (with the pending declaration, if there is
    /// one), its backoff reset.
    Start,
    /// Forget the job (removed from the source, or shutdown).
    Forget,
    /// It was stopped as failed (watchdog, health check): start it again as
    /// after a crash, at once after a long run and after its backoff after
    /// a short one; at once if a new declaration came meanwhile.
    Recover,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Running(Proc),
    Stopping {
        proc: Proc,
        /// When SIGKILL follows; `None` once it has been sent.
        kill_at: Option<Instant>,
        then: Then,
        /// What its exit will show: [`ExitReason::Stopped`], or the
        /// failure it was stopped for (fixed when the stop began).
        why: ExitReason,
    },
    Backoff {
        until: Instant,
    },
    /// Held stopped by an operator (`lrpmctl pause`): no process, no
    /// deadline, whatever the source says, until resumed.
    Paused,
    /// Assigned to this cluster node but not owned by it yet: no process,
    /// no deadline, until a share no longer lists it as waiting.
    Waiting,
}

impl State {
    fn deadline(&self) -> Option<Instant> {
        match self {
            State::Running(proc) => proc.live.deadline(),
            State::Stopping { kill_at, .. } => *kill_at,
            State::Backoff { until } => Some(*until),
            State::Paused | State::Waiting => None,
        }
    }

    fn proc(&self) -> Option<&Proc> {
        match self {
            State::Running(proc) | State::Stopping { proc, .. } => Some(proc),
            State::Backoff { .. } | State::Paused | State::Waiting => None,
        }
    }
}

/// One supervised job.
#[derive(Debug, Clone)]
struct Job {
    /// The declaration its current (or next) process runs.
    spec: Arc<JobSpec>,
    /// A newer declaration, waiting for the current process to stop.
    pending: Option<Arc<JobSpec>>,
    /// False once the job left the configuration; it is forgotten when its
    /// process has ended.
    declared: bool,
    /// Why the source's current declaration of it is invalid, if it is.
    invalid: Option<String>,
    state: State,
    backoff: Backoff,
    restarts: u32,
    /// How many of its processes crashed (see [`ExitReason::is_crash`]).
    crashes: u32,
    /// How many of its processes the OOM killer ended.
    oom_kills: u32,
    last_exit: Option<(ExitStatus, Instant)>,
    /// The last `STATUS=` of its current process.
    status_text: Option<Box<str>>,
    /// Paused by an operator: never started until resumed (the state is
    /// `Paused` once its process, if it had one, has ended).
    paused: bool,
    /// Why its current process started, or is stopping.
    why: Reason,
    /// The last declaration ignored for its `mtime` (reported once).
    ignored: Option<Arc<JobSpec>>,
}

/// What the removal guard holds back: a summary only, since a forced reload
/// applies what the source says *then*, not this older configuration.
#[derive(Debug, Clone)]
struct Held {
    removals: usize,
    declared: usize,
    would_remove: Vec<JobId>,
    /// When the first configuration was held since the last applied one.
    since: Instant,
}

impl Held {
    fn to_status(&self, ratio: f64, since: f64) -> HeldConfig {
        HeldConfig {
            removals: self.removals,
            declared: self.declared,
            max_removal_ratio: ratio,
            would_remove: self.would_remove.iter().map(JobId::to_string).collect(),
            since,
        }
    }
}

/// The same moment on the monotonic clock and as UTC seconds, to convert
/// the core's instants to wall-clock times.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    now: Instant,
    wall_now: f64,
}

impl WallClock {
    fn wall(self, t: Instant) -> f64 {
        if t <= self.now {
            self.wall_now - self.now.duration_since(t).as_secs_f64()
        } else {
            self.wall_now + t.duration_since(self.now).as_secs_f64()
        }
    }
}

/// Every job's status, borrowed from the core: see
/// [`Supervisor::status_jobs`]. Serializes as a sequence of [`JobStatus`].
#[derive(Debug, Clone)]
pub struct JobsStatus<'a> {
    sup: &'a Supervisor,
    clock: WallClock,
    /// The jobs listed, when not every job is ([`Supervisor::status_jobs_of`]).
    only: Option<Vec<JobId>>,
}

impl JobsStatus<'_> {
    /// How many jobs it lists.
    pub fn len(&self) -> usize {
        self.only.as_ref().map_or(self.sup.jobs.len(), Vec::len)
    }

    /// Whether it lists no job.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live process of each job it lists that has one: its pid and
    /// when it started, which together name it even once the kernel has
    /// given the pid to another process (what a cache of its `/proc`
    /// figures is keyed by).
    pub fn processes(&self) -> Vec<(u32, Instant)> {
        let process = |job: &Job| {
            let proc = job.state.proc()?;
            Some((proc.pid?, proc.since))
        };
        match &self.only {
            None => self.sup.jobs.values().filter_map(process).collect(),
            Some(ids) => ids
                .iter()
                .filter_map(|id| process(self.sup.jobs.get(id)?))
                .collect(),
        }
    }
}

impl serde::Serialize for JobsStatus<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.only {
            None => serializer.collect_seq(
                self.sup
                    .jobs
                    .iter()
                    .map(|(id, job)| JobView::new(id, job, self.clock)),
            ),
            Some(ids) => serializer.collect_seq(ids.iter().filter_map(|id| {
                let job = self.sup.jobs.get(id)?;
                Some(JobView::new(id, job, self.clock))
            })),
        }
    }
}

/// One job's status, borrowed: the fields of [`JobStatus`], in its order,
/// so that both serialize alike.
#[derive(serde::Serialize)]
struct JobView<'a> {
    id: &'a str,
    name: &'a str,
    /// The program's display form, written without an intermediate string.
    command: DisplayStr<'a, crate::job::Program>,
    state: JobState,
    pid: Option<u32>,
    started_at: Option<f64>,
    restarts: u32,
    crashes: u32,
    oom_kills: u32,
    last_exit: Option<ExitView<'a>>,
    backoff_seconds: f64,
    restart_at: Option<f64>,
    mtime: Option<u64>,
    declared: bool,
    invalid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<Health>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_text: Option<&'a str>,
}

/// [`ExitInfo`], borrowed.
#[derive(serde::Serialize)]
struct ExitView<'a> {
    #[serde(flatten)]
    status: &'a ExitStatus,
    at: f64,
}

/// Serializes a value's `Display` form as a string.
struct DisplayStr<'a, T>(&'a T);

impl<T: std::fmt::Display> serde::Serialize for DisplayStr<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

impl<'a> JobView<'a> {
    fn new(id: &'a JobId, job: &'a Job, clock: WallClock) -> Self {
        let (state, restart_at) = match &job.state {
            State::Running(proc) if !proc.live.is_ready() => (JobState::Starting, None),
            State::Running(_) => (JobState::Running, None),
            State::Stopping { .. } => (JobState::Stopping, None),
            State::Backoff { until } => (JobState::Backoff, Some(clock.wall(*until))),
            State::Paused => (JobState::Paused, None),
            State::Waiting => (JobState::Waiting, None),
        };
        let proc = job.state.proc();
        JobView {
            id: id.as_str(),
            name: &job.spec.name,
            command: DisplayStr(&job.spec.program),
            state,
            pid: proc.and_then(|p| p.pid),
            started_at: proc.map(|p| clock.wall(p.since)),
            restarts: job.restarts,
            crashes: job.crashes,
            oom_kills: job.oom_kills,
            last_exit: job.last_exit.as_ref().map(|(status, at)| ExitView {
                status,
                at: clock.wall(*at),
            }),
            backoff_seconds: job.backoff.peek().as_secs_f64(),
            restart_at,
            mtime: job.spec.mtime,
            declared: job.declared,
            invalid: job.invalid.as_deref(),
            health: proc.and_then(|p| p.live.health()),
            status_text: job.status_text.as_deref(),
        }
    }
}

impl Job {
    /// Whether the job is up: its process runs and is ready (for a `notify`
    /// job, it said `READY=1`). What a wave of restarts waits for.
    fn is_up(&self) -> bool {
        matches!(
            self.state,
            State::Running(proc) if proc.pid.is_some() && proc.live.is_ready()
        )
    }
}

/// Why `decl` declares job `id` invalid: its own id's reason, or, for a
/// copy of an `instances` job, its base job's (the copies then keep running
/// on their last valid declaration, as any job does).
fn invalid<'a>(decl: &'a Declaration, id: &JobId, job: &Job) -> Option<&'a String> {
    decl.invalid.get(id).or_else(|| {
        crate::instances::base_id(id, &job.spec)
            .and_then(|base| decl.invalid.get(&JobId::from(base)))
    })
}

/// The supervision state machine. See the [module documentation](self).
#[derive(Debug)]
pub struct Supervisor {
    config: Config,
    jobs: BTreeMap<JobId, Job>,
    /// The job of every live process.
    runs: HashMap<RunId, JobId>,
    /// Every job's deadline, in time order (a job has at most one).
    timers: BTreeSet<(Instant, JobId)>,
    next_run: u64,
    source: SourceStatus,
    last_load: Option<Instant>,
    /// The configuration the removal guard holds back, if any.
    held: Option<Held>,
    /// Until when the next configuration bypasses the removal guard
    /// (`lrpmctl reload --force`).
    guard_lifted_until: Option<Instant>,
    shutting_down: bool,
    actions: VecDeque<Action>,
    /// The jobs of the restart waves (`--max-restarting`) stopping or
    /// starting now: from their stop until they are up again.
    restarting: BTreeSet<JobId>,
    /// The deliberate restarts waiting for a place in the wave, in order,
    /// with their reason.
    wave: VecDeque<(JobId, Reason)>,
    /// The time of the latest input: when a wave's next stop, which an
    /// input made possible, is sent.
    last_input: Option<Instant>,
    /// The jobs whose change was ignored for its `mtime`, not yet taken
    /// by [`Supervisor::take_ignored`].
    ignored: Vec<JobId>,
    /// The cluster's gate: the jobs (declared ids, an `instances` job's
    /// copies with it) assigned here but not owned yet, held in `Waiting`.
    waiting: BTreeSet<JobId>,
    /// The jobs the share being applied gives to another node: their
    /// removal is a move.
    moved: BTreeSet<JobId>,
}

impl Supervisor {
    /// A supervisor with no jobs.
    pub fn new(config: Config) -> Self {
        let source = SourceStatus {
            uri: config.source_uri.clone(),
            ..SourceStatus::default()
        };
        Self {
            config,
            jobs: BTreeMap::new(),
            runs: HashMap::new(),
            timers: BTreeSet::new(),
            next_run: 0,
            source,
            last_load: None,
            held: None,
            guard_lifted_until: None,
            shutting_down: false,
            actions: VecDeque::new(),
            restarting: BTreeSet::new(),
            wave: VecDeque::new(),
            last_input: None,
            ignored: Vec::new(),
            waiting: BTreeSet::new(),
            moved: BTreeSet::new(),
        }
    }

    /// The next action for the shell to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            self.advance_wave(None);
        }
        self.actions.pop_front()
    }

    /// Begins the deliberate restart of running job `id` for `why`
    /// (an update, an operator's `restart --all`): at once, or, with
    /// `--max-restarting K` and K jobs of the wave stopping or starting, when
    /// one of them is up (see [`Supervisor::poll_action`]).
    fn restart_in_wave(&mut self, now: Instant, id: &JobId, why: Reason) {
        match self.config.max_restarting {
            Some(k) if self.restarting.len() >= k || !self.wave.is_empty() => {
                if !self.wave.iter().any(|(queued, _)| queued == id) {
                    self.wave.push_back((id.clone(), why));
                }
            }
            Some(_) => {
                self.restarting.insert(id.clone());
                self.stop(now, id, Then::Start, why);
            }
            None => self.stop(now, id, Then::Start, why),
        }
    }

    /// Lets the wave go on: the jobs that are up again (or no longer
    /// restarting: crashed into backoff, paused, removed) leave it, and
    /// waiting restarts take their places. `now` is the time of the stops;
    /// the last input's time when called from [`Supervisor::poll_action`].
    fn advance_wave(&mut self, now: Option<Instant>) {
        let Some(k) = self.config.max_restarting else {
            return;
        };
        let jobs = &self.jobs;
        self.restarting.retain(|id| {
            jobs.get(id).is_some_and(|job| match job.state {
                State::Stopping { then, .. } => then == Then::Start,
                State::Running(_) => !job.is_up(),
                State::Backoff { .. } | State::Paused | State::Waiting => false,
            })
        });
        while self.restarting.len() < k {
            let Some((id, why)) = self.wave.pop_front() else {
                break;
            };
            let ready = self.jobs.get(&id).is_some_and(|job| {
                job.declared && !job.paused && matches!(job.state, State::Running(_))
            });
            let now = now.or(self.last_input);
            if let (true, false, Some(now)) = (ready, self.shutting_down, now) {
                self.restarting.insert(id.clone());
                self.stop(now, &id, Then::Start, why);
            }
        }
    }

    /// Whether [`Supervisor::advance_wave`] may have something to do:
    /// restarts wait, and a job of the wave may have left it.
    fn wave_may_advance(&self) -> bool {
        !self.wave.is_empty()
            && self.config.max_restarting.is_some_and(|k| {
                self.restarting.len() < k
                    || self.restarting.iter().any(|id| {
                        self.jobs.get(id).is_none_or(|job| match job.state {
                            State::Stopping { then, .. } => then != Then::Start,
                            State::Running(_) => job.is_up(),
                            State::Backoff { .. } | State::Paused | State::Waiting => true,
                        })
                    })
            })
    }

    /// Records the time of an input (see [`Supervisor::advance_wave`]).
    fn input_at(&mut self, now: Instant) {
        self.last_input = Some(self.last_input.map_or(now, |t| t.max(now)));
    }

    /// How many jobs of the restart waves are stopping or starting now
    /// (`--max-restarting`), and how many wait their turn.
    pub fn wave_counts(&self) -> (usize, usize) {
        (self.restarting.len(), self.wave.len())
    }

    /// Whether actions are waiting for [`Supervisor::poll_action`].
    pub fn has_pending_actions(&self) -> bool {
        !self.actions.is_empty() || self.wave_may_advance()
    }

    /// When [`Supervisor::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Whether a shutdown was requested and every process has ended: the
    /// shell may exit.
    pub fn is_finished(&self) -> bool {
        self.shutting_down && self.jobs.is_empty()
    }

    /// Whether a shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// How many jobs are supervised (declared, or still stopping).
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Reconciles the farm with a newly loaded configuration, unless the
    /// removal guard holds it back (see the [module documentation](self)).
    ///
    /// A job is removed by a configuration that declares it neither as a
    /// valid nor as an invalid job (an invalid declaration keeps the job
    /// running on its last valid one).
    pub fn handle_config(&mut self, now: Instant, mut decl: Declaration) -> ConfigOutcome {
        self.input_at(now);
        if self.shutting_down {
            return ConfigOutcome::Ignored;
        }
        decl.expand_instances();
        // Both maps are in key order: they are walked side by side.
        let mut declared = decl.jobs.keys().peekable();
        let removed: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(id, job)| {
                while declared.next_if(|d| d < id).is_some() {}
                let kept = declared.peek() == Some(id);
                job.declared && !kept && invalid(&decl, id, job).is_none()
            })
            .map(|(id, _)| id.clone())
            .collect();
        let forced = self
            .guard_lifted_until
            .take()
            .is_some_and(|until| now <= until);
        if !forced {
            if let Some(message) = self.hold(now, &removed) {
                return ConfigOutcome::Held(message);
            }
        }
        self.held = None;
        self.last_load = Some(now);
        self.source.last_error = None;
        self.source.warnings = std::mem::take(&mut decl.warnings);

        for id in removed {
            self.remove(now, &id);
        }

        for (id, job) in self.jobs.iter_mut() {
            job.invalid = invalid(&decl, id, job).cloned();
        }
        self.source.invalid_jobs = decl
            .invalid
            .into_iter()
            .map(|(id, reason)| (id.to_string(), reason))
            .collect();

        // A job that keeps its declaration (a reparse hands an unchanged
        // job its last `Arc`) is left alone, as `declare` would leave it;
        // the others are declared, in key order.
        let mut jobs = self.jobs.iter().peekable();
        let mut changed = Vec::new();
        for (id, spec) in decl.jobs {
            while jobs.next_if(|(known, _)| **known < id).is_some() {}
            let same = jobs.peek().is_some_and(|&(known, job)| {
                *known == id
                    && job.declared
                    && job.state != State::Waiting
                    && Arc::ptr_eq(job.pending.as_ref().unwrap_or(&job.spec), &spec)
            });
            if !same {
                changed.push((id, spec));
            }
        }
        for (id, spec) in changed {
            self.declare(now, id, spec);
        }
        ConfigOutcome::Applied
    }

    /// Applies a cluster node's share (see the [module
    /// documentation](self)): `decl` holds the jobs assigned to this node,
    /// `waiting` those of them it does not own yet (held in `Waiting`, and
    /// a running one stopped), `moved` the jobs that left the share for
    /// another node (their stop says [`Reason::Moved`]). A job no longer
    /// waiting starts at once ([`Reason::Owned`]). The gate applies even
    /// when the removal guard holds `decl` back.
    pub fn handle_share(
        &mut self,
        now: Instant,
        decl: Declaration,
        waiting: BTreeSet<JobId>,
        moved: BTreeSet<JobId>,
    ) -> ConfigOutcome {
        self.input_at(now);
        self.waiting = waiting;
        self.moved = moved;
        let outcome = self.handle_config(now, decl);
        self.moved.clear();
        if self.shutting_down {
            return outcome;
        }
        let ids: Vec<JobId> = self.jobs.keys().cloned().collect();
        for id in ids {
            let gated = self.is_gated(&id);
            let job = &self.jobs[&id];
            match job.state {
                State::Running(_) if gated && job.declared => {
                    self.stop(now, &id, Then::Start, Reason::Waiting);
                }
                State::Backoff { .. } if gated => self.set_state(&id, State::Waiting),
                State::Waiting if !gated => self.start(now, &id, Reason::Owned),
                _ => {}
            }
        }
        outcome
    }

    /// Whether the cluster's gate holds job `id` (its own id or its
    /// `instances` base id is waiting).
    fn is_gated(&self, id: &JobId) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        self.waiting.contains(id)
            || self.jobs.get(id).is_some_and(|job| {
                crate::instances::base_id(id, &job.spec)
                    .is_some_and(|base| self.waiting.contains(&JobId::from(base)))
            })
    }

    /// Whether the share being applied gives job `id` to another node.
    fn is_moved(&self, id: &JobId) -> bool {
        !self.moved.is_empty()
            && (self.moved.contains(id)
                || self.jobs.get(id).is_some_and(|job| {
                    crate::instances::base_id(id, &job.spec)
                        .is_some_and(|base| self.moved.contains(&JobId::from(base)))
                }))
    }

    /// The jobs whose declaration changed in the configurations applied
    /// since the last call, but whose `mtime` did not grow, so that the
    /// change was ignored (php-lrpm's rule), for the log: each ignored
    /// declaration is reported once, however often a source delivers it.
    pub fn take_ignored(&mut self) -> Vec<JobId> {
        std::mem::take(&mut self.ignored)
    }

    /// Whether job `id` is declared (a valid declaration runs, or waits to
    /// run): a new invalid declaration of it leaves it on this one.
    pub fn is_declared(&self, id: &JobId) -> bool {
        self.jobs.get(id).is_some_and(|job| job.declared)
    }

    /// Whether the core knows job `id`: declared, or removed but not yet
    /// stopped.
    pub fn knows(&self, id: &JobId) -> bool {
        self.jobs.contains_key(id)
    }

    /// Whether the core still knows declared job `id` or one of its
    /// `instances` copies: a cluster node gives its ownership up only once
    /// it does not (every process of it has ended).
    pub fn knows_declared(&self, id: &JobId) -> bool {
        self.knows(id) || !self.copies_of(id, |_| true).is_empty()
    }

    /// The job of live process `run`, if the core knows it.
    pub fn job_of(&self, run: RunId) -> Option<&JobId> {
        self.runs.get(&run)
    }

    /// Whether the removal guard is on (`--max-removal-ratio`).
    pub fn has_removal_guard(&self) -> bool {
        self.config.max_removal_ratio.is_some()
    }

    /// The removal guard: holds the configuration back if it would remove
    /// more than the allowed share of the declared jobs, and returns the
    /// operator's message then.
    fn hold(&mut self, now: Instant, removed: &[JobId]) -> Option<String> {
        let ratio = self.config.max_removal_ratio?;
        let declared = self.jobs.values().filter(|job| job.declared).count();
        // Exact in f64 for any realistic farm size.
        if removed.is_empty() || removed.len() as f64 <= ratio * declared as f64 {
            return None;
        }
        let since = self.held.as_ref().map_or(now, |held| held.since);
        let held = Held {
            removals: removed.len(),
            declared,
            would_remove: removed.iter().take(HeldConfig::SAMPLE).cloned().collect(),
            since,
        };
        let message = held.to_status(ratio, 0.0).message();
        self.source.last_error = Some(message.clone());
        self.held = Some(held);
        Some(message)
    }

    /// Lets the next configuration through the removal guard, whatever it
    /// removes, if it arrives by `until` (`lrpmctl reload --force`: the
    /// shell also asks the source to load again). A configuration held back
    /// now is not applied by this: the one the source delivers next is, so
    /// that what is applied is what the source says after the operator's
    /// confirmation.
    pub fn lift_guard_until(&mut self, until: Instant) {
        self.guard_lifted_until = Some(until);
    }

    /// Records that the configuration source failed; the farm keeps running
    /// on the last good configuration.
    pub fn handle_source_error(&mut self, error: String) {
        self.source.last_error = Some(error);
    }

    /// Records the pid of a process the shell has spawned, and when it did:
    /// the run's length is counted from then, not from when the spawn was
    /// asked for (the shell may have had a queue of spawns to work through).
    pub fn handle_spawned(&mut self, now: Instant, run: RunId, pid: u32) {
        self.input_at(now);
        let Some(id) = self.runs.get(&run).cloned() else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        match &mut job.state {
            State::Running(proc) if proc.run == run => {
                let mut proc = *proc;
                proc.pid = Some(pid);
                proc.since = proc.since.max(now);
                proc.live.spawned(proc.since, &job.spec);
                // Its deadlines count from the spawn: the timer index follows.
                self.set_state(&id, State::Running(proc));
            }
            State::Stopping { proc, .. } if proc.run == run => {
                proc.pid = Some(pid);
                proc.since = proc.since.max(now);
            }
            _ => {}
        }
    }

    /// Handles a notification (sd_notify) from process `run`, which the
    /// shell identified by the sender's credentials. A notification from a
    /// process that is not running (ended, stopping) changes nothing but
    /// its job's status text.
    pub fn handle_notify(&mut self, now: Instant, run: RunId, n: &Notification) -> Notified {
        self.input_at(now);
        let Some(id) = self.runs.get(&run).cloned() else {
            return Notified::Noted;
        };
        let Some(job) = self.jobs.get_mut(&id) else {
            return Notified::Noted;
        };
        if job.state.proc().map(|p| p.run) != Some(run) {
            return Notified::Noted;
        }
        if let Some(text) = &n.status {
            job.status_text = Some(text.as_str().into());
        }
        let State::Running(mut proc) = job.state else {
            return Notified::Noted;
        };
        let was_ready = proc.live.is_ready();
        let hung = proc.live.notified(now, n, &job.spec);
        self.set_state(&id, State::Running(proc));
        if hung {
            self.fail(now, &id, Reason::Hung);
            Notified::Hung(id)
        } else if n.stopping {
            Notified::Stopping(id)
        } else if !was_ready && proc.live.is_ready() {
            Notified::Ready(id)
        } else {
            Notified::Noted
        }
    }

    /// Handles the result of a probe of process `run` (see
    /// [`Action::Probe`]), at `now`: `healthy` or not.
    pub fn handle_probe(&mut self, now: Instant, run: RunId, healthy: bool) -> ProbeOutcome {
        self.input_at(now);
        let Some(id) = self.runs.get(&run).cloned() else {
            return ProbeOutcome::Ignored;
        };
        let Some(job) = self.jobs.get_mut(&id) else {
            return ProbeOutcome::Ignored;
        };
        let State::Running(mut proc) = job.state else {
            return ProbeOutcome::Ignored;
        };
        if proc.run != run {
            return ProbeOutcome::Ignored;
        }
        let probed = proc.live.probed(now, healthy, &job.spec);
        self.set_state(&id, State::Running(proc));
        match probed {
            Probed::Fine => ProbeOutcome::Noted,
            Probed::Ignored => ProbeOutcome::Ignored,
            Probed::Unhealthy => {
                self.fail(now, &id, Reason::Unhealthy);
                ProbeOutcome::Unhealthy(id)
            }
        }
    }

    /// Whether job `id` is up: its process runs and is ready (at once for a
    /// job without `notify`, at its `READY=1` for the others).
    pub fn is_up(&self, id: &JobId) -> bool {
        self.jobs.get(id).is_some_and(Job::is_up)
    }

    /// Stops job `id`'s running process as failed, for `cause` (its
    /// watchdog passed: [`Reason::Hung`]; its health check failed:
    /// [`Reason::Unhealthy`]): its exit shows that reason
    /// ([`ExitReason::Watchdog`], [`ExitReason::Unhealthy`]) and counts as
    /// a crash, and the job is started again as after a crash. The one
    /// path of a failure that lrpm finds itself.
    fn fail(&mut self, now: Instant, id: &JobId, cause: Reason) {
        debug_assert!(exit_reason(cause).is_crash(), "a failure is a crash");
        self.stop(now, id, Then::Recover, cause);
    }

    /// Handles the end of process `run` (or its failure to start). `now` is
    /// when it ended, as closely as the shell can tell, which may be a little
    /// before the present: the run's length and the backoff delay count
    /// from it.
    ///
    /// An exit of a process the core does not know (already handled) is
    /// ignored.
    pub fn handle_exit(&mut self, now: Instant, run: RunId, status: ExitStatus) -> AfterExit {
        self.input_at(now);
        let Some(id) = self.runs.remove(&run) else {
            return AfterExit::Unknown;
        };
        let Some(job) = self.jobs.get_mut(&id) else {
            return AfterExit::Unknown;
        };
        if job.state.proc().map(|p| p.run) != Some(run) {
            return AfterExit::Unknown;
        }
        let failed_to_start = status.error.is_some();
        if status.reason == ExitReason::OomKilled {
            job.oom_kills += 1;
        }
        // Why it ended: as the shell saw it, unless lrpm had asked it to
        // stop.
        let (proc, ended, then) = match job.state {
            State::Running(proc) => (proc, status.reason, None),
            State::Stopping {
                proc, why, then, ..
            } => (proc, why, Some(then)),
            State::Backoff { .. } | State::Paused | State::Waiting => {
                unreachable!("invariant: a job in backoff, paused or waiting has no process")
            }
        };
        if ended.is_crash() {
            job.crashes += 1;
        }
        job.last_exit = Some((status.because(ended), now));
        match then {
            None if self.shutting_down => {
                self.forget(&id);
                AfterExit::Stopped(Reason::Shutdown, ended)
            }
            None => self.recover(now, &id, proc, failed_to_start, ended, Reason::Crashed),
            // Stopped as failed, and nothing came meanwhile (an update, an
            // operator's restart or pause): as after a crash.
            Some(Then::Recover) if !self.shutting_down && job.pending.is_none() && !job.paused => {
                let why = job.why;
                self.recover(now, &id, proc, false, ended, why)
            }
            Some(then) => {
                let why = if self.shutting_down {
                    Reason::Shutdown
                } else {
                    job.why
                };
                if self.shutting_down || then == Then::Forget {
                    self.forget(&id);
                } else {
                    // A stop for an update starts the new declaration; a
                    // removed job declared again starts as a new one.
                    let next = match (job.pending.take(), why) {
                        (Some(spec), Reason::Removed | Reason::Moved) => {
                            job.spec = spec;
                            Reason::Added
                        }
                        (Some(spec), _) => {
                            job.spec = spec;
                            Reason::Updated
                        }
                        (None, why) => why,
                    };
                    job.backoff.reset();
                    self.start(now, &id, next);
                }
                AfterExit::Stopped(why, ended)
            }
        }
    }

    /// Starts job `id` again after its process `proc` failed (it ended
    /// with `ended`, or lrpm stopped it as failed): at once, for reason
    /// `why`, after a run of at least `shortRunTimeSeconds`, its backoff
    /// reset; after its backoff delay after a shorter run or a failed
    /// start.
    fn recover(
        &mut self,
        now: Instant,
        id: &JobId,
        proc: Proc,
        failed_to_start: bool,
        ended: ExitReason,
        why: Reason,
    ) -> AfterExit {
        let job = self.jobs.get_mut(id).expect("invariant: a known job");
        // A declaration waiting for its turn in a restart wave: the crash
        // restart takes it (crashes are never held back).
        if let Some(spec) = job.pending.take() {
            job.spec = spec;
            self.wave.retain(|(queued, _)| queued != id);
        }
        let job = self.jobs.get_mut(id).expect("invariant: a known job");
        if failed_to_start || now.duration_since(proc.since) < job.spec.short_run {
            let delay = job.backoff.fail();
            self.set_state(id, State::Backoff { until: now + delay });
            AfterExit::Backoff(ended, delay)
        } else {
            job.backoff.reset();
            self.start(now, id, why);
            AfterExit::Restarted(ended)
        }
    }

    /// Handles the failure of run `run` to start for want of something of
    /// the shell's own (its descriptors), not for anything the job did: the
    /// job is started again after `delay`, and its backoff is left as it
    /// was, so that a farm held back by lrpm's limit does not drift toward
    /// the longest backoff. `status` is recorded as its last exit (the
    /// reason, for status). Otherwise as [`Supervisor::handle_exit`].
    pub fn handle_spawn_deferred(
        &mut self,
        now: Instant,
        run: RunId,
        status: ExitStatus,
        delay: Duration,
    ) -> AfterExit {
        let deferred = !self.shutting_down
            && self
                .runs
                .get(&run)
                .and_then(|id| self.jobs.get(id))
                .is_some_and(|job| matches!(job.state, State::Running(proc) if proc.run == run));
        if !deferred {
            return self.handle_exit(now, run, status);
        }
        let Some(id) = self.runs.remove(&run) else {
            return AfterExit::Unknown;
        };
        let reason = status.reason;
        if let Some(job) = self.jobs.get_mut(&id) {
            job.last_exit = Some((status, now));
        }
        self.set_state(&id, State::Backoff { until: now + delay });
        AfterExit::Backoff(reason, delay)
    }

    /// Gives back the capacity of the core's maps beyond what its jobs
    /// need (a storm or a larger configuration grew them; the job map is a B-tree, which frees as it shrinks), so that the
    /// allocator can return it to the system. The shell calls it before it
    /// trims its heap; a map under a quarter full is shrunk.
    pub fn shrink(&mut self) {
        if self.runs.capacity() > 4 * self.runs.len().max(16) {
            self.runs.shrink_to_fit();
        }
        if self.actions.capacity() > 4 * self.actions.len().max(16) {
            self.actions.shrink_to_fit();
        }
    }

    /// Handles every deadline that has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.input_at(now);
        while let Some((at, id)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            let job = self
                .jobs
                .get(&id)
                .expect("invariant: timers name live jobs");
            match job.state {
                State::Backoff { .. } => self.start(now, &id, Reason::Crashed),
                State::Stopping { .. } => self.escalate(&id),
                State::Paused | State::Waiting => {
                    unreachable!("invariant: a paused or waiting job has no deadline")
                }
                State::Running(mut proc) => {
                    let due = proc.live.due(now);
                    self.set_state(&id, State::Running(proc));
                    match due {
                        Due::Hung => self.fail(now, &id, Reason::Hung),
                        Due::Probe => self.actions.push_back(Action::Probe {
                            run: proc.run,
                            job: id.clone(),
                            spec: self.jobs[&id].spec.clone(),
                        }),
                        Due::Nothing => {}
                    }
                }
            }
        }
    }

    /// Whether job `id` is waiting out a backoff (or a deferred start:
    /// [`Supervisor::handle_spawn_deferred`]).
    pub fn is_waiting(&self, id: &JobId) -> bool {
        self.jobs
            .get(id)
            .is_some_and(|job| matches!(job.state, State::Backoff { .. }))
    }

    /// Restarts job `id` now: stops its process, if it has one, and starts it
    /// again with its backoff reset. An id may also name every copy of an
    /// `instances` job (see [`Supervisor::resolve`]). A paused job is not
    /// restarted: resume it.
    pub fn restart(&mut self, now: Instant, id: &JobId) -> Result<(), CommandError> {
        self.restart_jobs(now, std::slice::from_ref(id)).map(drop)
    }

    /// [`Supervisor::restart`] of several jobs at once: all of them, or
    /// none when an id names no job or a paused one. Returns the jobs
    /// restarted.
    pub fn restart_jobs(
        &mut self,
        now: Instant,
        ids: &[JobId],
    ) -> Result<Vec<JobId>, CommandError> {
        let jobs = self.resolve(ids)?;
        let paused: Vec<JobId> = jobs
            .iter()
            .filter(|id| self.jobs[*id].paused)
            .cloned()
            .collect();
        if !paused.is_empty() {
            return Err(CommandError::Paused(paused));
        }
        for id in &jobs {
            self.restart_one(now, id);
        }
        Ok(jobs)
    }

    /// Restarts every declared job that is not paused (`lrpmctl restart
    /// --all`); returns them.
    pub fn restart_all(&mut self, now: Instant) -> Result<Vec<JobId>, CommandError> {
        if self.shutting_down {
            return Err(CommandError::ShuttingDown);
        }
        self.input_at(now);
        let jobs: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.declared && !job.paused)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &jobs {
            if matches!(self.jobs[id].state, State::Running(_)) {
                self.jobs.get_mut(id).expect("listed").backoff.reset();
                self.restart_in_wave(now, id, Reason::Operator);
            } else {
                self.restart_one(now, id);
            }
        }
        Ok(jobs)
    }

    /// Restarts declared, unpaused job `id`.
    fn restart_one(&mut self, now: Instant, id: &JobId) {
        let job = self.jobs.get_mut(id).expect("invariant: a resolved job");
        job.backoff.reset();
        match job.state {
            State::Running(_) => self.stop(now, id, Then::Start, Reason::Operator),
            State::Stopping {
                proc,
                kill_at,
                then: Then::Recover,
                why,
            } => {
                // Stopped as failed: the operator wants it back at once.
                job.why = Reason::Operator;
                self.set_state(
                    id,
                    State::Stopping {
                        proc,
                        kill_at,
                        then: Then::Start,
                        why,
                    },
                );
            }
            State::Stopping { .. } => {}
            State::Backoff { .. } => self.start(now, id, Reason::Operator),
            // Nothing runs: it starts once owned.
            State::Waiting => {}
            State::Paused => unreachable!("invariant: a paused job is not restarted"),
        }
    }

    /// Pauses jobs `ids` (`lrpmctl pause`): each process is stopped (its
    /// stop signal, then SIGKILL after its timeout) and the job is held
    /// stopped, whatever configurations arrive, until
    /// [`Supervisor::resume`] or lrpm's end. A job removed from the source
    /// meanwhile is forgotten. All of them, or none when an id names no job;
    /// returns the jobs that were not paused yet.
    pub fn pause(&mut self, now: Instant, ids: &[JobId]) -> Result<Vec<JobId>, CommandError> {
        let jobs = self.resolve(ids)?;
        let mut paused = Vec::new();
        for id in jobs {
            let job = self.jobs.get_mut(&id).expect("invariant: a resolved job");
            if job.paused {
                continue;
            }
            job.paused = true;
            match job.state {
                State::Running(_) => self.stop(now, &id, Then::Start, Reason::Paused),
                // Its `Then::Start` meets the pause in `start`.
                State::Stopping { .. } | State::Paused => {}
                State::Backoff { .. } | State::Waiting => self.set_state(&id, State::Paused),
            }
            paused.push(id);
        }
        Ok(paused)
    }

    /// Resumes paused jobs `ids` (`lrpmctl resume`): each starts at once
    /// (once its process has ended, if it was still stopping) with its
    /// backoff reset, on its latest declaration. All of them, or none when
    /// an id names no job; returns the jobs that were paused.
    pub fn resume(&mut self, now: Instant, ids: &[JobId]) -> Result<Vec<JobId>, CommandError> {
        let jobs = self.resolve(ids)?;
        let mut resumed = Vec::new();
        for id in jobs {
            let job = self.jobs.get_mut(&id).expect("invariant: a resolved job");
            if !job.paused {
                continue;
            }
            job.paused = false;
            job.backoff.reset();
            if job.state == State::Paused {
                if let Some(spec) = job.pending.take() {
                    job.spec = spec;
                }
                self.start(now, &id, Reason::Resumed);
            } else if job.why == Reason::Paused {
                // Still stopping: it starts again, resumed, at its exit.
                job.why = Reason::Resumed;
            }
            resumed.push(id);
        }
        Ok(resumed)
    }

    /// Sends `signal` to the process group of each of jobs `ids` that has a
    /// process (`lrpmctl signal`); it is the job's business what the signal
    /// does (an exit it causes is a crash like any other). Refused when an
    /// id names no job, or when none of the jobs has a process.
    pub fn signal(&mut self, ids: &[JobId], signal: Signal) -> Result<Signalled, CommandError> {
        let jobs = self.resolve(ids)?;
        let (sent, skipped): (Vec<JobId>, Vec<JobId>) = jobs
            .into_iter()
            .partition(|id| self.jobs[id].state.proc().is_some());
        if sent.is_empty() {
            return Err(CommandError::NotRunning(skipped));
        }
        for id in &sent {
            let proc = self.jobs[id].state.proc().expect("invariant: partitioned");
            self.actions.push_back(Action::Signal {
                run: proc.run,
                signal,
                reason: Reason::Signalled,
            });
        }
        Ok(Signalled { sent, skipped })
    }

    /// The declared jobs that `ids` name, in order, each once: an id names
    /// its job, or, if there is no job of that id, every copy of the
    /// `instances` job of that id (`web` for `web#0` … `web#N-1`). Refused
    /// when an id names nothing, when there is no id, and during a
    /// shutdown.
    pub fn resolve(&self, ids: &[JobId]) -> Result<Vec<JobId>, CommandError> {
        if self.shutting_down {
            return Err(CommandError::ShuttingDown);
        }
        self.named(ids, |job| job.declared)
    }

    /// The jobs that `ids` name among those that `listed` accepts, as
    /// [`Supervisor::resolve`] finds them.
    fn named(
        &self,
        ids: &[JobId],
        listed: impl Fn(&Job) -> bool + Copy,
    ) -> Result<Vec<JobId>, CommandError> {
        if ids.is_empty() {
            return Err(CommandError::NoIds);
        }
        let mut jobs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut unknown = Vec::new();
        for id in ids {
            let named = match self.jobs.get(id) {
                Some(job) if listed(job) => vec![id.clone()],
                _ => self.copies_of(id, listed),
            };
            if named.is_empty() {
                unknown.push(id.clone());
            }
            jobs.extend(named.into_iter().filter(|id| seen.insert(id.clone())));
        }
        match unknown.len() {
            0 => Ok(jobs),
            1 => Err(CommandError::UnknownJob(unknown.remove(0))),
            _ => Err(CommandError::UnknownJobs(unknown)),
        }
    }

    /// The copies of `instances` job `base` that `listed` accepts, in id
    /// order.
    fn copies_of(&self, base: &JobId, listed: impl Fn(&Job) -> bool) -> Vec<JobId> {
        let prefix = format!("{base}#");
        self.jobs
            .range(JobId::new(prefix.clone())..)
            .take_while(|(id, _)| id.as_str().starts_with(&prefix))
            .filter(|(id, job)| {
                listed(job) && crate::instances::base_id(id, &job.spec) == Some(base.as_str())
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether job `id` is paused by an operator.
    pub fn is_paused(&self, id: &JobId) -> bool {
        self.jobs.get(id).is_some_and(|job| job.paused)
    }

    /// Begins a graceful shutdown: every process is asked to stop, jobs in
    /// backoff are forgotten, and configurations are ignored from now on.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let ids: Vec<JobId> = self.jobs.keys().cloned().collect();
        for id in ids {
            match self.jobs[&id].state {
                State::Running(_) => self.stop(now, &id, Then::Forget, Reason::Shutdown),
                State::Stopping { .. } => {}
                State::Backoff { .. } | State::Paused | State::Waiting => self.forget(&id),
            }
        }
    }

    /// Handles an interrupt (SIGINT, Ctrl-C): the first begins a graceful
    /// [`Supervisor::shutdown`]; one that comes while a shutdown is under
    /// way, whatever began it, kills every process at once
    /// ([`Supervisor::force_kill`]).
    pub fn handle_interrupt(&mut self, now: Instant) -> Interrupted {
        if self.shutting_down {
            self.force_kill(now);
            Interrupted::ForceKill
        } else {
            let jobs = self.jobs.len();
            self.shutdown(now);
            Interrupted::Shutdown { jobs }
        }
    }

    /// SIGKILL now to every process that is stopping and has not had it
    /// yet, without shutting down: a cluster node whose lease may expire
    /// within a second kills what is left of the workers it gave up.
    pub fn kill_stopping(&mut self) {
        let due: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, job)| {
                matches!(
                    job.state,
                    State::Stopping {
                        kill_at: Some(_),
                        ..
                    }
                )
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.escalate(&id);
        }
    }

    /// Shuts down at once: SIGKILL to every process that has not had it yet.
    pub fn force_kill(&mut self, now: Instant) {
        self.shutdown(now);
        let due: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.state.deadline().is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.escalate(&id);
        }
    }

    /// The status of the source and of every job. `now` and `wall_now` are the
    /// same moment on the monotonic clock and as UTC seconds; they convert
    /// the core's instants to wall-clock times.
    ///
    /// This copies every job's status; [`Supervisor::status_source`] and
    /// [`Supervisor::status_jobs`] give the same document without copying
    /// the jobs', for serializing it at once.
    pub fn status(&self, now: Instant, wall_now: f64) -> (SourceStatus, Vec<JobStatus>) {
        let clock = WallClock { now, wall_now };
        let jobs = self
            .jobs
            .iter()
            .map(|(id, job)| {
                let view = JobView::new(id, job, clock);
                JobStatus {
                    id: view.id.to_owned(),
                    name: view.name.to_owned(),
                    command: job.spec.program.to_string(),
                    state: view.state,
                    pid: view.pid,
                    started_at: view.started_at,
                    restarts: view.restarts,
                    crashes: view.crashes,
                    oom_kills: view.oom_kills,
                    last_exit: view.last_exit.map(|exit| ExitInfo {
                        status: exit.status.clone(),
                        at: exit.at,
                    }),
                    backoff_seconds: view.backoff_seconds,
                    restart_at: view.restart_at,
                    mtime: view.mtime,
                    declared: view.declared,
                    invalid: view.invalid.map(str::to_owned),
                    health: view.health,
                    status_text: view.status_text.map(str::to_owned),
                }
            })
            .collect();
        (self.status_source(now, wall_now), jobs)
    }

    /// The source's part of [`Supervisor::status`].
    pub fn status_source(&self, now: Instant, wall_now: f64) -> SourceStatus {
        let clock = WallClock { now, wall_now };
        let mut source = self.source.clone();
        source.last_load_at = self.last_load.map(|t| clock.wall(t));
        source.held = match (&self.held, self.config.max_removal_ratio) {
            (Some(held), Some(ratio)) => Some(held.to_status(ratio, clock.wall(held.since))),
            _ => None,
        };
        source
    }

    /// The jobs' part of [`Supervisor::status`], borrowed: it serializes
    /// exactly as that `Vec<JobStatus>` does, straight from the core's
    /// state, without a copy of any job's status. For a status of
    /// thousands of jobs that is most of the work saved.
    pub fn status_jobs(&self, now: Instant, wall_now: f64) -> JobsStatus<'_> {
        JobsStatus {
            sup: self,
            clock: WallClock { now, wall_now },
            only: None,
        }
    }

    /// [`Supervisor::status_jobs`] of the jobs that `ids` name only
    /// (`lrpmctl status ID…`), in id order; refused when an id names no
    /// job (see [`Supervisor::resolve`]).
    pub fn status_jobs_of(
        &self,
        now: Instant,
        wall_now: f64,
        ids: &[JobId],
    ) -> Result<JobsStatus<'_>, CommandError> {
        // Status shows the jobs being removed too, and during a shutdown.
        let mut only = self.named(ids, |_| true)?;
        only.sort();
        Ok(JobsStatus {
            sup: self,
            clock: WallClock { now, wall_now },
            only: Some(only),
        })
    }

    /// The state of every job, in no order: what a summary counts (the
    /// `STATUS=` lrpm gives systemd), without building a status.
    pub fn job_states(&self) -> impl Iterator<Item = JobState> + '_ {
        self.jobs.values().map(|job| match job.state {
            State::Running(_) => JobState::Running,
            State::Stopping { .. } => JobState::Stopping,
            State::Backoff { .. } => JobState::Backoff,
            State::Paused => JobState::Paused,
            State::Waiting => JobState::Waiting,
        })
    }

    /// ADDED or UPDATED or UNCHANGED: `spec` is the job's valid declaration.
    fn declare(&mut self, now: Instant, id: JobId, spec: Arc<JobSpec>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            let job = Job {
                spec,
                pending: None,
                declared: true,
                invalid: None,
                // Replaced at once by `start`.
                state: State::Backoff { until: now },
                backoff: Backoff::new(self.config.max_backoff),
                restarts: 0,
                crashes: 0,
                oom_kills: 0,
                last_exit: None,
                status_text: None,
                paused: false,
                why: Reason::Added,
                ignored: None,
            };
            self.jobs.insert(id.clone(), job);
            self.start(now, &id, Reason::Added);
            return;
        };
        if !job.declared {
            // Removed, still stopping, and declared again: start it anew
            // once the old process is gone.
            job.declared = true;
            job.pending = Some(spec);
            if let State::Stopping {
                proc, kill_at, why, ..
            } = job.state
            {
                self.set_state(
                    &id,
                    State::Stopping {
                        proc,
                        kill_at,
                        then: Then::Start,
                        why,
                    },
                );
            }
            return;
        }
        // A waiting job has no process to keep: it starts on its latest
        // declaration (which carries its cluster's fencing token), whatever
        // its `mtime` says.
        if job.state == State::Waiting {
            job.spec = spec;
            return;
        }
        let latest = job.pending.as_ref().unwrap_or(&job.spec);
        // The same declaration as last time (a reparse reuses it): unchanged.
        if Arc::ptr_eq(latest, &spec) {
            return;
        }
        if !latest.needs_restart_for(&spec) {
            // Changed, but its mtime did not grow: ignored, and said so
            // once per ignored declaration (a polled source delivers it
            // again and again).
            let new = job
                .ignored
                .as_ref()
                .is_none_or(|last| !Arc::ptr_eq(last, &spec) && **last != *spec);
            if new && **latest != *spec {
                self.ignored.push(id.clone());
                job.ignored = Some(spec);
            }
            return;
        }
        job.ignored = None;
        match job.state {
            State::Running(_) => {
                job.pending = Some(spec);
                self.restart_in_wave(now, &id, Reason::Updated);
            }
            State::Stopping { .. } => {
                job.pending = Some(spec);
                // A stop for another reason now ends in this update.
                if job.why != Reason::Removed {
                    job.why = Reason::Updated;
                }
            }
            // A paused job keeps the update for when it is resumed.
            State::Paused => job.pending = Some(spec),
            State::Waiting => unreachable!("invariant: a waiting job took its declaration above"),
            State::Backoff { .. } => {
                job.spec = spec;
                job.backoff.reset();
                self.start(now, &id, Reason::Updated);
            }
        }
    }

    /// REMOVED: stop the job's process, then forget it.
    fn remove(&mut self, now: Instant, id: &JobId) {
        let job = self
            .jobs
            .get_mut(id)
            .expect("invariant: removing a known job");
        job.declared = false;
        job.pending = None;
        // Removed from the source: nothing to hold any more.
        job.paused = false;
        let why = if self.is_moved(id) {
            Reason::Moved
        } else {
            Reason::Removed
        };
        let job = self.jobs.get_mut(id).expect("invariant: a known job");
        job.why = why;
        match job.state {
            State::Running(_) => self.stop(now, id, Then::Forget, why),
            State::Stopping {
                proc, kill_at, why, ..
            } => self.set_state(
                id,
                State::Stopping {
                    proc,
                    kill_at,
                    then: Then::Forget,
                    why,
                },
            ),
            State::Backoff { .. } | State::Paused | State::Waiting => self.forget(id),
        }
    }

    /// Spawns a new process for job `id`, which has none, for reason
    /// `why`; a paused job is held instead (state `Paused`), and a job the
    /// cluster's gate holds waits (state `Waiting`): the one place that
    /// makes sure neither ever runs, whatever path wanted to start it.
    fn start(&mut self, now: Instant, id: &JobId, why: Reason) {
        let job = self
            .jobs
            .get_mut(id)
            .expect("invariant: starting a known job");
        if job.paused {
            if let Some(spec) = job.pending.take() {
                job.spec = spec;
            }
            self.set_state(id, State::Paused);
            return;
        }
        if self.is_gated(id) {
            let job = self.jobs.get_mut(id).expect("invariant: a known job");
            if let Some(spec) = job.pending.take() {
                job.spec = spec;
            }
            self.set_state(id, State::Waiting);
            return;
        }
        let job = self.jobs.get_mut(id).expect("invariant: a known job");
        let run = RunId(self.next_run);
        self.next_run += 1;
        debug_assert!(
            job.state
                .proc()
                .is_none_or(|p| !self.runs.contains_key(&p.run)),
            "a job has one process at most"
        );
        if job.last_exit.is_some() {
            job.restarts += 1;
        }
        job.status_text = None;
        job.why = why;
        let live = Liveness::new(now, &job.spec);
        self.actions.push_back(Action::Spawn {
            run,
            job: id.clone(),
            spec: job.spec.clone(),
            reason: why,
        });
        self.runs.insert(run, id.clone());
        self.set_state(
            id,
            State::Running(Proc {
                run,
                pid: None,
                since: now,
                live,
            }),
        );
    }

    /// Asks job `id`'s running process to stop, for reason `why`, with
    /// SIGKILL after its timeout.
    fn stop(&mut self, now: Instant, id: &JobId, then: Then, why: Reason) {
        let job = self
            .jobs
            .get_mut(id)
            .expect("invariant: stopping a known job");
        let State::Running(proc) = job.state else {
            unreachable!("invariant: only a running job is stopped");
        };
        job.why = why;
        self.actions.push_back(Action::Signal {
            run: proc.run,
            signal: job.spec.stop_signal,
            reason: why,
        });
        let kill_at = Some(now + job.spec.shutdown_timeout);
        self.set_state(
            id,
            State::Stopping {
                proc,
                kill_at,
                then,
                why: exit_reason(why),
            },
        );
    }

    /// Sends SIGKILL to a stopping job's process group, and clears its
    /// stop deadline: the one path of "the stop deadline is reached" (on
    /// time, or at once by [`Supervisor::force_kill`]).
    fn escalate(&mut self, id: &JobId) {
        if let State::Stopping {
            proc, then, why, ..
        } = self.jobs[id].state
        {
            self.actions.push_back(Action::Signal {
                run: proc.run,
                signal: Signal::Kill,
                reason: self.jobs[id].why,
            });
            self.set_state(
                id,
                State::Stopping {
                    proc,
                    kill_at: None,
                    then,
                    why,
                },
            );
        }
    }

    /// Drops a job that has no process.
    fn forget(&mut self, id: &JobId) {
        if let Some(job) = self.jobs.remove(id) {
            debug_assert!(
                job.state
                    .proc()
                    .is_none_or(|p| !self.runs.contains_key(&p.run)),
                "a forgotten job has no live process"
            );
            if let Some(at) = job.state.deadline() {
                self.timers.remove(&(at, id.clone()));
            }
        }
    }

    /// The one place a job's state changes, so that the timer index follows.
    fn set_state(&mut self, id: &JobId, state: State) {
        let job = self.jobs.get_mut(id).expect("invariant: known job");
        if let Some(at) = job.state.deadline() {
            self.timers.remove(&(at, id.clone()));
        }
        if let Some(at) = state.deadline() {
            self.timers.insert((at, id.clone()));
        }
        job.state = state;
    }
}

/// What the exit of a process that lrpm stops for `why` shows: the failure
/// it was stopped for, or [`ExitReason::Stopped`] for a stop on purpose.
fn exit_reason(why: Reason) -> ExitReason {
    match why {
        Reason::Hung => ExitReason::Watchdog,
        Reason::Unhealthy => ExitReason::Unhealthy,
        _ => ExitReason::Stopped,
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "supervisor_liveness_tests.rs"]
mod liveness_tests;

#[cfg(test)]
#[path = "supervisor_cmd_tests.rs"]
mod cmd_tests;
