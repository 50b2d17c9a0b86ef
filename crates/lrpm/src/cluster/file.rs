//! Following a static cluster's file (`--cluster-file`): inotify on its
//! parent directory (an atomic rename replaces the file's inode), a moment
//! of quiet, then the file read again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lrpm_core::shard::{StaticShard, Strategy};
use notify::event::{AccessKind, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// The quiet time after the last event about the file before it is read.
const QUIET: Duration = Duration::from_millis(50);

/// The longest a burst of events delays the read.
const MAX_DELAY: Duration = Duration::from_millis(500);

/// The largest cluster file read: it holds two numbers.
const MAX_FILE: u64 = 64 * 1024;

/// A cluster file, watched.
#[derive(Debug)]
pub(crate) struct ClusterFile {
    path: PathBuf,
    strategy: Strategy,
    /// Set by every event about the file, cleared when it is read.
    dirty: Arc<AtomicBool>,
    /// Woken by every event about the file.
    wake: Arc<Notify>,
    /// While a change waits for quiet: until when, and when to stop
    /// waiting for quiet.
    quiet_until: Option<(Instant, Instant)>,
    /// Kept alive for its watch.
    _watcher: RecommendedWatcher,
}

impl ClusterFile {
    /// Starts watching `path`'s directory for changes to `path`.
    pub(crate) fn watch(path: &Path, strategy: Strategy) -> Result<Self, String> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(|n| n.to_os_string());
        let dirty = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let handler = {
            let (dirty, wake) = (dirty.clone(), wake.clone());
            move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    // An overflow or a watch error: read again to be safe.
                    Err(_) => true,
                    Ok(event) => {
                        !matches!(
                            event.kind,
                            EventKind::Access(
                                AccessKind::Open(_)
                                    | AccessKind::Read
                                    | AccessKind::Close(notify::event::AccessMode::Read)
                            )
                        ) && (event.need_rescan()
                            || event.paths.iter().any(|p| p.file_name() == name.as_deref()))
                    }
                };
                if relevant {
                    dirty.store(true, Ordering::Relaxed);
                    wake.notify_one();
                }
            }
        };
        let mut watcher = notify::recommended_watcher(handler)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            strategy,
            dirty,
            wake,
            quiet_until: None,
            _watcher: watcher,
        })
    }

    /// Waits until the file changed and has been quiet for a moment, then
    /// reads it. Cancel-safe (the event loop drops it whenever another
    /// event comes first): a change seen, and the quiet time under way,
    /// are kept for the next call.
    pub(crate) async fn changed(&mut self) -> Result<StaticShard, String> {
        loop {
            if let Some((due, give_up)) = self.quiet_until {
                if tokio::time::timeout_at(due.into(), self.wake.notified())
                    .await
                    .is_ok()
                {
                    // Still being written: wait for quiet again, not forever.
                    self.quiet_until = Some(((Instant::now() + QUIET).min(give_up), give_up));
                    continue;
                }
                self.quiet_until = None;
                self.dirty.store(false, Ordering::Relaxed);
                // A small local file, read at once: no await between the
                // flag and the read, so no change is lost to a cancel.
                return read(&self.path, self.strategy);
            }
            if self.dirty.load(Ordering::Relaxed) {
                let now = Instant::now();
                self.quiet_until = Some((now + QUIET, now + MAX_DELAY));
                continue;
            }
            self.wake.notified().await;
        }
    }
}

/// Reads the cluster file at `path`, [`MAX_FILE`] bytes at most.
pub(crate) fn read(path: &Path, strategy: Strategy) -> Result<StaticShard, String> {
    use std::io::Read;
    let shown = path.display();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE).read_to_end(&mut bytes))
        .map_err(|e| format!("cluster file {shown}: {e}"))?;
    parse_file(&bytes, strategy).map_err(|e| format!("cluster file {shown}: {e}"))
}

/// The size and index a cluster file holds.
pub(crate) fn parse_file(bytes: &[u8], strategy: Strategy) -> Result<StaticShard, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err(r#"expected an object {"numberOfInstances": N, "instanceNumber": I}"#.into());
    };
    let field = |name: &str| -> Result<u32, String> {
        match map.get(name) {
            None => Err(format!("{name}: missing")),
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("{name}: {n} is not a whole number from 0 to 4294967295")),
            Some(other) => Err(format!("{name}: must be an integer, got {other}")),
        }
    };
    let size = field("numberOfInstances")?;
    let index = field("instanceNumber")?;
    StaticShard::new(size, index, strategy).map_err(|e| e.to_string())
}
