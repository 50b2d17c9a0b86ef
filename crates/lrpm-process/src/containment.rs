//! Containment: keeping hold of every process a job starts, including the
//! ones that leave its process group.
//!
//! # Theory of operation
//!
//! A job's worker runs in a process group of its own, and lrpm signals that
//! group. A process that calls `setsid` (a daemon's double fork) leaves the
//! group and would outlive its job. Two mechanisms close that gap:
//!
//! * **A cgroup v2 per run** ([`CgroupTree`], the default wherever it
//!   works). At start lrpm creates `lrpm-PID/` under its own cgroup (or
//!   under `--cgroup PATH`) and holds an `flock` on it for as long as it
//!   lives. Each spawn creates `lrpm-PID/job-ID-RUN/` and opens it; the
//!   child is cloned straight into it (`clone3` with `CLONE_INTO_CGROUP`)
//!   or, where the kernel refuses that, writes `0` to its `cgroup.procs`
//!   first thing ([`crate::spawn`]: one raw `write`), so it is in the cgroup
//!   before it runs a single instruction of the worker, and nothing it forks
//!   can be outside it. When the worker's main process
//!   ends, or when a stop escalates to SIGKILL, lrpm writes `1` to the
//!   cgroup's `cgroup.kill`: the kernel kills every process in it, escaped
//!   daemons included, atomically with respect to forks. The empty cgroup is
//!   then removed. A cgroup that its run left empty (nothing in its
//!   `cgroup.procs` once the main process ended) is not killed: it is
//!   handed to the job's next run if that starts in the same turn of
//!   lrpm's loop ([`RunCgroups::open_run`]), and removed otherwise. A
//!   cgroup once killed is never reused ([`JobCgroup::kill`]). A tree whose `flock` nobody holds belongs to an lrpm that
//!   died without cleaning up (SIGKILL): the next lrpm that starts beside it
//!   kills what is left in it and removes it. (That check and the creation
//!   of a tree happen under an `flock` on the parent, so two lrpm starting
//!   at once never take each other's new tree for a stale one.)
//! * **A subreaper** ([`Orphans`], the fallback). Without a writable cgroup
//!   v2 lrpm marks itself `PR_SET_CHILD_SUBREAPER`, so an orphaned
//!   descendant of a worker is re-parented to lrpm instead of init. On every
//!   SIGCHLD and after every job's end, lrpm lists its children, reaps the
//!   adopted ones that have ended, and kills each adopted one whose
//!   `LRPM_RUN_ID` (inherited from the worker's environment) names a run
//!   that has ended. An adopted process that scrubbed its environment
//!   cannot be attributed to a job: it runs until lrpm shuts down, when
//!   every adopted process is killed.
//!
//! Reaping adopted processes must never take the exit status of one of
//! lrpm's own children, which are reaped through their pidfds: the orphan
//! reaper lists children through `/proc` and waits for each by pid
//! (`waitid(P_PID)`), skipping every pid in the registry of own children
//! that [`crate::children`] keeps. It never calls `waitpid(-1)`.
//!
//! When lrpm is PID 1 (a container's init), orphans are re-parented to it
//! whatever the mode, so it reaps them in both modes.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lrpm_core::job::JobId;
use lrpm_core::supervisor::RunId;
use rustix::fs::FlockOperation;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

use crate::children;
use crate::procfs;

/// The environment variable that names a worker's run: `LRPM_PID.RUN`.
/// Every process the worker starts inherits it (unless it clears its
/// environment), which is how the subreaper fallback tells which job an
/// adopted process belongs to.
pub const RUN_ID_ENV: &str = "LRPM_RUN_ID";

/// The prefix of the directory of an lrpm's cgroup tree.
const TREE_PREFIX: &str = "lrpm-";

/// The magic number of a cgroup2 file system (`statfs`).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// How long removing a cgroup may be retried while its killed processes
/// finish dying.
const REMOVE_PATIENCE: Duration = Duration::from_secs(4);

/// Where job cgroups go (`--cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupChoice {
    /// Under lrpm's own cgroup, if cgroup v2 is there and writable; the
    /// subreaper otherwise.
    Auto,
    /// No cgroups: the subreaper.
    Off,
    /// Under this cgroup v2 directory; lrpm refuses to start if it cannot.
    Under(PathBuf),
}

impl std::str::FromStr for CgroupChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(CgroupChoice::Auto),
            "off" | "none" => Ok(CgroupChoice::Off),
            path if path.starts_with('/') => Ok(CgroupChoice::Under(PathBuf::from(path))),
            other => Err(format!(
                "expected auto, off, or the absolute path of a cgroup v2 directory, got {other:?}"
            )),
        }
    }
}

/// How the processes of jobs are contained, decided at start.
#[derive(Debug)]
pub struct Containment {
    /// The cgroup tree, when cgroups are used.
    pub cgroups: Option<CgroupTree>,
    /// How the cap of a run with a `memoryMax` is enforced; or why it
    /// cannot be (such jobs are then invalid, with that reason).
    pub memory: Result<MemoryLimits, String>,
    /// The orphan reaper, when lrpm is a subreaper or PID 1.
    pub orphans: Option<Orphans>,
}

impl Containment {
    /// Sets containment up as `choice` says, and logs what it chose. Fails
    /// only when an explicit `--cgroup PATH` cannot be used.
    pub fn setup(choice: &CgroupChoice) -> Result<Containment, String> {
        let pid_one = rustix::process::getpid().is_init();
        let cgroups = match choice {
            CgroupChoice::Off => {
                tracing::info!(
                    "cgroups are off (--cgroup off): a daemon that leaves its job's process \
                     group is killed when its job stops only if it kept LRPM_RUN_ID in its \
                     environment, otherwise when lrpm shuts down"
                );
                None
            }
            CgroupChoice::Under(parent) => Some(
                CgroupTree::create(parent)
                    .map_err(|e| format!("--cgroup {}: cannot use it: {e}", parent.display()))?,
            ),
            CgroupChoice::Auto => match own_cgroup_dir().and_then(|dir| CgroupTree::create(&dir)) {
                Ok(tree) => Some(tree),
                Err(e) => {
                    tracing::warn!(
                        "cannot use cgroup v2 ({e}): escaped daemons (setsid, double fork) \
                         cannot be tracked reliably; falling back to a subreaper, which kills \
                         them when their job stops only if they kept LRPM_RUN_ID in their \
                         environment, otherwise when lrpm shuts down"
                    );
                    None
                }
            },
        };
        if let Some(tree) = &cgroups {
            tracing::info!(
                "each job runs in a cgroup of its own under {}",
                tree.base().display()
            );
        }
        let subreaper = cgroups.is_none();
        if subreaper {
            if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
                tracing::warn!(
                    "cannot become a subreaper ({e}): daemons that escape their job are not \
                     tracked at all"
                );
            }
        }
        let orphans = (subreaper || pid_one).then(|| Orphans::new(subreaper));
        let memory = match &cgroups {
            None => Err("lrpm runs without its cgroup tree (see its start-up log)".to_owned()),
            Some(tree) => match tree.enable_memory() {
                Ok(()) => Ok(MemoryLimits::Unified),
                Err(v2) => MemoryTree::create()
                    .map(MemoryLimits::V1)
                    .map_err(|v1| format!("cgroup v2: {v2}; cgroup v1: {v1}")),
            },
        };
        match (&memory, &cgroups) {
            (Ok(MemoryLimits::Unified), Some(tree)) => tracing::info!(
                "jobs with memoryMax are capped by the memory.max of their cgroup under {}",
                tree.base().display()
            ),
            (Ok(MemoryLimits::V1(tree)), _) => tracing::info!(
                "jobs with memoryMax run in a cgroup v1 memory cgroup under {}",
                tree.runs.base().display()
            ),
            (Ok(MemoryLimits::Unified), None) => {}
            (Err(why), _) => tracing::info!("jobs with memoryMax are invalid: {why}"),
        }
        Ok(Containment {
            cgroups,
            memory,
            orphans,
        })
    }
}

