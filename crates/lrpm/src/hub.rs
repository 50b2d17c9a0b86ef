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
use crate::output::{Output, WorkerDone};

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
    /// it was raised); `None` when the soft limit is unlimited.
    pub(crate) fn new(ctx: SpawnContext) -> Option<Hubs> {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let soft = limit.current?;
        let hard = limit.maximum.unwrap_or(soft).max(soft);
        let capacity = usize::try_from(hard.saturating_sub(MARGIN) / 2).unwrap_or(usize::MAX);
        Some(Hubs(Arc::new(Mutex::new(Pool {
            threshold: RawFd::try_from(soft / 2).unwrap_or(RawFd::MAX),
            capacity: capacity.max(1),
            ctx,
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
        match spawn_hub(&self.ctx) {
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
fn spawn_hub(ctx: &SpawnContext) -> io::Result<Arc<Hub>> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let request = Role::handed_hub().request().inherit_output().hand(theirs);
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

/// Follows one hub: takes the workers it lets go off its count until its
/// socket ends, then reaps it.
async fn watch(hub: Arc<Hub>) {
    let mut buf = [0u8; 256];
    loop {
        let read = hub
            .sock
            .async_io(Interest::READABLE, |fd| {
                rustix::net::recv(fd, &mut buf[..], RecvFlags::DONTWAIT).map_err(io::Error::from)
            })
            .await;
        match read {
            Ok((n, _)) if n > 0 => {
                let released: usize = buf[..n]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
                    .sum();
                let _ = hub
                    .held
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                        Some(held.saturating_sub(released))
                    });
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
pub(crate) fn run(fd: RawFd) -> ExitCode {
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
    let (output, thread) = match Output::start() {
        Ok(started) => started,
        Err(e) => {
            eprintln!("lrpm output hub: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = rt.block_on(serve(sock, output));
    drop(rt);
    thread.join();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lrpm output hub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The hub's loop: takes workers' pipes from lrpm and forwards them; reports
/// each worker whose pipes both ended; returns once lrpm closed its side and
/// nothing is held.
async fn serve(sock: OwnedFd, output: Output) -> io::Result<()> {
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
    while open || held > 0 {
        tokio::select! {
            got = receive(&sock, &mut buf), if open => match got {
                Ok(Some((job, stdout, stderr))) => {
                    held += 1;
                    output.forward_counted(&job, stdout, stderr, WorkerDone::new(done_tx.clone()));
                }
                // lrpm closed its side (or is gone): forward what is held.
                Ok(None) | Err(_) => open = false,
            },
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
    Ok(())
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
