//! Clustering: several lrpm nodes share one job map, each running its
//! share (see docs/cluster.md).
//!
//! - `args.rs`: the flags, their environment variables and the cluster
//!   file, validated into a [`ClusterChoice`];
//! - `file.rs`: a static cluster's file, followed through inotify;
//! - `lease.rs`: an etcd cluster's membership: the lease kept alive, the
//!   member key, the watches on the members and on the owner keys, the
//!   requests to take or give up owner keys (the `etcd` feature);
//! - `owners.rs`: the owner keys' transactions (create-if-absent, delete
//!   if still ours), batched;
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
#[cfg(feature = "etcd")]
mod owners;

pub(crate) use args::{ClusterArgs, ClusterChoice};
pub(crate) use node::{Cluster, ClusterEvent, Outcome};
