//! Worker hosts (docs/hosts.md): long-running processes, started from a
//! job's `host` argv, that fork `workerClass` workers on lrpm's request,
//! so that the workers share the interpreter's pages and start without
//! booting it.
//!
//! # Theory of operation
//!
//! One task per distinct host argv ([`serve`]) owns the host process (an
//! own child of lrpm, started with the host end of a `SOCK_SEQPACKET` pair
//! as descriptor 3, `LRPM_HOST_FD=3`, and lrpm's own stdout and stderr) and
//! the requests sent to it. It waits for the host's `ready`, sends each
//! `fork` with the worker's stdout and stderr pipes and a socket of the
//! worker's own, and hands the answer (`forked` or `error`) to the event
//! loop as a [`HostEvent`]. A host that exits, answers garbage, is not
//! ready within [`READY_TIMEOUT`] or leaves a request unanswered for
//! [`FORK_TIMEOUT`] is killed and started again after a backoff (1 s
//! doubling to [`MAX_HOST_BACKOFF`], reset by a host that lived
//! [`HEALTHY_RUN`]). Its requests in flight are sent again to the next
//! host, each with a new worker socket: a worker the dead host may have
//! forked finds its old socket closed and exits before any user code. The
//! workers it forked before keep running: they are lrpm's children.
//!
//! The event loop turns a `forked` into a supervised worker
//! ([`crate::process::ProcessTable::admit_hosted`]): the worker's `hello`
//! on its socket carries its pid and pidfd from the kernel
//! (`lrpm_process::hosted`), lrpm checks that it is its own child (the host
//! forked twice, so the worker was re-parented to lrpm, a subreaper),
//! finds it in its run's cgroup (created before the request and handed to
//! a host that can fork into it, `CLONE_INTO_CGROUP`) or moves it there,
//! watches its pidfd like any worker's, and only then answers `go`. From there on nothing tells a hosted worker
//! from another: its exit is its pidfd's, reaped by lrpm with its status;
//! its stop is the signal to its process group, then SIGKILL to its cgroup.
//!
//! A run waits in its host's task while the host is down; stopping it then
//! (a removed job, a shutdown) cancels the request ([`Hosts::cancel`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lrpm_core::backoff::Backoff;
use lrpm_core::human;
use lrpm_core::job::{JobId, JobSpec, Program};
use lrpm_core::status::{HostState, HostStatus};
use lrpm_core::supervisor::{Reason, RunId};
use lrpm_process::command::{SpawnContext, SpawnError, SpawnRequest, spawn_command};
use lrpm_process::containment::JobCgroup;
use lrpm_process::fd::register;
use lrpm_process::hosted::{child_socketpair, host_socketpair};
use lrpm_process::pidfd::AsyncChild;
use lrpm_proto::host::{
    Fork, HOST_FD_ENV, HostMsg, MAX_DATAGRAM, RUN_ID_SLOT_ENV, RUN_ID_SLOT_VALUE,
};
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// How long a new host has to say `ready`: it loads the application first.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a host has to answer a `fork`; a host silent for longer hangs.
pub(crate) const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait before a failing host is started again.
const MAX_HOST_BACKOFF: Duration = Duration::from_secs(30);
/// A host that lived this long ready resets its backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// A run to fork, with what the host is handed.
#[derive(Debug)]
struct ForkJob {
    run: RunId,
    /// The job's id, class, config, environment and directory.
    job: JobId,
    spec: Arc<JobSpec>,
    env: Vec<(String, String)>,
    /// The write ends of the worker's stdout and stderr.
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// The run's cgroup directory, created beforehand, for a host that
    /// forks into it (its `ready` said `cgroup`).
    cgroup: Option<OwnedFd>,
    /// lrpm's end of the worker's socket, once the request was sent.
    ours: Option<OwnedFd>,
}

/// What the event loop tells a host's task.
#[derive(Debug)]
enum ToHost {
    Fork(ForkJob),
    Cancel(RunId),
}

/// What a host's task tells the event loop.
#[derive(Debug)]
pub(crate) enum HostEvent {
    /// The host forked `run`'s worker, `pid` by its word; lrpm's end of the
    /// worker's socket, where its `hello` waits.
    Forked { run: RunId, pid: u32, ours: OwnedFd },
    /// The host could not fork `run`'s worker.
    Failed { run: RunId, why: String },
}

