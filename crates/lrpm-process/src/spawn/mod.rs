//! The low-level spawn: a vfork-style `clone` whose cost does not grow with
//! lrpm's memory or its number of open descriptors.
//!
//! # Theory of operation
//!
//! A `fork` copies the parent's page tables and its descriptor table, and
//! the child's `exec` then tears the copied address space down and walks the
//! whole table to close what is close-on-exec. lrpm holds three descriptors
//! per worker (a pidfd and two pipes), so with a large farm every spawn paid
//! for every other worker. `std::process::Command` forks as soon as a
//! `pre_exec` hook is registered, and `posix_spawn` (which `Command` uses
//! otherwise) can neither arm a parent-death signal nor join a cgroup before
//! the program runs; so lrpm does the clone itself:
//!
//! - `clone(CLONE_VM | CLONE_VFORK | CLONE_FILES | CLONE_PIDFD | SIGCHLD)`
//!   on a child stack allocated once (`Spawner`): with `clone3` and
//!   `CLONE_INTO_CGROUP` when the run has a cgroup (x86_64, Linux 5.7; see
//!   the `clone3` module), through glibc's `clone` otherwise.
//!   The child shares lrpm's memory (nothing is copied) and its descriptor
//!   table; the calling thread is suspended until the child has exec'd or
//!   exited, so one stack serves every spawn of that thread, and the kernel
//!   hands back the child's pidfd (close-on-exec) with no separate
//!   `pidfd_open`. Two threads may spawn at once (the `lanes` module): there
//!   is a `Spawner` (stack and slots) per thread that may, each behind its
//!   own lock, and a spawn takes whichever is free.
//! - The child's first act is `close_range(N, ~0, CLOSE_RANGE_UNSHARE)`: the
//!   kernel gives it a private descriptor table holding only the descriptors
//!   below `N`. Everything the child needs is below `N`: `Spawner` reserves
//!   a few low descriptor numbers (slots) once, on `/dev/null`, and before each
//!   clone the parent `dup3`s the child's stdout and stderr pipes (and the
//!   cgroup's `cgroup.procs`, when the child must join its cgroup itself)
//!   onto them; the stdin slot stays on `/dev/null`. (A child also keeps the
//!   other spawner's slots below `N` until it has its stdio, and then
//!   closes every descriptor above 2.)
//!   When the clone returns, the slots are put back on `/dev/null`, so lrpm
//!   holds no write end of a worker's pipes and its output reaches EOF when
//!   the worker dies. `exec` then walks a table of a handful of entries.
//!   Where `close_range` cannot unshare (kernels before 5.9) the child falls
//!   back to `unshare(CLONE_FILES)`, which copies the whole table: correct
//!   (every descriptor of lrpm is close-on-exec), only slower.
//! - Between clone and exec the child runs on lrpm's memory, with lrpm's
//!   thread-local storage, while lrpm's other threads keep running: it may
//!   only make system calls on memory the parent prepared ([`Plan`]): no
//!   allocation, no lock, no panic. Its steps, in order: join the run's
//!   cgroup (with lrpm's credentials, before it can fork), `setpgid(0, 0)`,
//!   stdio from the slots and every other descriptor closed, the workers'
//!   `oom_score_adj` where it differs from lrpm's (the `oom` module), the identity
//!   switch (raw `setgroups`/`setresgid`/`setresuid`: glibc's wrappers would
//!   broadcast the change to lrpm's threads), the parent-death SIGKILL
//!   (after the switch, which clears it) and a check that lrpm is still its
//!   parent, the descriptor limit lrpm started with, the working directory,
//!   the signal dispositions and mask, and `execve` of each candidate path
//!   in turn (the `PATH` search is done by the parent, as `execvpe` would).
//! - Signals: the parent blocks every signal in the spawning thread around
//!   the clone, so none of lrpm's handlers can run in the child on shared
//!   memory. The child sets every signal that has a handler back to
//!   `SIG_DFL` while they are still blocked, SIGPIPE too (Rust ignores it;
//!   `Command` resets it as well), and clears the mask right before
//!   `execve`: a worker starts with an empty mask and only the ignored
//!   signals lrpm itself inherited.
//! - A failing step writes which step and its errno into `Report`, which
//!   the child shares with the parent, and exits with 127; the parent reads
//!   it once the clone has returned, reaps the child through its pidfd and
//!   returns a [`Failure`].
//!
//! Architecture invariant: every descriptor lrpm opens is close-on-exec,
//! and only the `Spawner`'s slots are ever placed on descriptors below its
//! limit `N` on purpose; a spawner's lock is held from the first `dup3`
//! onto one of its slots until its slots are restored.