impl Containment {
    /// Makes lrpm a subreaper, if it is not one, and reaps what it adopts
    /// from then on: worker hosts need it (their workers are re-parented
    /// to lrpm, see [`crate::hosted`]). With cgroups, adopted processes
    /// are only reaped (their cgroup kills them with their job).
    pub fn adopt_orphans(&mut self) -> io::Result<()> {
        if self.orphans.is_some() && self.cgroups.is_none() {
            return Ok(());
        }
        crate::hosted::become_subreaper()?;
        self.orphans
            .get_or_insert_with(|| Orphans::new(self.cgroups.is_none()));
        Ok(())
    }
}

/// Why a cgroup tree could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// lrpm's own cgroup v2 could not be found.
    #[error("{0}")]
    NotFound(String),
    /// A file system call failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel has no `cgroup.kill` (it is older than 5.14).
    #[error("{}: no cgroup.kill (Linux 5.14 or later is needed)", path.display())]
    NoKill {
        /// The directory that lacks it.
        path: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory of lrpm's own cgroup v2, from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`.
fn own_cgroup_dir() -> Result<PathBuf, CgroupError> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| CgroupError::NotFound(format!("{path}: {e}")))
    };
    let own = parse_own_cgroup(&read("/proc/self/cgroup")?)
        .ok_or_else(|| CgroupError::NotFound("lrpm is in no cgroup v2 hierarchy".into()))?;
    cgroup2_dir(&read("/proc/self/mountinfo")?, &own)
        .ok_or_else(|| CgroupError::NotFound(format!("no mounted cgroup2 file system shows {own}")))
}

/// The cgroup v2 path in the text of `/proc/self/cgroup` (the `0::PATH`
/// line).
fn parse_own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_end().to_owned())
        .filter(|path| path.starts_with('/'))
}

/// Where cgroup `own` is in the file system, given the text of
/// `/proc/self/mountinfo`: under the first cgroup2 mount whose root
/// contains it.
fn cgroup2_dir(mountinfo: &str, own: &str) -> Option<PathBuf> {
    cgroup_dir(mountinfo, own, |fs_type, _| fs_type == "cgroup2")
}

/// Where cgroup `own` is in the file system, given the text of
/// `/proc/self/mountinfo`: under the first mount for which `is_hierarchy`,
/// given its file system type and super options, holds, and whose root
/// contains it.
fn cgroup_dir(
    mountinfo: &str,
    own: &str,
    is_hierarchy: impl Fn(&str, &str) -> bool,
) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        let fs_type = right.next()?;
        let options = right.nth(1).unwrap_or("");
        if !is_hierarchy(fs_type, options) {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let root = unescape_mountinfo(fields.get(3)?);
        let mount_point = unescape_mountinfo(fields.get(4)?);
        let rest = if root == "/" {
            own
        } else {
            own.strip_prefix(root.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
        };
        let mut dir = PathBuf::from(mount_point);
        dir.extend(rest.split('/').filter(|part| !part.is_empty()));
        Some(dir)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup directory name of a job's run: `job-ID-RUN`, with the id cut
/// to 64 characters and every character but `[A-Za-z0-9_.-]` replaced by
/// `_` (the run number keeps names unique).
fn run_dir_name(job: &JobId, run: RunId) -> String {
    let id: String = job
        .as_str()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("job-{id}-{}", run.0)
}

/// lrpm's own cgroup tree: `PARENT/lrpm-PID/`, one child per live run.
#[derive(Debug)]
pub struct CgroupTree {
    /// `PARENT/lrpm-PID`, where the runs' cgroups go.
    runs: RunCgroups,
    /// The tree's directory, `flock`ed for as long as lrpm lives: a tree
    /// nobody holds is stale.
    _lock: File,
    /// Whether [`CgroupTree::close`] has run.
    closed: bool,
}

impl CgroupTree {
    /// Creates lrpm's tree under `parent`, after removing the trees that
    /// lrpm processes which died without cleaning up left there.
    pub fn create(parent: &Path) -> Result<CgroupTree, CgroupError> {
        let fs = rustix::fs::statfs(parent).map_err(|e| io_error(parent)(e.into()))?;
        // `f_type`'s integer type differs between architectures.
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        if u64::from(fs.f_type as u32) != CGROUP2_SUPER_MAGIC {
            return Err(CgroupError::NotFound(format!(
                "{} is not on a cgroup2 file system",
                parent.display()
            )));
        }
        warn_if_not_delegated(parent);
        // Two lrpm starting side by side must not take each other's new,
        // not yet locked tree for a stale one: cleaning up and creating
        // happen under a lock on the parent.
        let _parent_lock = lock_parent(parent);
        remove_stale_trees(parent);
        let pid = std::process::id();
        let mut last_error = None;
        for attempt in 0..10u32 {
            let name = match attempt {
                0 => format!("{TREE_PREFIX}{pid}"),
                n => format!("{TREE_PREFIX}{pid}.{n}"),
            };
            let base = parent.join(name);
            match std::fs::create_dir(&base) {
                Ok(()) => {}
                // Another lrpm with this pid, in another pid namespace: try
                // the next name. (A stale one was removed above.)
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    last_error = Some(io_error(&base)(e));
                    continue;
                }
                Err(e) => return Err(io_error(&base)(e)),
            }
            let lock = File::open(&base).map_err(io_error(&base))?;
            rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive)
                .map_err(|e| io_error(&base)(e.into()))?;
            if !base.join("cgroup.kill").exists() {
                let _ = std::fs::remove_dir(&base);
                return Err(CgroupError::NoKill { path: base });
            }
            return Ok(CgroupTree {
                runs: RunCgroups {
                    base: base.into(),
                    killable: true,
                },
                _lock: lock,
                closed: false,
            });
        }
        Err(last_error.unwrap_or_else(|| CgroupError::NotFound("no free tree name".into())))
    }

    /// The tree's directory.
    pub fn base(&self) -> &Path {
        self.runs.base()
    }

    /// Where the runs' cgroups go: a handle that spawning threads can keep.
    pub fn runs(&self) -> &RunCgroups {
        &self.runs
    }

    /// Turns the memory controller on for the runs' cgroups, so that a
    /// run's `memory.max` caps it ([`JobCgroup::limit_memory`]): `+memory`
    /// in the tree's `cgroup.subtree_control`, and first in its parent's
    /// when the parent has the controller but does not hand it down.
    ///
    /// cgroup v2 lets no process live in a cgroup (but the root) that hands
    /// a controller down. When lrpm is alone in the parent (a systemd
    /// service with `Delegate=yes`), it moves itself into a leaf,
    /// `PARENT/supervisor`, to free it, as systemd asks of delegated
    /// services; when other processes share the parent, this fails, with
    /// the reason.
    pub fn enable_memory(&self) -> Result<(), String> {
        let base = self.base();
        let parent = base.parent().ok_or("lrpm's cgroup tree has no parent")?;
        if !lists_memory(&parent.join("cgroup.controllers")) {
            return Err(format!(
                "{} has no memory controller (its cgroup.controllers)",
                parent.display()
            ));
        }
        if !lists_memory(&parent.join("cgroup.subtree_control")) {
            hand_down_memory(parent)?;
        }
        enable_memory_in(base).map_err(|e| {
            format!(
                "cannot write +memory to {}/cgroup.subtree_control: {e}",
                base.display()
            )
        })
    }

    /// Kills whatever is left in the tree and removes it. Runs at shutdown,
    /// once every worker has been reaped, and on drop.
    pub fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let left = kill_and_remove_tree(self.base());
        if left > 0 {
            tracing::warn!(
                "killed {left} processes left in {} at shutdown",
                self.base().display()
            );
        }
    }
}

