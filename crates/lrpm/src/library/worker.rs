//! The worker sandbox: php-lrpm's worker loop.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::api::Worker;

/// Runs one worker of class `class`: `start` once with the job's
/// `workerConfig` (from `LRPM_WORKER_CONFIG`), then `cycle` until SIGTERM or
/// SIGINT arrives (checked between cycles) or the supervisor is gone.
/// Exits 0 after a requested stop, 1 after an error; a panic exits 101.
pub(crate) fn run(class: &str, factory: &dyn Fn() -> Box<dyn Worker>) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("{class}: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let config: serde_json::Value = match std::env::var("LRPM_WORKER_CONFIG") {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{class}: LRPM_WORKER_CONFIG is not JSON: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => serde_json::Value::Object(serde_json::Map::new()),
    };
    let parent = rustix::process::getppid();
    let mut worker = factory();
    if let Err(e) = worker.start(&config) {
        eprintln!("{class}: start failed: {e}");
        return ExitCode::FAILURE;
    }
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = worker.cycle() {
            eprintln!("{class}: cycle failed: {e}");
            return ExitCode::FAILURE;
        }
        if rustix::process::getppid() != parent {
            // The supervisor is gone (its parent-death signal normally
            // takes care of this; this covers a worker that outlived it).
            break;
        }
    }
    ExitCode::SUCCESS
}