mod child;
mod clone3;

use std::ffi::{CStr, CString, c_int, c_void};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};

use self::child::{
    CGROUP, ChildArgs, HANDED, MEMORY, Report, SLOTS, STDERR, STDIN, STDOUT, child_main,
};
pub use self::child::{Step, Switch};

/// The child's stack. Its frames are a few small functions making system
/// calls; 256 KiB leaves a wide margin, with a guard page below.
const STACK_SIZE: usize = 256 * 1024;

/// Fallback paths of older kernels, taken on request so that tests can run
/// them where the kernel has the newer calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fallbacks {
    /// Get the private descriptor table with `unshare(CLONE_FILES)`, as on
    /// a kernel without `CLOSE_RANGE_UNSHARE` (before 5.9).
    pub unshare: bool,
    /// Join the cgroup through its `cgroup.procs`, as where `clone3` is
    /// refused.
    pub join_cgroup: bool,
}

/// Why a child did not reach its program.
#[derive(Debug)]
pub struct Failure {
    /// The step that failed; `None` when the parent failed before the child
    /// existed (`errno` is then the parent's).
    pub step: Option<Step>,
    /// The OS error.
    pub error: std::io::Error,
}

impl Failure {
    fn parent(error: std::io::Error) -> Self {
        Self { step: None, error }
    }
}

/// Everything a child needs, prepared by the parent.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The paths to `execve`, in order (one, unless `PATH` was searched).
    pub candidates: &'a [CString],
    /// The argument vector.
    pub argv: &'a [CString],
    /// The environment, `NAME=value` each.
    pub envp: &'a [CString],
    /// The working directory, if not lrpm's.
    pub cwd: Option<&'a CStr>,
    /// The identity to switch to, if any.
    pub identity: Option<&'a Switch>,
    /// lrpm's pid: a child whose parent is someone else once its
    /// parent-death signal is armed gives up.
    pub parent: rustix::process::Pid,
    /// The descriptor limit to restore.
    pub nofile: rustix::process::Rlimit,
    /// The run's cgroup directory (open read-only): the child is cloned
    /// straight into it (`CLONE_INTO_CGROUP`), or, where `clone3` cannot do
    /// that, writes itself into its `cgroup.procs` first thing.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// The `cgroup.procs` of the run's cgroup v1 memory cgroup (open for
    /// writing), which the child joins before it executes its program.
    pub memory_procs: Option<BorrowedFd<'a>>,
    /// The write end of the child's stdout.
    pub stdout: BorrowedFd<'a>,
    /// The write end of the child's stderr.
    pub stderr: BorrowedFd<'a>,
    /// A descriptor the child gets as `HANDED_FD` (3).
    pub handed: Option<BorrowedFd<'a>>,
    /// Fallback paths to take even where they are not needed.
    pub fallbacks: Fallbacks,
    /// A child that must outlive lrpm (the guardian): no parent-death
    /// signal, and lrpm's own `oom_score_adj` rather than the workers'.
    pub outlives_parent: bool,
}