/// Where the cgroups of an lrpm's runs go (`PARENT/lrpm-PID/`): a cheap
/// handle, shared with the threads that spawn (the `lanes` module).
#[derive(Debug, Clone)]
pub struct RunCgroups {
    base: Arc<Path>,
    /// Whether its cgroups have a `cgroup.kill` (cgroup v2): the memory
    /// cgroups of cgroup v1 ([`MemoryTree`]) have none, their processes
    /// are killed through their v2 cgroup.
    killable: bool,
}

impl RunCgroups {
    /// The tree's directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The cgroup of run `run` of `job`, which [`RunCgroups::create_run`]
    /// created: a run's path is built from the job and run ids when it is
    /// needed rather than kept, since a farm has thousands of runs.
    pub fn run(&self, job: &JobId, run: RunId) -> JobCgroup {
        JobCgroup {
            dir: self.base.join(run_dir_name(job, run)),
            killable: self.killable,
        }
    }

    /// Creates the cgroup of run `run` of `job`; returns it and its
    /// directory, opened for the child to be cloned into
    /// ([`crate::spawn`]).
    pub fn create_run(&self, job: &JobId, run: RunId) -> io::Result<(JobCgroup, OwnedFd)> {
        let dir = self.run(job, run).dir;
        std::fs::create_dir(&dir)?;
        match self.open_run(job, run) {
            Ok(opened) => Ok(opened),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Opens the existing cgroup named after run `named` of `job` (one
    /// that [`RunCgroups::create_run`] created for an earlier run of the
    /// job, killed and emptied since), for the job's next run to be cloned
    /// into: a restart reuses its job's cgroup rather than removing it and
    /// creating another (bench/README.md: a fresh cgroup costs the kernel
    /// its `mkdir`, the clone into it and its `rmdir`, all under the
    /// kernel's global cgroup lock).
    pub fn open_run(&self, job: &JobId, named: RunId) -> io::Result<(JobCgroup, OwnedFd)> {
        let dir = self.run(job, named).dir;
        let fd = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        Ok((
            JobCgroup {
                dir,
                killable: self.killable,
            },
            fd,
        ))
    }
}

/// How the cap of a run with a `memoryMax` is enforced.
#[derive(Debug)]
pub enum MemoryLimits {
    /// cgroup v2: the memory controller is on in lrpm's tree
    /// ([`CgroupTree::enable_memory`]), and a run's cap is the `memory.max`
    /// of its own cgroup ([`JobCgroup::limit_memory`]).
    Unified,
    /// cgroup v1 (a hybrid layout): a run also joins a memory cgroup of its
    /// own, with its limit, in lrpm's [`MemoryTree`].
    V1(MemoryTree),
}

impl MemoryLimits {
    /// The memory cgroups of cgroup v1, where runs with a cap go; `None`
    /// on cgroup v2, where a run's own cgroup holds its cap.
    pub fn v1_runs(&self) -> Option<&RunCgroups> {
        match self {
            MemoryLimits::Unified => None,
            MemoryLimits::V1(tree) => Some(tree.runs()),
        }
    }

    /// Removes what is left of the cgroup v1 memory tree, if there is one.
    /// Runs at shutdown, once every worker has been reaped.
    pub fn close(&mut self) {
        if let MemoryLimits::V1(tree) = self {
            tree.close();
        }
    }
}

/// lrpm's tree in cgroup v1's memory hierarchy, `MEMCG/lrpm-PID/` under
/// lrpm's own memory cgroup: where the memory controller is on cgroup v1
/// (a hybrid layout), a run with a `memoryMax` gets a memory cgroup of its
/// own there (`job-ID-RUN`, as in the v2 tree), with its limit, which its
/// worker joins before it executes its program. The v2 tree still contains
/// and kills the run's processes; this one only caps their memory.
#[derive(Debug)]
pub struct MemoryTree {
    /// `MEMCG/lrpm-PID`.
    runs: RunCgroups,
    /// The tree's directory, `flock`ed for as long as lrpm lives: a tree
    /// nobody holds is stale.
    _lock: File,
    /// Whether [`MemoryTree::close`] has run.
    closed: bool,
}

impl MemoryTree {
    /// Creates lrpm's tree under its own cgroup v1 memory cgroup, after
    /// removing the trees of lrpm processes that are gone; or says why
    /// there is none.
    pub fn create() -> Result<MemoryTree, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let Some(path) = parse_own_v1_memory(&own) else {
            return Err("the memory controller is not on cgroup v1 here".to_owned());
        };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let parent = cgroup_dir(&mountinfo, &path, |fs_type, options| {
            fs_type == "cgroup" && options.split(',').any(|o| o == "memory")
        })
        .ok_or_else(|| format!("lrpm's memory cgroup {path} is not mounted here"))?;
        remove_stale_memory_trees(&parent);
        let base = parent.join(format!("{TREE_PREFIX}{}", std::process::id()));
        match std::fs::create_dir(&base) {
            Ok(()) => {}
            // lrpm's pid was reused since a tree was left: it is empty or
            // its processes are this pid's predecessor's.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", base.display())),
        }
        let lock = File::open(&base)
            .and_then(|dir| {
                rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive)?;
                Ok(dir)
            })
            .map_err(|e| format!("cannot lock {}: {e}", base.display()))?;
        Ok(MemoryTree {
            runs: RunCgroups {
                base: base.into(),
                killable: false,
            },
            _lock: lock,
            closed: false,
        })
    }

    /// Where the runs' memory cgroups go: a handle that spawning threads
    /// can keep.
    pub fn runs(&self) -> &RunCgroups {
        &self.runs
    }

    /// Removes the runs' memory cgroups left and the tree. Runs at
    /// shutdown, once every worker has been reaped, and on drop.
    pub fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        remove_memory_tree(self.runs.base());
    }
}

