//! lrpm's own stdout and stderr: writes that never hold a lock the event
//! loop needs, the health of each stream, and lrpm's log through a lossy
//! queue.
//!
//! # Theory of operation
//!
//! Three streams leave lrpm: its log (on stderr), its workers' stdout and
//! its workers' stderr ([`Stream`]). None of them is written by the event
//! loop itself:
//!
//! - lrpm's log: [`LogWriter`] is what `tracing` formats each event into;
//!   it only queues the line, in a queue bounded in bytes
//!   ([`LOG_QUEUE_BYTES`]), for the log thread ([`start_log_thread`]) that
//!   writes it. When the queue is full the line is dropped and counted,
//!   never waited for. The event loop holds the lines of a worker's exit
//!   back ([`hold_log`]) until its replacement is spawned
//!   ([`release_log`]): handing a line over wakes the log thread, which
//!   then competes with the spawn for the CPUs; held lines count against
//!   the queue's bound all the same.
//! - workers' output: the `output` module's writer thread, with
//!   back-pressure on the workers instead.
//!
//! Both threads write with [`write_all`], straight to descriptor 1 or 2:
//! not through `std::io::Stdout`/`Stderr`, whose lock a blocked write
//! holds, and whose `eprintln!` panics when the write fails. The two
//! threads that share descriptor 2 take [`STDERR_LINES`] around a write so
//! that their lines do not interleave; the event loop never takes it.
//!
//! A failed write loses its lines and is counted; nothing is retried and
//! nothing panics. Each stream's counters ([`Health`]) go to the status
//! document ([`output_status`]) and decide lrpm's exit code at shutdown
//! ([`output_was_lost`]); the thread that writes a stream reports, with a
//! log line, what was lost once a write succeeds again ([`Recovery`]).
//!
//! Architecture invariant: a base-level module; it imports nothing from
//! the crate.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use lrpm_core::status::{OutputStatus, StreamStatus};

/// How many bytes of log lines may wait for the log thread (each line
/// counts for its length plus [`LOG_LINE_OVERHEAD`]).
pub(crate) const LOG_QUEUE_BYTES: usize = 1024 * 1024;
/// What a queued log line costs besides its bytes.
const LOG_LINE_OVERHEAD: usize = 64;
/// The most bytes the log thread writes in one call.
const LOG_BATCH: usize = 64 * 1024;

/// One of the streams that leave lrpm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// lrpm's own log, on its stderr.
    Log,
    /// Workers' stdout, on lrpm's stdout.
    Stdout,
    /// Workers' stderr, on lrpm's stderr.
    Stderr,
}

impl Stream {
    fn health(self) -> &'static Health {
        &HEALTH[self as usize]
    }

    /// The descriptor the stream is written to.
    fn fd(self) -> BorrowedFd<'static> {
        match self {
            Stream::Stdout => rustix::stdio::stdout(),
            Stream::Log | Stream::Stderr => rustix::stdio::stderr(),
        }
    }

    /// What the stream carries, and where to, in a report.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Stream::Log => ("lrpm's log", "stderr"),
            Stream::Stdout => ("workers' stdout", "stdout"),
            Stream::Stderr => ("workers' stderr", "stderr"),
        }
    }
}

/// What a stream lost since lrpm started; every field is only ever added
/// to, by the threads that queue and write the stream, and read by the
/// event loop for the status without waiting on them.
#[derive(Debug)]
struct Health {
    /// Lines dropped: a full log queue, or the lines of a failed write.
    dropped: AtomicU64,
    /// Writes that failed.
    errors: AtomicU64,
    /// Lines queued and not yet written or dropped.
    pending: AtomicU64,
    /// `dropped` and `errors` as of the last write that succeeded: the
    /// losses the stream has recovered from (an output hub reports them).
    settled_dropped: AtomicU64,
    settled_errors: AtomicU64,
    /// The last write error. Only taken to copy a short string in or out,
    /// never across a write.
    last_error: Mutex<Option<String>>,
}

