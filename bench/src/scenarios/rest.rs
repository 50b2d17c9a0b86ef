//! The supervisor at rest after a mass start: its resident memory, and the
//! CPU time it uses while nothing happens.

use std::time::{Duration, Instant};

use crate::procfs::{self, CpuSnapshot, Memory};
use crate::results::Rest;

/// How long the supervisor is left to finish what a mass start left behind
/// (log lines, idle threads) before it is watched.
const SETTLE: Duration = Duration::from_secs(1);

/// Watches process `pid` for `window`; returns its memory and open
/// descriptors at the end and its CPU use over the window.
pub fn measure(pid: u32, window: Duration) -> anyhow::Result<Rest> {
    std::thread::sleep(SETTLE);
    let before = CpuSnapshot::take(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let after = CpuSnapshot::take(pid)?;
    let elapsed = t0.elapsed();
    let memory = Memory::of(pid)?;
    let fds = procfs::fd_count(pid)?;
    Ok(Rest {
        rss_kib: memory.rss_kib,
        hwm_kib: memory.hwm_kib,
        cpu_percent: after.since(&before) as f64 / elapsed.as_nanos() as f64 * 100.0,
        window: elapsed,
        fds,
    })
}
