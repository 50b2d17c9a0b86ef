//! `lrpmctl restart ID`: restart one job now.

use crate::client::Client;
use crate::common::Context;
use crate::error::CtlError;
use lrpm_proto::codec::Request;

/// Runs `lrpmctl restart ID`.
pub fn run(ctx: &Context, id: String) -> Result<(), CtlError> {
    let mut client = Client::connect(ctx.socket())?;
    let answer = client.call(&Request::Restart { id })?;
    let message = crate::common::done_message(ctx, answer)?;
    if !ctx.json {
        crate::common::print(&format!("{message}\n"))?;
    }
    Ok(())
}
