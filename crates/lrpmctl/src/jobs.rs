//! `lrpmctl pause ID…`, `lrpmctl resume ID…` and `lrpmctl signal SIG
//! ID…`: the operator's hand on some jobs.

use crate::common::Context;
use crate::error::CtlError;
use lrpm_core::job::Signal;
use lrpm_proto::codec::Request;

/// Runs `lrpmctl pause ID…`.
pub fn pause(ctx: &Context, ids: Vec<String>) -> Result<(), CtlError> {
    crate::common::command(ctx, &Request::Pause { ids })
}

/// Runs `lrpmctl resume ID…`.
pub fn resume(ctx: &Context, ids: Vec<String>) -> Result<(), CtlError> {
    crate::common::command(ctx, &Request::Resume { ids })
}

/// Runs `lrpmctl signal SIG ID…`; a signal lrpm does not send is a usage
/// error, found before connecting.
pub fn signal(ctx: &Context, signal: &str, ids: Vec<String>) -> Result<(), CtlError> {
    let Some(signal) = Signal::from_name_or_number(signal) else {
        let names: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
        return Err(CtlError::Usage(format!(
            "unknown signal {signal:?}: one of {} (SIG prefix optional) or its number",
            names.join(", ")
        )));
    };
    crate::common::command(ctx, &Request::Signal { signal, ids })
}
