//! The file source: a JSON, TOML or YAML file, or a directory of them.
//!
//! Changes are pushed by inotify (through `notify`), watching the *parent
//! directory* of a file, not the file itself: an editor's atomic rename
//! replaces the inode, and a watch on the old inode would go quiet forever.
//! A file closed by its writer or renamed into place is read at once; a
//! directory's after [`SETTLE`] of quiet (a burst of files is one change);
//! a file still being modified, after [`QUIET`]. The poll at `--interval`
//! remains as a fallback (a network file system, a missed event).
//!
//! A zero-byte file is taken for a write in progress and changes nothing.
//! Only regular files are read (a FIFO in a file's place would block the
//! read), and no more than [`MAX_DOCUMENT`] for the whole source, as for
//! the other sources. Reading and parsing run on a blocking thread, so a
//! large file never stalls the supervisor, and only the jobs whose text
//! changed are checked again ([`Parser`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lrpm_core::Reparser;
use lrpm_core::decl::{Document, Format};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout_at};

use super::api::{ConfigSource, LoadError, Loaded, MAX_DOCUMENT, OpenError, Parser, SourceOptions};

/// Quiet time, in a directory, after a writer closed or renamed a file.
pub(crate) const SETTLE: Duration = Duration::from_millis(2);
/// Quiet time while a file is being written without being closed.
pub(crate) const QUIET: Duration = Duration::from_millis(50);
/// The longest a burst of events delays a load.
pub(crate) const MAX_DELAY: Duration = Duration::from_millis(500);

/// A file or directory source.
#[derive(Debug)]
pub(crate) struct FileSource {
    path: PathBuf,
    is_dir: bool,
    interval: Option<Duration>,
    /// Woken by inotify events about the configuration.
    wake: Arc<Notify>,
    /// Set by an event that says a writer has finished.
    settled: Arc<AtomicBool>,
    parser: Parser,
    /// Whether the next load is delivered even if the configuration is
    /// unchanged: the first one, one after a failure, one asked for.
    deliver: bool,
    /// Kept alive for its watch.
    _watcher: RecommendedWatcher,
}

impl FileSource {
    /// Opens the file or directory at `path` and starts watching it.
    pub(crate) fn open(path: impl AsRef<Path>, options: SourceOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => OpenError::NotFound { path: path.clone() },
            _ => OpenError::Other(format!("{}: {e}", path.display())),
        })?;
        let is_dir = meta.is_dir();
        if !is_dir && Format::from_file_name(&path.to_string_lossy()).is_none() {
            return Err(OpenError::Usage(format!(
                "{}: unknown format (expected a .json, .toml, .yaml or .yml file, or a directory)",
                path.display()
            )));
        }
        let wake = Arc::new(Notify::new());
        let settled = Arc::new(AtomicBool::new(false));
        let (watched, name) = if is_dir {
            (path.clone(), None)
        } else {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (parent, path.file_name().map(|n| n.to_os_string()))
        };
        let handler = {
            let wake = wake.clone();
            let settled = settled.clone();
            move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else {
                    // An overflow or watch error: read again to be safe.
                    settled.store(true, Ordering::Relaxed);
                    wake.notify_one();
                    return;
                };
                // Whether the writer is done: it closed the file, renamed it
                // into place, created or removed it. Reads, including
                // lrpm's own, are not changes.
                let finished = match event.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    EventKind::Access(_) => return,
                    EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => false,
                    _ => true,
                };
                let relevant = event.paths.iter().any(|p| match &name {
                    Some(name) => p.file_name() == Some(name.as_os_str()),
                    None => is_config_file(p),
                });
                if !relevant && !event.need_rescan() {
                    return;
                }
                if finished {
                    settled.store(true, Ordering::Relaxed);
                }
                wake.notify_one();
            }
        };
        let mut watcher = notify::recommended_watcher(handler)
            .map_err(|e| OpenError::Other(format!("cannot watch {}: {e}", watched.display())))?;
        watcher
            .watch(&watched, RecursiveMode::NonRecursive)
            .map_err(|e| OpenError::Other(format!("cannot watch {}: {e}", watched.display())))?;
        Ok(Self {
            path,
            is_dir,
            interval: options.interval,
            wake,
            settled,
            parser: Parser::default(),
            deliver: true,
            _watcher: watcher,
        })
    }
}

