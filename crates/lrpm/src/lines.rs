//! Reading a pipe line by line, with a bound on what is held.
//!
//! # Theory of operation
//!
//! A supervisor holds thousands of pipes that are idle almost all the
//! time, so a reader keeps no buffer of its own while it waits: it reads
//! into a chunk shared by every reader of its thread ([`CHUNK`] bytes,
//! allocated once), and copies out only what it has to keep, which, once
//! its complete lines are taken, is the partial line at the end (if any).
//! Before it waits again it gives back what its buffer holds beyond that
//! partial line. An idle stream read by a task therefore costs that task,
//! its registration with the runtime and the bytes of its unfinished line,
//! nothing more; [`LineReader::next_or_idle`] says when a reader holding
//! nothing has waited long enough to be given up, so that its pipe can wait
//! without a task (the `idle` module).

use std::cell::RefCell;
use std::io;
use std::time::Duration;

use tokio::net::unix::pipe;

/// How much is read from a pipe at a time.
const CHUNK: usize = 64 * 1024;

thread_local! {
    /// The chunk every reader of this thread reads into.
    static SHARED_CHUNK: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What to do with a line longer than the reader's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overlong {
    /// Cut it into pieces of the limit (log lines).
    Split,
    /// Report it once and drop it up to its newline (documents).
    Reject,
}

/// One line read by a [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line (or a piece of one), without its newline.
    Full(Vec<u8>),
    /// A line longer than the limit, dropped.
    TooLong,
}

/// Reads a pipe line by line, never holding more than its limit plus one
/// read.
///
/// The lines of one read are taken by moving an offset over the buffer
/// (`start`), not by draining it: a 64 KiB read of short lines would
/// otherwise move the rest of the read once per line. What is left (a
/// partial line) moves to the front once, before the next read.
#[derive(Debug)]
pub(crate) struct LineReader {
    rx: pipe::Receiver,
    buf: Vec<u8>,
    /// Where the bytes not yet returned begin in `buf`: everything before
    /// it is taken, and dropped before the next read.
    start: usize,
    /// How much of `buf[start..]` is known to hold no newline.
    scanned: usize,
    max: usize,
    overlong: Overlong,
    /// Dropping the rest of a rejected line.
    skipping: bool,
    eof: bool,
}

/// What [`LineReader::next_or_idle`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// A line.
    Line(Line),
    /// The end of the stream.
    End,
    /// The pipe stayed empty for the time given and nothing is held: the
    /// reader can be given up ([`LineReader::into_fd`]) without losing a
    /// byte.
    Idle,
}

impl LineReader {
    pub(crate) fn new(rx: pipe::Receiver, max: usize, overlong: Overlong) -> Self {
        Self {
            rx,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max,
            overlong,
            skipping: false,
            eof: false,
        }
    }

    /// The pipe, deregistered from the runtime and still non-blocking;
    /// whatever the reader held is dropped (nothing, after
    /// [`Next::Idle`]).
    pub(crate) fn into_fd(self) -> io::Result<std::os::fd::OwnedFd> {
        self.rx.into_nonblocking_fd()
    }

    /// The next `len` bytes not yet returned, which it then skips.
    fn take(&mut self, len: usize) -> Vec<u8> {
        let taken = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        taken
    }

