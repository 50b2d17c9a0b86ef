//! What every kind of configuration source is made of: the
//! [`ConfigSource`] trait its driver calls, what a load finds, the errors of
//! loading and opening, the options, and the [`Parser`] each source parses
//! its documents with.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lrpm_core::Declaration;
use lrpm_core::Reparser;
use lrpm_core::decl::{Document, Format};
use lrpm_core::status::{ConnectionState, ConnectionStatus};
use lrpm_process::command::SpawnContext;

/// What a load found.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// A whole configuration.
    Config(Declaration),
    /// Nothing new (a file being written, an HTTP 304…).
    Unchanged,
}

/// Why a load failed; the supervisor keeps its last good configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not a readable job map.
    #[error(transparent)]
    Parse(#[from] lrpm_core::SourceError),
    /// A kind of source failed in its own way (the command of an exec
    /// source, the request of an HTTP source…); each kind converts its error.
    #[error(transparent)]
    Kind(Box<dyn std::error::Error + Send + Sync>),
    /// Anything else the source reports.
    #[error("{0}")]
    Other(String),
}

/// A source of configurations, polled or pushing.
pub(crate) trait ConfigSource: Send + 'static {
    /// Reads the whole configuration now.
    fn load(&mut self) -> impl Future<Output = Result<Loaded, LoadError>> + Send;
    /// Waits until the configuration may have changed.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;
    /// Called when a reload was requested, before the `load()` it causes.
    /// Most sources need nothing more than that load; a streaming source
    /// restarts its stream here.
    fn reload_requested(&mut self) {}
}

/// Why a source could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The source argument is not one lrpm understands (exit code 64).
    #[error("{0}")]
    Usage(String),
    /// A file source does not exist (exit code 66).
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },
    /// Anything else (exit code 1).
    #[error("{0}")]
    Other(String),
}

/// Settings that apply to every source.
#[derive(Debug, Clone)]
pub(crate) struct SourceOptions {
    /// How often polled sources are polled; `None` for `--interval 0`.
    pub(crate) interval: Option<Duration>,
    /// How long one load of an exec or HTTP source may take
    /// (`--source-timeout`).
    pub(crate) timeout: Duration,
    /// How the commands of exec sources are spawned (as workers are).
    pub(crate) spawn: SpawnContext,
    /// Where a source that keeps a connection reports it, for status.
    pub(crate) monitor: SourceMonitor,
}

/// What a source that keeps a connection to a server (postgres, etcd)
/// says of it, for status: the connection's state, why it was lost, and
/// the revision of the configuration it loaded last. The source writes it
/// as things happen; the event loop reads it when it answers `status`.
/// Clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceMonitor(Arc<Mutex<Live>>);

#[derive(Debug, Default)]
struct Live {
    connection: Option<ConnectionStatus>,
    revision: Option<u64>,
}

// Written only by the sources that keep a connection, each behind its
// feature.
#[cfg_attr(not(any(feature = "etcd", feature = "postgres")), allow(dead_code))]
impl SourceMonitor {
    /// The first attempt to connect has begun.
    pub(crate) fn connecting(&self) {
        self.set(ConnectionState::Connecting, None, None);
    }

    /// The source is connected and follows changes.
    pub(crate) fn connected(&self) {
        self.set(ConnectionState::Connected, None, None);
    }

    /// The connection was lost or refused for `error`; the next attempt is
    /// in `retry_in`.
    pub(crate) fn reconnecting(&self, error: &str, retry_in: Duration) {
        let retry_at = wall(SystemTime::now() + retry_in);
        self.set(
            ConnectionState::Reconnecting,
            Some(error.to_owned()),
            Some(retry_at),
        );
    }

    /// The configuration just loaded is at `revision`.
    pub(crate) fn set_revision(&self, revision: u64) {
        self.live().revision = Some(revision);
    }

    /// The connection's state and the revision, for status.
    pub(crate) fn snapshot(&self) -> (Option<ConnectionStatus>, Option<u64>) {
        let live = self.live();
        (live.connection.clone(), live.revision)
    }

    fn set(&self, state: ConnectionState, error: Option<String>, retry_at: Option<f64>) {
        let mut live = self.live();
        // `since` is when the state began: a failed attempt after another
        // keeps the time the connection was lost.
        let since = match &live.connection {
            Some(old) if old.state == state => old.since,
            _ => wall(SystemTime::now()),
        };
        live.connection = Some(ConnectionStatus {
            state,
            since,
            error,
            retry_at,
        });
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        // The guarded values are replaced whole: a panic cannot leave them
        // half written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// UTC seconds of `t`.
#[cfg_attr(not(any(feature = "etcd", feature = "postgres")), allow(dead_code))]
fn wall(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The default of `--source-timeout`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest configuration document a command or a server may send
/// (64 MiB); anything larger is refused while it is read, never buffered.
pub(crate) const MAX_DOCUMENT: usize = 64 * 1024 * 1024;

/// A source's parser: parses on a blocking thread, so that a large
/// document never stalls the supervisor, and remembers the configuration
/// it parsed last, so that only the jobs whose declaration changed since
/// are checked again ([`Reparser`]). Clones share what it remembers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parser(Arc<Mutex<Reparser>>);

impl Parser {
    /// Parses a JSON job map that came from `origin` (a command, a URL).
    pub(crate) async fn json(
        &self,
        origin: String,
        text: String,
    ) -> Result<Declaration, LoadError> {
        self.run(move |reparser| {
            let doc = Document {
                origin: &origin,
                format: Format::Json,
                text: &text,
            };
            reparser.parse(&[doc]).map_err(LoadError::from)
        })
        .await
    }

    /// Runs `parse` (which reads and parses) with the reparser, on a
    /// blocking thread.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        parse: impl FnOnce(&mut Reparser) -> Result<T, LoadError> + Send + 'static,
    ) -> Result<T, LoadError> {
        let shared = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut reparser = match shared.lock() {
                Ok(reparser) => reparser,
                // A parse that panicked may have left it half updated:
                // start afresh.
                Err(poisoned) => {
                    shared.clear_poison();
                    let mut reparser = poisoned.into_inner();
                    *reparser = Reparser::new();
                    reparser
                }
            };
            parse(&mut reparser)
        })
        .await
        .unwrap_or_else(|e| {
            Err(LoadError::Other(format!(
                "parsing the configuration failed: {e}"
            )))
        })
    }
}
