//! Clocks and what `/proc` says about a process: CPU time, memory, load.

use std::collections::HashMap;
use std::fs;
use std::io;

/// Nanoseconds on `CLOCK_MONOTONIC`, the system-wide clock the workers
/// stamp their `main` with.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The CPU time of each thread of a process at one moment, in nanoseconds,
/// from `/proc/PID/task/TID/schedstat` (exact, unlike the 10 ms ticks of
/// `utime`/`stime`).
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    by_thread: HashMap<u32, u64>,
}

impl CpuSnapshot {
    /// Reads the CPU time of every thread of every process in `pids` (a
    /// supervisor and its helpers: see [`supervisor_processes`]). Thread ids
    /// are unique across processes, so the snapshots merge.
    pub fn take_all(pids: &[u32]) -> io::Result<Self> {
        let mut all = Self::default();
        for (i, pid) in pids.iter().enumerate() {
            match Self::take(*pid) {
                Ok(one) => all.by_thread.extend(one.by_thread),
                // The supervisor itself must be readable; a helper may have
                // just ended.
                Err(e) if i == 0 => return Err(e),
                Err(_) => {}
            }
        }
        Ok(all)
    }

    /// Reads the CPU time of every thread of `pid`.
    pub fn take(pid: u32) -> io::Result<Self> {
        let mut by_thread = HashMap::new();
        for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
            let Ok(entry) = entry else { continue };
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A thread may end between the listing and the read.
            let Ok(text) = fs::read_to_string(entry.path().join("schedstat")) else {
                continue;
            };
            if let Some(ns) = text.split_whitespace().next().and_then(|s| s.parse().ok()) {
                by_thread.insert(tid, ns);
            }
        }
        if by_thread.is_empty() {
            return Err(io::Error::other(format!("no thread of {pid} readable")));
        }
        Ok(Self { by_thread })
    }

    /// The CPU time used since `earlier`: the growth of each thread seen
    /// both times, plus all of each thread that is new. A thread that ended
    /// in between takes what it used in the window with it; at rest, the
    /// only such threads are idle ones.
    pub fn since(&self, earlier: &CpuSnapshot) -> u64 {
        self.by_thread
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(earlier.by_thread.get(tid).copied().unwrap_or(0)))
            .sum()
    }
}

/// A process's resident memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`, in KiB.
    pub rss_kib: u64,
    /// `Pss` from `/proc/PID/smaps_rollup`, in KiB (0 where the kernel
    /// has no such file).
    pub pss_kib: u64,
    /// `VmHWM`, the peak resident size, in KiB.
    pub hwm_kib: u64,
}

impl Memory {
    /// Reads `/proc/PID/status`.
    pub fn of(pid: u32) -> io::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| io::Error::other(format!("{name} missing in /proc/{pid}/status")))
        };
        let pss_kib = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("Pss:"))
                    .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0);
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            pss_kib,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

impl Memory {
    /// The sum over the processes `pids` (a supervisor and its helpers).
    /// The sum of peaks is an upper bound of the peak of the sum.
    pub fn of_all(pids: &[u32]) -> io::Result<Self> {
        let mut sum = Self::default();
        for (i, pid) in pids.iter().enumerate() {
            match Self::of(*pid) {
                Ok(one) => {
                    sum.rss_kib += one.rss_kib;
                    sum.pss_kib += one.pss_kib;
                    sum.hwm_kib += one.hwm_kib;
                }
                Err(e) if i == 0 => return Err(e),
                Err(_) => {}
            }
        }
        Ok(sum)
    }
}

/// The argument with which lrpm starts an output hub (`HUB_ROLE` of lrpm's `base` module).
const HUB_MODE: &[u8] = b"__lrpm-output-hub";

/// The processes that make up supervisor `pid`: itself, then its output
/// hubs (the children of an lrpm running `__lrpm-output-hub`, which forward
/// the output of workers beyond half of lrpm's descriptor limit). Another
/// supervisor has no such children: just itself.
pub fn supervisor_processes(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let Ok(task) = task else { continue };
        let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let is_hub = fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(HUB_MODE));
            if is_hub {
                pids.push(child);
            }
        }
    }
    pids
}

/// How many descriptors process `pid` has open.
pub fn fd_count(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    loadavg()
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The three load averages, as `/proc/loadavg` gives them.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The command line of `pid`, its arguments separated by NUL bytes; empty
/// for a zombie or a process that is gone.
pub fn cmdline(pid: u32) -> Vec<u8> {
    fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

/// Whether process `pid` carries the run's `token` (the path of its
/// temporary directory, with a final `/`): in its command line, or as the
/// start of its working directory. The second serves s6, whose
/// supervisors (`s6-supervise NAME`) and workers (`./run`) are named
/// relative to their service directory, which is their working directory.
pub fn carries(pid: u32, token: &[u8]) -> bool {
    if contains(&cmdline(pid), token) {
        return true;
    }
    let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) else {
        return false;
    };
    let mut cwd = cwd.into_os_string().into_encoded_bytes();
    cwd.push(b'/');
    !token.is_empty() && cwd.starts_with(token)
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The pids of every process on the machine.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_and_memory_are_readable() {
        let pid = std::process::id();
        let a = CpuSnapshot::take(pid).expect("own schedstat");
        // The kernel accounts a running thread's time at ticks and context
        // switches: spin until some shows up.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        loop {
            for i in 0..100_000u64 {
                x = x.wrapping_add(std::hint::black_box(i * i));
            }
            let b = CpuSnapshot::take(pid).expect("own schedstat");
            if b.since(&a) > 0 {
                break;
            }
            assert!(t0.elapsed().as_secs() < 5, "no CPU time accounted in 5 s");
        }
        std::hint::black_box(x);
        assert!(Memory::of(pid).expect("own status").rss_kib > 0);
    }

    #[test]
    fn contains_finds_substrings() {
        assert!(contains(b"a\0/tmp/x/y\0", b"/tmp/x"));
        assert!(!contains(b"abc", b""));
        assert!(!contains(b"ab", b"abc"));
    }
}
