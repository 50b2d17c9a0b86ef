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
//!   stdio from the slots and every other descriptor closed, the identity
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

use std::ffi::{CStr, CString, c_int, c_void};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The child's stack. Its frames are a few small functions making system
/// calls; 256 KiB leaves a wide margin, with a guard page below.
const STACK_SIZE: usize = 256 * 1024;

/// How many slots `Spawner` reserves: stdin, stdout, stderr, cgroup.procs.
const SLOTS: usize = 4;
const STDIN: usize = 0;
const STDOUT: usize = 1;
const STDERR: usize = 2;
const CGROUP: usize = 3;

/// Whether children must take the `unshare(CLONE_FILES)` fallback, as on a
/// kernel without `CLOSE_RANGE_UNSHARE` (for the tests of that path).
#[cfg(test)]
pub(crate) static FORCE_UNSHARE_FALLBACK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The step of the child that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Getting a private descriptor table.
    Unshare = 1,
    /// Joining the run's cgroup.
    Cgroup,
    /// `setpgid(0, 0)`.
    ProcessGroup,
    /// Putting the slots on stdin, stdout and stderr.
    Stdio,
    /// `setgroups`.
    Groups,
    /// `setresgid`.
    Gid,
    /// `setresuid`.
    Uid,
    /// Arming the parent-death signal.
    DeathSignal,
    /// lrpm died before the parent-death signal was armed.
    ParentGone,
    /// `chdir` to the job's working directory.
    Chdir,
    /// Resetting signal dispositions or the mask.
    Signals,
    /// `execve` of every candidate.
    Exec,
}

impl Step {
    fn from_raw(raw: u32) -> Option<Self> {
        const ALL: [Step; 12] = [
            Step::Unshare,
            Step::Cgroup,
            Step::ProcessGroup,
            Step::Stdio,
            Step::Groups,
            Step::Gid,
            Step::Uid,
            Step::DeathSignal,
            Step::ParentGone,
            Step::Chdir,
            Step::Signals,
            Step::Exec,
        ];
        ALL.into_iter().find(|s| *s as u32 == raw)
    }
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

/// The user and groups a child switches to.
#[derive(Debug, Clone, Default)]
pub struct Switch {
    /// Supplementary groups (set whenever the identity changes).
    pub groups: Vec<rustix::process::Gid>,
    /// Real, effective and saved group id.
    pub gid: Option<rustix::process::Gid>,
    /// Real, effective and saved user id.
    pub uid: Option<rustix::process::Uid>,
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
    /// The write end of the child's stdout.
    pub stdout: BorrowedFd<'a>,
    /// The write end of the child's stderr.
    pub stderr: BorrowedFd<'a>,
}

/// A child that is running its program.
#[derive(Debug)]
pub struct Child {
    /// Its pid, which is also its process-group id.
    pub pid: rustix::process::Pid,
    /// Its pidfd (blocking, close-on-exec).
    pub pidfd: OwnedFd,
}

/// What the child reports back: written by the child only when a step
/// fails, read by the parent once the clone has returned.
#[derive(Debug, Default)]
struct Report {
    step: AtomicU32,
    errno: AtomicI32,
}

/// The arguments of [`child_main`], on the parent's stack for the time of
/// the clone; only plain data and raw pointers into memory the parent keeps
/// alive until the clone returns.
struct ChildArgs {
    report: *const Report,
    slots: [RawFd; SLOTS],
    limit: RawFd,
    has_cgroup: bool,
    force_unshare: bool,
    candidates: *const *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    identity: Option<*const Switch>,
    parent: rustix::process::Pid,
    nofile: libc::rlimit,
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

