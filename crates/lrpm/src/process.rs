//! The farm's processes: the table of live runs, spawning a run for a
//! declaration, signalling and reaping.
//!
//! # Theory of operation
//!
//! Every worker is spawned by `lrpm_process` (a vfork-style `clone` whose
//! cost does not grow with the farm) in a process group of its own, with
//! stdin from `/dev/null`, its stdout and stderr piped to lrpm, its
//! identity switched (`user`/`group`), a parent-death SIGKILL armed and the
//! descriptor limit lrpm raised for itself put back. This module turns a
//! declaration into that request (argv, the `LRPM_*` environment, the
//! worker role of a library binary) and keeps the table of live runs.
//!
//! The clone returns the child's pidfd. The pidfd is what makes this
//! race-free: while the child is not reaped its pid, and so its
//! process-group id, cannot be reused, and lrpm reaps a child only in
//! [`ProcessTable::reap`], which it calls when the pidfd becomes readable. A
//! signal for a process already reaped finds no entry in the table and is
//! dropped; lrpm never signals a stranger.
//!
//! The pidfds are watched by one epoll set (`lrpm_process::exits`), not by
//! a task each: [`ProcessTable::next_exit`] hands out the runs whose pidfd
//! became readable.
//!
//! When descriptors run short (a pidfd numbered in the top eighth of the
//! soft `RLIMIT_NOFILE`, at least 64 below it: [`pidfd_threshold`]), a new
//! worker's pidfd is closed at once and the worker is followed by its pid
//! alone: it costs lrpm no descriptor at all once its pipes went to an
//! output hub. This is just as race-free: the worker is lrpm's own child,
//! and a child that is not reaped keeps its pid (and its process-group id),
//! so signalling it by pid cannot reach a stranger until lrpm reaps it,
//! which it does only here. Its exit is learned from SIGCHLD: on each one
//! (and once right after a pidfd is closed, for a child that ended before)
//! the table peeks at every pidfd-less child with `waitid(P_PID, pid,
//! WEXITED | WNOHANG | WNOWAIT)`, never at "any child", so the pidfds' and
//! the orphan reaper's statuses are left alone. That costs a syscall per
//! pidfd-less child per SIGCHLD: only under a small limit, where the farm
//! is small too. While descriptors are plentiful nothing of this runs.
//!
//! Reaping kills what is left of the worker's process group first, so a
//! restarted job can never meet the grandchildren of its previous run. With
//! cgroups (`lrpm_process::containment`) each run also has a cgroup of its
//! own, which the child joins before anything else; reaping and a stop's
//! SIGKILL kill the whole cgroup, so a daemon that left the process group
//! dies with its job too. Reaping a run that left its cgroup empty kills
//! nothing: the empty cgroup goes to the job's replacement if it is spawned
//! in the same turn (a crash's immediate restart), which then carries the
//! name of the run that created it (`Entry::cgroup`).
//!
//! The table does not forward output: a spawn hands the run's pipes back to
//! the event loop, which gives them to the output forwarding.
//!
//! Architecture invariant: workers are spawned only from the event loop's
//! thread and the spawn helper of `lrpm_process::lanes`, which both live as
//! long as lrpm, because the parent-death signal fires when the *thread*
//! that spawned exits.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use lrpm_core::job::{JobId, JobSpec, Program, Signal};
use lrpm_core::status::{ExitReason, ExitStatus};
use lrpm_core::supervisor::{Reason, RunId};
use lrpm_process::children::{
    reap_child_blocking, reap_pid_blocking, waitid_pid_status, waitid_status,
};
use lrpm_process::command::{
    SpawnContext, SpawnError, SpawnRequest, resolve_identity, spawn_command,
};
use lrpm_process::containment::{self, Containment};
use lrpm_process::exits::{ExitEvent, ExitWatch};
use lrpm_process::signal::to_rustix;
use rustix::process::{
    Pid, WaitIdOptions, getpgid, kill_process, kill_process_group, pidfd_send_signal,
};
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};

use crate::base::{self, Role};

/// Builds the request for run `run` of a declaration.
fn command(
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
    worker_binary: bool,
    notify_socket: Option<&str>,
) -> Result<SpawnRequest, SpawnError> {
    let cmd = match &spec.program {
        Program::Argv(argv) => SpawnRequest::new(&argv[0]).args(&argv[1..]),
        Program::Shell(line) => SpawnRequest::new("/bin/sh").arg("-c").arg(line),
        Program::WorkerClass(class) => {
            // Only a binary with workers gets here: the runtime leaves the
            // others' workerClass jobs out of every configuration
            // (`Declaration::leave_out_unknown_workers`). Re-executing a
            // plain lrpm in worker mode would fail less clearly than this.
            if !worker_binary {
                return Err(SpawnError::Io(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "workerClass {class:?}: this binary has no workers (invariant broken: \
                         such a job is left out of the configuration)"
                    ),
                )));
            }
            Role::Worker {
                class: class.clone(),
            }
            .request()
        }
    };
    let mut cmd = cmd;
    for (name, value) in worker_env(run, job, spec, notify_socket) {
        cmd = cmd.env(name, value);
    }
    if let Some(cwd) = &spec.cwd {
        cmd = cmd.current_dir(cwd);
    }
    Ok(cmd)
}