/// A child that is running its program.
#[derive(Debug)]
pub struct Child {
    /// Its pid, which is also its process-group id.
    pub pid: rustix::process::Pid,
    /// Its pidfd (blocking, close-on-exec).
    pub pidfd: OwnedFd,
}

/// The reserved descriptor slots and the child stack of one spawning
/// thread, behind a lock.
#[derive(Debug)]
struct Spawner {
    /// Descriptors on `/dev/null` (read-only: the stdin slot stays on it),
    /// all close-on-exec, all at least 3.
    slots: [OwnedFd; SLOTS],
    /// One above the highest slot: the child keeps the descriptors below.
    limit: RawFd,
    /// The lowest address of the stack mapping (its guard page).
    stack: *mut c_void,
}

// SAFETY: the stack pointer is only used under the spawner's lock, by the
// thread that holds it; the mapping is never unmapped.
unsafe impl Send for Spawner {}

/// How many spawns may run at once ([`crate::lanes`]), each on a spawner
/// of its own.
const LANES: usize = crate::lanes::THREADS;

static SPAWNERS: [Mutex<Option<Spawner>>; LANES] = [const { Mutex::new(None) }; LANES];

/// A free spawner, or the first one (waiting for it) if all are busy.
fn spawner() -> MutexGuard<'static, Option<Spawner>> {
    // A spawner stays consistent whatever panicked while holding it: the
    // slots are restored before anything can panic.
    SPAWNERS
        .iter()
        .find_map(|lane| match lane.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })
        .unwrap_or_else(|| SPAWNERS[0].lock().unwrap_or_else(PoisonError::into_inner))
}

/// Reserves the descriptor slots and the child stack of every spawner, if not
/// done yet.
///
/// lrpm calls it first thing, so that the slots get the lowest numbers and
/// the children's descriptor tables stay tiny; a later call (a test, a
/// library) still works, with higher numbers.
pub fn reserve() -> std::io::Result<()> {
    for lane in &SPAWNERS {
        let mut guard = lane.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(Spawner::new()?);
        }
    }
    Ok(())
}

impl Spawner {
    fn new() -> std::io::Result<Self> {
        use rustix::fs::{Mode, OFlags, open};
        let mut slots = Vec::with_capacity(SLOTS);
        while slots.len() < SLOTS {
            let fd = open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
            if fd.as_raw_fd() < 3 {
                // lrpm was started with a closed stdio descriptor: leave
                // /dev/null on it (without close-on-exec: it is stdio) so
                // that no slot is one of 0, 1 or 2.
                rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty())?;
                std::mem::forget(fd);
                continue;
            }
            slots.push(fd);
        }
        let limit = slots.iter().map(AsRawFd::as_raw_fd).max().unwrap_or(2) + 1;
        let slots: [OwnedFd; SLOTS] = slots
            .try_into()
            .map_err(|_| std::io::Error::other("invariant: SLOTS descriptors"))?;
        let page = rustix::param::page_size();
        // SAFETY: a fresh anonymous private mapping; no existing memory is
        // touched. It is never unmapped: the spawner lives as long as lrpm.
        let stack = unsafe {
            libc::mmap(
                ptr::null_mut(),
                STACK_SIZE + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the first page of the mapping just made becomes the guard
        // page; nothing uses it.
        if unsafe { libc::mprotect(stack, page, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            slots,
            limit,
            stack,
        })
    }

    /// Puts `fd` on slot `i` (close-on-exec).
    fn place(&self, i: usize, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        // SAFETY: dup3 onto a descriptor this spawner owns: it replaces the
        // open file behind the number, the OwnedFd stays valid.
        let res = unsafe { libc::dup3(fd.as_raw_fd(), self.slots[i].as_raw_fd(), libc::O_CLOEXEC) };
        if res < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts the slots other than stdin back on `/dev/null`: stdout's and
    /// stderr's, and with `all` the others too (a spawn that placed none of
    /// them spares their `dup3`s, made while its child runs).
    fn restore(&self, all: bool) {
        let slots: &[usize] = if all {
            &[STDOUT, STDERR, CGROUP, HANDED, MEMORY]
        } else {
            &[STDOUT, STDERR]
        };
        for &i in slots {
            // The stdin slot is always on /dev/null. A dup3 between two
            // valid descriptors only fails for lack of memory; the slot
            // would then keep a pipe open, which the next spawn replaces.
            let _ = self.place(i, self.slots[STDIN].as_fd());
        }
    }
}

/// A null-terminated array of pointers to the strings of `strings`, which
/// must outlive it.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// Blocks every signal in the calling thread until dropped.
struct SignalsBlocked {
    old: libc::sigset_t,
}

impl SignalsBlocked {
    fn new() -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigfillset initialises it and
        // pthread_sigmask only reads `all` and writes `old`.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let res = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            if res != 0 {
                return Err(std::io::Error::from_raw_os_error(res));
            }
            Ok(Self { old })
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, ptr::null_mut());
        }
    }
}

