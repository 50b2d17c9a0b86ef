//! The interfaces of user code in library mode: php-lrpm's `Worker` and
//! `ConfigurationSource`.

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
