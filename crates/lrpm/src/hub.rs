//! Output hubs: child processes that forward workers' output once lrpm's own
//! descriptors run short.
//!
//! # Theory of operation
//!
//! A running worker costs lrpm three descriptors: its pidfd and the read
//! ends of its stdout and stderr pipes. Where the hard `RLIMIT_NOFILE`
//! cannot be raised (20,000 here, and in many containers) that caps a farm
//! at about 6,600 workers. So lrpm forwards output itself
//! (the `output` module) only while the pipes it is given are numbered below
//! half of its soft limit (descriptors are allocated lowest first, so the
//! number of a new descriptor is a lower bound of how many are open, and
//! costs nothing to read). The pipes of a worker spawned beyond that go to
//! an *output hub*: a child process running the same binary
//! (`/proc/self/exe __lrpm-output-hub FD`), connected to lrpm by a
//! `SOCK_SEQPACKET` socket pair. lrpm sends one message per worker, the job
//! id as data and the two read ends as `SCM_RIGHTS`, and closes its copies;
//! it keeps only the pidfd. The hub forwards exactly as lrpm does (the same
//! code: [`Output::forward_counted`]): prefix, 64 KiB line pieces, a queue
//! bounded in bytes, a writer thread, back-pressure on the talkers; to its
//! stdout and stderr, which are lrpm's own.
//!
//! A hub takes at most `(hard limit − 64) / 2` workers. When both pipes of
//! a worker have reached their end, the hub sends lrpm a 4-byte count of
//! workers it let go, and lrpm takes them off that hub's count; when every
//! hub is full lrpm starts another. Sending never blocks lrpm's loop: the
//! socket is non-blocking, and a worker whose pipes cannot be sent at once
//! (a full socket, no hub can be started) has its output forwarded in
//! process, as before.
//!
//! A hub is spawned as every child of lrpm is (`lrpm_process::command`),
//! early in a mass start and so while lrpm's descriptor table is still
//! small: its socket handed on as descriptor 3, lrpm's own stdout and
//! stderr, a parent-death SIGKILL (so it never outlives lrpm, even one
//! killed with SIGKILL), a process group of its own, in lrpm's cgroup (it
//! is not a job). It raises its soft descriptor limit to the hard one and
//! ignores SIGTERM, SIGINT and SIGHUP: its life follows lrpm's, not the
//! terminal's. lrpm follows it through its pidfd (an own child), so the
//! orphan reaper never takes its status.
//!
//! At shutdown, once every worker has been reaped and the cgroups killed,
//! lrpm shuts the write side of each hub's socket ([`Hubs::close`]). A hub
//! then forwards what is left in the pipes it holds up to their ends,
//! flushes its queue and exits; lrpm waits for it for at most
//! [`EXIT_GRACE`], then kills it. No line a worker wrote is lost.
//!
//! A hub counts what its writer thread loses (a closed, full or unread
//! stdout or stderr) as lrpm does, in its own process; it reports those
//! counters to lrpm on the same socket. Two messages go from a hub to
//! lrpm, told apart by their form: a 4-byte count of released workers, and
//! a *loss report* ([`LossReport`]: a magic, a version, then the totals of
//! each stream). A report carries totals, not events: the hub sends one at
//! most every [`REPORT_EVERY`], only when something changed, without
//! waiting (a report the socket cannot take now is replaced by the next
//! one), and a last one before it exits, once it gave up on what its
//! queue still held. lrpm adds what grew since the hub's previous report
//! to its own counters (`supervisor.output` in the status, and so the
//! exit code 74), and logs the losses the hub's stream recovered from (a
//! write succeeded after them), as it does its own. lrpm trusts nothing
//! in a report: a message of another form or version is ignored, a
//! total that went down adds nothing, and reading never waits on the hub.
//!
//! A hub that ends unexpectedly is logged as an error and forgotten; new
//! workers go to a new hub. The workers whose pipes it held get EPIPE (or
//! SIGPIPE) on their next write; most die of it and are restarted as
//! crashed workers.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lrpm_core::job::JobId;
use lrpm_process::command::{SpawnContext, spawn_command};
use lrpm_process::fd::register;
use lrpm_process::pidfd::AsyncChild;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, Shutdown, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::base::Role;
use crate::output::{LineFormat, Output, WorkerDone};
use crate::stdio::{self, Losses, Stream};

