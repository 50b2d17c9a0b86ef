//! Per-job log files (`--log-dir DIR`): each job's stdout and stderr lines,
//! each with an RFC 3339 timestamp, appended to `DIR/ID.log`.
//!
//! # Theory of operation
//!
//! The output forwarding (the `output` module) hands every line it reads
//! to [`JobLogs::line`], which only queues it for one writer thread
//! (`lrpm-joblogs`); nothing in the event loop, or in a pipe reader, ever
//! touches a file. The queue is bounded in bytes ([`QUEUE_BYTES`]); when it
//! is full (the disk is slower than the workers for that long) a line is
//! dropped and counted rather than waited for: the files are a copy of
//! what lrpm's stdout and stderr carry, and must not slow the workers
//! down or hold the loop. The count is `supervisor.output.job_logs` in
//! status, and the log says so once the files are written again.
//!
//! The thread holds each file open (`O_APPEND | O_CREAT`, mode 0640) with
//! a small buffer, flushed whenever the queue runs dry, and knows its
//! size. Before a line that would take the file past `--log-max-bytes`, it
//! rotates: `ID.log.(K-1)` → `ID.log.K` … `ID.log` → `ID.log.1` (`K` is
//! `--log-keep`, the oldest is replaced), and opens a new `ID.log`. A
//! rotation therefore falls between two lines: none is cut, lost or
//! written twice. [`JobLogs::reopen`] (SIGUSR1, `lrpmctl reopen-logs`)
//! queues a marker: the lines queued before it go to the files open then
//! (which logrotate may have renamed), the ones after to `DIR/ID.log`
//! opened anew. At most [`MAX_OPEN`] files are open at once (the least
//! recently written is closed first), so that a large farm does not spend
//! lrpm's descriptors on them.
//!
//! A failed write (a full disk, EIO) loses the lines of that write; they
//! are counted, the error is kept for status, and the file is reopened
//! on the next line. The farm keeps running.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lrpm_core::human;
use lrpm_core::status::StreamStatus;

/// How many bytes of lines may wait for the writer thread.
pub(crate) const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// What a queued line costs besides its bytes.
const LINE_OVERHEAD: usize = 64;
/// How many job files the writer keeps open at most.
const MAX_OPEN: usize = 128;
/// The length of a line's timestamp (`2026-12-06T20:01:02.123456Z`).
const TIMESTAMP_LEN: usize = 27;
/// How often at most the writer logs what it lost.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// The buffer of one open file.
const FILE_BUFFER: usize = 8 * 1024;

/// Where and how the per-job logs are written.
#[derive(Debug, Clone)]
pub(crate) struct JobLogConfig {
    /// The directory of the `ID.log` files.
    pub(crate) dir: PathBuf,
    /// A file is rotated before it would grow past this many bytes.
    pub(crate) max_bytes: u64,
    /// How many rotated files are kept (`ID.log.1` newest).
    pub(crate) keep: u32,
}

/// What goes to the writer thread.
#[derive(Debug)]
enum Msg {
    /// A line of job `job`, formatted, with its newline.
    Line { job: Arc<str>, bytes: Vec<u8> },
    /// Close every file: the next line opens `ID.log` anew.
    Reopen,
}

/// What the writer lost, for status; only ever added to.
#[derive(Debug, Default)]
struct Health {
    dropped: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The handle to the per-job logs; clones share them.
#[derive(Debug, Clone)]
pub(crate) struct JobLogs {
    tx: mpsc::Sender<Msg>,
    queued: Arc<AtomicUsize>,
    health: Arc<Health>,
}

impl JobLogs {
    /// Creates `config.dir` if needed and starts the writer thread.
    pub(crate) fn start(config: JobLogConfig) -> io::Result<JobLogs> {
        std::fs::create_dir_all(&config.dir)?;
        let (tx, rx) = mpsc::channel();
        let logs = JobLogs {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            health: Arc::new(Health::default()),
        };
        let writer = Writer {
            config,
            files: HashMap::new(),
            clock: 0,
            queued: logs.queued.clone(),
            health: logs.health.clone(),
            reported: (0, 0),
            reported_at: None,
        };
        std::thread::Builder::new()
            .name("lrpm-joblogs".into())
            .spawn(move || writer.run(&rx))?;
        Ok(logs)
    }

