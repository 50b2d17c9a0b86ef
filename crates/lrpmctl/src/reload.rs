//! `lrpmctl reload`: read the configuration source again now; and
//! `lrpmctl reopen-logs`: reopen the per-job log files.

use crate::common::Context;
use crate::error::CtlError;
use lrpm_proto::codec::Request;

/// Runs `lrpmctl reload [--force]`.
pub fn run(ctx: &Context, force: bool) -> Result<(), CtlError> {
    crate::common::command(ctx, &Request::Reload { force })
}

/// Runs `lrpmctl reopen-logs`.
pub fn reopen_logs(ctx: &Context) -> Result<(), CtlError> {
    crate::common::command(ctx, &Request::ReopenLogs)
}
