//! `lrpmctl reload`: read the configuration source again now.

use crate::common::Context;
use crate::error::CtlError;
use lrpm_proto::codec::Request;

/// Runs `lrpmctl reload [--force]`.
pub fn run(ctx: &Context, force: bool) -> Result<(), CtlError> {
    crate::common::command(ctx, &Request::Reload { force })
}
