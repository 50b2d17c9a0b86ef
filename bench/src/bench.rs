//! What every scenario shares: the run's temporary directory, the binaries
//! under test, the workers' report socket, and the plan of how many
//! samples to take.

use std::cell::Cell;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::cleanup;
use crate::collector::Collector;

/// How much of everything to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Quick mode: fewer samples, at most 1,000 jobs.
    pub quick: bool,
    /// The farm sizes beyond one job: 1,000, and the big farm (10,000
    /// unless quick).
    pub farms: Vec<usize>,
    /// Sequential fork+exec+wait samples of the floor.
    pub spawn_samples: usize,
    /// Exit→wake and exit→replacement samples of the floor.
    pub exit_samples: usize,
    /// Crash→restart samples of lrpm, per farm size.
    pub restart_samples: usize,
    /// Configuration-change samples of lrpm.
    pub push_samples: usize,
    /// How long the supervisor is watched at rest.
    pub rest_window: Duration,
    /// How many jobs crash in the storm, and for how long it is measured.
    pub storm_jobs: usize,
    /// The storm's measuring window.
    pub storm_window: Duration,
    /// Crash→restart samples of a peer with one job (1.5 s apart).
    pub peer_restart_samples: usize,
    /// Crash→restart samples of a peer with 1,000 jobs (each crash of a
    /// job not crashed before).
    pub peer_farm_restart_samples: usize,
    /// Additions and removals of a job, on every system's farm of 1,000.
    pub job_set_samples: usize,
}

impl Plan {
    /// The full plan, or the quick one, with a big farm of `big` jobs after
    /// the farm of 1,000 (by default 10,000, and none in quick mode).
    pub fn new(quick: bool, big: Option<usize>) -> Self {
        let big = big.unwrap_or(if quick { 0 } else { 10_000 });
        let farms = std::iter::once(1000)
            .chain((big > 1000).then_some(big))
            .collect();
        if quick {
            Self {
                quick,
                farms,
                spawn_samples: 100,
                exit_samples: 100,
                restart_samples: 50,
                push_samples: 10,
                rest_window: Duration::from_secs(2),
                storm_jobs: 100,
                storm_window: Duration::from_secs(2),
                peer_restart_samples: 3,
                peer_farm_restart_samples: 10,
                job_set_samples: 5,
            }
        } else {
            Self {
                quick,
                farms,
                spawn_samples: 500,
                exit_samples: 300,
                restart_samples: 300,
                push_samples: 50,
                rest_window: Duration::from_secs(10),
                storm_jobs: 100,
                storm_window: Duration::from_secs(5),
                peer_restart_samples: 15,
                peer_farm_restart_samples: 50,
                job_set_samples: 20,
            }
        }
    }

    /// How many farms of `jobs` are started and shut down (each gives one
    /// mass-start and one shutdown sample).
    pub fn sessions(&self, jobs: usize) -> usize {
        match (self.quick, jobs) {
            (true, _) => 2,
            (false, ..=1000) => 5,
            (false, _) => 2,
        }
    }

    /// How many sequential-spawn farms of `jobs` the floor starts.
    pub fn floor_sessions(&self, jobs: usize) -> usize {
        match (self.quick, jobs) {
            (true, _) => 1,
            (false, ..=1000) => 3,
            (false, _) => 1,
        }
    }

    /// Raw status round trips at `jobs` jobs.
    pub fn status_samples(&self, jobs: usize) -> usize {
        match (self.quick, jobs) {
            (true, _) => 20,
            (false, ..=1000) => 100,
            (false, _) => 50,
        }
    }

    /// `lrpmctl status` runs at `jobs` jobs.
    pub fn table_samples(&self, jobs: usize) -> usize {
        match (self.quick, jobs) {
            (true, _) => 5,
            (false, ..=1000) => 20,
            (false, _) => 10,
        }
    }

