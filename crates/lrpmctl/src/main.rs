//! `lrpmctl`: the control client of a running lrpm. See `lrpmctl --help`.
//!
//! # Theory of operation
//!
//! [`run`] parses the command line (`cli`), runs one command, and maps
//! the outcome to an exit code: 0 done, 1 refused by lrpm, 64 usage error,
//! 69 cannot connect, 76 invalid response (the codes of php-lrpm's
//! lrpmctl), and 74 when the output cannot be written.
//!
//! Each command is one file: it connects with `client::Client`, sends one
//! request encoded by the shared codec (`lrpm_proto::codec`), and prints the
//! answer. The client is plain blocking I/O with timeouts: it talks to one
//! server, once; it links neither tokio nor an HTTP client.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod cluster;
mod common;
mod error;
mod generate;
mod help;
mod jobs;
mod logs;
mod procfs;
mod reload;
mod restart;
mod status;
mod stop;

use std::ffi::OsString;
use std::io;
use std::process::ExitCode;

use clap::Parser;
use lrpm_proto::exit::EX_USAGE;

use crate::cli::{Cli, ColorWhen, Command};
use crate::common::Context;
use crate::error::CtlError;

fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Runs `lrpmctl` with `args` (the first is the program name) and returns
/// its exit code.
fn run<I, T>(args: I) -> ExitCode
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
        Command::Status { ids } => status::run(&ctx, ids),
        Command::Restart { ids, all } => restart::run(&ctx, ids, all),
        Command::Pause { ids } => jobs::pause(&ctx, ids),
        Command::Resume { ids } => jobs::resume(&ctx, ids),
        Command::Signal { signal, ids } => jobs::signal(&ctx, &signal, ids),
        Command::Reload { force } => reload::run(&ctx, force),
        Command::ReopenLogs => reload::reopen_logs(&ctx),
        Command::Logs { lines, follow, id } => logs::run(&ctx, id, lines, follow),
        Command::Stop { timeout, no_wait } => stop::run(&ctx, timeout, !no_wait),
        Command::Cluster => cluster::run(&ctx),
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
