//! The supervisor's event loop: the imperative shell around
//! [`lrpm_core::supervisor::Supervisor`].
//!
//! # Theory of operation
//!
//! One task on a current-thread tokio runtime owns the core and the process
//! table. It sleeps in one `select!` until something happens: a child's pidfd
//! became readable, the source sent a configuration, a control request
//! arrived, a signal came, or the core's next deadline passed. It feeds the
//! event to the core with the current time, then performs every action the
//! core queued (spawn, signal), and goes back to sleep. Nothing polls; at
//! rest the process uses no CPU.
//!
//! Sources and control connections run as their own tasks and talk to the
//! loop through channels; only the loop touches the core. Since they run on
//! the loop's thread, the loop yields to them between two turns, and spawns
//! in bounded batches, so that a crash storm never keeps them waiting.
//! Exits are not rationed that way: every exit already reported is handled
//! at the top of each turn (and in the turn that woke for one), so that
//! under a storm none waits more than one turn of spawns to be reaped.
//!
//! When lrpm adopts orphans (a subreaper, or PID 1), SIGCHLD wakes the loop
//! too, to reap them ([`lrpm_process::containment`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lrpm_core::human;
use lrpm_core::job::{JobId, Signal};
use lrpm_core::status::{ExitReason, ExitStatus, ProcessUsage, SupervisorStatus};
use lrpm_core::supervisor::{
    Action, AfterExit, CommandError, ConfigOutcome, Interrupted, Notified, ProbeOutcome, Reason,
    RunId, Signalled, Supervisor,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::cluster::{Cluster, ClusterEvent, Outcome};
use crate::control::{ControlMsg, Reply};
use lrpm_process::command::SpawnError;
use lrpm_process::exits::ExitEvent;
use lrpm_process::notify::{Datagram, NotifySocket};

use crate::host::{HostEvent, Hosts};
use crate::hub::Forwarding;
use crate::logburst::{Kind, LogBurst};
use crate::probe::{ProbeResult, Probes};
use crate::process::{ProcessTable, Spawn, Started};
use crate::source::{Loaded, SourceHandle, SourceMonitor, SourceUpdate};
use crate::systemd::{self, Systemd};
use crate::web::{LoadCounts, Snapshot, WebRequest};
use lrpm_proto::codec::{Request, Response};

/// The usage of a status's processes, being read on a blocking thread.
type UsageRead = tokio::task::JoinHandle<HashMap<u32, ProcessUsage>>;

/// Seconds since the Unix epoch, now.
pub(crate) fn wall_now() -> f64 {
    wall(SystemTime::now())
}

/// Seconds since the Unix epoch at `time`.
fn wall(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Everything the event loop needs, set up before it starts.
#[derive(Debug)]
pub(crate) struct Shell {
    /// The supervision core.
    pub(crate) core: Supervisor,
    /// Live children; it also reports their exits.
    pub(crate) procs: ProcessTable,
    /// Where a new worker's output goes.
    pub(crate) output: Forwarding,
    /// Loaded configurations.
    pub(crate) updates: mpsc::UnboundedReceiver<SourceUpdate>,
    /// The running source.
    pub(crate) source: SourceHandle,
    /// What the source says of its connection, for status.
    pub(crate) source_monitor: SourceMonitor,
    /// Control requests.
    pub(crate) control: mpsc::Receiver<ControlMsg>,
    /// When the supervisor started (UTC seconds).
    pub(crate) started_at: f64,
    /// The `workerClass` names this binary can run: `None` for the plain
    /// `lrpm` binary, which runs commands only.
    pub(crate) worker_classes: Option<BTreeSet<String>>,
    /// How long after `lrpmctl reload --force` the configuration the source
    /// delivers next may still pass the removal guard: the longest a load
    /// may take, and some.
    pub(crate) force_window: Duration,
    /// The buffer size the next status line starts with: about the last
    /// one's, so that it is written without growing.
    pub(crate) status_size: usize,
    /// The workers' CPU time and memory for a status that asks for them.
    pub(crate) usage: Arc<crate::usage::UsageCache>,
    /// How many attempts to load the source have finished, for status.
    pub(crate) loads: u64,
    /// When the last of them began (UTC seconds), for status.
    pub(crate) last_attempt_at: Option<f64>,
    /// The jobs that lrpm's descriptor limit holds back.
    pub(crate) held_back: HeldBack,
    /// The workers' notification socket (`NOTIFY_SOCKET`), if it could be
    /// bound.
    pub(crate) notify: Option<NotifySocket>,
    /// Health probes under way.
    pub(crate) probes: Probes,
    /// What systemd is told, when lrpm runs as its notify service.
    pub(crate) systemd: Systemd,
    /// Requests of the `--metrics` web server, if it runs.
    pub(crate) web: Option<mpsc::Receiver<WebRequest>>,
    /// How the source's loads ended, for the metrics.
    pub(crate) load_counts: LoadCounts,
    /// The cluster this node belongs to: `None` runs every job here.
    pub(crate) cluster: Option<Cluster>,
    /// The guardian's heartbeat (the cluster mode's dead-man's switch).
    pub(crate) guardian: crate::guardian::Handle,
    /// The deadline of the last heartbeat sent to the guardian.
    pub(crate) guarded_until: Option<Instant>,
    /// The worker hosts, and the runs they have not forked yet.
    pub(crate) hosts: Hosts,
    /// Which start and stop lines are logged one by one at info, and the
    /// summaries of the rest (a mass start is one event, not 10,000 lines).
    pub(crate) log_burst: LogBurst,
}

/// The jobs whose last spawn failed for want of descriptors: they wait
/// [`DESCRIPTOR_RETRY`] and try again, and status says so.
#[derive(Debug, Default)]
pub(crate) struct HeldBack {
    jobs: HashSet<JobId>,
    /// Whether the log has said so (once in lrpm's life: under a limit
    /// that keeps a farm on the edge, jobs are held back and let go every
    /// few seconds).
    logged: bool,
}

impl Shell {
    /// Runs until a shutdown has finished: every child reaped.
    pub(crate) async fn run(mut self) {
        let mut sigterm =
            signal(SignalKind::terminate()).expect("invariant: signal handlers install");
        let mut sigint =
            signal(SignalKind::interrupt()).expect("invariant: signal handlers install");
        let mut sighup = signal(SignalKind::hangup()).expect("invariant: signal handlers install");
        let mut sigusr1 =
            signal(SignalKind::user_defined1()).expect("invariant: signal handlers install");
        // Only a subreaper or PID 1 has children it did not spawn to reap.
        let mut sigchld = if self.procs.adopts_orphans() {
            Some(signal(SignalKind::child()).expect("invariant: signal handlers install"))
        } else {
            None
        };
        // When to give freed memory back to the system: some time after
        // the first exit, load or spawn since the last time, never at rest.
        // Spawns count too: a mass start outlasts the first trim after its
        // load, and what its spawns freed afterwards would stay.
        let mut trim_at: Option<Instant> = None;
        // systemd's watchdog, fed from this loop: a stalled loop starves it.
        let mut watchdog = self.systemd.watchdog_period().map(|period| {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        loop {
            // Every exit already reported, whatever the last event was:
            // under a storm the spawn queue never empties, and an exit
            // that waited for `select!` to pick it among the ready
            // branches waited for several turns of spawns.
            if self.take_ready_exits() {
                trim_at.get_or_insert_with(|| Instant::now() + TRIM_AFTER);
            }
            // The first hosted job made lrpm a subreaper: reap what it adopts.
            if sigchld.is_none() && self.procs.adopts_orphans() {
                sigchld =
                    Some(signal(SignalKind::child()).expect("invariant: signal handlers install"));
            }
            // The actions of the last event first: a crashed worker's
            // replacement is spawned before anything else is done.
            let (more, spawned) = self.perform_actions();
            // The exits' lines (held since the exit, `child_exited`) and
            // the spawns' go to the log thread now, the replacements
            // running: waking it before competed with their spawn.
            crate::stdio::release_log();
            // Then what an exit leaves to clean up (its zombie, its cgroup).
            self.procs.bury();
            // A cluster node gives up the owner keys of the jobs it left
            // whose workers and cgroups are now gone.
            if let Some(cluster) = &mut self.cluster {
                let core = &self.core;
                // During a shutdown a run's cgroup may still be queued for
                // removal after its job is forgotten.
                let sweeping = self.procs.sweeping();
                cluster.release(|id| !sweeping && !core.knows_declared(id));
            }
            if spawned {
                trim_at.get_or_insert_with(|| Instant::now() + TRIM_AFTER);
            }
            if self.core.is_finished() {
                break;
            }
            self.tell_systemd(more);
            // Lets the other tasks (control connections, output forwarders)
            // run between two turns. Without it, a loop
            // that always finds an event ready (a crash storm's exits) runs
            // until tokio's cooperative budget is spent, 128 events later:
            // seconds, during which a status request waits. At rest this
            // costs nothing: the loop sleeps in `select!`.
            tokio::task::yield_now().await;
            let deadline = self.core.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let watchdog = async {
                match watchdog {
                    Some(ref mut tick) => {
                        tick.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let burst_end = self.log_burst.deadline();
            let burst_end = async {
                match burst_end {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let trim = async {
                match trim_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // More actions are queued: take them on the next turn, after
                // whatever else is ready.
                () = std::future::ready(()), if more => {}
                exit = self.procs.next_exit() => {
                    self.child_exited(exit);
                    // Every exit already reported too, in this turn: one
                    // per turn, each behind a turn's spawns, made the last
                    // of a storm's batch wait hundreds of milliseconds.
                    self.take_ready_exits();
                    trim_at.get_or_insert_with(|| Instant::now() + TRIM_AFTER);
                }
                Some(update) = self.updates.recv() => {
                    // A load that found nothing new freed nothing: at rest
                    // a polled source must not wake the trim.
                    if self.config_loaded(update) {
                        trim_at.get_or_insert_with(|| Instant::now() + TRIM_AFTER);
                    }
                }
                Some(msg) = self.control.recv() => self.control_request(msg),
                Some(request) = recv_web(&mut self.web) => self.web_request(request),
                event = next_cluster_event(&mut self.cluster) => self.cluster_event(event),
                batch = recv_notifications(&mut self.notify) => self.notified(batch),
                result = self.probes.next() => self.probed(result),
                event = self.hosts.next() => self.host_event(event),
                Some(()) = sigterm.recv() => self.shutdown("SIGTERM"),
                Some(()) = sigint.recv() => match self.core.handle_interrupt(Instant::now()) {
                    Interrupted::Shutdown { jobs } => self.shutdown_began("SIGINT", jobs),
                    Interrupted::ForceKill => {
                        tracing::warn!("SIGINT during the shutdown: killing every worker now");
                    }
                },
                Some(()) = sigusr1.recv() => {
                    if self.output.reopen_logs() {
                        tracing::info!("SIGUSR1: reopening the per-job log files");
                    }
                }
                Some(()) = sighup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    self.source.reload();
                }
                Some(()) = recv_opt(&mut sigchld) => self.procs.reap_orphans(),
                () = sleep => {
                    // Notifications already sent first: a deadline is
                    // judged on every WATCHDOG=1 that reached the socket
                    // before it, even when the loop is behind (a mass
                    // start on a loaded machine) and picked the timer
                    // first among its ready events.
                    self.take_queued_notifications();
                    self.fence_if_due();
                    self.core.handle_timeout(Instant::now());
                }
                () = watchdog => self.systemd.watchdog(),
                () = burst_end => self.log_burst.flush(Some(Instant::now())),
                () = trim => {
                    self.procs.shrink();
                    self.core.shrink();
                    let core = &self.core;
                    self.output.retain_lines(|job| core.knows(&JobId::from(job)));
                    lrpm_process::mem::trim();
                    trim_at = None;
                }
            }
        }
        self.procs.close();
        self.log_burst.flush(None);
        // Every worker and cgroup is gone: the cluster's keys may go.
        if let Some(cluster) = &mut self.cluster {
            cluster.finish().await;
        }
        tracing::info!("every worker has stopped; exiting");
    }

    /// Fences this cluster node now if its lease's fence (or kill) is
    /// due, before anything that could start a worker is handled: after a
    /// freeze, the exits of the workers the guardian killed and the fence
    /// are ready together, and the exits must not restart them.
    fn fence_if_due(&mut self) {
        let due = self
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.due(Instant::now()));
        if let Some(event) = due {
            self.cluster_event(event);
        }
    }

    fn shutdown(&mut self, why: &str) {
        if self.core.is_shutting_down() {
            return;
        }
        let jobs = self.core.job_count();
        self.core.shutdown(Instant::now());
        self.shutdown_began(why, jobs);
    }

    /// Tells systemd, when lrpm runs under it, that lrpm is ready (once the
    /// first load has ended and what it started is spawned: `more` says
    /// whether actions are still queued) and how many jobs are in each
    /// state (at most once a second, and only when that changed).
    fn tell_systemd(&mut self, more: bool) {
        let summary = |core: &lrpm_core::supervisor::Supervisor| {
            systemd::status_text(core.job_states().map(|state| state.as_str()))
        };
        if !self.systemd.is_ready() {
            if self.loads > 0 && !more {
                let status = summary(&self.core);
                self.systemd.ready(status);
            }
        } else if self.systemd.status_due(Instant::now()) && !self.core.is_shutting_down() {
            let status = summary(&self.core);
            self.systemd.status(Instant::now(), status);
        }
    }

    /// Logs a shutdown that the core began, and stops the source: nothing
    /// it loads would be applied.
    fn shutdown_began(&mut self, why: &str, jobs: usize) {
        tracing::info!("{why}: shutting down {}", human::count(jobs, "job"));
        self.procs.shutting_down();
        self.systemd.stopping(why);
        self.source.stop();
    }

    /// Handles the exits already reported, [`EXITS_PER_TURN`] at most,
    /// without waiting; returns whether there were any.
    fn take_ready_exits(&mut self) -> bool {
        for taken in 0..EXITS_PER_TURN {
            let Some(exit) = self.procs.next_exit_now() else {
                return taken > 0;
            };
            self.child_exited(exit);
        }
        true
    }

    fn child_exited(&mut self, exit: ExitEvent) {
        // Its lines wait for the turn's spawns (`release_log` in `run`).
        crate::stdio::hold_log();
        self.fence_if_due();
        let Some((job, status)) = self.procs.reap(exit.run) else {
            return;
        };
        // How it ended, with the reason the core gives it (a stop lrpm
        // asked for, a watchdog…): `stopped (killed by SIGTERM)`.
        let how = |ended| status.clone().because(ended);
        // The time of the exit, not of its handling: under a storm the two
        // are seconds apart, and a short run must not count as a long one.
        match self.core.handle_exit(exit.at, exit.run, status.clone()) {
            AfterExit::Stopped(reason, ended) if !ended.is_crash() => {
                if self
                    .log_burst
                    .admit(Kind::Stopped, reason.as_str(), Instant::now())
                {
                    tracing::info!(job = %job, %reason, "{}", how(ended));
                } else {
                    tracing::debug!(job = %job, %reason, "{}", how(ended));
                }
            }
            AfterExit::Stopped(reason, ended) => {
                tracing::warn!(job = %job, %reason, "{}", how(ended));
            }
            AfterExit::Restarted(ended) => {
                let reason = crash_reason(ended);
                tracing::warn!(job = %job, %reason, "{}; restarting", how(ended));
            }
            AfterExit::Backoff(ended, delay) => tracing::warn!(
                job = %job,
                reason = %crash_reason(ended),
                "{} too soon; restarting in {}",
                how(ended),
                human::duration(delay)
            ),
            AfterExit::Unknown => {}
        }
    }

    /// Counts the source's attempt and handles what it found; returns
    /// whether it found anything (a configuration or an error).
    fn config_loaded(&mut self, update: SourceUpdate) -> bool {
        self.fence_if_due();
        self.loads += 1;
        self.last_attempt_at = Some(wall(update.began));
        match update.loaded {
            Ok(Loaded::Unchanged) => {
                self.load_counts.unchanged += 1;
                return false;
            }
            Ok(Loaded::Config(mut decl)) => {
                self.load_counts.loaded += 1;
                decl.leave_out_unknown_workers(self.worker_classes.as_ref());
                decl.leave_out_memory_limits(self.procs.memory_limits_unavailable());
                // Only this node's share, when it is one of a cluster.
                let mut gate = None;
                if let Some(cluster) = &mut self.cluster {
                    let share = cluster.filter(decl);
                    decl = share.decl;
                    gate = Some((share.waiting, share.moved));
                }
                // A configuration of 100,000 broken jobs is one problem,
                // not 100,000 log lines: status lists them all.
                let unlogged = |n: usize| n.saturating_sub(LOGGED_PROBLEMS);
                for (id, reason) in decl.invalid.iter().take(LOGGED_PROBLEMS) {
                    if self.core.is_declared(id) {
                        tracing::error!(
                            job = %id,
                            "invalid declaration ignored, the job keeps its last valid one: {}",
                            human::cut(reason)
                        );
                    } else {
                        tracing::error!(job = %id, "invalid job left out: {}", human::cut(reason));
                    }
                }
                if unlogged(decl.invalid.len()) > 0 {
                    let more = unlogged(decl.invalid.len());
                    tracing::error!(
                        "… and {} (see lrpmctl status)",
                        human::count(more, "more invalid job")
                    );
                }
                for warning in decl.warnings.iter().take(LOGGED_PROBLEMS) {
                    tracing::warn!("{}", human::cut(warning));
                }
                if unlogged(decl.warnings.len()) > 0 {
                    let more = unlogged(decl.warnings.len());
                    tracing::warn!(
                        "… and {} (see lrpmctl status --json)",
                        human::count(more, "more warning")
                    );
                }
                tracing::debug!(jobs = decl.jobs.len(), "configuration loaded");
                let outcome = match gate {
                    Some((waiting, moved)) => {
                        self.core.handle_share(Instant::now(), decl, waiting, moved)
                    }
                    None => self.core.handle_config(Instant::now(), decl),
                };
                match outcome {
                    ConfigOutcome::Held(message) => tracing::warn!("{message}"),
                    ConfigOutcome::Applied | ConfigOutcome::Ignored => {}
                }
                for id in self.core.take_ignored().iter().take(LOGGED_PROBLEMS) {
                    tracing::info!(
                        job = %id,
                        "declaration changed but its mtime did not grow: change ignored, the \
                         job keeps running as it was (raise mtime to apply it)"
                    );
                }
            }
            Err(e) => {
                self.load_counts.failed += 1;
                tracing::error!(
                    "configuration source failed, keeping the last good configuration: {e}"
                );
                self.core.handle_source_error(e.to_string());
            }
        }
        true
    }

    /// Handles a change of the cluster's membership: the core gets this
    /// node's new share of the last job map.
    fn cluster_event(&mut self, event: ClusterEvent) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        match cluster.handle(event) {
            Outcome::Nothing => {}
            Outcome::Share(share) => {
                match self
                    .core
                    .handle_share(Instant::now(), share.decl, share.waiting, share.moved)
                {
                    ConfigOutcome::Held(message) => tracing::warn!("{message}"),
                    ConfigOutcome::Applied | ConfigOutcome::Ignored => {}
                }
            }
            Outcome::Kill => self.core.kill_stopping(),
        }
        // The dead-man's switch: a supervisor frozen from now on cannot
        // fence itself, so the guardian kills the farm when the workers
        // must be dead, a second before the lease could expire.
        if let Some(deadline) = cluster.guard_until() {
            if self.guarded_until != Some(deadline) {
                self.guarded_until = Some(deadline);
                self.guardian.heartbeat(deadline);
            }
        }
    }

    /// Hands every notification queued now to the core, a bounded number
    /// of batches at most (a flooding worker cannot hold the loop here).
    fn take_queued_notifications(&mut self) {
        for _ in 0..NOTIFICATION_BATCHES_BEFORE_A_DEADLINE {
            let Some(socket) = self.notify.as_mut() else {
                return;
            };
            let batch = socket.try_recv_batch(NOTIFICATIONS_PER_TURN);
            if batch.is_empty() {
                return;
            }
            self.notified(batch);
        }
    }

    /// Hands a batch of notifications to the core, each from the run its
    /// sender belongs to (by the kernel's credentials); a sender that is no
    /// worker's, or a datagram that says nothing, is dropped.
    fn notified(&mut self, batch: Vec<Datagram>) {
        let now = Instant::now();
        for datagram in batch {
            let n = lrpm_core::notify::parse(&datagram.bytes);
            if n.is_empty() {
                continue;
            }
            let Some(run) = datagram.pid.and_then(|pid| self.procs.run_of_sender(pid)) else {
                tracing::trace!(pid = ?datagram.pid, "notification from no worker: dropped");
                continue;
            };
            match self.core.handle_notify(now, run, &n) {
                Notified::Noted => {}
                Notified::Ready(job) => tracing::info!(job = %job, "ready"),
                Notified::Stopping(job) => tracing::info!(job = %job, "says it is stopping"),
                Notified::Hung(job) => {
                    tracing::warn!(job = %job, "asked to be taken for hung (WATCHDOG=trigger); restarting");
                }
            }
        }
    }

    /// Hands a probe's result to the core.
    fn probed(&mut self, result: ProbeResult) {
        let ProbeResult { run, job, failure } = result;
        if let Some(why) = &failure {
            tracing::debug!(job = %job, "health check failed: {why}");
        }
        match self
            .core
            .handle_probe(Instant::now(), run, failure.is_none())
        {
            ProbeOutcome::Unhealthy(job) => tracing::warn!(
                job = %job,
                "unhealthy ({}); restarting",
                failure.as_deref().unwrap_or("failed")
            ),
            ProbeOutcome::Noted | ProbeOutcome::Ignored => {}
        }
    }

    fn control_request(&mut self, msg: ControlMsg) {
        self.fence_if_due();
        let reply = match msg.request {
            Request::Status => Reply::StatusLine(self.status_line()),
            Request::StatusOf { ids } => match self.status_line_of(Some(&job_ids(&ids))) {
                Ok(line) => Reply::StatusLine(line),
                Err(e) => Reply::Refused(e.to_string()),
            },
            Request::StatusUsage { ids } => {
                let ids = (!ids.is_empty()).then(|| job_ids(&ids));
                match self.status_line_with(ids.as_deref(), true) {
                    Ok((line, Some(usage))) => Reply::StatusUsage(line, usage),
                    Ok((line, None)) => Reply::StatusLine(line),
                    Err(e) => Reply::Refused(e.to_string()),
                }
            }
            Request::Restart { id } => self.operator_restart(Some(&[id])),
            Request::RestartJobs { ids } => self.operator_restart(Some(&ids)),
            Request::RestartAll => self.operator_restart(None),
            Request::Pause { ids } => match self.core.pause(Instant::now(), &job_ids(&ids)) {
                Ok(paused) => {
                    log_jobs(
                        &paused,
                        "paused by operator: stopped and held until resumed",
                    );
                    Reply::Done(if paused.is_empty() {
                        "already paused".to_owned()
                    } else {
                        format!(
                            "paused {}: stopped and held until resumed",
                            id_list(&paused)
                        )
                    })
                }
                Err(e) => Reply::Refused(e.to_string()),
            },
            Request::Resume { ids } => match self.core.resume(Instant::now(), &job_ids(&ids)) {
                Ok(resumed) => {
                    log_jobs(&resumed, "resumed by operator");
                    Reply::Done(if resumed.is_empty() {
                        "not paused: nothing to resume".to_owned()
                    } else {
                        format!("resumed {}", id_list(&resumed))
                    })
                }
                Err(e) => Reply::Refused(e.to_string()),
            },
            Request::Signal { signal, ids } => match self.core.signal(&job_ids(&ids), signal) {
                Ok(Signalled { sent, skipped }) => {
                    log_jobs(&sent, &format!("{signal} sent by operator"));
                    let mut message = format!("sent {signal} to {}", id_list(&sent));
                    if !skipped.is_empty() {
                        message.push_str(&format!("; not running: {}", id_list(&skipped)));
                    }
                    Reply::Done(message)
                }
                Err(e) => Reply::Refused(e.to_string()),
            },
            Request::ReopenLogs => {
                if self.output.reopen_logs() {
                    tracing::info!("reopening the per-job log files, as requested");
                    Reply::Done("reopening the per-job log files".into())
                } else {
                    Reply::Refused("lrpm writes no per-job log files (no --log-dir)".into())
                }
            }
            Request::Logs { id, n, follow } => {
                let declared = self.core.is_declared(&JobId::from(id.as_str()));
                match self.output.last_lines(&id, n) {
                    None if !declared => Reply::Refused(format!("unknown job {id:?}")),
                    lines if follow => match self.output.follow_lines(&id, n) {
                        Some((lines, rx)) => Reply::Follow(lines, rx),
                        None => Reply::Lines(lines.unwrap_or_default()),
                    },
                    lines => Reply::Lines(lines.unwrap_or_default()),
                }
            }
            Request::Reload { force } if !force || !self.core.has_removal_guard() => {
                tracing::info!("reload requested");
                self.source.reload();
                Reply::Done("reloading the configuration".into())
            }
            Request::Reload { .. } => {
                tracing::warn!(
                    "forced reload requested: the configuration the source delivers next is \
                     applied whatever it removes"
                );
                self.core
                    .lift_guard_until(Instant::now() + self.force_window);
                self.source.reload();
                Reply::Done("reloading the configuration; the removal guard lets it through".into())
            }
            Request::Stop => {
                self.shutdown("stop requested");
                Reply::Done("lrpm is shutting down".into())
            }
            Request::Cluster => Reply::StatusLine(
                Response::Cluster(
                    self.cluster
                        .as_ref()
                        .map(|cluster| Box::new(cluster.status(true))),
                )
                .encode(),
            ),
            Request::Help => Reply::Refused("help is answered by the control server".into()),
        };
        // A client that went away does not care.
        let _ = msg.reply.send(reply);
    }

    /// `restart ID…` (`ids`), or `restart --all` (`None`).
    fn operator_restart(&mut self, ids: Option<&[String]>) -> Reply {
        let now = Instant::now();
        let restarted = match ids {
            Some(ids) => self.core.restart_jobs(now, &job_ids(ids)),
            None => self.core.restart_all(now),
        };
        match restarted {
            Ok(jobs) => {
                log_jobs(&jobs, "restarted by operator");
                match ids {
                    Some(_) => Reply::Done(format!("restarting {}", id_list(&jobs))),
                    None => Reply::Done(format!(
                        "restarting every job that is not paused ({})",
                        jobs.len()
                    )),
                }
            }
            Err(e) => Reply::Refused(e.to_string()),
        }
    }

    /// Answers the web server: a copy of the status for a scrape (encoded
    /// off the loop), the status line for the page, or a sign of life.
    fn web_request(&mut self, request: WebRequest) {
        // A client that went away does not care.
        match request {
            WebRequest::Metrics(reply) => {
                let mut source;
                let jobs;
                (source, jobs) = self.core.status(Instant::now(), wall_now());
                source.loads = self.loads;
                let _ = reply.send(Snapshot {
                    jobs,
                    source,
                    loads: self.load_counts,
                    started_at: self.started_at,
                    cluster: self.cluster.as_ref().map(|cluster| cluster.status(false)),
                });
            }
            WebRequest::Status(reply) => {
                let _ = reply.send(self.status_line());
            }
            WebRequest::Health(reply) => {
                let _ = reply.send(());
            }
        }
    }

    /// The answer to `status`, encoded: the response line of the whole
    /// status document, serialized straight from the core's state (no copy
    /// of any job's status) into a buffer the size of the last one.
    pub(crate) fn status_line(&mut self) -> Vec<u8> {
        self.status_line_of(None)
            .expect("invariant: the status of every job names no unknown job")
    }

    /// [`Shell::status_line`], with only the jobs `ids` name when given
    /// (`status ID…`); refused when one names no job.
    fn status_line_of(&mut self, ids: Option<&[JobId]>) -> Result<Vec<u8>, CommandError> {
        Ok(self.status_line_with(ids, false)?.0)
    }

    /// [`Shell::status_line_of`], and when `usage` is asked, the usage of
    /// its jobs' processes ([`crate::usage`]), being read on a blocking
    /// thread while the line is encoded.
    fn status_line_with(
        &mut self,
        ids: Option<&[JobId]>,
        usage: bool,
    ) -> Result<(Vec<u8>, Option<UsageRead>), CommandError> {
        let (now, wall) = (Instant::now(), wall_now());
        let mut source = self.core.status_source(now, wall);
        source.loads = self.loads;
        source.last_attempt_at = self.last_attempt_at;
        (source.connection, source.revision) = self.source_monitor.snapshot();
        let supervisor = SupervisorStatus {
            pid: std::process::id(),
            version: lrpm_proto::VERSION.to_owned(),
            started_at: self.started_at,
            shutting_down: self.core.is_shutting_down(),
            source,
            output: lrpm_core::status::OutputStatus {
                job_logs: self.output.job_logs_status(),
                ..crate::stdio::output_status()
            },
            held_back: self.held_back_reason(),
            cluster: self.cluster.as_ref().map(|cluster| cluster.status(false)),
            hosts: self.hosts.status(now, wall),
        };
        let jobs = match ids {
            None => self.core.status_jobs(now, wall),
            Some(ids) => self.core.status_jobs_of(now, wall, ids)?,
        };
        let usage = usage.then(|| {
            let processes = jobs.processes();
            let cache = Arc::clone(&self.usage);
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let usage = cache.usage_of(&processes);
                // The figures are dropped once too old to be given: a
                // farm left alone holds none.
                runtime.spawn(async move {
                    tokio::time::sleep(crate::usage::MAX_AGE).await;
                    cache.expire();
                });
                usage
            })
        });
        // The last size, or a guess: a job takes about 250 bytes.
        let capacity = self.status_size.max(1024 + 256 * jobs.len());
        let line = Response::encode_status(&supervisor, &jobs, capacity);
        if ids.is_none() {
            self.status_size = line.len() + line.len() / 8;
        }
        Ok((line, usage))
    }

    /// Performs the core's actions, up to [`SPAWN_BUDGET`] spawns or
    /// [`SPAWN_SLICE`] of spawning, whichever comes first; returns whether
    /// some are left for the next turn of the loop, and whether it spawned
    /// (or tried to).
    fn perform_actions(&mut self) -> (bool, bool) {
        let mut spawned = 0;
        let started = Instant::now();
        while spawned < SPAWN_BUDGET && started.elapsed() < SPAWN_SLICE {
            let (batch, then) = self.next_batch(SPAWN_BATCH.min(SPAWN_BUDGET - spawned));
            if batch.is_empty() {
                break;
            }
            spawned += batch.len();
            let results = self.procs.spawn_batch(&batch);
            for (spawn, result) in batch.into_iter().zip(results) {
                self.spawn_done(spawn, result);
            }
            if let Some((run, signal, reason)) = then {
                self.signal(run, signal, reason);
            }
        }
        (self.core.has_pending_actions(), spawned > 0)
    }

    /// Tells the core how `spawn` went, and the log.
    fn spawn_done(&mut self, spawn: Spawn, result: Result<Started, SpawnError>) {
        let Spawn {
            run,
            job,
            spec,
            reason,
        } = spawn;
        match result {
            Ok(Started {
                pid,
                stdout,
                stderr,
            }) => {
                self.held_back.jobs.remove(&job);
                self.output.forward(&job, stdout, stderr);
                if self
                    .log_burst
                    .admit(Kind::Started, reason.as_str(), Instant::now())
                {
                    tracing::info!(job = %job, pid, %reason, "started: {}", human::cut(&spec.program));
                } else {
                    tracing::debug!(job = %job, pid, %reason, "started: {}", human::cut(&spec.program));
                }
                self.core.handle_spawned(Instant::now(), run, pid);
            }
            Err(e) if out_of_descriptors(&e) => {
                if !self.held_back.logged {
                    self.held_back.logged = true;
                    tracing::error!(
                        "lrpm's descriptor limit ({}) holds jobs back: they are retried every {} \
                         (lrpmctl status says how many); raise lrpm's RLIMIT_NOFILE",
                        descriptor_limit(),
                        human::duration(DESCRIPTOR_RETRY)
                    );
                }
                self.held_back.jobs.insert(job.clone());
                let why = format!(
                    "{e}: lrpm's descriptor limit ({}) holds it back; retrying in {}",
                    descriptor_limit(),
                    human::duration(DESCRIPTOR_RETRY)
                );
                tracing::debug!(job = %job, "cannot start: {why}");
                self.core.handle_spawn_deferred(
                    Instant::now(),
                    run,
                    ExitStatus::spawn_failed(why),
                    DESCRIPTOR_RETRY,
                );
            }
            Err(e) => {
                self.held_back.jobs.remove(&job);
                let after = self.core.handle_exit(
                    Instant::now(),
                    run,
                    ExitStatus::spawn_failed(e.to_string()),
                );
                let retry = match after {
                    AfterExit::Backoff(_, d) => format!("; retrying in {}", human::duration(d)),
                    _ => String::new(),
                };
                tracing::error!(job = %job, %reason, "cannot start: {e}{retry}");
            }
        }
    }

    /// Takes the core's next actions: up to `max` spawns, performing the
    /// signals that come between them at once (they cost little), except a
    /// signal to one of these spawns' runs, which must follow its spawn: it
    /// ends the batch and is returned with it.
    fn next_batch(&mut self, max: usize) -> (Vec<Spawn>, Option<(RunId, Signal, Reason)>) {
        let mut batch = Vec::new();
        while batch.len() < max {
            match self.core.poll_action() {
                None => break,
                Some(Action::Signal {
                    run,
                    signal,
                    reason,
                }) => {
                    if batch.iter().any(|s: &Spawn| s.run == run) {
                        return (batch, Some((run, signal, reason)));
                    }
                    self.signal(run, signal, reason);
                }
                Some(Action::Spawn {
                    run,
                    job,
                    spec,
                    reason,
                }) => {
                    let spawn = Spawn {
                        run,
                        job,
                        spec,
                        reason,
                    };
                    if spawn.spec.host.is_some() {
                        self.start_hosted(spawn);
                    } else {
                        batch.push(spawn);
                    }
                }
                Some(Action::Probe { run, job, spec }) => self.probes.start(run, job, &spec),
            }
        }
        (batch, None)
    }

    /// What status says holds jobs back, if anything does. Forgets the
    /// jobs that no longer wait (removed, or started by a restart request).
    fn held_back_reason(&mut self) -> Option<String> {
        let core = &self.core;
        self.held_back.jobs.retain(|id| core.is_waiting(id));
        if self.held_back.jobs.is_empty() {
            return None;
        }
        Some(format!(
            "lrpm's descriptor limit ({}) holds {} back: their spawns fail with \"Too many \
             open files\" and are retried every {}; {} running workers are followed without a \
             pidfd. Raise lrpm's RLIMIT_NOFILE (LimitNOFILE=, ulimit -n)",
            descriptor_limit(),
            human::count(self.held_back.jobs.len(), "job"),
            human::duration(DESCRIPTOR_RETRY),
            self.procs.pidless_count(),
        ))
    }

    /// Sends `signal` to `run`'s process group, and logs the stop it
    /// asks for with its reason.
    fn signal(&mut self, run: RunId, signal: Signal, reason: Reason) {
        if let Some(job) = self.core.job_of(run) {
            if reason == Reason::Signalled {
                tracing::debug!(job = %job, %reason, "sending {signal}");
            } else if signal == Signal::Kill {
                tracing::warn!(job = %job, %reason, "stopping: SIGKILL");
            } else {
                // A move says where to: the node the cluster now gives it.
                let to = match (reason, &self.cluster) {
                    (Reason::Moved, Some(cluster)) => {
                        format!(
                            ": moved to node {}",
                            cluster.node_of(job).unwrap_or_default()
                        )
                    }
                    _ => String::new(),
                };
                if self
                    .log_burst
                    .admit(Kind::Stopping, reason.as_str(), Instant::now())
                {
                    tracing::info!(job = %job, %reason, "stopping: {signal}{to}");
                } else {
                    tracing::debug!(job = %job, %reason, "stopping: {signal}{to}");
                }
            }
        }
        if self.hosts.cancel(run) {
            // Its host has not forked it yet: it is stopped before it began.
            let status = ExitStatus::spawn_failed("stopped before its host forked it");
            self.core.handle_exit(Instant::now(), run, status);
            return;
        }
        self.procs.signal(run, signal);
    }

    /// Hands `spawn` (a job with a `host`) to its worker host; its start is
    /// told to the core when the host has forked it ([`Shell::host_event`]).
    fn start_hosted(&mut self, spawn: Spawn) {
        if let Err(e) = self.procs.adopt_orphans() {
            let e = SpawnError::Io(std::io::Error::new(
                e.kind(),
                format!("lrpm cannot become a subreaper for its worker hosts: {e}"),
            ));
            return self.spawn_done(spawn, Err(e));
        }
        let env = self.procs.hosted_env(spawn.run, &spawn.job, &spawn.spec);
        let cgroup = self.procs.hosted_cgroup(spawn.run, &spawn.job);
        if let Err(e) = self.hosts.start(
            spawn.run,
            &spawn.job,
            &spawn.spec,
            spawn.reason,
            env,
            cgroup,
        ) {
            self.spawn_done(spawn, Err(e));
        }
    }

    /// A host's answer: a worker forked (admitted into the process table,
    /// then told to go) or a fork that failed.
    fn host_event(&mut self, event: HostEvent) {
        let (spawn, result) = match event {
            HostEvent::Forked { run, pid, ours } => {
                // A run cancelled meanwhile is gone: its worker exits when
                // `ours` closes here.
                let Some(p) = self.hosts.take(run) else {
                    return;
                };
                let spawn = Spawn {
                    run,
                    job: p.job.clone(),
                    spec: p.spec.clone(),
                    reason: p.reason,
                };
                let result =
                    self.procs
                        .admit_hosted(run, &p.job, pid, ours, (p.stdout, p.stderr), p.cgroup);
                (spawn, result)
            }
            HostEvent::Failed { run, why } => {
                let Some(mut p) = self.hosts.take(run) else {
                    return;
                };
                p.drop_cgroup();
                let spawn = Spawn {
                    run,
                    job: p.job,
                    spec: p.spec,
                    reason: p.reason,
                };
                (spawn, Err(SpawnError::Io(std::io::Error::other(why))))
            }
        };
        self.spawn_done(spawn, result);
    }
}

/// How many notifications one turn of the event loop takes at most: a
/// flooding worker costs a bounded share of each turn, and the rest wait in
/// the socket's queue (which the kernel bounds).
const NOTIFICATIONS_PER_TURN: usize = 64;

/// How many batches of notifications are taken before a deadline is
/// judged: 1,024 datagrams, every worker's of a large farm.
const NOTIFICATION_BATCHES_BEFORE_A_DEADLINE: usize = 16;

/// The next batch of notifications, if lrpm has a notification socket;
/// never returns if it has none.
async fn recv_notifications(socket: &mut Option<NotifySocket>) -> Vec<Datagram> {
    match socket {
        Some(socket) => socket.recv_batch(NOTIFICATIONS_PER_TURN).await,
        None => std::future::pending().await,
    }
}

/// The next request of the web server, if it runs; never returns if it
/// does not.
async fn recv_web(web: &mut Option<mpsc::Receiver<WebRequest>>) -> Option<WebRequest> {
    match web {
        Some(web) => web.recv().await,
        None => std::future::pending().await,
    }
}

/// The cluster's next event, if lrpm is one of a cluster; never returns if
/// it is not.
async fn next_cluster_event(cluster: &mut Option<Cluster>) -> ClusterEvent {
    match cluster {
        Some(cluster) => cluster.next_event().await,
        None => std::future::pending().await,
    }
}

/// How many processes one turn of the event loop spawns at most, so that a
/// mass start never keeps exits and control requests waiting for long.
const SPAWN_BUDGET: usize = 32;

/// How many spawns are handed to the process table at once, to be spread
/// over its two spawning threads ([`crate::lanes`]); the event loop checks
/// [`SPAWN_SLICE`] between batches.
const SPAWN_BATCH: usize = 8;

/// How long one turn of the event loop spends spawning at most: on a loaded
/// machine a spawn, which waits for the child to exec, can take tens of
/// milliseconds, and 32 of them would hold the loop for a second.
const SPAWN_SLICE: Duration = Duration::from_millis(20);

/// How many exits one turn of the event loop takes at most: every exit the
/// kernel reported at once, so that none waits for a turn per exit before
/// it, yet bounded so that spawns and control requests still get turns.
const EXITS_PER_TURN: usize = 1024;

/// How long a job whose spawn failed for want of lrpm's descriptors waits
/// before it is tried again (its backoff is left alone: lrpm's limit is
/// not the job's fault).
const DESCRIPTOR_RETRY: Duration = Duration::from_secs(2);

/// Whether a spawn failed for want of descriptors (lrpm's own, or the
/// system's), rather than for anything of the job's.
fn out_of_descriptors(error: &SpawnError) -> bool {
    let errno = match error {
        SpawnError::Io(e) | SpawnError::Child { error: e, .. } => e.raw_os_error(),
        _ => None,
    };
    errno == Some(libc_errno::EMFILE) || errno == Some(libc_errno::ENFILE)
}

/// `EMFILE` and `ENFILE`, as `raw_os_error` reports them.
mod libc_errno {
    pub(super) const EMFILE: i32 = rustix::io::Errno::MFILE.raw_os_error();
    pub(super) const ENFILE: i32 = rustix::io::Errno::NFILE.raw_os_error();
}

/// lrpm's descriptor limit, for messages: "soft RLIMIT_NOFILE N".
fn descriptor_limit() -> String {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(n) => format!("RLIMIT_NOFILE {n}"),
        None => "RLIMIT_NOFILE unlimited".to_owned(),
    }
}

/// How many invalid jobs, and how many warnings, one configuration logs;
/// status has them all.
const LOGGED_PROBLEMS: usize = 20;

/// How many jobs one operator's command logs, and names in its answer, one
/// by one: `restart --all` of 10,000 jobs is one event, not 10,000 lines.
const LOGGED_JOBS: usize = 20;

/// The job ids of a control request.
fn job_ids(ids: &[String]) -> Vec<JobId> {
    ids.iter().map(|id| JobId::from(id.as_str())).collect()
}

/// Logs `what` of each of `jobs` ([`LOGGED_JOBS`] at most, then how many
/// more).
fn log_jobs(jobs: &[JobId], what: &str) {
    for job in jobs.iter().take(LOGGED_JOBS) {
        tracing::info!(job = %job, "{what}");
    }
    if jobs.len() > LOGGED_JOBS {
        tracing::info!("… and {} more jobs {what}", jobs.len() - LOGGED_JOBS);
    }
}

/// `a, b, c` (or `none`), [`LOGGED_JOBS`] ids at most, then how many more.
fn id_list(jobs: &[JobId]) -> String {
    if jobs.is_empty() {
        return "none".to_owned();
    }
    let mut list: Vec<&str> = jobs.iter().take(LOGGED_JOBS).map(JobId::as_str).collect();
    let more = format!("and {} more", jobs.len().saturating_sub(LOGGED_JOBS));
    if jobs.len() > LOGGED_JOBS {
        list.push(&more);
    }
    list.join(", ")
}

/// How much longer than `--source-timeout` the removal guard stays lifted
/// after `lrpmctl reload --force`, waiting for the reloaded configuration.
pub(crate) const FORCE_GRACE: Duration = Duration::from_secs(10);

/// How long after the first exit, spawn or configuration load since the
/// last trim lrpm gives the memory it freed back to the system: at most
/// once per period while workers churn, once after the last of them, and
/// never at rest.
const TRIM_AFTER: Duration = Duration::from_secs(5);

/// Receives from a signal stream that may not exist; never returns if it
/// does not.
async fn recv_opt(stream: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match stream {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// How long a graceful shutdown may take at most before lrpm gives up on
/// waiting for a runtime to wind down.
pub(crate) const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// The log's reason for the restart after an exit that `ended` as a crash:
/// `hung` or `unhealthy` when lrpm stopped it as failed, `crashed`
/// otherwise.
fn crash_reason(ended: ExitReason) -> Reason {
    match ended {
        ExitReason::Watchdog => Reason::Hung,
        ExitReason::Unhealthy => Reason::Unhealthy,
        _ => Reason::Crashed,
    }
}
