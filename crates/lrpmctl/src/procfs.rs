//! CPU and memory of a process: as lrpm gives them in its status answer
//! (`usage`), or, from an lrpm that does not, read from `/proc` (as `ps`
//! does, without running it).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;

use lrpm_core::status::{JobStatus, ProcessUsage};

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
}

/// What one sampling thread read: each pid's usage.
type Read = Vec<(u32, Option<Usage>)>;

/// How many pids a sampling thread is handed at a time.
const BATCH: usize = 64;

/// Below this many processes the table is read on the calling thread:
/// threads cost more than they save.
const MIN_THREADED: usize = 256;

/// Reads the usage of processes on other threads (a table of thousands
/// costs some 10 µs a process, nearly all in the kernel, so it is read on
/// every core). [`Feed::finish`] gives what was read.
pub struct Feed<'scope, 'env> {
    sampler: &'env Sampler,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    /// Pids not handed to a thread yet.
    pending: Vec<u32>,
    /// Every pid given, to hand each one once.
    seen: HashSet<u32>,
    /// One channel per thread, handed batches in turn.
    lanes: Vec<mpsc::Sender<Vec<u32>>>,
    next: usize,
    threads: Vec<std::thread::ScopedJoinHandle<'scope, Read>>,
}

impl<'scope, 'env> Feed<'scope, 'env> {
    /// A feed whose threads run in `scope`.
    pub fn new(scope: &'scope std::thread::Scope<'scope, 'env>, sampler: &'env Sampler) -> Self {
        Feed {
            sampler,
            scope,
            pending: Vec::new(),
            seen: HashSet::new(),
            lanes: Vec::new(),
            next: 0,
            threads: Vec::new(),
        }
    }

    /// Asks for the usage of process `pid`.
    pub fn push(&mut self, pid: u32) {
        if !self.seen.insert(pid) {
            return;
        }
        self.pending.push(pid);
        if self.lanes.is_empty() && self.seen.len() >= MIN_THREADED {
            self.start();
        }
        if !self.lanes.is_empty() && self.pending.len() >= BATCH {
            self.hand_over();
        }
    }

    /// Starts the threads, one per core (8 at most).
    fn start(&mut self) {
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(8);
        for _ in 0..threads {
            let (tx, rx) = mpsc::channel::<Vec<u32>>();
            let sampler = self.sampler;
            self.lanes.push(tx);
            self.threads.push(self.scope.spawn(move || {
                rx.iter()
                    .flatten()
                    .map(|pid| (pid, sampler.usage(pid)))
                    .collect()
            }));
        }
    }

    /// Hands the pending pids to the next thread.
    fn hand_over(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        let lane = self.next % self.lanes.len();
        self.next += 1;
        if let Err(mpsc::SendError(batch)) = self.lanes[lane].send(batch) {
            // The thread is gone (it panicked): read them here.
            self.pending = batch;
        }
    }

    /// Waits for the threads (reading what they were not handed here) and
    /// gives every usage read.
    pub fn finish(mut self) -> Usages<'env> {
        if !self.lanes.is_empty() && !self.pending.is_empty() {
            self.hand_over();
        }
        self.lanes.clear();
        let mut read: HashMap<u32, Option<Usage>> = self
            .pending
            .iter()
            .map(|&pid| (pid, self.sampler.usage(pid)))
            .collect();
        for thread in self.threads {
            // A thread that panicked read nothing: its pids are read again
            // by [`Usages::of`].
            read.extend(thread.join().unwrap_or_default());
        }
        Usages {
            sampler: Some(self.sampler),
            read,
        }
    }
}

/// The usage of processes, read by a [`Feed`]; a process it was not asked
/// about is read when asked for.
#[derive(Debug)]
pub struct Usages<'a> {
    /// What reads a process not read yet; none for the figures lrpm gave.
    sampler: Option<&'a Sampler>,
    read: HashMap<u32, Option<Usage>>,
}

impl<'a> Usages<'a> {
    /// None read yet: every process is read when asked for.
    #[cfg(test)]
    pub fn new(sampler: &'a Sampler) -> Self {
        Usages {
            sampler: Some(sampler),
            read: HashMap::new(),
        }
    }

    /// The usage lrpm gave with its status (`usage`): each job's process's
    /// CPU time over its life until the figure was read, and its memory
    /// then. A process lrpm gave no figure of (it could not read it: the
    /// process had just ended) has none.
    pub fn given(jobs: &[JobStatus], given: &HashMap<u32, ProcessUsage>) -> Self {
        let read = jobs
            .iter()
            .filter_map(|job| {
                let pid = job.pid?;
                let usage = given.get(&pid).map(|usage| {
                    let elapsed = job.started_at.map_or(0.0, |at| usage.at - at);
                    Usage {
                        cpu_percent: if elapsed > 0.0 {
                            100.0 * usage.cpu_seconds / elapsed
                        } else {
                            0.0
                        },
                        rss_bytes: usage.rss_bytes,
                    }
                });
                Some((pid, usage))
            })
            .collect();
        Usages {
            sampler: None,
            read,
        }
    }

    /// The usage of process `pid`.
    pub fn of(&self, pid: u32) -> Option<Usage> {
        match self.read.get(&pid) {
            Some(usage) => *usage,
            None => self.sampler?.usage(pid),
        }
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
        // Enough pids for the threads: this process and ones that do not
        // exist.
        let me = std::process::id();
        let usages = std::thread::scope(|scope| {
            let mut feed = Feed::new(scope, &sampler);
            feed.push(me);
            for pid in (1..2000).map(|n| u32::MAX - n) {
                feed.push(pid);
            }
            feed.finish()
        });
        assert!(usages.of(me).is_some());
        assert_eq!(usages.of(u32::MAX - 7), None);
        assert!(Usages::new(&sampler).of(me).is_some());
    }
}
