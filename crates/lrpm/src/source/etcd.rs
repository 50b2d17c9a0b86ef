//! The etcd source: one key per job under a prefix, followed by a watch.
//!
//! # Theory of operation
//!
//! `etcd://HOST:PORT[,HOST:PORT…]/PREFIX` declares one job per key under
//! `PREFIX/`: the rest of the key is the job id, the value the job's JSON
//! declaration. The source keeps every key's value in a
//! [`KeyedJobs`] store, so that a change to one key checks that one job
//! again, and a garbage value makes only its own job invalid.
//!
//! - **A full load** connects (the endpoints in turn, from the last that
//!   worked), reads the prefix whole at one revision R
//!   ([`Etcd::snapshot`]), and watches it from R + 1; the store is replaced
//!   by the snapshot (values that did not change keep their verdict).
//! - **Then each change** comes from the watch: [`ConfigSource::changed`]
//!   returns with the batch of changes of one revision, and the next
//!   [`ConfigSource::load`] applies it to the store, key by key.
//! - **Recovery is a full load**: after a compaction past the watch's
//!   revision (the events between are lost), a watch the server cancelled,
//!   a broken connection (a server stopped, restarted or unreachable), and
//!   on `lrpmctl reload`. A failed full load is retried with backoff
//!   (1 s doubling to 30 s); meanwhile the farm runs on the last good
//!   configuration, and status shows the connection `reconnecting` with
//!   the error and the time of the next attempt. A change made while the
//!   source was disconnected is in the next full load.
//!
//! Status shows the connection's state and the store revision the
//! configuration was loaded at (`supervisor.source.connection` and
//! `.revision`, through [`SourceMonitor`]). The URI is shown and logged
//! without its password. A URI that names a user without a password takes
//! the password from `LRPM_ETCD_PASSWORD`, which no child inherits.

use std::time::Duration;

use lrpm_core::KeyedJobs;
use lrpm_core::backoff::Backoff;
use tokio::time::{Instant, sleep_until};

use super::api::{ConfigSource, LoadError, Loaded, OpenError, SourceMonitor, SourceOptions};
use crate::base::{ETCD_PASSWORD_ENV, mask_password};
use crate::etcd::{Etcd, EtcdUri, KeyChange, PrefixWatch, WatchEnd};

/// The longest wait between two attempts to connect.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// From how many changes on a batch is applied on a blocking thread.
const BLOCKING_BATCH: usize = 64;

/// An `etcd://` source.
#[derive(Debug)]
pub(crate) struct EtcdSource {
    uri: EtcdUri,
    /// The URI for messages, its password masked.
    shown: String,
    /// The key prefix, with its `/`.
    prefix: Vec<u8>,
    monitor: SourceMonitor,
    /// Every job's value and verdict. `None` only while a blocking thread
    /// holds it.
    store: Option<KeyedJobs>,
    /// The connection and its watch, while they work.
    watch: Option<(Etcd, PrefixWatch)>,
    /// Which endpoint to try first.
    endpoint: usize,
    /// The request timeout (`--source-timeout`).
    timeout: Duration,
    /// Changes the watch brought that the next load applies.
    pending: Vec<KeyChange>,
    /// The revision the store is at.
    revision: i64,
    /// Whether the last load succeeded (after a failure, the next success
    /// is delivered even if nothing changed, which clears the error).
    delivered: bool,
    backoff: Backoff,
    /// When the next attempt to connect is due, after a failure.
    retry_at: Option<Instant>,
}

impl EtcdSource {
    /// Opens the source at `uri`; it connects on its first load.
    pub(crate) fn open(uri: &str, options: &SourceOptions) -> Result<Self, OpenError> {
        let shown = mask_password(uri);
        let mut parsed =
            EtcdUri::parse(uri).map_err(|e| OpenError::Usage(format!("{shown}: {e}")))?;
        // A user without a password in the URI: the password from the
        // environment, which `ps` does not show.
        if let Some((_, password)) = parsed.user.as_mut().filter(|(_, p)| p.is_empty()) {
            if let Ok(from_env) = std::env::var(ETCD_PASSWORD_ENV) {
                *password = from_env;
            }
        }
        let path = parsed.path.strip_suffix('/').unwrap_or(&parsed.path);
        if path.is_empty() {
            return Err(OpenError::Usage(format!(
                "{shown}: the URI needs a key prefix: etcd://HOST:PORT/PREFIX"
            )));
        }
        let prefix = format!("{path}/").into_bytes();
        options.monitor.connecting();
        Ok(Self {
            uri: parsed,
            shown,
            prefix,
            monitor: options.monitor.clone(),
            store: Some(KeyedJobs::new()),
            watch: None,
            endpoint: 0,
            timeout: options.timeout,
            pending: Vec::new(),
            revision: 0,
            delivered: false,
            backoff: Backoff::new(MAX_BACKOFF),
            retry_at: None,
        })
    }