/// What run `run` of a worker for `spec` gets in its environment over
/// lrpm's: the `LRPM_*` variables (`LRPM_INSTANCE` for a copy),
/// `NOTIFY_SOCKET`, `WATCHDOG_USEC`, and
/// the job's `env` last.
pub(crate) fn worker_env(
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
    notify_socket: Option<&str>,
) -> Vec<(String, String)> {
    let mut env = vec![
        (base::JOB_ID_ENV.to_owned(), job.as_str().to_owned()),
        (base::JOB_NAME_ENV.to_owned(), spec.name.clone()),
        (
            base::WORKER_CONFIG_ENV.to_owned(),
            spec.worker_config.to_string(),
        ),
        (
            containment::RUN_ID_ENV.to_owned(),
            containment::run_id_value(run),
        ),
    ];
    if let Some(k) = spec.instance {
        env.push((base::INSTANCE_ENV.to_owned(), k.to_string()));
    }
    if let Some(socket) = notify_socket {
        env.push((base::NOTIFY_SOCKET_ENV.to_owned(), socket.to_owned()));
    }
    if let Some(watchdog) = spec.watchdog {
        // As systemd sets it; WATCHDOG_PID is left out, since the pid is
        // not known before the spawn (sd_watchdog_enabled accepts that).
        env.push((
            base::WATCHDOG_USEC_ENV.to_owned(),
            watchdog.as_micros().to_string(),
        ));
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Spawns run `run` of a worker for `spec`; with `cgroup` (the directory of
/// the run's cgroup) the child starts in that cgroup, and with
/// `memory_procs` (the `cgroup.procs` of its memory cgroup) it joins that
/// one before it executes its program.
fn spawn(
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
    ctx: &SpawnContext,
    worker_binary: bool,
    (cgroup, memory_procs): (Option<OwnedFd>, Option<OwnedFd>),
    notify_socket: Option<&str>,
) -> Result<lrpm_process::command::Spawned, SpawnError> {
    let identity = resolve_identity(spec.user.as_deref(), spec.group.as_deref())?;
    let cmd = command(run, job, spec, worker_binary, notify_socket)?
        .identity(identity)
        .cgroup(cgroup)
        .memory_cgroup(memory_procs);
    spawn_command(cmd, ctx)
}

/// A live child of lrpm.
#[derive(Debug)]
struct Entry {
    job: JobId,
    pid: Pid,
    /// Its pidfd, in the table's epoll set until it is closed; `None` when
    /// descriptors ran short at its spawn: it is then followed by its pid
    /// (see the module's documentation).
    pidfd: Option<OwnedFd>,
    /// The run whose name the run's cgroup has, if it has one
    /// ([`containment::RunCgroups::run`] names it from the job and run
    /// ids): the run itself, or the earlier run of its job that created the
    /// cgroup it reuses ([`ProcessTable::reap`]).
    cgroup: Option<RunId>,
    /// Whether its cgroup was killed while it ran (a stop's SIGKILL): a
    /// killed cgroup cannot be reused ([`containment::JobCgroup::kill`]).
    cgroup_killed: Cell<bool>,
    /// Whether the run's memory is capped (`memoryMax`): by a memory cgroup
    /// of its own on cgroup v1 ([`containment::MemoryTree`], named as its
    /// cgroup), or by its cgroup's `memory.max` on cgroup v2.
    memory: bool,
}

/// The live children, by the core's run id.
#[derive(Debug)]
pub(crate) struct ProcessTable {
    entries: HashMap<RunId, Entry>,
    /// The run of each entry's pid, to know who sent a notification.
    by_pid: HashMap<u32, RunId>,
    /// `NOTIFY_SOCKET` for every worker, once lrpm's socket is bound.
    notify_socket: Option<Arc<str>>,
    /// Runs killed before they ended (they could not be watched), whose
    /// zombie and cgroup are left for [`ProcessTable::bury`].
    ended: Vec<(Entry, Option<containment::JobCgroup>)>,
    /// The cgroups of ended runs, whose removal is left for
    /// [`ProcessTable::bury`], after the replacements' spawns.
    emptied: Vec<containment::JobCgroup>,
    /// The killed cgroups of the runs that ended in this turn of the event
    /// loop, by job, each with the run it is named after: the job's next
    /// run, if it is spawned in the same turn (a crash's immediate
    /// restart), is cloned into it instead of a new one;
    /// [`ProcessTable::bury`] removes those left over.
    reusable: HashMap<JobId, RunId>,
    /// The live run that reuses each reused cgroup, by the run the cgroup
    /// is named after (only where the two differ), to know who sent a
    /// notification ([`ProcessTable::run_of_sender`]).
    named_runs: HashMap<RunId, RunId>,
    /// The cgroups of runs that ended during a shutdown, not killed, that
    /// the sweeper did not take (none, or its queue full): what is left in
    /// one is killed by [`ProcessTable::bury`] when it cannot be removed
    /// ([`containment::JobCgroup::clear`]).
    unkilled: Vec<containment::JobCgroup>,
    /// Whether lrpm is shutting down: no run ends to be replaced, so a
    /// run's cgroup is killed only if something outlived its main process.
    shutting_down: bool,
    /// The thread that removes the cgroups of [`ProcessTable::unkilled`]
    /// during a shutdown, beside the event loop's reaps; `None` before
    /// the shutdown, without cgroups, or if it could not start (the loop
    /// removes them itself).
    sweeper: Option<containment::Sweeper>,
    exits: ExitWatch,
    /// A pidfd numbered at or above this is closed at once
    /// ([`pidfd_threshold`]).
    pidfd_threshold: i32,
    /// The live runs without a pidfd whose exit has not been seen yet.
    pidless: HashSet<RunId>,
    /// Exits of pidfd-less runs seen and not yet handed out.
    pidless_ended: VecDeque<ExitEvent>,
    /// Whether the pidfd-less runs must be looked at (a SIGCHLD came, or a
    /// run just lost its pidfd).
    pidless_due: bool,
    /// SIGCHLD, from the first pidfd-less run on.
    sigchld: Option<SignalStream>,
    ctx: SpawnContext,
    /// Whether this binary runs `workerClass` jobs (a library-mode binary):
    /// it then re-executes itself in worker mode for them.
    worker_binary: bool,
    containment: Containment,
}

impl ProcessTable {
    /// A table that watches each child's pidfd ([`ProcessTable::next_exit`])
    /// and contains each job's processes as `containment` says. Call it
    /// within the runtime, which watches the table's epoll set.
    pub(crate) fn new(
        ctx: SpawnContext,
        worker_binary: bool,
        containment: Containment,
    ) -> io::Result<Self> {
        Ok(Self {
            entries: HashMap::new(),
            by_pid: HashMap::new(),
            notify_socket: None,
            ended: Vec::new(),
            emptied: Vec::new(),
            reusable: HashMap::new(),
            named_runs: HashMap::new(),
            unkilled: Vec::new(),
            shutting_down: false,
            sweeper: None,
            exits: ExitWatch::new()?,
            pidfd_threshold: pidfd_threshold(),
            pidless: HashSet::new(),
            pidless_ended: VecDeque::new(),
            pidless_due: false,
            sigchld: None,
            ctx,
            worker_binary,
            containment,
        })
    }

    /// The next child whose pidfd became readable (or, for a child without
    /// one, whose end a SIGCHLD revealed), with when it was seen: the event
    /// loop reaps it with [`ProcessTable::reap`]. Cancel-safe.
    pub(crate) async fn next_exit(&mut self) -> ExitEvent {
        loop {
            if let Some(exit) = self.pidless_ended.pop_front() {
                return exit;
            }
            if self.pidless_due {
                self.pidless_due = false;
                self.look_at_pidless();
                continue;
            }
            let Some(sigchld) = &mut self.sigchld else {
                return self.exits.next().await;
            };
            tokio::select! {
                exit = self.exits.next() => return exit,
                Some(()) = sigchld.recv() => self.pidless_due = true,
            }
        }
    }

    /// An exit already seen and not handed out yet, if any: the event loop
    /// takes these in the same turn as the one it waited for, so that no
    /// exit of a storm waits a turn (a batch of spawns) per exit before it.
    pub(crate) fn next_exit_now(&mut self) -> Option<ExitEvent> {
        self.pidless_ended
            .pop_front()
            .or_else(|| self.exits.try_next())
    }

    /// Peeks at every pidfd-less run, and queues those that ended.
    fn look_at_pidless(&mut self) {
        let at = Instant::now();
        let entries = &self.entries;
        let ended = &mut self.pidless_ended;
        self.pidless.retain(|run| {
            let Some(entry) = entries.get(run) else {
                return false;
            };
            // Unreaped, so the pid is still this child's.
            if waitid_pid_status(entry.pid, WaitIdOptions::NOWAIT).is_some() {
                ended.push_back(ExitEvent { run: *run, at });
                false
            } else {
                true
            }
        });
    }

    /// Gives back the capacity of the table's maps and buffers beyond what
    /// the live farm needs (a storm or a larger farm grew them), so that
    /// the allocator's trim can return it: called before each trim.
    pub(crate) fn shrink(&mut self) {
        shrink_map(&mut self.entries);
        if self.pidless.capacity() > 4 * self.pidless.len().max(16) {
            self.pidless.shrink_to_fit();
        }
        if self.pidless_ended.is_empty() {
            self.pidless_ended.shrink_to_fit();
        }
        if self.ended.is_empty() {
            self.ended.shrink_to_fit();
        }
        if self.emptied.is_empty() {
            self.emptied.shrink_to_fit();
        }
        self.exits.shrink();
    }

    /// How many live workers are followed without a pidfd, for status.
    pub(crate) fn pidless_count(&self) -> usize {
        self.entries.values().filter(|e| e.pidfd.is_none()).count()
    }

    /// Whether processes re-parented to lrpm must be reaped here
    /// ([`ProcessTable::reap_orphans`] on every SIGCHLD): lrpm is a
    /// subreaper or PID 1.
    pub(crate) fn adopts_orphans(&self) -> bool {
        self.containment.orphans.is_some()
    }

    /// Reaps the processes re-parented to lrpm that have ended, and, in the
    /// subreaper fallback, kills those whose run has ended.
    pub(crate) fn reap_orphans(&mut self) {
        if let Some(orphans) = &mut self.containment.orphans {
            let entries = &self.entries;
            orphans.reap(|run| entries.contains_key(&run));
        }
    }

    /// Names lrpm's notification socket in every worker spawned from now
    /// on (`NOTIFY_SOCKET`).
    pub(crate) fn set_notify_socket(&mut self, name: &str) {
        self.notify_socket = Some(Arc::from(name));
    }

    /// The live run that process `pid` belongs to, as the kernel says: the
    /// run's own process, or, with cgroups, any process in the run's
    /// cgroup (its children, a daemon it started); without cgroups, a
    /// descendant a few generations down its process tree. Never what a
    /// message says.
    pub(crate) fn run_of_sender(&self, pid: u32) -> Option<RunId> {
        if let Some(run) = self.by_pid.get(&pid) {
            return Some(*run);
        }
        if let Some(tree) = &self.containment.cgroups {
            let named = run_of_cgroup(pid, tree.base())?;
            let run = self.named_runs.get(&named).copied().unwrap_or(named);
            return self
                .entries
                .get(&run)
                .filter(|e| e.cgroup == Some(named))
                .map(|_| run);
        }
        let mut ancestor = pid;
        for _ in 0..SENDER_GENERATIONS {
            ancestor = lrpm_process::procfs::read_stat(ancestor)?.ppid;
            if let Some(run) = self.by_pid.get(&ancestor) {
                return Some(*run);
            }
        }
        None
    }

    /// Kills what is left once every worker has been reaped (adopted
    /// processes, cgroups); runs at shutdown.
    pub(crate) fn close(&mut self) {
        self.bury();
        // Every cgroup handed to the sweeper is dealt with before the tree
        // is killed and removed (what the sweeper could not remove, the
        // tree's close does).
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.finish();
        }
        if let Some(orphans) = &mut self.containment.orphans {
            orphans.kill_all();
        }
        if let Some(tree) = &mut self.containment.cgroups {
            tree.close();
        }
        if let Ok(limits) = &mut self.containment.memory {
            limits.close();
        }
    }

    /// Spawns the process of each run of `batch`, on two threads at once
    /// (the `lanes` module; a batch of one on the calling thread alone);
    /// returns their pids (or errors) in the order of `batch`. The table
    /// itself is only touched on the calling thread, once the children run.
    ///
    /// With cgroups, a run whose cgroup cannot be created still starts, in
    /// its process group only, with a warning: running the job matters more
    /// than containing its daemons.
    pub(crate) fn spawn_batch(&mut self, batch: &[Spawn]) -> Vec<Result<Started, SpawnError>> {
        let cgroups = self
            .containment
            .cgroups
            .as_ref()
            .map(|tree| tree.runs().clone());
        let memory = self
            .containment
            .memory
            .as_ref()
            .ok()
            .map(|limits| match limits.v1_runs() {
                Some(runs) => MemoryRuns::V1(runs.clone()),
                None => MemoryRuns::Unified,
            });
        let ctx = self.ctx.clone();
        let worker_binary = self.worker_binary;
        let notify = self.notify_socket.clone();
        // A run whose job's last run ended in this turn reuses its cgroup,
        // unless its memory is capped: the cap is set on a fresh cgroup,
        // and its OOM-kill counter must be the run's own.
        let inputs: Vec<(Spawn, Option<RunId>)> = batch
            .iter()
            .map(|s| {
                let reuse = match s.spec.memory_max {
                    None => self.reusable.remove(&s.job),
                    Some(_) => None,
                };
                (s.clone(), reuse)
            })
            .collect();
        let reused: Vec<Option<RunId>> = inputs.iter().map(|(_, reuse)| *reuse).collect();
        let started =
            lrpm_process::lanes::map(inputs, move |(s, reuse): &(Spawn, Option<RunId>)| {
                let trees = (cgroups.as_ref(), memory.as_ref());
                start(trees, &ctx, worker_binary, notify.as_deref(), s, *reuse)
            });
        batch
            .iter()
            .zip(reused)
            .zip(started)
            .map(|((s, reused), started)| {
                // A cgroup that could not be reopened is removed as usual.
                if let Some(named) = reused.filter(|named| Some(*named) != started.named) {
                    if let Some(tree) = &self.containment.cgroups {
                        self.emptied.push(tree.runs().run(&s.job, named));
                    }
                }
                self.admit(s.run, &s.job, started)
            })
            .collect()
    }

    /// Puts a started run in the table, its exit watched; returns its pid
    /// and pipes.
    fn admit(&mut self, run: RunId, job: &JobId, started: Starting) -> Result<Started, SpawnError> {
        let Starting {
            spawned,
            cgroup,
            named,
            memory,
            capped,
        } = started;
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                for cgroup in [cgroup, memory].into_iter().flatten() {
                    cgroup.remove();
                }
                return Err(e);
            }
        };
        let pid = spawned.pid;
        let (pidfd, watched) = if spawned.pidfd.as_raw_fd() >= self.pidfd_threshold {
            // Descriptors run short: follow it by its pid. SIGCHLD is
            // listened to before the pidfd is closed, and the pidfd-less
            // runs looked at once after, so an exit in between is seen.
            match self.listen_to_sigchld() {
                Ok(()) => {
                    drop(spawned.pidfd);
                    self.pidless.insert(run);
                    self.pidless_due = true;
                    (None, Ok(()))
                }
                Err(e) => (Some(spawned.pidfd), Err(e)),
            }
        } else {
            let watched = self.exits.watch(run, spawned.pidfd.as_fd(), false);
            (Some(spawned.pidfd), watched)
        };
        let named = named.filter(|_| cgroup.is_some());
        let entry = Entry {
            job: job.clone(),
            pid,
            pidfd,
            cgroup: named,
            cgroup_killed: Cell::new(false),
            memory: capped,
        };
        if let Err(e) = watched {
            // It cannot be watched: kill it, and bury it with the ended runs.
            self.emptied.extend(memory);
            self.end(entry, cgroup);
            return Err(SpawnError::Io(e));
        }
        self.by_pid.insert(pid.as_raw_nonzero().get() as u32, run);
        if let Some(named) = named.filter(|named| *named != run) {
            self.named_runs.insert(named, run);
        }
        self.entries.insert(run, entry);
        let (stdout, stderr) = spawned
            .output
            .ok_or_else(|| io::Error::other("invariant: a worker's output is piped"))?;
        Ok(Started {
            pid: pid.as_raw_nonzero().get() as u32,
            stdout,
            stderr,
        })
    }

    /// Why jobs with a `memoryMax` cannot run here (they are invalid with
    /// that reason), or `None` when their cap is enforced.
    pub(crate) fn memory_limits_unavailable(&self) -> Option<&str> {
        self.containment.memory.as_ref().err().map(String::as_str)
    }

    /// Makes lrpm a subreaper that reaps what it adopts, for worker hosts
    /// (their workers are re-parented to lrpm).
    pub(crate) fn adopt_orphans(&mut self) -> io::Result<()> {
        self.containment.adopt_orphans()
    }

    /// The environment of run `run` of `spec`, as a spawn here would give
    /// it, for a worker host to set in the worker it forks.
    pub(crate) fn hosted_env(
        &self,
        run: RunId,
        job: &JobId,
        spec: &JobSpec,
    ) -> Vec<(String, String)> {
        worker_env(run, job, spec, self.notify_socket.as_deref())
    }

    /// The cgroup of run `run` of `job` and its directory, created before
    /// its host forks the worker: a host that can forks it there
    /// (`CLONE_INTO_CGROUP`), and [`ProcessTable::admit_hosted`] moves it
    /// there otherwise. `None` without cgroups, or (logged) when it cannot
    /// be created: the worker then runs without one.
    pub(crate) fn hosted_cgroup(
        &self,
        run: RunId,
        job: &JobId,
    ) -> Option<(containment::JobCgroup, OwnedFd)> {
        let tree = self.containment.cgroups.as_ref()?;
        match tree.runs().create_run(job, run) {
            Ok(created) => Some(created),
            Err(e) => {
                tracing::warn!(%job, "cannot create a cgroup for the hosted worker: {e}");
                None
            }
        }
    }

    /// Takes the worker a host forked for run `run` as lrpm's own: its
    /// `hello` (waiting on `ours`, lrpm's end of its socket) names it by the
    /// kernel's credentials; it must be the pid the host said (`pid`) and
    /// lrpm's child. It is moved into the run's `cgroup` unless its host
    /// forked it there, watched like any worker, and told `go`. On an
    /// error, the worker (if any) exits by itself when `ours` closes, and
    /// the cgroup is killed and removed.
    pub(crate) fn admit_hosted(
        &mut self,
        run: RunId,
        job: &JobId,
        pid: u32,
        ours: OwnedFd,
        (stdout, stderr): (OwnedFd, OwnedFd),
        cgroup: Option<containment::JobCgroup>,
    ) -> Result<Started, SpawnError> {
        let mut cgroup = cgroup;
        let admitted = self.admit_hosted_in(run, job, pid, &ours, (stdout, stderr), &mut cgroup);
        if let Some(cgroup) = cgroup {
            cgroup.kill();
            cgroup.remove();
        }
        let started = admitted?;
        let go = lrpm_proto::host::go(std::process::id());
        if let Err(e) = rustix::net::send(
            &ours,
            &go,
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        ) {
            // It exits on the hang-up; its exit is watched.
            tracing::warn!(%job, "cannot tell the hosted worker to go: {e}");
        }
        Ok(started)
    }

    /// [`ProcessTable::admit_hosted`] up to `go`; takes `cgroup` once the
    /// worker is admitted with it, and leaves it to the caller otherwise.
    fn admit_hosted_in(
        &mut self,
        run: RunId,
        job: &JobId,
        pid: u32,
        ours: &OwnedFd,
        (stdout, stderr): (OwnedFd, OwnedFd),
        cgroup: &mut Option<containment::JobCgroup>,
    ) -> Result<Started, SpawnError> {
        use lrpm_process::hosted;
        let io_err = |what: &str, e: io::Error| {
            SpawnError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
        };
        let hello = hosted::recv_hello(ours.as_fd())
            .map_err(|e| io_err("the worker's hello", e))?
            .ok_or_else(|| {
                SpawnError::Io(io::Error::other(
                    "the host said forked, but the worker sent no hello first (docs/hosts.md)",
                ))
            })?;
        if !lrpm_proto::host::is_hello(&hello.payload) {
            return Err(SpawnError::Io(io::Error::other(
                "the worker's first datagram is not a hello",
            )));
        }
        let sender = hello.pid.as_raw_nonzero().get() as u32;
        if sender != pid {
            return Err(SpawnError::Io(io::Error::other(format!(
                "the host said it forked {pid}, but the hello came from {sender}"
            ))));
        }
        hosted::adopt(hello.pid, hello.pidfd.as_fd()).map_err(|e| {
            io_err(
                "the worker is not lrpm's child (a host forks twice, docs/hosts.md)",
                e,
            )
        })?;
        // A host that forks into the run's cgroup spares the move, which
        // waits for an RCU grace period (milliseconds) in the kernel.
        let placed = match (&*cgroup, &self.containment.cgroups) {
            (Some(cgroup), Some(tree)) => {
                run_of_cgroup(sender, tree.base()) == Some(run)
                    || match hosted::join_cgroup(cgroup.dir(), hello.pid) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(%job, "cannot move the hosted worker into its cgroup: {e}");
                            false
                        }
                    }
            }
            _ => false,
        };
        let cgroup = if placed { cgroup.take() } else { None };
        self.admit(
            run,
            job,
            Starting {
                spawned: Ok(lrpm_process::command::Spawned {
                    pid: hello.pid,
                    pidfd: hello.pidfd,
                    output: Some((stdout, stderr)),
                }),
                cgroup,
                named: Some(run),
                // A hosted job has no memoryMax (see the core's decl).
                memory: None,
                capped: false,
            },
        )
    }

    /// Listens to SIGCHLD, if it does not already.
    fn listen_to_sigchld(&mut self) -> io::Result<()> {
        if self.sigchld.is_none() {
            self.sigchld = Some(signal(SignalKind::child())?);
            tracing::warn!(
                "lrpm's descriptors run short (soft RLIMIT_NOFILE {}): new workers are followed \
                 by their pids, without a pidfd each",
                self.pidfd_threshold_limit()
            );
        }
        Ok(())
    }

    /// The soft descriptor limit the threshold was computed from, for the log.
    fn pidfd_threshold_limit(&self) -> String {
        rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
    }

    /// Sends `signal` to the process group of `run`, and to the process
    /// itself if it has left its group; SIGKILL also goes to the run's whole
    /// cgroup. Any other signal is followed by SIGCONT, as systemd does, so
    /// that a stopped worker (SIGSTOP, a debugger detached badly) gets to
    /// handle its stop signal rather than wait for the SIGKILL. A process
    /// already reaped is not signalled.
    pub(crate) fn signal(&self, run: RunId, signal: Signal) {
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
                let _ = match &entry.pidfd {
                    Some(pidfd) => pidfd_send_signal(pidfd.as_fd(), sig),
                    // Not reaped yet, so the pid is still this child's.
                    None => kill_process(entry.pid, sig),
                };
            }
        };
        send(sig);
        // A stopped process handles its signal at once (as systemd does),
        // but an operator's SIGSTOP stays one.
        if !matches!(signal, Signal::Kill | Signal::Stop | Signal::Cont) {
            send(rustix::process::Signal::CONT);
        }
        if signal == Signal::Kill {
            if let Some(cgroup) = self.cgroup(entry) {
                entry.cgroup_killed.set(true);
                cgroup.kill();
            }
        }
    }

    /// The cgroup v1 memory cgroup of run `run`, if it has one.
    fn memory_cgroup(&self, run: RunId, entry: &Entry) -> Option<containment::JobCgroup> {
        let limits = self.containment.memory.as_ref().ok()?;
        let runs = limits.v1_runs().filter(|_| entry.memory)?;
        Some(runs.run(&entry.job, run))
    }

    /// The cgroup of run `run`, if it has one.
    fn cgroup(&self, entry: &Entry) -> Option<containment::JobCgroup> {
        let tree = self.containment.cgroups.as_ref()?;
        Some(tree.runs().run(&entry.job, entry.cgroup?))
    }

    /// Takes the end of process `run`: kills whatever is left of its
    /// process group and of its cgroup (or, in the subreaper fallback, the
    /// processes it left behind), and returns its job and how it ended; or
    /// `None` if it is not known or not finished. The zombie is reaped
    /// here, once its group was killed (so that no exit waits for a turn of
    /// spawns to be reaped); the cgroup is removed by
    /// [`ProcessTable::bury`]: the replacement's spawn does not wait for
    /// that. During a shutdown it goes to the sweeper's thread at once.
    pub(crate) fn reap(&mut self, run: RunId) -> Option<(JobId, ExitStatus)> {
        let entry = self.entries.get(&run)?;
        // Peek only: a spurious wake-up must not kill a live group, and the
        // zombie keeps the group id from being reused until it is reaped,
        // after the group's SIGKILL below.
        let status = match &entry.pidfd {
            Some(pidfd) => waitid_status(pidfd.as_fd(), WaitIdOptions::NOWAIT),
            None => waitid_pid_status(entry.pid, WaitIdOptions::NOWAIT),
        };
        let Some(status) = status else {
            // Still running: watch it again (its watch was one-shot).
            match &entry.pidfd {
                Some(pidfd) => {
                    if let Err(e) = self.exits.watch(run, pidfd.as_fd(), true) {
                        tracing::error!(job = %entry.job, "cannot watch the worker's exit: {e}");
                    }
                }
                None => {
                    self.pidless.insert(run);
                }
            }
            return None;
        };
        let cgroup = self.cgroup(entry);
        let memory = self.memory_cgroup(run, entry);
        // An OOM kill where its memory is capped is the reason it ended
        // (the kernel's counter: the exit status alone says only SIGKILL).
        let capped_in = match &memory {
            Some(memory) => Some(memory),
            None => cgroup.as_ref().filter(|_| entry.memory),
        };
        let oom_killed = capped_in.is_some_and(|c| c.oom_kills() > 0);
        let entry = self.entries.remove(&run)?;
        self.by_pid
            .remove(&(entry.pid.as_raw_nonzero().get() as u32));
        if let Some(named) = entry.cgroup.filter(|named| *named != run) {
            self.named_runs.remove(&named);
        }
        self.pidless.remove(&run);
        let job = entry.job.clone();
        // Kill what is left of its group while the zombie still pins the
        // group id, and of its cgroup; then reap the zombie at once (it has
        // ended, so this does not wait): under a storm an exit must not
        // wait for a turn of spawns to be reaped. Only the cgroup's removal
        // waits for `bury`.
        let _ = kill_process_group(entry.pid, rustix::process::Signal::KILL);
        let unkilled = match cgroup {
            // During a shutdown nothing is spawned in between: the cgroup
            // is killed only if it cannot be removed, which saves writing
            // `cgroup.kill` for every run whose processes all ended
            // (a third of a worker's cost to a shutdown, bench/README.md).
            Some(cgroup) if self.shutting_down => Some(cgroup),
            Some(cgroup) => {
                // Left empty by its run (nothing escaped, as is the rule),
                // never killed and without a memory cap, it may serve the
                // job's next run if that is spawned in this turn (a
                // crash's restart): the clone into it saves the kernel a
                // cgroup's creation and removal on the restart's path,
                // and checking it is empty costs what killing it did. A
                // cgroup that holds anything is killed, and removed.
                let reusable = !entry.memory
                    && !entry.cgroup_killed.get()
                    && cgroup.holds_processes() == Some(false);
                match (entry.cgroup, &self.containment.cgroups) {
                    (Some(named), Some(tree)) if reusable => {
                        if let Some(old) = self.reusable.insert(job.clone(), named) {
                            self.emptied.push(tree.runs().run(&job, old));
                        }
                    }
                    _ => {
                        cgroup.kill();
                        self.emptied.push(cgroup);
                    }
                }
                None
            }
            None => None,
        };
        reap_now(&entry);
        if let Some(cgroup) = unkilled {
            // To the sweeper's thread at once, so that its removal runs
            // beside the next reaps; or to `bury`.
            let left = match &self.sweeper {
                Some(sweeper) => sweeper.sweep(cgroup).err(),
                None => Some(cgroup),
            };
            self.unkilled.extend(left);
        }
        self.emptied.extend(memory);
        let status = if oom_killed {
            status.because(ExitReason::OomKilled)
        } else {
            status
        };
        // In the subreaper fallback the run's escaped processes were
        // adopted: kill them now that their run has ended. With cgroups
        // (lrpm a subreaper for its worker hosts only) the cgroup's kill
        // did that, and adopted processes that end are reaped on SIGCHLD:
        // listing every child here would put a pass over the whole farm
        // before each crash's restart.
        if self
            .containment
            .orphans
            .as_ref()
            .is_some_and(containment::Orphans::culls)
        {
            self.reap_orphans();
        }
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

    /// Reaps the runs killed by [`ProcessTable::end`], closing their pidfds
    /// (which leave the epoll set), and removes the cgroups of every ended
    /// run.
    pub(crate) fn bury(&mut self) {
        for (entry, cgroup) in self.ended.drain(..) {
            reap_now(&entry);
            if let Some(cgroup) = cgroup {
                cgroup.remove();
            }
        }
        if let Some(tree) = &self.containment.cgroups {
            for (job, named) in self.reusable.drain() {
                tree.runs().run(&job, named).remove();
            }
        }
        for cgroup in self.emptied.drain(..) {
            cgroup.remove();
        }
        for cgroup in self.unkilled.drain(..) {
            cgroup.clear();
        }
    }

    /// Whether cgroups of ended runs may still exist: handed to the
    /// sweeper and not yet removed. Until then, no job whose run ended
    /// may count as gone (a cluster node keeps its owner key).
    pub(crate) fn sweeping(&self) -> bool {
        self.sweeper
            .as_ref()
            .is_some_and(containment::Sweeper::pending)
    }

    /// From now on lrpm is shutting down: no run that ends is replaced.
    pub(crate) fn shutting_down(&mut self) {
        self.shutting_down = true;
        if self.sweeper.is_none() && self.containment.cgroups.is_some() {
            match containment::Sweeper::start() {
                Ok(sweeper) => self.sweeper = Some(sweeper),
                Err(e) => {
                    tracing::warn!(
                        "cannot start the cgroup sweeper thread ({e}): removing them on the event loop"
                    );
                }
            }
        }
    }
}

