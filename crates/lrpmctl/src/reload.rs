//! `lrpmctl reload`: read the configuration source again now.

use crate::client::Client;
use crate::common::Context;
use crate::error::CtlError;
use lrpm_proto::codec::Request;

/// Runs `lrpmctl reload [--force]`.
pub fn run(ctx: &Context, force: bool) -> Result<(), CtlError> {
    let mut client = Client::connect(ctx.socket())?;
    let answer = client.call(&Request::Reload { force })?;
    let message = crate::common::done_message(ctx, answer)?;
    if !ctx.json {
        crate::common::print(&format!("{message}\n"))?;
    }
    Ok(())
}
