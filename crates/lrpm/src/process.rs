//! Worker processes: spawning, signalling and reaping.
//!
//! # Theory of operation
//!
//! Every worker is spawned with `std::process::Command` in a process group
//! of its own, with stdin from `/dev/null`, its stdout and stderr piped to
//! lrpm, and, in a `pre_exec` hook that makes only raw system calls, its
//! identity switched (`user`/`group`), a parent-death SIGKILL armed and the
//! descriptor limit lrpm raised for itself put back.
//!
//! Right after the spawn lrpm opens a pidfd for the child. The pidfd is what
//! makes this race-free: while the child is not reaped its pid, and so its
//! process-group id, cannot be reused, and lrpm reaps a child only in
//! [`ProcessTable::reap`], which it calls when the pidfd becomes readable. A
//! signal for a process already reaped finds no entry in the table and is
//! dropped; lrpm never signals a stranger.
//!
//! Reaping kills what is left of the worker's process group first, so a
//! restarted job can never meet the grandchildren of its previous run. With
//! cgroups ([`crate::containment`]) each run also has a cgroup of its own,
//! which the child joins in its `pre_exec` hook; reaping and a stop's
//! SIGKILL kill the whole cgroup, so a daemon that left the process group
//! dies with its job too.
//!
//! Every child spawned here is recorded in a process-wide registry until it
//! is reaped ([`is_own_child`]), so that the orphan reaper of
//! [`crate::containment`] never takes the exit status of a child that lrpm
//! reaps through its pidfd.
//!
//! Architecture invariant: only the supervisor's main thread spawns, because
//! the parent-death signal fires when the *thread* that forked exits.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Instant;

use lrpm_core::job::{JobId, JobSpec, Program, Signal};
use lrpm_core::status::ExitStatus;
use lrpm_core::supervisor::RunId;
use rustix::process::{
    Pid, PidfdFlags, Resource, Rlimit, WaitId, WaitIdOptions, getpgid, getrlimit,
    kill_process_group, pidfd_open, pidfd_send_signal, setrlimit,
};
use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::containment::{self, Containment, JobCgroup};
use crate::output::Output;

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

/// Waits for child `pid`, which was just SIGKILLed, to end, reaps it through
/// its `pidfd`, and forgets it as an own child.
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

/// The identity a worker switches to.
#[derive(Debug, Clone)]
struct Identity {
    uid: Option<rustix::process::Uid>,
    gid: Option<rustix::process::Gid>,
    groups: Vec<rustix::process::Gid>,
}

