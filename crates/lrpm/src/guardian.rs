//! The guardian: a small process that kills the farm when lrpm dies, or
//! when lrpm's event loop stops sending its heartbeat in time.
//!
//! # Theory of operation
//!
//! Workers never outlive lrpm. The parent-death signal covers a worker's
//! main process, but not a daemon that left its job's process group
//! (`setsid`, a double fork), and nothing at all covers a process once lrpm
//! is SIGKILLed before it could clean up. So lrpm re-executes itself as
//! `BINARY __lrpm-guardian LRPM_PID [CGROUP_TREE]`, a process that:
//!
//! - holds a pidfd of lrpm and a `SOCK_SEQPACKET` socket to it (its
//!   descriptor 3), and nothing else but stdin (`/dev/null`), stdout and
//!   stderr: no tokio runtime, no thread, a few hundred KiB of memory; it
//!   sleeps in `poll` on those two descriptors, with the heartbeat's
//!   deadline as the timeout;
//! - is spawned with [`SpawnRequest::outlive_parent`](lrpm_process::command::SpawnRequest::outlive_parent): no parent-death
//!   signal (lrpm's death is what it waits for) and lrpm's own
//!   `oom_score_adj`; in a process group of its own and in lrpm's own
//!   cgroup, never in a job's; it ignores SIGTERM, SIGINT and SIGHUP, which
//!   a terminal or a service manager sends to lrpm's whole group or cgroup;
//! - when lrpm's pidfd becomes readable (lrpm ended, whatever the cause,
//!   SIGKILL included), kills every job's cgroup at once (`cgroup.kill` on
//!   lrpm's tree `lrpm-PID/`, then removes the tree as lrpm would have) and,
//!   with or without cgroups, every process on the machine whose
//!   environment carries one of this lrpm's run ids (`LRPM_RUN_ID=PID.RUN`:
//!   workers, what they fork, hosted workers), then exits;
//! - when lrpm sent `arm` with a deadline on the monotonic clock and no
//!   newer `arm` or `disarm` came before it, kills the farm the same way
//!   (leaving the cgroups to lrpm, which is alive), tells lrpm `fired N`,
//!   and goes on watching, disarmed: the dead-man's switch of the cluster
//!   mode, for an lrpm that is frozen (SIGSTOP, a stall) and cannot kill its
//!   own workers before its lease expires;
//! - on `bye` (lrpm's clean shutdown, once every worker is gone) exits and
//!   kills nothing.
//!
//! lrpm's side is [`Guardian`] (the owner, which says `bye`) and [`Handle`]
//! (cheap to clone: the heartbeat). A task follows the guardian through
//! its pidfd: a guardian that dies is started again at once (after a
//! pause of a second, doubled up to a minute while each lives less than a
//! second), and the new one gets the heartbeat's current deadline.
//!
//! The deadline travels as a reading of `CLOCK_MONOTONIC`, which every
//! process of the machine shares: a message that waits in the socket's
//! queue does not move the deadline later.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lrpm_process::command::{HANDED_FD, SpawnContext, spawn_command};
use lrpm_process::containment;
use lrpm_process::pidfd::AsyncChild;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::process::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::base::{EX_USAGE, Role};

/// What lrpm tells its guardian, one message each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Kill the farm if no newer order comes before this reading of the
    /// monotonic clock.
    Arm(Duration),
    /// No deadline.
    Disarm,
    /// lrpm shut down cleanly: exit without killing anything.
    Bye,
}

impl Order {
    fn encode(self) -> String {
        match self {
            Order::Arm(at) => format!("arm {}", at.as_nanos()),
            Order::Disarm => "disarm".to_owned(),
            Order::Bye => "bye".to_owned(),
        }
    }

    fn decode(message: &[u8]) -> Option<Order> {
        let text = std::str::from_utf8(message).ok()?;
        match text.split_once(' ') {
            Some(("arm", nanos)) => nanos.parse::<u64>().ok().map(|n| Order::Arm(nanos_to(n))),
            None if text == "disarm" => Some(Order::Disarm),
            None if text == "bye" => Some(Order::Bye),
            _ => None,
        }
    }
}

/// What the guardian tells lrpm: `fired N`, after it killed the farm
/// (`N` processes) because the heartbeat was late.
fn fired_message(killed: usize) -> String {
    format!("fired {killed}")
}

/// How many processes a `fired N` message says were killed.
fn decode_fired(message: &[u8]) -> Option<usize> {
    std::str::from_utf8(message)
        .ok()?
        .strip_prefix("fired ")?
        .parse()
        .ok()
}

fn nanos_to(nanos: u64) -> Duration {
    Duration::from_nanos(nanos)
}

