//! Forwarding of workers' stdout and stderr to lrpm's own, line by line.
//!
//! # Theory of operation
//!
//! Each worker's stdout and stderr is a pipe read by a small task on the
//! supervisor's runtime while it has something to read; an idle pipe waits
//! without a task (the `idle` module: a new worker's pipes, and a pipe that
//! stayed empty for [`IDLE_AFTER`]), and gets a task again when it becomes
//! readable or hangs up. The task cuts what it reads into lines (a line
//! longer than [`MAX_LINE`] into pieces of that size), prefixes each with
//! the job id, and queues it for one dedicated thread that drains the queue
//! and does the blocking writes to lrpm's stdout and stderr, so a slow
//! terminal or a full pipe downstream blocks only that thread. It writes
//! to the descriptors directly (the `stdio` module's `write_all`), not
//! through `std::io::Stdout`/`Stderr`: a write blocked on a full pipe holds
//! no lock that the event loop, or lrpm's log, would wait on. A write that
//! fails loses its lines, which are counted (`stdio::Recovery`) and
//! reported once a write succeeds again; nothing panics. The queue is
//! bounded in bytes ([`QUEUE_BYTES`]), not in lines: a line takes its size
//! from a shared budget when it is queued and gives it back once written.
//! When the budget is spent the reader tasks wait, which in turn leaves the
//! workers' own pipes full: back-pressure falls on the workers that talk
//! too much, never on the supervisor, and nothing is buffered without
//! bound (at most [`QUEUE_BYTES`] in the queue, whatever the lines'
//! lengths).
//!
//! With `--log-format json` ([`LineFormat::Json`]) each line is a JSON
//! object instead, `{"ts":…,"job":…,"stream":…,"line":…}`: `ts` is the
//! RFC 3339 time at which lrpm read the line from the pipe, `line` the
//! line's text (bytes that are not UTF-8 replaced by U+FFFD), so that a
//! log collector parses every line of lrpm's stdout and stderr alike.
//!
//! An output hub (the `hub` module) runs this same code
//! ([`Output::forward_counted`]) with its own queue and writer thread, to
//! the same stdout and stderr. Idle streams cost little: no task, no
//! buffer of their own (see the `lines` module), one prefix shared by a
//! worker's two streams.

use std::io;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lrpm_core::human;
use lrpm_core::job::JobId;

use crate::idle::{IdlePipes, NotParked};
use crate::joblog::JobLogs;
use crate::lines::{Line as PipeLine, LineReader, Next, Overlong};
use crate::logring::LogRings;
use crate::stdio::{self, Recovery, Stream};
use tokio::net::unix::pipe;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// The longest line forwarded in one piece.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// How many bytes of lines may wait for the writer thread (each line counts
/// for its length plus a small overhead for its allocation).
pub(crate) const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// How long the lines of a worker that has exited (its pipe hung up) may
/// wait for room in the queue before they are given up, counted as lost,
/// and its pipe closed. While nobody reads lrpm's stdout, a crash loop
/// would otherwise keep one descriptor per ended run, waiting forever.
const EXITED_GRACE: Duration = Duration::from_secs(5);
/// How long a pipe read by a task stays empty before it is parked with the
/// idle ones: a worker that talks often keeps its task rather than paying
/// a park and a wake-up per line.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// What a queued line costs besides its bytes (its allocation and its slot
/// in the queue), so that a flood of empty lines is bounded too.
const LINE_OVERHEAD: usize = 64;

#[derive(Debug)]
struct Line {
    stream: Stream,
    /// The prefixed line, ending with a newline.
    bytes: Vec<u8>,
    /// Its share of the queue's budget, given back when the line is dropped
    /// (written).
    _budget: OwnedSemaphorePermit,
}

/// How a worker's line is written to lrpm's stdout or stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineFormat {
    /// `[job-id] line`.
    Prefixed,
    /// `{"ts":"2026-12-06T20:01:02.123456Z","job":"job-id","stream":"stdout","line":"line"}`.
    Json,
}

impl LineFormat {
    /// [`LineFormat::Json`] if `json`, else [`LineFormat::Prefixed`].
    pub(crate) fn json_if(json: bool) -> Self {
        if json {
            LineFormat::Json
        } else {
            LineFormat::Prefixed
        }
    }

