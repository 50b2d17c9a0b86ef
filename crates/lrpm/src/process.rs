//! Worker processes: spawning, signalling and reaping.
//!
//! # Theory of operation
//!
//! Every worker is spawned by [`crate::spawn`] (a vfork-style `clone`
//! whose cost does not grow with the farm) in a process group of its own,
//! with stdin from `/dev/null`, its stdout and stderr piped to lrpm, its
//! identity switched (`user`/`group`), a parent-death SIGKILL armed and the
//! descriptor limit lrpm raised for itself put back. This module prepares
//! what the child needs ([`SpawnRequest`] → argv, environment, the `PATH`
//! candidates) and turns a child's failure into a [`SpawnError`].
//!
//! The clone returns the child's pidfd. The pidfd is what makes this
//! race-free: while the child is not reaped its pid, and so its
//! process-group id, cannot be reused, and lrpm reaps a child only in
//! [`ProcessTable::reap`], which it calls when the pidfd becomes readable. A
//! signal for a process already reaped finds no entry in the table and is
//! dropped; lrpm never signals a stranger.
//!
//! The pidfds are watched by one epoll set (`exits.rs`), not by a
//! task each: [`ProcessTable::next_exit`] hands out the runs whose pidfd
//! became readable.
//!
//! Reaping kills what is left of the worker's process group first, so a
//! restarted job can never meet the grandchildren of its previous run. With
//! cgroups ([`crate::containment`]) each run also has a cgroup of its own,
//! which the child joins before anything else; reaping and a stop's
//! SIGKILL kill the whole cgroup, so a daemon that left the process group
//! dies with its job too.
//!
//! Every child spawned here is recorded in a process-wide registry until it
//! is reaped ([`is_own_child`]), so that the orphan reaper of
//! [`crate::containment`] never takes the exit status of a child that lrpm
//! reaps through its pidfd.
//!
//! Architecture invariant: only the supervisor's main thread spawns, because
//! the parent-death signal fires when the *thread* that spawned exits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Instant;

use lrpm_core::job::{JobId, JobSpec, Program, Signal};
use lrpm_core::status::ExitStatus;
use lrpm_core::supervisor::RunId;
use rustix::pipe::PipeFlags;
use rustix::process::{
    Pid, Resource, Rlimit, WaitId, WaitIdOptions, getpgid, getrlimit, kill_process_group,
    pidfd_send_signal, setrlimit,
};

use crate::containment::{self, Containment};
use crate::output::Output;
use crate::spawn;

/// The pids of lrpm's children that are reaped through their pidfds.
static OWN_CHILDREN: LazyLock<Mutex<HashSet<i32>>> = LazyLock::new(Default::default);

fn own_children() -> std::sync::MutexGuard<'static, HashSet<i32>> {
    // The set stays consistent whatever panicked while holding it.
    OWN_CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `pid` is a child that lrpm spawned and has not reaped yet: the
/// orphan reaper must leave its exit status to its pidfd.
pub fn is_own_child(pid: Pid) -> bool {
    own_children().contains(&pid.as_raw_nonzero().get())
}

/// Records `pid`, a child that lrpm spawned outside [`spawn_command`] (an
/// output hub), as an own child until it is reaped through its pidfd.
pub fn register_own_child(pid: Pid) {
    own_children().insert(pid.as_raw_nonzero().get());
}

/// Forgets `pid` as an own child: it was reaped by other means.
pub fn forget_own_child(pid: Pid) {
    own_children().remove(&pid.as_raw_nonzero().get());
}

/// Waits for child `pid`, which has ended or was just SIGKILLed, to end,
/// reaps it through its `pidfd`, and forgets it as an own child.
pub fn reap_child_blocking(pid: Pid, pidfd: BorrowedFd<'_>) {
    let _ = rustix::process::waitid(WaitId::PidFd(pidfd), WaitIdOptions::EXITED);
    own_children().remove(&pid.as_raw_nonzero().get());
}

/// Reaps the finished child `pid` through its `pidfd`, and forgets it as an
/// own child. Returns how it ended, or `None` if it has not finished.
pub fn reap_child(pid: Pid, pidfd: BorrowedFd<'_>) -> Option<ExitStatus> {
    let status = waitid_status(pidfd, WaitIdOptions::empty())?;
    own_children().remove(&pid.as_raw_nonzero().get());
    Some(status)
}

