//! `lrpmctl`: the control client.
//!
//! # Theory of operation
//!
//! [`run`] parses the command line ([`cli`]), runs one command, and maps
//! the outcome to an exit code: 0 done, 1 refused by lrpm, 64 usage error,
//! 69 cannot connect, 76 invalid response (the codes of php-lrpm's
//! lrpmctl), and 74 when the output cannot be written.
//!
//! Each command is one file: it connects with `client::Client`, sends one
//! [`Request`](crate::protocol::Request) encoded by the shared
//! [codec](crate::protocol), and prints the answer. The client is plain
//! blocking I/O with timeouts: it talks to one server, once.

pub mod cli;
mod client;
mod generate;
mod help;
mod procfs;
mod reload;
mod restart;
mod status;
mod stop;

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use self::cli::{Cli, ColorWhen, Command};
use crate::protocol::Response;

pub use self::procfs::pid_alive;

/// Exit code: lrpm refused the command (an unknown job…).
pub const EX_REFUSED: u8 = 1;
/// Exit code: the command line is wrong (EX_USAGE).
pub const EX_USAGE: u8 = 64;
/// Exit code: lrpm cannot be reached (EX_UNAVAILABLE).
pub const EX_UNAVAILABLE: u8 = 69;
/// Exit code: the output cannot be written (EX_IOERR).
pub const EX_IOERR: u8 = 74;
/// Exit code: lrpm's answer makes no sense (EX_PROTOCOL).
pub const EX_PROTOCOL: u8 = 76;

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

/// What every command needs from the global options.
#[derive(Debug, Clone)]
pub struct Context {
    /// The socket given on the command line or in `LRPM_SOCKET`.
    pub socket: Option<PathBuf>,
    /// Print lrpm's JSON answer as it is.
    pub json: bool,
    /// Whether to colour the output.
    pub color: bool,
}

impl Context {
    fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }
}

/// Runs `lrpmctl` with `args` (the first is the program name) and returns
/// its exit code.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EX_USAGE } else { 0 });
        }
    };
    let ctx = Context {
        socket: cli.socket,
        json: cli.json,
        color: use_color(cli.color),
    };
    let result = match cli.command {
        Command::Status => status::run(&ctx),
        Command::Restart { id } => restart::run(&ctx, id),
        Command::Reload { force } => reload::run(&ctx, force),
        Command::Stop { timeout, no_wait } => stop::run(&ctx, timeout, !no_wait),
        Command::Help { command } => help::run(&ctx, command.as_deref()),
        Command::Completions { shell } => generate::completions(shell),
        Command::Man => generate::man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`lrpmctl status | head`) is not an error.
        Err(CtlError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("lrpmctl: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Whether standard output gets colours: `--color`, then `NO_COLOR`,
/// `CLICOLOR_FORCE`, `TERM=dumb` and whether it is a terminal.
fn use_color(when: ColorWhen) -> bool {
    let choice = match when {
        ColorWhen::Auto => anstream::ColorChoice::Auto,
        ColorWhen::Always => anstream::ColorChoice::Always,
        ColorWhen::Never => anstream::ColorChoice::Never,
    };
    let resolved = match choice {
        anstream::ColorChoice::Auto => anstream::AutoStream::choice(&io::stdout()),
        explicit => explicit,
    };
    !matches!(resolved, anstream::ColorChoice::Never)
}

/// Prints `text` to standard output at once.
fn print(text: &str) -> Result<(), CtlError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Prints the raw answer when `--json` asks for it, and turns a refusal into
/// an error.
fn check(ctx: &Context, answer: client::Answer) -> Result<Response, CtlError> {
    if ctx.json {
        let mut line = answer.line;
        line.push(b'\n');
        let mut out = io::stdout().lock();
        out.write_all(&line)?;
        out.flush()?;
    }
    match answer.response {
        Response::Error(error) => Err(CtlError::Refused(error)),
        response => Ok(response),
    }
}

/// The message of a `Done` answer, from a command that expects one.
fn done_message(ctx: &Context, answer: client::Answer) -> Result<String, CtlError> {
    let path = answer.path.clone();
    match check(ctx, answer)? {
        Response::Done(message) => Ok(message),
        _ => Err(CtlError::Invalid {
            path,
            reason: "an answer of the wrong kind".into(),
        }),
    }
}