/// Descriptors a hub keeps for itself (stdio, its socket, the runtime's)
/// besides its workers' pipes.
const MARGIN: u64 = 64;

/// How long lrpm waits at shutdown for its hubs to forward the rest of their
/// workers' output before it kills them.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long after a hub failed to start lrpm tries again (meanwhile new
/// workers are forwarded in process).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest job id a hub is told (the prefix of its lines).
const MAX_ID: usize = 4096;

/// How often at most a hub reports its losses to lrpm.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// How long a hub forwards what is left in its pipes once lrpm closed its
/// socket, before it gives up on them; then it waits at most
/// [`FLUSH_GRACE`] for its queue to be written. Together well within
/// [`EXIT_GRACE`], so that its last loss report reaches lrpm.
const DRAIN_GRACE: Duration = Duration::from_millis(1200);
/// See [`DRAIN_GRACE`].
const FLUSH_GRACE: Duration = Duration::from_millis(400);

/// The first bytes of a loss report.
const LOSS_MAGIC: &[u8; 8] = b"lrpmloss";
/// The version of the loss report's layout.
const LOSS_VERSION: u8 = 1;
/// The longest error message a loss report carries.
const MAX_ERROR: usize = 200;
/// The largest message lrpm reads from a hub.
const MAX_REPORT: usize = 1024;

/// lrpm's output hubs: where the pipes of new workers go once lrpm's own
/// descriptors are half used. Clones share them.
#[derive(Debug, Clone)]
pub(crate) struct Hubs(Arc<Mutex<Pool>>);

#[derive(Debug)]
struct Pool {
    /// Pipes numbered this high or higher go to a hub.
    threshold: RawFd,
    /// How many workers one hub takes.
    capacity: usize,
    /// How a hub is spawned.
    ctx: SpawnContext,
    /// How its hubs write workers' lines.
    format: LineFormat,
    /// The hubs that are alive, and their watchers (which reap them).
    hubs: Vec<(Arc<Hub>, JoinHandle<()>)>,
    /// No hub is started before then: the last start failed.
    retry_at: Option<Instant>,
    /// Shutting down: no more workers go to hubs.
    closing: bool,
}

/// One hub, as lrpm sees it.
#[derive(Debug)]
struct Hub {
    child: AsyncChild,
    sock: AsyncFd<OwnedFd>,
    /// How many workers' pipes it holds.
    held: AtomicUsize,
    /// Cleared when its socket reports its end.
    alive: AtomicBool,
    /// lrpm closed it on purpose.
    closing: AtomicBool,
}

