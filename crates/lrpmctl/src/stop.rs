//! `lrpmctl stop`: shut lrpm down and wait until it has exited.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::common::Context;
use crate::error::CtlError;
use crate::procfs::pid_alive;
use lrpm_proto::codec::Request;

/// How often lrpmctl looks whether lrpm is gone.
const POLL: Duration = Duration::from_millis(20);

/// Runs `lrpmctl stop`; with `wait`, returns once lrpm has exited or
/// `timeout` has passed.
pub fn run(ctx: &Context, timeout: Duration, wait: bool) -> Result<(), CtlError> {
    let mut client = Client::connect(ctx.socket())?;
    // The peer's pid, from the socket itself: lrpm's, as long as it is in a
    // pid namespace this process can see.
    let pid = client.peer_pid();
    let path = client.path().to_owned();
    let answer = client.call(&Request::Stop)?;
    let message = crate::common::done_message(ctx, answer)?;
    drop(client);
    if !ctx.json {
        crate::common::print(&format!("{message}\n"))?;
    }
    if !wait {
        return Ok(());
    }
    let started = Instant::now();
    while !gone(pid, &path) {
        if started.elapsed() >= timeout {
            return Err(CtlError::StopTimeout {
                pid,
                waited: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
    if !ctx.json {
        let who = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        crate::common::print(&format!("lrpm{who} has exited\n"))?;
    }
    Ok(())
}

/// Whether lrpm has exited: its process is gone when its pid is known, else
/// its socket no longer accepts connections.
fn gone(pid: Option<u32>, socket: &Path) -> bool {
    match pid {
        Some(pid) => !pid_alive(pid),
        None => UnixStream::connect(socket).is_err(),
    }
}
