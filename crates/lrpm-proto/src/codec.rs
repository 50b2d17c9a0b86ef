//! The control protocol, shared by the control server and `lrpmctl`.
//!
//! # Theory of operation
//!
//! Client and server talk over one Unix stream socket, one JSON object per
//! line each way. A client sends a [`Request`] line (`{"cmd":"status"}`) and
//! reads one [`Response`] line back (`{"ok":true,…}` or
//! `{"ok":false,"error":"…"}`); it may send more requests on the same
//! connection, one after the other.
//!
//! This module is a pure codec: it never touches a socket. [`split_line`]
//! frames a byte buffer into lines with a bound on their length, so that
//! neither side ever buffers without limit; [`Request::decode`] and
//! [`Response::decode`] turn one line into a value with a precise error for
//! every way it can be wrong, and the `encode` methods do the reverse. The
//! server (lrpm's control module) and the client (`lrpmctl`) only move
//! bytes.

use std::collections::HashMap;

use lrpm_core::job::Signal;
use lrpm_core::status::{ClusterStatus, JobStatus, ProcessUsage, Status, SupervisorStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The longest request line the server accepts, in bytes, without its
/// newline.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// The longest response line the client accepts, in bytes. A status
/// document is a few hundred bytes per job, so this leaves room for farms
/// far larger than anything lrpm supervises while still bounding a
/// misbehaving server.
pub const MAX_RESPONSE_LEN: usize = 256 * 1024 * 1024;

/// The commands of the protocol, in the order `help` lists them.
pub const COMMANDS: [CommandInfo; 11] = [
    CommandInfo {
        cmd: "status",
        request: r#"{"cmd":"status","ids":["ID"]}"#,
        help: "the status document: the supervisor, its configuration source and every job \
               (with ids, only those jobs)",
    },
    CommandInfo {
        cmd: "restart",
        request: r#"{"cmd":"restart","id":"ID"}"#,
        help: "restart job ID now, with its backoff reset (ID: a string or an integer); \
               \"ids\":[…] restarts several, \"all\":true every job that is not paused",
    },
    CommandInfo {
        cmd: "pause",
        request: r#"{"cmd":"pause","ids":["ID"]}"#,
        help: "stop the jobs and hold them stopped, whatever the source says, until resumed",
    },
    CommandInfo {
        cmd: "resume",
        request: r#"{"cmd":"resume","ids":["ID"]}"#,
        help: "start paused jobs again",
    },
    CommandInfo {
        cmd: "signal",
        request: r#"{"cmd":"signal","signal":"USR1","ids":["ID"]}"#,
        help: "send a signal (a name, with or without SIG, or a number) to the jobs' process groups",
    },
    CommandInfo {
        cmd: "reload",
        request: r#"{"cmd":"reload","force":false}"#,
        help: "read the configuration source again now",
    },
    CommandInfo {
        cmd: "reopen-logs",
        request: r#"{"cmd":"reopen-logs"}"#,
        help: "close and reopen the per-job log files of --log-dir (after logrotate renamed them)",
    },
    CommandInfo {
        cmd: "logs",
        request: r#"{"cmd":"logs","id":"ID","n":10}"#,
        help: "the last n lines (all kept when n is absent) of a job's output, from lrpm's in-memory ring (--log-buffer); with \"follow\":true, then each new line until the client disconnects",
    },
    CommandInfo {
        cmd: "stop",
        request: r#"{"cmd":"stop"}"#,
        help: "shut lrpm down gracefully; the reply comes before the workers are stopped",
    },
    CommandInfo {
        cmd: "cluster",
        request: r#"{"cmd":"cluster"}"#,
        help: "this node's cluster: its node, the members, and which node runs each job",
    },
    CommandInfo {
        cmd: "help",
        request: r#"{"cmd":"help"}"#,
        help: "this list of commands",
    },
];

/// One entry of [`COMMANDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    /// The command's name, the value of `cmd`.
    pub cmd: &'static str,
    /// An example request line.
    pub request: &'static str,
    /// What the command does.
    pub help: &'static str,
}

/// A command as the `help` response lists it on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandHelp {
    /// The command's name, the value of `cmd`.
    pub cmd: String,
    /// An example request line.
    pub request: String,
    /// What the command does.
    pub help: String,
}

impl From<&CommandInfo> for CommandHelp {
    fn from(info: &CommandInfo) -> Self {
        Self {
            cmd: info.cmd.to_owned(),
            request: info.request.to_owned(),
            help: info.help.to_owned(),
        }
    }
}

/// A line that is longer than the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {limit} bytes")]
pub struct LineTooLong {
    /// The limit that was exceeded.
    pub limit: usize,
}

/// Finds the first complete line in `buf`.
///
/// Returns the line's length without its terminator (a trailing `\r` is not
/// part of it either) and the number of bytes it takes up with its `\n`, or
/// `None` when `buf` holds no complete line yet. A line, complete or not,
/// longer than `limit` bytes is an error, so a reader that calls this after
/// every read never needs to hold more than `limit + 1` bytes.
pub fn split_line(buf: &[u8], limit: usize) -> Result<Option<(usize, usize)>, LineTooLong> {
    split_line_from(buf, 0, limit)
}

