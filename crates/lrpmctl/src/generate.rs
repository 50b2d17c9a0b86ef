//! `lrpmctl completions SHELL` and `lrpmctl man`: shell completions and the
//! man page, generated from the command-line definition itself.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CtlError;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<(), CtlError> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lrpmctl", &mut buf);
    write(&buf)
}

/// Prints the man page, in roff.
pub fn man() -> Result<(), CtlError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
    write(&buf)
}

fn write(bytes: &[u8]) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}
