//! The exec source: a command that prints the job map as JSON.
//!
//! # Theory of operation
//!
//! `exec:PROGRAM ARG…` is split into words as a POSIX shell would (quotes
//! and backslashes respected, nothing expanded) and run without a shell. The
//! command is spawned as every child of lrpm is
//! ([`process::spawn_command`]): in a process group of its own, with a
//! parent-death SIGKILL and stdin from `/dev/null`. Its stderr goes to
//! lrpm's log line by line; its stdout is the configuration.
//!
//! **Polled** (`--interval N`, N > 0: [`PolledExec`]): every load runs the
//! command once and reads its whole stdout as one JSON document, which may
//! span lines. The command must exit with code 0 within `--source-timeout`;
//! on a timeout its whole process group is killed. A failure of any kind
//! changes nothing: the supervisor keeps its last good configuration.
//!
//! **Streaming** (`--interval 0`: [`StreamingExec`]): the command runs for
//! as long as lrpm does and prints one JSON document per line whenever the
//! configuration changes. A task of its own runs it and restarts it with
//! backoff when it ends ([`RESTART_BACKOFF_MAX`], reset after a run of
//! [`STABLE_RUN`]). What it reads goes to a mailbox that keeps only what is
//! still worth delivering: a newer document supersedes everything before it,
//! and of several errors only the latest is kept. A reload (`lrpmctl
//! reload`, SIGHUP) restarts the command, which is expected to print the
//! whole configuration when it starts.
//!
//! Either way, when the command's main process ends, what is left of its
//! process group is killed before it is reaped, as for workers, and nothing
//! read from it is buffered beyond [`MAX_DOCUMENT`] (stdout) or
//! [`MAX_LINE`] per line (stderr).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lrpm_core::Declaration;
use lrpm_core::backoff::Backoff;
use lrpm_core::human;
use lrpm_core::status::ExitStatus;
use lrpm_process::command::{SpawnContext, SpawnError, SpawnRequest, spawn_command};
use lrpm_process::pidfd::AsyncChild;
use rustix::process::Signal;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout, timeout_at};

use super::api::{ConfigSource, LoadError, Loaded, MAX_DOCUMENT, OpenError, Parser, SourceOptions};
use crate::base::Role;
use crate::lines::{Line, LineReader, Overlong};
use crate::output::MAX_LINE;

/// The longest a streaming command waits before it is started again.
pub(crate) const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A streaming command that ran this long before it ended is restarted
/// after the shortest delay again.
pub(crate) const STABLE_RUN: Duration = Duration::from_secs(10);
/// How long lrpm waits for the rest of a finished command's stderr (held
/// open by a process that escaped its group) before it stops waiting.
const STDERR_GRACE: Duration = Duration::from_secs(1);
/// How much is read from a pipe at a time.
const CHUNK: usize = 64 * 1024;
/// The longest stderr line quoted in an error message.
const MAX_QUOTE: usize = 300;

/// Splits the part of an `exec:` source after the colon into a program and
/// its arguments, as a POSIX shell would.
pub(crate) fn parse_command(command: &str) -> Result<Vec<String>, OpenError> {
    let argv = shlex::split(command).ok_or_else(|| {
        OpenError::Usage(format!(
            "exec:{command}: unbalanced quotes or a trailing backslash"
        ))
    })?;
    if argv.is_empty() {
        return Err(OpenError::Usage(
            "exec: needs a command, for example exec:'php bridge.php'".into(),
        ));
    }
    Ok(argv)
}

/// A failed run of an exec source's command.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {failure}{}", restart_note(*.restart_in))]
pub(crate) struct ExecError {
    /// The source, as given (`exec:…`).
    pub(crate) command: String,
    /// What went wrong.
    #[source]
    pub(crate) failure: ExecFailure,
    /// When a streaming command is started again.
    pub(crate) restart_in: Option<Duration>,
}

