//! The scenarios, one module each. Every scenario records its figures in
//! [`crate::results::Results`]; the farms they run on are started by
//! [`mass_start`] and ended by [`shutdown`], and `suite.rs` decides which
//! scenarios run on which farm.

pub mod config_push;
pub mod floor;
pub mod job_set;
pub mod mass_start;
pub mod pg_notify;
pub mod rest;
pub mod restart;
pub mod shutdown;
pub mod status;
pub mod storm;
