//! The process layer of lrpm: everything that needs `unsafe` to start,
//! follow and contain processes, behind safe functions.
//!
//! - [`spawn`]: the low-level spawn, a vfork-style `clone` (or `clone3`
//!   into a cgroup) whose child makes raw system calls until it execs;
//!   [`lanes`] spreads a batch of spawns over two threads.
//! - [`command`]: a [`command::SpawnRequest`] (program, arguments,
//!   environment, identity, cgroup) turned into a spawn, and a child's
//!   failure into a [`command::SpawnError`].
//! - [`children`]: the registry of lrpm's own children and their reaping
//!   through pidfds; [`exits`]: the epoll set of the farm's pidfds;
//!   [`pidfd`]: one child followed by its pidfd in the async runtime.
//! - [`hosted`]: workers forked by a worker host: their socket, their
//!   `hello` with the sender's pidfd from the kernel, their adoption.
//! - [`containment`]: the cgroup tree of the farm, or the subreaper's
//!   reaper of orphans where there is no cgroup v2.
//! - [`notify`]: the workers' sd_notify socket, each datagram with its
//!   sender's pid from the kernel.
//! - [`procfs`]: the one parser of `/proc/PID/stat`; [`fd`]: descriptor
//!   hygiene and peer credentials; [`mem`]: the allocator's settings;
//!   [`oom`]: lrpm's and its workers' `oom_score_adj`.
//!
//! Architecture invariant: this is the only crate of lrpm that may use
//! `unsafe`; each use has a `SAFETY` note that says why it holds.
//!
//! The `tokio` feature (on by default) brings what waits in the async
//! runtime ([`exits`], [`pidfd`]); `lrpmctl` builds without it.
#![warn(missing_docs)]

pub mod children;
#[cfg(feature = "tokio")]
pub mod command;
#[cfg(feature = "tokio")]
pub mod containment;
#[cfg(feature = "tokio")]
pub mod exits;
pub mod fd;
#[cfg(feature = "tokio")]
pub mod hosted;
#[cfg(feature = "tokio")]
pub mod lanes;
pub mod mem;
#[cfg(feature = "tokio")]
pub mod notify;
#[cfg(feature = "tokio")]
pub mod oom;
#[cfg(feature = "tokio")]
pub mod pidfd;
pub mod procfs;
pub mod signal;
#[cfg(feature = "tokio")]
pub mod spawn;