    /// How long `jobs` workers may take to report after a mass start.
    pub fn start_timeout(jobs: usize) -> Duration {
        Duration::from_secs(30 + jobs as u64 / 20)
    }
}

/// How a benchmark worker behaves (its MODE argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMode {
    /// Report, then sleep until a signal ends it.
    Pause,
    /// Exit at once without reporting.
    True,
}

impl WorkerMode {
    /// The argument the worker takes.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerMode::Pause => "pause",
            WorkerMode::True => "true",
        }
    }
}

/// The programs the suite runs, copied into the run's directory so that a
/// concurrent rebuild cannot swap them mid-run.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The supervisor under test.
    pub lrpm: PathBuf,
    /// Its control client.
    pub lrpmctl: PathBuf,
    /// The tiny worker.
    pub worker: PathBuf,
    /// The floor of a shutdown, a supervisor process of its own.
    pub floor: PathBuf,
}

/// The shared context of one run.
#[derive(Debug)]
pub struct Bench {
    /// The run's temporary directory (its path is the cleanup token).
    pub dir: PathBuf,
    /// Removes `dir` when dropped, unless the run keeps it.
    _tmp: Option<tempfile::TempDir>,
    /// The programs under test.
    pub bins: Binaries,
    /// Where the workers report.
    pub collector: Collector,
    /// How much to measure.
    pub plan: Plan,
    /// The hard descriptor limit this suite runs under.
    pub nofile_hard: u64,
    /// Numbers the session directories.
    sessions: Cell<u32>,
}

impl Bench {
    /// Sets up a run: a fresh temporary directory (kept when `keep`), the
    /// binaries from `bin_dir` copied into it, the report socket.
    pub fn new(bin_dir: &Path, plan: Plan, keep: bool) -> anyhow::Result<(Self, cleanup::Guard)> {
        let tmp = tempfile::Builder::new()
            .prefix("lrpm-bench.")
            .tempdir()
            .context("creating the run's temporary directory")?;
        let (dir, tmp) = if keep {
            let path = tmp.keep();
            eprintln!("lrpm-bench: keeping {}", path.display());
            (path, None)
        } else {
            (tmp.path().to_path_buf(), Some(tmp))
        };
        let guard = cleanup::install(&dir)?;
        let bin = dir.join("bin");
        fs::create_dir(&bin)?;
        let copy = |name: &str| -> anyhow::Result<PathBuf> {
            let from = bin_dir.join(name);
            if !from.is_file() {
                bail!(
                    "{} is missing: build it first with \
                     `cargo build --release -p lrpm -p lrpmctl -p lrpm-bench --bins` (bench/run does)",
                    from.display()
                );
            }
            let to = bin.join(name);
            fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
            Ok(to)
        };
        let bins = Binaries {
            lrpm: copy("lrpm")?,
            lrpmctl: copy("lrpmctl")?,
            worker: copy("lrpm-bench-worker")?,
            floor: copy("lrpm-bench-floor")?,
        };
        let collector = Collector::bind(&dir.join("hello.sock"))?;
        let nofile_hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
        Ok((
            Self {
                dir,
                _tmp: tmp,
                bins,
                collector,
                plan,
                nofile_hard,
                sessions: Cell::new(0),
            },
            guard,
        ))
    }

    /// A new, empty directory for one supervisor session, named after
    /// `what`.
    pub fn session_dir(&self, what: &str) -> anyhow::Result<PathBuf> {
        let n = self.sessions.get() + 1;
        self.sessions.set(n);
        let path = self.dir.join(format!("{what}-{n}"));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }

    /// The argv of job `id`'s worker.
    pub fn worker_argv(&self, id: usize, mode: WorkerMode) -> [String; 4] {
        [
            self.bins.worker.display().to_string(),
            self.collector.path().display().to_string(),
            id.to_string(),
            mode.as_str().to_owned(),
        ]
    }