/// The monotonic clock (`CLOCK_MONOTONIC`, which `Instant` reads too), now.
fn monotonic_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// `at` as a reading of the monotonic clock, which other processes share.
fn on_monotonic_clock(at: Instant) -> Duration {
    let (now, clock) = (Instant::now(), monotonic_now());
    match at.checked_duration_since(now) {
        Some(ahead) => clock + ahead,
        None => clock.saturating_sub(now - at),
    }
}

// ---------------------------------------------------------------------------
// lrpm's side.

/// What lrpm and the task that keeps its guardian share: the current
/// guardian's socket and what it must be told.
#[derive(Debug, Default)]
struct Link {
    /// The current guardian's socket, while one runs.
    socket: Option<Arc<AsyncFd<OwnedFd>>>,
    /// The heartbeat's deadline, on the monotonic clock; a new guardian
    /// gets it too.
    armed: Option<Duration>,
    /// Whether lrpm said `bye`: the guardian is not started again.
    bye: bool,
}

impl Link {
    /// Sends `order` to the current guardian, if one runs. A message lost
    /// (its queue full: the guardian does not read) makes no difference to
    /// a guardian that does not read anyway.
    fn send(&self, order: Order) {
        if let Some(socket) = &self.socket {
            let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
            if let Err(e) = rustix::net::send(socket.get_ref(), order.encode().as_bytes(), flags) {
                tracing::debug!("cannot tell the guardian {order:?}: {e}");
            }
        }
    }
}

/// A handle on lrpm's guardian for the event loop: the heartbeat of the
/// dead-man's switch. Cheap to clone. With `--guardian off` it does
/// nothing ([`Handle::is_active`] says so).
///
/// Use (the cluster mode): after each keep-alive of its lease, lrpm's event
/// loop calls `heartbeat(deadline)` with the time by which the workers
/// must be dead if no newer heartbeat comes (the keep-alive's send time
/// plus the lease's TTL, less a margin); `disarm()` when no lease binds the
/// workers any more. If the deadline passes, lrpm being frozen or its loop
/// stalled, the guardian SIGKILLs every worker (the farm's cgroups, and
/// every process with one of lrpm's run ids), logs nothing itself, and
/// tells lrpm, which logs `the guardian killed the farm` once it runs
/// again; lrpm then sees its workers' exits as usual. The guardian is then
/// disarmed until the next `heartbeat`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Handle {
    link: Option<Arc<Mutex<Link>>>,
}

impl Handle {
    /// Arms the dead-man's switch: the farm is killed at `deadline` unless
    /// another `heartbeat` (a later deadline) or [`Handle::disarm`] comes
    /// before. Sent at once; a guardian started again later gets it too.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))] // The etcd cluster mode's.
    pub(crate) fn heartbeat(&self, deadline: Instant) {
        self.order(Order::Arm(on_monotonic_clock(deadline)));
    }

    /// Disarms the dead-man's switch.
    #[allow(dead_code)] // For the cluster mode (issue 15).
    pub(crate) fn disarm(&self) {
        self.order(Order::Disarm);
    }

    /// Whether a guardian is kept (`--guardian on`, the default).
    #[allow(dead_code)] // For the cluster mode (issue 15).
    pub(crate) fn is_active(&self) -> bool {
        self.link.is_some()
    }

    fn order(&self, order: Order) {
        let Some(link) = &self.link else { return };
        let mut link = lock(link);
        link.armed = match order {
            Order::Arm(at) => Some(at),
            Order::Disarm | Order::Bye => None,
        };
        link.send(order);
    }
}

fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    // Nothing panics while holding it; a poisoned lock still holds a
    // consistent `Link`.
    link.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// lrpm's guardian, kept running by a task. Dropped without
/// [`Guardian::bye`] (lrpm ending on an error), it says `bye` all the same:
/// lrpm's own exit is not a death to avenge.
#[derive(Debug)]
pub(crate) struct Guardian {
    link: Arc<Mutex<Link>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// How long [`Guardian::bye`] waits for the guardian to exit.
const BYE_PATIENCE: Duration = Duration::from_secs(2);

/// A guardian that lived less than this is started again only after a
/// pause: this long, doubled for each such guardian in a row, up to
/// [`MAX_RESTART_PAUSE`].
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause before a guardian is started again.
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(60);

impl Guardian {
    /// Starts lrpm's guardian, watching over the cgroup tree `tree` (if
    /// lrpm has one) and lrpm's run ids, and the task that starts it again
    /// whenever it ends. Must run inside lrpm's runtime.
    pub(crate) fn start(spawn: SpawnContext, tree: Option<PathBuf>) -> Guardian {
        let link = Arc::new(Mutex::new(Link::default()));
        let task = tokio::spawn(keep(spawn, tree, link.clone()));
        Guardian {
            link,
            task: Some(task),
        }
    }

