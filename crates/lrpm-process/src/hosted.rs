//! Workers that a worker host forks (docs/hosts.md): the per-child socket,
//! the child's `hello` with the kernel's word on who sent it, and lrpm's
//! adoption of the child.
//!
//! # Theory of operation
//!
//! lrpm is a subreaper ([`become_subreaper`]) while it runs hosts. A host
//! forks an intermediate process, which forks the worker and exits at
//! once: the worker is re-parented to lrpm, the nearest subreaper, and is
//! from then on lrpm's own child, reaped through its pidfd like any other.
//! The host reaps the intermediate, then says `forked`.
//!
//! Before any user code runs the worker sends `hello` on a socket of its
//! own ([`child_socketpair`]), and waits for lrpm's `go`. lrpm's end has
//! `SO_PASSCRED` and `SO_PASSPIDFD`, so the kernel attaches the sender's pid
//! and a pidfd for it to the datagram ([`recv_hello`]): lrpm never takes a
//! pid from what a host or a child *says*. The pidfd names the sender
//! itself, never a process that reused its pid, so adopting it is race-free
//! even if it died in between; on a kernel without `SO_PASSPIDFD` (before
//! 6.5) the pid from the credentials is opened with `pidfd_open`, which is
//! safe as long as nobody reaped the sender: it is blocked waiting for
//! `go`, and only lrpm may reap it.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};

use crate::children;

/// `SO_PASSPIDFD` (Linux 6.5), as numbered on the generic architectures.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "x86"))]
const SO_PASSPIDFD: libc::c_int = 76;
/// `SCM_PIDFD`: the control message that carries the sender's pidfd.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "x86"))]
const SCM_PIDFD: libc::c_int = 0x04;

/// The largest datagram a child sends on its socket (its `hello`).
pub const MAX_HELLO: usize = 512;

/// Makes lrpm a subreaper, so that a host's workers, whose parent exits
/// right after forking them, are re-parented to lrpm.
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// A `SOCK_SEQPACKET` pair, close-on-exec; lrpm's end (the first) is
/// non-blocking, the other end blocks, as a host or worker expects.
fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::ioctl_fionbio(&ours, true)?;
    Ok((ours, theirs))
}

/// A new host's socket pair: lrpm's end (non-blocking) and the host's
/// (blocking), both close-on-exec; the host's is handed on as its
/// descriptor 3.
pub fn host_socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    seqpacket_pair()
}

/// A new child's socket pair: lrpm's end (non-blocking, close-on-exec, with
/// the sender's credentials and pidfd attached to every datagram it
/// receives) and the end the host hands to the child.
pub fn child_socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = seqpacket_pair()?;
    rustix::net::sockopt::set_socket_passcred(&ours, true)?;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "x86"))]
    {
        let on: libc::c_int = 1;
        // SAFETY: `ours` is an open socket; the option's value is a c_int
        // that lives across the call, with its size. A kernel without the
        // option refuses it (ENOPROTOOPT), and recv_hello falls back.
        unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PASSPIDFD,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok((ours, theirs))
}

/// A child's first datagram, with who sent it as the kernel says.
#[derive(Debug)]
pub struct Hello {
    /// The sender's pid (from `SCM_CREDENTIALS`).
    pub pid: Pid,
    /// A pidfd for the sender (`SCM_PIDFD`, or `pidfd_open` on older
    /// kernels).
    pub pidfd: OwnedFd,
    /// What it said.
    pub payload: Vec<u8>,
}

/// Takes the child's `hello` from lrpm's end of its socket, without
/// waiting: `Ok(None)` if nothing is there yet, an error if the peer hung
/// up or the datagram came without credentials.
pub fn recv_hello(sock: BorrowedFd<'_>) -> io::Result<Option<Hello>> {
    let mut payload = vec![0u8; MAX_HELLO];
    // Room for a ucred and an int, each with its header, aligned.
    let mut control = [MaybeUninit::<u64>::uninit(); 16];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: every pointer in `msg` points to a live buffer of the given
    // length for the whole call.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &raw mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    let mut pid: Option<libc::pid_t> = None;
    let mut pidfd: Option<OwnedFd> = None;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control`; the
    // CMSG_* macros walk them within that length, and each message's data
    // is read with the size its type has.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                    let cred: libc::ucred = std::ptr::read_unaligned(data.cast());
                    pid = Some(cred.pid);
                }
                #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "x86"))]
                (libc::SOL_SOCKET, SCM_PIDFD) => {
                    let fd: libc::c_int = std::ptr::read_unaligned(data.cast());
                    if fd >= 0 {
                        pidfd = Some(OwnedFd::from_raw_fd(fd));
                    }
                }
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    // Nothing is expected: close whatever was sent.
                    let len = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / size_of::<libc::c_int>() {
                        let fd: libc::c_int =
                            std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                        drop(OwnedFd::from_raw_fd(fd));
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if n == 0 && pid.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the child hung up before its hello",
        ));
    }
    let pid = pid
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other("a hello without the sender's credentials"))?;
    let pidfd = match pidfd {
        Some(fd) => fd,
        None => rustix::process::pidfd_open(pid, PidfdFlags::empty())?,
    };
    payload.truncate(n as usize);
    Ok(Some(Hello {
        pid,
        pidfd,
        payload,
    }))
}

/// Takes the sender of a hello as lrpm's own child: checks that it is one
/// (re-parented to lrpm), and records it so that the orphan reaper leaves
/// its exit status to its pidfd. Fails if it is not lrpm's child: its
/// intermediate parent has not exited, or lrpm is no subreaper.
pub fn adopt(pid: Pid, pidfd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::process::waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
    )?;
    children::register(pid);
    Ok(())
}

/// Moves process `pid` into the cgroup whose directory is `dir`.
pub fn join_cgroup(dir: &Path, pid: Pid) -> io::Result<()> {
    std::fs::write(
        dir.join("cgroup.procs"),
        pid.as_raw_nonzero().get().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_hello_carries_the_senders_pid_and_pidfd() {
        let (ours, theirs) = child_socketpair().expect("a socket pair");
        assert!(recv_hello(ours.as_fd()).expect("nothing yet").is_none());
        rustix::net::send(
            &theirs,
            b"{\"type\":\"hello\"}",
            rustix::net::SendFlags::empty(),
        )
        .expect("sent");
        let hello = recv_hello(ours.as_fd())
            .expect("a hello")
            .expect("one is there");
        assert_eq!(hello.pid, rustix::process::getpid());
        assert_eq!(hello.payload, b"{\"type\":\"hello\"}");
        // The pidfd names this very process.
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", hello.pidfd.as_raw_fd()))
                .expect("fdinfo");
        assert!(
            fdinfo.contains(&format!("Pid:\t{}", std::process::id())),
            "{fdinfo}"
        );
        drop(theirs);
        assert!(recv_hello(ours.as_fd()).is_err(), "a hang-up is an error");
    }
}