/// A run handed to a host, not forked yet: what the event loop keeps.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) job: JobId,
    pub(crate) spec: Arc<JobSpec>,
    /// Why it starts, for the log.
    pub(crate) reason: Reason,
    /// The read ends of the worker's stdout and stderr.
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    /// The run's cgroup, created before the request (lrpm runs without
    /// cgroups, or it could not be created: `None`).
    pub(crate) cgroup: Option<JobCgroup>,
    host: Arc<[String]>,
}

/// What status shows of one host ([`HostStatus`], on the monotonic
/// clock).
#[derive(Debug, Clone)]
struct Shown {
    state: HostState,
    pid: Option<u32>,
    since: Instant,
    restarts: u64,
    last_error: Option<(String, Instant)>,
    restart_at: Option<Instant>,
}

/// What status shows of one host; its task keeps it current.
#[derive(Debug, Clone)]
struct Board(Arc<Mutex<Shown>>);

impl Board {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Shown {
            state: HostState::Starting,
            pid: None,
            since: Instant::now(),
            restarts: 0,
            last_error: None,
            restart_at: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Shown> {
        // A panic while it was held left plain data, still good to show.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new process of the host runs as `pid`.
    fn started(&self, pid: u32) {
        let mut shown = self.lock();
        shown.state = HostState::Starting;
        shown.pid = Some(pid);
        shown.since = Instant::now();
        shown.restart_at = None;
    }

    /// It failed for `why`, and is started again in `delay`.
    fn failed(&self, why: &str, delay: Duration) {
        let mut shown = self.lock();
        let now = Instant::now();
        shown.state = HostState::Backoff;
        shown.pid = None;
        shown.since = now;
        shown.last_error = Some((why.to_owned(), now));
        shown.restart_at = Some(now + delay);
    }
}

/// One host's task, as the event loop holds it.
#[derive(Debug)]
struct HostHandle {
    tx: mpsc::UnboundedSender<ToHost>,
    board: Board,
}

/// The worker hosts, one task per distinct argv, and the runs they have
/// not forked yet.
#[derive(Debug)]
pub(crate) struct Hosts {
    ctx: SpawnContext,
    hosts: HashMap<Arc<[String]>, HostHandle>,
    pending: HashMap<RunId, Pending>,
    events_tx: mpsc::UnboundedSender<HostEvent>,
    events: mpsc::UnboundedReceiver<HostEvent>,
}

impl Hosts {
    /// No hosts yet: each starts with the first run that names it. A host
    /// gets lrpm's environment without [`crate::base::HOST_HIDDEN_ENV`]:
    /// nothing of a run of an outer lrpm that runs this one as a job.
    pub(crate) fn new(ctx: SpawnContext) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            ctx: SpawnContext {
                hidden_env: crate::base::HOST_HIDDEN_ENV,
                ..ctx
            },
            hosts: HashMap::new(),
            pending: HashMap::new(),
            events_tx,
            events,
        }
    }