    /// Queues `line` (without its newline) of job `job`, read at `at`;
    /// drops and counts it when the queue is full. Never waits.
    pub(crate) fn line(&self, job: &Arc<str>, line: &[u8], at: SystemTime) {
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        // The timestamp, a space, the line and its newline: what the
        // writer gives back once written.
        let cost = TIMESTAMP_LEN + 1 + line.len() + 1 + LINE_OVERHEAD;
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                let after = queued.checked_add(cost)?;
                (after <= QUEUE_BYTES).then_some(after)
            })
            .is_ok();
        if !admitted {
            self.health.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut bytes = Vec::with_capacity(cost - LINE_OVERHEAD);
        let _ = write!(bytes, "{} ", human::timestamp(since_epoch));
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        debug_assert_eq!(bytes.len() + LINE_OVERHEAD, cost);
        let sent = self.tx.send(Msg::Line {
            job: job.clone(),
            bytes,
        });
        if sent.is_err() {
            let _ = self
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    Some(queued.saturating_sub(cost))
                });
            self.health.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes every file once the lines queued so far are written: the
    /// next line of each job opens `DIR/ID.log` anew (after an external
    /// logrotate renamed it).
    pub(crate) fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// What the per-job logs lost, for status.
    pub(crate) fn status(&self) -> StreamStatus {
        StreamStatus {
            lines_dropped: self.health.dropped.load(Ordering::Relaxed),
            write_errors: self.health.errors.load(Ordering::Relaxed),
            last_error: self.health.last_error.lock().map_or(None, |e| e.clone()),
        }
    }
}

/// One open log file.
#[derive(Debug)]
struct Open {
    out: io::BufWriter<File>,
    /// Its size, including what the buffer holds.
    size: u64,
    /// When it was last written (the writer's clock), to close the least
    /// recently written first.
    used: u64,
    /// Lines in the buffer, lost if its flush fails.
    buffered: u64,
}

/// The writer thread's state.
#[derive(Debug)]
struct Writer {
    config: JobLogConfig,
    files: HashMap<Arc<str>, Open>,
    /// Counts lines, to order the files by last use.
    clock: u64,
    queued: Arc<AtomicUsize>,
    health: Arc<Health>,
    /// Dropped lines and errors as of the last report in lrpm's log.
    reported: (u64, u64),
    /// When the last report was logged.
    reported_at: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    Msg::Line { job, bytes } => {
                        let cost = bytes.len() + LINE_OVERHEAD;
                        self.write(&job, &bytes);
                        let _ = self.queued.fetch_update(
                            Ordering::AcqRel,
                            Ordering::Acquire,
                            |queued| Some(queued.saturating_sub(cost)),
                        );
                    }
                    Msg::Reopen => {
                        self.flush_all();
                        self.files.clear();
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush_all();
            self.report();
        }
        self.flush_all();
    }

    /// The path of job `job`'s log, or of its `n`th rotated file.
    fn path(&self, job: &str, n: u32) -> PathBuf {
        let name = if n == 0 {
            format!("{job}.log")
        } else {
            format!("{job}.log.{n}")
        };
        self.config.dir.join(name)
    }

    fn write(&mut self, job: &Arc<str>, bytes: &[u8]) {
        self.clock += 1;
        if !self.files.contains_key(job) {
            if self.files.len() >= MAX_OPEN {
                self.close_least_recent();
            }
            match open(&self.path(job, 0)) {
                Ok(open) => {
                    self.files.insert(job.clone(), open);
                }
                Err(e) => {
                    self.failed(1, &e);
                    return;
                }
            }
        }
        let len = bytes.len() as u64;
        let over = self
            .files
            .get(job)
            .is_some_and(|f| f.size > 0 && f.size + len > self.config.max_bytes);
        if over {
            if let Err(e) = self.rotate(job) {
                self.failed(0, &e);
            }
            if !self.files.contains_key(job) {
                match open(&self.path(job, 0)) {
                    Ok(open) => {
                        self.files.insert(job.clone(), open);
                    }
                    Err(e) => {
                        self.failed(1, &e);
                        return;
                    }
                }
            }
        }
        let clock = self.clock;
        let file = self.files.get_mut(job).expect("invariant: opened above");
        file.used = clock;
        match file.out.write_all(bytes) {
            Ok(()) => {
                file.size += len;
                file.buffered += 1;
            }
            Err(e) => {
                let lost = file.buffered + 1;
                self.files.remove(job);
                self.failed(lost, &e);
            }
        }
    }

    /// Rotates job `job`'s log: flushes and closes it, shifts the kept
    /// files by one, the oldest dropped.
    fn rotate(&mut self, job: &Arc<str>) -> io::Result<()> {
        if let Some(mut file) = self.files.remove(job) {
            if let Err(e) = file.out.flush() {
                self.failed(file.buffered, &e);
            }
        }
        if self.config.keep == 0 {
            return remove_if_there(&self.path(job, 0));
        }
        remove_if_there(&self.path(job, self.config.keep))?;
        for n in (1..self.config.keep).rev() {
            rename_if_there(&self.path(job, n), &self.path(job, n + 1))?;
        }
        rename_if_there(&self.path(job, 0), &self.path(job, 1))
    }

    fn close_least_recent(&mut self) {
        let oldest = self
            .files
            .iter()
            .min_by_key(|(_, f)| f.used)
            .map(|(job, _)| job.clone());
        if let Some(job) = oldest {
            if let Some(mut file) = self.files.remove(&job) {
                if let Err(e) = file.out.flush() {
                    self.failed(file.buffered, &e);
                }
            }
        }
    }

    fn flush_all(&mut self) {
        let mut failures = Vec::new();
        self.files.retain(|_, file| match file.out.flush() {
            Ok(()) => {
                file.buffered = 0;
                true
            }
            Err(e) => {
                failures.push((file.buffered, e));
                false
            }
        });
        for (lost, e) in failures {
            self.failed(lost, &e);
        }
    }

    /// Counts `lost` lines and a failed write.
    fn failed(&self, lost: u64, e: &io::Error) {
        self.health.dropped.fetch_add(lost, Ordering::Relaxed);
        self.health.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.health.last_error.lock() {
            *last = Some(format!("{}: {e}", self.config.dir.display()));
        }
    }

    /// Logs what was lost since the last report: at the first failure,
    /// and then at most once every [`REPORT_EVERY`] (a full disk fails
    /// every write).
    fn report(&mut self) {
        let dropped = self.health.dropped.load(Ordering::Relaxed);
        let errors = self.health.errors.load(Ordering::Relaxed);
        if (dropped, errors) == self.reported
            || self
                .reported_at
                .is_some_and(|at| at.elapsed() < REPORT_EVERY)
        {
            return;
        }
        self.reported_at = Some(Instant::now());
        let (lines, failed) = (dropped - self.reported.0, errors - self.reported.1);
        self.reported = (dropped, errors);
        let last = self
            .health
            .last_error
            .lock()
            .map_or(None, |e| e.clone())
            .unwrap_or_default();
        if failed == 0 {
            tracing::warn!(
                "per-job logs: {} dropped while the queue was full (the disk is slower \
                 than the workers)",
                human::count(usize::try_from(lines).unwrap_or(usize::MAX), "line")
            );
        } else {
            tracing::error!(
                "per-job logs: {failed} writes failed, {} lost (last error: {last}); \
                 the farm keeps running",
                human::count(usize::try_from(lines).unwrap_or(usize::MAX), "line")
            );
        }
    }
}