/// Reaps `entry`'s process, which has ended or was just SIGKILLed (waiting
/// for its end), through its pidfd or by its pid.
fn reap_now(entry: &Entry) {
    match &entry.pidfd {
        Some(pidfd) => reap_child_blocking(entry.pid, pidfd.as_fd()),
        None => reap_pid_blocking(entry.pid),
    }
}

/// Shrinks `map` to its length when it uses less than a quarter of its
/// capacity (a map that shrinks by a little at each churn is left alone).
fn shrink_map<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 4 * map.len().max(16) {
        map.shrink_to_fit();
    }
}

/// The number from which a new worker's pidfd is closed and the worker
/// followed by its pid: the top eighth of the soft descriptor limit, and at
/// least 64 descriptors below it (for spawns in flight, control
/// connections, hubs), but never below half of it, where the output hubs
/// take over the pipes. With the limit lrpm raises itself to (the hard one,
/// 20,000 or more), that is beyond any farm lrpm is measured with.
fn pidfd_threshold() -> i32 {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        None => i32::MAX,
        Some(soft) => {
            let threshold = soft.saturating_sub((soft / 8).max(64)).max(soft / 2);
            i32::try_from(threshold).unwrap_or(i32::MAX)
        }
    }
}

/// A spawn the core asked for ([`lrpm_core::supervisor::Action::Spawn`]).
#[derive(Debug, Clone)]
pub(crate) struct Spawn {
    pub(crate) run: RunId,
    pub(crate) job: JobId,
    /// The declaration it runs.
    pub(crate) spec: Arc<JobSpec>,
    /// Why it starts, for the log.
    pub(crate) reason: Reason,
}

