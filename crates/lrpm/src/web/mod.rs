//! `--metrics ADDR`: lrpm's HTTP endpoint for monitoring, read-only and
//! unauthenticated (it binds to loopback unless told otherwise).
//!
//! # Theory of operation
//!
//! The server (`server.rs`, hyper) runs as tasks on the event loop's
//! runtime. It never touches the core: for each request it sends the event
//! loop a [`WebRequest`] with a reply channel, as a control connection
//! does, and the loop answers with a copy of what it needs (a
//! [`Snapshot`] of the status for `/metrics`, the encoded status document
//! for the page, a bare acknowledgement for `/healthz`). The costly part of
//! a scrape, reading each worker's `/proc/PID/stat` and encoding the text,
//! runs on a blocking thread (`metrics.rs`, prometheus-client), off the
//! loop.
//!
//! - `/metrics`: the Prometheus text format, or OpenMetrics when the
//!   scraper's `Accept` asks for `application/openmetrics-text`;
//! - `/healthz`: 200 while the event loop answers, 503 when it does not
//!   within `msg::HEALTH_TIMEOUT`;
//! - `/` (`page.html`): the status table, refreshed in place from
//!   `/status` (the status document, as `lrpmctl status --json` prints it).
//!
//! Without the `metrics` feature only the message types are built, and
//! `--metrics` is refused as a usage error.

#[cfg(feature = "metrics")]
mod metrics;
mod msg;
#[cfg(feature = "metrics")]
mod server;

pub(crate) use msg::{LoadCounts, Snapshot, WebRequest};
#[cfg(feature = "metrics")]
pub(crate) use server::start;
