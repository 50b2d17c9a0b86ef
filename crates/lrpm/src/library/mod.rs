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

mod api;
mod config;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

pub use self::api::{ConfigurationSource, Error, Worker};
use crate::base::EX_USAGE;

type WorkerFactory = Box<dyn Fn() -> Box<dyn Worker>>;
type SourceFactory = Box<dyn FnOnce() -> Box<dyn ConfigurationSource>>;

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

    /// The `workerClass` names it can run.
    pub(crate) fn worker_classes(&self) -> BTreeSet<String> {
        self.workers.keys().cloned().collect()
    }

    /// Whether it has a configuration source.
    pub(crate) fn has_source(&self) -> bool {
        self.source.is_some()
    }

    /// Runs the worker sandbox of `class`; a usage error if no worker is
    /// registered under that name.
    pub(crate) fn run_worker(&self, class: &str) -> ExitCode {
        match self.workers.get(class) {
            Some(factory) => worker::run(class, factory),
            None => {
                eprintln!("lrpm: no worker is registered as {class:?}");
                ExitCode::from(EX_USAGE)
            }
        }
    }

    /// Runs the configuration sandbox; a usage error if no source is
    /// registered.
    pub(crate) fn run_config(self, interval: Duration) -> ExitCode {
        match self.source {
            Some(factory) => config::run(interval, factory),
            None => {
                eprintln!("lrpm: no configuration source is registered");
                ExitCode::from(EX_USAGE)
            }
        }
    }
}
