//! Making sure no process the suite started outlives it.
//!
//! # Theory of operation
//!
//! Everything the suite runs lives in, or is started from, one temporary
//! directory whose path is unique to the run: the binaries are copied there
//! and run from there, and every worker gets the datagram socket's path
//! (inside it) on its command line. That path is the *token*: a process
//! whose command line contains it, or whose working directory is inside
//! it (s6's supervisors and workers, named relative to their service
//! directory), was started by this run, and by nothing else on the machine.
//!
//! The suite's direct children (lrpm, supervisord, control clients) are
//! [`Tracked`]: each holds a pidfd, registered here, so it can be signalled
//! without any risk of hitting a recycled pid, and its `Drop` kills and
//! reaps it. [`kill_everything`] first SIGTERMs every registered pidfd and
//! gives them a few seconds (lrpm removes its cgroups on the way out), then
//! SIGKILLs them, then scans `/proc` for processes carrying the token (the workers, which
//! are grandchildren, and anything a crashed supervisor left behind) and
//! SIGKILLs each one through a pidfd opened *before* the token is checked a
//! second time, so the check and the kill are about the same process.
//!
//! [`install`] runs [`kill_everything`] from a [`Guard`]'s `Drop` (a normal
//! end or a panic) and from a thread that waits for SIGINT, SIGTERM and
//! SIGHUP (Ctrl-C), which also removes the temporary directory and exits.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use crate::procfs;

/// What the cleanup needs to know, set once by [`install`].
#[derive(Debug)]
struct Cleanup {
    /// The run's unique temporary directory.
    dir: PathBuf,
    /// Its path as bytes: the token looked for in command lines.
    token: Vec<u8>,
    /// The pidfds of the suite's direct children that are not reaped yet.
    direct: Mutex<Vec<Arc<OwnedFd>>>,
}

static CLEANUP: OnceLock<Cleanup> = OnceLock::new();

/// How long the suite's direct children get to exit after SIGTERM before
/// they are killed.
const GRACE: Duration = Duration::from_secs(3);

/// Set once a signal asked the suite to stop: no new process is started.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Runs [`kill_everything`] when dropped.
#[derive(Debug)]
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        kill_everything();
    }
}

/// Sets up the cleanup for a run whose processes carry `dir` in their
/// command lines, and starts the thread that cleans up on SIGINT, SIGTERM
/// and SIGHUP.
pub fn install(dir: &Path) -> anyhow::Result<Guard> {
    let cleanup = Cleanup {
        dir: dir.to_path_buf(),
        // With the separator, another run's directory whose name merely
        // starts with this one's cannot match.
        token: [dir.as_os_str().as_encoded_bytes(), b"/"].concat(),
        direct: Mutex::new(Vec::new()),
    };
    CLEANUP
        .set(cleanup)
        .map_err(|_| anyhow::anyhow!("the cleanup is installed twice"))?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("cleanup".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                STOPPING.store(true, Ordering::SeqCst);
                eprintln!("lrpm-bench: signal {signal}: killing every process of this run");
                kill_everything();
                if let Some(c) = CLEANUP.get() {
                    let _ = std::fs::remove_dir_all(&c.dir);
                }
                std::process::exit(128 + signal);
            }
        })
        .context("starting the cleanup thread")?;
    Ok(Guard(()))
}

/// The token: the path of the run's temporary directory, as bytes.
pub fn token() -> &'static [u8] {
    CLEANUP.get().map_or(&[], |c| c.token.as_slice())
}

/// Fails if a signal asked the suite to stop; checked before each spawn.
pub fn check_not_stopping() -> io::Result<()> {
    if STOPPING.load(Ordering::SeqCst) {
        return Err(io::Error::other("the suite is stopping"));
    }
    Ok(())
}

