//! lrpm's own children: the registry of those lrpm reaps itself (through
//! their pidfds, or by their pids), and the reaping itself.
//!
//! Every child spawned through [`crate::command`] (and every output hub) is
//! recorded here until it is reaped, so that the orphan reaper of
//! [`crate::containment`], which reaps whatever else is re-parented to
//! lrpm, never takes the exit status of a child whose pidfd lrpm watches.
//!
//! A child whose pidfd lrpm closed to save a descriptor is waited for by
//! its pid ([`reap_pid_blocking`], [`waitid_pid_status`]), which is just as
//! safe: a child that is not reaped keeps its pid, and only lrpm reaps it.
//! Never by "any child" (`waitpid(-1)`, `P_ALL`), which would take the
//! statuses of the others.

use std::collections::HashSet;
use std::os::fd::BorrowedFd;
use std::sync::{LazyLock, Mutex, PoisonError};

use lrpm_core::status::ExitStatus;
use rustix::process::{Pid, WaitId, WaitIdOptions};

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

/// Records `pid` as an own child until it is reaped through its pidfd.
#[cfg(feature = "tokio")]
pub(crate) fn register(pid: Pid) {
    own_children().insert(pid.as_raw_nonzero().get());
}

/// Waits for child `pid`, which has ended or was just SIGKILLed, to end,
/// reaps it through its `pidfd`, and forgets it as an own child.
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

/// Waits for child `pid`, which has ended or was just SIGKILLed, to end,
/// reaps it by its pid (its pidfd was closed), and forgets it as an own
/// child. The pid is lrpm's own unreaped child, so it names no other
/// process.
pub fn reap_pid_blocking(pid: Pid) {
    let _ = rustix::process::waitid(WaitId::Pid(pid), WaitIdOptions::EXITED);
    own_children().remove(&pid.as_raw_nonzero().get());
}

/// How the finished child behind `pidfd` ended (reaping it, unless `extra`
/// has `NOWAIT`); `None` if it has not finished.
pub fn waitid_status(pidfd: BorrowedFd<'_>, extra: WaitIdOptions) -> Option<ExitStatus> {
    status_of(WaitId::PidFd(pidfd), extra)
}

/// How lrpm's own unreaped child `pid` ended (reaping it, unless `extra`
/// has `NOWAIT`); `None` if it has not finished. For a child whose pidfd
/// was closed: the pid cannot name another process until lrpm reaps it.
pub fn waitid_pid_status(pid: Pid, extra: WaitIdOptions) -> Option<ExitStatus> {
    status_of(WaitId::Pid(pid), extra)
}

fn status_of(id: WaitId<'_>, extra: WaitIdOptions) -> Option<ExitStatus> {
    let res = rustix::process::waitid(id, WaitIdOptions::EXITED | WaitIdOptions::NOHANG | extra);
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