    /// What comes before each line of `job`'s `stream`: `[job] `, or the
    /// middle of the JSON object (`,"job":…,"stream":…,"line":`).
    fn prefix(self, job: &JobId, stream: Stream) -> Arc<[u8]> {
        match self {
            LineFormat::Prefixed => format!("[{job}] ").into_bytes().into(),
            LineFormat::Json => {
                let name = match stream {
                    Stream::Stderr => "stderr",
                    Stream::Stdout | Stream::Log => "stdout",
                };
                let job =
                    serde_json::to_string(job.as_str()).expect("invariant: a string serializes");
                format!(r#","job":{job},"stream":"{name}","line":"#)
                    .into_bytes()
                    .into()
            }
        }
    }

    /// The bytes of `line` as written, with its `prefix` and a newline;
    /// `at` is when it was read.
    fn format(self, prefix: &[u8], line: &[u8], at: SystemTime) -> Vec<u8> {
        match self {
            LineFormat::Prefixed => {
                let mut bytes = Vec::with_capacity(prefix.len() + line.len() + 1);
                bytes.extend_from_slice(prefix);
                bytes.extend_from_slice(line);
                bytes.push(b'\n');
                bytes
            }
            LineFormat::Json => {
                let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
                let mut bytes = Vec::with_capacity(prefix.len() + line.len() + 48);
                let _ = write!(bytes, r#"{{"ts":"{}""#, human::timestamp(since_epoch));
                bytes.extend_from_slice(prefix);
                let text = String::from_utf8_lossy(line);
                serde_json::to_writer(&mut bytes, text.as_ref())
                    .expect("invariant: a string serializes into a Vec");
                bytes.extend_from_slice(b"}\n");
                bytes
            }
        }
    }
}

/// A handle to the output writer; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    tx: mpsc::UnboundedSender<Line>,
    /// The bytes the queue may still take.
    budget: Arc<Semaphore>,
    /// How lines are written.
    format: LineFormat,
    /// The per-job log files (`--log-dir`), if lrpm writes them.
    job_logs: Option<JobLogs>,
    /// The per-job rings of recent lines (`lrpmctl logs`); `None` in an
    /// output hub, whose lines never reach lrpm.
    rings: Option<LogRings>,
    /// The pipes that wait for their next line without a task.
    idle: Arc<IdlePipes<Pipe>>,
}

/// What the forwarding of one pipe needs besides the pipe, kept while it
/// is [idle](crate::idle).
#[derive(Debug)]
struct Pipe {
    stream: Stream,
    /// What comes before each of its lines.
    prefix: Arc<[u8]>,
    /// The job, for its log file and its ring.
    job: Arc<str>,
    /// Held only to be dropped once both of a worker's pipes ended (an
    /// output hub's count).
    _done: Option<Arc<WorkerDone>>,
}

/// Reports, when dropped, that the output of one worker has ended: an output
/// hub counts the workers it holds with it.
#[derive(Debug)]
pub(crate) struct WorkerDone(mpsc::UnboundedSender<()>);

impl WorkerDone {
    /// Sends `()` on `tx` once dropped.
    pub(crate) fn new(tx: mpsc::UnboundedSender<()>) -> Self {
        Self(tx)
    }
}

impl Drop for WorkerDone {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// The writer thread; join it after every [`Output`] handle is gone to make
/// sure every queued line was written.
#[derive(Debug)]
pub(crate) struct OutputThread {
    thread: JoinHandle<()>,
    /// Disconnected when the thread ends.
    ended: std::sync::mpsc::Receiver<()>,
}

impl OutputThread {
    /// Waits until every queued line is written, for at most `timeout`
    /// (a stdout or stderr that nobody reads would keep it waiting
    /// forever); what is left then is counted as lost. Returns whether
    /// everything was written.
    pub(crate) fn join_within(self, timeout: Duration) -> bool {
        match self.ended.recv_timeout(timeout) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                stdio::abandon_pending(Stream::Stdout);
                stdio::abandon_pending(Stream::Stderr);
                false
            }
            _ => {
                let _ = self.thread.join();
                true
            }
        }
    }
}

impl Output {
    /// Starts the writer thread, which writes lines in `format`; every
    /// line goes to `job_logs` and `rings` too, if given.
    pub(crate) fn start(
        format: LineFormat,
        job_logs: Option<JobLogs>,
        rings: Option<LogRings>,
    ) -> io::Result<(Output, OutputThread)> {
        let (mut output, rx) = Output::queue(format);
        output.job_logs = job_logs;
        output.rings = rings;
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lrpm-output".into())
            .spawn(move || {
                write_lines(rx);
                drop(ended_tx);
            })?;
        Ok((output, OutputThread { thread, ended }))
    }

