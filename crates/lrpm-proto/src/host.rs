//! The worker host protocol, version 1 (docs/hosts.md): the datagrams
//! lrpm and a worker host (and each worker it forks) exchange, as a pure
//! codec. Each datagram is one JSON object with a `type`.
//!
//! - host → lrpm: `ready` (with the `protocol` version it speaks, and
//!   `cgroup: true` when it forks into a cgroup it is handed), `forked` (a request's `id` and the worker's `pid`), `error` (a
//!   request's `id` and a `message`).
//! - lrpm → host: `fork` (`id`, `job`, `class`, `config`, `env`, `cwd`),
//!   with three descriptors: the worker's stdout, its stderr and its own
//!   socket; with `cgroup: true`, a fourth: the run's cgroup directory, for
//!   a host that said it forks into one (`clone3` with `CLONE_INTO_CGROUP`).
//! - worker → lrpm, on its own socket: `hello`; lrpm → worker: `go` (with
//!   lrpm's `pid`, which must be the worker's parent from then on).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version this lrpm speaks.
pub const PROTOCOL: u32 = 1;

/// The environment variable that names the host's socket descriptor.
pub const HOST_FD_ENV: &str = "LRPM_HOST_FD";

/// The variable lrpm puts in a host's environment as room for a worker's
/// run id: a worker rewrites it in place, in the environment block the
/// kernel shows as `/proc/PID/environ`, as `LRPM_RUN_ID=LRPM.RUN` padded
/// with NULs, so that lrpm's scans by run id (without cgroups, and the
/// guardian's) find hosted workers and what they fork.
pub const RUN_ID_SLOT_ENV: &str = "LRPM_RUN_ID_SLOT";

/// The value of [`RUN_ID_SLOT_ENV`]: room for `LRPM_RUN_ID=` and a run id
/// of up to 65 characters (`PID.RUN` takes at most 28).
pub const RUN_ID_SLOT_VALUE: &str = "------------------------------------------------------------";

/// The largest datagram either side sends: a `fork` carries the job's
/// configuration and environment, which validation bounds to 1 MiB.
pub const MAX_DATAGRAM: usize = 2 * 1024 * 1024;

/// What a host says to lrpm.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HostMsg {
    /// The host has loaded what it preloads, and takes requests.
    Ready {
        /// The protocol version it speaks.
        protocol: u32,
        /// Whether it forks its intermediate process into the cgroup
        /// directory that comes with a request (`clone3` with
        /// `CLONE_INTO_CGROUP`), so that lrpm need not move the worker.
        #[serde(default)]
        cgroup: bool,
    },
    /// Request `id` was forked: its worker is `pid`, and the intermediate
    /// process that forked it has been reaped.
    Forked {
        /// The request.
        id: u64,
        /// The worker's pid, as the host saw it.
        pid: u32,
    },
    /// Request `id` could not be forked.
    Error {
        /// The request.
        id: u64,
        /// Why.
        message: String,
    },
}

/// Why a host's datagram was refused: a host that says this is broken,
/// and is restarted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostMsgError {
    /// Not a JSON object of a known type with its fields.
    #[error("not a message of protocol {PROTOCOL}: {0}")]
    Garbage(String),
    /// A `ready` for another version.
    #[error("the host speaks protocol {0}, lrpm speaks {PROTOCOL}")]
    Version(u32),
}

impl HostMsg {
    /// Decodes one datagram from a host.
    pub fn decode(datagram: &[u8]) -> Result<HostMsg, HostMsgError> {
        let msg: HostMsg = serde_json::from_slice(datagram).map_err(|e| {
            let shown = String::from_utf8_lossy(&datagram[..datagram.len().min(80)]).into_owned();
            HostMsgError::Garbage(format!("{e} in {shown:?}"))
        })?;
        match msg {
            HostMsg::Ready { protocol, .. } if protocol != PROTOCOL => {
                Err(HostMsgError::Version(protocol))
            }
            msg => Ok(msg),
        }
    }
}

/// lrpm's request to fork a worker (sent with its three descriptors, or
/// four with `cgroup`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fork<'a> {
    /// The request's id, which the answer names.
    pub id: u64,
    /// The job id.
    pub job: &'a str,
    /// The job's `workerClass`.
    pub class: &'a str,
    /// The job's `workerConfig`.
    pub config: &'a serde_json::Value,
    /// The variables to set in the worker's environment, over the host's.
    pub env: BTreeMap<&'a str, &'a str>,
    /// The working directory, if the job has one.
    pub cwd: Option<&'a str>,
    /// Whether a fourth descriptor comes with the request: the run's
    /// cgroup directory, to clone the intermediate process into.
    pub cgroup: bool,
}

impl Fork<'_> {
    /// The datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = br#"{"type":"fork","#.to_vec();
        let body = serde_json::to_vec(self).expect("invariant: a fork serializes");
        out.extend_from_slice(&body[1..]);
        out
    }
}

/// lrpm's word to a worker that it may run: it is in its job's cgroup and
/// lrpm (`pid`) holds it.
pub fn go(lrpm_pid: u32) -> Vec<u8> {
    format!(r#"{{"type":"go","pid":{lrpm_pid}}}"#).into_bytes()
}

/// Whether a worker's first datagram is its `hello`.
pub fn is_hello(datagram: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_slice::<Typed<'_>>(datagram).is_ok_and(|t| t.kind == "hello")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_messages_decode() {
        assert_eq!(
            HostMsg::decode(br#"{"type":"ready","protocol":1}"#),
            Ok(HostMsg::Ready {
                protocol: 1,
                cgroup: false
            })
        );
        assert_eq!(
            HostMsg::decode(br#"{"type":"ready","protocol":1,"cgroup":true}"#),
            Ok(HostMsg::Ready {
                protocol: 1,
                cgroup: true
            })
        );
        assert_eq!(
            HostMsg::decode(br#"{"type":"forked","id":7,"pid":1234,"extra":true}"#),
            Ok(HostMsg::Forked { id: 7, pid: 1234 })
        );
        assert_eq!(
            HostMsg::decode(br#"{"type":"error","id":7,"message":"no class W"}"#),
            Ok(HostMsg::Error {
                id: 7,
                message: "no class W".into()
            })
        );
        assert_eq!(
            HostMsg::decode(br#"{"type":"ready","protocol":2}"#),
            Err(HostMsgError::Version(2))
        );
        for garbage in [
            &b"hello"[..],
            br#"{"type":"forked","id":7}"#,
            br#"{"type":"fork","id":1}"#,
            br#"[1]"#,
            b"",
        ] {
            assert!(
                matches!(HostMsg::decode(garbage), Err(HostMsgError::Garbage(_))),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn a_fork_is_one_json_object() {
        let config = serde_json::json!({"queue": "mail"});
        let fork = Fork {
            id: 3,
            job: "42",
            class: "App\\Worker",
            config: &config,
            env: BTreeMap::from([("LRPM_JOB_ID", "42")]),
            cwd: None,
            cgroup: true,
        };
        let value: serde_json::Value = serde_json::from_slice(&fork.encode()).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({"type": "fork", "id": 3, "job": "42", "class": "App\\Worker",
                "config": {"queue": "mail"}, "env": {"LRPM_JOB_ID": "42"}, "cwd": null,
                "cgroup": true})
        );
        let go: serde_json::Value = serde_json::from_slice(&go(99)).expect("JSON");
        assert_eq!(go, serde_json::json!({"type": "go", "pid": 99}));
        assert!(is_hello(br#"{"type":"hello"}"#));
        assert!(!is_hello(br#"{"type":"go"}"#) && !is_hello(b"hello"));
    }
}
