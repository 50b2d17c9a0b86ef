//! Everything a run measured, keyed by what, of whom, and at how many jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::stats::Samples;

/// Who was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// The harness itself doing the least possible work: the physical
    /// floor of what a supervisor can achieve on this machine.
    Floor,
    /// lrpm.
    Lrpm,
    /// supervisord from Debian's `supervisor` package.
    Supervisord,
    /// pm2, from the npm registry (its daemon run in the foreground by
    /// `pm2-runtime`).
    Pm2,
    /// circus (Mozilla's), from PyPI.
    Circus,
    /// s6 (skarnet's), from Debian's `s6` package: `s6-svscan` and one
    /// `s6-supervise` per service.
    S6,
}

impl Subject {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Subject::Floor => "floor",
            Subject::Lrpm => "lrpm",
            Subject::Supervisord => "supervisord",
            Subject::Pm2 => "pm2",
            Subject::Circus => "circus",
            Subject::S6 => "s6",
        }
    }
}

/// A measured duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// fork+exec+wait of `/bin/true` (floor).
    SpawnTrue,
    /// fork+exec+wait of the tiny worker exiting at once (floor).
    SpawnWorker,
    /// SIGKILL of a child → its parent woken by the child's pidfd (floor).
    ExitWake,
    /// SIGKILL of a child → reaped, respawned, replacement's `main`, with
    /// the pause between samples that lrpm's crashes have (floor).
    ExitReplace,
    /// The same, back to back: each crash as soon as the last replacement
    /// reported (floor).
    ExitReplaceBackToBack,
    /// SIGKILL of a worker → its replacement's `main`.
    Restart,
    /// Jobs file rewritten → the changed job's new worker's `main`.
    ConfigPush,
    /// A job added to the running set (each system's own way) → its
    /// worker's `main`.
    JobAdded,
    /// That job removed again → its worker has exited.
    JobRemoved,
    /// Configuration given → every worker's `main` ran. For the floor:
    /// the harness spawning the workers one after the other.
    MassStart,
    /// The same for lrpm with `--cgroup off`: no cgroup per run.
    MassStartUncontained,
    /// The floor's mass start on two threads, each spawning half of the
    /// workers one after the other, as lrpm spawns.
    MassStartTwoThreads,
    /// supervisord started → `supervisorctl status` shows every program
    /// RUNNING (polled, so coarse).
    AllRunning,
    /// SIGTERM to the supervisor → it has exited, every worker reaped.
    /// For the floor: SIGTERM to every child, then every child reaped.
    Shutdown,
    /// One raw status round trip over the control socket, on a new
    /// connection (lrpm: JSON; supervisord: XML-RPC getAllProcessInfo).
    StatusSocket,
    /// The status table printed by the control client, as a process run
    /// (`lrpmctl status`, `supervisorctl status`).
    StatusTable,
    /// A row's declaration UPDATEd in PostgreSQL (a trigger NOTIFYs) → the
    /// changed job's new worker's `main`.
    PgNotify,
    /// The same UPDATE → the notification received by a bare LISTEN
    /// client of the harness (floor).
    PgNotifyFloor,
}

/// The supervisor at rest after a mass start.
#[derive(Debug, Clone, Copy)]
pub struct Rest {
    /// How many processes the figures add up: the supervisor, and for lrpm
    /// its output hubs.
    pub processes: usize,
    /// `VmRSS`, in KiB.
    pub rss_kib: u64,
    /// The proportional set size (`Pss` of `smaps_rollup`), in KiB: pages
    /// shared between its processes (s6's 1,000 s6-supervise share their
    /// code) counted once in all.
    pub pss_kib: u64,
    /// `VmHWM`, the peak resident size so far, in KiB.
    pub hwm_kib: u64,
    /// CPU time over the window, as a percentage of one core.
    pub cpu_percent: f64,
    /// How long it was watched.
    pub window: Duration,
    /// How many descriptors it has open.
    pub fds: usize,
}

