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
//! streaming), [`http`] (GET, polled, conditional), [`postgres`] (a
//! table or a query, pushed by LISTEN/NOTIFY or polled) and [`etcd`] (a
//! prefix, watched). `docs/sources.md`
//! describes them for users.

mod api;
#[cfg(feature = "etcd")]
pub(crate) mod etcd;
pub(crate) mod exec;
pub(crate) mod file;
#[cfg(feature = "http")]
pub(crate) mod http;
#[cfg(feature = "postgres")]
mod pg_target;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

pub(crate) use self::api::{
    ConfigSource, DEFAULT_TIMEOUT, LoadError, Loaded, OpenError, SourceMonitor, SourceOptions,
};

/// What a source's driver sends to the supervisor after each attempt to
/// load.
#[derive(Debug)]
pub(crate) struct SourceUpdate {
    /// When the attempt began.
    pub(crate) began: SystemTime,
    /// What it found.
    pub(crate) loaded: Result<Loaded, LoadError>,
}

/// A running source driver.
#[derive(Debug)]
pub(crate) struct SourceHandle {
    reload: Arc<Notify>,
    task: JoinHandle<()>,
}

impl SourceHandle {
    /// Asks the source to load again now.
    pub(crate) fn reload(&self) {
        self.reload.notify_one();
    }

    /// Stops the source.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the driver of `source`, which sends every load to `updates`.
pub(crate) fn spawn<S: ConfigSource>(
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

/// Opens the source named by `uri` (a path, `file:PATH`, `exec:COMMAND…`,
/// `http://…`, `https://…`, `postgres://…` or `etcd://…`) and starts its
/// driver.
pub(crate) fn start(
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
        #[cfg(feature = "postgres")]
        Some("postgres" | "postgresql") => {
            Ok(spawn(postgres::PgSource::open(uri, &options)?, updates))
        }
        #[cfg(not(feature = "postgres"))]
        Some("postgres" | "postgresql") => Err(OpenError::Usage(format!(
            "{}: this lrpm was built without its postgres feature",
            crate::base::mask_password(uri)
        ))),
        #[cfg(feature = "etcd")]
        Some("etcd") => Ok(spawn(etcd::EtcdSource::open(uri, &options)?, updates)),
        #[cfg(not(feature = "etcd"))]
        Some("etcd") => Err(OpenError::Usage(format!(
            "{}: this lrpm was built without its etcd feature",
            crate::base::mask_password(uri)
        ))),
        Some(s) if !s.contains('/') && s.len() > 1 && !std::path::Path::new(uri).exists() => {
            Err(OpenError::Usage(format!(
                "{uri}: unknown source kind {s:?} (expected a path, file:, exec:, http:, https: or postgres:)"
            )))
        }
        _ => Ok(spawn(file::FileSource::open(uri, options)?, updates)),
    }
}