impl Drop for MemoryTree {
    fn drop(&mut self) {
        self.close();
    }
}

/// lrpm's cgroup in cgroup v1's memory hierarchy, from the text of
/// `/proc/self/cgroup` (`4:memory:/process_api/ID`).
fn parse_own_v1_memory(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_end();
        (controllers.split(',').any(|c| c == "memory") && path.starts_with('/'))
            .then(|| path.to_owned())
    })
}

/// Removes the memory trees (`lrpm-PID`) under `parent` whose lrpm is gone
/// (their `flock` can be taken). Their processes were killed with their
/// v2 tree, so their cgroups are empty, or soon.
fn remove_stale_memory_trees(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(TREE_PREFIX)) {
            continue;
        }
        let path = entry.path();
        let Ok(dir) = File::open(&path) else { continue };
        if rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // Its lrpm is alive.
        }
        remove_memory_tree(&path);
    }
}

/// Removes the memory tree at `base`: its runs' cgroups, then itself.
fn remove_memory_tree(base: &Path) {
    if let Ok(entries) = std::fs::read_dir(base) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_blocking(&entry.path());
            }
        }
    }
    remove_blocking(base);
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        self.close();
    }
}

impl RunCgroups {
    /// Creates the cgroup v1 memory cgroup of run `run` of `job` with the
    /// limit `max` bytes (`memory.limit_in_bytes`, and
    /// `memory.memsw.limit_in_bytes` where swap is accounted, so that the
    /// cap holds swap too); returns it and its `cgroup.procs`, open for the
    /// child to join ([`crate::command::SpawnRequest::memory_cgroup`]).
    pub fn create_memory_run(
        &self,
        job: &JobId,
        run: RunId,
        max: u64,
    ) -> io::Result<(JobCgroup, OwnedFd)> {
        let cgroup = self.run(job, run);
        std::fs::create_dir(&cgroup.dir)?;
        let set_up = || -> io::Result<OwnedFd> {
            let limit = max.to_string();
            std::fs::write(cgroup.dir.join("memory.limit_in_bytes"), &limit)?;
            let memsw = cgroup.dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                std::fs::write(memsw, &limit)?;
            }
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(cgroup.dir.join("cgroup.procs"))?;
            Ok(procs.into())
        };
        match set_up() {
            Ok(procs) => Ok((cgroup, procs)),
            Err(e) => {
                let _ = std::fs::remove_dir(&cgroup.dir);
                Err(e)
            }
        }
    }
}

/// The leaf cgroup lrpm moves itself into when it must free its own
/// cgroup of processes ([`CgroupTree::enable_memory`]).
const SUPERVISOR_LEAF: &str = "supervisor";

/// Whether a cgroup's `cgroup.controllers` or `cgroup.subtree_control` at
/// `file` names the memory controller.
fn lists_memory(file: &Path) -> bool {
    std::fs::read_to_string(file).is_ok_and(|text| text.split_whitespace().any(|c| c == "memory"))
}

/// Writes `+memory` to the `cgroup.subtree_control` of `dir`.
fn enable_memory_in(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.subtree_control"), "+memory")
}

/// Makes `parent` (lrpm's own cgroup) hand the memory controller down; if
/// processes keep it from doing so and lrpm is the only one, moves lrpm into
/// the leaf [`SUPERVISOR_LEAF`] first.
fn hand_down_memory(parent: &Path) -> Result<(), String> {
    let cannot = |e: io::Error| {
        format!(
            "cannot write +memory to {}/cgroup.subtree_control: {e}",
            parent.display()
        )
    };
    match enable_memory_in(parent) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {}
        Err(e) => return Err(cannot(e)),
    }
    // Processes in `parent` keep it from handing a controller down.
    let own = std::process::id().to_string();
    let procs = std::fs::read_to_string(parent.join("cgroup.procs")).map_err(cannot)?;
    let others: Vec<&str> = procs.lines().filter(|pid| *pid != own).collect();
    if !others.is_empty() {
        let shown = others
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "{} holds processes other than lrpm (pids {shown}{}), and cgroup v2 lets a \
             cgroup with processes hand no controller down: run lrpm in a cgroup of its own \
             (systemd: Delegate=yes), or name an empty delegated one with --cgroup PATH",
            parent.display(),
            if others.len() > 5 { ", …" } else { "" },
        ));
    }
    let leaf = parent.join(SUPERVISOR_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
    }
    // "0": the writer, every thread of it.
    std::fs::write(leaf.join("cgroup.procs"), "0")
        .map_err(|e| format!("cannot move lrpm into {}: {e}", leaf.display()))?;
    tracing::info!(
        "moved lrpm into {} so that {} can hand the memory controller to its jobs' cgroups \
         (cgroup v2 allows no process in a cgroup that does)",
        leaf.display(),
        parent.display()
    );
    enable_memory_in(parent).map_err(cannot)
}

