//! What the web server and the event loop exchange.
// Without the server, the loop only ever waits on a receiver that does not
// exist: these are never built.
#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use std::time::Duration;

use lrpm_core::status::{ClusterStatus, JobStatus, SourceStatus};
use tokio::sync::oneshot;

/// A request of the web server to the event loop.
#[derive(Debug)]
pub(crate) enum WebRequest {
    /// A copy of the status, for `/metrics`.
    Metrics(oneshot::Sender<Snapshot>),
    /// The status document, encoded as the control protocol's status line,
    /// for the page.
    Status(oneshot::Sender<Vec<u8>>),
    /// Whether the loop answers at all, for `/healthz`.
    Health(oneshot::Sender<()>),
}

/// How long `/healthz` waits for the event loop before it answers 503.
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How many attempts to load the source ended each way, since lrpm
/// started (`lrpm_source_loads_total{result}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LoadCounts {
    /// A new configuration was loaded.
    pub(crate) loaded: u64,
    /// The source had nothing new (an unchanged file, an HTTP 304).
    pub(crate) unchanged: u64,
    /// The attempt failed; the last good configuration stayed.
    pub(crate) failed: u64,
}

/// What a scrape reports, copied from the event loop's state at one
/// moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// Every job's status.
    pub(crate) jobs: Vec<JobStatus>,
    /// The source's status.
    pub(crate) source: SourceStatus,
    /// How the source's loads ended.
    pub(crate) loads: LoadCounts,
    /// When lrpm started (UTC seconds).
    pub(crate) started_at: f64,
    /// The cluster this node is one of, if it is.
    pub(crate) cluster: Option<ClusterStatus>,
}