/// Maps a core signal to the platform's.
pub fn to_rustix(signal: Signal) -> rustix::process::Signal {
    use rustix::process::Signal as S;
    match signal {
        Signal::Hup => S::HUP,
        Signal::Int => S::INT,
        Signal::Quit => S::QUIT,
        Signal::Kill => S::KILL,
        Signal::Usr1 => S::USR1,
        Signal::Usr2 => S::USR2,
        Signal::Alrm => S::ALARM,
        Signal::Term => S::TERM,
        Signal::Winch => S::WINCH,
    }
}

/// Settings shared by every spawn.
#[derive(Debug, Clone)]
pub struct SpawnContext {
    /// lrpm's pid: a child whose parent is already someone else by the time
    /// it arms its parent-death signal gives up.
    pub parent: Pid,
    /// The descriptor limit lrpm started with, restored in each child (many
    /// programs misbehave with a soft limit above 1024).
    pub child_nofile: Rlimit,
    /// Whether this binary runs `workerClass` jobs (a library-mode binary):
    /// it then re-executes itself in worker mode for them.
    pub worker_binary: bool,
}

impl SpawnContext {
    /// The context of the current process.
    pub fn current(child_nofile: Rlimit) -> Self {
        Self {
            parent: rustix::process::getpid(),
            child_nofile,
            worker_binary: false,
        }
    }
}

/// Why a process could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A `workerClass` job reached a binary without workers, whose runtime
    /// should have left it out of the configuration.
    #[error(
        "workerClass {0:?}: this binary has no workers (invariant broken: such a job is \
         left out of the configuration)"
    )]
    NotAWorkerBinary(String),
    /// `user` or `group` do not exist or cannot be switched to.
    #[error("{field}: {reason}")]
    Identity {
        /// `user` or `group`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Setting up the spawn failed in lrpm.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The child failed before it ran its program (exec, cwd, …).
    #[error("{step}: {error}")]
    Child {
        /// What it was doing.
        step: String,
        /// The OS error.
        #[source]
        error: io::Error,
    },
}

fn resolve_identity(spec: &JobSpec) -> Result<Option<spawn::Switch>, SpawnError> {
    use nix::unistd::{Group, User};
    if spec.user.is_none() && spec.group.is_none() {
        return Ok(None);
    }
    if !rustix::process::geteuid().is_root() {
        let field = if spec.user.is_some() { "user" } else { "group" };
        return Err(SpawnError::Identity {
            field,
            reason: "switching identity needs lrpm to run as root".into(),
        });
    }
    let mut id = spawn::Switch::default();
    if let Some(name) = &spec.user {
        let user = User::from_name(name)
            .map_err(|e| SpawnError::Identity {
                field: "user",
                reason: e.to_string(),
            })?
            .ok_or_else(|| SpawnError::Identity {
                field: "user",
                reason: format!("no such user: {name}"),
            })?;
        id.uid = Some(rustix::process::Uid::from_raw(user.uid.as_raw()));
        id.gid = Some(rustix::process::Gid::from_raw(user.gid.as_raw()));
        let cname = CString::new(name.as_str()).map_err(|e| SpawnError::Identity {
            field: "user",
            reason: e.to_string(),
        })?;
        let groups =
            nix::unistd::getgrouplist(&cname, user.gid).map_err(|e| SpawnError::Identity {
                field: "user",
                reason: format!("cannot list its groups: {e}"),
            })?;
        id.groups = groups
            .into_iter()
            .map(|g| rustix::process::Gid::from_raw(g.as_raw()))
            .collect();
    }
    if let Some(name) = &spec.group {
        let group = Group::from_name(name)
            .map_err(|e| SpawnError::Identity {
                field: "group",
                reason: e.to_string(),
            })?
            .ok_or_else(|| SpawnError::Identity {
                field: "group",
                reason: format!("no such group: {name}"),
            })?;
        let gid = rustix::process::Gid::from_raw(group.gid.as_raw());
        id.gid = Some(gid);
        if id.uid.is_none() {
            id.groups = vec![gid];
        } else if !id.groups.contains(&gid) {
            id.groups.push(gid);
        }
    }
    Ok(Some(id))
}

/// What to run: a program, its arguments, additions to its environment and
/// its working directory; [`spawn_command`] adds what every child of lrpm
/// gets.
#[derive(Debug, Default)]
pub struct SpawnRequest {
    program: OsString,
    arg0: Option<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    identity: Option<spawn::Switch>,
    cgroup: Option<OwnedFd>,
}

impl SpawnRequest {
    /// Runs `program`: a path if it holds a `/` (relative to the working
    /// directory), otherwise a name looked up in `PATH` (the child's, if
    /// [`SpawnRequest::env`] sets one, else lrpm's).
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            ..Self::default()
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets `argv[0]` (the program by default).
    pub fn arg0(mut self, arg0: impl Into<OsString>) -> Self {
        self.arg0 = Some(arg0.into());
        self
    }