/// Warns when `parent` looks like a systemd unit's cgroup that was not
/// delegated to lrpm (`Delegate=yes`), which systemd asks for before a
/// service creates cgroups of its own.
fn warn_if_not_delegated(parent: &Path) {
    let name = parent.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !(name.ends_with(".service") || name.ends_with(".scope")) {
        return;
    }
    let mut buf = [0u8; 8];
    let delegated = ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|attr| rustix::fs::getxattr(parent, *attr, &mut buf[..]).is_ok());
    if !delegated {
        tracing::warn!(
            "{} is a systemd unit's cgroup that does not say it was delegated: set \
             Delegate=yes in the unit (or run lrpm with --cgroup off)",
            parent.display()
        );
    }
}

/// How long [`lock_parent`] waits for another lrpm to finish creating its
/// tree.
const PARENT_LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// Takes an exclusive `flock` on the parent cgroup, which lrpm holds only
/// while it removes stale trees and creates and locks its own. Gives up
/// after [`PARENT_LOCK_PATIENCE`] (a lock held that long is not an lrpm's):
/// the race it closes is then possible again, nothing worse.
fn lock_parent(parent: &Path) -> Option<File> {
    let dir = File::open(parent).ok()?;
    let deadline = std::time::Instant::now() + PARENT_LOCK_PATIENCE;
    loop {
        match rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Some(dir),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                tracing::warn!(
                    "cannot lock {} to clean up stale lrpm cgroups: {e}",
                    parent.display()
                );
                return None;
            }
        }
    }
}

/// Removes the trees of lrpm processes that are gone: a tree whose `flock`
/// can be taken, while the parent is locked ([`lock_parent`]), has no live
/// owner.
fn remove_stale_trees(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(TREE_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(dir) = File::open(&path) else { continue };
        if rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // Its lrpm is alive.
        }
        let killed = kill_and_remove_tree(&path);
        tracing::warn!(
            "removed {}, left by an lrpm that did not shut down cleanly; killed the {killed} \
             processes of its jobs still in it",
            path.display()
        );
    }
}

/// Kills every process of lrpm's tree at `base` (`PARENT/lrpm-PID`), and
/// removes its cgroups once their processes are gone, as
/// [`CgroupTree::close`] would have: what the guardian does when its lrpm
/// died. Returns how many processes were in it. Blocks for a moment
/// (at most a few seconds) while the killed processes die.
pub fn kill_dead_tree(base: &Path) -> usize {
    kill_and_remove_tree(base)
}

/// SIGKILLs every process of the tree at `base`, all at once and escaped
/// daemons included (`cgroup.kill`), and leaves the cgroups in place for
/// their lrpm, which is alive: what the guardian does when lrpm's
/// heartbeat is late. Returns how many processes were in it.
pub fn kill_tree_processes(base: &Path) -> io::Result<usize> {
    let count = tree_process_count(base);
    std::fs::write(base.join("cgroup.kill"), "1")?;
    Ok(count)
}

/// How many processes the cgroups of the tree at `base` hold (the tree's
/// own and its runs').
fn tree_process_count(base: &Path) -> usize {
    let procs = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.procs")).map_or(0, |procs| procs.lines().count())
    };
    let runs = std::fs::read_dir(base).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| procs(&e.path()))
            .sum()
    });
    procs(base) + runs
}

/// How long [`kill_runs_of`] goes on looking for processes of lrpm's runs
/// (ones that fork while it kills, ones that do not die at once).
const RUN_KILL_PATIENCE: Duration = Duration::from_secs(2);

/// SIGKILLs every process on the machine whose environment carries a run
/// id of lrpm `lrpm` (`LRPM_RUN_ID=LRPM.RUN`), daemons that left their
/// job's process group included: what the guardian kills without cgroups.
/// Scans `/proc` again until a scan finds none (a process may fork while
/// its siblings die), for at most [`RUN_KILL_PATIENCE`]. Returns how many
/// processes were signalled.
///
/// Each process is opened as a pidfd before its environment is read and
/// signalled through that pidfd, so a pid reused in between can never
/// make it kill a stranger. A process that cleared its environment is not
/// found (see the module documentation).
pub fn kill_runs_of(lrpm: u32) -> usize {
    let prefix = format!("{RUN_ID_ENV}={lrpm}.");
    let me = std::process::id();
    let deadline = std::time::Instant::now() + RUN_KILL_PATIENCE;
    let mut killed = std::collections::HashSet::new();
    loop {
        let mut found = 0;
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return killed.len();
        };
        let pids = procs
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| u32::try_from(*pid).is_ok_and(|pid| pid != me && pid != lrpm))
            .filter_map(Pid::from_raw);
        for pid in pids {
            let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            else {
                continue;
            };
            let Ok(environ) = std::fs::read(format!("/proc/{}/environ", pid.as_raw_nonzero()))
            else {
                continue;
            };
            let ours = environ
                .split(|b| *b == 0)
                .any(|var| var.starts_with(prefix.as_bytes()));
            if ours && rustix::process::pidfd_send_signal(&pidfd, Signal::KILL).is_ok() {
                found += 1;
                killed.insert(pid);
            }
        }
        if found == 0 || std::time::Instant::now() >= deadline {
            return killed.len();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills every process of the tree at `base` and removes its cgroups,
/// waiting a moment for the killed processes to die. Returns how many
/// processes were in it.
fn kill_and_remove_tree(base: &Path) -> usize {
    let runs: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    let count: usize = runs
        .iter()
        .map(|dir| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .map(|procs| procs.lines().count())
                .unwrap_or(0)
        })
        .sum();
    // Killing the tree kills every cgroup below it.
    let _ = std::fs::write(base.join("cgroup.kill"), "1");
    for dir in runs.iter().map(PathBuf::as_path).chain([base]) {
        remove_blocking(dir);
    }
    count
}

