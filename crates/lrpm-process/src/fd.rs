//! Descriptor hygiene: what lrpm inherited, the descriptor limit, taking a
//! descriptor handed over by a parent, and registering a descriptor with
//! the async runtime.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Marks every descriptor above stderr close-on-exec, so that nothing
/// lrpm's parent leaked reaches a worker.
pub fn cloexec_inherited() {
    // SAFETY: CLOSE_RANGE_CLOEXEC closes nothing: it only sets the
    // close-on-exec flag of every open descriptor in the range, so no
    // OwnedFd of this process is invalidated.
    let res = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if res != 0 {
        // A kernel before 5.11: walk the open descriptors.
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        let fds: Vec<RawFd> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        for fd in fds {
            // The directory stream's own descriptor is closed by now; its
            // number fails with EBADF, or names a descriptor opened since,
            // which is close-on-exec already.
            let _ = rustix::io::fcntl_setfd(
                // SAFETY: borrowed for this one call only; see above.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                rustix::io::FdFlags::CLOEXEC,
            );
        }
    }
}

/// Raises the soft descriptor limit to the hard limit; returns the limit it
/// started with (for children) and the new soft limit.
pub fn raise_nofile_limit() -> (Rlimit, Option<u64>) {
    let original = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: original.maximum,
        maximum: original.maximum,
    };
    let new = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => raised.current,
        Err(_) => original.current,
    };
    (original, new)
}

/// Takes ownership of descriptor `fd`, which this process's parent handed
/// to it (an output hub's socket), and makes it close-on-exec. Fails if
/// `fd` is a standard stream or not open.
pub fn take_handed(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::other("not a handed descriptor"));
    }
    // SAFETY: the number is only borrowed to check that it is open.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed)?;
    // SAFETY: the descriptor is open (checked above), was handed to this
    // process for it to own, and nothing else in it refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// Registers `fd` with the current tokio runtime for `interest`; gives the
/// descriptor back with the error if it cannot be.
#[cfg(feature = "tokio")]
#[allow(clippy::result_large_err)]
pub fn register(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> Result<tokio::io::unix::AsyncFd<OwnedFd>, (OwnedFd, io::Error)> {
    // SAFETY: the descriptor is owned by the AsyncFd and is closed only
    // when the AsyncFd is dropped, which deregisters it first.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| e.into_parts())
}

/// The uid and, when it is visible from here, the pid of the process at the
/// other end of a connected Unix socket (SO_PEERCRED).
///
/// This uses nix rather than rustix's `socket_peercred`, whose pid is a
/// non-zero type: the kernel reports pid 0 for a peer in a pid namespace
/// this process cannot see.
pub fn peer_credentials(socket: &impl std::os::fd::AsFd) -> io::Result<(u32, Option<u32>)> {
    let cred = nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok((
        cred.uid(),
        u32::try_from(cred.pid()).ok().filter(|p| *p > 0),
    ))
}
