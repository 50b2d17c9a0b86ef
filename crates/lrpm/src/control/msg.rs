//! What the control server's parts share: the message a connection hands
//! the event loop, its reply, the server's limits and errors.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lrpm_proto::codec::Request;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// A request from a control client, handed to the supervisor's event loop,
/// which answers on `reply`.
#[derive(Debug)]
pub(crate) struct ControlMsg {
    /// The request (never `Help`: the server answers that itself).
    pub(crate) request: Request,
    /// Where the event loop sends the answer.
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// The event loop's answer to a [`ControlMsg`].
#[derive(Debug)]
pub(crate) enum Reply {
    /// The status document (or the answer to `cluster`), already encoded
    /// as the response line: the event loop serializes it straight from
    /// the core's state, which is cheaper than copying every job's status
    /// for the connection task to encode (see `Shell::status_line`).
    StatusLine(Vec<u8>),
    /// The status line and, being read on a blocking thread meanwhile,
    /// the `usage` of its jobs' processes to add to it (`status` with
    /// `usage`).
    StatusUsage(
        Vec<u8>,
        tokio::task::JoinHandle<std::collections::HashMap<u32, lrpm_core::status::ProcessUsage>>,
    ),
    /// The newest lines of a job's output, for `logs`.
    Lines(Vec<String>),
    /// The newest lines of a job's output and its new lines, for
    /// `logs` with `follow`.
    Follow(Vec<String>, tokio::sync::broadcast::Receiver<Arc<str>>),
    /// The request was carried out; a message for the operator.
    Done(String),
    /// The request was refused.
    Refused(String),
}

/// How many control connections may be open at once: two shares
/// (`slots::SHARE`), one for root and one for lrpm's own uid.
pub(crate) const MAX_CONNECTIONS: usize = 512;

/// How long a connection may go without sending a byte while it owes a
/// request (after it connects or was answered, or in the middle of a line)
/// before it is closed. A slow client is not cut off as long as its bytes
/// keep coming, up to [`REQUEST_TIMEOUT`].
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one request line may take to arrive from its first byte.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long writing one response may take before the connection is closed.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`ControlServer::close`] lets connections finish writing the
/// answers they already have.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the control server could not start. Each of these stops lrpm before
/// any worker is spawned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    /// No default socket directory could be used.
    #[error("no usable directory for the control socket ({tried}); give one with --socket PATH")]
    NoSocketDir {
        /// Each directory tried, with why it could not be used.
        tried: String,
    },
    /// The socket's directory could not be created.
    #[error("cannot create the control socket directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The lock file beside the socket could not be opened or locked.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another lrpm is running with this socket.
    #[error(
        "another lrpm{} is already running with the control socket {}",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        path.display()
    )]
    AlreadyRunning {
        path: PathBuf,
        /// The other lrpm's pid, when it answered.
        pid: Option<u32>,
    },
    /// Something other than a socket is in the way.
    #[error("{} exists and is not a socket; not replacing it", path.display())]
    NotASocket { path: PathBuf },
    /// An existing socket file could not be probed or removed.
    #[error("cannot replace the stale control socket {}", path.display())]
    Stale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket could not be bound or its mode set.
    #[error("cannot listen on the control socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Where requests go: the supervisor's event loop.
    pub(crate) requests: mpsc::Sender<ControlMsg>,
    /// One permit per live connection task (an evicted one included until
    /// it has finished); all of them free means every connection has
    /// finished.
    pub(crate) alive: Arc<Semaphore>,
}

/// How many connection tasks may be alive at once: the slots, and as many
/// evicted connections still saying why they are closed.
pub(crate) const MAX_TASKS: usize = 2 * MAX_CONNECTIONS;