fn restart_note(restart_in: Option<Duration>) -> String {
    restart_in.map_or_else(String::new, |d| {
        format!("; restarting in {}", human::duration(d))
    })
}

/// What went wrong with a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecFailure {
    /// It could not be started.
    #[error("cannot start it: {0}")]
    Spawn(#[source] SpawnError),
    /// Its output could not be read.
    #[error("cannot read its output: {0}")]
    Read(#[source] io::Error),
    /// It exited with a non-zero code (or, streaming, at all), or a signal
    /// killed it.
    #[error("{status}{}", quote(.stderr))]
    Ended {
        /// How it ended: an exit code or a signal.
        status: ExitStatus,
        /// Its last line on stderr.
        stderr: Option<String>,
    },
    /// lrpm lost track of it.
    #[error("{0}")]
    Lost(String),
    /// It did not finish within `--source-timeout`.
    #[error("did not finish within {}; its process group was killed", human::duration(*.0))]
    Timeout(Duration),
    /// Its output is larger than [`MAX_DOCUMENT`].
    #[error("printed a document larger than {} MiB; it was discarded", MAX_DOCUMENT >> 20)]
    TooLarge,
    /// It printed nothing.
    #[error("printed no configuration (no jobs is an empty map: {{}})")]
    Empty,
    /// Its output is not UTF-8.
    #[error("printed text that is not UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// A configuration sandbox broke its protocol.
    #[error("printed a line that is not the sandbox protocol: {0}")]
    Protocol(String),
    /// A configuration sandbox said nothing for too long.
    #[error("sent no configuration for {}; its process group was killed", human::duration(*.0))]
    Silent(Duration),
}

/// One line of a configuration sandbox's output.
#[derive(Debug, serde::Deserialize)]
struct SandboxLine {
    ok: bool,
    jobs: Option<Box<serde_json::value::RawValue>>,
    error: Option<String>,
}

fn quote(stderr: &Option<String>) -> String {
    stderr
        .as_ref()
        .map_or_else(String::new, |line| format!(" (stderr: {line})"))
}

/// What every run of the command needs.
#[derive(Debug, Clone)]
struct SourceCommand {
    /// The source as given, for messages and as the documents' origin.
    uri: String,
    /// The program and its arguments.
    argv: Vec<String>,
    /// `exec:` and the program's file name: the prefix of its stderr lines.
    label: Arc<str>,
    spawn: SpawnContext,
    /// How a streaming command talks.
    dialect: Dialect,
    parser: Parser,
}

/// How a streaming command talks to lrpm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// An `exec:` command: each line is a job map; a reload restarts it.
    Exec,
    /// The configuration sandbox of a library-mode binary
    /// ([`crate::library::config`]): each line is `{"ok":true,"jobs":…}` or
    /// `{"ok":false,"error":…}`; a reload is a SIGHUP; and a sandbox silent
    /// for longer than `silence` (its interval plus `--source-timeout`)
    /// hangs, and is killed and started again.
    Sandbox { silence: Option<Duration> },
}

impl SourceCommand {
    fn new(uri: &str, argv: Vec<String>, options: &SourceOptions) -> Self {
        let program = argv
            .first()
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
            .unwrap_or_default();
        Self {
            uri: uri.to_owned(),
            argv,
            label: format!("exec:{program}").into(),
            spawn: options.spawn.clone(),
            dialect: Dialect::Exec,
            parser: Parser::default(),
        }
    }

    /// Reads one line of output as the configuration it carries.
    async fn configuration(&self, bytes: Vec<u8>) -> Result<Declaration, LoadError> {
        let text = document(bytes).map_err(|f| self.error(f))?;
        match self.dialect {
            Dialect::Exec => self.parser.json(self.uri.clone(), text).await,
            Dialect::Sandbox { .. } => {
                let reply: SandboxLine = serde_json::from_str(&text)
                    .map_err(|e| self.error(ExecFailure::Protocol(e.to_string())))?;
                match reply {
                    SandboxLine {
                        ok: true,
                        jobs: Some(jobs),
                        ..
                    } => {
                        let text = jobs.get().to_owned();
                        self.parser.json(self.uri.clone(), text).await
                    }
                    SandboxLine { error, .. } => Err(LoadError::Other(format!(
                        "{}: loadConfiguration failed: {}",
                        self.uri,
                        error.as_deref().unwrap_or("no reason given")
                    ))),
                }
            }
        }
    }

