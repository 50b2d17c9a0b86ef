//! The workers' CPU time and resident memory for `lrpmctl status` (the
//! `usage` of a status answer), read from `/proc/PID/stat` on blocking
//! threads and kept for [`MAX_AGE`].
//!
//! Reading `/proc/PID/stat` costs the kernel some 5 to 10 µs a process
//! (the path walk, the owner checks, formatting 52 numbers): 50 to 100 ms
//! of CPU for a farm of 10,000, whoever reads it. lrpm reads it while its
//! event loop encodes the rest of the answer, on every core, and keeps each
//! figure for [`MAX_AGE`]: a status asked again within that time (an
//! operator's `watch lrpmctl status`, a dashboard) reads `/proc` only for
//! the processes it has no recent figure of. Every figure goes out with
//! the time it was read ([`ProcessUsage::at`]), and a process's figure is
//! never given for another one that got its pid ([`Key`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lrpm_core::status::ProcessUsage;

/// How old a figure may be and still be given without reading `/proc`
/// again; an older one is read again. Figures older than this are dropped
/// at the next read and by [`UsageCache::expire`], run this long after a
/// read: the cache holds the figures of the last second's statuses only,
/// and nothing once lrpm is left alone (about 1 MB for 10,000 workers).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);

/// Below this many reads, they are made on the calling thread: threads
/// cost more than they save.
const MIN_THREADED: usize = 256;

/// A process: its pid and when it started, so that a figure of a process
/// that ended is not given for a new one the kernel gave its pid.
type Key = (u32, Instant);

/// The workers' last figures.
#[derive(Debug, Default)]
pub(crate) struct UsageCache {
    figures: Mutex<HashMap<Key, (ProcessUsage, Instant)>>,
}

impl UsageCache {
    /// The usage of each of `processes` (a live job's pid and start), by
    /// pid: `/proc` is read for those without a figure younger than
    /// [`MAX_AGE`], on every core. A process that cannot be read (it just
    /// ended) is left out. Blocks: run it on a blocking thread.
    pub(crate) fn usage_of(&self, processes: &[Key]) -> HashMap<u32, ProcessUsage> {
        // Concurrent statuses wait for each other's reads, then find the
        // figures fresh.
        let mut figures = self.figures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        figures.retain(|_, (_, read)| now.duration_since(*read) < MAX_AGE);
        let stale: Vec<Key> = processes
            .iter()
            .filter(|key| !figures.contains_key(key))
            .copied()
            .collect();
        let read = read_all(&stale);
        let read_at = Instant::now();
        for (key, usage) in stale.into_iter().zip(read) {
            if let Some(usage) = usage {
                figures.insert(key, (usage, read_at));
            }
        }
        processes
            .iter()
            .filter_map(|key| Some((key.0, figures.get(key)?.0)))
            .collect()
    }

    /// Drops the figures older than [`MAX_AGE`], and the map's room once
    /// none is left. Never waits: while a read holds the figures, it does
    /// nothing (that read is followed by its own `expire`).
    pub(crate) fn expire(&self) {
        let Ok(mut figures) = self.figures.try_lock() else {
            return;
        };
        let now = Instant::now();
        figures.retain(|_, (_, read)| now.duration_since(*read) < MAX_AGE);
        if figures.is_empty() {
            *figures = HashMap::new();
        }
    }
}

/// Reads the usage of each of `keys`, in order, on every core when they
/// are many.
fn read_all(keys: &[Key]) -> Vec<Option<ProcessUsage>> {
    let units = Units::get();
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(8);
    if keys.len() < MIN_THREADED || threads < 2 {
        return keys.iter().map(|&(pid, _)| units.usage(pid)).collect();
    }
    let chunk = keys.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = keys.chunks(chunk);
        // This thread reads the first part while the others read theirs.
        let first = parts.next().unwrap_or_default();
        let others: Vec<_> = parts
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&(pid, _)| units.usage(pid))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut read: Vec<Option<ProcessUsage>> =
            first.iter().map(|&(pid, _)| units.usage(pid)).collect();
        for (part, thread) in keys.chunks(chunk).skip(1).zip(others) {
            // A thread that panicked read nothing: its processes go without
            // a figure (the table shows `-`).
            read.extend(thread.join().unwrap_or_else(|_| vec![None; part.len()]));
        }
        read
    })
}

/// How the kernel counts: clock ticks per second and the page size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Units {
    ticks: f64,
    page: u64,
}

impl Units {
    /// This machine's.
    pub(crate) fn get() -> Units {
        Units {
            ticks: rustix::param::clock_ticks_per_second() as f64,
            page: rustix::param::page_size() as u64,
        }
    }

    /// The page size in bytes.
    #[cfg(feature = "metrics")]
    pub(crate) fn page(self) -> u64 {
        self.page
    }

    /// What `/proc/PID/stat` says of `pid` now.
    pub(crate) fn usage(self, pid: u32) -> Option<ProcessUsage> {
        let stat = lrpm_process::procfs::read_stat(pid)?;
        Some(ProcessUsage {
            cpu_seconds: (stat.utime + stat.stime) as f64 / self.ticks,
            rss_bytes: stat.rss_pages * self.page,
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_live_processes_and_keeps_their_figures() {
        let cache = UsageCache::default();
        let me = (std::process::id(), Instant::now());
        // Enough processes for the threads: this one and pids that no
        // process has.
        let mut keys = vec![me];
        keys.extend((1..1000).map(|n| (u32::MAX - n, me.1)));
        let usage = cache.usage_of(&keys);
        assert_eq!(usage.len(), 1, "{usage:?}");
        let first = usage[&me.0];
        assert!(first.rss_bytes > 0);
        assert!(first.cpu_seconds >= 0.0);
        // Asked again at once: the same figure, not read again.
        assert_eq!(cache.usage_of(&[me])[&me.0], first);
        // Another process with the same pid (a later start) is read anew.
        let later = (me.0, me.1 + Duration::from_nanos(1));
        let again = cache.usage_of(&[later])[&me.0];
        assert!(again.at >= first.at);
        assert_eq!(cache.figures.lock().map(|f| f.len()).unwrap_or(0), 2);
        // Expiring keeps young figures and drops old ones with their room.
        cache.expire();
        assert_eq!(cache.figures.lock().map(|f| f.len()).unwrap_or(0), 2);
        if let Ok(mut figures) = cache.figures.lock() {
            for (_, read) in figures.values_mut() {
                *read -= MAX_AGE;
            }
        }
        cache.expire();
        let figures = cache.figures.lock().expect("not poisoned");
        assert_eq!((figures.len(), figures.capacity()), (0, 0));
    }
}