/// Removes the (killed) cgroup `dir`, retrying for a moment while its
/// processes finish dying. Blocking: for start and shutdown only.
fn remove_blocking(dir: &Path) {
    let deadline = std::time::Instant::now() + REMOVE_PATIENCE;
    let mut pause = Duration::from_millis(1);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if std::time::Instant::now() >= deadline => {
                tracing::warn!("cannot remove the cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// The cgroup of one run of a job.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
    /// Whether it has a `cgroup.kill` ([`RunCgroups`]).
    killable: bool,
}

impl JobCgroup {
    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many processes of the cgroup the kernel's OOM killer killed:
    /// `oom_kill` of its `memory.events` (cgroup v2) or
    /// `memory.oom_control` (cgroup v1); 0 when neither can be read.
    pub fn oom_kills(&self) -> u64 {
        ["memory.events", "memory.oom_control"]
            .iter()
            .find_map(|file| std::fs::read_to_string(self.dir.join(file)).ok())
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Caps the cgroup's memory at `max` bytes before any process joins
    /// it (cgroup v2): `memory.max`, and `memory.swap.max` 0 where swap is
    /// accounted, so that the cap holds swap too.
    pub fn limit_memory(&self, max: u64) -> io::Result<()> {
        std::fs::write(self.dir.join("memory.max"), max.to_string())?;
        match std::fs::write(self.dir.join("memory.swap.max"), "0") {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            written => written,
        }
    }

    /// Whether a live process is left in the cgroup: its `cgroup.procs`
    /// lists one. A process whose threads have all exited is not listed,
    /// even before the kernel has unlinked it from the cgroup (which
    /// `populated` of `cgroup.events` waits for: the pidfd of a run's
    /// process may wake lrpm before that). `None` when it cannot be read.
    pub fn holds_processes(&self) -> Option<bool> {
        let text = std::fs::read(self.dir.join("cgroup.procs")).ok()?;
        Some(text.iter().any(u8::is_ascii_digit))
    }

    /// SIGKILLs every process in the cgroup, escaped daemons included.
    ///
    /// A cgroup once killed must not be cloned into again: the kernel
    /// SIGKILLs every process cloned into it afterwards (`CLONE_INTO_CGROUP`,
    /// seen on Linux 6.18), so such a cgroup is never reused for a job's
    /// next run (`lrpm`'s `ProcessTable::reap`).
    pub fn kill(&self) {
        if !self.killable {
            return;
        }
        if let Err(e) = std::fs::write(self.dir.join("cgroup.kill"), "1") {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot kill the cgroup {}: {e}", self.dir.display());
            }
        }
    }

    /// Removes the cgroup of a run whose main process has ended and been
    /// reaped, without killing it first: at once when nothing is left in
    /// it (a cgroup with a live process cannot be removed), which saves
    /// writing `cgroup.kill`; otherwise what is left (an escaped daemon) is
    /// killed and the cgroup removed once it has died ([`JobCgroup::remove`]).
    pub fn clear(self) {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => {}
        }
        self.kill();
        self.remove();
    }

    /// [`JobCgroup::clear`] without waiting, for a thread that must not
    /// sleep (the [`Sweeper`]): removes the cgroup when nothing is left in
    /// it; otherwise kills what is left and leaves the cgroup to
    /// [`CgroupTree::close`], which removes it once its processes have
    /// died.
    pub fn clear_or_kill(self) {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => self.kill(),
        }
    }

    /// Removes the cgroup, which must have been killed. Its processes may
    /// still be dying, so a busy cgroup is removed by a task that retries
    /// for a few seconds; outside a runtime, removal blocks instead.
    pub fn remove(self) {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => {}
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            remove_blocking(&self.dir);
            return;
        };
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + REMOVE_PATIENCE;
            let mut pause = Duration::from_millis(2);
            loop {
                tokio::time::sleep(pause).await;
                match std::fs::remove_dir(&self.dir) {
                    Ok(()) => return,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        // A process stuck in the kernel (uninterruptible
                        // sleep) does not die; the cgroup is removed at
                        // shutdown if it is empty by then.
                        tracing::warn!(
                            "cannot remove the cgroup {}: {e}; a process in it does not die",
                            self.dir.display()
                        );
                        return;
                    }
                    Err(_) => {
                        // Kill again: a process may have been mid-fork.
                        self.kill();
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                }
            }
        });
    }
}

/// How many ended runs' cgroups wait for the [`Sweeper`] at most; beyond
/// that the event loop removes them itself.
const SWEEP_QUEUE: usize = 1024;

/// Removes the cgroups of the runs that end during a shutdown on a thread
/// of its own, so that their `rmdir` (the kernel's teardown of a cgroup,
/// tens of µs each, most of what a shutdown costs lrpm beyond the
/// workers' own exits: bench/README.md) runs beside the event loop's
/// reaps instead of after them.
///
/// Its queue is bounded: a cgroup it cannot take is handed back, and the
/// caller removes it itself ([`JobCgroup::clear`]). A cgroup that is not
/// empty (an escaped daemon) is killed and left in place; the tree's
/// [`CgroupTree::close`], after [`Sweeper::finish`], removes it once its
/// processes have died. [`Sweeper::pending`] says whether cgroups are
/// still queued or being removed: until then their jobs are not gone.
#[derive(Debug)]
pub struct Sweeper {
    queue: Option<std::sync::mpsc::SyncSender<JobCgroup>>,
    /// Cgroups queued and not yet removed (or given up on).
    pending: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sweeper {
    /// Starts the sweeping thread.
    pub fn start() -> io::Result<Sweeper> {
        let (queue, cgroups) = std::sync::mpsc::sync_channel::<JobCgroup>(SWEEP_QUEUE);
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = pending.clone();
        let thread = std::thread::Builder::new()
            .name("lrpm-sweeper".into())
            .spawn(move || {
                for cgroup in cgroups {
                    cgroup.clear_or_kill();
                    done.fetch_sub(1, std::sync::atomic::Ordering::Release);
                }
            })?;
        Ok(Sweeper {
            queue: Some(queue),
            pending,
            thread: Some(thread),
        })
    }

    /// Queues `cgroup` (its run ended and was reaped) for removal; hands
    /// it back when the queue is full or the thread is gone.
    pub fn sweep(&self, cgroup: JobCgroup) -> Result<(), JobCgroup> {
        let Some(queue) = &self.queue else {
            return Err(cgroup);
        };
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match queue.try_send(cgroup) {
            Ok(()) => Ok(()),
            Err(
                std::sync::mpsc::TrySendError::Full(cgroup)
                | std::sync::mpsc::TrySendError::Disconnected(cgroup),
            ) => {
                self.pending
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                Err(cgroup)
            }
        }
    }

    /// Whether cgroups handed to [`Sweeper::sweep`] are still to be removed.
    pub fn pending(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Waits until every queued cgroup has been dealt with, and ends the
    /// thread.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the cgroup sweeper panicked");
            }
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of [`RUN_ID_ENV`] for run `run` of this lrpm.
pub fn run_id_value(run: RunId) -> String {
    format!("{}.{}", std::process::id(), run.0)
}

/// The reaper of adopted processes: descendants of workers whose parent
/// died, which the kernel re-parents to lrpm when it is a subreaper or
/// PID 1.
#[derive(Debug)]
pub struct Orphans {
    /// Whether adopted processes of ended runs are killed (the subreaper
    /// fallback); otherwise they are only reaped (PID 1 with cgroups, which
    /// kill them).
    cull: bool,
    /// lrpm's pid, as it appears in [`RUN_ID_ENV`].
    lrpm: u32,
    /// Adopted processes already reported as impossible to attribute.
    reported: HashSet<i32>,
    /// The rate limit of those reports.
    warnings: WarningBudget,
}

/// How many processes that cannot be attributed are reported one by one in
/// a [`WARNING_WINDOW`]; the rest of the window's are counted and reported
/// in one line when the next window opens.
const WARNINGS_PER_WINDOW: u32 = 10;
/// The window of [`WARNINGS_PER_WINDOW`].
const WARNING_WINDOW: Duration = Duration::from_secs(60);

/// The rate limit of the "left its job" warning.
#[derive(Debug)]
struct WarningBudget {
    /// When the current window opened.
    since: std::time::Instant,
    /// Warnings written in it.
    written: u32,
    /// Warnings held back in it.
    held: u32,
}

impl WarningBudget {
    fn new() -> Self {
        Self {
            since: std::time::Instant::now(),
            written: 0,
            held: 0,
        }
    }

    /// Whether one more warning may be written now; opening a new window
    /// reports what the last one held back.
    fn take(&mut self) -> bool {
        if self.since.elapsed() >= WARNING_WINDOW {
            self.report_held();
            *self = Self::new();
        }
        if self.written < WARNINGS_PER_WINDOW {
            self.written += 1;
            true
        } else {
            self.held += 1;
            false
        }
    }

    fn report_held(&self) {
        if self.held > 0 {
            tracing::warn!(
                "{} more processes left their jobs without {RUN_ID_ENV} in the last {}s \
                 (not listed one by one)",
                self.held,
                WARNING_WINDOW.as_secs()
            );
        }
    }
}

/// What [`RUN_ID_ENV`] says about an adopted process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A run of this lrpm.
    Run(RunId),
    /// Another lrpm's run (a nested lrpm that died).
    Foreign,
    /// Nothing: its environment was cleared, or cannot be read.
    Unknown,
    /// Not known yet: it is exiting (its memory, environment included, is
    /// gone, and it is reaped once it has ended) or in the middle of an
    /// `execve`; a later pass looks again.
    Ending,
}

impl Orphans {
    /// Whether it kills the adopted processes of ended runs (the subreaper
    /// fallback), not only reaps the adopted ones that have ended.
    pub fn culls(&self) -> bool {
        self.cull
    }

