//! CPU and memory of a process, read from `/proc` (as `ps` does, without
//! running it).

pub(crate) use lrpm_process::procfs::pid_alive;
use lrpm_process::procfs::read_stat;

/// What the status table shows of a running process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU time over the time since the process started, in percent of one
    /// core (so above 100 for a busy multi-threaded process), as `ps` shows.
    pub cpu_percent: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
}

/// Reads process usage; set up once per table, so that every row is
/// measured against the same clock.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    ticks: f64,
    /// The page size in bytes.
    page: u64,
    /// Seconds since boot, from `/proc/uptime`.
    uptime: Option<f64>,
}

impl Sampler {
    /// A sampler for now.
    pub fn now() -> Sampler {
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|text| text.split_ascii_whitespace().next()?.parse().ok());
        Sampler {
            ticks: rustix::param::clock_ticks_per_second() as f64,
            page: rustix::param::page_size() as u64,
            uptime,
        }
    }

    /// The usage of process `pid`, if it can be read.
    pub fn usage(&self, pid: u32) -> Option<Usage> {
        let stat = read_stat(pid)?;
        let elapsed = self.uptime? - stat.starttime as f64 / self.ticks;
        let cpu = (stat.utime + stat.stime) as f64 / self.ticks;
        Some(Usage {
            cpu_percent: if elapsed > 0.0 {
                100.0 * cpu / elapsed
            } else {
                0.0
            },
            rss_bytes: stat.rss_pages * self.page,
        })
    }

    /// The usage of each process of `pids`, in order. Reading `/proc` costs
    /// some 20 µs a process, mostly in the kernel, so a large table is read
    /// on every core at once.
    pub fn usages(&self, pids: &[Option<u32>]) -> Vec<Option<Usage>> {
        const MIN_PER_THREAD: usize = 500;
        let one = |pid: &Option<u32>| pid.and_then(|pid| self.usage(pid));
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(pids.len() / MIN_PER_THREAD)
            .min(8);
        if threads <= 1 {
            return pids.iter().map(one).collect();
        }
        let chunk = pids.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = pids
                .chunks(chunk)
                .map(|part| {
                    (
                        part.len(),
                        scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()),
                    )
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|(len, handle)| handle.join().unwrap_or_else(|_| vec![None; len]))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_this_process() {
        let sampler = Sampler::now();
        let usage = sampler.usage(std::process::id()).expect("readable");
        assert!(usage.rss_bytes > 0);
        assert!(usage.cpu_percent >= 0.0);
        let pids = vec![Some(std::process::id()); 2000];
        let usages = sampler.usages(&pids);
        assert_eq!(usages.len(), 2000);
        assert!(usages.iter().all(Option::is_some));
    }
}
