//! `lrpmctl reload`: read the configuration source again now.

use super::client::Client;
use super::{Context, CtlError};
use crate::protocol::Request;

/// Runs `lrpmctl reload [--force]`.
pub fn run(ctx: &Context, force: bool) -> Result<(), CtlError> {
    let mut client = Client::connect(ctx.socket())?;
    let answer = client.call(&Request::Reload { force })?;
    let message = super::done_message(ctx, answer)?;
    if !ctx.json {
        super::print(&format!("{message}\n"))?;
    }
    Ok(())
}