/// Why a process could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The declaration cannot be run by this binary.
    #[error("{0}")]
    Unsupported(String),
    /// `user` or `group` do not exist or cannot be switched to.
    #[error("{field}: {reason}")]
    Identity {
        /// `user` or `group`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The spawn itself failed (exec, cwd, …).
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn resolve_identity(spec: &JobSpec) -> Result<Option<Identity>, SpawnError> {
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
    let mut id = Identity {
        uid: None,
        gid: None,
        groups: Vec::new(),
    };
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

/// Builds the command for run `run` of a declaration.
fn command(
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
    ctx: &SpawnContext,
) -> Result<Command, SpawnError> {
    let mut cmd = match &spec.program {
        Program::Argv(argv) => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
        Program::Shell(line) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(line);
            cmd
        }
        Program::WorkerClass(class) if ctx.worker_binary => {
            // This very binary, even if its file was replaced since.
            let mut cmd = Command::new("/proc/self/exe");
            if let Some(name) = std::env::args_os().next() {
                cmd.arg0(name);
            }
            cmd.arg(crate::library::WORKER_MODE).arg(class);
            cmd
        }
        Program::WorkerClass(class) => {
            return Err(SpawnError::Unsupported(format!(
                "workerClass {class:?}: this lrpm binary has no registered workers \
                 (workerClass jobs run in a binary built with the lrpm library; \
                 use `command` here)"
            )));
        }
    };
    cmd.env("LRPM_JOB_ID", job.as_str())
        .env("LRPM_JOB_NAME", &spec.name)
        .env("LRPM_WORKER_CONFIG", spec.worker_config.to_string())
        .env(containment::RUN_ID_ENV, containment::run_id_value(run))
        .envs(&spec.env);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
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

/// Spawns run `run` of a worker for `spec`; with `cgroup_procs` (the
/// `cgroup.procs` of the run's cgroup, opened for writing) the child moves
/// itself into that cgroup before it changes identity and execs.
pub fn spawn(
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
    ctx: &SpawnContext,
    cgroup_procs: Option<OwnedFd>,
) -> Result<Spawned, SpawnError> {
    let identity = resolve_identity(spec)?;
    let mut cmd = command(run, job, spec, ctx)?;
    if let Some(procs) = cgroup_procs {
        // SAFETY: the hook runs in the forked child before exec; it makes
        // one raw system call (no allocation, no lock). It runs first: the
        // child joins the cgroup with lrpm's credentials, before anything
        // else, and so before it can fork. The descriptor is close-on-exec
        // in the child and closed in lrpm when `cmd` is dropped.
        unsafe {
            cmd.pre_exec(move || containment::join_cgroup(&procs));
        }
    }
    if let Some(id) = identity {
        // SAFETY: the hook runs in the forked child before exec; it only
        // makes raw system calls through rustix (no allocation, no lock). It
        // runs before the hook `spawn_command` adds: a change of identity
        // clears the parent-death signal, so that must be armed after it.
        unsafe {
            cmd.pre_exec(move || {
                set_thread_groups(&id.groups)?;
                if let Some(gid) = id.gid {
                    set_thread_res_gid(gid, gid, gid)?;
                }
                if let Some(uid) = id.uid {
                    set_thread_res_uid(uid, uid, uid)?;
                }
                Ok(())
            });
        }
    }
    spawn_command(cmd, ctx)
}

/// Spawns `cmd` the way every child of lrpm is spawned: in a process group
/// of its own, with stdin from `/dev/null`, stdout and stderr piped, a
/// parent-death SIGKILL armed and the descriptor limit lrpm started with;
/// then opens its pidfd.
///
/// The child is not reaped here: the caller reaps it through the pidfd
/// (see [`waitid_status`]). Hooks the caller registered with `pre_exec` run
/// first. No child inherits the HTTP source's bearer token, nor an
/// `LRPM_RUN_ID` that lrpm itself inherited. The child is recorded as an own
/// child ([`is_own_child`]) until [`reap_child`] reaps it.
pub fn spawn_command(mut cmd: Command, ctx: &SpawnContext) -> Result<Spawned, SpawnError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for name in [crate::source::HTTP_TOKEN_ENV, containment::RUN_ID_ENV] {
        if !cmd.get_envs().any(|(set, _)| set == name) {
            cmd.env_remove(name);
        }
    }
    let parent = ctx.parent;
    let nofile = ctx.child_nofile;
    // SAFETY: the hook runs in the forked child before exec; it only makes
    // raw system calls through rustix (no allocation, no lock).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // lrpm may have died between the fork and the prctl.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc_esrch()));
            }
            // Best effort: a child that cannot lower its own limit still runs.
            let _ = setrlimit(Resource::Nofile, nofile);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = Pid::from_child(&child);
    let stdout = child
        .stdout
        .take()
        .expect("invariant: stdout is piped")
        .into();
    let stderr = child
        .stderr
        .take()
        .expect("invariant: stderr is piped")
        .into();
    // The child is ours and not reaped, so its pid is still valid.
    let pidfd = match pidfd_open(pid, PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd we cannot watch it: do not leave it running.
            let _ = kill_process_group(pid, rustix::process::Signal::KILL);
            let _ = child.wait();
            return Err(SpawnError::Io(io::Error::other(format!("pidfd_open: {e}"))));
        }
    };
    // `child` is dropped without being waited on: the caller reaps it
    // through the pidfd, with `reap_child`.
    own_children().insert(pid.as_raw_nonzero().get());
    Ok(Spawned {
        pid,
        pidfd,
        stdout,
        stderr,
    })
}

fn libc_esrch() -> i32 {
    rustix::io::Errno::SRCH.raw_os_error()
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
    pidfd: std::sync::Arc<AsyncFd<OwnedFd>>,
    /// The run's cgroup, when cgroups are used.
    cgroup: Option<JobCgroup>,
}

/// The live children, by the core's run id.
#[derive(Debug)]
pub struct ProcessTable {
    entries: HashMap<RunId, Entry>,
    exits: mpsc::UnboundedSender<ExitEvent>,
    output: Output,
    ctx: SpawnContext,
    containment: Containment,
}