    /// Sets an environment variable (over lrpm's own).
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
}

/// Builds the request for run `run` of a declaration.
fn command(
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
    ctx: &SpawnContext,
) -> Result<SpawnRequest, SpawnError> {
    let cmd = match &spec.program {
        Program::Argv(argv) => SpawnRequest::new(&argv[0]).args(&argv[1..]),
        Program::Shell(line) => SpawnRequest::new("/bin/sh").arg("-c").arg(line),
        Program::WorkerClass(class) => {
            // Only a binary with workers gets here: the runtime leaves the
            // others' workerClass jobs out of every configuration
            // (`Declaration::leave_out_unknown_workers`). Re-executing a
            // plain lrpm in worker mode would fail less clearly than this.
            if !ctx.worker_binary {
                return Err(SpawnError::NotAWorkerBinary(class.clone()));
            }
            // This very binary, even if its file was replaced since.
            let mut cmd = SpawnRequest::new("/proc/self/exe");
            if let Some(name) = std::env::args_os().next() {
                cmd = cmd.arg0(name);
            }
            cmd.arg(crate::library::WORKER_MODE).arg(class)
        }
    };
    let mut cmd = cmd
        .env("LRPM_JOB_ID", job.as_str())
        .env("LRPM_JOB_NAME", &spec.name)
        .env("LRPM_WORKER_CONFIG", spec.worker_config.to_string())
        .env(containment::RUN_ID_ENV, containment::run_id_value(run));
    for (name, value) in &spec.env {
        cmd = cmd.env(name, value);
    }
    if let Some(cwd) = &spec.cwd {
        cmd = cmd.current_dir(cwd);
    }
    Ok(cmd)
}

/// A process just spawned.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid, which is also its process-group id.
    pub pid: Pid,
    /// Its pidfd.
    pub pidfd: OwnedFd,
    /// The read end of its stdout.
    pub stdout: OwnedFd,
    /// The read end of its stderr.
    pub stderr: OwnedFd,
}

/// Spawns run `run` of a worker for `spec`; with `cgroup` (the directory of
/// the run's cgroup) the child starts in that cgroup, or moves itself into
/// it before anything else where it cannot be cloned into it.
pub fn spawn(
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
    ctx: &SpawnContext,
    cgroup: Option<OwnedFd>,
) -> Result<Spawned, SpawnError> {
    let identity = resolve_identity(spec)?;
    let mut cmd = command(run, job, spec, ctx)?;
    cmd.cgroup = cgroup;
    cmd.identity = identity;
    spawn_command(cmd, ctx)
}

/// The environment of a child: lrpm's, without the HTTP source's bearer
/// token and an `LRPM_RUN_ID` lrpm itself inherited, with `set` over it.
fn environment(set: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os()
        .filter(|(name, _)| {
            name != crate::source::HTTP_TOKEN_ENV && name != containment::RUN_ID_ENV
        })
        .collect();
    for (name, value) in set {
        env.insert(name.clone(), value.clone());
    }
    env.into_iter().collect()
}

/// The paths to try for `program`, as `execvpe` would: the program itself
/// if it holds a `/`, else each directory of `path` (`/bin:/usr/bin` when
/// unset; an empty entry is the working directory) joined with it.
fn candidates(program: &OsStr, path: Option<&OsStr>) -> Vec<OsString> {
    let bytes = program.as_bytes();
    if bytes.is_empty() {
        return Vec::new();
    }
    if bytes.contains(&b'/') {
        return vec![program.to_owned()];
    }
    let path = path.unwrap_or(OsStr::new("/bin:/usr/bin"));
    path.as_bytes()
        .split(|b| *b == b':')
        .map(|dir| {
            if dir.is_empty() {
                program.to_owned()
            } else {
                let mut full = dir.to_vec();
                if !dir.ends_with(b"/") {
                    full.push(b'/');
                }
                full.extend_from_slice(bytes);
                OsString::from_vec(full)
            }
        })
        .collect()
}

fn cstring(what: &str, s: impl Into<Vec<u8>>) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| {
        SpawnError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} holds a NUL byte"),
        ))
    })
}

