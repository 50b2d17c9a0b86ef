//! The datagram socket the workers report to, and the roster of which
//! worker process currently runs each job.
//!
//! Each worker sends one datagram `"ID PID NS"` as its `main` starts
//! (see `src/bin/worker.rs`). A dedicated thread receives them as fast as
//! they come, so that no worker ever waits on a full socket queue
//! (`net.unix.max_dgram_qlen` is small), and hands them to the main thread
//! through a channel.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One worker's report: it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The job id (the benchmark numbers its jobs `0..n`).
    pub id: u32,
    /// The worker's pid.
    pub pid: u32,
    /// `CLOCK_MONOTONIC` at the start of its `main`, in nanoseconds.
    pub ns: u64,
}

impl Hello {
    /// Parses `"ID PID NS"`.
    pub fn parse(datagram: &[u8]) -> Option<Hello> {
        let text = std::str::from_utf8(datagram).ok()?;
        let mut fields = text.split(' ');
        let hello = Hello {
            id: fields.next()?.parse().ok()?,
            pid: fields.next()?.parse().ok()?,
            ns: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(hello)
    }
}

/// The receiving end of the workers' reports.
#[derive(Debug)]
pub struct Collector {
    path: PathBuf,
    rx: Receiver<Hello>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// Binds the socket at `path` and starts the receiving thread.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        let socket =
            UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
        // The thread checks for the end of the run this often.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("collector".into())
                .spawn(move || {
                    let mut buf = [0u8; 256];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(len) = socket.recv(&mut buf) else {
                            continue;
                        };
                        match Hello::parse(&buf[..len]) {
                            Some(hello) => {
                                if tx.send(hello).is_err() {
                                    break;
                                }
                            }
                            None => eprintln!(
                                "lrpm-bench: ignoring a malformed report: {:?}",
                                String::from_utf8_lossy(&buf[..len])
                            ),
                        }
                    }
                })
                .context("starting the collector thread")?
        };
        Ok(Self {
            path: path.to_path_buf(),
            rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path, which every worker gets on its command line.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next report, if one comes within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Hello> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Discards every report received so far.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Which worker process runs each job of a farm, as the reports tell.
#[derive(Debug)]
pub struct Roster {
    pids: Vec<Option<u32>>,
    running: usize,
}

impl Roster {
    /// A roster of a farm of `jobs` jobs numbered `0..jobs`, none reported.
    pub fn new(jobs: usize) -> Self {
        Self {
            pids: vec![None; jobs],
            running: 0,
        }
    }

    /// The pid of job `id`'s current worker.
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.pids.get(id).copied().flatten()
    }

    fn record(&mut self, hello: Hello) {
        if let Some(slot) = self.pids.get_mut(hello.id as usize) {
            if slot.is_none() {
                self.running += 1;
            }
            *slot = Some(hello.pid);
        }
    }

    /// Receives reports, recording each, until one satisfies `done`, which
    /// is returned; fails after `timeout`.
    pub fn wait_for(
        &mut self,
        collector: &Collector,
        timeout: Duration,
        mut done: impl FnMut(&Hello) -> bool,
    ) -> anyhow::Result<Hello> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(hello) = collector.recv_timeout(left) else {
                bail!("no expected worker report within {timeout:?}");
            };
            self.record(hello);
            if done(&hello) {
                return Ok(hello);
            }
        }
    }

    /// Receives reports until every job has reported; returns the latest
    /// `main` time among the reports received. Fails after `timeout`, saying
    /// how many reported.
    pub fn wait_all(&mut self, collector: &Collector, timeout: Duration) -> anyhow::Result<u64> {
        let stamps = self.wait_all_stamps(collector, timeout)?;
        Ok(stamps.into_iter().max().unwrap_or(0))
    }

    /// [`Roster::wait_all`], returning the `main` time of every report
    /// received (a mass start's curve).
    pub fn wait_all_stamps(
        &mut self,
        collector: &Collector,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u64>> {
        let deadline = Instant::now() + timeout;
        let mut stamps = Vec::with_capacity(self.pids.len());
        while self.running < self.pids.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(hello) = collector.recv_timeout(left) else {
                bail!(
                    "only {} of {} workers reported within {timeout:?}",
                    self.running,
                    self.pids.len()
                );
            };
            self.record(hello);
            stamps.push(hello.ns);
        }
        Ok(stamps)
    }

    /// The pids of the current workers.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.pids.iter().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        assert_eq!(
            Hello::parse(b"12 345 678"),
            Some(Hello {
                id: 12,
                pid: 345,
                ns: 678
            })
        );
        assert_eq!(Hello::parse(b"12 345"), None);
        assert_eq!(Hello::parse(b"12 345 678 9"), None);
        assert_eq!(Hello::parse(b"x 345 678"), None);
    }

    #[test]
    fn roster_counts_jobs_once() {
        let mut r = Roster::new(2);
        r.record(Hello {
            id: 0,
            pid: 1,
            ns: 1,
        });
        r.record(Hello {
            id: 0,
            pid: 2,
            ns: 2,
        });
        r.record(Hello {
            id: 7,
            pid: 3,
            ns: 3,
        });
        assert_eq!(r.running, 1);
        assert_eq!(r.pid(0), Some(2));
        assert_eq!(r.pid(1), None);
    }
}