impl Hubs {
    /// The hubs of the current process, given its descriptor limit (after
    /// it was raised), writing workers' lines in `format`; `None` when the
    /// soft limit is unlimited.
    pub(crate) fn new(ctx: SpawnContext, format: LineFormat) -> Option<Hubs> {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let soft = limit.current?;
        let hard = limit.maximum.unwrap_or(soft).max(soft);
        let capacity = usize::try_from(hard.saturating_sub(MARGIN) / 2).unwrap_or(usize::MAX);
        Some(Hubs(Arc::new(Mutex::new(Pool {
            threshold: RawFd::try_from(soft / 2).unwrap_or(RawFd::MAX),
            capacity: capacity.max(1),
            ctx,
            format,
            hubs: Vec::new(),
            retry_at: None,
            closing: false,
        }))))
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        // The pool stays consistent whatever panicked while holding it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the pipes `stdout` and `stderr` of a new worker should go to
    /// a hub: they are numbered at or above half of lrpm's soft limit.
    pub(crate) fn wanted(&self, stdout: &OwnedFd, stderr: &OwnedFd) -> bool {
        let pool = self.pool();
        !pool.closing && stdout.as_raw_fd().max(stderr.as_raw_fd()) >= pool.threshold
    }

    /// Hands a worker's pipes to a hub, starting one if every hub is full;
    /// gives them back when no hub can take them now (the caller then
    /// forwards them in process). Never blocks.
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(
        &self,
        job: &JobId,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<(), (OwnedFd, OwnedFd)> {
        let mut pool = self.pool();
        if pool.closing {
            return Err((stdout, stderr));
        }
        pool.hubs
            .retain(|(hub, _)| hub.alive.load(Ordering::Relaxed));
        let capacity = pool.capacity;
        let hub = match pool
            .hubs
            .iter()
            .find(|(hub, _)| hub.held.load(Ordering::Relaxed) < capacity)
        {
            Some((hub, _)) => hub.clone(),
            None => match pool.start_hub() {
                Some(hub) => hub,
                None => return Err((stdout, stderr)),
            },
        };
        match hub.send(job, stdout.as_fd(), stderr.as_fd()) {
            Ok(()) => {
                hub.held.fetch_add(1, Ordering::Relaxed);
                // Our copies are closed here: the hub holds the pipes now.
                Ok(())
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::warn!(hub = %hub.child.pid().as_raw_nonzero(), "cannot hand the output of {job} to its hub: {e}");
                }
                Err((stdout, stderr))
            }
        }
    }

    /// Closes every hub and waits for it to forward the rest of its
    /// workers' output and exit, at most [`EXIT_GRACE`] in all; kills those
    /// still running then. Call once every worker has been reaped.
    pub(crate) async fn close(&self) {
        let hubs = {
            let mut pool = self.pool();
            pool.closing = true;
            std::mem::take(&mut pool.hubs)
        };
        for (hub, _) in &hubs {
            hub.closing.store(true, Ordering::Relaxed);
            let _ = rustix::net::shutdown(hub.sock.get_ref(), Shutdown::Write);
        }
        let deadline = tokio::time::Instant::now() + EXIT_GRACE;
        for (hub, mut watcher) in hubs {
            if tokio::time::timeout_at(deadline, &mut watcher)
                .await
                .is_err()
            {
                tracing::warn!(
                    hub = %hub.child.pid().as_raw_nonzero(),
                    "the output hub did not finish within {}; killing it",
                    lrpm_core::human::duration(EXIT_GRACE)
                );
                hub.child.kill();
                let _ = tokio::time::timeout(EXIT_GRACE, watcher).await;
            }
        }
    }
}

impl Pool {
    /// Starts a hub and its watcher; `None` (logged) when it cannot.
    fn start_hub(&mut self) -> Option<Arc<Hub>> {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        match spawn_hub(&self.ctx, self.format) {
            Ok(hub) => {
                self.retry_at = None;
                tracing::info!(
                    hub = %hub.child.pid().as_raw_nonzero(),
                    "output hub started: it forwards the output of up to {} new workers",
                    self.capacity
                );
                let watcher = tokio::spawn(watch(hub.clone()));
                self.hubs.push((hub.clone(), watcher));
                Some(hub)
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                tracing::warn!("cannot start an output hub: {e}; forwarding in process");
                None
            }
        }
    }
}

/// Spawns a hub: `/proc/self/exe __lrpm-output-hub 3`, its socket handed
/// on as descriptor 3.
fn spawn_hub(ctx: &SpawnContext, format: LineFormat) -> io::Result<Arc<Hub>> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let json = format == LineFormat::Json;
    let request = Role::handed_hub(json)
        .request()
        .inherit_output()
        .hand(theirs);
    let spawned = spawn_command(request, ctx).map_err(io::Error::other)?;
    let child = AsyncChild::new(spawned.pid, spawned.pidfd)?;
    let sock = register(ours, Interest::READABLE | Interest::WRITABLE).map_err(|(_, e)| e)?;
    // A hub that cannot be used is killed and reaped when `child` drops.
    Ok(Arc::new(Hub {
        child,
        sock,
        held: AtomicUsize::new(0),
        alive: AtomicBool::new(true),
        closing: AtomicBool::new(false),
    }))
}