/// Spawns `cmd` the way every child of lrpm is spawned ([`crate::spawn`]):
/// in a process group of its own, with stdin from `/dev/null`, stdout and
/// stderr piped, a parent-death SIGKILL armed, the descriptor limit lrpm
/// started with, no descriptor but stdio, and an empty signal mask; returns
/// it with its pidfd.
///
/// The child is not reaped here: the caller reaps it through the pidfd
/// (see [`waitid_status`]). No child inherits the HTTP source's bearer
/// token, nor an `LRPM_RUN_ID` that lrpm itself inherited, unless the
/// request sets them. The child is recorded as an own child
/// ([`is_own_child`]) until [`reap_child`] reaps it.
pub fn spawn_command(cmd: SpawnRequest, ctx: &SpawnContext) -> Result<Spawned, SpawnError> {
    let env = environment(&cmd.env);
    let path = env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.as_os_str());
    let candidates = candidates(&cmd.program, path)
        .into_iter()
        .map(|c| cstring("the program", c.into_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut argv = vec![cstring(
        "the program",
        cmd.arg0.as_ref().unwrap_or(&cmd.program).as_bytes(),
    )?];
    for arg in &cmd.args {
        argv.push(cstring("an argument", arg.as_bytes())?);
    }
    let envp = env
        .iter()
        .map(|(name, value)| {
            let mut entry = name.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            cstring("the environment", entry)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = cmd
        .cwd
        .as_ref()
        .map(|dir| cstring("the working directory", dir.as_os_str().as_bytes()))
        .transpose()?;
    let (stdout, stdout_w) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(io::Error::from)?;
    let (stderr, stderr_w) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(io::Error::from)?;
    let plan = spawn::Plan {
        candidates: &candidates,
        argv: &argv,
        envp: &envp,
        cwd: cwd.as_deref(),
        identity: cmd.identity.as_ref(),
        parent: ctx.parent,
        nofile: ctx.child_nofile,
        cgroup: cmd.cgroup.as_ref().map(AsFd::as_fd),
        stdout: stdout_w.as_fd(),
        stderr: stderr_w.as_fd(),
    };
    let child = spawn::spawn(&plan).map_err(|failure| child_error(&cmd, failure))?;
    // lrpm keeps only the read ends: the output ends when the child dies.
    drop((stdout_w, stderr_w));
    own_children().insert(child.pid.as_raw_nonzero().get());
    Ok(Spawned {
        pid: child.pid,
        pidfd: child.pidfd,
        stdout,
        stderr,
    })
}

/// The error for a child that did not reach its program.
fn child_error(cmd: &SpawnRequest, failure: spawn::Failure) -> SpawnError {
    use spawn::Step;
    let program = cmd.program.to_string_lossy();
    let step = match failure.step {
        None => "cannot start a process".to_owned(),
        Some(Step::Unshare) => "cannot get a descriptor table".to_owned(),
        Some(Step::Cgroup) => "cannot join the run's cgroup".to_owned(),
        Some(Step::ProcessGroup) => "cannot make a process group".to_owned(),
        Some(Step::Stdio) => "cannot set up stdin, stdout and stderr".to_owned(),
        Some(Step::Groups) => "cannot set the supplementary groups".to_owned(),
        Some(Step::Gid) => "cannot switch group".to_owned(),
        Some(Step::Uid) => "cannot switch user".to_owned(),
        Some(Step::DeathSignal) => "cannot arm the parent-death signal".to_owned(),
        Some(Step::ParentGone) => "lrpm ended while it started".to_owned(),
        Some(Step::Chdir) => format!(
            "cannot change to the working directory {}",
            cmd.cwd.as_deref().unwrap_or(Path::new("")).display()
        ),
        Some(Step::Signals) => "cannot reset its signals".to_owned(),
        Some(Step::Exec) => format!("cannot run {program:?}"),
    };
    SpawnError::Child {
        step,
        error: failure.error,
    }
}

/// A child's pidfd became readable: the child has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitEvent {
    /// The process.
    pub run: RunId,
    /// When its pidfd became readable: the time of its end as closely as
    /// lrpm can tell, before the event waits behind others. The core
    /// measures the run's length and the backoff delay from it, so that a
    /// busy event loop does not make short runs look long.
    pub at: Instant,
}

/// A live child of lrpm.
#[derive(Debug)]
struct Entry {
    job: JobId,
    pid: Pid,
    /// Its pidfd, in the table's epoll set until it is closed.
    pidfd: OwnedFd,
    /// Whether the run has a cgroup ([`containment::CgroupTree::run`] names
    /// it from the job and run ids).
    cgroup: bool,
}

/// The live children, by the core's run id.
#[derive(Debug)]
pub struct ProcessTable {
    entries: HashMap<RunId, Entry>,
    /// Ended runs whose zombie and cgroup are left for
    /// [`ProcessTable::bury`], after the replacements' spawns.
    ended: Vec<(Entry, Option<containment::JobCgroup>)>,
    exits: crate::exits::ExitWatch,
    output: Output,
    ctx: SpawnContext,
    containment: Containment,
}

impl ProcessTable {
    /// A table that watches each child's pidfd ([`ProcessTable::next_exit`]),
    /// forwards children's output to `output`, and contains each job's
    /// processes as `containment` says. Call it within the runtime, which
    /// watches the table's epoll set.
    pub fn new(ctx: SpawnContext, output: Output, containment: Containment) -> io::Result<Self> {
        Ok(Self {
            entries: HashMap::new(),
            ended: Vec::new(),
            exits: crate::exits::ExitWatch::new()?,
            output,
            ctx,
            containment,
        })
    }

    /// The next child whose pidfd became readable, with when it was seen:
    /// the event loop reaps it with [`ProcessTable::reap`]. Cancel-safe.
    pub async fn next_exit(&mut self) -> ExitEvent {
        self.exits.next().await
    }

    /// Whether processes re-parented to lrpm must be reaped here
    /// ([`ProcessTable::reap_orphans`] on every SIGCHLD): lrpm is a
    /// subreaper or PID 1.
    pub fn adopts_orphans(&self) -> bool {
        self.containment.orphans.is_some()
    }

    /// Reaps the processes re-parented to lrpm that have ended, and, in the
    /// subreaper fallback, kills those whose run has ended.
    pub fn reap_orphans(&mut self) {
        if let Some(orphans) = &mut self.containment.orphans {
            let entries = &self.entries;
            orphans.reap(|run| entries.contains_key(&run));
        }
    }

    /// Kills what is left once every worker has been reaped (adopted
    /// processes, cgroups); runs at shutdown.
    pub fn close(&mut self) {
        self.bury();
        if let Some(orphans) = &mut self.containment.orphans {
            orphans.kill_all();
        }
        if let Some(tree) = &mut self.containment.cgroups {
            tree.close();
        }
    }

    /// How many children are alive (not reaped).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no child is alive.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Spawns the process of each run of `batch`, on two threads at once
    /// (the `lanes` module; a batch of one on the calling thread alone);
    /// returns their pids (or errors) in the order of `batch`. The table
    /// itself is only touched on the calling thread, once the children run.
    ///
    /// With cgroups, a run whose cgroup cannot be created still starts, in
    /// its process group only, with a warning: running the job matters more
    /// than containing its daemons.
    pub fn spawn_batch(&mut self, batch: &[Spawn]) -> Vec<Result<u32, SpawnError>> {
        let cgroups = self
            .containment
            .cgroups
            .as_ref()
            .map(|tree| tree.runs().clone());
        let ctx = self.ctx.clone();
        let started = crate::lanes::map(batch.to_vec(), move |s: &Spawn| {
            start(cgroups.as_ref(), &ctx, s.run, &s.job, &s.spec)
        });
        batch
            .iter()
            .zip(started)
            .map(|(s, started)| self.admit(s.run, &s.job, started))
            .collect()
    }

    /// Puts a started run in the table: its exit watched, its output
    /// forwarded.
    fn admit(&mut self, run: RunId, job: &JobId, started: Started) -> Result<u32, SpawnError> {
        let Started { spawned, cgroup } = started;
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                if let Some(cgroup) = cgroup {
                    cgroup.remove();
                }
                return Err(e);
            }
        };
        let watched = self.exits.watch(run, spawned.pidfd.as_fd(), false);
        let pid = spawned.pid;
        let entry = Entry {
            job: job.clone(),
            pid,
            pidfd: spawned.pidfd,
            cgroup: cgroup.is_some(),
        };
        if let Err(e) = watched {
            // It cannot be watched: kill it, and bury it with the ended runs.
            self.end(entry, cgroup);
            return Err(SpawnError::Io(e));
        }
        self.output.forward(job, spawned.stdout, spawned.stderr);
        self.entries.insert(run, entry);
        Ok(pid.as_raw_nonzero().get() as u32)
    }

    /// Sends `signal` to the process group of `run`, and to the process
    /// itself if it has left its group; SIGKILL also goes to the run's whole
    /// cgroup. Any other signal is followed by SIGCONT, as systemd does, so
    /// that a stopped worker (SIGSTOP, a debugger detached badly) gets to
    /// handle its stop signal rather than wait for the SIGKILL. A process
    /// already reaped is not signalled.
    pub fn signal(&self, run: RunId, signal: Signal) {
        let Some(entry) = self.entries.get(&run) else {
            return;
        };
        let sig = to_rustix(signal);
        let left_group = getpgid(Some(entry.pid)).is_ok_and(|pgid| pgid != entry.pid);
        let send = |sig| {
            // Not reaped yet, so the pgid cannot have been reused.
            if let Err(e) = kill_process_group(entry.pid, sig) {
                if e != rustix::io::Errno::SRCH {
                    tracing::warn!(job = %entry.job, "cannot signal process group: {e}");
                }
            }
            if left_group {
                let _ = pidfd_send_signal(entry.pidfd.as_fd(), sig);
            }
        };
        send(sig);
        if signal != Signal::Kill {
            send(rustix::process::Signal::CONT);
        }
        if signal == Signal::Kill {
            if let Some(cgroup) = self.cgroup(run, entry) {
                cgroup.kill();
            }
        }
    }

    /// The cgroup of run `run`, if it has one.
    fn cgroup(&self, run: RunId, entry: &Entry) -> Option<containment::JobCgroup> {
        let tree = self.containment.cgroups.as_ref().filter(|_| entry.cgroup)?;
        Some(tree.runs().run(&entry.job, run))
    }

    /// Takes the end of process `run`: kills whatever is left of its
    /// process group and of its cgroup (or, in the subreaper fallback, the
    /// processes it left behind), and returns its job and how it ended; or
    /// `None` if it is not known or not finished. The zombie itself is
    /// reaped, and the cgroup removed, by [`ProcessTable::bury`]: the
    /// replacement's spawn does not wait for that.
    pub fn reap(&mut self, run: RunId) -> Option<(JobId, ExitStatus)> {
        let entry = self.entries.get(&run)?;
        // Peek only: a spurious wake-up must not kill a live group, and the
        // zombie keeps the group id from being reused until it is buried.
        let Some(status) = waitid_status(entry.pidfd.as_fd(), WaitIdOptions::NOWAIT) else {
            // Still running: watch it again (its watch was one-shot).
            if let Err(e) = self.exits.watch(run, entry.pidfd.as_fd(), true) {
                tracing::error!(job = %entry.job, "cannot watch the worker's exit: {e}");
            }
            return None;
        };
        let cgroup = self.cgroup(run, entry);
        let entry = self.entries.remove(&run)?;
        let job = entry.job.clone();
        self.end(entry, cgroup);
        // In the subreaper fallback the run's escaped processes were
        // adopted: kill them now that their run has ended.
        self.reap_orphans();
        Some((job, status))
    }

    /// Kills what is left of `entry`'s process group (the zombie still pins
    /// its id) and of its cgroup, and leaves the zombie and the cgroup to
    /// [`ProcessTable::bury`].
    fn end(&mut self, entry: Entry, cgroup: Option<containment::JobCgroup>) {
        let _ = kill_process_group(entry.pid, rustix::process::Signal::KILL);
        if let Some(cgroup) = &cgroup {
            cgroup.kill();
        }
        self.ended.push((entry, cgroup));
    }

    /// Reaps the zombies of the ended runs ([`ProcessTable::reap`]), closing
    /// their pidfds (which leave the epoll set), and removes their cgroups.
    pub fn bury(&mut self) {
        for (entry, cgroup) in self.ended.drain(..) {
            reap_child_blocking(entry.pid, entry.pidfd.as_fd());
            if let Some(cgroup) = cgroup {
                cgroup.remove();
            }
        }
    }
}

