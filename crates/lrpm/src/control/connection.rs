//! One control connection: bounded request lines, answers.
//!
//! A connection that owes a request is closed when nothing arrives for
//! [`IDLE_TIMEOUT`], or when a line takes longer than [`REQUEST_TIMEOUT`]
//! from its first byte; a slow client whose bytes keep coming is served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, broadcast, oneshot, watch};

use super::msg::{ControlMsg, IDLE_TIMEOUT, REQUEST_TIMEOUT, Reply, Shared, WRITE_TIMEOUT};
use super::slots::{Phase, SHARE, Slot};
use lrpm_proto::codec::{self as protocol, MAX_REQUEST_LEN, Request, Response};

/// How long a connection that sent an over-long line is drained before it
/// is closed, so that its client can read the error instead of a reset.
const LINGER: Duration = Duration::from_secs(1);

/// How much of an over-long line is drained at most.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// How much one read asks for.
const READ_CHUNK: usize = 8 * 1024;

/// Why reading a request line ended without one.
enum ReadEnd {
    /// The client closed the connection.
    Closed,
    /// The line is longer than [`MAX_REQUEST_LEN`].
    TooLong,
    /// Nothing arrived for [`IDLE_TIMEOUT`].
    Idle,
    /// The line did not complete within [`REQUEST_TIMEOUT`] of its first
    /// byte.
    Slow,
    /// Reading failed.
    Failed,
}

/// Tells a refused connection why, without waiting, and closes it.
pub(super) fn refuse(stream: UnixStream, error: &str) {
    let line = Response::Error(error.to_owned()).encode();
    // A fresh socket's send buffer is empty: the line fits, or the client is
    // gone and does not care.
    let _ = stream.try_write(&line);
}

/// Serves one connection until the client closes it, misbehaves, idles, is
/// evicted for a newer one of its uid, or lrpm shuts down. The peer's uid
/// was checked by the accept loop; `slot` is the connection's place among
/// its uid's, `_alive` its task's.
pub(super) async fn serve(
    mut stream: UnixStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    slot: Slot,
    _alive: OwnedSemaphorePermit,
) {
    let mut buf = Vec::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let read = tokio::select! {
            read = read_line(&mut stream, &mut buf, &slot) => read,
            () = slot.evicted.notified() => {
                drop(slot);
                refuse(stream, &format!(
                    "closed to make room for a newer connection of the same user \
                     ({SHARE} per user)"
                ));
                return;
            }
            _ = shutdown.changed() => return,
        };
        let line = match read {
            Ok(line) => line,
            Err(ReadEnd::Closed | ReadEnd::Failed) => return,
            Err(ReadEnd::TooLong) => {
                let error = protocol::RequestError::TooLong.to_string();
                if write(&mut stream, &Response::Error(error)).await {
                    linger(&mut stream, &mut buf).await;
                }
                return;
            }
            Err(end @ (ReadEnd::Idle | ReadEnd::Slow)) => {
                drop(slot);
                let message = if matches!(end, ReadEnd::Idle) {
                    format!(
                        "no complete request: nothing received for {} s; closing",
                        IDLE_TIMEOUT.as_secs()
                    )
                } else {
                    format!(
                        "no complete request within {} s of its first byte; closing",
                        REQUEST_TIMEOUT.as_secs()
                    )
                };
                refuse(stream, &message);
                return;
            }
        };
        if protocol::is_blank(&line) {
            continue;
        }
        slot.set(Phase::Busy, Instant::now());
        let (response, followed) = match Request::decode(&line) {
            Err(e) => (Response::Error(e.to_string()).encode(), None),
            Ok(Request::Help) => (Response::help().encode(), None),
            Ok(request) => ask(&shared, request).await,
        };
        // A client that does not read its answer may be evicted meanwhile,
        // and is when its uid's unread answers grow over their budget.
        slot.writing(response.len(), Instant::now());
        let written = tokio::select! {
            written = write_line(&mut stream, &response) => written,
            () = slot.evicted.notified() => false,
        };
        if !written {
            return;
        }
        slot.set(Phase::Idle, Instant::now());
        if let Some(rx) = followed {
            follow(&mut stream, rx, &slot, &mut shutdown).await;
            return;
        }
    }
}

/// How many new lines one answer of a followed `logs` carries at most.
const FOLLOW_BATCH: usize = 64;