/// Whether a directory entry is a configuration file: a supported
/// extension, and not hidden (editors' and atomic writers' temp files are).
fn is_config_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && Format::from_file_name(name).is_some()
}

/// Reads and parses the configuration; runs on a blocking thread.
fn read(path: &Path, is_dir: bool, reparser: &mut Reparser) -> Result<Loaded, LoadError> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    }
    let files: Vec<PathBuf> = if is_dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io(path))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| is_config_file(p) && p.is_file())
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut texts = Vec::with_capacity(files.len());
    let mut budget = MAX_DOCUMENT;
    for file in &files {
        let bytes = read_bounded(file, budget).map_err(io(file))?;
        budget -= bytes.len();
        if bytes.is_empty() {
            // A write in progress: wait for the next event.
            return Ok(Loaded::Unchanged);
        }
        let text = String::from_utf8(bytes).map_err(|e| LoadError::Io {
            path: file.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file is not UTF-8 text: {}", e.utf8_error()),
            ),
        })?;
        let name = if is_dir {
            file.file_name().map(|n| n.to_string_lossy().into_owned())
        } else {
            None
        }
        .unwrap_or_else(|| file.display().to_string());
        texts.push((name, text));
    }
    let docs: Vec<Document<'_>> = texts
        .iter()
        .map(|(name, text)| Document {
            origin: name,
            format: Format::from_file_name(name).expect("invariant: only known formats are read"),
            text,
        })
        .collect();
    Ok(Loaded::Config(reparser.parse(&docs)?))
}

/// Reads `file`, which must be a regular file of at most `limit` bytes
/// (what is left of [`MAX_DOCUMENT`] for the whole source).
fn read_bounded(file: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let too_large = || {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "the configuration is larger than {} MiB; it was not read",
                MAX_DOCUMENT >> 20
            ),
        )
    };
    // Opened without blocking, so that a FIFO put in the file's place does
    // not hang the read until some writer opens it.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(file)?;
    let meta = opened.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > limit as u64 {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    opened.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

impl ConfigSource for FileSource {
    async fn load(&mut self) -> Result<Loaded, LoadError> {
        // Events up to now are covered by this read.
        self.settled.store(false, Ordering::Relaxed);
        let path = self.path.clone();
        let is_dir = self.is_dir;
        // One change often brings two events (a rename is seen from both
        // of its names): the second load finds what the first delivered.
        let deliver = std::mem::take(&mut self.deliver);
        let loaded = self
            .parser
            .run(move |reparser| {
                Ok(match read(&path, is_dir, reparser)? {
                    Loaded::Config(_) if !deliver && reparser.unchanged() => Loaded::Unchanged,
                    loaded => loaded,
                })
            })
            .await;
        // What was asked for holds until something is delivered.
        self.deliver = match &loaded {
            Ok(Loaded::Config(_)) => false,
            Ok(Loaded::Unchanged) => deliver,
            Err(_) => true,
        };
        loaded
    }

    fn reload_requested(&mut self) {
        self.deliver = true;
    }

    async fn changed(&mut self) {
        let poll = async {
            match self.interval {
                Some(interval) => sleep(interval).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = poll => return,
            () = self.wake.notified() => {}
        }
        // A file renamed into place or closed by its writer is whole: read
        // it at once. A directory waits for a moment of quiet after such an
        // event too, so that a burst of files (a checkout, a sync) is read
        // as one configuration.
        if !self.is_dir && self.settled.load(Ordering::Relaxed) {
            // The other events of the same change (a rename is seen from
            // both of its names) come from the same read of the inotify
            // queue, a moment later: let them arrive, and take them, so
            // that this one load covers them.
            tokio::task::yield_now().await;
            let _ = tokio::time::timeout(Duration::ZERO, self.wake.notified()).await;
            return;
        }
        // Debounce: wait for a moment of quiet, but not forever.
        let give_up = Instant::now() + MAX_DELAY;
        loop {
            let quiet = if self.settled.load(Ordering::Relaxed) {
                SETTLE
            } else {
                QUIET
            };
            let until = (Instant::now() + quiet).min(give_up);
            if timeout_at(until, self.wake.notified()).await.is_err() || Instant::now() >= give_up {
                return;
            }
        }
    }
}
