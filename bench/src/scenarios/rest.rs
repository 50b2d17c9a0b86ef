//! The supervisor at rest after a mass start: its resident memory, and the
//! CPU time it uses while nothing happens, summed over its processes.

use std::time::{Duration, Instant};

use crate::procfs::{self, CpuSnapshot, Memory};
use crate::results::Rest;

/// How long the supervisor is left to finish what a mass start left behind
/// (log lines, idle threads) before it is watched.
const SETTLE: Duration = Duration::from_secs(1);

/// Watches lrpm `pid` for `window`; returns its memory and open
/// descriptors at the end and its CPU use over the window. Memory and CPU
/// are the sums over lrpm's processes: lrpm and its output hubs
/// ([`procfs::supervisor_processes`]); the descriptors are lrpm's own.
pub fn measure(pid: u32, window: Duration) -> anyhow::Result<Rest> {
    measure_with(window, || procfs::supervisor_processes(pid))
}

/// [`measure`] for a peer whose processes are `processes`, the daemon
/// first (s6: s6-svscan, then every s6-supervise).
pub fn measure_all(processes: &[u32], window: Duration) -> anyhow::Result<Rest> {
    measure_with(window, || processes.to_vec())
}

/// Watches the supervisor whose processes `processes` lists (the main one
/// first) for `window`.
fn measure_with(window: Duration, processes: impl Fn() -> Vec<u32>) -> anyhow::Result<Rest> {
    std::thread::sleep(SETTLE);
    let before = CpuSnapshot::take_all(&processes())?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let processes = processes();
    let after = CpuSnapshot::take_all(&processes)?;
    let elapsed = t0.elapsed();
    let memory = Memory::of_all(&processes)?;
    let fds = procfs::fd_count(processes[0])?;
    Ok(Rest {
        processes: processes.len(),
        rss_kib: memory.rss_kib,
        pss_kib: memory.pss_kib,
        hwm_kib: memory.hwm_kib,
        cpu_percent: after.since(&before) as f64 / elapsed.as_nanos() as f64 * 100.0,
        window: elapsed,
        fds,
    })
}