/// Opens `path` for appending, creating it (0640).
fn open(path: &Path) -> io::Result<Open> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok(Open {
        out: io::BufWriter::with_capacity(FILE_BUFFER, file),
        size,
        used: 0,
        buffered: 0,
    })
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_there(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn lines_of(dir: &Path, name: &str) -> Vec<String> {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_once(' ').expect("a timestamp").1.to_owned())
            .collect()
    }

    /// Job logs in `dir` with `max_bytes` and `keep`, which got the lines
    /// `line 00000`… of `n` from `job`, wrote them all, and were reopened
    /// (their files closed by the writer soon after).
    fn written(dir: &Path, max_bytes: u64, keep: u32, job: &str, n: usize) -> JobLogs {
        let logs = JobLogs::start(JobLogConfig {
            dir: dir.to_owned(),
            max_bytes,
            keep,
        })
        .expect("start");
        let job: Arc<str> = job.into();
        for i in 0..n {
            logs.line(&job, format!("line {i:05}").as_bytes(), SystemTime::now());
        }
        wait_for("every line written", || {
            logs.queued.load(Ordering::Acquire) == 0
        });
        logs.reopen();
        logs
    }

    #[test]
    fn rotation_keeps_every_line_whole_and_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = 2000;
        let logs = written(dir.path(), 4096, 100, "j", n);
        wait_for("the files closed", || {
            let mut all = Vec::new();
            for k in (1..=100).rev() {
                all.extend(lines_of(dir.path(), &format!("j.log.{k}")));
            }
            all.extend(lines_of(dir.path(), "j.log"));
            all.len() == n
        });
        let mut all = Vec::new();
        for k in (1..=100).rev() {
            let name = format!("j.log.{k}");
            let size = std::fs::metadata(dir.path().join(&name)).map_or(0, |m| m.len());
            assert!(size <= 4096, "{name}: {size} bytes");
            all.extend(lines_of(dir.path(), &name));
        }
        all.extend(lines_of(dir.path(), "j.log"));
        let expected: Vec<String> = (0..n).map(|i| format!("line {i:05}")).collect();
        assert_eq!(all, expected);
        assert_eq!(logs.status().lines_dropped, 0);
    }

    #[test]
    fn only_keep_files_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _logs = written(dir.path(), 100, 2, "k", 50);
        wait_for("the newest line", || {
            lines_of(dir.path(), "k.log").last().map(String::as_str) == Some("line 00049")
        });
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["k.log", "k.log.1", "k.log.2"]);
    }
}
