//! Why a command did not succeed, and the exit code that says so.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use lrpm_proto::exit::{EX_IOERR, EX_PROTOCOL, EX_REFUSED, EX_UNAVAILABLE, EX_USAGE};

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No socket was given and none of the default ones exists.
    #[error(
        "no lrpm control socket found (tried {tried}); is lrpm running? Name its socket with --socket PATH or LRPM_SOCKET"
    )]
    NoSocket {
        /// The paths tried, comma-separated.
        tried: String,
    },
    /// The socket does not accept the connection.
    #[error("cannot connect to lrpm at {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection failed or timed out while talking.
    #[error("lost the connection to lrpm at {}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The answer is not a valid response to the request.
    #[error("invalid response from {}: {reason}", path.display())]
    Invalid {
        /// The socket.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// lrpm refused the request; its message.
    #[error("{0}")]
    Refused(String),
    /// lrpm did not exit in time after `stop`.
    #[error("lrpm{} has not exited after {waited:?}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    StopTimeout {
        /// Its pid, when known.
        pid: Option<u32>,
        /// How long lrpmctl waited.
        waited: Duration,
    },
    /// The command line asks for something that does not exist.
    #[error("{0}")]
    Usage(String),
    /// Standard output cannot be written.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::NoSocket { .. } | CtlError::Connect { .. } | CtlError::Io { .. } => {
                EX_UNAVAILABLE
            }
            CtlError::Invalid { .. } => EX_PROTOCOL,
            CtlError::Refused(_) | CtlError::StopTimeout { .. } => EX_REFUSED,
            CtlError::Usage(_) => EX_USAGE,
            CtlError::Output(_) => EX_IOERR,
        }
    }
}

impl From<io::Error> for CtlError {
    fn from(e: io::Error) -> Self {
        CtlError::Output(e)
    }
}
