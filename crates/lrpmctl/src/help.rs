//! `lrpmctl help [COMMAND]`: the help of lrpmctl or of one command; with
//! `--json`, lrpm's own list of protocol commands.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::client::Client;
use crate::common::Context;
use crate::error::CtlError;
use lrpm_proto::codec::Request;

/// Runs `lrpmctl help [COMMAND]`.
pub fn run(ctx: &Context, command: Option<&str>) -> Result<(), CtlError> {
    if ctx.json {
        let mut client = Client::connect(ctx.socket())?;
        let answer = client.call(&Request::Help)?;
        crate::common::check(ctx, answer)?;
        return Ok(());
    }
    let mut cli = Cli::command().bin_name("lrpmctl");
    cli.build();
    let help = match command {
        None => cli.render_long_help(),
        Some(name) => match cli.find_subcommand_mut(name) {
            Some(sub) if !sub.is_hide_set() => sub.render_long_help(),
            _ => {
                return Err(CtlError::Usage(format!(
                    "no such command {name:?}; see lrpmctl --help"
                )));
            }
        },
    };
    let mut text = if ctx.color {
        help.ansi().to_string()
    } else {
        help.to_string()
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    crate::common::print(&text)
}
