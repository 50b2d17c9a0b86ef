//! One control connection: peer check, bounded request lines, answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};

use super::msg::{ControlMsg, IDLE_TIMEOUT, MAX_CONNECTIONS, Reply, Shared, WRITE_TIMEOUT};
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
    /// Reading failed.
    Failed,
}

/// Tells a connection over the cap why it is closed, without waiting.
pub(super) fn refuse_busy(stream: &UnixStream) {
    let line = Response::Error(format!(
        "too many control connections ({MAX_CONNECTIONS} open); try again later"
    ))
    .encode();
    // A fresh socket's send buffer is empty: the line fits, or the client is
    // gone and does not care.
    let _ = stream.try_write(&line);
}

/// Serves one connection until the client closes it, misbehaves, idles, or
/// lrpm shuts down. `_slot` is this connection's place under the cap.
pub(super) async fn serve(
    mut stream: UnixStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    match lrpm_process::fd::peer_credentials(&stream) {
        Ok((uid, _)) if uid == 0 || uid == shared.own_uid.as_raw() => {}
        Ok((uid, pid)) => {
            tracing::warn!(uid, pid, "control connection refused: permission denied");
            let _ = write(&mut stream, &Response::Error("permission denied".into())).await;
            return;
        }
        Err(e) => {
            tracing::warn!("control connection refused: cannot read its credentials: {e}");
            return;
        }
    }
    let mut buf = Vec::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let read = tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut stream, &mut buf)) => read,
            _ = shutdown.changed() => return,
        };
        let line = match read {
            Ok(Ok(line)) => line,
            Ok(Err(ReadEnd::Closed | ReadEnd::Failed)) => return,
            Ok(Err(ReadEnd::TooLong)) => {
                let error = protocol::RequestError::TooLong.to_string();
                if write(&mut stream, &Response::Error(error)).await {
                    linger(&mut stream, &mut buf).await;
                }
                return;
            }
            Err(_) => {
                let error = format!(
                    "no complete request within {} s: closing",
                    IDLE_TIMEOUT.as_secs()
                );
                let _ = write(&mut stream, &Response::Error(error)).await;
                return;
            }
        };
        if protocol::is_blank(&line) {
            continue;
        }
        let response = match Request::decode(&line) {
            Err(e) => Response::Error(e.to_string()).encode(),
            Ok(Request::Help) => Response::help().encode(),
            Ok(request) => ask(&shared, request).await,
        };
        if !write_line(&mut stream, &response).await {
            return;
        }
    }
}

/// Hands `request` to the event loop and waits for its answer, encoded.
async fn ask(shared: &Shared, request: Request) -> Vec<u8> {
    let (reply, answer) = oneshot::channel();
    let gone = || Response::Error("lrpm is shutting down".into()).encode();
    if shared
        .requests
        .send(ControlMsg { request, reply })
        .await
        .is_err()
    {
        return gone();
    }
    match answer.await {
        Ok(Reply::StatusLine(line)) => line,
        Ok(Reply::Done(message)) => Response::Done(message).encode(),
        Ok(Reply::Refused(error)) => Response::Error(error).encode(),
        Err(_) => gone(),
    }
}

/// Reads the next request line into a fresh vector, leaving what follows it
/// in `buf`. A last line without a newline before the client closes its
/// side counts as a line.
async fn read_line(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, ReadEnd> {
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
        // `split_line` guarantees `buf.len() <= MAX_REQUEST_LEN` here, so
        // the buffer never grows past twice the limit.
        buf.reserve(READ_CHUNK.min(MAX_REQUEST_LEN + 1 - buf.len()));
        match stream.read_buf(buf).await {
            Ok(0) if protocol::is_blank(buf) => return Err(ReadEnd::Closed),
            Ok(0) => return Ok(std::mem::take(buf)),
            Ok(_) => {}
            Err(_) => return Err(ReadEnd::Failed),
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
