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
//! Reaping kills what is left of the worker's process group first, so a
//! restarted job can never meet the grandchildren of its previous run. With
//! cgroups (`lrpm_process::containment`) each run also has a cgroup of its
//! own, which the child joins before anything else; reaping and a stop's
//! SIGKILL kill the whole cgroup, so a daemon that left the process group
//! dies with its job too.
//!
//! The table does not forward output: a spawn hands the run's pipes back to
//! the event loop, which gives them to the output forwarding.
//!
//! Architecture invariant: workers are spawned only from the event loop's
//! thread and the spawn helper of `lrpm_process::lanes`, which both live as
//! long as lrpm, because the parent-death signal fires when the *thread*
//! that spawned exits.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use lrpm_core::job::{JobId, JobSpec, Program, Signal};
use lrpm_core::status::ExitStatus;
use lrpm_core::supervisor::RunId;
use lrpm_process::children::{reap_child_blocking, waitid_status};
use lrpm_process::command::{
    SpawnContext, SpawnError, SpawnRequest, resolve_identity, spawn_command,
};
use lrpm_process::containment::{self, Containment};
use lrpm_process::exits::{ExitEvent, ExitWatch};
use lrpm_process::signal::to_rustix;
use rustix::process::{Pid, WaitIdOptions, getpgid, kill_process_group, pidfd_send_signal};

use crate::base::{self, Role};

/// Builds the request for run `run` of a declaration.
fn command(
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
    worker_binary: bool,
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
    let mut cmd = cmd
        .env(base::JOB_ID_ENV, job.as_str())
        .env(base::JOB_NAME_ENV, &spec.name)
        .env(base::WORKER_CONFIG_ENV, spec.worker_config.to_string())
        .env(containment::RUN_ID_ENV, containment::run_id_value(run));
    for (name, value) in &spec.env {
        cmd = cmd.env(name, value);
    }
    if let Some(cwd) = &spec.cwd {
        cmd = cmd.current_dir(cwd);
    }
    Ok(cmd)
}

/// Spawns run `run` of a worker for `spec`; with `cgroup` (the directory of
/// the run's cgroup) the child starts in that cgroup.
fn spawn(
    run: RunId,
    job: &JobId,
    spec: &JobSpec,
    ctx: &SpawnContext,
    worker_binary: bool,
    cgroup: Option<OwnedFd>,
) -> Result<lrpm_process::command::Spawned, SpawnError> {
    let identity = resolve_identity(spec.user.as_deref(), spec.group.as_deref())?;
    let cmd = command(run, job, spec, worker_binary)?
        .identity(identity)
        .cgroup(cgroup);
    spawn_command(cmd, ctx)
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
pub(crate) struct ProcessTable {
    entries: HashMap<RunId, Entry>,
    /// Ended runs whose zombie and cgroup are left for
    /// [`ProcessTable::bury`], after the replacements' spawns.
    ended: Vec<(Entry, Option<containment::JobCgroup>)>,
    exits: ExitWatch,
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
            ended: Vec::new(),
            exits: ExitWatch::new()?,
            ctx,
            worker_binary,
            containment,
        })
    }

    /// The next child whose pidfd became readable, with when it was seen:
    /// the event loop reaps it with [`ProcessTable::reap`]. Cancel-safe.
    pub(crate) async fn next_exit(&mut self) -> ExitEvent {
        self.exits.next().await
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

    /// Kills what is left once every worker has been reaped (adopted
    /// processes, cgroups); runs at shutdown.
    pub(crate) fn close(&mut self) {
        self.bury();
        if let Some(orphans) = &mut self.containment.orphans {
            orphans.kill_all();
        }
        if let Some(tree) = &mut self.containment.cgroups {
            tree.close();
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
        let ctx = self.ctx.clone();
        let worker_binary = self.worker_binary;
        let started = lrpm_process::lanes::map(batch.to_vec(), move |s: &Spawn| {
            start(cgroups.as_ref(), &ctx, worker_binary, s)
        });
        batch
            .iter()
            .zip(started)
            .map(|(s, started)| self.admit(s.run, &s.job, started))
            .collect()
    }

    /// Puts a started run in the table, its exit watched; returns its pid
    /// and pipes.
    fn admit(&mut self, run: RunId, job: &JobId, started: Starting) -> Result<Started, SpawnError> {
        let Starting { spawned, cgroup } = started;
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
    pub(crate) fn reap(&mut self, run: RunId) -> Option<(JobId, ExitStatus)> {
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
    pub(crate) fn bury(&mut self) {
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
pub(crate) struct Spawn {
    pub(crate) run: RunId,
    pub(crate) job: JobId,
    /// The declaration it runs.
    pub(crate) spec: Arc<JobSpec>,
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
}

/// Creates run `run`'s cgroup (under `cgroups`, if given) and starts its
/// child in it. A cgroup that cannot be created is warned about, and the
/// run starts without one.
fn start(
    cgroups: Option<&containment::RunCgroups>,
    ctx: &SpawnContext,
    worker_binary: bool,
    s: &Spawn,
) -> Starting {
    let Spawn { run, job, spec } = s;
    let run = *run;
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
    Starting {
        spawned: spawn(run, job, spec, ctx, worker_binary, procs),
        cgroup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_environment_names_its_job_and_run() {
        let spec = JobSpec::new("w", Program::Argv(vec!["w".into()]));
        let cmd = command(RunId(7), &JobId::from("j"), &spec, false).expect("a command");
        let text = format!("{cmd:?}");
        for name in [
            base::JOB_ID_ENV,
            base::JOB_NAME_ENV,
            base::WORKER_CONFIG_ENV,
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
        assert!(text.contains(containment::RUN_ID_ENV));
        let class = JobSpec::new("c", Program::WorkerClass("C".into()));
        assert!(command(RunId(7), &JobId::from("j"), &class, false).is_err());
        let worker = command(RunId(7), &JobId::from("j"), &class, true).expect("a worker");
        assert!(format!("{worker:?}").contains(base::WORKER_ROLE));
    }
}