    fn new(cull: bool) -> Self {
        Self {
            cull,
            lrpm: std::process::id(),
            reported: HashSet::new(),
            warnings: WarningBudget::new(),
        }
    }

    /// Reaps every adopted process that has ended and, in the subreaper
    /// fallback, kills every one whose run is not `live`.
    pub fn reap(&mut self, live: impl Fn(RunId) -> bool) {
        for pid in children() {
            if children::is_own_child(pid) {
                continue;
            }
            match rustix::process::waitid(
                WaitId::Pid(pid),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(Some(_)) => {
                    self.reported.remove(&pid.as_raw_nonzero().get());
                    continue;
                }
                Ok(None) => {}
                // Not a child any more: nothing to do.
                Err(_) => continue,
            }
            if !self.cull {
                continue;
            }
            match self.origin(pid) {
                Origin::Run(run) if live(run) => {}
                Origin::Run(_) | Origin::Foreign => kill_adopted(pid),
                Origin::Ending => {}
                Origin::Unknown => {
                    if self.reported.insert(pid.as_raw_nonzero().get()) && self.warnings.take() {
                        tracing::warn!(
                            pid = pid.as_raw_nonzero().get(),
                            "process {} ({}) left its job and has no {RUN_ID_ENV} in its \
                             environment: it cannot be tracked, and runs until lrpm shuts down",
                            pid.as_raw_nonzero().get(),
                            comm(pid)
                        );
                    }
                }
            }
        }
    }

    /// Kills every adopted process and reaps them all, waiting a moment for
    /// them to die. Runs at shutdown, once every worker is reaped.
    pub fn kill_all(&mut self) {
        let deadline = std::time::Instant::now() + REMOVE_PATIENCE;
        loop {
            let adopted: Vec<Pid> = children()
                .into_iter()
                .filter(|pid| !children::is_own_child(*pid))
                .collect();
            if adopted.is_empty() || std::time::Instant::now() >= deadline {
                return;
            }
            for pid in &adopted {
                kill_adopted(*pid);
            }
            std::thread::sleep(Duration::from_millis(5));
            self.reap(|_| false);
        }
    }

    /// Which run an adopted process comes from, by the [`RUN_ID_ENV`] in its
    /// environment.
    ///
    /// A process that is exiting (killed as one of an ended run's, or ending
    /// by itself) has no memory left, so its `environ` reads empty until it
    /// is a zombie that the next pass reaps: it is [`Origin::Ending`], not
    /// a process that cleared its environment; so is one whose environment
    /// lacks the variable for a moment ([`Orphans::unattributed`]).
    fn origin(&self, pid: Pid) -> Origin {
        let environ = match std::fs::read(format!("/proc/{}/environ", pid.as_raw_nonzero())) {
            Ok(environ) => environ,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Origin::Unknown,
            Err(_) => return Origin::Ending,
        };
        // A read cut short (the memory going away under it) does not end
        // with a NUL.
        if environ.last().is_some_and(|b| *b != 0) || (environ.is_empty() && !has_memory(pid)) {
            return Origin::Ending;
        }
        let prefix = format!("{RUN_ID_ENV}=");
        let value = environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(prefix.as_bytes()));
        let Some(value) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
            return self.unattributed(pid);
        };
        match value.split_once('.') {
            Some((lrpm, run)) if lrpm.parse() == Ok(self.lrpm) => run
                .parse()
                .map_or(Origin::Foreign, |run| Origin::Run(RunId(run))),
            _ => Origin::Foreign,
        }
    }
}

impl Orphans {
    /// An adopted process whose environment held no [`RUN_ID_ENV`]. A
    /// process in the middle of its exit or of an `execve` can read so
    /// (its old memory going away under the read), so it is
    /// [`Origin::Unknown`] only if it still has its memory and a second
    /// read, whole, still holds no [`RUN_ID_ENV`].
    fn unattributed(&self, pid: Pid) -> Origin {
        if !has_memory(pid) {
            return Origin::Ending;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{}/environ", pid.as_raw_nonzero())) else {
            return Origin::Ending;
        };
        let prefix = format!("{RUN_ID_ENV}=");
        let whole = environ.last().is_none_or(|b| *b == 0);
        let has_run_id = environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(prefix.as_bytes()));
        // In the middle of an `execve`, the new memory has neither its
        // arguments nor its environment yet: both read empty.
        let exec_under_way = environ.is_empty()
            && std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero()))
                .is_ok_and(|cmdline| cmdline.is_empty());
        if whole && !has_run_id && !exec_under_way && has_memory(pid) {
            Origin::Unknown
        } else {
            Origin::Ending
        }
    }
}

