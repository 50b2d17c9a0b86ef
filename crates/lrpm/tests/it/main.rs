//! The integration tests of lrpm, with real processes: one test binary,
//! one module per area, and the fixtures they share in [`support`].
//!
//! A test is named `module::test` (`reliability::soak`);
//! `.config/nextest.toml` picks the heavy ones of `reliability` that way
//! to run them alone.

mod support;

mod control;
mod descriptors;
mod library;
mod output_hubs;
mod reliability;
mod sources_exec;
#[cfg(feature = "http")]
mod sources_http;
mod spawning;
mod supervision;
