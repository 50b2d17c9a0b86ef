//! What every command shares: the global options, printing, and reading
//! lrpm's answer.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use lrpm_core::escape::escape;
use lrpm_proto::codec::{Request, Response};

use crate::client;
use crate::error::CtlError;

/// What every command needs from the global options.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The socket given on the command line or in `LRPM_SOCKET`.
    pub(crate) socket: Option<PathBuf>,
    /// Print lrpm's JSON answer as it is.
    pub(crate) json: bool,
    /// Whether to colour the output.
    pub(crate) color: bool,
}

impl Context {
    pub(crate) fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }
}

/// Prints `text` to standard output at once.
pub(crate) fn print(text: &str) -> Result<(), CtlError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Prints the raw answer when `--json` asks for it, and turns a refusal into
/// an error.
pub(crate) fn check(ctx: &Context, answer: client::Answer) -> Result<Response, CtlError> {
    if ctx.json {
        let mut line = answer.line;
        line.push(b'\n');
        let mut out = io::stdout().lock();
        out.write_all(&line)?;
        out.flush()?;
    }
    match answer.response {
        // lrpm's words may quote a client's or a declaration's text: they
        // reach the terminal with their control characters escaped.
        Response::Error(error) => Err(CtlError::Refused(escape(&error).into_owned())),
        response => Ok(response),
    }
}

/// Sends `request`, which lrpm answers with a message, and prints the
/// message (or, with `--json`, the answer as it is).
pub(crate) fn command(ctx: &Context, request: &Request) -> Result<(), CtlError> {
    let mut client = client::Client::connect(ctx.socket())?;
    let answer = client.call(request)?;
    let message = done_message(ctx, answer)?;
    if !ctx.json {
        print(&format!("{message}\n"))?;
    }
    Ok(())
}

/// The message of a `Done` answer, from a command that expects one.
pub(crate) fn done_message(ctx: &Context, answer: client::Answer) -> Result<String, CtlError> {
    let path = answer.path.clone();
    match check(ctx, answer)? {
        Response::Done(message) => Ok(escape(&message).into_owned()),
        _ => Err(CtlError::Invalid {
            path,
            reason: "an answer of the wrong kind".into(),
        }),
    }
}