    /// Hands run `run` of `spec` (which names a host) to its host, starting
    /// the host if it is the first; `env` is the worker's environment and
    /// `cgroup` the run's cgroup with its directory, created beforehand
    /// (removed here if the start fails).
    pub(crate) fn start(
        &mut self,
        run: RunId,
        job: &JobId,
        spec: &Arc<JobSpec>,
        reason: Reason,
        env: Vec<(String, String)>,
        cgroup: Option<(JobCgroup, OwnedFd)>,
    ) -> Result<(), SpawnError> {
        let (cgroup, cgroup_dir) = cgroup.unzip();
        let fail = |cgroup: Option<JobCgroup>, e: SpawnError| {
            if let Some(cgroup) = cgroup {
                cgroup.remove();
            }
            Err(e)
        };
        let argv: Arc<[String]> = match &spec.host {
            Some(argv) => Arc::from(argv.as_slice()),
            None => {
                return fail(
                    cgroup,
                    SpawnError::Io(io::Error::other(
                        "invariant: only a job with a host is hosted",
                    )),
                );
            }
        };
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
        let pipes = pipe().and_then(|out| Ok((out, pipe()?)));
        let ((stdout_r, stdout_w), (stderr_r, stderr_w)) = match pipes {
            Ok(pipes) => pipes,
            Err(e) => return fail(cgroup, SpawnError::Io(e.into())),
        };
        let host = self.hosts.entry(argv.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let board = Board::new();
            tokio::spawn(serve(
                argv.clone(),
                self.ctx.clone(),
                rx,
                self.events_tx.clone(),
                board.clone(),
            ));
            HostHandle { tx, board }
        });
        let sent = host.tx.send(ToHost::Fork(ForkJob {
            run,
            job: job.clone(),
            spec: spec.clone(),
            env,
            stdout: stdout_w,
            stderr: stderr_w,
            cgroup: cgroup_dir,
            ours: None,
        }));
        if sent.is_err() {
            return fail(
                cgroup,
                SpawnError::Io(io::Error::other(
                    "invariant: a host's task lives as long as lrpm",
                )),
            );
        }
        self.pending.insert(
            run,
            Pending {
                job: job.clone(),
                spec: spec.clone(),
                reason,
                stdout: stdout_r,
                stderr: stderr_r,
                cgroup,
                host: argv,
            },
        );
        Ok(())
    }

    /// The next answer of a host. Cancel-safe.
    pub(crate) async fn next(&mut self) -> HostEvent {
        self.events
            .recv()
            .await
            .expect("invariant: the hosts keep a sender of their own")
    }

    /// Takes run `run`'s pending request, if it is pending (not cancelled).
    pub(crate) fn take(&mut self, run: RunId) -> Option<Pending> {
        self.pending.remove(&run)
    }

    /// Cancels run `run` if its worker is not forked yet; returns whether
    /// it was pending. A worker its host forks all the same exits at once:
    /// lrpm closes its socket without a `go` (and kills its cgroup).
    pub(crate) fn cancel(&mut self, run: RunId) -> bool {
        let Some(mut pending) = self.pending.remove(&run) else {
            return false;
        };
        pending.drop_cgroup();
        if let Some(host) = self.hosts.get(&pending.host) {
            let _ = host.tx.send(ToHost::Cancel(run));
        }
        true
    }

    /// Every host as status shows it, ordered by argv.
    /// (`now` on the monotonic clock is `wall` in UTC seconds.)
    pub(crate) fn status(&self, now: Instant, wall: f64) -> Vec<HostStatus> {
        let at = |instant: Instant| {
            if instant >= now {
                wall + (instant - now).as_secs_f64()
            } else {
                wall - (now - instant).as_secs_f64()
            }
        };
        let mut hosts: Vec<HostStatus> = self
            .hosts
            .iter()
            .map(|(argv, host)| {
                let shown = host.board.lock().clone();
                HostStatus {
                    argv: argv.to_vec(),
                    state: shown.state,
                    pid: shown.pid,
                    since: at(shown.since),
                    restarts: shown.restarts,
                    waiting: self.pending.values().filter(|p| p.host == *argv).count(),
                    last_error_at: shown.last_error.as_ref().map(|(_, when)| at(*when)),
                    last_error: shown.last_error.map(|(why, _)| why),
                    restart_at: shown.restart_at.map(at),
                }
            })
            .collect();
        hosts.sort_by(|a, b| a.argv.cmp(&b.argv));
        hosts
    }
}

impl Pending {
    /// Kills and removes the run's cgroup, if it has one: the run did not
    /// start, and a worker forked into it all the same has no business
    /// there.
    pub(crate) fn drop_cgroup(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.kill();
            cgroup.remove();
        }
    }
}

/// The name of a host in the log: its argv.
fn host_name(argv: &[String]) -> String {
    argv.join(" ")
}

/// Why a host's run ended.
enum Ended {
    /// lrpm is done with hosts (its event loop ended).
    Closed,
    /// It failed: it is started again after a backoff.
    Failed(String),
}

/// The task of one host: starts it, restarts it with backoff, and serves
/// the requests for it until lrpm is done with it.
async fn serve(
    argv: Arc<[String]>,
    ctx: SpawnContext,
    mut rx: mpsc::UnboundedReceiver<ToHost>,
    events: mpsc::UnboundedSender<HostEvent>,
    board: Board,
) {
    let name = host_name(&argv);
    let mut queue: VecDeque<ForkJob> = VecDeque::new();
    let mut backoff = Backoff::new(MAX_HOST_BACKOFF);
    for attempt in 0u64.. {
        if attempt > 0 {
            board.lock().restarts = attempt;
        }
        let mut host = HostRun {
            argv: &argv,
            name: &name,
            board: &board,
            ready_since: None,
            cgroups: false,
            in_flight: BTreeMap::new(),
            next_id: 0,
        };
        let ended = host.run(&ctx, &mut rx, &mut queue, &events).await;
        // Its requests in flight are sent again, to the next host.
        let healthy = host
            .ready_since
            .is_some_and(|at| at.elapsed() >= HEALTHY_RUN);
        for (_, (mut job, _)) in std::mem::take(&mut host.in_flight).into_iter().rev() {
            job.ours = None;
            queue.push_front(job);
        }
        let why = match ended {
            Ended::Closed => return,
            Ended::Failed(why) => why,
        };
        if healthy {
            backoff.reset();
        }
        let delay = backoff.fail();
        board.failed(&why, delay);
        tracing::error!(
            host = %name,
            "worker host: {why}; starting it again in {} ({} workers wait for it)",
            human::duration(delay),
            queue.len()
        );
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => break,
                msg = rx.recv() => match msg {
                    None => return,
                    Some(msg) => take_request(&mut queue, msg),
                },
            }
        }
    }
}