impl Health {
    const fn new() -> Self {
        Self {
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            settled_dropped: AtomicU64::new(0),
            settled_errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().map_or(None, |e| e.clone())
    }
}

static HEALTH: [Health; 3] = [Health::new(), Health::new(), Health::new()];

/// Held around each write to descriptor 2 by the two threads that write
/// it, so that lrpm's log lines and workers' stderr lines never
/// interleave. Never taken by the event loop.
static STDERR_LINES: Mutex<()> = Mutex::new(());

/// Writes all of `buf` to `stream`'s descriptor. The error is the one
/// that stopped the write (part of `buf` may have been written).
pub(crate) fn write_all(stream: Stream, mut buf: &[u8]) -> io::Result<()> {
    let _lines = match stream {
        Stream::Stdout => None,
        Stream::Log | Stream::Stderr => {
            Some(STDERR_LINES.lock().unwrap_or_else(|e| e.into_inner()))
        }
    };
    let fd = stream.fd();
    while !buf.is_empty() {
        match rustix::io::write(fd.as_fd(), buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            // Someone else made the descriptor non-blocking: wait a little,
            // as a blocking write would.
            Err(rustix::io::Errno::AGAIN) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The bookkeeping of the thread that writes a stream: counts what a
/// write loses, and reports once a write succeeds again.
#[derive(Debug)]
pub(crate) struct Recovery {
    stream: Stream,
    /// The counters as of the last report.
    reported_dropped: u64,
    reported_errors: u64,
}

impl Recovery {
    /// The bookkeeping of `stream`'s writer.
    pub(crate) fn new(stream: Stream) -> Self {
        Self {
            stream,
            reported_dropped: 0,
            reported_errors: 0,
        }
    }

    /// `lines` lines were queued for the stream.
    pub(crate) fn queued(stream: Stream, lines: u64) {
        stream.health().pending.fetch_add(lines, Ordering::Relaxed);
    }

    /// Accounts for a write of `lines` lines that ended with `result`;
    /// after a success that follows losses, logs what was lost.
    pub(crate) fn written(&mut self, lines: u64, result: io::Result<()>) {
        let health = self.stream.health();
        health.pending.fetch_sub(lines, Ordering::Relaxed);
        match result {
            Err(e) => {
                health.dropped.fetch_add(lines, Ordering::Relaxed);
                health.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = health.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
            Ok(()) => {
                let (dropped, errors) = (
                    health.dropped.load(Ordering::Relaxed),
                    health.errors.load(Ordering::Relaxed),
                );
                health.settled_dropped.store(dropped, Ordering::Relaxed);
                health.settled_errors.store(errors, Ordering::Relaxed);
                self.report();
            }
        }
    }

    /// Logs what was lost since the last report, if anything was.
    fn report(&mut self) {
        let health = self.stream.health();
        let dropped = health.dropped.load(Ordering::Relaxed);
        let errors = health.errors.load(Ordering::Relaxed);
        if dropped == self.reported_dropped && errors == self.reported_errors {
            return;
        }
        let (lines, failed) = (
            dropped - self.reported_dropped,
            errors - self.reported_errors,
        );
        (self.reported_dropped, self.reported_errors) = (dropped, errors);
        let last = health.last_error().unwrap_or_default();
        tracing::warn!("{}", describe_loss(self.stream, lines, failed, &last));
    }
}

/// The report of `lines` lines of `stream` lost by `failed` failed writes
/// (none: dropped while the stream was blocked), the last failing with
/// `last`.
pub(crate) fn describe_loss(stream: Stream, lines: u64, failed: u64, last: &str) -> String {
    let (what, fd) = stream.names();
    if failed == 0 {
        format!("{lines} lines of {what} dropped while {fd} was blocked")
    } else {
        format!("{what}: {failed} writes to {fd} failed, {lines} lines lost (last error: {last})")
    }
}

/// What a stream lost since the process started, as an output hub reports
/// it to lrpm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Losses {
    /// Lines dropped.
    pub(crate) dropped: u64,
    /// Writes that failed.
    pub(crate) errors: u64,
    /// `dropped` as of the last write that succeeded.
    pub(crate) settled_dropped: u64,
    /// `errors` as of the last write that succeeded.
    pub(crate) settled_errors: u64,
    /// The last write error.
    pub(crate) last_error: Option<String>,
}

/// What `stream` lost in this process so far.
pub(crate) fn losses(stream: Stream) -> Losses {
    let health = stream.health();
    Losses {
        dropped: health.dropped.load(Ordering::Relaxed),
        errors: health.errors.load(Ordering::Relaxed),
        settled_dropped: health.settled_dropped.load(Ordering::Relaxed),
        settled_errors: health.settled_errors.load(Ordering::Relaxed),
        last_error: health.last_error(),
    }
}

/// Adds losses of `stream` that happened in another process (an output
/// hub) to this process's counters, and so to the status and the exit
/// code; `last_error` replaces the last error when given.
pub(crate) fn add_lost(stream: Stream, dropped: u64, errors: u64, last_error: Option<String>) {
    let health = stream.health();
    health.dropped.fetch_add(dropped, Ordering::Relaxed);
    health.errors.fetch_add(errors, Ordering::Relaxed);
    if let Some(e) = last_error {
        if let Ok(mut last) = health.last_error.lock() {
            *last = Some(e);
        }
    }
}

/// The status document's `supervisor.output`.
pub(crate) fn output_status() -> OutputStatus {
    let stream = |s: Stream| {
        let health = s.health();
        StreamStatus {
            lines_dropped: health.dropped.load(Ordering::Relaxed),
            write_errors: health.errors.load(Ordering::Relaxed),
            last_error: health.last_error(),
        }
    };
    OutputStatus {
        log: stream(Stream::Log),
        stdout: stream(Stream::Stdout),
        stderr: stream(Stream::Stderr),
        job_logs: None,
    }
}

/// Counts the lines still queued for `stream` as lost: its writer is given
/// up on at exit.
pub(crate) fn abandon_pending(stream: Stream) {
    let health = stream.health();
    let pending = health.pending.swap(0, Ordering::Relaxed);
    health.dropped.fetch_add(pending, Ordering::Relaxed);
}

/// Whether any stream lost a line since lrpm started.
pub(crate) fn output_was_lost() -> bool {
    HEALTH
        .iter()
        .any(|h| h.dropped.load(Ordering::Relaxed) > 0 || h.errors.load(Ordering::Relaxed) > 0)
}

/// Log lines on their way to the log thread: one, or those a turn of the
/// event loop held back ([`hold_log`]).
#[derive(Debug)]
struct LogLine {
    bytes: Vec<u8>,
    /// How many lines `bytes` holds.
    lines: u64,
    /// What they count for in [`LOG_QUEUED`].
    cost: usize,
}

/// The lines this thread holds back, from [`hold_log`] until
/// [`release_log`].
#[derive(Debug, Default)]
struct Held {
    bytes: Vec<u8>,
    lines: u64,
    cost: usize,
    /// The queue, from the first line held.
    tx: Option<mpsc::Sender<LogLine>>,
}

thread_local! {
    /// Set on the event loop's thread while it holds its lines back.
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Holds back the log lines this thread writes, until [`release_log`]:
/// the event loop, from a worker's exit until its replacement is spawned,
/// so that the log thread is not woken in between. The lines are admitted
/// (counted against [`LOG_QUEUE_BYTES`]) as they are written.
pub(crate) fn hold_log() {
    HELD.with(|held| {
        held.borrow_mut().get_or_insert_with(Held::default);
    });
}

/// Hands the lines held since [`hold_log`] to the log thread, at once, and
/// stops holding them back.
pub(crate) fn release_log() {
    let Some(held) = HELD.with(|held| held.borrow_mut().take()) else {
        return;
    };
    let Some(tx) = held.tx else {
        return;
    };
    let (lines, cost) = (held.lines, held.cost);
    let line = LogLine {
        bytes: held.bytes,
        lines,
        cost,
    };
    if tx.send(line).is_err() {
        lost(lines, cost);
    }
}

/// Counts `lines` admitted (for `cost` bytes) as lost: the log thread is
/// gone (it cannot be, short of a panic).
fn lost(lines: u64, cost: usize) {
    let health = Stream::Log.health();
    LOG_QUEUED.fetch_sub(cost, Ordering::AcqRel);
    health.pending.fetch_sub(lines, Ordering::Relaxed);
    health.dropped.fetch_add(lines, Ordering::Relaxed);
}

/// The queue's side that `tracing` writes to: a [`MakeWriter`] whose
/// writers queue, or drop, and never wait.
///
/// [`MakeWriter`]: tracing_subscriber::fmt::MakeWriter
#[derive(Debug, Clone)]
pub(crate) struct LogWriter {
    tx: mpsc::Sender<LogLine>,
}

/// The bytes queued for the log thread and not yet written.
static LOG_QUEUED: AtomicUsize = AtomicUsize::new(0);

impl LogWriter {
    fn queue(&self, line: &[u8]) {
        let cost = line.len() + LOG_LINE_OVERHEAD;
        let admitted = LOG_QUEUED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + cost <= LOG_QUEUE_BYTES).then_some(queued + cost)
            })
            .is_ok();
        let health = Stream::Log.health();
        if !admitted {
            health.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Recovery::queued(Stream::Log, 1);
        let held = HELD.with(|held| match held.borrow_mut().as_mut() {
            Some(held) => {
                held.bytes.extend_from_slice(line);
                held.lines += 1;
                held.cost += cost;
                held.tx.get_or_insert_with(|| self.tx.clone());
                true
            }
            None => false,
        });
        if held {
            return;
        }
        let one = LogLine {
            bytes: line.to_vec(),
            lines: 1,
            cost,
        };
        if self.tx.send(one).is_err() {
            lost(1, cost);
        }
    }
}

impl io::Write for LogWriter {
    /// Queues `buf`, one formatted event; never fails, never waits.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.queue(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Starts the log thread, and returns the writer `tracing` formats into.
pub(crate) fn start_log_thread() -> io::Result<LogWriter> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("lrpm-log".into())
        .spawn(move || write_log(&rx))?;
    Ok(LogWriter { tx })
}

/// The log thread: writes queued lines in batches of at most [`LOG_BATCH`]
/// bytes. It lives as long as the process (the global subscriber holds
/// the queue); [`flush_log`] waits for it at exit.
fn write_log(rx: &mpsc::Receiver<LogLine>) {
    let mut recovery = Recovery::new(Stream::Log);
    let mut batch = Vec::with_capacity(LOG_BATCH);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let (mut lines, mut cost) = (0, 0);
        while let Some(line) = next {
            batch.extend_from_slice(&line.bytes);
            lines += line.lines;
            cost += line.cost;
            next = if batch.len() < LOG_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let result = write_all(Stream::Log, &batch);
        batch.clear();
        if batch.capacity() > 4 * LOG_BATCH {
            batch.shrink_to(LOG_BATCH);
        }
        LOG_QUEUED.fetch_sub(cost, Ordering::AcqRel);
        recovery.written(lines, result);
    }
}

/// Waits until the log queue is written, for at most `timeout`; whatever is
/// left then is counted as dropped. Returns whether it was all written.
pub(crate) fn flush_log(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Stream::Log.health().pending.load(Ordering::Relaxed) > 0 {
        if Instant::now() >= deadline {
            abandon_pending(Stream::Log);
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lines_reach_the_queue_together_once_released() {
        let (tx, rx) = mpsc::channel();
        let writer = LogWriter { tx };
        hold_log();
        writer.queue(b"exited\n");
        writer.queue(b"started\n");
        assert!(rx.try_recv().is_err(), "held back until released");
        release_log();
        let line = rx.try_recv().expect("the held lines, released");
        assert_eq!(line.bytes, b"exited\nstarted\n");
        assert_eq!(line.lines, 2);
        assert_eq!(line.cost, 15 + 2 * LOG_LINE_OVERHEAD);
        // Not held any more: the next line goes at once.
        writer.queue(b"more\n");
        assert_eq!(rx.try_recv().expect("sent at once").bytes, b"more\n");
        // No log thread reads this queue: give the budget back.
        LOG_QUEUED.fetch_sub(line.cost + 5 + LOG_LINE_OVERHEAD, Ordering::AcqRel);
        Stream::Log.health().pending.fetch_sub(3, Ordering::Relaxed);
    }

    #[test]
    fn a_full_log_queue_drops_and_counts_instead_of_waiting() {
        // No thread reads this queue: every line stays queued.
        let (tx, _rx) = mpsc::channel();
        let writer = LogWriter { tx };
        let line = vec![b'x'; 1000];
        let fits = LOG_QUEUE_BYTES / (line.len() + LOG_LINE_OVERHEAD);
        let before = Stream::Log.health().dropped.load(Ordering::Relaxed);
        let started = Instant::now();
        for _ in 0..fits + 10 {
            writer.queue(&line);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let dropped = Stream::Log.health().dropped.load(Ordering::Relaxed) - before;
        // Other tests of this binary may log meanwhile: at least the ten
        // lines over the budget were dropped.
        assert!(dropped >= 10, "dropped {dropped}");
        assert!(output_was_lost());
    }
}
