//! What the lrpm supervisor and its control client `lrpmctl` share: the
//! control protocol's [codec], the [socket] path chain, and the [exit]
//! codes; and the [host] protocol lrpm speaks with its worker hosts.
//!
//! Architecture invariant: this crate performs no I/O beyond looking at
//! paths ([`socket::client_socket`]); it depends on neither tokio nor libc,
//! rustix or nix, so the codec is the same pure code on both ends.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod codec;
pub mod exit;
pub mod host;
pub mod socket;

/// lrpm's version as `--version` and the status document show it: the
/// package version and, when lrpm was built from a git checkout (or
/// `LRPM_GIT_REVISION` was set), the revision: `0.1.0 (git 7c3a887abcde)`.
pub const VERSION: &str = env!("LRPM_VERSION");