/// A crash storm: every worker exits at once and is restarted at once.
#[derive(Debug, Clone, Copy)]
pub struct Storm {
    /// How many jobs crash.
    pub jobs: usize,
    /// Restarts counted over the window.
    pub restarts: u64,
    /// The window.
    pub window: Duration,
    /// The supervisor's CPU time over the window, in nanoseconds.
    pub cpu_ns: u64,
}

impl Storm {
    /// Restarts per second.
    pub fn rate(&self) -> f64 {
        self.restarts as f64 / self.window.as_secs_f64()
    }

    /// The supervisor's CPU time per restart, in milliseconds.
    pub fn cpu_per_restart_ms(&self) -> f64 {
        self.cpu_ns as f64 / 1e6 / self.restarts.max(1) as f64
    }

    /// The supervisor's CPU use over the window, as a percentage of one core.
    pub fn cpu_percent(&self) -> f64 {
        self.cpu_ns as f64 / 1e9 / self.window.as_secs_f64() * 100.0
    }
}

/// Every figure of a run, and the notes that qualify them.
#[derive(Debug, Default)]
pub struct Results {
    times: BTreeMap<(Metric, Subject, usize), Samples>,
    rest: BTreeMap<(Subject, usize), Rest>,
    storm: BTreeMap<Subject, Storm>,
    curves: BTreeMap<Subject, Vec<f64>>,
    big_farm: Option<usize>,
    notes: Vec<String>,
}

impl Results {
    /// The samples of `metric` of `subject` with `jobs` jobs, to add to.
    pub fn times(&mut self, metric: Metric, subject: Subject, jobs: usize) -> &mut Samples {
        self.times.entry((metric, subject, jobs)).or_default()
    }

    /// The samples of `metric` of `subject` with `jobs` jobs, if any.
    pub fn get(&self, metric: Metric, subject: Subject, jobs: usize) -> Option<&Samples> {
        self.times
            .get(&(metric, subject, jobs))
            .filter(|s| !s.is_empty())
    }

    /// The median of those samples.
    pub fn median(&self, metric: Metric, subject: Subject, jobs: usize) -> Option<f64> {
        self.get(metric, subject, jobs)?.median()
    }

    /// Records the supervisor at rest.
    pub fn set_rest(&mut self, subject: Subject, jobs: usize, rest: Rest) {
        self.rest.insert((subject, jobs), rest);
    }

    /// The supervisor at rest with `jobs` jobs.
    pub fn rest(&self, subject: Subject, jobs: usize) -> Option<&Rest> {
        self.rest.get(&(subject, jobs))
    }

    /// Every at-rest record.
    pub fn rests(&self) -> impl Iterator<Item = (Subject, usize, &Rest)> {
        self.rest.iter().map(|((s, j), r)| (*s, *j, r))
    }

    /// Records a crash storm.
    pub fn set_storm(&mut self, subject: Subject, storm: Storm) {
        self.storm.insert(subject, storm);
    }

    /// The crash storm of `subject`.
    pub fn storm(&self, subject: Subject) -> Option<&Storm> {
        self.storm.get(&subject)
    }

    /// Records the mass-start curve of `subject` at 1,000 jobs: when each
    /// worker's `main` ran, in milliseconds after the start was asked for.
    pub fn set_curve(&mut self, subject: Subject, mut ms: Vec<f64>) {
        ms.sort_by(f64::total_cmp);
        self.curves.insert(subject, ms);
    }

    /// Whether `subject`'s mass-start curve is recorded.
    pub fn has_curve(&self, subject: Subject) -> bool {
        self.curves.contains_key(&subject)
    }

    /// Every mass-start curve, sorted.
    pub fn curves(&self) -> impl Iterator<Item = (Subject, &[f64])> {
        self.curves.iter().map(|(s, c)| (*s, c.as_slice()))
    }

    /// Records the size of the big farm lrpm ran: 10,000 jobs, or fewer
    /// when that many do not fit the descriptor limit.
    pub fn set_big_farm(&mut self, jobs: usize) {
        self.big_farm = Some(jobs);
    }

    /// The size of the big farm, if one ran.
    pub fn big_farm(&self) -> Option<usize> {
        self.big_farm
    }

    /// Adds a note to the report, and says it on stderr now.
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("lrpm-bench: note: {note}");
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The notes, in the order they were made.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}
