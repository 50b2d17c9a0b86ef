//! The child's side of a spawn: what runs between `clone` and `execve`, on
//! lrpm's memory and with lrpm's thread-local storage (see the parent
//! module's theory of operation). Every step makes raw system calls on data
//! the parent prepared ([`ChildArgs`]): no allocation, no lock, no unwinding.
//! A failing step is reported in [`Report`] and the child exits with 127.

use std::ffi::{c_int, c_void};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// How many slots a spawner reserves: stdin, stdout, stderr, cgroup.procs,
/// a descriptor handed to the child, and the `cgroup.procs` of its cgroup v1
/// memory cgroup.
pub(super) const SLOTS: usize = 6;
pub(super) const STDIN: usize = 0;
pub(super) const STDOUT: usize = 1;
pub(super) const STDERR: usize = 2;
pub(super) const CGROUP: usize = 3;
pub(super) const HANDED: usize = 4;
pub(super) const MEMORY: usize = 5;

/// The number the handed descriptor gets in the child.
pub const HANDED_FD: c_int = 3;

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
    /// Writing the workers' `oom_score_adj`.
    OomScoreAdj,
    /// Joining the run's cgroup v1 memory cgroup (its `memoryMax`).
    MemoryCgroup,
}

impl Step {
    pub(super) fn from_raw(raw: u32) -> Option<Self> {
        const ALL: [Step; 14] = [
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
            Step::OomScoreAdj,
            Step::MemoryCgroup,
        ];
        ALL.into_iter().find(|s| *s as u32 == raw)
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

/// What the child reports back: written by the child only when a step
/// fails, read by the parent once the clone has returned.
#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) step: AtomicU32,
    pub(super) errno: AtomicI32,
}

/// The arguments of [`child_main`], on the parent's stack for the time of
/// the clone; only plain data and raw pointers into memory the parent keeps
/// alive until the clone returns.
pub(super) struct ChildArgs {
    pub(super) report: *const Report,
    pub(super) slots: [RawFd; SLOTS],
    pub(super) limit: RawFd,
    pub(super) has_cgroup: bool,
    pub(super) has_memory_cgroup: bool,
    pub(super) force_unshare: bool,
    pub(super) has_handed: bool,
    pub(super) candidates: *const *const libc::c_char,
    pub(super) argv: *const *const libc::c_char,
    pub(super) envp: *const *const libc::c_char,
    pub(super) cwd: *const libc::c_char,
    pub(super) identity: Option<*const Switch>,
    pub(super) parent: rustix::process::Pid,
    /// Whether the parent-death SIGKILL is armed (not for the guardian).
    pub(super) death_signal: bool,
    pub(super) nofile: libc::rlimit,
    /// The workers' `oom_score_adj`, as text (null: keep lrpm's).
    pub(super) oom: *const u8,
    pub(super) oom_len: usize,
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

/// A failed step and its errno.
type Failed = (Step, c_int);

/// The errno of the last failed libc call, in the parent thread's
/// thread-local storage, which the child uses while the parent is
/// suspended.
fn errno() -> c_int {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// `Ok` if a libc call returned `ret` successfully (not negative), else
/// `step` with errno.
fn check(step: Step, ret: impl Into<i64>) -> Result<(), Failed> {
    if ret.into() < 0 {
        Err((step, errno()))
    } else {
        Ok(())
    }
}

/// The child: from clone to execve, one step after the other.
pub(super) extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive until clone returns
    // (CLONE_VFORK suspends the parent until this process execs or exits).
    let a = unsafe { &*arg.cast::<ChildArgs>() };
    let run = || -> Result<(), Failed> {
        private_descriptor_table(a)?;
        join_cgroup(a)?;
        join_memory_cgroup(a)?;
        // SAFETY: setpgid only changes this process's group.
        check(Step::ProcessGroup, unsafe { libc::setpgid(0, 0) })?;
        stdio(a)?;
        oom_score_adj(a)?;
        switch_identity(a)?;
        if a.death_signal {
            death_signal(a)?;
        }
        // Best effort: a child that cannot lower its own limit still runs.
        // SAFETY: setrlimit reads the rlimit the parent prepared.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &a.nofile) };
        if !a.cwd.is_null() {
            // SAFETY: `cwd` is a C string the parent keeps alive.
            check(Step::Chdir, unsafe { libc::chdir(a.cwd) })?;
        }
        reset_signals()?;
        Err(exec(a))
    };
    let Err((step, errno)) = run() else {
        // `exec` only returns with an error.
        return 127;
    };
    // SAFETY: the parent keeps the report alive until clone returns, which
    // is after this process has exited.
    let report = unsafe { &*a.report };
    report.errno.store(errno, Ordering::Release);
    report.step.store(step as u32, Ordering::Release);
    // SAFETY: _exit makes the exit system call only (no atexit handler),
    // which a vfork child must use.
    unsafe { libc::_exit(127) }
}

/// A private descriptor table with only the descriptors below the limit:
/// the slots, and what lrpm inherited (close-on-exec).
fn private_descriptor_table(a: &ChildArgs) -> Result<(), Failed> {
    // SAFETY: close_range with CLOSE_RANGE_UNSHARE closes descriptors of
    // the child's new private table only, never lrpm's.
    let unshared = !a.force_unshare
        && unsafe {
            libc::syscall(
                libc::SYS_close_range,
                a.limit as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            )
        } == 0;
    if unshared {
        return Ok(());
    }
    // SAFETY: unshare(CLONE_FILES) gives the child a copy of the table.
    check(Step::Unshare, unsafe { libc::unshare(libc::CLONE_FILES) })
}

/// Writes the child into its run's cgroup through the `cgroup.procs` slot,
/// where it was not cloned into it.
fn join_cgroup(a: &ChildArgs) -> Result<(), Failed> {
    join_through(a, a.has_cgroup, CGROUP, Step::Cgroup)
}

/// Writes the child into its cgroup v1 memory cgroup through the
/// `cgroup.procs` slot [`MEMORY`], before it can allocate anything of its
/// program's.
fn join_memory_cgroup(a: &ChildArgs) -> Result<(), Failed> {
    join_through(a, a.has_memory_cgroup, MEMORY, Step::MemoryCgroup)
}

/// Writes `0` (this process) to the `cgroup.procs` on slot `slot`, when
/// `wanted`; a failure is step `step`'s.
fn join_through(a: &ChildArgs, wanted: bool, slot: usize, step: Step) -> Result<(), Failed> {
    if !wanted {
        return Ok(());
    }
    // SAFETY: a one-byte write from a static buffer to a slot descriptor.
    let written = unsafe { libc::write(a.slots[slot], b"0".as_ptr().cast(), 1) };
    if written != 1 {
        return Err((step, errno()));
    }
    Ok(())
}

/// Stdio from the slots (and the handed descriptor on [`HANDED_FD`]), and
/// every other descriptor closed.
fn stdio(a: &ChildArgs) -> Result<(), Failed> {
    for (slot, target) in [(STDIN, 0), (STDOUT, 1), (STDERR, 2)] {
        // SAFETY: dup2 between descriptors of the child's private table.
        check(Step::Stdio, unsafe { libc::dup2(a.slots[slot], target) })?;
    }
    let mut first_closed = 3;
    if a.has_handed {
        // SAFETY: as above; the slots are not needed after stdio, so fd 3
        // may be one of them. F_SETFD clears close-on-exec, which dup2
        // onto the same number would leave set.
        unsafe {
            check(Step::Stdio, libc::dup2(a.slots[HANDED], HANDED_FD))?;
            check(Step::Stdio, libc::fcntl(HANDED_FD, libc::F_SETFD, 0))?;
        }
        first_closed = HANDED_FD + 1;
    }
    // Nothing else reaches the program. Without close_range (the
    // fallback's kernels) every other descriptor is close-on-exec.
    // SAFETY: closes descriptors of the child's private table only.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first_closed as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    Ok(())
}

/// Puts the child's `oom_score_adj` to the workers' value, which differs
/// from lrpm's own (inherited): before the identity switch, so that a
/// privileged lrpm also resets the floor the worker may lower itself to.
fn oom_score_adj(a: &ChildArgs) -> Result<(), Failed> {
    if a.oom.is_null() {
        return Ok(());
    }
    const PATH: &[u8] = b"/proc/self/oom_score_adj\0";
    // SAFETY: `PATH` is a static C string; the descriptor is the child's
    // own (its table is private by now) and closed below.
    let fd = unsafe { libc::open(PATH.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err((Step::OomScoreAdj, errno()));
    }
    // SAFETY: `oom` points to `oom_len` bytes the parent keeps alive until
    // clone returns.
    let written = unsafe { libc::write(fd, a.oom.cast(), a.oom_len) };
    let failed = (written < 0).then(errno);
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    match failed {
        Some(errno) => Err((Step::OomScoreAdj, errno)),
        None => Ok(()),
    }
}

/// Switches to the job's user and groups with raw system calls (glibc's
/// wrappers would broadcast the change to lrpm's threads, which share this
/// memory but are not this process).
fn switch_identity(a: &ChildArgs) -> Result<(), Failed> {
    let Some(id) = a.identity else {
        return Ok(());
    };
    // SAFETY: the parent keeps the Switch alive until clone returns.
    let id = unsafe { &*id };
    rustix::thread::set_thread_groups(&id.groups).map_err(|e| (Step::Groups, e.raw_os_error()))?;
    if let Some(gid) = id.gid {
        rustix::thread::set_thread_res_gid(gid, gid, gid)
            .map_err(|e| (Step::Gid, e.raw_os_error()))?;
    }
    if let Some(uid) = id.uid {
        rustix::thread::set_thread_res_uid(uid, uid, uid)
            .map_err(|e| (Step::Uid, e.raw_os_error()))?;
    }
    Ok(())
}

/// Arms the parent-death SIGKILL (after the identity switch, which clears
/// it) and checks that lrpm did not die before.
fn death_signal(a: &ChildArgs) -> Result<(), Failed> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's attribute.
    let armed = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    check(Step::DeathSignal, armed)?;
    // SAFETY: getppid has no precondition.
    if unsafe { libc::getppid() } != a.parent.as_raw_nonzero().get() {
        return Err((Step::ParentGone, libc::ESRCH));
    }
    Ok(())
}

/// Every signal is blocked (the parent's mask): puts each handled signal,
/// and SIGPIPE, back to its default, then clears the mask.
fn reset_signals() -> Result<(), Failed> {
    let dfl = KernelSigaction {
        handler: 0,
        rest: [0; 4],
    };
    for sig in 1..=NSIG {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = dfl;
        // SAFETY: rt_sigaction reads nothing and writes `old`, a kernel
        // sigaction on this stack.
        let read = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                ptr::null::<KernelSigaction>(),
                &mut old as *mut KernelSigaction,
                8usize,
            )
        };
        let handled = read == 0 && old.handler != libc::SIG_DFL && old.handler != libc::SIG_IGN;
        if handled || sig == libc::SIGPIPE {
            // SAFETY: rt_sigaction reads `dfl` and writes nothing; no
            // handler runs, every signal is blocked.
            let set = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    ptr::null_mut::<KernelSigaction>(),
                    8usize,
                )
            };
            check(Step::Signals, set)?;
        }
    }
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask reads `empty`, a kernel sigset on this stack.
    let unmasked = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            ptr::null_mut::<u64>(),
            8usize,
        )
    };
    check(Step::Signals, unmasked)
}

/// `execve` of each candidate in turn, with execvpe's rules: go on after a
/// candidate that is missing or not accessible; EACCES wins over ENOENT in
/// the end. Returns only with the error.
fn exec(a: &ChildArgs) -> Failed {
    let mut seen_eacces = false;
    let mut last = libc::ENOENT;
    let mut candidate = a.candidates;
    // SAFETY: `candidates`, `argv` and `envp` are null-terminated arrays of
    // C strings that the parent keeps alive until clone returns.
    unsafe {
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
    }
    if seen_eacces && matches!(last, libc::ENOENT | libc::ENOTDIR) {
        last = libc::EACCES;
    }
    (Step::Exec, last)
}