    /// Connects, reads the prefix whole and watches it; applies the
    /// snapshot to the store. Returns whether the store changed.
    async fn full_load(&mut self) -> Result<bool, String> {
        self.watch = None;
        self.pending.clear();
        let mut etcd = Etcd::connect(&self.uri, self.endpoint, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        self.endpoint = etcd.index();
        let snapshot = etcd
            .snapshot(&self.prefix)
            .await
            .map_err(|e| e.to_string())?;
        let watch = etcd
            .watch(&self.prefix, snapshot.revision + 1)
            .await
            .map_err(|e| format!("{}: {e}", etcd.endpoint()))?;
        let keys = snapshot.kvs.len();
        let changed = self
            .with_store(move |store| {
                store.replace_all(
                    snapshot
                        .kvs
                        .iter()
                        .map(|(key, value)| (String::from_utf8_lossy(key), value)),
                )
            })
            .await;
        self.revision = snapshot.revision;
        tracing::info!(
            "{}: loaded {keys} keys at revision {} from {}, watching",
            self.shown,
            self.revision,
            etcd.endpoint()
        );
        self.watch = Some((etcd, watch));
        Ok(changed)
    }

    /// Applies the changes the watch brought. Returns whether the store
    /// changed.
    async fn apply_pending(&mut self) -> bool {
        let changes = std::mem::take(&mut self.pending);
        let blocking = changes.len() >= BLOCKING_BATCH;
        let apply = move |store: &mut KeyedJobs| {
            let mut changed = false;
            for change in &changes {
                let key = String::from_utf8_lossy(&change.key);
                changed |= match &change.value {
                    Some(value) => store.insert(&key, value),
                    None => store.remove(&key),
                };
            }
            changed
        };
        if !blocking {
            if let Some(store) = self.store.as_mut() {
                return apply(store);
            }
        }
        self.with_store(apply).await
    }

    /// Runs `update` on the store on a blocking thread (a full load may
    /// check thousands of declarations).
    async fn with_store<T: Send + Default + 'static>(
        &mut self,
        update: impl FnOnce(&mut KeyedJobs) -> T + Send + 'static,
    ) -> T {
        let mut store = self.store.take().unwrap_or_default();
        let done = tokio::task::spawn_blocking(move || {
            let result = update(&mut store);
            (store, result)
        })
        .await;
        match done {
            Ok((store, result)) => {
                self.store = Some(store);
                result
            }
            Err(e) => {
                // A panic left nothing usable: start afresh at the next
                // full load.
                tracing::error!("{}: updating the jobs failed: {e}", self.shown);
                self.store = Some(KeyedJobs::new());
                self.watch = None;
                T::default()
            }
        }
    }

    fn declaration(&self) -> lrpm_core::Declaration {
        self.store
            .as_ref()
            .map(KeyedJobs::declaration)
            .unwrap_or_default()
    }
}

impl ConfigSource for EtcdSource {
    async fn load(&mut self) -> Result<Loaded, LoadError> {
        let changed = if self.watch.is_none() {
            match self.full_load().await {
                Ok(changed) => {
                    self.backoff.reset();
                    self.retry_at = None;
                    self.monitor.connected();
                    changed
                }
                Err(error) => {
                    self.watch = None;
                    let delay = self.backoff.fail();
                    self.retry_at = Some(Instant::now() + delay);
                    self.monitor.reconnecting(&error, delay);
                    self.delivered = false;
                    tracing::debug!(
                        "{}: {error}; next attempt in {}",
                        self.shown,
                        lrpm_core::human::duration(delay)
                    );
                    return Err(LoadError::Other(format!("{}: {error}", self.shown)));
                }
            }
        } else {
            self.apply_pending().await
        };
        self.monitor
            .set_revision(u64::try_from(self.revision).unwrap_or(0));
        if changed || !std::mem::replace(&mut self.delivered, true) {
            Ok(Loaded::Config(self.declaration()))
        } else {
            Ok(Loaded::Unchanged)
        }
    }

    async fn changed(&mut self) {
        let Some((_, watch)) = self.watch.as_mut() else {
            // Disconnected: the next attempt, when it is due.
            if let Some(at) = self.retry_at {
                sleep_until(at).await;
            }
            return;
        };
        match watch.next().await {
            Ok((revision, changes)) => {
                self.revision = revision;
                self.pending.extend(changes);
            }
            Err(end) => {
                self.watch = None;
                match &end {
                    WatchEnd::Compacted { .. } => {
                        tracing::info!("{}: {end}: loading everything again", self.shown);
                    }
                    WatchEnd::Cancelled(_) => {
                        // Whatever cancelled it may do it again: not in a
                        // loop.
                        let delay = self.backoff.fail();
                        self.retry_at = Some(Instant::now() + delay);
                        tracing::warn!("{}: {end}: loading everything again", self.shown);
                    }
                    WatchEnd::Broken(_) => {
                        // Reconnect at once; the backoff starts if that
                        // fails.
                        self.monitor.reconnecting(&end.to_string(), Duration::ZERO);
                        tracing::warn!("{}: {end}: reconnecting", self.shown);
                    }
                }
                if let Some(at) = self.retry_at {
                    sleep_until(at).await;
                }
            }
        }
    }

    fn reload_requested(&mut self) {
        // `lrpmctl reload` reads everything again.
        self.watch = None;
    }
}