impl Hub {
    /// Sends one worker's pipes, without waiting.
    fn send(&self, job: &JobId, stdout: BorrowedFd<'_>, stderr: BorrowedFd<'_>) -> io::Result<()> {
        let fds = [stdout, stderr];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("the control buffer is too small"));
        }
        let id = job.as_str().as_bytes();
        let id = &id[..id.len().min(MAX_ID)];
        rustix::net::sendmsg(
            self.sock.get_ref(),
            &[IoSlice::new(id)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }
}

/// A hub's loss report: what its writer thread lost on workers' stdout and
/// stderr since the hub started (totals, see [`stdio::Losses`]).
///
/// Layout: [`LOSS_MAGIC`], the version byte [`LOSS_VERSION`], then for
/// stdout and stderr in turn: `dropped`, `errors`, `settled_dropped`,
/// `settled_errors` (each a little-endian u64), the length of the last
/// error (a little-endian u16, at most [`MAX_ERROR`]) and its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LossReport {
    stdout: Losses,
    stderr: Losses,
}

impl LossReport {
    /// What this process lost so far.
    fn now() -> Self {
        Self {
            stdout: stdio::losses(Stream::Stdout),
            stderr: stdio::losses(Stream::Stderr),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(LOSS_MAGIC);
        bytes.push(LOSS_VERSION);
        for losses in [&self.stdout, &self.stderr] {
            for n in [
                losses.dropped,
                losses.errors,
                losses.settled_dropped,
                losses.settled_errors,
            ] {
                bytes.extend_from_slice(&n.to_le_bytes());
            }
            let error = losses.last_error.as_deref().unwrap_or("");
            let mut end = error.len().min(MAX_ERROR);
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            let len = u16::try_from(end).unwrap_or(0);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&error.as_bytes()[..usize::from(len)]);
        }
        bytes
    }

    /// The report in `bytes`; `None` for anything else (another message, a
    /// version this lrpm does not know, a malformed one).
    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut rest = bytes.strip_prefix(LOSS_MAGIC)?;
        let (&version, tail) = rest.split_first()?;
        if version != LOSS_VERSION {
            return None;
        }
        rest = tail;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let mut streams = [Losses::default(), Losses::default()];
        for losses in &mut streams {
            let mut next =
                || -> Option<u64> { Some(u64::from_le_bytes(take(8)?.try_into().ok()?)) };
            (losses.dropped, losses.errors) = (next()?, next()?);
            (losses.settled_dropped, losses.settled_errors) = (next()?, next()?);
            let len = u16::from_le_bytes(take(2)?.try_into().ok()?);
            if usize::from(len) > MAX_ERROR {
                return None;
            }
            let error = String::from_utf8_lossy(take(usize::from(len))?).into_owned();
            losses.last_error = (!error.is_empty()).then_some(error);
        }
        if !rest.is_empty() {
            return None;
        }
        let [stdout, stderr] = streams;
        Some(Self { stdout, stderr })
    }
}

/// What lrpm took from one hub's reports so far, per stream (stdout,
/// stderr): the totals it added to its counters, and those it logged.
#[derive(Debug, Default)]
struct Taken {
    added: [Losses; 2],
    logged: [Losses; 2],
}

impl Taken {
    /// Adds what grew since the last report to lrpm's counters, and logs
    /// what the hub's streams recovered from.
    fn take(&mut self, hub: i32, report: LossReport) {
        let streams = [
            (Stream::Stdout, report.stdout),
            (Stream::Stderr, report.stderr),
        ];
        for (i, (stream, now)) in streams.into_iter().enumerate() {
            let added = &mut self.added[i];
            let dropped = now.dropped.saturating_sub(added.dropped);
            let errors = now.errors.saturating_sub(added.errors);
            if dropped > 0 || errors > 0 {
                let last = if errors > 0 {
                    now.last_error.clone()
                } else {
                    None
                };
                stdio::add_lost(stream, dropped, errors, last);
                added.dropped = added.dropped.max(now.dropped);
                added.errors = added.errors.max(now.errors);
            }
            let logged = &mut self.logged[i];
            // Only what was added is logged, however the hub counts.
            let settled_dropped = now.settled_dropped.min(added.dropped);
            let settled_errors = now.settled_errors.min(added.errors);
            let lines = settled_dropped.saturating_sub(logged.dropped);
            let failed = settled_errors.saturating_sub(logged.errors);
            if lines > 0 || failed > 0 {
                logged.dropped = logged.dropped.max(settled_dropped);
                logged.errors = logged.errors.max(settled_errors);
                let last = now.last_error.as_deref().unwrap_or_default();
                tracing::warn!(
                    hub,
                    "output hub: {}",
                    stdio::describe_loss(stream, lines, failed, last)
                );
            }
        }
    }
}