/// Sends a followed job's new lines, as `{"ok":true,"lines":[…]}` answers,
/// until the client disconnects (or sends anything), is evicted, or lrpm
/// shuts down. A client that reads slower than the job prints misses
/// lines, and gets `{"ok":true,"skipped":N}` in their place: the event
/// loop and the job never wait for it (see the `logring` module).
async fn follow(
    stream: &mut UnixStream,
    mut rx: broadcast::Receiver<Arc<str>>,
    slot: &Slot,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut scratch = [0_u8; 64];
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = stream.read(&mut scratch) => return,
            () = slot.evicted.notified() => return,
            _ = shutdown.changed() => return,
        };
        let response = match next {
            Ok(line) => {
                let mut lines = vec![line.to_string()];
                while lines.len() < FOLLOW_BATCH {
                    match rx.try_recv() {
                        Ok(line) => lines.push(line.to_string()),
                        Err(_) => break,
                    }
                }
                Response::Lines(lines)
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => Response::Skipped(skipped),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let written = tokio::select! {
            written = write(stream, &response) => written,
            () = slot.evicted.notified() => false,
            _ = shutdown.changed() => false,
        };
        if !written {
            return;
        }
    }
}

/// The new lines of a followed job (`logs` with `follow`).
type Followed = Option<broadcast::Receiver<Arc<str>>>;

/// Hands `request` to the event loop and waits for its answer, encoded,
/// and, for a followed `logs`, the job's new lines.
async fn ask(shared: &Shared, request: Request) -> (Vec<u8>, Followed) {
    let (reply, answer) = oneshot::channel();
    let gone = || Response::Error("lrpm is shutting down".into()).encode();
    if shared
        .requests
        .send(ControlMsg { request, reply })
        .await
        .is_err()
    {
        return (gone(), None);
    }
    let line = match answer.await {
        Ok(Reply::StatusLine(line)) => line,
        Ok(Reply::StatusUsage(mut line, usage)) => {
            // A read that failed (it panicked) leaves the answer without
            // usage, as from a lrpm that does not read it.
            if let Ok(usage) = usage.await {
                Response::add_usage(&mut line, &usage);
            }
            line
        }
        Ok(Reply::Done(message)) => Response::Done(message).encode(),
        Ok(Reply::Lines(lines)) => Response::Lines(lines).encode(),
        Ok(Reply::Follow(lines, rx)) => return (Response::Lines(lines).encode(), Some(rx)),
        Ok(Reply::Refused(error)) => Response::Error(error).encode(),
        Err(_) => gone(),
    };
    (line, None)
}

/// Reads the next request line into a fresh vector, leaving what follows it
/// in `buf`. A last line without a newline before the client closes its
/// side counts as a line. Marks `slot` [`Phase::Partial`] once a byte of
/// the line has arrived.
async fn read_line(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    slot: &Slot,
) -> Result<Vec<u8>, ReadEnd> {
    // When the line's first byte arrived, for REQUEST_TIMEOUT.
    let mut first_byte = (!protocol::is_blank(buf)).then(Instant::now);
    loop {
        match protocol::split_line(buf, MAX_REQUEST_LEN) {
            Ok(Some((len, consumed))) => {
                let line = buf[..len].to_vec();
                buf.drain(..consumed);
                return Ok(line);
            }
            Ok(None) => {}
            Err(_) => return Err(ReadEnd::TooLong),
        }
        if let Some(first) = first_byte {
            slot.set(Phase::Partial, first);
        }
        let now = tokio::time::Instant::now();
        let deadline = match first_byte {
            Some(first) => {
                (now + IDLE_TIMEOUT).min(tokio::time::Instant::from_std(first) + REQUEST_TIMEOUT)
            }
            None => now + IDLE_TIMEOUT,
        };
        // `split_line` guarantees `buf.len() <= MAX_REQUEST_LEN` here, so
        // the buffer never grows past twice the limit.
        buf.reserve(READ_CHUNK.min(MAX_REQUEST_LEN + 1 - buf.len()));
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) if protocol::is_blank(buf) => return Err(ReadEnd::Closed),
            Ok(Ok(0)) => return Ok(std::mem::take(buf)),
            Ok(Ok(_)) => {
                if first_byte.is_none() && !protocol::is_blank(buf) {
                    first_byte = Some(Instant::now());
                }
            }
            Ok(Err(_)) => return Err(ReadEnd::Failed),
            Err(_) if first_byte.is_some_and(|first| first.elapsed() >= REQUEST_TIMEOUT) => {
                return Err(ReadEnd::Slow);
            }
            Err(_) => return Err(ReadEnd::Idle),
        }
    }
}

/// Writes `response`; `false` if the connection failed or the client did
/// not read it within [`WRITE_TIMEOUT`].
async fn write(stream: &mut UnixStream, response: &Response) -> bool {
    write_line(stream, &response.encode()).await
}

/// Writes an encoded response line; as [`write`].
async fn write_line(stream: &mut UnixStream, line: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(line)).await,
        Ok(Ok(()))
    )
}

/// Closes our side and discards what the client still sends, for a while,
/// so that closing with unread data does not reset the connection before
/// the client has read our answer.
async fn linger(stream: &mut UnixStream, buf: &mut Vec<u8>) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut drained = 0;
        while drained < LINGER_BYTES {
            buf.clear();
            buf.reserve(READ_CHUNK);
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