    /// A handle and the receiving end of its queue.
    fn queue(format: LineFormat) -> (Output, mpsc::UnboundedReceiver<Line>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
        (
            Output {
                tx,
                budget,
                format,
                job_logs: None,
                rings: None,
                idle: Arc::default(),
            },
            rx,
        )
    }

    /// Reopens the per-job log files; returns whether there are any.
    pub(crate) fn reopen_logs(&self) -> bool {
        self.job_logs
            .as_ref()
            .inspect(|logs| logs.reopen())
            .is_some()
    }

    /// The rings of recent lines, if this process keeps them.
    pub(crate) fn rings(&self) -> Option<&LogRings> {
        self.rings.as_ref()
    }

    /// What the per-job logs lost, if lrpm writes them.
    pub(crate) fn job_logs_status(&self) -> Option<lrpm_core::status::StreamStatus> {
        self.job_logs.as_ref().map(JobLogs::status)
    }

    /// Forwards a worker's stdout and stderr until they are closed.
    pub(crate) fn forward(&self, job: &JobId, stdout: OwnedFd, stderr: OwnedFd) {
        self.forward_here(job, stdout, stderr, None);
    }

    /// Forwards a worker's stdout and stderr in this process; `done` is
    /// dropped once both have ended.
    pub(crate) fn forward_counted(
        &self,
        job: &JobId,
        stdout: OwnedFd,
        stderr: OwnedFd,
        done: WorkerDone,
    ) {
        self.forward_here(job, stdout, stderr, Some(Arc::new(done)));
    }

    fn forward_here(
        &self,
        job: &JobId,
        stdout: OwnedFd,
        stderr: OwnedFd,
        done: Option<Arc<WorkerDone>>,
    ) {
        // One allocation for both streams' prefix, where they share it.
        let mut prefix = self.format.prefix(job, Stream::Stdout);
        let job_id = Arc::<str>::from(job.as_str());
        for (fd, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
            if stream == Stream::Stderr && self.format == LineFormat::Json {
                prefix = self.format.prefix(job, stream);
            }
            let pipe = Pipe {
                stream,
                prefix: prefix.clone(),
                job: job_id.clone(),
                _done: done.clone(),
            };
            // A new worker has written nothing yet: its pipe waits with
            // the idle ones.
            match rustix::io::ioctl_fionbio(&fd, true) {
                Ok(()) => self.park(fd, pipe, false),
                Err(e) => tracing::warn!(%job, "cannot read the output of the worker: {e}"),
            }
        }
    }

    /// Parks `fd`, an empty pipe, with the idle ones (`again`: it was
    /// parked before); starts the task that wakes them if none runs. A
    /// pipe that cannot be parked is read by a task of its own, for good.
    fn park(&self, fd: OwnedFd, pipe: Pipe, again: bool) {
        match self.idle.park(fd, pipe, again) {
            Ok(false) => {}
            Ok(true) => {
                tokio::spawn(wake_idle(self.clone()));
            }
            Err(NotParked {
                fd,
                payload: pipe,
                error,
            }) => {
                tracing::debug!(job = %pipe.job, "an idle output pipe is read by a task: {error}");
                self.read(fd, pipe, false);
            }
        }
    }

    /// Starts the task that reads `fd`, a non-blocking pipe, until its end
    /// or, if `park`, until it is empty again.
    fn read(&self, fd: OwnedFd, pipe: Pipe, park: bool) {
        match pipe::Receiver::from_owned_fd_unchecked(fd) {
            Ok(rx) => {
                tokio::spawn(forward_pipe(rx, pipe, self.clone(), park));
            }
            Err(e) => tracing::warn!(job = %pipe.job, "cannot read the output of the worker: {e}"),
        }
    }
}

/// Hands every idle pipe that has something to read (or has ended) to a
/// task of its own, until no pipe is idle ([`IdlePipes::wait`]).
async fn wake_idle(output: Output) {
    let mut woken = Vec::new();
    while output.idle.wait(&mut woken).await {
        for (fd, pipe) in woken.drain(..) {
            output.read(fd, pipe, true);
        }
    }
}