    /// A handle for the heartbeat.
    pub(crate) fn handle(&self) -> Handle {
        Handle {
            link: Some(self.link.clone()),
        }
    }

    /// Tells the guardian that lrpm shuts down cleanly (every worker is
    /// gone), and waits a moment for it to exit.
    pub(crate) async fn bye(mut self) {
        self.say_bye();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(BYE_PATIENCE, task).await.is_err() {
                tracing::warn!("the guardian did not exit within {BYE_PATIENCE:?} of bye");
            }
        }
    }

    fn say_bye(&self) {
        let mut link = lock(&self.link);
        if !link.bye {
            link.bye = true;
            link.send(Order::Bye);
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        self.say_bye();
    }
}

/// A guardian running, as lrpm sees it.
struct Running {
    child: AsyncChild,
    socket: Arc<AsyncFd<OwnedFd>>,
}

/// Starts a guardian: `/proc/self/exe __lrpm-guardian LRPM_PID [TREE]`,
/// its socket handed on as descriptor 3.
fn spawn_guardian(ctx: &SpawnContext, tree: Option<&Path>) -> io::Result<Running> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let role = Role::Guardian {
        lrpm: std::process::id(),
        tree: tree.map(Path::to_path_buf),
    };
    let request = role
        .request()
        .inherit_output()
        .outlive_parent()
        .hand(theirs);
    let spawned = spawn_command(request, ctx).map_err(io::Error::other)?;
    let child = AsyncChild::new(spawned.pid, spawned.pidfd)?;
    let socket = lrpm_process::fd::register(ours, Interest::READABLE).map_err(|(_, e)| e)?;
    Ok(Running {
        child,
        socket: Arc::new(socket),
    })
}

/// Keeps a guardian running until lrpm says `bye`.
async fn keep(spawn: SpawnContext, tree: Option<PathBuf>, link: Arc<Mutex<Link>>) {
    let mut pause = RESTART_PAUSE;
    loop {
        if lock(&link).bye {
            return;
        }
        let started = Instant::now();
        match spawn_guardian(&spawn, tree.as_deref()) {
            Ok(running) => {
                let pid = running.child.pid().as_raw_nonzero().get();
                {
                    let mut shared = lock(&link);
                    shared.socket = Some(running.socket.clone());
                    match (shared.bye, shared.armed) {
                        (true, _) => shared.send(Order::Bye),
                        (false, Some(at)) => shared.send(Order::Arm(at)),
                        (false, None) => {}
                    }
                }
                tracing::debug!(pid, "guardian started");
                let status = tokio::select! {
                    status = running.child.wait() => status,
                    () = hear(&running.socket) => running.child.wait().await,
                };
                lock(&link).socket = None;
                if lock(&link).bye {
                    return;
                }
                tracing::warn!(pid, "the guardian ended ({status}); starting another");
            }
            Err(e) => tracing::error!("cannot start the guardian: {e}; trying again"),
        }
        if started.elapsed() < RESTART_PAUSE {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RESTART_PAUSE);
        } else {
            pause = RESTART_PAUSE;
        }
    }
}