/// Queues a new request, or drops a cancelled one.
fn take_request(queue: &mut VecDeque<ForkJob>, msg: ToHost) {
    match msg {
        ToHost::Fork(job) => queue.push_back(job),
        ToHost::Cancel(run) => queue.retain(|job| job.run != run),
    }
}

/// One run of a host process.
struct HostRun<'a> {
    argv: &'a [String],
    name: &'a str,
    /// What status shows of it.
    board: &'a Board,
    /// When it said `ready`.
    ready_since: Option<Instant>,
    /// Whether its `ready` said it forks into a cgroup it is handed.
    cgroups: bool,
    /// The requests sent and not answered, by id, with their deadlines.
    in_flight: BTreeMap<u64, (ForkJob, Instant)>,
    next_id: u64,
}

impl HostRun<'_> {
    /// Starts the host and serves it until it fails or lrpm is done.
    async fn run(
        &mut self,
        ctx: &SpawnContext,
        rx: &mut mpsc::UnboundedReceiver<ToHost>,
        queue: &mut VecDeque<ForkJob>,
        events: &mpsc::UnboundedSender<HostEvent>,
    ) -> Ended {
        let (child, sock) = match spawn_host(self.argv, ctx) {
            Ok(started) => started,
            Err(e) => return Ended::Failed(format!("cannot start it: {e}")),
        };
        let pid = child.pid().as_raw_nonzero().get() as u32;
        self.board.started(pid);
        tracing::info!(host = %self.name, pid, "worker host started");
        let started = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let deadline = match self.ready_since {
                None => started + READY_TIMEOUT,
                Some(_) => self
                    .in_flight
                    .values()
                    .map(|(_, at)| *at)
                    .min()
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            };
            let sendable = self.ready_since.is_some() && !queue.is_empty();
            tokio::select! {
                status = child.wait() => return Ended::Failed(format!("it ended ({status})")),
                read = sock.readable() => {
                    let Ok(mut guard) = read else {
                        return Ended::Failed("its socket cannot be watched".into());
                    };
                    match guard.try_io(|s| recv(s.get_ref(), &mut buf)) {
                        Err(_would_block) => continue,
                        Ok(Err(e)) => return Ended::Failed(format!("its socket failed: {e}")),
                        Ok(Ok(0)) => return Ended::Failed("it closed its socket".into()),
                        Ok(Ok(n)) => {
                            if let Err(why) = self.answer(&buf[..n], events) {
                                return Ended::Failed(why);
                            }
                        }
                    }
                }
                write = sock.writable(), if sendable => {
                    let Ok(mut guard) = write else {
                        return Ended::Failed("its socket cannot be watched".into());
                    };
                    while let Some(mut job) = queue.pop_front() {
                        match guard.try_io(|s| self.send(s.get_ref(), &mut job)) {
                            Err(_would_block) => {
                                queue.push_front(job);
                                break;
                            }
                            Ok(Ok(id)) => {
                                self.in_flight.insert(id, (job, Instant::now() + FORK_TIMEOUT));
                            }
                            Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::MSGSIZE.raw_os_error()) => {
                                let why = format!("its fork request is too large for the host's socket ({e})");
                                let _ = events.send(HostEvent::Failed { run: job.run, why });
                            }
                            Ok(Err(e)) => {
                                queue.push_front(job);
                                return Ended::Failed(format!("cannot send it a request: {e}"));
                            }
                        }
                    }
                }
                msg = rx.recv() => match msg {
                    None => return Ended::Closed,
                    Some(msg) => take_request(queue, msg),
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    return Ended::Failed(match self.ready_since {
                        None => format!("not ready within {}", human::duration(READY_TIMEOUT)),
                        Some(_) => format!(
                            "no answer to a fork within {}: it hangs",
                            human::duration(FORK_TIMEOUT)
                        ),
                    });
                }
            }
        }
    }

    /// Handles one datagram of the host; an error is a broken host.
    fn answer(
        &mut self,
        datagram: &[u8],
        events: &mpsc::UnboundedSender<HostEvent>,
    ) -> Result<(), String> {
        match HostMsg::decode(datagram).map_err(|e| e.to_string())? {
            HostMsg::Ready { cgroup, .. } if self.ready_since.is_none() => {
                tracing::info!(host = %self.name, "worker host ready");
                self.ready_since = Some(Instant::now());
                self.cgroups = cgroup;
                self.board.lock().state = HostState::Ready;
            }
            HostMsg::Ready { .. } => return Err("it said ready twice".into()),
            HostMsg::Forked { id, pid } => {
                let (job, _) = self
                    .in_flight
                    .remove(&id)
                    .ok_or_else(|| format!("it answered request {id}, which is not pending"))?;
                let ours = job
                    .ours
                    .expect("invariant: a request in flight has its socket");
                tokio::spawn(hello_then_forked(job.run, pid, ours, events.clone()));
            }
            HostMsg::Error { id, message } => {
                let (job, _) = self
                    .in_flight
                    .remove(&id)
                    .ok_or_else(|| format!("it answered request {id}, which is not pending"))?;
                let why = format!("its host could not fork it: {}", human::cut(&message));
                let _ = events.send(HostEvent::Failed { run: job.run, why });
            }
        }
        Ok(())
    }

    /// Sends `job`'s `fork` with its three descriptors (four with the
    /// run's cgroup); returns its id.
    fn send(&mut self, sock: &OwnedFd, job: &mut ForkJob) -> io::Result<u64> {
        let (ours, theirs) = child_socketpair()?;
        let Program::WorkerClass(class) = &job.spec.program else {
            return Err(io::Error::other(
                "invariant: a hosted job runs a worker class",
            ));
        };
        let id = self.next_id;
        let cgroup = job.cgroup.as_ref().filter(|_| self.cgroups);
        let datagram = Fork {
            id,
            job: job.job.as_str(),
            class,
            config: &job.spec.worker_config,
            env: job
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            cwd: job.spec.cwd.as_deref(),
            cgroup: cgroup.is_some(),
        }
        .encode();
        let mut fds = vec![job.stdout.as_fd(), job.stderr.as_fd(), theirs.as_fd()];
        fds.extend(cgroup.map(|dir| dir.as_fd()));
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("the control buffer is too small"));
        }
        rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&datagram)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        )?;
        self.next_id += 1;
        job.ours = Some(ours);
        Ok(id)
    }
}