/// Reads one pipe to its end, queueing prefixed lines (and copying them to
/// `output`'s per-job logs and rings); with `park`, only until it has been
/// empty for [`IDLE_AFTER`], holding no partial line, then
/// [parks](Output::park) it again. Drops its `done` at the end.
///
/// A task runs only while its pipe has something to read: an idle pipe
/// waits in [`IdlePipes`] (see the `idle` module), unless it could not be
/// parked. What waits for room in the queue (a timer, the semaphore's
/// wait) is boxed ([`wait_to_send`]) so that it takes room only while a
/// line waits.
async fn forward_pipe(rx: pipe::Receiver, pipe: Pipe, output: Output, park: bool) {
    let Pipe {
        stream,
        ref prefix,
        ref job,
        ..
    } = pipe;
    let mut reader = LineReader::new(rx, MAX_LINE, Overlong::Split);
    loop {
        // A read error ends the stream like its end does: the worker is gone.
        let line = match reader.next_or_idle(park.then_some(IDLE_AFTER)).await {
            Ok(Next::Line(PipeLine::Full(line))) => line,
            Ok(Next::Idle) => {
                match reader.into_fd() {
                    Ok(fd) => output.park(fd, pipe, true),
                    Err(e) => tracing::warn!(%job, "cannot read the output of the worker: {e}"),
                }
                return;
            }
            Ok(Next::Line(PipeLine::TooLong) | Next::End) | Err(_) => return,
        };
        if let Some(logs) = &output.job_logs {
            logs.line(job, &line, SystemTime::now());
        }
        if let Some(rings) = &output.rings {
            rings.push(job, &line);
        }
        let waited = match output.try_send(prefix, &line, stream) {
            Sent::Queued => {
                // Yields when the task's share of tokio's budget is spent,
                // as the wait for room did: a pipe's chunk holds thousands
                // of lines, and a flooding worker must not keep the event
                // loop (on the same thread) waiting through all of them.
                tokio::task::coop::consume_budget().await;
                continue;
            }
            Sent::Closed => return,
            Sent::Full => Box::pin(wait_to_send(&output, prefix, &line, stream, &reader)).await,
        };
        match waited {
            Sent::Queued => {}
            Sent::Closed => return,
            Sent::Full => {
                // The worker has exited and its lines found no room.
                stdio::add_lost(stream, 1 + reader.discard(), 0, None);
                return;
            }
        }
    }
}

/// Queues a line once the queue has room: a live worker waits for it
/// (back-pressure); an exited one's lines are given up ([`Sent::Full`])
/// after [`EXITED_GRACE`].
async fn wait_to_send(
    output: &Output,
    prefix: &[u8],
    line: &[u8],
    stream: Stream,
    reader: &LineReader,
) -> Sent {
    let send = output.send(prefix, line, stream);
    tokio::pin!(send);
    loop {
        tokio::select! {
            sent = &mut send => return if sent.is_ok() { Sent::Queued } else { Sent::Closed },
            () = tokio::time::sleep(EXITED_GRACE) => {
                if reader.hung_up() {
                    return Sent::Full;
                }
            }
        }
    }
}

/// How a line's queueing went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Queued,
    /// No room (without waiting), or none before the worker's lines were
    /// given up (after waiting).
    Full,
    /// The writer thread is gone (lrpm is exiting).
    Closed,
}

/// The writer thread is gone (lrpm is exiting).
#[derive(Debug)]
struct Closed;

/// A line's share of the queue's budget: its bytes and [`LINE_OVERHEAD`]. A
/// line is at most [`MAX_LINE`] plus its prefix, far below the budget and
/// `u32::MAX`.
fn cost(len: usize) -> Result<u32, Closed> {
    u32::try_from((len + LINE_OVERHEAD).min(QUEUE_BYTES)).map_err(|_| Closed)
}

