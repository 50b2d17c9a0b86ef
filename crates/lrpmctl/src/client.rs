//! One connection to lrpm's control socket.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::CtlError;
use lrpm_proto::codec::{self as protocol, MAX_RESPONSE_LEN, Request, Response};
use lrpm_proto::socket::client_socket;

/// How long lrpm may take to answer. It answers at once unless its event
/// loop is busy, e.g. spawning thousands of workers at startup.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long sending a request may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How much one read asks for.
const READ_CHUNK: usize = 64 * 1024;

/// A connection to lrpm.
#[derive(Debug)]
pub struct Client {
    /// The connected socket.
    stream: UnixStream,
    /// Its path, for messages.
    path: PathBuf,
    /// Bytes read past the last answer.
    buf: Vec<u8>,
}

/// One answer: the line as received, and what it means.
#[derive(Debug)]
pub struct Answer {
    /// The socket it came from, for messages.
    pub path: PathBuf,
    /// The response line, without its newline.
    pub line: Vec<u8>,
    /// The decoded response.
    pub response: Response,
}

impl Client {
    /// Connects to the socket named by `explicit`, or to the first default
    /// socket that exists.
    pub fn connect(explicit: Option<&Path>) -> Result<Client, CtlError> {
        let path =
            client_socket(explicit, rustix::process::getuid().as_raw()).map_err(|tried| {
                CtlError::NoSocket {
                    tried: tried
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?;
        let stream = UnixStream::connect(&path).map_err(|source| CtlError::Connect {
            path: path.clone(),
            source,
        })?;
        let io = |source| CtlError::Io {
            path: path.clone(),
            source,
        };
        stream
            .set_read_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(io)?;
        stream.set_write_timeout(Some(SEND_TIMEOUT)).map_err(io)?;
        Ok(Client {
            stream,
            path,
            buf: Vec::new(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid of the lrpm at the other end, when it is visible from here.
    pub fn peer_pid(&self) -> Option<u32> {
        lrpm_process::fd::peer_credentials(&self.stream).ok()?.1
    }

    /// Sends `request` and reads its answer.
    pub fn call(&mut self, request: &Request) -> Result<Answer, CtlError> {
        self.call_watching(request, |_| {})
    }

    /// [`Client::call`], showing `watch` the bytes of the answer received
    /// so far after each read, before the answer is whole and decoded (so
    /// that work on a large answer can begin while the rest arrives).
    pub fn call_watching(
        &mut self,
        request: &Request,
        mut watch: impl FnMut(&[u8]),
    ) -> Result<Answer, CtlError> {
        let line = match self.stream.write_all(&request.encode()) {
            Ok(()) => self.read_line(&mut watch)?,
            // A server that refuses a client (wrong uid, too many
            // connections) answers and hangs up without reading the request;
            // its answer is still there to read.
            Err(e) => self.read_line(&mut watch).map_err(|_| self.io(e))?,
        };
        let response = Response::decode(&line, request).map_err(|e| self.invalid(e.to_string()))?;
        Ok(Answer {
            path: self.path.clone(),
            line,
            response,
        })
    }

    /// Reads the next of the answers that follow the first to `request`
    /// (a followed `logs`), waiting as long as it takes; `None` when lrpm
    /// closed the connection between two answers.
    pub fn next(&mut self, request: &Request) -> Result<Option<Answer>, CtlError> {
        self.stream.set_read_timeout(None).map_err(|e| self.io(e))?;
        if self.buf.is_empty() {
            let mut byte = [0_u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => return Ok(None),
                Ok(_) => self.buf.push(byte[0]),
                Err(e) => return Err(self.io(e)),
            }
        }
        let line = self.read_line(&mut |_| {})?;
        let response = Response::decode(&line, request).map_err(|e| self.invalid(e.to_string()))?;
        Ok(Some(Answer {
            path: self.path.clone(),
            line,
            response,
        }))
    }

    /// Reads one response line, showing `watch` what has come after each
    /// read.
    fn read_line(&mut self, watch: &mut dyn FnMut(&[u8])) -> Result<Vec<u8>, CtlError> {
        let mut scanned = 0;
        loop {
            match protocol::split_line_from(&self.buf, scanned, MAX_RESPONSE_LEN) {
                Ok(Some((len, consumed))) => {
                    // The line is handed over without a copy (megabytes for
                    // a large status); what follows it, if anything, stays.
                    let rest = self.buf.split_off(consumed);
                    let mut line = std::mem::replace(&mut self.buf, rest);
                    line.truncate(len);
                    return Ok(line);
                }
                Ok(None) => scanned = self.buf.len(),
                Err(e) => return Err(self.invalid(e.to_string())),
            }
            let start = self.buf.len();
            self.buf.resize(start + READ_CHUNK, 0);
            let read = self.stream.read(&mut self.buf[start..]);
            self.buf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) if self.buf.is_empty() => {
                    return Err(self.invalid("lrpm closed the connection without answering".into()));
                }
                Ok(0) => {
                    return Err(self
                        .invalid("lrpm closed the connection in the middle of its answer".into()));
                }
                Ok(_) => watch(&self.buf),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {} s", RESPONSE_TIMEOUT.as_secs()),
                    )));
                }
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    fn io(&self, source: io::Error) -> CtlError {
        CtlError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn invalid(&self, reason: String) -> CtlError {
        CtlError::Invalid {
            path: self.path.clone(),
            reason,
        }
    }
}