/// Follows one hub: takes the workers it lets go off its count and its
/// losses into lrpm's until its socket ends, then reaps it.
async fn watch(hub: Arc<Hub>) {
    let mut buf = [0u8; MAX_REPORT];
    let mut taken = Taken::default();
    let pid = hub.child.pid().as_raw_nonzero().get();
    loop {
        let read = hub
            .sock
            .async_io(Interest::READABLE, |fd| {
                rustix::net::recv(fd, &mut buf[..], RecvFlags::DONTWAIT).map_err(io::Error::from)
            })
            .await;
        match read {
            // A message longer than the buffer is cut: `n` is what was read.
            Ok((n, _)) if n > 0 => {
                let message = &buf[..n.min(MAX_REPORT)];
                if let Ok(count) = <[u8; 4]>::try_from(message) {
                    let released = u32::from_le_bytes(count) as usize;
                    let _ = hub
                        .held
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                            Some(held.saturating_sub(released))
                        });
                } else if let Some(report) = LossReport::decode(message) {
                    taken.take(pid, report);
                }
                // Anything else is not understood, and ignored.
            }
            _ => break,
        }
    }
    hub.alive.store(false, Ordering::Relaxed);
    let status = hub.child.wait().await.to_string();
    if hub.closing.load(Ordering::Relaxed) {
        tracing::debug!(hub = %hub.child.pid().as_raw_nonzero(), "output hub exited: {status}");
    } else {
        tracing::error!(
            hub = %hub.child.pid().as_raw_nonzero(),
            held = hub.held.load(Ordering::Relaxed),
            "output hub ended unexpectedly ({status}); the workers whose output it forwarded \
             will fail to write and be restarted; new workers go to a new hub"
        );
    }
}