impl Output {
    /// Queues one prefixed line if the queue has room for it now, without
    /// waiting ([`Sent::Full`] when it has not).
    fn try_send(&self, prefix: &[u8], line: &[u8], stream: Stream) -> Sent {
        use tokio::sync::TryAcquireError;
        let at = SystemTime::now();
        let len = prefix.len() + line.len() + 1;
        let Ok(cost_len) = cost(len) else {
            return Sent::Closed;
        };
        let mut budget = match self.budget.clone().try_acquire_many_owned(cost_len) {
            Ok(budget) => budget,
            Err(TryAcquireError::NoPermits) => return Sent::Full,
            Err(TryAcquireError::Closed) => return Sent::Closed,
        };
        let bytes = self.format.format(prefix, line, at);
        // A JSON line's escapes make it longer: it takes the rest too, or
        // waits as a whole (the permit and the bytes are dropped).
        if bytes.len() > len {
            let Ok(cost_bytes) = cost(bytes.len()) else {
                return Sent::Closed;
            };
            let held = u32::try_from(budget.num_permits()).unwrap_or(u32::MAX);
            let more = cost_bytes.saturating_sub(held);
            if more > 0 {
                match self.budget.clone().try_acquire_many_owned(more) {
                    Ok(extra) => budget.merge(extra),
                    Err(TryAcquireError::NoPermits) => return Sent::Full,
                    Err(TryAcquireError::Closed) => return Sent::Closed,
                }
            }
        }
        match self.enqueue(stream, bytes, budget) {
            Ok(()) => Sent::Queued,
            Err(Closed) => Sent::Closed,
        }
    }

    /// Queues one prefixed line, once the queue has room for it.
    async fn send(&self, prefix: &[u8], line: &[u8], stream: Stream) -> Result<(), Closed> {
        let at = SystemTime::now();
        let len = prefix.len() + line.len() + 1;
        let mut budget = self
            .budget
            .clone()
            .acquire_many_owned(cost(len)?)
            .await
            .map_err(|_| Closed)?;
        let bytes = self.format.format(prefix, line, at);
        // A JSON line's escapes make it longer: it takes the rest too.
        if bytes.len() > len {
            let held = u32::try_from(budget.num_permits()).unwrap_or(u32::MAX);
            let more = cost(bytes.len())?.saturating_sub(held);
            if more > 0 {
                let extra = self
                    .budget
                    .clone()
                    .acquire_many_owned(more)
                    .await
                    .map_err(|_| Closed)?;
                budget.merge(extra);
            }
        }
        self.enqueue(stream, bytes, budget)
    }

    /// Hands a formatted line, with its share of the budget, to the writer
    /// thread.
    fn enqueue(
        &self,
        stream: Stream,
        bytes: Vec<u8>,
        budget: OwnedSemaphorePermit,
    ) -> Result<(), Closed> {
        Recovery::queued(stream, 1);
        self.tx
            .send(Line {
                stream,
                bytes,
                _budget: budget,
            })
            .map_err(|_| Closed)
    }
}

/// How many bytes the writer thread gathers for one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Lines gathered for one write to one of lrpm's streams.
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
    recovery: Recovery,
}

impl Batch {
    fn new(stream: Stream) -> Self {
        Self {
            bytes: Vec::with_capacity(WRITE_BATCH),
            lines: 0,
            recovery: Recovery::new(stream),
        }
    }

    fn push(&mut self, line: &[u8]) {
        self.bytes.extend_from_slice(line);
        self.lines += 1;
    }

    /// Writes the gathered lines; a failure loses them, and is counted.
    fn flush(&mut self, stream: Stream) {
        if self.lines == 0 {
            return;
        }
        let result = stdio::write_all(stream, &self.bytes);
        self.recovery.written(self.lines, result);
        self.bytes.clear();
        self.lines = 0;
        if self.bytes.capacity() > 4 * WRITE_BATCH {
            self.bytes.shrink_to(WRITE_BATCH);
        }
    }
}

