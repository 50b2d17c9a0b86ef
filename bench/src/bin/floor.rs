//! The floor of a shutdown as a supervisor process of its own.
//!
//! Usage: `lrpm-bench-floor JOBS WORKER SOCKET`. It spawns `JOBS` workers
//! one after the other (`WORKER SOCKET ID pause`, output to /dev/null,
//! std's `posix_spawn`, as the harness's own floor does), then waits for
//! SIGTERM; on SIGTERM it sends SIGTERM to every worker, reaps them all,
//! and exits.
//!
//! The harness times SIGTERM → this process's exit, which is the end point
//! of lrpm's shutdown too (lrpm exits once every worker is reaped): a floor
//! timed inside the harness, from its own `kill` to its last `wait`, would
//! leave out the signal's delivery to the supervisor and the supervisor's
//! own exit, which lrpm's figure includes.

use std::process::{Child, Command, ExitCode, Stdio};

use rustix::process::{Pid, Signal, kill_process};

/// The exit status of a usage error (EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (jobs, worker, socket) = match args.as_slice() {
        [jobs, worker, socket] => match jobs.parse::<usize>() {
            Ok(jobs) => (jobs, worker, socket),
            Err(e) => {
                eprintln!("lrpm-bench-floor: JOBS {jobs:?}: {e}");
                return ExitCode::from(EX_USAGE);
            }
        },
        _ => {
            eprintln!("usage: lrpm-bench-floor JOBS WORKER SOCKET");
            return ExitCode::from(EX_USAGE);
        }
    };
    // Before the first spawn: a SIGTERM that comes early is not lost.
    let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("lrpm-bench-floor: cannot catch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut children: Vec<Child> = Vec::with_capacity(jobs);
    let mut failed = false;
    for id in 0..jobs {
        let spawned = Command::new(worker)
            .arg(socket)
            .arg(id.to_string())
            .arg("pause")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => children.push(child),
            Err(e) => {
                eprintln!("lrpm-bench-floor: cannot spawn worker {id}: {e}");
                failed = true;
                break;
            }
        }
    }
    if !failed {
        let _ = signals.forever().next();
    }
    for child in &children {
        if let Some(pid) = Pid::from_raw(child.id() as i32) {
            // Not reaped yet, so the pid is still this child's.
            let _ = kill_process(pid, Signal::TERM);
        }
    }
    for child in &mut children {
        if let Err(e) = child.wait() {
            eprintln!("lrpm-bench-floor: cannot reap worker {}: {e}", child.id());
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
