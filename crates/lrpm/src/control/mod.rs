//! The control plane: the supervisor's side of the control socket.
//!
//! # Theory of operation
//!
//! [`start`] picks the socket path ([`path`]), claims the instance's name
//! (an abstract Unix socket named after the socket's canonical path, which
//! no file operation can remove, so that removing the socket's directory
//! does not let a second lrpm start on the same path) and takes an
//! exclusive lock beside the socket as well, so that two lrpm never share
//! one socket, replaces a stale
//! socket file left by a dead lrpm, binds the socket (mode 0600 in a 0700
//! directory) and spawns the accept loop. It returns a [`ControlServer`]
//! whose lifetime is the socket's: dropping it removes the socket file.
//!
//! The accept loop checks each peer's credentials (root and lrpm's own uid
//! only) and gives it a slot among its uid's (`slots.rs`: a share per uid;
//! over it, the uid's longest-idle connection gives way), so that a flood of
//! connections, even root's, cannot lock out a fresh `lrpmctl`; a refused
//! connection costs an accept and a close. Every admitted connection is its
//! own task (`connection.rs`), so a slow, idle or hostile client only ever
//! holds up itself. A connection task reads bounded request lines, closing
//! the connection when nothing arrives for 2 s, decodes them with the shared
//! [codec](lrpm_proto::codec), answers `help` itself and hands every other
//! request to the supervisor's event loop as a [`ControlMsg`] with a
//! one-shot reply channel. The event loop answers at once with a [`Reply`]
//! (for `status`, the response line itself, serialized straight from the
//! core's state; copying every job's status for this task to encode cost
//! more than serializing it); encoding other answers and writing to the
//! client happen in the connection task, never in the loop.
//!
//! Architecture invariant: the event loop never waits on a client. The only
//! thing it does for a request is compute a [`Reply`] and put it in a
//! one-shot channel.

mod connection;
mod msg;
mod path;
mod slots;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::FlockOperation;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

pub(crate) use self::msg::{CLOSE_GRACE, ControlError, ControlMsg, Reply};
use self::msg::{MAX_TASKS, Shared};
use self::slots::{SHARE, Slots};

/// The running control server. Dropping it stops accepting and removes the
/// socket file; [`ControlServer::close`] also lets answers in flight reach
/// their clients first.
#[derive(Debug)]
pub(crate) struct ControlServer {
    /// The socket's path, removed on drop.
    path: PathBuf,
    /// The abstract socket that names this instance ([`claim_instance`]),
    /// bound for the server's lifetime.
    _instance: std::os::unix::net::UnixDatagram,
    /// The lock on `<socket>.lock`, held for the server's lifetime so that
    /// no second lrpm takes over the socket.
    _lock: File,
    /// Tells the accept loop and idle connections to finish.
    shutdown: watch::Sender<bool>,
    /// The accept loop.
    accept: JoinHandle<()>,
    /// One permit per live connection task, to wait for them to finish.
    alive: Arc<Semaphore>,
}

/// Starts the control server on `socket`, or on the default path chain when
/// it is `None`, sending requests to `requests`.
///
/// Must be called within a tokio runtime. Fails if another lrpm is running
/// with the same socket, or if the socket cannot be created.
pub(crate) async fn start(
    socket: Option<&Path>,
    requests: mpsc::Sender<ControlMsg>,
) -> Result<ControlServer, ControlError> {
    let path = path::server_socket(socket)?;
    let instance = claim_instance(&path)?;
    let lock = lock(&path)?;
    remove_stale(&path)?;
    let listener = listen(&path).map_err(|source| ControlError::Bind {
        path: path.clone(),
        source,
    })?;
    if let Err(source) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(&path);
        return Err(ControlError::Bind { path, source });
    }
    let alive = Arc::new(Semaphore::new(MAX_TASKS));
    let shared = Arc::new(Shared {
        requests,
        alive: Arc::clone(&alive),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(
        listener,
        shared,
        rustix::process::geteuid().as_raw(),
        shutdown_rx,
    ));
    tracing::info!(socket = %path.display(), "control socket listening");
    Ok(ControlServer {
        path,
        _instance: instance,
        _lock: lock,
        shutdown,
        accept,
        alive,
    })
}

