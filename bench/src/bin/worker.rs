//! The benchmark's worker: the smallest program that tells the harness when
//! its `main` ran.
//!
//! Usage: `lrpm-bench-worker SOCKET ID [MODE]`, or with one argument or
//! none, which reads `SOCKET ID MODE` (separated by spaces) from the file
//! `bench-args` in the current directory. That form serves s6, whose
//! `run` is executed in its service directory with at most the service's
//! name as its argument: `run` is a
//! symbolic link to this program, so no shell stands between the
//! supervisor and the worker. The file is read after the clock.
//!
//! The very first thing `main` does is read `CLOCK_MONOTONIC` (a system-wide
//! clock, so the harness can compare it with its own readings). Then,
//! depending on MODE:
//!
//! - `pause` (the default): send one datagram `"ID PID NS"` to the Unix
//!   datagram socket SOCKET, then sleep in `pause()` until a signal ends it.
//!   SIGTERM keeps its default action, so this is a cooperative worker: it
//!   ends at once when asked to stop.
//! - `exit`: send the datagram, then exit with status 0.
//! - `true`: exit with status 0 at once, sending nothing (a crash storm's
//!   worker, and the floor's fork+exec+wait).
//!
//! It depends on nothing but std and the C library std already links, so
//! that its start-up is as close to a bare exec as a Rust program gets.

use std::ffi::OsStr;
use std::os::raw::{c_int, c_long};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;

/// `struct timespec` of a 64-bit Linux (time_t and long are both 64 bits).
#[repr(C)]
struct Timespec {
    tv_sec: c_long,
    tv_nsec: c_long,
}

/// `CLOCK_MONOTONIC` from `<time.h>`.
const CLOCK_MONOTONIC: c_int = 1;

/// The exit status of a usage error (EX_USAGE).
const EX_USAGE: u8 = 64;

unsafe extern "C" {
    fn clock_gettime(clock: c_int, tp: *mut Timespec) -> c_int;
    fn pause() -> c_int;
}

/// Nanoseconds on `CLOCK_MONOTONIC`.
fn monotonic_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call, and CLOCK_MONOTONIC always exists on Linux.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() -> ExitCode {
    let ns = monotonic_ns();
    let mut args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.len() < 2 {
        match std::fs::read("bench-args") {
            Ok(text) => {
                args = text
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|a| !a.is_empty())
                    .map(|a| OsStr::from_bytes(a).to_owned())
                    .collect();
            }
            Err(e) => {
                eprintln!("lrpm-bench-worker: no argument, and no ./bench-args: {e}");
                return ExitCode::from(EX_USAGE);
            }
        }
    }
    let (socket, id) = match (args.first(), args.get(1)) {
        (Some(socket), Some(id)) => (socket, id),
        _ => {
            eprintln!("usage: lrpm-bench-worker SOCKET ID [pause|exit|true]");
            return ExitCode::from(EX_USAGE);
        }
    };
    let mode = args.get(2).map_or(&b"pause"[..], |m| m.as_bytes());
    if mode == b"true" {
        return ExitCode::SUCCESS;
    }
    if mode != b"pause" && mode != b"exit" {
        eprintln!(
            "lrpm-bench-worker: unknown mode {:?}",
            OsStr::from_bytes(mode)
        );
        return ExitCode::from(EX_USAGE);
    }
    let mut message = Vec::with_capacity(48);
    message.extend_from_slice(id.as_bytes());
    message.extend_from_slice(format!(" {} {ns}", std::process::id()).as_bytes());
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to(&message, socket));
    if let Err(e) = sent {
        eprintln!("lrpm-bench-worker: cannot report to {socket:?}: {e}");
        return ExitCode::FAILURE;
    }
    if mode == b"exit" {
        return ExitCode::SUCCESS;
    }
    loop {
        // SAFETY: pause() has no preconditions; it returns only when a
        // signal handler ran, and this program installs none.
        unsafe { pause() };
    }
}
