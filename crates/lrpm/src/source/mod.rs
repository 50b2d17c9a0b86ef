//! Configuration sources.
//!
//! # Theory of operation
//!
//! A source implements [`ConfigSource`]: [`ConfigSource::load`] reads the
//! whole configuration now, and [`ConfigSource::changed`] waits until it may
//! have changed: a polled source sleeps for its interval, a pushing source
//! waits for its notification (inotify, LISTEN/NOTIFY, a watch). One driver
//! task per source ([`spawn`]) loads once at start, then again after every
//! `changed()` or reload request (`lrpmctl reload`, SIGHUP), and sends each
//! result to the supervisor's event loop, with the time the attempt began.
//! A failed load is sent as an error: the supervisor keeps its last good
//! configuration and shows the error in status. A load that found nothing
//! new is sent too, as [`Loaded::Unchanged`] (the status counts every
//! attempt). The driver never stops on an error; only the supervisor stops
//! it, at shutdown.
//!
//! A reload request is also handed to the source itself
//! ([`ConfigSource::reload_requested`]) before the load it causes, for the
//! sources to which "read again" means more than another `load()`: a
//! streaming command is restarted, an HTTP request drops its validators.
//!
//! The kinds: [`file`](mod@file) (inotify), [`exec`] (a command, polled or
//! streaming) and [`http`] (GET, polled, conditional). `docs/sources.md`
//! describes them for users.

pub mod exec;
pub mod file;
#[cfg(feature = "http")]
pub mod http;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lrpm_core::Declaration;
use lrpm_core::Reparser;
use lrpm_core::decl::{Document, Format};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::process::SpawnContext;

/// What a load found.
#[derive(Debug)]
pub enum Loaded {
    /// A whole configuration.
    Config(Declaration),
    /// Nothing new (a file being written, an HTTP 304…).
    Unchanged,
}

/// Why a load failed; the supervisor keeps its last good configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not a readable job map.
    #[error(transparent)]
    Parse(#[from] lrpm_core::SourceError),
    /// The command of an exec source failed.
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    /// The request of an HTTP source failed.
    #[cfg(feature = "http")]
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// Anything else the source reports.
    #[error("{0}")]
    Other(String),
}

/// A source of configurations, polled or pushing.
pub trait ConfigSource: Send + 'static {
    /// Reads the whole configuration now.
    fn load(&mut self) -> impl Future<Output = Result<Loaded, LoadError>> + Send;
    /// Waits until the configuration may have changed.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;
    /// Called when a reload was requested, before the `load()` it causes.
    /// Most sources need nothing more than that load; a streaming source
    /// restarts its stream here.
    fn reload_requested(&mut self) {}
}

/// What a source's driver sends to the supervisor after each attempt to
/// load.
#[derive(Debug)]
pub struct SourceUpdate {
    /// When the attempt began.
    pub began: SystemTime,
    /// What it found.
    pub loaded: Result<Loaded, LoadError>,
}

/// A running source driver.
#[derive(Debug)]
pub struct SourceHandle {
    reload: Arc<Notify>,
    task: JoinHandle<()>,
}

impl SourceHandle {
    /// Asks the source to load again now.
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// Stops the source.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the driver of `source`, which sends every load to `updates`.
pub fn spawn<S: ConfigSource>(
    mut source: S,
    updates: mpsc::UnboundedSender<SourceUpdate>,
) -> SourceHandle {
    let reload = Arc::new(Notify::new());
    let requested = reload.clone();
    let task = tokio::spawn(async move {
        loop {
            let began = SystemTime::now();
            let loaded = source.load().await;
            if updates.send(SourceUpdate { began, loaded }).is_err() {
                return;
            }
            tokio::select! {
                () = source.changed() => {}
                () = requested.notified() => source.reload_requested(),
            }
        }
    });
    SourceHandle { reload, task }
}

/// Why a source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The source argument is not one lrpm understands (exit code 64).
    #[error("{0}")]
    Usage(String),
    /// A file source does not exist (exit code 66).
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// Anything else (exit code 1).
    #[error("{0}")]
    Other(String),
}

/// Settings that apply to every source.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// How often polled sources are polled; `None` for `--interval 0`.
    pub interval: Option<Duration>,
    /// How long one load of an exec or HTTP source may take
    /// (`--source-timeout`).
    pub timeout: Duration,
    /// How the commands of exec sources are spawned (as workers are).
    pub spawn: SpawnContext,
}

/// The environment variable that holds a bearer token for the HTTP source;
/// no child of lrpm inherits it.
pub const HTTP_TOKEN_ENV: &str = "LRPM_HTTP_TOKEN";

/// The default of `--source-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest configuration document a command or a server may send
/// (64 MiB); anything larger is refused while it is read, never buffered.
pub const MAX_DOCUMENT: usize = 64 * 1024 * 1024;

/// A source's parser: parses on a blocking thread, so that a large
/// document never stalls the supervisor, and remembers the configuration
/// it parsed last, so that only the jobs whose declaration changed since
/// are checked again ([`Reparser`]). Clones share what it remembers.
#[derive(Debug, Clone, Default)]
pub struct Parser(Arc<Mutex<Reparser>>);

impl Parser {
    /// Parses a JSON job map that came from `origin` (a command, a URL).
    pub async fn json(&self, origin: String, text: String) -> Result<Declaration, LoadError> {
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
    pub async fn run<T: Send + 'static>(
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

/// Opens the source named by `uri` (a path, `file:PATH`, `exec:COMMAND…`,
/// `http://…` or `https://…`) and starts its driver.
pub fn start(
    uri: &str,
    options: SourceOptions,
    updates: mpsc::UnboundedSender<SourceUpdate>,
) -> Result<SourceHandle, OpenError> {
    let scheme = uri.split_once(':').map(|(scheme, _)| scheme);
    match scheme {
        Some("file") => {
            let path = &uri["file:".len()..];
            Ok(spawn(file::FileSource::open(path, options)?, updates))
        }
        Some("exec") => {
            let argv = exec::parse_command(&uri["exec:".len()..])?;
            Ok(match options.interval {
                Some(every) => spawn(exec::PolledExec::new(uri, argv, every, &options), updates),
                None => spawn(exec::StreamingExec::new(uri, argv, &options), updates),
            })
        }
        #[cfg(feature = "http")]
        Some("http" | "https") => Ok(spawn(http::HttpSource::open(uri, &options)?, updates)),
        #[cfg(not(feature = "http"))]
        Some("http" | "https") => Err(OpenError::Usage(format!(
            "{uri}: this lrpm was built without its http feature"
        ))),
        Some("postgres" | "postgresql" | "etcd") => Err(OpenError::Usage(format!(
            "{uri}: this source kind is not available in this version of lrpm"
        ))),
        Some(s) if !s.contains('/') && s.len() > 1 && !std::path::Path::new(uri).exists() => {
            Err(OpenError::Usage(format!(
                "{uri}: unknown source kind {s:?} (expected a path, file:, exec:, http: or https:)"
            )))
        }
        _ => Ok(spawn(file::FileSource::open(uri, options)?, updates)),
    }
}
