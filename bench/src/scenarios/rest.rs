//! The supervisor at rest after a mass start: its resident memory, and the
//! CPU time it uses while nothing happens.

use std::time::{Duration, Instant};

use crate::procfs::{self, CpuSnapshot, Memory};
use crate::results::Rest;

/// How long the supervisor is left to finish what a mass start left behind
/// (log lines, idle threads) before it is watched.
const SETTLE: Duration = Duration::from_secs(1);

/// Watches supervisor `pid` for `window`; returns its memory and open
/// descriptors at the end and its CPU use over the window. Memory and CPU
/// are the sums over the supervisor's processes: lrpm and its output hubs
/// ([`procfs::supervisor_processes`]); the descriptors are lrpm's own.
pub fn measure(pid: u32, window: Duration) -> anyhow::Result<Rest> {
    std::thread::sleep(SETTLE);
    let before = CpuSnapshot::take_all(&procfs::supervisor_processes(pid))?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let processes = procfs::supervisor_processes(pid);
    let after = CpuSnapshot::take_all(&processes)?;
    let elapsed = t0.elapsed();
    let memory = Memory::of_all(&processes)?;
    let fds = procfs::fd_count(pid)?;
    Ok(Rest {
        processes: processes.len(),
        rss_kib: memory.rss_kib,
        hwm_kib: memory.hwm_kib,
        cpu_percent: after.since(&before) as f64 / elapsed.as_nanos() as f64 * 100.0,
        window: elapsed,
        fds,
    })
}
