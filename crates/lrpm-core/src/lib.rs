//! The I/O-free core of lrpm.
//!
//! Everything here is plain data and pure functions: job declarations and
//! their validation ([`decl`]), the copies of a job with `instances`
//! ([`instances`]) and the per-key store of sources that keep one
//! job per key ([`keyed`]), the job model ([`job`]), restart backoff
//! ([`backoff`]) and the supervision state machine ([`supervisor`]), which
//! takes events (a configuration loaded, a child exited, a timer fired, a
//! control request) with the current time and returns actions (spawn,
//! signal) and its next deadline. The status document ([`status`]) and the
//! human form of durations and signals ([`human`]) and the escaping of
//! outside text for a terminal ([`escape`]) live here too, so that
//! every part of the shell writes them alike. The core never reads the
//! clock, spawns, signals or touches a file; the `lrpm` crate's shell does,
//! and this crate's dependencies (no tokio, no libc) keep it that way.
#![warn(missing_docs)]

pub mod backoff;
pub mod decl;
pub mod escape;
pub mod health;
pub mod human;
pub mod instances;
pub mod job;
pub mod keyed;
mod liveness;
pub mod notify;
pub mod reparse;
pub mod shard;
pub mod status;
pub mod supervisor;

pub use decl::{Declaration, Document, Format, SourceError};
pub use job::{Env, JobId, JobSpec, Program, Signal};
pub use keyed::KeyedJobs;
pub use reparse::Reparser;
