//! `clone3` with `CLONE_INTO_CGROUP`: the child starts in its run's cgroup,
//! so it never migrates into it. A migration (a write to `cgroup.procs`)
//! takes the kernel's cgroup threadgroup lock for writing, an RCU grace
//! period of about a millisecond on every spawn; a clone into the cgroup
//! takes it for reading only.
//!
//! glibc has no `clone3` wrapper that runs a function on a new stack, so
//! the system call is made here, in a few lines of assembly: after the
//! call the child is on the reserved stack, with the parent's registers,
//! and calls `child_main`. x86_64 only; elsewhere [`usable`] is false and
//! lrpm uses glibc's `clone` and the `cgroup.procs` write.
use std::ffi::{c_int, c_void};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether to try `clone3` at all: cleared for good once the kernel (or
/// a seccomp filter) refuses it.
static USABLE: AtomicBool = AtomicBool::new(cfg!(target_arch = "x86_64"));

/// Whether `clone3` with `CLONE_INTO_CGROUP` may work here.
pub fn usable() -> bool {
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

/// Clones a child that runs [`super::child::child_main`]`(arg)` on the stack
/// `stack..stack + size`, in the cgroup whose directory is `cgroup`,
/// with the flags of glibc's path plus `CLONE_INTO_CGROUP`; stores its
/// pidfd in `pidfd` and returns its pid.
///
/// # Safety
///
/// As for `libc::clone` in the parent module's `clone_once`: `stack` is a mapping
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
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::CLONE_PIDFD) as u64
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
            in("r12") super::child::child_main as *const () as usize,
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