/// A spawn the core asked for ([`lrpm_core::supervisor::Action::Spawn`]).
#[derive(Debug, Clone)]
pub struct Spawn {
    /// The run.
    pub run: RunId,
    /// Its job.
    pub job: JobId,
    /// The declaration it runs.
    pub spec: Arc<JobSpec>,
}

/// A run's spawn, done on any thread, before the table admits it.
struct Started {
    spawned: Result<Spawned, SpawnError>,
    /// Its cgroup; removed by the table if the spawn failed.
    cgroup: Option<containment::JobCgroup>,
}

/// Creates run `run`'s cgroup (under `cgroups`, if given) and starts its
/// child in it. A cgroup that cannot be created is warned about, and the
/// run starts without one.
fn start(
    cgroups: Option<&containment::RunCgroups>,
    ctx: &SpawnContext,
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
) -> Started {
    let (cgroup, procs) = match cgroups {
        None => (None, None),
        Some(runs) => match runs.create_run(job, run) {
            Ok((cgroup, procs)) => (Some(cgroup), Some(procs)),
            Err(e) => {
                tracing::warn!(
                    %job,
                    "cannot create a cgroup under {}: {e}; starting it without one",
                    runs.base().display()
                );
                (None, None)
            }
        },
    };
    Started {
        spawned: spawn(run, job, spec, ctx, procs),
        cgroup,
    }
}

