//! `lrpmctl restart ID…` and `lrpmctl restart --all`: restart jobs now.

use crate::common::Context;
use crate::error::CtlError;
use lrpm_proto::codec::Request;

/// Runs `lrpmctl restart ID…` (`ids`), or `lrpmctl restart --all`.
pub fn run(ctx: &Context, mut ids: Vec<String>, all: bool) -> Result<(), CtlError> {
    let request = match (all, ids.len()) {
        (true, _) => Request::RestartAll,
        // The spec's request for one job.
        (false, 1) => Request::Restart { id: ids.remove(0) },
        (false, _) => Request::RestartJobs { ids },
    };
    crate::common::command(ctx, &request)
}
