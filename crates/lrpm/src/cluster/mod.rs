//! Clustering: several lrpm nodes share one job map, each running its
//! share (see docs/cluster.md).
//!
//! - `args.rs`: the flags, their environment variables and the cluster
//!   file, validated into a [`ClusterChoice`];
//! - `file.rs`: a static cluster's file, followed through inotify;
//! - `lease.rs`: an etcd cluster's membership: the lease kept alive, the
//!   member key, the watch on the members (the `etcd` feature);
//! - `node.rs`: [`Cluster`], the event loop's view of the cluster and the
//!   filter between the source and the core, which logs every job that
//!   moves.
//!
//! The assignment itself is pure and lives in the core
//! (`lrpm_core::shard`).

mod args;
mod file;
#[cfg(feature = "etcd")]
mod lease;
mod node;

pub(crate) use args::{ClusterArgs, ClusterChoice};
pub(crate) use node::{Cluster, ClusterEvent, Outcome};