impl ControlServer {
    /// Stops accepting, lets connections write the answers they already
    /// have (for at most [`CLOSE_GRACE`]: the answer to `stop` among them),
    /// then removes the socket.
    pub(crate) async fn close(self) {
        let _ = self.shutdown.send(true);
        let all = u32::try_from(MAX_TASKS).expect("invariant: the task cap fits a u32");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.alive.acquire_many(all)).await;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
        // The lock is still held here, so the socket is still ours.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot remove the control socket {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

/// How many connections may wait to be accepted. Small, so that under a
/// storm of connections a new one waits behind a few dozen, not behind a
/// thousand (tokio's default); a client that finds the queue full waits in
/// `connect` for room, or is told to try again when non-blocking.
const BACKLOG: i32 = 128;

/// Binds and listens on the control socket at `path`, with [`BACKLOG`].
fn listen(path: &Path) -> io::Result<UnixListener> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::bind(&socket, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&socket, BACKLOG)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(socket))
}

/// The abstract socket name of the lrpm serving `socket`: its canonical
/// path (the directory's symbolic links resolved, so that two spellings of
/// one path are one name), prefixed with a stable hash of it and cut to
/// the 107 bytes an abstract name may have.
fn instance_name(socket: &Path) -> Vec<u8> {
    let canonical = match (socket.parent(), socket.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .map(|dir| dir.join(name))
        .ok(),
        _ => None,
    }
    .or_else(|| std::path::absolute(socket).ok())
    .unwrap_or_else(|| socket.to_owned());
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(canonical.as_os_str());
    // FNV-1a, 64 bits: stable across builds, unlike the standard hasher.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut name = format!("lrpm/{hash:016x}:").into_bytes();
    name.extend_from_slice(bytes);
    name.truncate(107);
    name
}

/// Binds the abstract socket that names the lrpm of `socket` for as long
/// as the returned socket lives; fails with
/// [`ControlError::AlreadyRunning`] when another lrpm holds the name. A
/// datagram socket, so that nothing can queue connections on it.
fn claim_instance(socket: &Path) -> Result<std::os::unix::net::UnixDatagram, ControlError> {
    use std::os::linux::net::SocketAddrExt;
    let name = instance_name(socket);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).map_err(|source| {
        ControlError::Lock {
            path: socket.to_owned(),
            source,
        }
    })?;
    match std::os::unix::net::UnixDatagram::bind_addr(&addr) {
        Ok(bound) => Ok(bound),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ControlError::AlreadyRunning {
            path: socket.to_owned(),
            pid: std::os::unix::net::UnixStream::connect(socket)
                .ok()
                .and_then(|s| peer_pid(&s)),
        }),
        Err(source) => Err(ControlError::Lock {
            path: socket.to_owned(),
            source,
        }),
    }
}

/// The lock file's path: the socket's with `.lock` appended.
fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the exclusive lock that makes this lrpm the socket's owner.
///
/// The lock file is never removed: removing it would let two lrpm lock two
/// different files of the same name.
fn lock(socket: &Path) -> Result<File, ControlError> {
    let path = lock_path(socket);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ControlError::Lock {
            path: path.clone(),
            source,
        })?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ControlError::AlreadyRunning {
            path: socket.to_owned(),
            pid: std::os::unix::net::UnixStream::connect(socket)
                .ok()
                .and_then(|s| peer_pid(&s)),
        }),
        Err(e) => Err(ControlError::Lock {
            path,
            source: e.into(),
        }),
    }
}

/// The pid of the process at the other end of `stream`, when it is visible.
fn peer_pid(stream: &std::os::unix::net::UnixStream) -> Option<u32> {
    lrpm_process::fd::peer_credentials(stream).ok()?.1
}

