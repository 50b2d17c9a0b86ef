//! Library mode: Rust [`Worker`]s and a Rust [`ConfigurationSource`], run by
//! lrpm in sandbox processes.
//!
//! # Theory of operation
//!
//! A library-mode binary registers its workers by name (the `workerClass`
//! of a job) and, optionally, its configuration source with [`Lrpm`], then
//! calls [`Lrpm::main`]. That one binary plays three roles, chosen by its
//! arguments:
//!
//! * started by a user, it *is* `lrpm`: the same command line, control
//!   socket and status. Without a `SOURCE` argument it reads its
//!   configuration from the registered source;
//! * started by the supervisor as `BINARY __lrpm-worker CLASS`, it runs one
//!   worker: `start` once with the job's `workerConfig`, then `cycle` until
//!   SIGTERM or SIGINT (checked between cycles) or until the supervisor is
//!   gone ([`worker`]);
//! * started by the supervisor as `BINARY __lrpm-config INTERVAL`, it runs
//!   the configuration source: it loads, writes the job map to stdout as one
//!   JSON line, waits for the interval or a SIGHUP, and loads again
//!   ([`config`]).
//!
//! User code therefore never runs inside the supervisor process: a panic,
//! a hang, a leaked descriptor or a non-fork-safe library in a worker or a
//! source is contained in its own process, as in php-lrpm.
//!
//! ```no_run
//! use lrpm::library::{ConfigurationSource, Error, Lrpm, Worker};
//! use serde_json::{Value, json};
//!
//! struct Greeter { name: String }
//!
//! impl Worker for Greeter {
//!     fn start(&mut self, config: &Value) -> Result<(), Error> {
//!         self.name = config["name"].as_str().unwrap_or("world").to_owned();
//!         Ok(())
//!     }
//!     fn cycle(&mut self) -> Result<(), Error> {
//!         println!("hello, {}", self.name);
//!         std::thread::sleep(std::time::Duration::from_secs(1));
//!         Ok(())
//!     }
//! }
//!
//! struct Jobs;
//!
//! impl ConfigurationSource for Jobs {
//!     fn load_configuration(&mut self) -> Result<Value, Error> {
//!         Ok(json!({"1": {"name": "greeter", "workerClass": "Greeter",
//!                         "workerConfig": {"name": "lrpm"}}}))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Lrpm::new()
//!         .worker("Greeter", || Greeter { name: String::new() })
//!         .configuration_source(|| Jobs)
//!         .main()
//! }
//! ```

pub mod config;
pub mod worker;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::process::ExitCode;

/// The error type of worker and source code: anything that can be shown.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A worker: php-lrpm's `Worker` interface.
///
/// lrpm calls [`Worker::start`] once with the job's `workerConfig`, then
/// [`Worker::cycle`] in a loop until it is asked to stop. Put a pause at the
/// end of `cycle` when there is no work, so as not to spin; a stop request
/// (SIGTERM) is honoured between two cycles, and a worker still busy after
/// the job's `shutdownTimeoutSeconds` is killed.
///
/// An error or a panic ends the worker's process with a non-zero code, and
/// lrpm restarts it (with backoff if it ran shorter than
/// `shortRunTimeSeconds`).
pub trait Worker {
    /// Called once, with the job's `workerConfig`.
    fn start(&mut self, config: &serde_json::Value) -> Result<(), Error>;
    /// Called again and again until the worker is asked to stop.
    fn cycle(&mut self) -> Result<(), Error>;
}

/// A configuration source: php-lrpm's `ConfigurationSource` interface.
///
/// [`ConfigurationSource::load_configuration`] returns the whole job map
/// (see the job declaration in `docs/configuration.md`). lrpm calls it
/// every `--interval` seconds, at once on `lrpmctl reload` or SIGHUP, and,
/// with `--interval 0`, again as soon as it returns: a source that blocks
/// until the configuration changes is then a push source.
///
/// An error keeps the farm on its last good configuration and shows in
/// status; a panic or a hang (no answer within the interval plus
/// `--source-timeout`) restarts the source's process with backoff. Either
/// way the workers keep running.
pub trait ConfigurationSource {
    /// Loads the whole job map.
    fn load_configuration(&mut self) -> Result<serde_json::Value, Error>;
}

type WorkerFactory = Box<dyn Fn() -> Box<dyn Worker>>;
type SourceFactory = Box<dyn FnOnce() -> Box<dyn ConfigurationSource>>;

/// The first argument that starts a worker sandbox.
pub const WORKER_MODE: &str = "__lrpm-worker";
/// The first argument that starts a configuration sandbox.
pub const CONFIG_MODE: &str = "__lrpm-config";

/// A library-mode lrpm: registered workers and, optionally, a
/// configuration source.
#[derive(Default)]
pub struct Lrpm {
    workers: BTreeMap<String, WorkerFactory>,
    source: Option<SourceFactory>,
}

impl fmt::Debug for Lrpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lrpm")
            .field("workers", &self.workers.keys().collect::<Vec<_>>())
            .field("source", &self.source.is_some())
            .finish()
    }
}

impl Lrpm {
    /// An lrpm with no worker and no source registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a worker under `class`, the name jobs give as
    /// `workerClass`. `factory` makes one worker; it is called in the
    /// worker's own process.
    pub fn worker<W, F>(mut self, class: &str, factory: F) -> Self
    where
        W: Worker + 'static,
        F: Fn() -> W + 'static,
    {
        self.workers.insert(
            class.to_owned(),
            Box::new(move || Box::new(factory()) as Box<dyn Worker>),
        );
        self
    }

    /// Registers the configuration source. `factory` makes it; it is called
    /// in the source's own process, never in the supervisor.
    pub fn configuration_source<S, F>(mut self, factory: F) -> Self
    where
        S: ConfigurationSource + 'static,
        F: FnOnce() -> S + 'static,
    {
        self.source = Some(Box::new(move || {
            Box::new(factory()) as Box<dyn ConfigurationSource>
        }));
        self
    }

    /// Runs the role this process was started for, with the process's own
    /// arguments: the supervisor (the `lrpm` command line), a worker, or
    /// the configuration source. Returns the exit code.
    pub fn main(self) -> ExitCode {
        self.main_with(std::env::args_os())
    }

    /// [`Lrpm::main`] with explicit arguments (the first is the program
    /// name).
    pub fn main_with<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        match args.get(1).and_then(|a| a.to_str()) {
            Some(WORKER_MODE) => {
                let class = args.get(2).and_then(|a| a.to_str()).unwrap_or_default();
                match self.workers.get(class) {
                    Some(factory) => worker::run(class, factory),
                    None => {
                        eprintln!("lrpm: no worker is registered as {class:?}");
                        ExitCode::from(crate::cli::EX_USAGE)
                    }
                }
            }
            Some(CONFIG_MODE) => match self.source {
                Some(factory) => config::run(&args[2..], factory),
                None => {
                    eprintln!("lrpm: no configuration source is registered");
                    ExitCode::from(crate::cli::EX_USAGE)
                }
            },
            _ => {
                let sandbox = crate::Sandbox {
                    worker_classes: self.workers.keys().cloned().collect(),
                    has_source: self.source.is_some(),
                };
                crate::run_with(args, Some(sandbox))
            }
        }
    }
}