    /// Whether every writer of the pipe has closed it (the worker and what
    /// it started have exited), looked at without reading: lines may still
    /// wait in the pipe or in this reader.
    pub(crate) fn hung_up(&self) -> bool {
        if self.eof {
            return true;
        }
        let mut fds = [rustix::event::PollFd::new(
            &self.rx,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).is_ok()
            && fds[0].revents().contains(rustix::event::PollFlags::HUP)
    }

    /// Gives up on what is left of a pipe that [hung up](Self::hung_up):
    /// reads it to its end without waiting and returns how many lines
    /// (a partial last one included) are dropped with what was buffered.
    pub(crate) fn discard(mut self) -> u64 {
        let mut lines = 0;
        let mut partial = self.buf.len() > self.start;
        let mut count = |bytes: &[u8], partial: &mut bool| {
            for piece in bytes.split_inclusive(|&b| b == b'\n') {
                if piece.ends_with(b"\n") {
                    lines += 1;
                    *partial = false;
                } else {
                    *partial = true;
                }
            }
        };
        let held = std::mem::take(&mut self.buf);
        count(&held[self.start..], &mut partial);
        // The writers are gone, so this ends: at most a pipe's capacity.
        let _ = SHARED_CHUNK.with_borrow_mut(|chunk| {
            if chunk.len() < CHUNK {
                chunk.resize(CHUNK, 0);
            }
            loop {
                match self.rx.try_read(chunk) {
                    Ok(0) => return Ok(()),
                    Ok(n) => count(&chunk[..n], &mut partial),
                    Err(e) => return Err(e),
                }
            }
        });
        lines + u64::from(partial)
    }

    /// The next line; `None` at the end of the stream (a last line without a
    /// newline is still a line). Cancel-safe: what was read stays buffered.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Line>> {
        match self.next_or_idle(None).await? {
            Next::Line(line) => Ok(Some(line)),
            Next::End | Next::Idle => Ok(None),
        }
    }

