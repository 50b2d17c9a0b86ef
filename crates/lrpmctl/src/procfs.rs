//! CPU and memory of a process, read from `/proc` (as `ps` does, without
//! running it).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;

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

/// Reads the usage of processes as their pids are found, on other threads
/// (a table of thousands costs some 10 µs a process, nearly all in the
/// kernel, so it is read on every core), while the caller goes on: reading
/// and decoding lrpm's answer, laying out the table. [`Feed::finish`]
/// gives what was read.
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
            sampler: self.sampler,
            read,
        }
    }
}

/// The usage of processes, read by a [`Feed`]; a process it was not asked
/// about is read when asked for.
#[derive(Debug)]
pub struct Usages<'a> {
    sampler: &'a Sampler,
    read: HashMap<u32, Option<Usage>>,
}

impl<'a> Usages<'a> {
    /// None read yet: every process is read when asked for.
    #[cfg(test)]
    pub fn new(sampler: &'a Sampler) -> Self {
        Usages {
            sampler,
            read: HashMap::new(),
        }
    }

    /// The usage of process `pid`.
    pub fn of(&self, pid: u32) -> Option<Usage> {
        match self.read.get(&pid) {
            Some(usage) => *usage,
            None => self.sampler.usage(pid),
        }
    }
}

/// Finds the pids in a status answer as it arrives, before it is decoded:
/// every number after a `"pid":` key. A JSON string cannot hold that text
/// unescaped except at the end of an odd key, so what it finds is nearly
/// always a job's pid, and a pid found in error costs one read of `/proc`;
/// a job whose pid it missed is read after the decoding ([`Usages::of`]).
#[derive(Debug, Default)]
pub struct PidScan {
    /// Where the search resumes.
    at: usize,
}

impl PidScan {
    /// The key that comes before a pid.
    const KEY: &'static [u8] = b"\"pid\":";

    /// Searches the answer received so far, `buf` (which grows from one
    /// call to the next), giving each pid found to `found`.
    pub fn scan(&mut self, buf: &[u8], mut found: impl FnMut(u32)) {
        while let Some(offset) = buf[self.at.min(buf.len())..]
            .windows(Self::KEY.len())
            .position(|w| w == Self::KEY)
        {
            let digits_at = self.at + offset + Self::KEY.len();
            let digits = buf[digits_at..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits_at + digits == buf.len() {
                // The number may go on in the next read.
                self.at += offset;
                return;
            }
            if let Some(pid) = std::str::from_utf8(&buf[digits_at..digits_at + digits])
                .ok()
                .and_then(|d| d.parse().ok())
            {
                found(pid);
            }
            self.at = digits_at + digits;
        }
        // A key cut by the end of the read is searched again next time.
        self.at = buf.len().saturating_sub(Self::KEY.len() - 1).max(self.at);
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

    #[test]
    fn finds_the_pids_of_an_answer_in_pieces() {
        let answer = br#"{"ok":true,"supervisor":{"pid":7,"x":"a\"pid\":9"},"jobs":[{"id":"1","pid":12345,"n":"pid"},{"pid":null},{"id":"2","pid":678}]}"#;
        for cut in 0..answer.len() {
            let mut scan = PidScan::default();
            let mut found = Vec::new();
            let mut buf = answer[..cut].to_vec();
            scan.scan(&buf, |pid| found.push(pid));
            buf.extend_from_slice(&answer[cut..]);
            scan.scan(&buf, |pid| found.push(pid));
            assert_eq!(found, [7, 12345, 678], "cut at {cut}");
        }
    }
}