/// A run just started: its pid and the read ends of its stdout and stderr,
/// for the output forwarding.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: u32,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// A run's spawn, done on any thread, before the table admits it.
struct Starting {
    spawned: Result<lrpm_process::command::Spawned, SpawnError>,
    /// Its cgroup; removed by the table if the spawn failed.
    cgroup: Option<containment::JobCgroup>,
    /// The run its cgroup is named after: its own, or the earlier run of
    /// its job whose cgroup it reuses; `None` without a cgroup.
    named: Option<RunId>,
    /// Its cgroup v1 memory cgroup (`memoryMax`); removed by the table if
    /// the spawn failed.
    memory: Option<containment::JobCgroup>,
    /// Whether its memory is capped (`memoryMax`), by `memory` or by its
    /// cgroup's `memory.max`.
    capped: bool,
}

/// How the spawning threads cap a run's memory ([`containment::MemoryLimits`]).
#[derive(Debug, Clone)]
enum MemoryRuns {
    /// cgroup v2: the `memory.max` of the run's cgroup.
    Unified,
    /// cgroup v1: a memory cgroup of its own, under this tree.
    V1(containment::RunCgroups),
}

/// Creates run `run`'s cgroup (under `cgroups`, if given) and starts its
/// child in it. A cgroup that cannot be created is warned about, and the
/// run starts without one; unless it failed for want of descriptors
/// (`EMFILE`, `ENFILE`): then the run does not start, and its spawn fails
/// with that error, to be retried (a job never loses its containment to
/// lrpm's descriptor limit).
///
/// A job with a `memoryMax` gets its cap before its child starts: on cgroup
/// v2 in its cgroup's `memory.max`, on cgroup v1 in a memory cgroup of its
/// own (under `memory`), which its child joins before it executes its
/// program. When the cap cannot be set, the spawn fails with that error (a
/// job never runs without its cap).
fn start(
    (cgroups, memory): (Option<&containment::RunCgroups>, Option<&MemoryRuns>),
    ctx: &SpawnContext,
    worker_binary: bool,
    notify_socket: Option<&str>,
    s: &Spawn,
    reuse: Option<RunId>,
) -> Starting {
    let Spawn { run, job, spec, .. } = s;
    let run = *run;
    let failed = |e: io::Error, cgroup: Option<_>, named| Starting {
        spawned: Err(SpawnError::Io(e)),
        named: cgroup.as_ref().and(named),
        cgroup,
        memory: None,
        capped: false,
    };
    // The job's last cgroup, killed when its run ended, if it is to be
    // reused (and can still be opened); else a new one.
    let reopened = match (cgroups, reuse) {
        (Some(runs), Some(named)) => runs
            .open_run(job, named)
            .ok()
            .map(|(cgroup, procs)| (cgroup, procs, named)),
        _ => None,
    };
    let (cgroup, procs, named) = match (cgroups, reopened) {
        (None, _) => (None, None, None),
        (Some(_), Some((cgroup, procs, named))) => (Some(cgroup), Some(procs), Some(named)),
        (Some(runs), None) => match runs.create_run(job, run) {
            Ok((cgroup, procs)) => (Some(cgroup), Some(procs), Some(run)),
            Err(e) if out_of_descriptors(&e) => return failed(e, None, None),
            Err(e) => {
                tracing::warn!(
                    %job,
                    "cannot create a cgroup under {}: {e}; starting it without one",
                    runs.base().display()
                );
                (None, None, None)
            }
        },
    };
    let (memory, memory_procs) = match (spec.memory_max, memory) {
        (None, _) => (None, None),
        (Some(max), Some(MemoryRuns::Unified)) => {
            let capped = match &cgroup {
                Some(cgroup) => cgroup.limit_memory(max),
                None => Err(io::Error::other("it has no cgroup")),
            };
            if let Err(e) = capped {
                let e = io::Error::new(
                    e.kind(),
                    format!("cannot set its cgroup's memory.max (memoryMax): {e}"),
                );
                return failed(e, cgroup, named);
            }
            (None, None)
        }
        (Some(max), Some(MemoryRuns::V1(runs))) => match runs.create_memory_run(job, run, max) {
            Ok((memory, procs)) => (Some(memory), Some(procs)),
            Err(e) => {
                let e = io::Error::new(
                    e.kind(),
                    format!("cannot create its memory cgroup (memoryMax): {e}"),
                );
                return failed(e, cgroup, named);
            }
        },
        (Some(_), None) => {
            return failed(
                io::Error::other("memoryMax: no memory cgroups here"),
                cgroup,
                named,
            );
        }
    };
    Starting {
        spawned: spawn(
            run,
            job,
            spec,
            ctx,
            worker_binary,
            (procs, memory_procs),
            notify_socket,
        ),
        cgroup,
        named,
        memory,
        capped: spec.memory_max.is_some(),
    }
}