/// [`split_line`] for a reader that already knows that the first `scanned`
/// bytes of `buf` hold no `\n`: it only searches the rest, so that reading
/// a long line in many pieces costs time linear in its length.
pub fn split_line_from(
    buf: &[u8],
    scanned: usize,
    limit: usize,
) -> Result<Option<(usize, usize)>, LineTooLong> {
    let end = buf.len().min(limit.saturating_add(2));
    let start = scanned.min(end);
    // memchr: a status answer of megabytes is searched as it arrives, and
    // a byte-at-a-time search was an eighth of lrpmctl's instructions.
    match memchr::memchr(b'\n', &buf[start..end]) {
        Some(offset) => {
            let newline = start + offset;
            let len = if newline > 0 && buf[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            if len > limit {
                Err(LineTooLong { limit })
            } else {
                Ok(Some((len, newline + 1)))
            }
        }
        None if buf.len() > limit => Err(LineTooLong { limit }),
        None => Ok(None),
    }
}

/// Whether a line holds nothing but whitespace: such lines are skipped, so
/// that a person typing at the socket may press Enter.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// A control request.
///
/// A job id in a request (`id`, or each of `ids`) names its job or, when
/// no job has that id, every copy of the `instances` job of that id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The status document: `{"cmd":"status"}`.
    Status,
    /// The status document with only some jobs:
    /// `{"cmd":"status","ids":["a","b"]}`.
    StatusOf {
        /// The job ids.
        ids: Vec<String>,
    },
    /// The status document (of the jobs `ids` names, or of every job when
    /// it is empty) with each live process's CPU time and resident memory
    /// (`usage`): `{"cmd":"status","usage":true}`.
    StatusUsage {
        /// The job ids; none for every job.
        ids: Vec<String>,
    },
    /// Restart one job now, with its backoff reset:
    /// `{"cmd":"restart","id":"42"}`.
    Restart {
        /// The job id.
        id: String,
    },
    /// Restart several jobs now: `{"cmd":"restart","ids":["a","b"]}`.
    RestartJobs {
        /// The job ids.
        ids: Vec<String>,
    },
    /// Restart every job that is not paused: `{"cmd":"restart","all":true}`.
    RestartAll,
    /// Stop jobs and hold them stopped until resumed:
    /// `{"cmd":"pause","ids":["a"]}`.
    Pause {
        /// The job ids.
        ids: Vec<String>,
    },
    /// Start paused jobs again: `{"cmd":"resume","ids":["a"]}`.
    Resume {
        /// The job ids.
        ids: Vec<String>,
    },
    /// Send a signal to jobs' process groups:
    /// `{"cmd":"signal","signal":"USR1","ids":["a"]}` (the signal as a
    /// name, with or without `SIG`, or as a number).
    Signal {
        /// The signal.
        signal: Signal,
        /// The job ids.
        ids: Vec<String>,
    },
    /// Load the configuration again now.
    Reload {
        /// Apply it even past the removal guard.
        force: bool,
    },
    /// Reopen the per-job log files (`--log-dir`), after an external
    /// logrotate renamed them.
    ReopenLogs,
    /// The last lines of a job's output, from lrpm's in-memory ring:
    /// `{"cmd":"logs","id":"42","n":10}` (`n` absent: every line kept).
    Logs {
        /// The job id.
        id: String,
        /// How many lines at most, the newest.
        n: Option<u64>,
        /// Then send each new line as it comes (`"follow":true`), until
        /// the client disconnects.
        follow: bool,
    },
    /// Shut lrpm down gracefully.
    Stop,
    /// The cluster, with the node of every job.
    Cluster,
    /// The list of commands.
    Help,
}

/// Why a request line was refused. The `Display` text is the `error` of the
/// response.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The line is longer than [`MAX_REQUEST_LEN`].
    #[error("request longer than {MAX_REQUEST_LEN} bytes")]
    TooLong,
    /// The line is not JSON.
    #[error("malformed JSON: {0}")]
    Malformed(#[source] serde_json::Error),
    /// An object of the line has the same key twice. JSON leaves this
    /// undefined and most parsers let the last one win, so that
    /// `{"cmd":"status","cmd":"stop"}` would stop lrpm: it is refused, at any
    /// depth.
    #[error("{0}")]
    DuplicateKey(#[source] serde_json::Error),
    /// The line is JSON but not an object.
    #[error("a request must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// The object has no `cmd`.
    #[error("missing \"cmd\": expected one of {}", command_names())]
    MissingCommand,
    /// `cmd` is not a string.
    #[error("\"cmd\" must be a string, got {0}")]
    CommandNotAString(&'static str),
    /// `cmd` names no command.
    #[error("unknown command {0:?}: expected one of {names}", names = command_names())]
    UnknownCommand(String),
    /// A required argument is missing.
    #[error("{cmd} needs {arg:?} ({expected})")]
    MissingArgument {
        /// The command.
        cmd: &'static str,
        /// The argument.
        arg: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// An argument has a value that means nothing.
    #[error("{cmd}: {arg:?} {reason}")]
    BadValue {
        /// The command.
        cmd: &'static str,
        /// The argument.
        arg: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument has the wrong type.
    #[error("{cmd}: {arg:?} must be {expected}, got {got}")]
    WrongType {
        /// The command.
        cmd: &'static str,
        /// The argument.
        arg: &'static str,
        /// What it should be.
        expected: &'static str,
        /// What it is.
        got: &'static str,
    },
}

fn command_names() -> String {
    COMMANDS.map(|c| c.cmd).join(", ")
}

/// The JSON type of `value`, with an article, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `max` characters of `s`, for echoing a client's input back.
fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

impl Request {
    /// Decodes one request line (without its newline).
    ///
    /// A job id is accepted as a JSON string or integer (php-lrpm's ids are
    /// integers). Unknown fields are ignored, so that newer clients can add
    /// optional arguments. A key given twice in any object of the line is
    /// an error ([`RequestError::DuplicateKey`]).
    pub fn decode(line: &[u8]) -> Result<Request, RequestError> {
        if line.len() > MAX_REQUEST_LEN {
            return Err(RequestError::TooLong);
        }
        let value = serde_json::from_slice::<UniqueKeys>(line)
            .map_err(|e| {
                // Building a `Value` fails on data only for a duplicate key
                // (the one custom error of `UniqueKeys`); every other error
                // is the syntax's.
                if e.is_data() {
                    RequestError::DuplicateKey(e)
                } else {
                    RequestError::Malformed(e)
                }
            })?
            .0;
        let Value::Object(mut fields) = value else {
            return Err(RequestError::NotAnObject(kind(&value)));
        };
        let cmd = match fields.get("cmd") {
            None => return Err(RequestError::MissingCommand),
            Some(Value::String(cmd)) => cmd.as_str(),
            Some(other) => return Err(RequestError::CommandNotAString(kind(other))),
        };
        match cmd {
            "status" => {
                let usage = flag("status", &mut fields, "usage")?;
                match job_ids("status", &mut fields, false)? {
                    ids if usage => Ok(Request::StatusUsage { ids }),
                    ids if ids.is_empty() => Ok(Request::Status),
                    ids => Ok(Request::StatusOf { ids }),
                }
            }
            "restart" => restart(&mut fields),
            "pause" => Ok(Request::Pause {
                ids: job_ids("pause", &mut fields, true)?,
            }),
            "resume" => Ok(Request::Resume {
                ids: job_ids("resume", &mut fields, true)?,
            }),
            "signal" => Ok(Request::Signal {
                signal: signal(&mut fields)?,
                ids: job_ids("signal", &mut fields, true)?,
            }),
            "reload" => Ok(Request::Reload {
                force: flag("reload", &mut fields, "force")?,
            }),
            "reopen-logs" => Ok(Request::ReopenLogs),
            "logs" => Ok(Request::Logs {
                id: job_id("logs", &mut fields)?,
                n: match fields.remove("n") {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
                    Some(Value::Number(n)) => {
                        return Err(RequestError::BadValue {
                            cmd: "logs",
                            arg: "n",
                            reason: format!("must be a count of lines, 0 or more, not {n}"),
                        });
                    }
                    Some(other) => {
                        return Err(RequestError::WrongType {
                            cmd: "logs",
                            arg: "n",
                            expected: "a non-negative integer",
                            got: kind(&other),
                        });
                    }
                },
                follow: flag("logs", &mut fields, "follow")?,
            }),
            "stop" => Ok(Request::Stop),
            "cluster" => Ok(Request::Cluster),
            "help" => Ok(Request::Help),
            other => Err(RequestError::UnknownCommand(truncated(other, 64))),
        }
    }

    /// Encodes the request as one line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let mut value = match self {
            Request::Status
            | Request::RestartAll
            | Request::Reload { .. }
            | Request::ReopenLogs
            | Request::Stop
            | Request::Cluster
            | Request::Help => serde_json::json!({}),
            Request::Restart { id } => serde_json::json!({ "id": id }),
            Request::Logs { id, n: None, .. } => serde_json::json!({ "id": id }),
            Request::Logs { id, n: Some(n), .. } => serde_json::json!({ "id": id, "n": n }),
            Request::StatusUsage { ids } if ids.is_empty() => serde_json::json!({}),
            Request::StatusOf { ids }
            | Request::StatusUsage { ids }
            | Request::RestartJobs { ids }
            | Request::Pause { ids }
            | Request::Resume { ids } => serde_json::json!({ "ids": ids }),
            Request::Signal { signal, ids } => {
                serde_json::json!({ "signal": signal.name(), "ids": ids })
            }
        };
        let fields = value
            .as_object_mut()
            .expect("invariant: every request is an object");
        match self {
            Request::RestartAll => {
                fields.insert("all".into(), Value::Bool(true));
            }
            Request::Reload { force } => {
                fields.insert("force".into(), Value::Bool(*force));
            }
            Request::Logs { follow: true, .. } => {
                fields.insert("follow".into(), Value::Bool(true));
            }
            Request::StatusUsage { .. } => {
                fields.insert("usage".into(), Value::Bool(true));
            }
            _ => {}
        }
        fields.insert("cmd".into(), Value::from(self.name()));
        let mut line = serde_json::to_vec(&value)
            .expect("invariant: a request of strings and booleans encodes");
        line.push(b'\n');
        line
    }

    /// The command's name, the value of `cmd`.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status | Request::StatusOf { .. } | Request::StatusUsage { .. } => "status",
            Request::Restart { .. } | Request::RestartJobs { .. } | Request::RestartAll => {
                "restart"
            }
            Request::Pause { .. } => "pause",
            Request::Resume { .. } => "resume",
            Request::Signal { .. } => "signal",
            Request::Reload { .. } => "reload",
            Request::ReopenLogs => "reopen-logs",
            Request::Logs { .. } => "logs",
            Request::Stop => "stop",
            Request::Cluster => "cluster",
            Request::Help => "help",
        }
    }
}