/// Starts a child as `plan` says and returns once it runs its program, or
/// with why it could not.
pub fn spawn(plan: &Plan<'_>) -> Result<Child, Failure> {
    let candidates = pointers(plan.candidates);
    let argv = pointers(plan.argv);
    let envp = pointers(plan.envp);
    let report = Report::default();
    let mut oom_text = [0u8; 12];
    let oom = if plan.outlives_parent {
        None
    } else {
        crate::oom::worker_value(&mut oom_text)
    };
    let mut guard = spawner();
    if guard.is_none() {
        *guard = Some(Spawner::new().map_err(Failure::parent)?);
    }
    let spawner = guard
        .as_ref()
        .ok_or_else(|| Failure::parent(std::io::Error::other("invariant: reserved above")))?;
    let mut args = ChildArgs {
        report: &report,
        slots: [
            spawner.slots[STDIN].as_raw_fd(),
            spawner.slots[STDOUT].as_raw_fd(),
            spawner.slots[STDERR].as_raw_fd(),
            spawner.slots[CGROUP].as_raw_fd(),
            spawner.slots[HANDED].as_raw_fd(),
            spawner.slots[MEMORY].as_raw_fd(),
        ],
        limit: spawner.limit,
        // Set by `clone_once`, which knows how the child gets its cgroup.
        has_cgroup: false,
        has_memory_cgroup: plan.memory_procs.is_some(),
        force_unshare: plan.fallbacks.unshare,
        has_handed: plan.handed.is_some(),
        candidates: candidates.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: plan.cwd.map_or(ptr::null(), CStr::as_ptr),
        identity: plan.identity.map(ptr::from_ref),
        parent: plan.parent,
        death_signal: !plan.outlives_parent,
        nofile: libc::rlimit {
            rlim_cur: plan.nofile.current.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: plan.nofile.maximum.unwrap_or(libc::RLIM_INFINITY),
        },
        oom: oom.map_or(ptr::null(), <[u8]>::as_ptr),
        oom_len: oom.map_or(0, <[u8]>::len),
    };
    let mut pidfd: c_int = -1;
    // Cloned straight into its cgroup where clone3 can; otherwise the child
    // joins it through its cgroup.procs, which costs the kernel an RCU grace
    // period (the cgroup threadgroup lock taken for writing) on every spawn.
    let mut into_cgroup = plan
        .cgroup
        .filter(|_| !plan.fallbacks.join_cgroup && clone3::usable());
    let pid = loop {
        let result = clone_once(spawner, plan, &mut args, into_cgroup, &mut pidfd);
        match result {
            Err(e) if into_cgroup.is_some() => {
                // Not on this kernel (or not into this cgroup): join it
                // through cgroup.procs, as before clone3.
                if clone3::unsupported(&e) {
                    clone3::disable(&e);
                }
                into_cgroup = None;
            }
            Err(e) => return Err(Failure::parent(e)),
            Ok(pid) => break pid,
        }
    };
    drop(guard);
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor, which is
    // ours alone, in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| Failure::parent(std::io::Error::other("clone returned pid 0")))?;
    let step = report.step.load(Ordering::Acquire);
    if step == 0 {
        return Ok(Child { pid, pidfd });
    }
    // The child has exited already (CLONE_VFORK): reap it.
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    );
    Err(Failure {
        step: Step::from_raw(step),
        error: std::io::Error::from_raw_os_error(report.errno.load(Ordering::Acquire)),
    })
}