/// Whether process `pid` still has its memory (the first field of
/// `/proc/PID/statm`, its size, is 0 once it is exiting or a zombie).
fn has_memory(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/statm", pid.as_raw_nonzero())).is_ok_and(|statm| {
        statm
            .split_whitespace()
            .next()
            .is_some_and(|size| size != "0")
    })
}

/// SIGKILLs adopted process `pid`, and its process group if it leads one.
/// Safe from pid reuse: `pid` is an unreaped child of lrpm.
fn kill_adopted(pid: Pid) {
    if rustix::process::getpgid(Some(pid)).is_ok_and(|pgid| pgid == pid) {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
    let _ = rustix::process::kill_process(pid, Signal::KILL);
}

/// The command name of process `pid`, for the log.
fn comm(pid: Pid) -> String {
    std::fs::read_to_string(format!("/proc/{}/comm", pid.as_raw_nonzero()))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// lrpm's children: from `/proc/self/task/*/children`, or, on a kernel
/// without it, from the parent pid of every process.
fn children() -> Vec<Pid> {
    let parse = |text: &str| -> Vec<Pid> {
        text.split_whitespace()
            .filter_map(|p| p.parse().ok().and_then(Pid::from_raw))
            .collect()
    };
    let mut found = Vec::new();
    let mut have_children_files = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                have_children_files = true;
                found.extend(parse(&text));
            }
        }
    }
    if have_children_files {
        return found;
    }
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            u32::try_from(*pid)
                .ok()
                .and_then(procfs::read_stat)
                .is_some_and(|stat| stat.ppid == me)
        })
        .filter_map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweeper_removes_what_is_empty_and_leaves_the_rest() {
        // Plain directories stand for cgroups: `rmdir` treats both alike,
        // and one that holds something cannot be removed.
        let tmp = tempfile::tempdir().expect("temporary directory");
        let cgroup = |name: &str| JobCgroup {
            dir: tmp.path().join(name),
            killable: false,
        };
        let sweeper = Sweeper::start().expect("the sweeper's thread starts");
        for name in ["a", "b", "busy"] {
            std::fs::create_dir(tmp.path().join(name)).expect("mkdir");
        }
        std::fs::write(tmp.path().join("busy/pid"), "1").expect("a file in busy");
        for name in ["a", "b", "busy", "gone"] {
            assert!(sweeper.sweep(cgroup(name)).is_ok(), "{name} queued");
        }
        sweeper.finish();
        assert!(!tmp.path().join("a").exists());
        assert!(!tmp.path().join("b").exists());
        // Left for the tree's close, which removes it once it is empty.
        assert!(tmp.path().join("busy/pid").exists());
    }

    #[test]
    fn the_sweeper_is_pending_until_every_cgroup_is_dealt_with() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let sweeper = Sweeper::start().expect("the sweeper's thread starts");
        assert!(!sweeper.pending());
        // Nothing to remove: the thread is done with it at once.
        let missing = JobCgroup {
            dir: tmp.path().join("missing"),
            killable: false,
        };
        assert!(sweeper.sweep(missing).is_ok());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while sweeper.pending() {
            assert!(std::time::Instant::now() < deadline, "still pending");
            std::thread::sleep(Duration::from_millis(1));
        }
        sweeper.finish();
    }

    #[test]
    fn own_cgroup_is_the_v2_line() {
        let text = "12:memory:/x\n1:name=systemd:/y\n0::/system.slice/lrpm.service\n";
        assert_eq!(
            parse_own_cgroup(text).as_deref(),
            Some("/system.slice/lrpm.service")
        );
        assert_eq!(parse_own_cgroup("4:memory:/x\n"), None);
        assert_eq!(parse_own_cgroup("0::/\n").as_deref(), Some("/"));
    }

    const HYBRID: &str = "\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
27 26 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
28 26 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";

    #[test]
    fn the_v1_memory_cgroup_is_found_in_a_hybrid_layout() {
        let own = "9:name=systemd:/\n5:devices:/\n4:memory:/process_api/x\n0::/\n";
        assert_eq!(parse_own_v1_memory(own).as_deref(), Some("/process_api/x"));
        let joint = "3:cpu,memory:/a b\n0::/\n";
        assert_eq!(parse_own_v1_memory(joint).as_deref(), Some("/a b"));
        assert_eq!(parse_own_v1_memory("0::/\n4:memory_x:/y\n"), None);
        let memory = |fs_type: &str, options: &str| {
            fs_type == "cgroup" && options.split(',').any(|o| o == "memory")
        };
        assert_eq!(
            cgroup_dir(HYBRID, "/process_api/x", memory),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/x"))
        );
        assert_eq!(
            cgroup_dir(&HYBRID[..HYBRID.find("28 ").unwrap_or(0)], "/", memory),
            None
        );
    }

    #[test]
    fn the_cgroup2_mount_is_found_in_a_hybrid_layout() {
        assert_eq!(
            cgroup2_dir(HYBRID, "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_dir(HYBRID, "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a/b"))
        );
        assert_eq!(
            cgroup2_dir("27 26 0:24 / /x rw - cgroup cgroup rw\n", "/"),
            None
        );
    }

    #[test]
    fn a_mount_of_a_subtree_is_used_only_for_what_it_shows() {
        let info = "40 1 0:30 /system.slice /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_dir(info, "/system.slice/lrpm.service"),
            Some(PathBuf::from("/mnt/my cg/lrpm.service"))
        );
        assert_eq!(cgroup2_dir(info, "/user.slice"), None);
        assert_eq!(cgroup2_dir(info, "/system.slicex"), None);
    }

    #[test]
    fn run_directories_are_safe_names() {
        assert_eq!(
            run_dir_name(&JobId::from("mail-1"), RunId(7)),
            "job-mail-1-7"
        );
        assert_eq!(
            run_dir_name(&JobId::from("../a b/é"), RunId(0)),
            "job-.._a_b__-0"
        );
        let long = "x".repeat(300);
        assert_eq!(
            run_dir_name(&JobId::from(long.as_str()), RunId(1)).len(),
            4 + 64 + 2
        );
    }

    #[test]
    fn cgroup_choices() {
        assert_eq!("auto".parse(), Ok(CgroupChoice::Auto));
        assert_eq!("off".parse(), Ok(CgroupChoice::Off));
        assert_eq!(
            "/sys/fs/cgroup/lrpm".parse(),
            Ok(CgroupChoice::Under(PathBuf::from("/sys/fs/cgroup/lrpm")))
        );
        assert!("relative/path".parse::<CgroupChoice>().is_err());
    }

    #[test]
    fn children_lists_a_child_of_this_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("spawn sleep");
        let pid = Pid::from_raw(child.id() as i32).expect("pid");
        let found = children().contains(&pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found);
    }
}