/// How many generations up its process tree a notification's sender is
/// looked for among the workers, without cgroups (a `sh -c` wrapper and
/// its child, a pool's workers).
const SENDER_GENERATIONS: usize = 4;

/// The run whose cgroup process `pid` is in, if that cgroup is one of the
/// tree at `base` (`…/lrpm-PID/job-ID-RUN`): read from
/// `/proc/PID/cgroup`'s cgroup v2 line.
fn run_of_cgroup(pid: u32, base: &std::path::Path) -> Option<RunId> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let (parent, leaf) = path.trim_end().rsplit_once('/')?;
    let tree = base.file_name()?.to_str()?;
    if parent.rsplit('/').next() != Some(tree) || !leaf.starts_with("job-") {
        return None;
    }
    let (_, run) = leaf.rsplit_once('-')?;
    run.parse().ok().map(RunId)
}

/// Whether `error` is a lack of descriptors (lrpm's or the system's).
fn out_of_descriptors(error: &io::Error) -> bool {
    let errno = error.raw_os_error();
    errno == Some(rustix::io::Errno::MFILE.raw_os_error())
        || errno == Some(rustix::io::Errno::NFILE.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_environment_names_its_job_and_run() {
        let spec = JobSpec::new("w", Program::Argv(vec!["w".into()]));
        let cmd =
            command(RunId(7), &JobId::from("j"), &spec, false, Some("@s")).expect("a command");
        let text = format!("{cmd:?}");
        for name in [
            base::JOB_ID_ENV,
            base::JOB_NAME_ENV,
            base::WORKER_CONFIG_ENV,
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
        assert!(text.contains(containment::RUN_ID_ENV));
        assert!(text.contains("NOTIFY_SOCKET") && text.contains("@s"));
        assert!(
            !text.contains(base::INSTANCE_ENV),
            "no LRPM_INSTANCE without instances"
        );
        let mut copy = spec.clone();
        copy.instance = Some(4);
        let cmd = command(RunId(7), &JobId::from("j#4"), &copy, false, None).expect("a command");
        assert!(
            format!("{cmd:?}").contains(r#""LRPM_INSTANCE", "4""#),
            "{cmd:?}"
        );
        let class = JobSpec::new("c", Program::WorkerClass("C".into()));
        assert!(command(RunId(7), &JobId::from("j"), &class, false, None).is_err());
        let worker = command(RunId(7), &JobId::from("j"), &class, true, None).expect("a worker");
        assert!(format!("{worker:?}").contains(base::WORKER_ROLE));
    }
}