/// How the finished child behind `pidfd` ended (reaping it, unless `extra`
/// has `NOWAIT`); `None` if it has not finished.
pub fn waitid_status(pidfd: BorrowedFd<'_>, extra: WaitIdOptions) -> Option<ExitStatus> {
    let res = rustix::process::waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | extra,
    );
    match res {
        Ok(Some(st)) => Some(match (st.exit_status(), st.terminating_signal()) {
            (Some(code), _) => ExitStatus::code(code),
            (None, Some(sig)) => ExitStatus::signal(sig),
            (None, None) => ExitStatus::spawn_failed("ended in an unknown way"),
        }),
        Ok(None) => None,
        // ECHILD: someone else reaped it. Report it as gone.
        Err(e) => Some(ExitStatus::spawn_failed(format!("lost track of it: {e}"))),
    }
}

/// Raises lrpm's soft descriptor limit to the hard limit; returns the limit it
/// started with, for children.
pub fn raise_nofile_limit() -> (Rlimit, Option<u64>) {
    let original = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: original.maximum,
        maximum: original.maximum,
    };
    let new = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => raised.current,
        Err(_) => original.current,
    };
    (original, new)
}

/// Marks every inherited descriptor above stderr close-on-exec, so that
/// nothing lrpm's parent leaked reaches a worker.
pub fn cloexec_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the descriptor is only borrowed for the fcntl; a number
        // that was the directory stream's own and is closed now just fails.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = rustix::io::fcntl_getfd(fd) {
            let _ = rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lrpm-core may not depend on nix, so it keeps its own table of signal
    /// names: nix is the authority it must agree with, on every signal nix
    /// knows on this platform.
    #[test]
    fn the_core_names_every_signal_as_nix_does() {
        use lrpm_core::human::signal_name;
        let mut checked = 0;
        for signal in nix::sys::signal::Signal::iterator() {
            assert_eq!(
                signal_name(signal as i32).to_string(),
                signal.as_str(),
                "signal {}",
                signal as i32
            );
            checked += 1;
        }
        assert!(checked >= 31, "nix knows {checked} signals");
        // And glibc's real-time range.
        #[cfg(target_env = "gnu")]
        {
            assert_eq!(signal_name(libc::SIGRTMIN()).to_string(), "SIGRTMIN");
            assert_eq!(signal_name(libc::SIGRTMIN() + 1).to_string(), "SIGRTMIN+1");
            assert_eq!(signal_name(libc::SIGRTMAX()).to_string(), "SIGRTMAX");
        }
        // The core's own signals, which the shell sends, too.
        for signal in Signal::ALL {
            assert_eq!(
                signal_name(to_rustix(signal).as_raw()).to_string(),
                signal.to_string()
            );
        }
    }

    fn strings(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_program_with_a_slash_is_not_searched() {
        assert_eq!(
            candidates(OsStr::new("./bin/w"), Some(OsStr::new("/a:/b"))),
            strings(&["./bin/w"])
        );
        assert!(candidates(OsStr::new(""), None).is_empty());
    }

    #[test]
    fn path_is_searched_in_order_as_execvp_does() {
        assert_eq!(
            candidates(OsStr::new("w"), Some(OsStr::new("/a:/b/::/c"))),
            strings(&["/a/w", "/b/w", "w", "/c/w"])
        );
        assert_eq!(
            candidates(OsStr::new("w"), None),
            strings(&["/bin/w", "/usr/bin/w"])
        );
    }

    #[test]
    fn the_environment_drops_the_token_and_an_inherited_run_id_unless_set() {
        let env = environment(&[(OsString::from("A_NEW_ONE"), OsString::from("1"))]);
        assert!(env.iter().any(|(n, v)| n == "A_NEW_ONE" && v == "1"));
        assert!(
            !env.iter()
                .any(|(n, _)| n == crate::source::HTTP_TOKEN_ENV || n == containment::RUN_ID_ENV)
        );
        let env = environment(&[(
            OsString::from(containment::RUN_ID_ENV),
            OsString::from("7.1"),
        )]);
        assert!(
            env.iter()
                .any(|(n, v)| n == containment::RUN_ID_ENV && v == "7.1")
        );
    }

    /// Spawns `sleep 1000` into a run's cgroup and returns the cgroup the
    /// kernel says it is in, or `None` where lrpm would not use cgroups.
    fn cgroup_of_a_spawn(run: u64) -> Option<(String, String)> {
        let containment = Containment::setup(&containment::CgroupChoice::Auto).ok()?;
        let tree = containment.cgroups.as_ref()?;
        let job = JobId::from("cgroup-test");
        let (cgroup, dir) = tree
            .runs()
            .create_run(&job, RunId(run))
            .expect("create the run's cgroup");
        let ctx = SpawnContext::current(getrlimit(Resource::Nofile));
        let mut request = SpawnRequest::new("sleep").arg("1000");
        request.cgroup = Some(dir);
        let spawned = spawn_command(request, &ctx).expect("spawn sleep");
        let pid = spawned.pid.as_raw_nonzero().get();
        let inside = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroup");
        let _ = kill_process_group(spawned.pid, rustix::process::Signal::KILL);
        reap_child_blocking(spawned.pid, spawned.pidfd.as_fd());
        let expected = cgroup.dir().file_name()?.to_string_lossy().into_owned();
        cgroup.remove();
        Some((inside, expected))
    }

    #[test]
    fn a_child_starts_in_its_cgroup_cloned_into_it_or_joining_it() {
        let Some((inside, expected)) = cgroup_of_a_spawn(1) else {
            eprintln!("no writable cgroup v2 here: nothing to check");
            return;
        };
        assert!(inside.contains(&expected), "{inside} (expected {expected})");
        spawn::clone3::FORCE_PROCS_FALLBACK.store(true, std::sync::atomic::Ordering::Relaxed);
        let fallback = cgroup_of_a_spawn(2);
        spawn::clone3::FORCE_PROCS_FALLBACK.store(false, std::sync::atomic::Ordering::Relaxed);
        let (inside, expected) = fallback.expect("cgroups a moment ago");
        assert!(inside.contains(&expected), "{inside} (expected {expected})");
    }

    /// Spawns `sleep 1000` and returns what a test checks: its descriptors
    /// and /proc status; kills and reaps it.
    fn spawn_sleep_and_inspect() -> (Vec<u32>, String) {
        let ctx = SpawnContext::current(getrlimit(Resource::Nofile));
        let spawned =
            spawn_command(SpawnRequest::new("sleep").arg("1000"), &ctx).expect("spawn sleep");
        let pid = spawned.pid.as_raw_nonzero().get();
        let read_fds = || {
            let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .expect("fds")
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            fds.sort_unstable();
            fds
        };
        // `sleep` may hold a file of its own for a moment as it starts (its
        // locale): wait, boundedly, for it to settle; a leaked descriptor
        // stays and fails the test.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut fds = read_fds();
        while fds != [0, 1, 2] && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            fds = read_fds();
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let _ = kill_process_group(spawned.pid, rustix::process::Signal::KILL);
        reap_child_blocking(spawned.pid, spawned.pidfd.as_fd());
        (fds, status)
    }

    #[test]
    fn a_child_holds_only_stdio_with_close_range_and_with_the_fallback() {
        let (fds, _) = spawn_sleep_and_inspect();
        assert_eq!(fds, [0, 1, 2]);
        // As on a kernel without CLOSE_RANGE_UNSHARE: unshare(CLONE_FILES).
        spawn::FORCE_UNSHARE_FALLBACK.store(true, std::sync::atomic::Ordering::Relaxed);
        let (fds, status) = spawn_sleep_and_inspect();
        spawn::FORCE_UNSHARE_FALLBACK.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(fds, [0, 1, 2]);
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .expect("SigBlk");
        assert_eq!(u64::from_str_radix(blocked.trim(), 16), Ok(0), "{status}");
    }

    #[test]
    fn a_missing_program_or_directory_is_a_clear_error() {
        let ctx = SpawnContext::current(getrlimit(Resource::Nofile));
        let err = spawn_command(SpawnRequest::new("/nonexistent/lrpm-x"), &ctx)
            .expect_err("no such program");
        assert_eq!(
            err.to_string(),
            "cannot run \"/nonexistent/lrpm-x\": No such file or directory (os error 2)"
        );
        let err = spawn_command(
            SpawnRequest::new("true").current_dir("/nonexistent/lrpm-dir"),
            &ctx,
        )
        .expect_err("no such directory");
        assert_eq!(
            err.to_string(),
            "cannot change to the working directory /nonexistent/lrpm-dir: \
             No such file or directory (os error 2)"
        );
    }
}