/// SIGKILLs every process of this run: the direct children by their
/// pidfds, then every process whose command line carries the token.
pub fn kill_everything() {
    let Some(c) = CLEANUP.get() else { return };
    let direct: Vec<_> = lock(&c.direct).clone();
    // A polite stop first, so that a supervisor can clean up after itself
    // (lrpm removes its cgroups); then no more politeness.
    for pidfd in &direct {
        let _ = pidfd_send_signal(pidfd.as_fd(), Signal::TERM);
    }
    let deadline = Instant::now() + GRACE;
    for pidfd in &direct {
        wait_exit(pidfd, deadline);
    }
    for pidfd in &direct {
        let _ = pidfd_send_signal(pidfd.as_fd(), Signal::KILL);
    }
    // A supervisor being killed may be forking; a few rounds catch what it
    // started in the meantime.
    for round in 0..5 {
        let killed = kill_by_token(&c.token);
        if killed == 0 && round > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the process behind `pidfd` has exited (without reaping it),
/// or until `deadline`.
fn wait_exit(pidfd: &OwnedFd, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = Timespec::try_from(left).unwrap_or_default();
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let _ = poll(&mut fds, Some(&timeout));
}

/// SIGKILLs every process carrying `token` ([`procfs::carries`]);
/// returns how many.
fn kill_by_token(token: &[u8]) -> usize {
    let own = std::process::id();
    let mut killed = 0;
    for pid in procfs::all_pids() {
        if pid == own || !procfs::carries(pid, token) {
            continue;
        }
        let Some(raw) = Pid::from_raw(pid as i32) else {
            continue;
        };
        let Ok(pidfd) = pidfd_open(raw, PidfdFlags::empty()) else {
            continue;
        };
        // The pidfd pins the process: checking again now makes sure the
        // pid was not recycled between the scan and the open.
        if procfs::carries(pid, token) && pidfd_send_signal(pidfd.as_fd(), Signal::KILL).is_ok() {
            killed += 1;
        }
    }
    killed
}

/// A direct child of the suite, signalled through its pidfd, killed and
/// reaped when dropped.
#[derive(Debug)]
pub struct Tracked {
    child: Child,
    pidfd: Arc<OwnedFd>,
    reaped: Option<ExitStatus>,
}

impl Tracked {
    /// Spawns `cmd` and registers the child for the cleanup.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        check_not_stopping()?;
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
        let pid = Pid::from_child(&child);
        let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::from(e)).context("pidfd_open of a new child");
            }
        };
        if let Some(c) = CLEANUP.get() {
            lock(&c.direct).push(pidfd.clone());
        }
        Ok(Self {
            child,
            pidfd,
            reaped: None,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal`; a child already reaped is not signalled.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if self.reaped.is_some() {
            return Ok(());
        }
        pidfd_send_signal(self.pidfd.as_fd(), signal).map_err(io::Error::from)
    }

    /// Waits until it exits and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.reaped {
            return Ok(status);
        }
        let status = self.child.wait()?;
        self.reaped = Some(status);
        self.unregister();
        Ok(status)
    }

    /// Reaps it if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.reaped {
            return Ok(Some(status));
        }
        let status = self.child.try_wait()?;
        if let Some(status) = status {
            self.reaped = Some(status);
            self.unregister();
        }
        Ok(status)
    }

    /// Reads the child's piped stdout to its end.
    pub fn stdout_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_end(&mut buf)?;
        }
        Ok(buf)
    }

    /// Reads the child's piped stderr to its end, as text.
    pub fn stderr_to_end(&mut self) -> io::Result<String> {
        let mut buf = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut buf)?;
        }
        Ok(buf)
    }

    fn unregister(&self) {
        if let Some(c) = CLEANUP.get() {
            lock(&c.direct).retain(|fd| !Arc::ptr_eq(fd, &self.pidfd));
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            // Politely first, as in `kill_everything`.
            let _ = self.signal(Signal::TERM);
            wait_exit(&self.pidfd, Instant::now() + GRACE);
            let _ = self.signal(Signal::KILL);
            let _ = self.wait();
        }
    }
}

/// Locks `m`, also after a panic elsewhere poisoned it: the vector of
/// pidfds stays consistent whatever panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
