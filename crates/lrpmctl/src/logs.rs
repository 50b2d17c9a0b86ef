//! `lrpmctl logs [-f] [-n N] ID`: the newest lines of a job's output, from
//! lrpm's in-memory ring (`lrpm --log-buffer`), and with `-f` its new lines
//! as they come.

use std::io::Write;

use crate::client;
use crate::common::{Context, check};
use crate::error::CtlError;
use lrpm_proto::codec::{Request, Response};

/// Runs `lrpmctl logs [-f] [-n N] ID`. The lines are printed as the worker
/// wrote them (as lrpm's stdout carries them), one per line. With
/// `follow`, new lines are printed until lrpmctl is interrupted or lrpm
/// closes the connection (it shuts down); lines lrpm had to skip because
/// they were not read fast enough are counted on standard error.
pub fn run(ctx: &Context, id: String, n: Option<u64>, follow: bool) -> Result<(), CtlError> {
    let mut client = client::Client::connect(ctx.socket())?;
    let request = Request::Logs { id, n, follow };
    let mut answer = Some(client.call(&request)?);
    while let Some(next) = answer {
        print(ctx, next)?;
        if !follow {
            break;
        }
        answer = client.next(&request)?;
    }
    Ok(())
}

/// Prints one answer's lines (or, with `--json`, the answer as it is).
fn print(ctx: &Context, answer: client::Answer) -> Result<(), CtlError> {
    let path = answer.path.clone();
    match check(ctx, answer)? {
        Response::Lines(_) | Response::Skipped(_) if ctx.json => Ok(()),
        Response::Lines(lines) => {
            let mut out = std::io::stdout().lock();
            for line in lines {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(())
        }
        Response::Skipped(skipped) => {
            eprintln!("lrpmctl: {skipped} lines skipped: not read fast enough");
            Ok(())
        }
        _ => Err(CtlError::Invalid {
            path,
            reason: "an answer of the wrong kind".into(),
        }),
    }
}