/// The writer thread: writes lines in order, in batches of about
/// [`WRITE_BATCH`] bytes, writing whatever it holds whenever the queue runs
/// dry. Write errors (a closed or full stdout) lose lines, never the
/// thread.
fn write_lines(mut rx: mpsc::UnboundedReceiver<Line>) {
    let mut out = Batch::new(Stream::Stdout);
    let mut err = Batch::new(Stream::Stderr);
    while let Some(line) = rx.blocking_recv() {
        let mut next = Some(line);
        while let Some(line) = next {
            let (batch, stream) = match line.stream {
                Stream::Stderr => (&mut err, Stream::Stderr),
                _ => (&mut out, Stream::Stdout),
            };
            batch.push(&line.bytes);
            // The line's budget is back once it is in a batch: the
            // batches add at most WRITE_BATCH bytes each to the queue's.
            drop(line);
            if batch.bytes.len() >= WRITE_BATCH {
                batch.flush(stream);
            }
            next = rx.try_recv().ok();
        }
        out.flush(Stream::Stdout);
        err.flush(Stream::Stderr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn collect(input: &'static [u8]) -> Vec<Vec<u8>> {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            let _ = w.write_all(input);
        });
        let (output, mut rx) = Output::queue(LineFormat::Prefixed);
        let rx_pipe = pipe::Receiver::from_owned_fd(r).expect("receiver");
        let pipe = Pipe {
            stream: Stream::Stdout,
            prefix: b"[j] ".to_vec().into(),
            job: "j".into(),
            _done: None,
        };
        forward_pipe(rx_pipe, pipe, output, false).await;
        let mut lines = vec![];
        while let Ok(l) = rx.try_recv() {
            lines.push(l.bytes);
        }
        lines
    }

    #[tokio::test]
    async fn lines_are_prefixed_and_a_partial_last_line_is_kept() {
        let lines = collect(b"one\ntwo\n\nthree").await;
        assert_eq!(
            lines,
            vec![
                b"[j] one\n".to_vec(),
                b"[j] two\n".to_vec(),
                b"[j] \n".to_vec(),
                b"[j] three\n".to_vec()
            ]
        );
    }

    #[test]
    fn a_json_line_is_one_object_whatever_the_bytes() {
        let job = JobId::from("evil\"\n\u{1b}[2J");
        let prefix = LineFormat::Json.prefix(&job, Stream::Stderr);
        let at = UNIX_EPOCH + Duration::new(1_796_587_262, 123_456_789);
        let bytes = LineFormat::Json.format(&prefix, b"a \"quote\"\t\x1b[31m \xff\x00", at);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(bytes.ends_with(b"}\n"));
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("one JSON object");
        assert_eq!(value["ts"], "2026-12-06T20:01:02.123456Z");
        assert_eq!(value["job"], job.as_str());
        assert_eq!(value["stream"], "stderr");
        assert_eq!(value["line"], "a \"quote\"\t\u{1b}[31m \u{fffd}\u{0}");
    }

    #[tokio::test]
    async fn the_queue_holds_a_bounded_number_of_bytes() {
        let (output, mut rx) = Output::queue(LineFormat::Prefixed);
        let line = vec![b'x'; MAX_LINE];
        let mut queued = 0;
        // Without a writer, sending stops once the budget is spent.
        loop {
            let send = output.send(b"[j] ", &line, Stream::Stdout);
            match tokio::time::timeout(std::time::Duration::from_millis(50), send).await {
                Ok(result) => {
                    result.expect("queued");
                    queued += 1;
                }
                Err(_) => break,
            }
        }
        assert_eq!(queued, QUEUE_BYTES / (MAX_LINE + 5 + LINE_OVERHEAD));
        // A written line makes room again.
        drop(rx.recv().await);
        output
            .send(b"[j] ", &line, Stream::Stdout)
            .await
            .expect("room again");
    }

    #[tokio::test]
    async fn an_idle_pipe_waits_without_a_task_and_its_lines_still_come() {
        let (output, mut rx) = Output::queue(LineFormat::Prefixed);
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        output.forward_counted(&JobId::from("j"), out_r, err_r, WorkerDone::new(done_tx));
        // Both pipes wait in the epoll set, not in tasks of their own.
        assert_eq!(output.idle.len(), 2);
        let mut out_w = std::fs::File::from(out_w);
        for line in ["one", "two"] {
            writeln!(out_w, "{line}").expect("write");
            let got = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
            let got = got.expect("forwarded in time").expect("a line");
            assert_eq!(got.bytes, format!("[j] {line}\n").into_bytes());
            // Once empty for a while, the pipe is parked again.
            let parked = tokio::time::timeout(Duration::from_secs(60), async {
                while output.idle.len() < 2 {
                    tokio::time::sleep(IDLE_AFTER / 4).await;
                }
            });
            parked.await.expect("parked again in time");
        }
        // Their ends are seen while parked: the worker is reported done.
        drop((out_w, err_w));
        let done = tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await;
        assert_eq!(done.expect("both ends seen in time"), Some(()));
        assert_eq!(output.idle.len(), 0);
    }

    #[tokio::test]
    async fn long_lines_are_cut_into_bounded_pieces() {
        static BIG: std::sync::LazyLock<Vec<u8>> =
            std::sync::LazyLock::new(|| vec![b'x'; MAX_LINE * 2 + 10]);
        let lines = collect(&BIG).await;
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), 4 + MAX_LINE + 1);
        assert_eq!(lines[2].len(), 4 + 10 + 1);
    }
}