    /// Puts the slots other than stdin back on `/dev/null`.
    fn restore(&self) {
        for i in [STDOUT, STDERR, CGROUP] {
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
        ],
        limit: spawner.limit,
        // Set by `clone_once`, which knows how the child gets its cgroup.
        has_cgroup: false,
        #[cfg(test)]
        force_unshare: FORCE_UNSHARE_FALLBACK.load(Ordering::Relaxed),
        #[cfg(not(test))]
        force_unshare: false,
        candidates: candidates.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: plan.cwd.map_or(ptr::null(), CStr::as_ptr),
        identity: plan.identity.map(ptr::from_ref),
        parent: plan.parent,
        nofile: libc::rlimit {
            rlim_cur: plan.nofile.current.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: plan.nofile.maximum.unwrap_or(libc::RLIM_INFINITY),
        },
    };
    let mut pidfd: c_int = -1;
    // Cloned straight into its cgroup where clone3 can; otherwise the child
    // joins it through its cgroup.procs, which costs the kernel an RCU grace
    // period (the cgroup threadgroup lock taken for writing) on every spawn.
    let mut into_cgroup = plan.cgroup.filter(|_| clone3::usable());
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
        SignalsBlocked::new()
    })();
    let blocked = match placed {
        Ok(blocked) => blocked,
        Err(e) => {
            spawner.restore();
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
    spawner.restore();
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

/// The errno of the last failed libc call, in the parent thread's
/// thread-local storage, which the child uses while the parent is
/// suspended.
fn errno() -> c_int {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Records the failure of `step` and exits.
///
/// # Safety
///
/// Only in the child, with `report` valid.
unsafe fn fail(report: *const Report, step: Step, errno: c_int) -> ! {
    // SAFETY: the parent keeps the report alive until clone returns, which
    // is after this process has exited.
    let report = unsafe { &*report };
    report.errno.store(errno, Ordering::Release);
    report.step.store(step as u32, Ordering::Release);
    // SAFETY: _exit makes the exit system call only (no atexit handler).
    unsafe { libc::_exit(127) }
}

/// The signals' highest number on Linux.
const NSIG: c_int = 64;

/// The kernel's `struct sigaction`: the handler comes first on every
/// architecture; all zeros is `SIG_DFL` with no flags and an empty mask.
#[repr(C)]
#[derive(Clone, Copy)]
struct KernelSigaction {
    handler: usize,
    rest: [u64; 4],
}

/// The child: from clone to execve. Raw system calls only (see the module
/// documentation).
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive until clone returns.
    let a = unsafe { &*arg.cast::<ChildArgs>() };
    // SAFETY: each call below is a system call on descriptors, strings and
    // arrays the parent prepared; none allocates, locks or unwinds; `fail`
    // exits the child.
    unsafe {
        // A private descriptor table with only the descriptors below the
        // limit: the slots, and what lrpm inherited (close-on-exec).
        let unshared = !a.force_unshare
            && libc::syscall(
                libc::SYS_close_range,
                a.limit as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            ) == 0;
        if !unshared && libc::unshare(libc::CLONE_FILES) != 0 {
            fail(a.report, Step::Unshare, errno());
        }
        if a.has_cgroup && libc::write(a.slots[CGROUP], b"0".as_ptr().cast(), 1) != 1 {
            fail(a.report, Step::Cgroup, errno());
        }
        if libc::setpgid(0, 0) != 0 {
            fail(a.report, Step::ProcessGroup, errno());
        }
        for (slot, target) in [(STDIN, 0), (STDOUT, 1), (STDERR, 2)] {
            if libc::dup2(a.slots[slot], target) < 0 {
                fail(a.report, Step::Stdio, errno());
            }
        }
        // Nothing but stdio reaches the program. Without close_range (the
        // fallback's kernels) every other descriptor is close-on-exec.
        let _ = libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
        if let Some(id) = a.identity {
            let id = &*id;
            if let Err(e) = rustix::thread::set_thread_groups(&id.groups) {
                fail(a.report, Step::Groups, e.raw_os_error());
            }
            if let Some(gid) = id.gid {
                if let Err(e) = rustix::thread::set_thread_res_gid(gid, gid, gid) {
                    fail(a.report, Step::Gid, e.raw_os_error());
                }
            }
            if let Some(uid) = id.uid {
                if let Err(e) = rustix::thread::set_thread_res_uid(uid, uid, uid) {
                    fail(a.report, Step::Uid, e.raw_os_error());
                }
            }
        }
        // After the identity switch, which clears it.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            fail(a.report, Step::DeathSignal, errno());
        }
        // lrpm may have died between the clone and the prctl.
        if libc::getppid() != a.parent.as_raw_nonzero().get() {
            fail(a.report, Step::ParentGone, libc::ESRCH);
        }
        // Best effort: a child that cannot lower its own limit still runs.
        let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &a.nofile);
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            fail(a.report, Step::Chdir, errno());
        }
        // Every signal is blocked (the parent's mask): put each handled
        // signal, and SIGPIPE, back to its default before unblocking.
        let dfl = KernelSigaction {
            handler: 0,
            rest: [0; 4],
        };
        for sig in 1..=NSIG {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = dfl;
            let read = libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                ptr::null::<KernelSigaction>(),
                &mut old as *mut KernelSigaction,
                8usize,
            );
            let handled = read == 0 && old.handler != libc::SIG_DFL && old.handler != libc::SIG_IGN;
            if (handled || sig == libc::SIGPIPE)
                && libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    ptr::null_mut::<KernelSigaction>(),
                    8usize,
                ) != 0
            {
                fail(a.report, Step::Signals, errno());
            }
        }
        let empty: u64 = 0;
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            ptr::null_mut::<u64>(),
            8usize,
        ) != 0
        {
            fail(a.report, Step::Signals, errno());
        }
        // execvpe's rules: go on after a candidate that is missing or not
        // accessible; EACCES wins over ENOENT in the end.
        let mut seen_eacces = false;
        let mut last = libc::ENOENT;
        let mut candidate = a.candidates;
        while !(*candidate).is_null() {
            libc::execve(*candidate, a.argv, a.envp);
            last = errno();
            match last {
                libc::EACCES => seen_eacces = true,
                libc::ENOENT | libc::ENOTDIR => {}
                _ => break,
            }
            candidate = candidate.add(1);
        }
        if seen_eacces && matches!(last, libc::ENOENT | libc::ENOTDIR) {
            last = libc::EACCES;
        }
        fail(a.report, Step::Exec, last)
    }
}