    fn error(&self, failure: ExecFailure) -> ExecError {
        ExecError {
            command: self.uri.clone(),
            failure,
            restart_in: None,
        }
    }

    /// Starts the command; its stderr is logged by a task of its own, which
    /// returns the last line.
    fn start(
        &self,
    ) -> Result<(AsyncChild, pipe::Receiver, JoinHandle<Option<String>>), ExecFailure> {
        let cmd = SpawnRequest::new(&self.argv[0]).args(&self.argv[1..]);
        let spawned = spawn_command(cmd, &self.spawn).map_err(ExecFailure::Spawn)?;
        let pid = spawned.pid;
        tracing::debug!(pid = pid.as_raw_nonzero().get(), "{}: started", self.uri);
        let (stdout, stderr) = spawned
            .output
            .ok_or_else(|| ExecFailure::Read(io::Error::other("invariant: output is piped")))?;
        let child = AsyncChild::new(pid, spawned.pidfd)
            .map_err(|e| ExecFailure::Spawn(SpawnError::Io(e)))?;
        // From here on, dropping `child` kills the command.
        let stdout = pipe::Receiver::from_owned_fd(stdout).map_err(ExecFailure::Read)?;
        let stderr = pipe::Receiver::from_owned_fd(stderr).map_err(ExecFailure::Read)?;
        let stderr = tokio::spawn(log_stderr(stderr, self.label.clone()));
        Ok((child, stdout, stderr))
    }
}

/// Logs a command's stderr line by line until it is closed; returns its last
/// non-blank line, for error messages.
async fn log_stderr(rx: pipe::Receiver, label: Arc<str>) -> Option<String> {
    let mut lines = LineReader::new(rx, MAX_LINE, Overlong::Split);
    let mut last = None;
    while let Ok(Some(Line::Full(bytes))) = lines.next().await {
        let line = String::from_utf8_lossy(&bytes);
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        tracing::info!("[{label}] {line}");
        last = Some(line.chars().take(MAX_QUOTE).collect());
    }
    last
}

/// The last stderr line of a command that has ended, if its stderr closes
/// soon (a process that escaped the group may hold it open).
async fn last_words(stderr: JoinHandle<Option<String>>) -> Option<String> {
    timeout(STDERR_GRACE, stderr).await.ok()?.ok()?
}

/// How an ended command's exit status reads as a failure; `None` for
/// success.
fn failure(status: ExitStatus, stderr: Option<String>) -> Option<ExecFailure> {
    if status.success() {
        return None;
    }
    if status.code.is_none() && status.signal.is_none() {
        // Not an end of the command's own, but of lrpm's watch over it.
        return Some(ExecFailure::Lost(
            status
                .error
                .unwrap_or_else(|| "ended in an unknown way".into()),
        ));
    }
    Some(ExecFailure::Ended { status, stderr })
}

/// Checks that a document is text and not blank.
fn document(bytes: Vec<u8>) -> Result<String, ExecFailure> {
    let text = String::from_utf8(bytes).map_err(|e| ExecFailure::NotUtf8(e.utf8_error()))?;
    if text.trim().is_empty() {
        return Err(ExecFailure::Empty);
    }
    Ok(text)
}

/// An exec source run every interval (`--interval N`, N > 0).
#[derive(Debug)]
pub(crate) struct PolledExec {
    command: SourceCommand,
    interval: Duration,
    timeout: Duration,
}

