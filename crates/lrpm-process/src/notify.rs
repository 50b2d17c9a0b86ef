//! The workers' notification socket: a datagram socket of lrpm's, bound to
//! an abstract name, that receives sd_notify messages with the sender's
//! credentials.
//!
//! # Theory of operation
//!
//! [`NotifySocket::bind`] creates an `AF_UNIX` datagram socket with
//! `SO_PASSCRED`, so that the kernel attaches the *sender's* pid (as the
//! kernel knows it, not as the message says) to every datagram, and binds
//! it to an abstract name (no file to clean up, nothing left by a killed
//! lrpm). Workers find it through `NOTIFY_SOCKET=@NAME`.
//!
//! [`NotifySocket::recv_batch`] waits until datagrams are queued, then takes
//! at most a given number of them without waiting: the event loop's work
//! per wake-up is bounded whatever a flooding worker sends, and the rest
//! stay in the kernel's queue (bounded by the socket's receive buffer; a
//! sender blocks or gets `EAGAIN` when it is full). Each datagram is cut at
//! [`MAX_DATAGRAM`] bytes.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};

use lrpm_core::notify::MAX_DATAGRAM;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg,
    setsockopt, socket, sockopt,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// One datagram: the sender's pid and the bytes it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sender's pid, from the kernel's credentials; `None` when the
    /// sender is in a pid namespace this process cannot see.
    pub pid: Option<u32>,
    /// What it sent, at most [`MAX_DATAGRAM`] bytes.
    pub bytes: Vec<u8>,
}

/// lrpm's notification socket, registered with the tokio runtime.
#[derive(Debug)]
pub struct NotifySocket {
    fd: AsyncFd<OwnedFd>,
    /// The value of `NOTIFY_SOCKET` for workers: `@` and the abstract name.
    name: String,
    buf: Box<[u8]>,
}

impl NotifySocket {
    /// Binds a socket to the abstract name `name` (without its `@`). Call
    /// within the runtime.
    pub fn bind(name: &str) -> io::Result<NotifySocket> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&fd, sockopt::PassCred, &true)?;
        let addr = UnixAddr::new_abstract(name.as_bytes())?;
        bind(fd.as_raw_fd(), &addr)?;
        let fd = crate::fd::register(fd, Interest::READABLE).map_err(|(_, e)| e)?;
        Ok(NotifySocket {
            fd,
            name: format!("@{name}"),
            buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        })
    }

    /// The value of `NOTIFY_SOCKET` that names this socket.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for datagrams, then returns those queued, `max` at most,
    /// without waiting for more. Cancel-safe: nothing is taken from the
    /// socket before the future completes.
    pub async fn recv_batch(&mut self, max: usize) -> Vec<Datagram> {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                // The runtime is shutting down.
                return std::future::pending().await;
            };
            let (batch, drained) = take_queued(guard.get_inner().as_raw_fd(), &mut self.buf, max);
            if drained {
                guard.clear_ready();
            }
            if !batch.is_empty() {
                return batch;
            }
        }
    }

    /// Returns the datagrams queued now, `max` at most, without waiting.
    /// The event loop calls it before it acts on a deadline, so that a
    /// `WATCHDOG=1` already sent is counted before its deadline is judged,
    /// whatever order the loop's ready events came in.
    pub fn try_recv_batch(&mut self, max: usize) -> Vec<Datagram> {
        take_queued(self.fd.get_ref().as_raw_fd(), &mut self.buf, max).0
    }
}

/// Takes the datagrams queued on `fd`, `max` at most, and says whether the
/// queue was found empty (so that its readiness can be cleared).
fn take_queued(fd: i32, buf: &mut [u8], max: usize) -> (Vec<Datagram>, bool) {
    let mut batch = Vec::new();
    while batch.len() < max {
        match recv_one(fd, buf) {
            Ok(datagram) => batch.push(datagram),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (batch, true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("notification socket: {e}");
                break;
            }
        }
    }
    (batch, false)
}

/// Receives one datagram without waiting.
fn recv_one(fd: i32, buf: &mut [u8]) -> io::Result<Datagram> {
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
    let len = msg.bytes;
    let mut pid = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmCredentials(cred) = c {
                pid = u32::try_from(cred.pid()).ok().filter(|&p| p > 0);
            }
        }
    }
    let len = len.min(buf.len());
    Ok(Datagram {
        pid,
        bytes: buf[..len].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn send(name: &str, bytes: &[u8]) {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).expect("an address");
        let sock = UnixDatagram::unbound().expect("a socket");
        sock.send_to_addr(bytes, &addr).expect("sent");
    }

    #[test]
    fn datagrams_come_with_the_senders_pid_in_bounded_batches() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let name = format!("lrpm-notify-test-{}", std::process::id());
            let mut sock = NotifySocket::bind(&name).expect("bound");
            assert_eq!(sock.name(), format!("@{name}"));
            for i in 0..5 {
                send(&name, format!("STATUS={i}").as_bytes());
            }
            let first = sock.recv_batch(3).await;
            assert_eq!(first.len(), 3);
            assert_eq!(first[0].pid, Some(std::process::id()));
            assert_eq!(first[0].bytes, b"STATUS=0");
            let rest = sock.recv_batch(3).await;
            assert_eq!(rest.len(), 2);
            send(&name, &vec![b'x'; MAX_DATAGRAM * 2]);
            let big = sock.recv_batch(3).await;
            assert_eq!(big[0].bytes.len(), MAX_DATAGRAM, "cut");
        });
    }
}