/// One clone of a child for `plan`: into the cgroup `into_cgroup` with
/// clone3, or with glibc's `clone` (the child then joins `plan`'s cgroup, if
/// any, through its `cgroup.procs`). The slots are placed for the child and
/// restored, and every signal is blocked, for the time of the clone.
fn clone_once(
    spawner: &Spawner,
    plan: &Plan<'_>,
    args: &mut ChildArgs,
    into_cgroup: Option<BorrowedFd<'_>>,
    pidfd: &mut c_int,
) -> std::io::Result<c_int> {
    let procs = match plan.cgroup {
        Some(dir) if into_cgroup.is_none() => Some(open_procs(dir)?),
        _ => None,
    };
    args.has_cgroup = procs.is_some();
    let placed = (|| {
        spawner.place(STDOUT, plan.stdout)?;
        spawner.place(STDERR, plan.stderr)?;
        if let Some(procs) = &procs {
            spawner.place(CGROUP, procs.as_fd())?;
        }
        if let Some(handed) = plan.handed {
            spawner.place(HANDED, handed)?;
        }
        if let Some(memory) = plan.memory_procs {
            spawner.place(MEMORY, memory)?;
        }
        SignalsBlocked::new()
    })();
    let blocked = match placed {
        Ok(blocked) => blocked,
        Err(e) => {
            spawner.restore(true);
            return Err(e);
        }
    };
    let page = rustix::param::page_size();
    let arg = ptr::from_mut(args).cast::<c_void>();
    let pid = match into_cgroup {
        // SAFETY: as for `libc::clone` below: `child_main` runs on the
        // reserved stack (above its guard page) while this thread is
        // suspended.
        Some(cgroup) => unsafe {
            clone3::spawn(
                spawner.stack.wrapping_byte_add(page),
                STACK_SIZE,
                cgroup.as_raw_fd(),
                arg,
                pidfd,
            )
        },
        // SAFETY: `child_main` only makes system calls on `args` and the
        // memory it points to, all of which the caller keeps alive until
        // clone returns; CLONE_VFORK suspends this thread until the child
        // has exec'd or exited, so the child is the only user of the stack,
        // which the spawner's lock reserves to this thread. Every signal is
        // blocked, so no handler of lrpm runs on the child's side.
        None => {
            // The stack grows down: the child starts at the top of the
            // mapping.
            let top = spawner.stack.wrapping_byte_add(STACK_SIZE + page);
            let pid = unsafe {
                libc::clone(
                    child_main,
                    top,
                    libc::CLONE_VM
                        | libc::CLONE_VFORK
                        | libc::CLONE_FILES
                        | libc::CLONE_PIDFD
                        | libc::SIGCHLD,
                    arg,
                    ptr::from_mut(pidfd),
                    ptr::null_mut::<c_void>(),
                    ptr::null_mut::<c_int>(),
                )
            };
            if pid < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(pid)
            }
        }
    };
    spawner.restore(procs.is_some() || plan.handed.is_some() || plan.memory_procs.is_some());
    drop(blocked);
    // `procs` is closed here, after the child used it.
    drop(procs);
    pid
}

/// Opens the `cgroup.procs` of the cgroup directory `dir` for writing.
fn open_procs(dir: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, openat};
    Ok(openat(
        dir,
        "cgroup.procs",
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}