impl ProcessTable {
    /// A table that reports each child whose pidfd becomes readable on
    /// `exits`, forwards children's output to `output`, and contains each
    /// job's processes as `containment` says.
    pub fn new(
        ctx: SpawnContext,
        exits: mpsc::UnboundedSender<ExitEvent>,
        output: Output,
        containment: Containment,
    ) -> Self {
        Self {
            entries: HashMap::new(),
            exits,
            output,
            ctx,
            containment,
        }
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

    /// Spawns process `run` of `job`; returns its pid.
    ///
    /// With cgroups, a run whose cgroup cannot be created still starts, in
    /// its process group only, with a warning: running the job matters more
    /// than containing its daemons.
    pub fn spawn(&mut self, run: RunId, job: &JobId, spec: &JobSpec) -> Result<u32, SpawnError> {
        let (cgroup, procs) = match &self.containment.cgroups {
            Some(tree) => match tree.create_run(job, run) {
                Ok((cgroup, procs)) => (Some(cgroup), Some(procs)),
                Err(e) => {
                    tracing::warn!(
                        %job,
                        "cannot create a cgroup under {}: {e}; starting it without one",
                        tree.base().display()
                    );
                    (None, None)
                }
            },
            None => (None, None),
        };
        let spawned = match spawn(run, job, spec, &self.ctx, procs) {
            Ok(spawned) => spawned,
            Err(e) => {
                if let Some(cgroup) = cgroup {
                    cgroup.remove();
                }
                return Err(e);
            }
        };
        // SAFETY: the pidfd is owned by the AsyncFd and is closed only when
        // the AsyncFd is dropped, which deregisters it first.
        let pidfd = unsafe { AsyncFd::register_with_interest(spawned.pidfd, Interest::READABLE) };
        let pidfd = match pidfd {
            Ok(fd) => std::sync::Arc::new(fd),
            Err(e) => {
                // It cannot be watched: kill it and reap it now.
                let (pidfd, e) = e.into_parts();
                let _ = kill_process_group(spawned.pid, rustix::process::Signal::KILL);
                if let Some(cgroup) = cgroup {
                    cgroup.kill();
                    cgroup.remove();
                }
                reap_child_blocking(spawned.pid, pidfd.as_fd());
                return Err(SpawnError::Io(e));
            }
        };
        self.output.forward(job, spawned.stdout, spawned.stderr);
        let exits = self.exits.clone();
        let watch = pidfd.clone();
        tokio::spawn(async move {
            // Readable once the process has exited. An error here (none is
            // expected for a pidfd) is reported as an exit too, so the
            // process is reaped rather than forgotten.
            let _ = watch.readable().await.map(|mut guard| guard.retain_ready());
            let _ = exits.send(ExitEvent {
                run,
                at: Instant::now(),
            });
        });
        let pid = spawned.pid;
        self.entries.insert(
            run,
            Entry {
                job: job.clone(),
                pid,
                pidfd,
                cgroup,
            },
        );
        Ok(pid.as_raw_nonzero().get() as u32)
    }

    /// Sends `signal` to the process group of `run`, and to the process
    /// itself if it has left its group; SIGKILL also goes to the run's whole
    /// cgroup. A process already reaped is not signalled.
    pub fn signal(&self, run: RunId, signal: Signal) {
        let Some(entry) = self.entries.get(&run) else {
            return;
        };
        let sig = to_rustix(signal);
        // Not reaped yet, so the pgid cannot have been reused.
        if let Err(e) = kill_process_group(entry.pid, sig) {
            if e != rustix::io::Errno::SRCH {
                tracing::warn!(job = %entry.job, "cannot signal process group: {e}");
            }
        }
        if getpgid(Some(entry.pid)).is_ok_and(|pgid| pgid != entry.pid) {
            let _ = pidfd_send_signal(entry.pidfd.get_ref().as_fd(), sig);
        }
        if signal == Signal::Kill {
            if let Some(cgroup) = &entry.cgroup {
                cgroup.kill();
            }
        }
    }

    /// Reaps process `run`, after killing whatever is left of its process
    /// group and of its cgroup (or, in the subreaper fallback, the
    /// processes it left behind). Returns its job and how it ended, or
    /// `None` if it is not known or not finished.
    pub fn reap(&mut self, run: RunId) -> Option<(JobId, ExitStatus)> {
        let entry = self.entries.get(&run)?;
        // Peek first: a spurious wake-up must not kill a live group.
        waitid_status(entry.pidfd.get_ref().as_fd(), WaitIdOptions::NOWAIT)?;
        // The leader is a zombie, so its group id is still its own; kill
        // what is left of the group before the id can be reused.
        let _ = kill_process_group(entry.pid, rustix::process::Signal::KILL);
        if let Some(cgroup) = &entry.cgroup {
            cgroup.kill();
        }
        let status = reap_child(entry.pid, entry.pidfd.get_ref().as_fd())?;
        let entry = self.entries.remove(&run)?;
        if let Some(cgroup) = entry.cgroup {
            cgroup.remove();
        }
        // In the subreaper fallback the run's escaped processes were
        // adopted: kill them now that their run has ended.
        self.reap_orphans();
        Some((entry.job, status))
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