/// Logs what the guardian says, until its socket ends.
async fn hear(socket: &AsyncFd<OwnedFd>) {
    let mut buf = [0u8; 64];
    loop {
        let read = socket
            .async_io(Interest::READABLE, |fd| {
                rustix::net::recv(fd, &mut buf[..], RecvFlags::DONTWAIT).map_err(io::Error::from)
            })
            .await;
        match read {
            Ok((n, _)) if n > 0 => match decode_fired(&buf[..n.min(buf.len())]) {
                Some(killed) => tracing::error!(
                    killed,
                    "the guardian killed the farm ({killed} processes): lrpm's heartbeat was \
                     late (the event loop was stalled or frozen)"
                ),
                None => tracing::debug!("the guardian said something unknown"),
            },
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------
// The guardian's side.

/// Runs the guardian of lrpm `lrpm`, whose farm's cgroups are under `tree`
/// (if it has any), on the socket handed to it as descriptor 3. Returns
/// once lrpm ended (after killing the farm) or said `bye`.
pub(crate) fn run(lrpm: u32, tree: Option<PathBuf>) -> ExitCode {
    let socket = match lrpm_process::fd::take_handed(HANDED_FD) {
        Ok(socket) => socket,
        Err(e) => {
            say(format_args!("descriptor {HANDED_FD}: {e}"));
            return ExitCode::from(EX_USAGE);
        }
    };
    // A terminal's or a service manager's stop signal for lrpm's group or
    // cgroup is not for the guardian: it ends with lrpm, or on `bye`.
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        let _ = signal_hook::flag::register(signal, Arc::new(AtomicBool::new(false)));
    }
    let pidfd = i32::try_from(lrpm)
        .ok()
        .and_then(Pid::from_raw)
        .and_then(|pid| {
            let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty());
            // Opened while lrpm is still the parent: the pidfd is lrpm's,
            // not a process that took its pid since.
            pidfd
                .ok()
                .filter(|_| rustix::process::getppid() == Some(pid))
        });
    let Some(pidfd) = pidfd else {
        lrpm_ended(lrpm, tree.as_deref());
        return ExitCode::SUCCESS;
    };
    let mut deadline: Option<Duration> = None;
    let mut listening = true;
    loop {
        let timeout = deadline.map(|at| at.saturating_sub(monotonic_now()));
        if timeout == Some(Duration::ZERO) {
            let killed = kill_farm(lrpm, tree.as_deref(), false);
            let message = fired_message(killed);
            let _ = rustix::net::send(
                &socket,
                message.as_bytes(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            );
            deadline = None;
            continue;
        }
        let timeout = timeout.map(|t| Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let mut fds = [
            PollFd::new(&pidfd, PollFlags::IN),
            PollFd::new(&socket, PollFlags::IN),
        ];
        let watched = if listening { 2 } else { 1 };
        match rustix::event::poll(&mut fds[..watched], timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                // Out of memory for the poll table: try again shortly.
                say(format_args!("poll: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        if !fds[0].revents().is_empty() {
            lrpm_ended(lrpm, tree.as_deref());
            return ExitCode::SUCCESS;
        }
        if watched == 2 && !fds[1].revents().is_empty() {
            let mut buf = [0u8; 64];
            match rustix::net::recv(&socket, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((n, _)) if n > 0 => match Order::decode(&buf[..n.min(buf.len())]) {
                    Some(Order::Arm(at)) => deadline = Some(at),
                    Some(Order::Disarm) => deadline = None,
                    Some(Order::Bye) => return ExitCode::SUCCESS,
                    None => {}
                },
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                // lrpm closed its end: it is ending, which its pidfd tells.
                Ok(_) | Err(_) => listening = false,
            }
        }
    }
}

/// lrpm ended without `bye`: kills its farm and says so.
fn lrpm_ended(lrpm: u32, tree: Option<&Path>) {
    let killed = kill_farm(lrpm, tree, true);
    say(format_args!(
        "lrpm (pid {lrpm}) ended without shutting down: killed the {killed} processes left of \
         its jobs"
    ));
}

/// Kills every process of lrpm's farm: its cgroup tree at once, if it has
/// one (and removes it, when lrpm is dead), and every process with one of
/// its run ids. Returns how many processes that was.
fn kill_farm(lrpm: u32, tree: Option<&Path>, lrpm_dead: bool) -> usize {
    let in_tree = match tree {
        Some(tree) if lrpm_dead => containment::kill_dead_tree(tree),
        Some(tree) => containment::kill_tree_processes(tree).unwrap_or_else(|e| {
            say(format_args!("cannot kill {}: {e}", tree.display()));
            0
        }),
        None => 0,
    };
    in_tree + containment::kill_runs_of(lrpm)
}

/// Writes one line of the guardian's to stderr (lrpm's), after what it had
/// to do: a blocked stderr never delays a kill.
fn say(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "lrpm guardian: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_decode_as_they_were_encoded() {
        for order in [
            Order::Arm(Duration::new(12_345, 678_901_234)),
            Order::Arm(Duration::ZERO),
            Order::Disarm,
            Order::Bye,
        ] {
            assert_eq!(Order::decode(order.encode().as_bytes()), Some(order));
        }
        for garbage in [
            &b""[..],
            b"arm",
            b"arm x",
            b"arm -1",
            b"bye ",
            b"\xff",
            b"fired 3",
        ] {
            assert_eq!(Order::decode(garbage), None, "{garbage:?}");
        }
        assert_eq!(decode_fired(fired_message(42).as_bytes()), Some(42));
        assert_eq!(decode_fired(b"bye"), None);
    }

    #[test]
    fn an_instant_maps_onto_the_monotonic_clock() {
        let now = Instant::now();
        let clock = monotonic_now();
        let later = on_monotonic_clock(now + Duration::from_secs(5));
        let earlier = on_monotonic_clock(now - Duration::from_millis(1));
        // Instant reads CLOCK_MONOTONIC: the same clock, give or take the
        // time between two readings.
        let tolerance = Duration::from_millis(50);
        assert!(
            later >= clock + Duration::from_secs(5) - tolerance,
            "{later:?} {clock:?}"
        );
        assert!(
            later <= clock + Duration::from_secs(5) + tolerance,
            "{later:?} {clock:?}"
        );
        assert!(earlier < clock + tolerance);
    }
}