/// Waits (at most [`FORK_TIMEOUT`]) for the worker's `hello` on `ours`,
/// then hands the fork to the event loop, which takes the hello: the
/// worker may be slower to say it than its host to say `forked`.
async fn hello_then_forked(
    run: RunId,
    pid: u32,
    ours: OwnedFd,
    events: mpsc::UnboundedSender<HostEvent>,
) {
    let ours = match register(ours, Interest::READABLE) {
        Ok(fd) => {
            let _ = tokio::time::timeout(FORK_TIMEOUT, fd.readable()).await;
            fd.into_inner()
        }
        Err((fd, _)) => fd,
    };
    let _ = events.send(HostEvent::Forked { run, pid, ours });
}

/// Receives one datagram.
fn recv(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    let len = buf.len();
    let (n, _) = rustix::net::recv(sock, buf, RecvFlags::DONTWAIT | RecvFlags::TRUNC)?;
    if n > len {
        return Err(io::Error::other(format!(
            "a datagram of {n} bytes, over {len}"
        )));
    }
    Ok(n)
}

/// Starts the host process, its socket handed on as descriptor 3.
fn spawn_host(argv: &[String], ctx: &SpawnContext) -> io::Result<(AsyncChild, AsyncFd<OwnedFd>)> {
    let (ours, theirs) = host_socketpair()?;
    // Room for a few fork requests of the largest size.
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&ours, MAX_DATAGRAM * 2);
    let request = SpawnRequest::new(&argv[0])
        .args(&argv[1..])
        .env(HOST_FD_ENV, lrpm_process::command::HANDED_FD.to_string())
        .env(RUN_ID_SLOT_ENV, RUN_ID_SLOT_VALUE)
        .inherit_output()
        .hand(theirs);
    let spawned = spawn_command(request, ctx).map_err(io::Error::other)?;
    let child = AsyncChild::new(spawned.pid, spawned.pidfd)?;
    let sock = register(ours, Interest::READABLE | Interest::WRITABLE).map_err(|(_, e)| e)?;
    Ok((child, sock))
}
