//! `lrpmctl restart ID`: restart one job now.

use super::client::Client;
use super::{Context, CtlError};
use crate::protocol::Request;

/// Runs `lrpmctl restart ID`.
pub fn run(ctx: &Context, id: String) -> Result<(), CtlError> {
    let mut client = Client::connect(ctx.socket())?;
    let answer = client.call(&Request::Restart { id })?;
    let message = super::done_message(ctx, answer)?;
    if !ctx.json {
        super::print(&format!("{message}\n"))?;
    }
    Ok(())
}