    /// A command that runs job `id`'s worker directly, with no output.
    pub fn worker_command(&self, id: usize, mode: WorkerMode) -> Command {
        let [program, args @ ..] = self.worker_argv(id, mode);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// How lrpm, using `sizing` descriptors per worker, can be given enough
    /// descriptors for `jobs` workers.
    pub fn descriptors(&self, jobs: usize, sizing: Sizing) -> Descriptors {
        if jobs <= sizing.fit(self.nofile_hard) {
            return Descriptors::Fit;
        }
        let needed = (jobs as f64 * sizing.in_process).ceil() as u64 + FD_SLACK;
        let raised = needed.next_power_of_two().max(65_536);
        if can_raise_nofile(raised) {
            return Descriptors::Raise(raised);
        }
        Descriptors::Cap(sizing.fit(self.nofile_hard) / 1000 * 1000)
    }
}

/// lrpm's descriptors per worker, measured: in process (a pidfd and the
/// read ends of two pipes), and beyond half of its descriptor limit, where
/// lrpm hands the pipes to output hubs and keeps the pidfd.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    /// Per worker while lrpm forwards output itself.
    pub in_process: f64,
    /// Per worker beyond half of lrpm's limit.
    pub with_hubs: f64,
}

impl Sizing {
    /// The most workers lrpm runs with a descriptor limit of `limit`: in
    /// process up to half of it, then through hubs.
    pub fn fit(&self, limit: u64) -> usize {
        let half = limit / 2;
        let in_process = half.saturating_sub(FD_SLACK) as f64 / self.in_process.max(0.01);
        let beyond = (limit - half).saturating_sub(FD_SLACK) as f64 / self.with_hubs.max(0.01);
        (in_process + beyond) as usize
    }

    /// About how many descriptors lrpm needs for `jobs` workers with a
    /// descriptor limit of `limit`.
    pub fn needed(&self, jobs: usize, limit: u64) -> u64 {
        let half = limit / 2;
        let in_process = (half as f64 / self.in_process.max(0.01)) as usize;
        if jobs <= in_process {
            return (jobs as f64 * self.in_process) as u64;
        }
        half + ((jobs - in_process) as f64 * self.with_hubs) as u64
    }
}

/// Descriptors lrpm uses besides its workers' (its sockets, epoll, inotify,
/// log), with room to spare.
const FD_SLACK: u64 = 256;

/// How lrpm gets the descriptors a farm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptors {
    /// The current hard limit is enough.
    Fit,
    /// The harness raises lrpm's hard limit to this before exec.
    Raise(u64),
    /// The hard limit cannot be raised (not root, or no CAP_SYS_RESOURCE):
    /// this is the largest farm, in thousands, that fits.
    Cap(usize),
}

/// Why the hard descriptor limit cannot be raised here.
pub fn raise_obstacle() -> &'static str {
    if rustix::process::geteuid().is_root() {
        "root lacks CAP_SYS_RESOURCE here, as in many containers"
    } else {
        "only root may raise it"
    }
}

/// Whether a child may raise its hard descriptor limit to `hard`: tried
/// on `/bin/true`, since root without CAP_SYS_RESOURCE (a container) may
/// not.
fn can_raise_nofile(hard: u64) -> bool {
    let mut cmd = Command::new("/bin/true");
    cmd.stdin(Stdio::null());
    with_nofile(&mut cmd, hard);
    cmd.status().is_ok_and(|s| s.success())
}

/// Makes `cmd` set its hard descriptor limit to `hard` (and its soft one to
/// at most that) before exec; the spawn fails if it may not raise it.
pub fn with_nofile(cmd: &mut Command, hard: u64) {
    let current = getrlimit(Resource::Nofile).current;
    let limit = Rlimit {
        current: Some(current.map_or(hard, |soft| soft.min(hard))),
        maximum: Some(hard),
    };
    // SAFETY: the hook runs in the forked child before exec and makes one
    // raw system call (no allocation, no lock).
    unsafe {
        cmd.pre_exec(move || setrlimit(Resource::Nofile, limit).map_err(std::io::Error::from));
    }
}
