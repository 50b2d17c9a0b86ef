//! The integration tests of lrpm, with real processes: one test binary,
//! one module per area, and the fixtures they share in [`support`].
//!
//! A test is named `module::test` (`reliability::soak`);
//! `.config/nextest.toml` picks the heavy ones of `reliability` that way
//! to run them alone.

#[cfg(feature = "etcd")]
mod etcd_server;
mod support;

mod cgroup_v2_vm;
#[cfg(feature = "etcd")]
mod cluster_etcd;
#[cfg(feature = "etcd")]
mod cluster_faults;
#[cfg(feature = "etcd")]
mod cluster_ledger;
mod cluster_static;
mod control;
mod control_abuse;
mod descriptors;
mod exit_reasons;
mod guardian;
mod health;
mod hostile;
mod hosts;
mod instances;
mod library;
mod logging;
mod lrpmctl_logs;
mod memory_max;
#[cfg(feature = "metrics")]
mod metrics;
mod notify;
mod oom;
mod operator;
mod output_faults;
mod output_hubs;
mod packaging;
#[cfg(feature = "postgres")]
mod pg_server;
mod reliability;
#[cfg(feature = "etcd")]
mod sources_etcd;
mod sources_exec;
#[cfg(feature = "http")]
mod sources_http;
#[cfg(feature = "postgres")]
mod sources_pg;
mod spawning;
mod supervision;
mod systemd;
mod waves;