impl PolledExec {
    /// A source that runs `argv` (from [`parse_command`]) every `interval`;
    /// `uri` is the source as given.
    pub(crate) fn new(
        uri: &str,
        argv: Vec<String>,
        interval: Duration,
        options: &SourceOptions,
    ) -> Self {
        Self {
            command: SourceCommand::new(uri, argv, options),
            interval,
            timeout: options.timeout,
        }
    }

    /// Runs the command once and returns its stdout.
    async fn run(&self) -> Result<String, ExecFailure> {
        let (child, mut stdout, stderr) = self.command.start()?;
        let mut out = Vec::new();
        let run = async {
            let mut open = true;
            let mut status = None;
            loop {
                if !open {
                    if let Some(status) = status.take() {
                        return Ok(status);
                    }
                }
                out.reserve(CHUNK);
                tokio::select! {
                    read = stdout.read_buf(&mut out), if open => match read {
                        Ok(0) => open = false,
                        Ok(_) if out.len() > MAX_DOCUMENT => return Err(ExecFailure::TooLarge),
                        Ok(_) => {}
                        Err(e) => return Err(ExecFailure::Read(e)),
                    },
                    ended = child.wait(), if status.is_none() => status = Some(ended),
                }
            }
        };
        let status = match timeout_at(Instant::now() + self.timeout, run).await {
            Ok(Ok(status)) => status,
            Ok(Err(failure)) => {
                child.kill();
                return Err(failure);
            }
            Err(_) => {
                child.kill();
                return Err(ExecFailure::Timeout(self.timeout));
            }
        };
        if let Some(failure) = failure(status, last_words(stderr).await) {
            return Err(failure);
        }
        document(out)
    }
}

impl ConfigSource for PolledExec {
    async fn load(&mut self) -> Result<Loaded, LoadError> {
        let text = self.run().await.map_err(|f| self.command.error(f))?;
        Ok(Loaded::Config(
            (self.command.parser)
                .json(self.command.uri.clone(), text)
                .await?,
        ))
    }

    async fn changed(&mut self) {
        sleep(self.interval).await;
    }
}

/// What a streaming command has left for the driver: at most a
/// configuration and a later error.
#[derive(Debug, Default)]
struct Mailbox {
    queue: Mutex<VecDeque<Result<Declaration, LoadError>>>,
    ready: Notify,
}

impl Mailbox {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Result<Declaration, LoadError>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, event: Result<Declaration, LoadError>) {
        let mut queue = self.queue();
        if event.is_ok() {
            // A newer configuration supersedes everything before it.
            queue.clear();
        } else {
            // Only the latest error is worth showing.
            queue.retain(Result::is_ok);
        }
        queue.push_back(event);
        drop(queue);
        self.ready.notify_one();
    }

    fn take(&self) -> Option<Result<Declaration, LoadError>> {
        self.queue().pop_front()
    }

    fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    fn clear(&self) {
        self.queue().clear();
    }
}

/// How one run of a streaming command ended.
enum RunEnd {
    /// A reload asked for a fresh run.
    Restart,
    /// It ended by itself (or never started).
    Ended(ExecFailure),
}

/// An exec source whose command runs all the time and prints a document
/// whenever the configuration changes (`--interval 0`).
#[derive(Debug)]
pub(crate) struct StreamingExec {
    mailbox: Arc<Mailbox>,
    restart: Arc<Notify>,
    task: JoinHandle<()>,
}

impl StreamingExec {
    /// Starts `argv` (from [`parse_command`]) and keeps it running; `uri` is
    /// the source as given. Must be called within a tokio runtime.
    pub(crate) fn new(uri: &str, argv: Vec<String>, options: &SourceOptions) -> Self {
        Self::run(SourceCommand::new(uri, argv, options))
    }

    fn run(command: SourceCommand) -> Self {
        let mailbox = Arc::new(Mailbox::default());
        let restart = Arc::new(Notify::new());
        let task = tokio::spawn(keep_running(command, mailbox.clone(), restart.clone()));
        Self {
            mailbox,
            restart,
            task,
        }
    }
}