/// Removes a socket file that no process listens on any more; refuses when
/// one does, or when the path holds something other than a socket.
fn remove_stale(path: &Path) -> Result<(), ControlError> {
    let stale = |source| ControlError::Stale {
        path: path.to_owned(),
        source,
    };
    match path.symlink_metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(stale(e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => Err(ControlError::AlreadyRunning {
            path: path.to_owned(),
            pid: peer_pid(&stream),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing the stale control socket of a dead lrpm");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(stale(e)),
                _ => Ok(()),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(stale(e)),
    }
}

/// How many connections the accept loop takes in a row before it lets the
/// connection tasks run, so that under a storm of connections a new one
/// reads its request long before it could be the oldest of its uid.
const ACCEPT_BATCH: u32 = 32;

/// Says something at most once a second, with how many times it was not
/// said in between, so that a storm of connections cannot flood the log.
#[derive(Debug, Default)]
struct Throttle {
    /// When it was last said.
    last: Option<tokio::time::Instant>,
    /// How many times it was not said since.
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed)` when it may be said now.
    fn allow(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accepts connections until shutdown, one task each.
///
/// The peer's uid is checked here, before a task or a slot is spent on it:
/// a connection of another uid than root and `own_uid`, over its uid's
/// share with nothing to evict ([`slots`]), or beyond the task cap costs an
/// accept, a short write of why and a close. When accepting fails (out of
/// descriptors or memory), the loop waits 100 ms rather than spin.
async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    own_uid: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Slots::default());
    let mut busy = Throttle::default();
    let mut denied = Throttle::default();
    let mut failing = Throttle::default();
    let mut batch = 0;
    loop {
        batch += 1;
        if batch >= ACCEPT_BATCH {
            batch = 0;
            tokio::task::yield_now().await;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                if let Some(suppressed) = failing.allow() {
                    tracing::warn!(
                        suppressed,
                        "control socket: cannot accept a connection: {e}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = match lrpm_process::fd::peer_credentials(&stream) {
            Ok((uid, _)) if uid == 0 || uid == own_uid => uid,
            Ok((uid, pid)) => {
                if let Some(suppressed) = denied.allow() {
                    tracing::warn!(
                        uid,
                        pid,
                        suppressed,
                        "control connection refused: permission denied"
                    );
                }
                connection::refuse(stream, "permission denied");
                continue;
            }
            Err(e) => {
                if let Some(suppressed) = denied.allow() {
                    tracing::warn!(
                        suppressed,
                        "control connection refused: cannot read its credentials: {e}"
                    );
                }
                continue;
            }
        };
        let admitted = Arc::clone(&shared.alive)
            .try_acquire_owned()
            .ok()
            .and_then(|alive| Some((alive, slots.admit(uid, std::time::Instant::now())?)));
        match admitted {
            Some((alive, slot)) => {
                tokio::spawn(connection::serve(
                    stream,
                    Arc::clone(&shared),
                    shutdown.clone(),
                    slot,
                    alive,
                ));
            }
            None => {
                if let Some(suppressed) = busy.allow() {
                    tracing::warn!(
                        uid,
                        suppressed,
                        "every control connection of uid {uid} is busy: refusing more"
                    );
                }
                connection::refuse(
                    stream,
                    &format!(
                        "too many control connections ({SHARE} per user, all busy); \
                         try again later"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_named_by_its_canonical_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("run");
        std::fs::create_dir(&dir).expect("mkdir");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        let name = instance_name(&dir.join("control.sock"));
        assert_eq!(name, instance_name(&link.join("control.sock")));
        assert_eq!(name, instance_name(&dir.join("../run/control.sock")));
        assert_ne!(name, instance_name(&dir.join("other.sock")));
        assert!(name.starts_with(b"lrpm/"));
        let long = dir.join("x".repeat(200));
        assert_eq!(instance_name(&long).len(), 107);
        assert_ne!(
            instance_name(&long),
            instance_name(&dir.join("x".repeat(201)))
        );
    }

    #[test]
    fn a_claimed_instance_refuses_a_second_claim_until_released() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = tmp.path().join("control.sock");
        let first = claim_instance(&socket).expect("claimed");
        assert!(matches!(
            claim_instance(&socket),
            Err(ControlError::AlreadyRunning { pid: None, .. })
        ));
        drop(first);
        claim_instance(&socket).expect("free again");
    }
}