/// Runs an output hub on the socket `fd` that lrpm handed it. Returns once
/// lrpm closed the socket and every pipe the hub held reached its end.
pub(crate) fn run(fd: RawFd, format: LineFormat) -> ExitCode {
    // A hub holds two descriptors per worker: as many as it may.
    let _ = lrpm_process::fd::raise_nofile_limit();
    let sock = match lrpm_process::fd::take_handed(fd) {
        Ok(sock) => sock,
        Err(e) => {
            eprintln!("lrpm output hub: descriptor {fd}: {e}");
            return ExitCode::from(crate::base::EX_USAGE);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lrpm output hub: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (output, thread) = match Output::start(format, None, None) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("lrpm output hub: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = rt.block_on(serve(sock, output));
    // The readers' tasks end with the runtime; the writer thread with them,
    // once its queue is written, or is given up on (its lines counted as
    // lost) if lrpm's stdout or stderr does not take them in time.
    drop(rt);
    thread.join_within(FLUSH_GRACE);
    match served {
        Ok(sock) => {
            send_last_report(&sock);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lrpm output hub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends lrpm the hub's last loss report, waiting a little for room on the
/// socket (lrpm reads it until the hub exits).
fn send_last_report(sock: &OwnedFd) {
    let report = LossReport::now();
    if report == LossReport::default() {
        return;
    }
    let bytes = report.encode();
    for _ in 0..20 {
        match rustix::net::send(sock, &bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return,
        }
    }
}

/// Sends lrpm the hub's losses if they changed since `sent`, without
/// waiting: a report the socket cannot take now is replaced by the next.
fn send_report(sock: &AsyncFd<OwnedFd>, sent: &mut LossReport) {
    let report = LossReport::now();
    if report == *sent {
        return;
    }
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    if rustix::net::send(sock.get_ref(), &report.encode(), flags).is_ok() {
        *sent = report;
    }
}

/// The hub's loop: takes workers' pipes from lrpm and forwards them; reports
/// each worker whose pipes both ended, and its losses; returns its socket
/// once lrpm closed its side and nothing is held, or [`DRAIN_GRACE`] after
/// lrpm closed its side.
async fn serve(sock: OwnedFd, output: Output) -> io::Result<OwnedFd> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handled and never read: the hub ends when lrpm says so or dies, not
    // when the terminal or a service manager signals lrpm's group.
    let _ignored = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
    ]
    .map(signal);
    let sock = register(sock, Interest::READABLE | Interest::WRITABLE).map_err(|(_, e)| e)?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut held = 0usize;
    let mut open = true;
    let mut buf = vec![0u8; MAX_ID];
    let mut sent = LossReport::default();
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once lrpm closed its side.
    let drained = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(drained);
    while open || held > 0 {
        tokio::select! {
            got = receive(&sock, &mut buf), if open => match got {
                Ok(Some((job, stdout, stderr))) => {
                    held += 1;
                    output.forward_counted(&job, stdout, stderr, WorkerDone::new(done_tx.clone()));
                }
                // lrpm closed its side (or is gone): forward what is held,
                // for a while.
                Ok(None) | Err(_) => {
                    open = false;
                    drained.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                }
            },
            _ = report.tick() => send_report(&sock, &mut sent),
            () = &mut drained, if !open => break,
            Some(()) = done_rx.recv() => {
                let mut n = 1u32;
                while done_rx.try_recv().is_ok() {
                    n += 1;
                }
                held = held.saturating_sub(n as usize);
                // lrpm may be gone or closing: the count is only a hint.
                let _ = tokio::time::timeout(
                    EXIT_GRACE,
                    sock.async_io(Interest::WRITABLE, |fd| {
                        rustix::net::send(fd, &n.to_le_bytes(), SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
                            .map_err(io::Error::from)
                    }),
                )
                .await;
            }
        }
    }
    Ok(sock.into_inner())
}

/// Receives one worker's job id and pipes; `None` when lrpm closed its side.
async fn receive(
    sock: &AsyncFd<OwnedFd>,
    buf: &mut [u8],
) -> io::Result<Option<(JobId, OwnedFd, OwnedFd)>> {
    loop {
        let (len, mut fds) = sock
            .async_io(Interest::READABLE, |fd| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    fd,
                    &mut [IoSliceMut::new(buf)],
                    &mut control,
                    RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
                )?;
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                Ok((msg.bytes.min(buf.len()), fds))
            })
            .await?;
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        if fds.len() == 2 {
            let stderr = fds.pop().expect("invariant: two descriptors");
            let stdout = fds.pop().expect("invariant: two descriptors");
            let job = JobId::new(String::from_utf8_lossy(&buf[..len]).into_owned());
            return Ok(Some((job, stdout, stderr)));
        }
        // Anything else is not from lrpm: drop it (and its descriptors).
    }
}

/// Where a new worker's output goes: forwarded here, or, once lrpm's
/// descriptors are half used, handed to an output hub.
#[derive(Debug)]
pub(crate) struct Forwarding {
    output: Output,
    hubs: Option<Hubs>,
}

impl Forwarding {
    /// Reopens the per-job log files, if lrpm writes them (SIGUSR1,
    /// `lrpmctl reopen-logs`); returns whether it does.
    pub(crate) fn reopen_logs(&self) -> bool {
        self.output.reopen_logs()
    }

    /// `job`'s newest `n` lines from the ring of recent lines
    /// ([`LogRings::last`](crate::logring::LogRings::last)).
    pub(crate) fn last_lines(&self, job: &str, n: Option<u64>) -> Option<Vec<String>> {
        self.output.rings()?.last(job, n)
    }

    /// `job`'s newest `n` lines and its new lines from now on
    /// ([`LogRings::follow`](crate::logring::LogRings::follow)).
    pub(crate) fn follow_lines(
        &self,
        job: &str,
        n: Option<u64>,
    ) -> Option<(Vec<String>, tokio::sync::broadcast::Receiver<Arc<str>>)> {
        self.output.rings()?.follow(job, n)
    }

    /// Forgets the rings of recent lines of the jobs `keep` says no to
    /// ([`LogRings::retain`](crate::logring::LogRings::retain)).
    pub(crate) fn retain_lines(&self, keep: impl Fn(&str) -> bool) {
        if let Some(rings) = self.output.rings() {
            rings.retain(keep);
        }
    }

    /// What the per-job logs lost, if lrpm writes them.
    pub(crate) fn job_logs_status(&self) -> Option<lrpm_core::status::StreamStatus> {
        self.output.job_logs_status()
    }

    /// Forwards through `output`, and through `hubs` when there are any.
    pub(crate) fn new(output: Output, hubs: Option<Hubs>) -> Self {
        Self { output, hubs }
    }

    /// Forwards a worker's stdout and stderr until they are closed: here,
    /// or, once lrpm's descriptors are half used, through an output hub;
    /// here too when no hub can take them at once.
    pub(crate) fn forward(&self, job: &JobId, stdout: OwnedFd, stderr: OwnedFd) {
        let (stdout, stderr) = match &self.hubs {
            Some(hubs) if hubs.wanted(&stdout, &stderr) => match hubs.send(job, stdout, stderr) {
                Ok(()) => return,
                Err(pipes) => pipes,
            },
            _ => (stdout, stderr),
        };
        self.output.forward(job, stdout, stderr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(dropped: u64, errors: u64, settled: u64, error: &str) -> LossReport {
        LossReport {
            stdout: Losses {
                dropped,
                errors,
                settled_dropped: settled,
                settled_errors: settled.min(errors),
                last_error: Some(error.to_owned()),
            },
            stderr: Losses::default(),
        }
    }

    #[test]
    fn a_loss_report_reads_back_as_written() {
        let sent = report(12, 3, 5, "Broken pipe (os error 32)");
        assert_eq!(LossReport::decode(&sent.encode()), Some(sent));
        // A long error is cut, on a character boundary.
        let long = report(1, 1, 0, &"é".repeat(MAX_ERROR));
        let back = LossReport::decode(&long.encode()).expect("decoded");
        let error = back.stdout.last_error.expect("an error");
        assert!(error.len() <= MAX_ERROR && error.chars().all(|c| c == 'é'));
    }

    #[test]
    fn anything_but_a_well_formed_report_is_refused() {
        let bytes = report(12, 3, 5, "err").encode();
        assert_eq!(LossReport::decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(LossReport::decode(&longer), None);
        let mut other_version = bytes.clone();
        other_version[LOSS_MAGIC.len()] = LOSS_VERSION + 1;
        assert_eq!(LossReport::decode(&other_version), None);
        assert_eq!(LossReport::decode(&7u32.to_le_bytes()), None);
        assert_eq!(LossReport::decode(b""), None);
    }

    #[test]
    fn totals_add_only_what_grew() {
        let before = stdio::losses(Stream::Stdout);
        let mut taken = Taken::default();
        taken.take(1, report(10, 2, 0, "first"));
        // The same totals again, and totals that went down, add nothing.
        taken.take(1, report(10, 2, 0, "first"));
        taken.take(1, report(4, 1, 0, "lower"));
        taken.take(1, report(15, 3, 15, "second"));
        let after = stdio::losses(Stream::Stdout);
        // Other tests of this binary may count losses meanwhile: at least
        // these were added.
        assert!(after.dropped - before.dropped >= 15);
        assert!(after.errors - before.errors >= 3);
        assert_eq!(taken.added[0].dropped, 15);
        assert_eq!(taken.logged[0].dropped, 15);
        assert_eq!(taken.logged[0].errors, 3);
    }
}
