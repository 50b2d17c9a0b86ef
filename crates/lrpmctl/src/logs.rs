//! `lrpmctl logs [-n N] ID`: the newest lines of a job's output, from
//! lrpm's in-memory ring (`lrpm --log-buffer`).

use std::io::Write;

use crate::client;
use crate::common::{Context, check};
use crate::error::CtlError;
use lrpm_proto::codec::{Request, Response};

/// Runs `lrpmctl logs [-n N] ID`. The lines are printed as the worker
/// wrote them (as lrpm's stdout carries them), one per line.
pub fn run(ctx: &Context, id: String, n: Option<u64>) -> Result<(), CtlError> {
    let mut client = client::Client::connect(ctx.socket())?;
    let answer = client.call(&Request::Logs { id, n })?;
    let path = answer.path.clone();
    let json = ctx.json;
    match check(ctx, answer)? {
        Response::Lines(_) if json => Ok(()),
        Response::Lines(lines) => {
            let mut out = std::io::stdout().lock();
            for line in lines {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(())
        }
        _ => Err(CtlError::Invalid {
            path,
            reason: "an answer of the wrong kind".into(),
        }),
    }
}