impl StreamingExec {
    /// Runs the configuration sandbox of this library-mode binary: the
    /// binary itself, as `BINARY __lrpm-config INTERVAL`
    /// ([`crate::library`]). `interval` is `--interval` (`None` for 0).
    pub(crate) fn sandbox(interval: Option<Duration>, options: &SourceOptions) -> Self {
        let seconds = interval.map_or(0.0, |i| i.as_secs_f64());
        let argv = Role::Config {
            interval_secs: seconds,
        }
        .argv();
        let mut command = SourceCommand::new(SANDBOX_URI, argv, options);
        command.label = SANDBOX_URI.into();
        command.dialect = Dialect::Sandbox {
            silence: interval.map(|i| i + options.timeout),
        };
        Self::run(command)
    }
}

/// How the configuration sandbox is named in logs and status.
pub(crate) const SANDBOX_URI: &str = "built-in configuration source";

impl Drop for StreamingExec {
    fn drop(&mut self) {
        // Dropping the task's future drops the command's `AsyncChild`, which
        // kills it.
        self.task.abort();
    }
}

impl ConfigSource for StreamingExec {
    async fn load(&mut self) -> Result<Loaded, LoadError> {
        loop {
            if let Some(event) = self.mailbox.take() {
                return event.map(Loaded::Config);
            }
            self.mailbox.ready.notified().await;
        }
    }

    async fn changed(&mut self) {
        while self.mailbox.is_empty() {
            self.mailbox.ready.notified().await;
        }
    }

    fn reload_requested(&mut self) {
        // What the old run left is superseded by what the new one prints.
        self.mailbox.clear();
        self.restart.notify_one();
    }
}

/// Runs a streaming command until the source is dropped, restarting it
/// with backoff whenever it ends and at once on a reload.
async fn keep_running(command: SourceCommand, mailbox: Arc<Mailbox>, restart: Arc<Notify>) {
    let mut backoff = Backoff::new(RESTART_BACKOFF_MAX);
    loop {
        let started = Instant::now();
        let failure = match stream_once(&command, &mailbox, &restart).await {
            RunEnd::Restart => {
                tracing::info!("{}: restarting it for the reload", command.uri);
                continue;
            }
            RunEnd::Ended(failure) => failure,
        };
        if started.elapsed() >= STABLE_RUN {
            backoff.reset();
        }
        let delay = backoff.fail();
        let error = ExecError {
            restart_in: Some(delay),
            ..command.error(failure)
        };
        // The supervisor logs it.
        mailbox.put(Err(error.into()));
        tokio::select! {
            () = sleep(delay) => {}
            () = restart.notified() => {}
        }
    }
}