/// A JSON value decoded as `serde_json::Value` is, except that an object
/// with a key given twice is an error (`Value` keeps the last one).
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

/// The visitor of [`UniqueKeys`]: `Value`'s, with the check on map keys.
struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so the conversion cannot fail; null
        // is what `Value` itself would make of them.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        UniqueKeys::deserialize(d).map(|v| v.0)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if fields.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key {:?} in the request",
                    truncated(&key, 64)
                )));
            }
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// A job id: a string, or an integer (php-lrpm's ids are integers).
fn id_text(value: Value) -> Result<String, Value> {
    match value {
        Value::String(id) => Ok(id),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        other => Err(other),
    }
}

fn job_id(cmd: &'static str, fields: &mut Map<String, Value>) -> Result<String, RequestError> {
    const EXPECTED: &str = "a job id: a string or an integer";
    match fields.remove("id") {
        None | Some(Value::Null) => Err(RequestError::MissingArgument {
            cmd,
            arg: "id",
            expected: EXPECTED,
        }),
        Some(value) => id_text(value).map_err(|other| RequestError::WrongType {
            cmd,
            arg: "id",
            expected: EXPECTED,
            got: kind(&other),
        }),
    }
}

/// The job ids of command `cmd`: `ids`, a list of ids, or `id`, one id;
/// `required`: at least one.
fn job_ids(
    cmd: &'static str,
    fields: &mut Map<String, Value>,
    required: bool,
) -> Result<Vec<String>, RequestError> {
    const EXPECTED: &str = "a list of job ids: strings or integers";
    let ids = match (fields.remove("ids"), fields.remove("id")) {
        (Some(Value::Array(items)), None) => items
            .into_iter()
            .map(|item| {
                id_text(item).map_err(|other| RequestError::WrongType {
                    cmd,
                    arg: "ids",
                    expected: EXPECTED,
                    got: kind(&other),
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        (None | Some(Value::Null), Some(id)) if id != Value::Null => {
            vec![id_text(id).map_err(|other| RequestError::WrongType {
                cmd,
                arg: "id",
                expected: "a job id: a string or an integer",
                got: kind(&other),
            })?]
        }
        (None | Some(Value::Null), _) => Vec::new(),
        (Some(Value::Array(_)), Some(_)) => {
            return Err(RequestError::BadValue {
                cmd,
                arg: "id",
                reason: "cannot be given with \"ids\"".into(),
            });
        }
        (Some(other), _) => {
            return Err(RequestError::WrongType {
                cmd,
                arg: "ids",
                expected: EXPECTED,
                got: kind(&other),
            });
        }
    };
    if required && ids.is_empty() {
        return Err(RequestError::MissingArgument {
            cmd,
            arg: "ids",
            expected: "at least one job id",
        });
    }
    Ok(ids)
}

/// The optional boolean argument `arg` of command `cmd`: absent or null is
/// `false`.
fn flag(
    cmd: &'static str,
    fields: &mut Map<String, Value>,
    arg: &'static str,
) -> Result<bool, RequestError> {
    match fields.remove(arg) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(set)) => Ok(set),
        Some(other) => Err(RequestError::WrongType {
            cmd,
            arg,
            expected: "a boolean",
            got: kind(&other),
        }),
    }
}

/// `restart`: one job (`id`), several (`ids`) or every one (`all`).
fn restart(fields: &mut Map<String, Value>) -> Result<Request, RequestError> {
    let all = flag("restart", fields, "all")?;
    let has_ids = !matches!(fields.get("ids"), None | Some(Value::Null));
    match (all, has_ids) {
        (true, false) if matches!(fields.get("id"), None | Some(Value::Null)) => {
            Ok(Request::RestartAll)
        }
        (true, _) => Err(RequestError::BadValue {
            cmd: "restart",
            arg: "all",
            reason: "cannot be given with job ids".into(),
        }),
        (false, true) => Ok(Request::RestartJobs {
            ids: job_ids("restart", fields, true)?,
        }),
        (false, false) => Ok(Request::Restart {
            id: job_id("restart", fields)?,
        }),
    }
}

/// `signal`'s signal: a name (`TERM`, `SIGTERM`) or a number (`15`).
fn signal(fields: &mut Map<String, Value>) -> Result<Signal, RequestError> {
    let text = match fields.remove("signal") {
        None | Some(Value::Null) => {
            return Err(RequestError::MissingArgument {
                cmd: "signal",
                arg: "signal",
                expected: "a signal name or number",
            });
        }
        Some(Value::String(name)) => name,
        Some(Value::Number(n)) if n.is_i64() => n.to_string(),
        Some(other) => {
            return Err(RequestError::WrongType {
                cmd: "signal",
                arg: "signal",
                expected: "a signal name or number",
                got: kind(&other),
            });
        }
    };
    Signal::from_name_or_number(&text).ok_or_else(|| {
        let names: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
        RequestError::BadValue {
            cmd: "signal",
            arg: "signal",
            reason: format!(
                "must be one of {} (SIG prefix optional) or its number, got {:?}",
                names.join(", "),
                truncated(&text, 32)
            ),
        }
    })
}

/// A control response.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `{"ok":true,"supervisor":…,"jobs":[…]}`: the answer to `status`.
    Status(Box<Status>),
    /// `{"ok":true,"message":"…"}`: a command was carried out.
    Done(String),
    /// `{"ok":true,"commands":[…]}`: the answer to `help`.
    Help(Vec<CommandHelp>),
    /// `{"ok":true,"cluster":{…}|null}`: the answer to `cluster`; `None`
    /// when lrpm runs alone.
    Cluster(Option<Box<ClusterStatus>>),
    /// `{"ok":true,"lines":["…"]}`: the answer to `logs`, oldest line
    /// first, each without its newline.
    Lines(Vec<String>),
    /// `{"ok":true,"skipped":N}`: in a followed `logs`, `N` lines were not
    /// sent because the client did not read them fast enough.
    Skipped(u64),
    /// `{"ok":false,"error":"…"}`: the request was refused or invalid.
    Error(String),
}

/// Why a response line could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The line is not JSON.
    #[error("malformed JSON: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The line is JSON but does not have the response's shape.
    #[error("{0}")]
    Shape(String),
    /// The status document does not have the expected fields.
    #[error("not a status document: {0}")]
    Status(#[source] serde_json::Error),
}

impl Response {
    /// The help response, built from [`COMMANDS`].
    pub fn help() -> Response {
        Response::Help(COMMANDS.iter().map(CommandHelp::from).collect())
    }

    /// Encodes the response as one line, newline included. `ok` comes first.
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Success<'a, T: Serialize> {
            ok: bool,
            #[serde(flatten)]
            body: &'a T,
        }
        #[derive(Serialize)]
        struct Done<'a> {
            ok: bool,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Help<'a> {
            ok: bool,
            commands: &'a [CommandHelp],
        }
        #[derive(Serialize)]
        struct Refusal<'a> {
            ok: bool,
            error: &'a str,
        }
        #[derive(Serialize)]
        struct Lines<'a> {
            ok: bool,
            lines: &'a [String],
        }
        #[derive(Serialize)]
        struct Skipped {
            ok: bool,
            skipped: u64,
        }
        #[derive(Serialize)]
        struct Cluster<'a> {
            ok: bool,
            cluster: Option<&'a ClusterStatus>,
        }
        let encoded = match self {
            Response::Status(status) => serde_json::to_vec(&Success {
                ok: true,
                body: status.as_ref(),
            }),
            Response::Done(message) => serde_json::to_vec(&Done { ok: true, message }),
            Response::Help(commands) => serde_json::to_vec(&Help { ok: true, commands }),
            Response::Error(error) => serde_json::to_vec(&Refusal { ok: false, error }),
            Response::Lines(lines) => serde_json::to_vec(&Lines { ok: true, lines }),
            Response::Skipped(skipped) => serde_json::to_vec(&Skipped {
                ok: true,
                skipped: *skipped,
            }),
            Response::Cluster(cluster) => serde_json::to_vec(&Cluster {
                ok: true,
                cluster: cluster.as_deref(),
            }),
        };
        let mut line = encoded.unwrap_or_else(|e| {
            // Only a map with non-string keys could fail, and the status
            // types have none; say so rather than panic.
            let error = format!("cannot encode the response: {e}");
            serde_json::to_vec(&Refusal {
                ok: false,
                error: &error,
            })
            .unwrap_or_else(|_| br#"{"ok":false,"error":"cannot encode the response"}"#.to_vec())
        });
        line.push(b'\n');
        line
    }

    /// Encodes the answer to `status` as [`Response::Status`] does, from
    /// its parts: `jobs` serializes as the list of [`JobStatus`]
    /// (lrpm-core's borrowed `JobsStatus`, so that nothing is copied on the
    /// way), into a buffer of `capacity` bytes to begin with.
    ///
    /// [`JobStatus`]: lrpm_core::status::JobStatus
    pub fn encode_status<J: Serialize>(
        supervisor: &SupervisorStatus,
        jobs: &J,
        capacity: usize,
    ) -> Vec<u8> {
        #[derive(Serialize)]
        struct StatusLine<'a, J> {
            ok: bool,
            supervisor: &'a SupervisorStatus,
            jobs: &'a J,
        }
        let mut line = Vec::with_capacity(capacity);
        let line_of = StatusLine {
            ok: true,
            supervisor,
            jobs,
        };
        match serde_json::to_writer(&mut line, &line_of) {
            Ok(()) => {
                line.push(b'\n');
                line
            }
            Err(e) => Response::Error(format!("cannot encode the response: {e}")).encode(),
        }
    }

    /// Adds `usage` to a status answer encoded by
    /// [`Response::encode_status`] (its `usage` field, which comes last);
    /// any other line (a refusal) is left as it is.
    pub fn add_usage(line: &mut Vec<u8>, usage: &HashMap<u32, ProcessUsage>) {
        const START: &[u8] = br#"{"ok":true,"#;
        if !line.starts_with(START) || !line.ends_with(b"}\n") {
            return;
        }
        let end = line.len() - 2;
        let mut tail = Vec::with_capacity(16 + usage.len() * 64);
        tail.extend_from_slice(br#","usage":"#);
        if serde_json::to_writer(&mut tail, usage).is_err() {
            // A map of numbers cannot fail to encode; if it did, the answer
            // goes without it, as from a lrpm that does not read usage.
            return;
        }
        tail.extend_from_slice(b"}\n");
        line.truncate(end);
        line.extend_from_slice(&tail);
    }

    /// Decodes the response line (without its newline) to `request`.
    pub fn decode(line: &[u8], request: &Request) -> Result<Response, ResponseError> {
        // A status document (megabytes for a large farm) is decoded in one
        // pass when it is what it should be; anything else takes the
        // general path below, which says what is wrong with it.
        if matches!(
            request,
            Request::Status | Request::StatusOf { .. } | Request::StatusUsage { .. }
        ) {
            if let Some(status) = Self::decode_status(line) {
                return Ok(Response::Status(Box::new(status)));
            }
        }
        /// The fields every response may have; the others (a status
        /// document's) are skipped without being built, which keeps
        /// decoding a large status cheap.
        #[derive(Deserialize)]
        struct Envelope {
            ok: Option<Value>,
            error: Option<Value>,
            message: Option<Value>,
            commands: Option<Value>,
            cluster: Option<Value>,
            lines: Option<Value>,
            skipped: Option<Value>,
        }
        let envelope: Envelope = serde_json::from_slice(line).map_err(|e| {
            if e.is_data() {
                ResponseError::Shape(format!("a response must be a JSON object: {e}"))
            } else {
                ResponseError::Malformed(e)
            }
        })?;
        match envelope.ok {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                return match envelope.error {
                    Some(Value::String(error)) => Ok(Response::Error(error)),
                    _ => Err(ResponseError::Shape(
                        "a refusal has no \"error\" string".into(),
                    )),
                };
            }
            _ => {
                return Err(ResponseError::Shape(
                    "a response must have a boolean \"ok\"".into(),
                ));
            }
        }
        match request {
            // The status document's types ignore the `ok` beside them.
            Request::Status | Request::StatusOf { .. } | Request::StatusUsage { .. } => {
                serde_json::from_slice::<Status>(line)
                    .map(|status| Response::Status(Box::new(status)))
                    .map_err(ResponseError::Status)
            }
            Request::Help => match envelope.commands {
                Some(commands) => serde_json::from_value(commands)
                    .map(Response::Help)
                    .map_err(|e| ResponseError::Shape(format!("bad \"commands\": {e}"))),
                None => Err(ResponseError::Shape(
                    "no \"commands\" in the answer to help".into(),
                )),
            },
            Request::Cluster => match envelope.cluster {
                Some(Value::Null) | None => Ok(Response::Cluster(None)),
                Some(cluster) => serde_json::from_value(cluster)
                    .map(|c| Response::Cluster(Some(Box::new(c))))
                    .map_err(|e| ResponseError::Shape(format!("bad \"cluster\": {e}"))),
            },
            Request::Logs { .. } => match (envelope.lines, envelope.skipped) {
                (Some(lines), _) => serde_json::from_value(lines)
                    .map(Response::Lines)
                    .map_err(|e| ResponseError::Shape(format!("bad \"lines\": {e}"))),
                (None, Some(Value::Number(n))) if n.as_u64().is_some() => {
                    Ok(Response::Skipped(n.as_u64().unwrap_or_default()))
                }
                _ => Err(ResponseError::Shape(
                    "no \"lines\" in the answer to logs".into(),
                )),
            },
            Request::Restart { .. }
            | Request::RestartJobs { .. }
            | Request::RestartAll
            | Request::Pause { .. }
            | Request::Resume { .. }
            | Request::Signal { .. }
            | Request::Reload { .. }
            | Request::ReopenLogs
            | Request::Stop => match envelope.message {
                Some(Value::String(message)) => Ok(Response::Done(message)),
                None => Ok(Response::Done(String::new())),
                Some(other) => Err(ResponseError::Shape(format!(
                    "\"message\" must be a string, got {}",
                    kind(&other)
                ))),
            },
        }
    }

    /// A successful status answer, decoded in one pass (the general path
    /// reads the line twice: once for the envelope, once for the
    /// document); `None` for anything else, a refusal included.
    fn decode_status(line: &[u8]) -> Option<Status> {
        #[derive(Deserialize)]
        struct Answer {
            ok: bool,
            supervisor: SupervisorStatus,
            jobs: Vec<JobStatus>,
            #[serde(default)]
            usage: Option<HashMap<u32, ProcessUsage>>,
        }
        match serde_json::from_slice::<Answer>(line) {
            Ok(Answer {
                ok: true,
                supervisor,
                jobs,
                usage,
            }) => Some(Status {
                supervisor,
                jobs,
                usage,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lrpm_core::status::{JobState, JobStatus, SourceStatus, SupervisorStatus};
    use proptest::prelude::*;

    fn err(line: &str) -> String {
        Request::decode(line.as_bytes())
            .expect_err("the line is invalid")
            .to_string()
    }

    #[test]
    fn decodes_every_command() {
        assert_eq!(
            Request::decode(br#"{"cmd":"status"}"#).expect("valid"),
            Request::Status
        );
        assert_eq!(
            Request::decode(br#"{"cmd":"stop"}"#).expect("valid"),
            Request::Stop
        );
        assert_eq!(
            Request::decode(br#"{"cmd":"help"}"#).expect("valid"),
            Request::Help
        );
        assert_eq!(
            Request::decode(br#"{"cmd":"reload"}"#).expect("valid"),
            Request::Reload { force: false }
        );
        assert_eq!(
            Request::decode(br#" {"cmd":"reload","force":true} "#).expect("valid"),
            Request::Reload { force: true }
        );
        assert_eq!(
            Request::decode(br#"{"cmd":"restart","id":"a b"}"#).expect("valid"),
            Request::Restart { id: "a b".into() }
        );
    }

    #[test]
    fn decodes_the_operators_commands() {
        let ok = |line: &str| Request::decode(line.as_bytes()).expect("valid");
        let strings = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            ok(r#"{"cmd":"status","ids":["a",7]}"#),
            Request::StatusOf {
                ids: strings(&["a", "7"])
            }
        );
        assert_eq!(ok(r#"{"cmd":"status","ids":[]}"#), Request::Status);
        assert_eq!(
            ok(r#"{"cmd":"status","id":"a"}"#),
            Request::StatusOf {
                ids: strings(&["a"])
            }
        );
        assert_eq!(
            ok(r#"{"cmd":"restart","ids":["a","b"]}"#),
            Request::RestartJobs {
                ids: strings(&["a", "b"])
            }
        );
        assert_eq!(ok(r#"{"cmd":"restart","all":true}"#), Request::RestartAll);
        assert_eq!(
            ok(r#"{"cmd":"restart","all":false,"id":"x"}"#),
            Request::Restart { id: "x".into() }
        );
        assert_eq!(
            ok(r#"{"cmd":"pause","ids":["a"]}"#),
            Request::Pause {
                ids: strings(&["a"])
            }
        );
        assert_eq!(
            ok(r#"{"cmd":"resume","id":3}"#),
            Request::Resume {
                ids: strings(&["3"])
            }
        );
        for (text, signal) in [
            (r#""USR1""#, Signal::Usr1),
            (r#""sigterm""#, Signal::Term),
            ("15", Signal::Term),
            (r#""1""#, Signal::Hup),
        ] {
            assert_eq!(
                ok(&format!(
                    r#"{{"cmd":"signal","signal":{text},"ids":["w"]}}"#
                )),
                Request::Signal {
                    signal,
                    ids: strings(&["w"])
                }
            );
        }
    }

    /// Asserts that each request is refused with exactly its error.
    fn refused(cases: &[(&str, &str)]) {
        for (request, error) in cases {
            assert_eq!(err(request), *error, "{request}");
        }
    }

    #[test]
    fn the_operators_commands_say_what_is_wrong() {
        refused(&[
            (
                r#"{"cmd":"pause"}"#,
                "pause needs \"ids\" (at least one job id)",
            ),
            (
                r#"{"cmd":"resume","ids":[]}"#,
                "resume needs \"ids\" (at least one job id)",
            ),
            (
                r#"{"cmd":"pause","ids":"a"}"#,
                "pause: \"ids\" must be a list of job ids: strings or integers, got a string",
            ),
            (
                r#"{"cmd":"pause","ids":[true]}"#,
                "pause: \"ids\" must be a list of job ids: strings or integers, got a boolean",
            ),
            (
                r#"{"cmd":"restart","all":true,"ids":["a"]}"#,
                "restart: \"all\" cannot be given with job ids",
            ),
            (
                r#"{"cmd":"restart","all":1}"#,
                "restart: \"all\" must be a boolean, got an integer",
            ),
            (
                r#"{"cmd":"signal","ids":["a"]}"#,
                "signal needs \"signal\" (a signal name or number)",
            ),
        ]);
        assert!(
            err(r#"{"cmd":"signal","signal":"SEGV","ids":["a"]}"#)
                .starts_with("signal: \"signal\" must be one of HUP, INT"),
        );
        refused(&[(
            r#"{"cmd":"signal","signal":"TERM"}"#,
            "signal needs \"ids\" (at least one job id)",
        )]);
    }

    #[test]
    fn integer_ids_are_php_lrpm_ids() {
        assert_eq!(
            Request::decode(br#"{"cmd":"restart","id":42}"#).expect("valid"),
            Request::Restart { id: "42".into() }
        );
        assert_eq!(
            Request::decode(br#"{"cmd":"restart","id":-7}"#).expect("valid"),
            Request::Restart { id: "-7".into() }
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            Request::decode(br#"{"cmd":"status","verbose":true}"#).expect("valid"),
            Request::Status
        );
    }

    #[test]
    fn a_duplicate_key_at_any_depth_is_an_error() {
        let e = err(r#"{"cmd":"status","cmd":"stop"}"#);
        assert!(
            e.starts_with(r#"duplicate key "cmd" in the request"#),
            "{e}"
        );
        let e = err(r#"{"cmd":"restart","id":"a","id":"b"}"#);
        assert!(e.starts_with(r#"duplicate key "id""#), "{e}");
        let e = err(r#"{"cmd":"status","x":[{"y":1,"y":2}]}"#);
        assert!(e.starts_with(r#"duplicate key "y""#), "{e}");
        // An escaped spelling of the same key is the same key.
        let e = err(r#"{"cmd":"status","\u0063md":"stop"}"#);
        assert!(e.starts_with(r#"duplicate key "cmd""#), "{e}");
        // The same key in two different objects is not a duplicate.
        assert_eq!(
            Request::decode(br#"{"cmd":"status","a":{"cmd":1},"b":{"cmd":2}}"#).expect("valid"),
            Request::Status
        );
    }

    #[test]
    fn every_error_is_precise() {
        refused(&[
            (
                r#"{"cmd":"logs"}"#,
                "logs needs \"id\" (a job id: a string or an integer)",
            ),
            (
                r#"{"cmd":"logs","id":"a","n":-1}"#,
                "logs: \"n\" must be a count of lines, 0 or more, not -1",
            ),
            (
                r#"{"cmd":"logs","id":"a","follow":"yes"}"#,
                "logs: \"follow\" must be a boolean, got a string",
            ),
        ]);
        assert!(err("{").starts_with("malformed JSON: "));
        assert!(err("").starts_with("malformed JSON: "));
        assert!(err(r#"{"cmd":"status"} {}"#).starts_with("malformed JSON: "));
        refused(&[
            ("[1]", "a request must be a JSON object, got an array"),
            (
                "\"status\"",
                "a request must be a JSON object, got a string",
            ),
            (
                "{}",
                "missing \"cmd\": expected one of status, restart, pause, resume, signal, reload, \
             reopen-logs, logs, stop, cluster, help",
            ),
            (r#"{"cmd":1}"#, "\"cmd\" must be a string, got an integer"),
            (
                r#"{"cmd":"dance"}"#,
                "unknown command \"dance\": expected one of status, restart, pause, resume, signal, \
             reload, reopen-logs, logs, stop, cluster, help",
            ),
            (
                r#"{"cmd":"restart"}"#,
                "restart needs \"id\" (a job id: a string or an integer)",
            ),
            (
                r#"{"cmd":"restart","id":{"a":1}}"#,
                "restart: \"id\" must be a job id: a string or an integer, got an object",
            ),
            (
                r#"{"cmd":"restart","id":1.5}"#,
                "restart: \"id\" must be a job id: a string or an integer, got a fractional number",
            ),
            (
                r#"{"cmd":"reload","force":"yes"}"#,
                "reload: \"force\" must be a boolean, got a string",
            ),
        ]);
        let long = format!(r#"{{"cmd":"{}"}}"#, "x".repeat(MAX_REQUEST_LEN));
        assert_eq!(err(&long), "request longer than 65536 bytes");
        let long_cmd = format!(r#"{{"cmd":"{}"}}"#, "y".repeat(1000));
        assert!(
            err(&long_cmd).len() < 200,
            "a long command is not echoed whole"
        );
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let e = Request::decode(b"{\"cmd\":\"st\xffatus\"}").expect_err("invalid");
        assert!(matches!(e, RequestError::Malformed(_)));
    }

    #[test]
    fn split_line_frames_and_bounds() {
        assert_eq!(split_line(b"", 8), Ok(None));
        assert_eq!(split_line(b"abc", 8), Ok(None));
        assert_eq!(split_line(b"abc\ndef", 8), Ok(Some((3, 4))));
        assert_eq!(split_line(b"abc\r\n", 8), Ok(Some((3, 5))));
        assert_eq!(split_line(b"\n", 8), Ok(Some((0, 1))));
        assert_eq!(split_line(b"12345678\n", 8), Ok(Some((8, 9))));
        assert_eq!(split_line(b"12345678\r\n", 8), Ok(Some((8, 10))));
        assert_eq!(split_line(b"12345678", 8), Ok(None));
        assert_eq!(split_line(b"123456789", 8), Err(LineTooLong { limit: 8 }));
        assert_eq!(split_line(b"123456789\n", 8), Err(LineTooLong { limit: 8 }));
        assert_eq!(split_line_from(b"abc\r\nx", 4, 8), Ok(Some((3, 5))));
        assert_eq!(split_line_from(b"abc", 99, 8), Ok(None));
    }

    #[test]
    fn requests_round_trip() {
        for request in [
            Request::Status,
            Request::Restart {
                id: "x\"y\n".into(),
            },
            Request::Reload { force: true },
            Request::Reload { force: false },
            Request::ReopenLogs,
            Request::Logs {
                id: "w#1".into(),
                n: Some(10),
                follow: false,
            },
            Request::Logs {
                id: "w".into(),
                n: None,
                follow: true,
            },
            Request::Stop,
            Request::Cluster,
            Request::Help,
            Request::StatusOf {
                ids: vec!["a".into(), "b#1".into()],
            },
            Request::StatusUsage { ids: Vec::new() },
            Request::StatusUsage {
                ids: vec!["a".into()],
            },
            Request::RestartJobs {
                ids: vec!["a".into()],
            },
            Request::RestartAll,
            Request::Pause {
                ids: vec!["a".into()],
            },
            Request::Resume {
                ids: vec!["a".into(), "c".into()],
            },
            Request::Signal {
                signal: Signal::Usr2,
                ids: vec!["a".into()],
            },
        ] {
            let line = request.encode();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(
                Request::decode(&line[..line.len() - 1]).expect("valid"),
                request
            );
        }
    }

    #[test]
    fn a_status_encoded_from_its_parts_is_the_status_response() {
        let mut status = sample_status();
        status.supervisor.source.last_error = Some("x \"y\"".into());
        status.supervisor.source.held = Some(lrpm_core::status::HeldConfig {
            removals: 3,
            declared: 4,
            max_removal_ratio: 0.5,
            would_remove: vec!["a".into()],
            since: 1.5,
        });
        let mut second = status.jobs[0].clone();
        second.id = "43".into();
        second.last_exit = Some(lrpm_core::status::ExitInfo {
            status: lrpm_core::status::ExitStatus::spawn_failed("no such file"),
            at: 2.25,
        });
        status.jobs.push(second);
        for capacity in [0, 10, 1 << 16] {
            let line = Response::encode_status(&status.supervisor, &status.jobs, capacity);
            assert_eq!(line, Response::Status(Box::new(status.clone())).encode());
        }
    }

    #[test]
    fn usage_is_added_to_a_status_answer_and_read_back() {
        let status = sample_status();
        let request = Request::StatusUsage { ids: Vec::new() };
        let usage = HashMap::from([(
            1234,
            ProcessUsage {
                cpu_seconds: 1.25,
                rss_bytes: 4096,
                at: 1_700_000_000.5,
            },
        )]);
        let mut line = Response::encode_status(&status.supervisor, &status.jobs, 0);
        Response::add_usage(&mut line, &usage);
        assert_eq!(line.last(), Some(&b'\n'));
        let with_usage = Status {
            usage: Some(usage.clone()),
            ..status.clone()
        };
        assert_eq!(
            Response::decode(&line[..line.len() - 1], &request).expect("valid"),
            Response::Status(Box::new(with_usage.clone()))
        );
        assert_eq!(line, Response::Status(Box::new(with_usage)).encode());
        // A refusal is left as it is.
        let mut refusal = Response::Error("no job x".into()).encode();
        let before = refusal.clone();
        Response::add_usage(&mut refusal, &usage);
        assert_eq!(refusal, before);
        // A usage that is not a boolean is refused.
        assert!(Request::decode(br#"{"cmd":"status","usage":"yes"}"#).is_err());
        assert_eq!(
            Request::decode(br#"{"cmd":"status","usage":false}"#).expect("valid"),
            Request::Status
        );
    }

    /// The status of 10,000 jobs, encoded from the core's borrowed status
    /// and from the owned document: the same line. With `--nocapture` (and
    /// `--release`) it prints what each way costs.
    #[test]
    fn ten_thousand_jobs_encode_alike_from_the_borrowed_status() {
        use lrpm_core::supervisor::{Action, Config, Supervisor};
        use lrpm_core::{Declaration, JobId, JobSpec, Program};
        use std::time::{Duration, Instant};

        const JOBS: usize = 10_000;
        let mut decl = Declaration::default();
        for i in 0..JOBS {
            let program = Program::Argv(vec!["sleep".into(), "100000".into()]);
            decl.jobs.insert(
                JobId::new(format!("job-{i}")),
                std::sync::Arc::new(JobSpec::new(format!("Job number {i}"), program)),
            );
        }
        let start = Instant::now();
        let mut core = Supervisor::new(Config::default());
        core.handle_config(start, decl);
        let mut pid = 1000;
        while let Some(action) = core.poll_action() {
            if let Action::Spawn { run, .. } = action {
                pid += 1;
                core.handle_spawned(start, run, pid);
            }
        }
        let now = start + Duration::from_secs(60);
        let supervisor = SupervisorStatus {
            pid: 1,
            version: "0.1.0".into(),
            started_at: 1_764_000_000.0,
            shutting_down: false,
            source: core.status_source(now, 1_764_000_060.5),
            output: Default::default(),
            held_back: None,
            cluster: None,
            hosts: Vec::new(),
        };
        let owned = || {
            let (source, jobs) = core.status(now, 1_764_000_060.5);
            let mut supervisor = supervisor.clone();
            supervisor.source = source;
            Response::Status(Box::new(Status {
                supervisor,
                jobs,
                usage: None,
            }))
            .encode()
        };
        let borrowed = || {
            let jobs = core.status_jobs(now, 1_764_000_060.5);
            Response::encode_status(&supervisor, &jobs, 256 * JOBS)
        };
        let time = |f: &dyn Fn() -> Vec<u8>| {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(f());
                    t.elapsed()
                })
                .min()
                .expect("five runs")
        };
        let line = borrowed();
        assert_eq!(line, owned());
        assert_eq!(
            Response::decode(&line[..line.len() - 1], &Request::Status)
                .map(|r| match r {
                    Response::Status(status) => status.jobs.len(),
                    _ => 0,
                })
                .expect("decodes"),
            JOBS
        );
        eprintln!(
            "status of {JOBS} jobs, {} bytes: owned document then encoded {:?}; \
             serialized from the core {:?}",
            line.len(),
            time(&owned),
            time(&borrowed)
        );
    }

    /// Random JSON values, objects nested in arrays nested in objects.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn sample_status() -> Status {
        Status {
            supervisor: SupervisorStatus {
                pid: 1,
                version: "0.1.0".into(),
                started_at: 1_700_000_000.0,
                shutting_down: false,
                source: SourceStatus {
                    uri: "jobs.toml".into(),
                    ..SourceStatus::default()
                },
                output: Default::default(),
                held_back: None,
                cluster: None,
                hosts: Vec::new(),
            },
            jobs: vec![JobStatus {
                id: "42".into(),
                name: "Job 42".into(),
                command: "sleep 1000".into(),
                state: JobState::Running,
                pid: Some(1234),
                started_at: Some(1_700_000_000.5),
                restarts: 0,
                crashes: 0,
                oom_kills: 0,
                last_exit: None,
                backoff_seconds: 1.0,
                restart_at: None,
                mtime: None,
                declared: true,
                invalid: None,
                health: Some(lrpm_core::status::Health::Healthy),
                status_text: Some("serving".into()),
            }],
            usage: None,
        }
    }

    #[test]
    fn responses_round_trip() {
        let status = Response::Status(Box::new(sample_status()));
        let line = status.encode();
        let value: Value = serde_json::from_slice(&line).expect("valid");
        assert_eq!(value["ok"], true);
        assert_eq!(value["supervisor"]["pid"], 1);
        assert_eq!(value["jobs"][0]["id"], "42");
        let body = &line[..line.len() - 1];
        assert_eq!(
            Response::decode(body, &Request::Status).expect("valid"),
            status
        );

        let lines = Response::Lines(vec!["one".into(), "two \u{1b}[1m".into()]);
        let line = lines.encode();
        let logs = Request::Logs {
            id: "42".into(),
            n: None,
            follow: true,
        };
        assert_eq!(
            Response::decode(&line[..line.len() - 1], &logs).expect("valid"),
            lines
        );
        let line = Response::Skipped(12).encode();
        assert_eq!(line, b"{\"ok\":true,\"skipped\":12}\n");
        assert_eq!(
            Response::decode(&line[..line.len() - 1], &logs).expect("valid"),
            Response::Skipped(12)
        );

        let done = Response::Done("job 42 is restarting".into());
        let line = done.encode();
        let restart = Request::Restart { id: "42".into() };
        assert_eq!(
            Response::decode(&line[..line.len() - 1], &restart).expect("valid"),
            done
        );

        let help = Response::help();
        let line = help.encode();
        assert_eq!(
            Response::decode(&line[..line.len() - 1], &Request::Help).expect("valid"),
            help
        );

        let error = Response::Error("unknown job 7".into());
        let line = error.encode();
        assert_eq!(line, b"{\"ok\":false,\"error\":\"unknown job 7\"}\n");
        assert_eq!(
            Response::decode(&line[..line.len() - 1], &Request::Stop).expect("valid"),
            error
        );
    }

    #[test]
    fn bad_responses_are_errors() {
        let bad = |line: &str, request: &Request| Response::decode(line.as_bytes(), request);
        assert!(bad("nonsense", &Request::Status).is_err());
        assert!(bad("[]", &Request::Status).is_err());
        assert!(bad("{}", &Request::Stop).is_err());
        assert!(bad(r#"{"ok":"yes"}"#, &Request::Stop).is_err());
        assert!(bad(r#"{"ok":false}"#, &Request::Stop).is_err());
        assert!(bad(r#"{"ok":true}"#, &Request::Status).is_err());
        assert!(bad(r#"{"ok":true}"#, &Request::Help).is_err());
        assert!(bad(r#"{"ok":true,"message":3}"#, &Request::Stop).is_err());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes, &Request::Status);
            let _ = Response::decode(&bytes, &Request::Help);
            let _ = split_line(&bytes, 16);
            let _ = split_line_from(&bytes, bytes.len() / 2, 16);
            let _ = split_line_from(&bytes, usize::MAX, usize::MAX);
        }

        #[test]
        fn decoder_never_panics_on_near_requests(
            cmd in prop_oneof![
                Just("status".to_owned()), Just("restart".to_owned()),
                Just("reload".to_owned()), Just("stop".to_owned()), ".*"
            ],
            id in prop_oneof![
                Just("null".to_owned()), Just("{}".to_owned()), Just("[1]".to_owned()),
                Just("1e400".to_owned()), Just("-0".to_owned()), Just("18446744073709551616".to_owned()),
                any::<i64>().prop_map(|n| n.to_string()), any::<f64>().prop_map(|n| n.to_string()),
                ".*".prop_map(|s| serde_json::to_string(&s).expect("valid")),
            ],
            cut in any::<prop::sample::Index>(),
        ) {
            let line = format!(r#"{{"cmd":{},"id":{id},"force":{id}}}"#, serde_json::to_string(&cmd).expect("valid"));
            let _ = Request::decode(line.as_bytes());
            let bytes = line.as_bytes();
            let _ = Request::decode(&bytes[..cut.index(bytes.len() + 1)]);
        }

        #[test]
        fn unique_keys_decode_as_value_does_and_duplicates_fail(
            value in json_value(),
            key in "[a-z]{1,3}",
        ) {
            // Without duplicates, the strict decoding is `Value`'s (compared
            // with `Value` parsed from the same text, since parsing a float
            // may round its last digit).
            let line = serde_json::to_string(&value).expect("encodes");
            let strict = serde_json::from_str::<UniqueKeys>(&line).expect("no duplicate");
            let loose = serde_json::from_str::<Value>(&line).expect("valid");
            prop_assert_eq!(&strict.0, &loose);
            // The same document with one key repeated in an object nested in
            // it is refused.
            let nested = format!(r#"{{"cmd":"status","n":[{{"{key}":1,"x":{line},"{key}":2}}]}}"#);
            let e = Request::decode(nested.as_bytes()).expect_err("duplicate");
            prop_assert!(matches!(e, RequestError::DuplicateKey(_)), "{}", e);
        }

        #[test]
        fn operator_requests_round_trip(
            ids in proptest::collection::vec(".*", 1..4),
            which in 0u8..5,
            signal in proptest::sample::select(Signal::ALL.to_vec()),
        ) {
            let request = match which {
                0 => Request::StatusOf { ids },
                1 => Request::RestartJobs { ids },
                2 => Request::Pause { ids },
                3 => Request::Resume { ids },
                _ => Request::Signal { signal, ids },
            };
            let line = request.encode();
            prop_assert_eq!(Request::decode(&line[..line.len() - 1]).expect("valid"), request);
        }

        #[test]
        fn restart_ids_round_trip(id in ".*") {
            let request = Request::Restart { id };
            let line = request.encode();
            prop_assert_eq!(Request::decode(&line[..line.len() - 1]).expect("valid"), request);
        }

        #[test]
        fn split_line_respects_the_limit(bytes in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..64), limit in 0usize..24)
        {
            match split_line(&bytes, limit) {
                Ok(Some((len, consumed))) => {
                    prop_assert!(len <= limit);
                    prop_assert!(consumed <= bytes.len());
                    prop_assert_eq!(bytes[consumed - 1], b'\n');
                    prop_assert!(!bytes[..consumed - 1].contains(&b'\n'));
                }
                Ok(None) => {
                    prop_assert!(!bytes.contains(&b'\n'));
                    prop_assert!(bytes.len() <= limit);
                }
                Err(_) => {
                    let first = bytes.iter().position(|&b| b == b'\n').unwrap_or(bytes.len());
                    prop_assert!(first > limit);
                }
            }
        }
    }
}