/// `clone3` with `CLONE_INTO_CGROUP`: the child starts in its run's cgroup,
/// so it never migrates into it. A migration (a write to `cgroup.procs`)
/// takes the kernel's cgroup threadgroup lock for writing, an RCU grace
/// period of about a millisecond on every spawn; a clone into the cgroup
/// takes it for reading only.
///
/// glibc has no `clone3` wrapper that runs a function on a new stack, so
/// the system call is made here, in a few lines of assembly: after the
/// call the child is on the reserved stack, with the parent's registers,
/// and calls [`child_main`]. x86_64 only; elsewhere [`usable`] is false and
/// lrpm uses glibc's `clone` and the `cgroup.procs` write.
pub(crate) mod clone3 {
    use std::ffi::{c_int, c_void};
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Whether to try `clone3` at all: cleared for good once the kernel (or
    /// a seccomp filter) refuses it.
    static USABLE: AtomicBool = AtomicBool::new(cfg!(target_arch = "x86_64"));

    /// Whether children must join their cgroup through `cgroup.procs`, as
    /// where `clone3` is refused (for the tests of that path).
    #[cfg(test)]
    pub(crate) static FORCE_PROCS_FALLBACK: AtomicBool = AtomicBool::new(false);

    /// Whether `clone3` with `CLONE_INTO_CGROUP` may work here.
    pub fn usable() -> bool {
        #[cfg(test)]
        if FORCE_PROCS_FALLBACK.load(Ordering::Relaxed) {
            return false;
        }
        USABLE.load(Ordering::Relaxed)
    }

    /// Whether `error` says `clone3`, or one of its flags, is not available
    /// (rather than that this one clone failed).
    pub fn unsupported(error: &std::io::Error) -> bool {
        matches!(
            error.raw_os_error(),
            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM)
        )
    }

    /// Stops trying `clone3`, and says so once.
    pub fn disable(error: &std::io::Error) {
        if USABLE.swap(false, Ordering::Relaxed) {
            tracing::info!(
                "clone3 into a cgroup is not available ({error}): workers join their cgroup \
                 after the clone, which is slower"
            );
        }
    }

    /// The kernel's `struct clone_args` (version 2, with `cgroup`).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }

    /// `CLONE_INTO_CGROUP` (Linux 5.7).
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

    /// Clones a child that runs [`super::child_main`]`(arg)` on the stack
    /// `stack..stack + size`, in the cgroup whose directory is `cgroup`,
    /// with the flags of glibc's path plus `CLONE_INTO_CGROUP`; stores its
    /// pidfd in `pidfd` and returns its pid.
    ///
    /// # Safety
    ///
    /// As for `libc::clone` in [`super::clone_once`]: `stack` is a mapping
    /// of `size` bytes (16-byte aligned at its top) that only the child
    /// uses, `arg` points to `ChildArgs` that outlive the call, and every
    /// signal is blocked in the calling thread.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn spawn(
        stack: *mut c_void,
        size: usize,
        cgroup: RawFd,
        arg: *mut c_void,
        pidfd: &mut c_int,
    ) -> std::io::Result<c_int> {
        let args = CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::CLONE_PIDFD)
                as u64
                | CLONE_INTO_CGROUP,
            pidfd: std::ptr::from_mut(pidfd) as u64,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack as u64,
            stack_size: size as u64,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: cgroup as u64,
        };
        let ret: i64;
        // SAFETY: the parent comes back from the system call with its
        // registers intact but rax, rcx and r11 (declared), and touches no
        // memory of its own in between. The child comes back on the new
        // stack (the kernel sets its stack pointer to the top of it), sees
        // rax = 0, calls child_main with the argument kept in r13 (the
        // kernel preserves r12 and r13), and exits with its return value if
        // it ever returns; it never gets back to Rust code of this frame.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "mov rdi, r13",
                "call r12",
                "mov edi, eax",
                "mov eax, {exit}",
                "syscall",
                "ud2",
                "2:",
                exit = const libc::SYS_exit,
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") &raw const args,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") super::child_main as *const () as usize,
                in("r13") arg,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret < 0 {
            Err(std::io::Error::from_raw_os_error(-ret as i32))
        } else {
            Ok(ret as c_int)
        }
    }

    /// Never called: [`usable`] is false on this architecture.
    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn spawn(
        _stack: *mut c_void,
        _size: usize,
        _cgroup: RawFd,
        _arg: *mut c_void,
        _pidfd: &mut c_int,
    ) -> std::io::Result<c_int> {
        Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
    }
}
