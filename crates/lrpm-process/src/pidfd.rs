//! [`AsyncChild`]: one child of lrpm followed by its own pidfd in the async
//! runtime (a configuration command, an output hub). The workers of the
//! farm are followed together instead, by [`crate::exits::ExitWatch`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use lrpm_core::status::ExitStatus;
use rustix::process::{Pid, Signal, WaitIdOptions, kill_process_group, pidfd_send_signal};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::children::{reap_child, reap_child_blocking, waitid_status};
use crate::fd::register;

/// A child followed through its pidfd. Dropped before it was reaped, it
/// kills its process group and is reaped in the background.
#[derive(Debug)]
pub struct AsyncChild {
    /// Its pid, which is also its process-group id.
    pid: Pid,
    /// Its pidfd, registered with the runtime; taken only by `drop`.
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// Set once it is reaped: its pid may then belong to a stranger.
    reaped: AtomicBool,
}

impl AsyncChild {
    /// Follows child `pid` (just spawned, an own child) through `pidfd`.
    /// A child that cannot be followed is killed and reaped at once.
    pub fn new(pid: Pid, pidfd: OwnedFd) -> io::Result<AsyncChild> {
        match register(pidfd, Interest::READABLE) {
            Ok(pidfd) => Ok(AsyncChild {
                pid,
                pidfd: Some(pidfd),
                reaped: AtomicBool::new(false),
            }),
            Err((pidfd, e)) => {
                let _ = kill_process_group(pid, Signal::KILL);
                reap_child_blocking(pid, pidfd.as_fd());
                Err(e)
            }
        }
    }

    /// Its pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits until the child ends, kills what is left of its process group
    /// (the zombie still pins the group id), and reaps it. Cancel-safe; a
    /// child already reaped is reported as such.
    pub async fn wait(&self) -> ExitStatus {
        let Some(pidfd) = &self.pidfd else {
            return ExitStatus::spawn_failed("already reaped");
        };
        loop {
            if self.reaped.load(Ordering::Acquire) {
                return ExitStatus::spawn_failed("already reaped");
            }
            match pidfd.readable().await {
                Ok(mut ready) => {
                    if waitid_status(ready.get_inner().as_fd(), WaitIdOptions::NOWAIT).is_none() {
                        ready.clear_ready();
                        continue;
                    }
                }
                Err(e) => {
                    // Only a runtime shutting down gets here.
                    self.kill();
                    return ExitStatus::spawn_failed(format!("cannot watch it: {e}"));
                }
            }
            if self.reaped.swap(true, Ordering::AcqRel) {
                continue;
            }
            let _ = kill_process_group(self.pid, Signal::KILL);
            return reap_child(self.pid, pidfd.get_ref().as_fd())
                .unwrap_or_else(|| ExitStatus::spawn_failed("it vanished"));
        }
    }

    /// Sends `signal` to the child's main process, unless it is reaped.
    pub fn signal(&self, signal: Signal) {
        if let Some(pidfd) = self.pidfd.as_ref().filter(|_| !self.reaped()) {
            let _ = pidfd_send_signal(pidfd.get_ref().as_fd(), signal);
        }
    }

    /// Kills the child's process group, and the child itself should it
    /// have left the group; a reaped child is not signalled.
    pub fn kill(&self) {
        if let Some(pidfd) = self.pidfd.as_ref().filter(|_| !self.reaped()) {
            // ESRCH: the group has no member left but the zombie leader.
            let _ = kill_process_group(self.pid, Signal::KILL);
            let _ = pidfd_send_signal(pidfd.get_ref().as_fd(), Signal::KILL);
        }
    }

    fn reaped(&self) -> bool {
        self.reaped.load(Ordering::Acquire)
    }
}

impl Drop for AsyncChild {
    fn drop(&mut self) {
        if self.reaped() {
            return;
        }
        self.kill();
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        // Reap it once it is gone, without blocking whoever dropped it. A
        // runtime that is shutting down drops the task, and the zombie goes
        // with lrpm.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pid = self.pid;
            runtime.spawn(async move {
                let _ = pidfd.readable().await;
                let _ = reap_child(pid, pidfd.get_ref().as_fd());
            });
        }
    }
}