/// Runs a streaming command once, delivering each document it prints.
async fn stream_once(command: &SourceCommand, mailbox: &Mailbox, restart: &Notify) -> RunEnd {
    let (child, stdout, stderr) = match command.start() {
        Ok(started) => started,
        Err(failure) => return RunEnd::Ended(failure),
    };
    let mut lines = LineReader::new(stdout, MAX_DOCUMENT, Overlong::Reject);
    let mut open = true;
    let mut status = None;
    let silence = match command.dialect {
        Dialect::Sandbox { silence } => silence,
        Dialect::Exec => None,
    };
    let mut heard_at = Instant::now();
    let status = loop {
        if !open {
            if let Some(status) = status.take() {
                break status;
            }
        }
        let hang = async {
            match silence {
                Some(silence) => tokio::time::sleep_until(heard_at + silence).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.next(), if open => match line {
                // Blank lines are allowed between documents.
                Ok(Some(Line::Full(bytes))) if bytes.iter().all(u8::is_ascii_whitespace) => {}
                Ok(Some(Line::Full(bytes))) => {
                    heard_at = Instant::now();
                    mailbox.put(command.configuration(bytes).await);
                }
                Ok(Some(Line::TooLong)) => mailbox.put(Err(command.error(ExecFailure::TooLarge).into())),
                Ok(None) => open = false,
                Err(e) => {
                    tracing::warn!("{}: cannot read its output: {e}", command.uri);
                    open = false;
                }
            },
            ended = child.wait(), if status.is_none() => status = Some(ended),
            () = restart.notified() => match command.dialect {
                Dialect::Exec => {
                    child.kill();
                    return RunEnd::Restart;
                }
                // The sandbox loads again at once on SIGHUP, as php-lrpm's
                // configuration process does.
                Dialect::Sandbox { .. } => child.signal(Signal::HUP),
            },
            () = hang, if status.is_none() => {
                child.kill();
                return RunEnd::Ended(ExecFailure::Silent(silence.unwrap_or_default()));
            }
        }
    };
    let stderr = last_words(stderr).await;
    RunEnd::Ended(match failure(status, stderr.clone()) {
        Some(failure) => failure,
        // Even exit code 0: a streaming command is not supposed to end.
        None => ExecFailure::Ended {
            status: ExitStatus::code(0),
            stderr,
        },
    })
}

impl From<ExecError> for LoadError {
    fn from(e: ExecError) -> Self {
        LoadError::Kind(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_split_like_a_shell_would() {
        let argv =
            parse_command(r#"php 'my dir/bridge.php' --class "App\\Source" a\ b"#).expect("valid");
        assert_eq!(
            argv,
            ["php", "my dir/bridge.php", "--class", "App\\Source", "a b"]
        );
        assert!(matches!(parse_command("  "), Err(OpenError::Usage(_))));
        assert!(matches!(
            parse_command("php 'open"),
            Err(OpenError::Usage(_))
        ));
    }

    #[test]
    fn errors_read_well() {
        let e = ExecError {
            command: "exec:x".into(),
            failure: ExecFailure::Ended {
                status: ExitStatus::code(3),
                stderr: Some("no database".into()),
            },
            restart_in: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            e.to_string(),
            "exec:x: exited with code 3 (stderr: no database); restarting in 2s"
        );
        let e = ExecError {
            command: "exec:x".into(),
            failure: ExecFailure::Timeout(Duration::from_millis(1500)),
            restart_in: None,
        };
        assert_eq!(
            e.to_string(),
            "exec:x: did not finish within 1.5s; its process group was killed"
        );
    }

    #[test]
    fn an_end_reads_as_the_log_writes_it() {
        let stderr = || Some("Segmentation fault".to_owned());
        let killed = failure(ExitStatus::signal(11), stderr()).expect("a failure");
        assert_eq!(
            killed.to_string(),
            "killed by SIGSEGV (stderr: Segmentation fault)"
        );
        let stkflt = failure(ExitStatus::signal(16), None).expect("a failure");
        assert_eq!(stkflt.to_string(), "killed by SIGSTKFLT");
        let exited = failure(ExitStatus::code(2), None).expect("a failure");
        assert_eq!(exited.to_string(), "exited with code 2");
        assert!(failure(ExitStatus::code(0), stderr()).is_none());
        let lost = failure(ExitStatus::spawn_failed("it vanished"), None).expect("a failure");
        assert_eq!(lost.to_string(), "it vanished");
    }

    #[test]
    fn the_mailbox_never_drops_a_configuration_for_an_error() {
        let mailbox = Mailbox::default();
        let error = || -> Result<Declaration, LoadError> { Err(LoadError::Other("e".into())) };
        mailbox.put(error());
        mailbox.put(Ok(Declaration::default()));
        mailbox.put(error());
        mailbox.put(error());
        assert!(matches!(mailbox.take(), Some(Ok(_))));
        assert!(matches!(mailbox.take(), Some(Err(_))));
        assert!(mailbox.take().is_none());
        mailbox.put(Ok(Declaration::default()));
        mailbox.put(Ok(Declaration::default()));
        assert!(matches!(mailbox.take(), Some(Ok(_))));
        assert!(mailbox.is_empty());
    }
}