    /// The next line, or the end of the stream; with `idle_after`,
    /// [`Next::Idle`] once the pipe stayed empty that long while the
    /// reader holds nothing (no partial line, no rejected line being
    /// skipped). Cancel-safe: what was read stays buffered.
    pub(crate) async fn next_or_idle(&mut self, idle_after: Option<Duration>) -> io::Result<Next> {
        loop {
            // The newline's position, counted from `start`.
            let newline = self.buf[self.start + self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|pos| self.scanned + pos);
            if let Some(end) = newline {
                self.scanned = 0;
                if std::mem::take(&mut self.skipping) {
                    // The end of a rejected line.
                    self.start += end + 1;
                    continue;
                }
                if end <= self.max {
                    let line = self.take(end);
                    self.start += 1;
                    return Ok(Next::Line(Line::Full(line)));
                }
                return Ok(Next::Line(match self.overlong {
                    Overlong::Split => {
                        // The newline is still ahead, past this piece.
                        self.scanned = end - self.max;
                        Line::Full(self.take(self.max))
                    }
                    Overlong::Reject => {
                        self.start += end + 1;
                        Line::TooLong
                    }
                }));
            }
            let pending = self.buf.len() - self.start;
            self.scanned = pending;
            if self.skipping {
                self.buf.clear();
                self.start = 0;
                self.scanned = 0;
            } else if pending > self.max {
                match self.overlong {
                    Overlong::Split => {
                        self.scanned = pending - self.max;
                        return Ok(Next::Line(Line::Full(self.take(self.max))));
                    }
                    Overlong::Reject => {
                        self.buf = Vec::new();
                        self.start = 0;
                        self.scanned = 0;
                        self.skipping = true;
                        return Ok(Next::Line(Line::TooLong));
                    }
                }
            }
            // What was taken goes, once per read: the partial line left
            // moves to the front.
            self.buf.drain(..self.start);
            self.start = 0;
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(Next::End);
                }
                self.scanned = 0;
                return Ok(Next::Line(Line::Full(std::mem::take(&mut self.buf))));
            }
            // An idle reader holds no more than its partial line: with
            // thousands of workers, a chunk kept per pipe while it waits
            // would be most of lrpm's memory, and, once touched, resident.
            if self.buf.is_empty() {
                if self.buf.capacity() > 0 {
                    self.buf = Vec::new();
                }
            } else if self.buf.capacity() > self.buf.len() + self.buf.len() / 2 {
                self.buf.shrink_to_fit();
            }
            match idle_after {
                Some(after) if self.buf.is_empty() && !self.skipping => {
                    match tokio::time::timeout(after, self.rx.readable()).await {
                        Ok(readable) => readable?,
                        Err(_) => return Ok(Next::Idle),
                    }
                }
                _ => self.rx.readable().await?,
            }
            let read = SHARED_CHUNK.with_borrow_mut(|chunk| {
                if chunk.len() < CHUNK {
                    chunk.resize(CHUNK, 0);
                }
                let n = self.rx.try_read(chunk)?;
                self.buf.extend_from_slice(&chunk[..n]);
                Ok::<_, io::Error>(n)
            });
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    async fn read_lines(input: Vec<u8>, max: usize, overlong: Overlong) -> Vec<Line> {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            let _ = w.write_all(&input);
        });
        let rx = pipe::Receiver::from_owned_fd(r).expect("receiver");
        let mut reader = LineReader::new(rx, max, overlong);
        let mut lines = vec![];
        while let Some(line) = reader.next().await.expect("read") {
            lines.push(line);
        }
        lines
    }

    fn full(s: &str) -> Line {
        Line::Full(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn documents_longer_than_the_limit_are_dropped_up_to_their_newline() {
        let mut input = b"{\"a\":1}\n".to_vec();
        input.extend(vec![b'x'; 100_000]);
        input.extend(b"\n{}\nlast".iter());
        let lines = read_lines(input, 1000, Overlong::Reject).await;
        assert_eq!(
            lines,
            vec![full("{\"a\":1}"), Line::TooLong, full("{}"), full("last")]
        );
    }

    #[tokio::test]
    async fn many_short_lines_of_one_read_are_taken_in_place() {
        // A thousand 64-byte lines: one read of the 64 KiB chunk, or a few.
        let lines: Vec<String> = (0..1000).map(|i| format!("{i:063}")).collect();
        let mut input = lines.join("\n").into_bytes();
        input.extend(b"\npartial");
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            let _ = w.write_all(&input);
        });
        let rx = pipe::Receiver::from_owned_fd(r).expect("receiver");
        let mut reader = LineReader::new(rx, 1000, Overlong::Split);
        let mut read = vec![];
        while let Some(line) = reader.next().await.expect("read") {
            if read.is_empty() {
                // The first read holds more than one line, and the first is
                // taken by moving the offset: the buffer was not moved.
                assert_eq!(reader.start, 64);
                assert!(reader.buf.len() > 64, "{}", reader.buf.len());
            }
            read.push(line);
        }
        writer.join().expect("writer");
        let mut expected: Vec<Line> = lines.iter().map(|l| full(l)).collect();
        expected.push(full("partial"));
        assert_eq!(read, expected);
    }

    #[tokio::test]
    async fn lines_split_across_reads_are_joined() {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        let (tx, rx_step) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            for piece in [&b"one\ntw"[..], b"o\nthr", b"ee", b"\n"] {
                let _ = w.write_all(piece);
                // The next piece once the reader has taken what it could.
                if rx_step.recv().is_err() {
                    return;
                }
            }
        });
        let rx = pipe::Receiver::from_owned_fd(r).expect("receiver");
        let mut reader = LineReader::new(rx, 1000, Overlong::Reject);
        let mut read = vec![];
        loop {
            let line = tokio::select! {
                line = reader.next() => line.expect("read"),
                () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {
                    let _ = tx.send(());
                    continue;
                }
            };
            match line {
                Some(line) => read.push(line),
                None => break,
            }
        }
        drop(tx);
        writer.join().expect("writer");
        assert_eq!(read, [full("one"), full("two"), full("three")]);
    }

    #[tokio::test]
    async fn long_log_lines_are_cut_into_pieces() {
        let mut input = vec![b'y'; 2500];
        input.extend(b"\nz\n".iter());
        let lines = read_lines(input, 1000, Overlong::Split).await;
        let lens: Vec<usize> = lines
            .iter()
            .map(|l| match l {
                Line::Full(b) => b.len(),
                Line::TooLong => usize::MAX,
            })
            .collect();
        assert_eq!(lens, [1000, 1000, 500, 1]);
    }

    #[tokio::test]
    async fn a_hang_up_is_seen_with_lines_still_unread_and_they_are_counted() {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        let mut w = std::fs::File::from(w);
        w.write_all(b"one\ntwo\nthree\npart").expect("write");
        let rx = pipe::Receiver::from_owned_fd(r).expect("receiver");
        let mut reader = LineReader::new(rx, 1024, Overlong::Split);
        assert!(matches!(reader.next().await, Ok(Some(Line::Full(l))) if l == b"one"));
        assert!(!reader.hung_up(), "the writer is still there");
        drop(w);
        assert!(
            reader.hung_up(),
            "the writer is gone, lines are still unread"
        );
        // "two", "three" and the partial "part".
        assert_eq!(reader.discard(), 3);
    }
}
