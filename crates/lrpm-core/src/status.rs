//! The status document: what `lrpmctl status --json` prints.
//!
//! These are plain serializable values; the supervisor core fills the job and
//! source parts ([`crate::supervisor::Supervisor::status`]), the shell adds the
//! supervisor's own facts, and `lrpmctl` reads the same types back. Times are
//! UTC seconds since the Unix epoch, as floats.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::human::signal_name;

/// The whole status document (without the protocol's `ok` flag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Facts about the supervisor and its configuration source.
    pub supervisor: SupervisorStatus,
    /// Every job lrpm supervises, ordered by id.
    pub jobs: Vec<JobStatus>,
    /// What the kernel says of each listed job's live process, by pid: only
    /// in the answer to a status request that asks for it
    /// (`{"cmd":"status","usage":true}`, what `lrpmctl status` sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<HashMap<u32, ProcessUsage>>,
}

/// A process's CPU time and resident memory, as `/proc/PID/stat` gave them
/// when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// User and system CPU time of all its threads, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// When it was read (UTC seconds): figures are read again when they are
    /// older than lrpm's bound for them (one second), so this may be before
    /// the request.
    pub at: f64,
}

/// Facts about the supervisor process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// The supervisor's pid.
    pub pid: u32,
    /// lrpm's version.
    pub version: String,
    /// When the supervisor started.
    pub started_at: f64,
    /// Whether a graceful shutdown is under way.
    #[serde(default)]
    pub shutting_down: bool,
    /// The configuration source.
    pub source: SourceStatus,
    /// What of lrpm's own holds jobs back, when something does: its
    /// descriptor limit (the reason, with the limit and how many jobs wait
    /// for it). The shell fills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
    /// What lrpm's own output lost: its log, and its workers' stdout and
    /// stderr.
    #[serde(default)]
    pub output: OutputStatus,
    /// The cluster this node belongs to, when it belongs to one (`--cluster-size`,
    /// `--cluster-file`, `--cluster`). The shell fills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// The worker hosts (docs/hosts.md), one per distinct `host` argv,
    /// ordered by argv; absent while there are none. The shell fills it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostStatus>,
}

/// One worker host: `supervisor.hosts[]` in status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Its argv: the `host` of the jobs it serves.
    pub argv: Vec<String>,
    /// Where it stands.
    pub state: HostState,
    /// Its pid, while a process runs (`starting` or `ready`).
    pub pid: Option<u32>,
    /// When its current process started, or (in `backoff`) when the last
    /// one ended.
    pub since: f64,
    /// How many times it was started again after a failure.
    pub restarts: u64,
    /// Starts handed to it and not forked yet: the workers that wait for it.
    pub waiting: usize,
    /// Why it last failed (it exited, hung, answered garbage, could not
    /// start), if it ever did.
    pub last_error: Option<String>,
    /// When it last failed.
    pub last_error_at: Option<f64>,
    /// In `backoff`: when it is started again.
    pub restart_at: Option<f64>,
}

/// Where a worker host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Started, loading what it preloads: not `ready` yet.
    Starting,
    /// Ready: it forks workers on request.
    Ready,
    /// It failed, and is started again after a backoff.
    Backoff,
}

impl HostState {
    /// The state's name, as in status.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Starting => "starting",
            HostState::Ready => "ready",
            HostState::Backoff => "backoff",
        }
    }
}

/// What each stream leaving lrpm lost since lrpm started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputStatus {
    /// lrpm's own log, on its stderr.
    pub log: StreamStatus,
    /// Workers' stdout lines, on lrpm's stdout.
    pub stdout: StreamStatus,
    /// Workers' stderr lines, on lrpm's stderr.
    pub stderr: StreamStatus,
    /// Workers' lines in the per-job log files (`--log-dir`), when lrpm
    /// writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_logs: Option<StreamStatus>,
}

/// What one output stream lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// Lines that never reached the stream: dropped from lrpm's log while
    /// its queue was full (stderr blocked), or lost in a failed write.
    pub lines_dropped: u64,
    /// Writes to the stream that failed.
    pub write_errors: u64,
    /// The last write error, if one happened.
    pub last_error: Option<String>,
}

impl OutputStatus {
    /// Whether any stream lost a line.
    pub fn lost(&self) -> bool {
        [&self.log, &self.stdout, &self.stderr]
            .into_iter()
            .chain(&self.job_logs)
            .any(|s| s.lines_dropped > 0 || s.write_errors > 0)
    }
}

/// The state of the configuration source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The source as given on the command line.
    pub uri: String,
    /// When a configuration was last loaded successfully.
    pub last_load_at: Option<f64>,
    /// How many attempts to load the source have finished since lrpm
    /// started, whatever they found: a configuration, an error, or nothing
    /// new (an unchanged file, an HTTP 304). The shell fills it.
    #[serde(default)]
    pub loads: u64,
    /// When the last of those attempts began: it saw the configuration as
    /// it was then or later, and what it found has been handled. The shell
    /// fills it.
    #[serde(default)]
    pub last_attempt_at: Option<f64>,
    /// Why the last load failed, if it did (the farm keeps the last good
    /// configuration meanwhile).
    pub last_error: Option<String>,
    /// Jobs of the last configuration that were left out, with the reason.
    #[serde(default)]
    pub invalid_jobs: BTreeMap<String, String>,
    /// Warnings about the last configuration (unknown keys…).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The configuration the removal guard (`--max-removal-ratio`) is
    /// holding back, if it is: none of it is applied until it is confirmed
    /// with `lrpmctl reload --force`, or a configuration that removes less
    /// arrives.
    #[serde(default)]
    pub held: Option<HeldConfig>,
    /// The connection of a source that keeps one to a server (postgres,
    /// etcd); absent for the others. The shell fills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionStatus>,
    /// The revision of the configuration last loaded, for a source that has
    /// one (etcd's store revision; postgres's count of loads). The shell
    /// fills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// The state of a source's connection to its server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// Whether it is connected.
    pub state: ConnectionState,
    /// Since when it is in that state (UTC seconds).
    pub since: f64,
    /// Why the connection was lost or could not be made; `None` while
    /// connected.
    #[serde(default)]
    pub error: Option<String>,
    /// When the next attempt to connect is due (UTC seconds), while
    /// reconnecting.
    #[serde(default)]
    pub retry_at: Option<f64>,
}

/// Where a source's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// The first attempt to connect is under way.
    Connecting,
    /// Connected: changes are followed.
    Connected,
    /// The connection was lost or refused; the farm runs on the last good
    /// configuration and the source tries again with backoff.
    Reconnecting,
}

/// A configuration held back by the removal guard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldConfig {
    /// How many of the declared jobs it would remove.
    pub removals: usize,
    /// How many jobs are declared now.
    pub declared: usize,
    /// The guard's ratio: a configuration that removes more than this share
    /// of the declared jobs is held.
    pub max_removal_ratio: f64,
    /// The ids of the first jobs it would remove, in id order (at most
    /// [`HeldConfig::SAMPLE`]).
    pub would_remove: Vec<String>,
    /// When the source first delivered a configuration that was held, since
    /// the last one that was applied.
    pub since: f64,
}

impl HeldConfig {
    /// How many ids [`HeldConfig::would_remove`] lists at most.
    pub const SAMPLE: usize = 20;

    /// The operator's message: what is held, and how to apply it.
    pub fn message(&self) -> String {
        format!(
            "configuration held back: it would remove {} of the {} declared jobs \
             (more than --max-removal-ratio {}); the farm is unchanged; apply it \
             with `lrpmctl reload --force`",
            self.removals, self.declared, self.max_removal_ratio
        )
    }
}

/// The state of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Its process is spawned and has not said `READY=1` yet (`notify`
    /// jobs only).
    Starting,
    /// Its process is running.
    Running,
    /// It is waiting for its next start after a short run.
    Backoff,
    /// Its process has been asked to stop (to restart, to be removed, or for
    /// shutdown).
    Stopping,
    /// Held stopped by an operator (`lrpmctl pause`) until resumed,
    /// whatever the source says.
    Paused,
    /// Assigned to this cluster node, whose owner key another node (or
    /// an expiring lease) still holds: it starts once this node owns it.
    Waiting,
}

impl JobState {
    /// The lowercase name used on the wire and in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Backoff => "backoff",
            JobState::Stopping => "stopping",
            JobState::Paused => "paused",
            JobState::Waiting => "waiting",
        }
    }
}

/// One job's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job id.
    pub id: String,
    /// The job's descriptive name.
    pub name: String,
    /// What it runs, for display.
    pub command: String,
    /// Its state.
    pub state: JobState,
    /// The pid of its current process, if it has one.
    pub pid: Option<u32>,
    /// When its current process started.
    pub started_at: Option<f64>,
    /// How many times it has been started again after its first start.
    pub restarts: u32,
    /// How many of its processes crashed: ended in a way lrpm did not ask
    /// for, or were stopped by lrpm as failed (watchdog, health check).
    /// Deliberate restarts (an update, an operator's restart) are not
    /// crashes.
    #[serde(default)]
    pub crashes: u32,
    /// How many of its processes the kernel's OOM killer ended (a kill seen
    /// in the process's cgroup).
    #[serde(default)]
    pub oom_kills: u32,
    /// How its previous process ended.
    pub last_exit: Option<ExitInfo>,
    /// The delay the next short run will be followed by.
    pub backoff_seconds: f64,
    /// When a job in backoff starts again.
    pub restart_at: Option<f64>,
    /// The declaration's `mtime`, if it has one.
    pub mtime: Option<u64>,
    /// Whether the job is still declared; `false` while a removed job stops.
    pub declared: bool,
    /// Why the source's current declaration of this job is invalid, if it is:
    /// the job keeps running on its last valid declaration meanwhile.
    pub invalid: Option<String>,
    /// What its health check says of its process, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The last `STATUS=` its process sent (see `lrpm_core::notify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
}

/// What a job's health check says of its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No probe has succeeded yet (nor failed `retries` times).
    Starting,
    /// The last probe succeeded.
    Healthy,
    /// `retries` probes failed in a row: the process is being restarted.
    Unhealthy,
}

impl Health {
    /// The lowercase name used on the wire and in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Why a process ended: `last_exit.reason` in status.
///
/// The shell tells how the process ended (an exit, a signal, a spawn that
/// failed, an OOM kill seen in its cgroup); the core replaces that by its
/// own reason when it had asked the process to stop: as a failure
/// ([`ExitReason::Watchdog`], [`ExitReason::Unhealthy`]) or on purpose
/// ([`ExitReason::Stopped`]: updated, restarted by an operator, removed).
/// Every reason but `Stopped` is a crash (see [`ExitReason::is_crash`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitReason {
    /// It exited by itself, with the exit code.
    #[default]
    Exit,
    /// A signal lrpm did not send killed it.
    Signal,
    /// The kernel's OOM killer killed a process of its cgroup (its
    /// `memoryMax`, or the host's memory ran out).
    OomKilled,
    /// It fell silent past `watchdogSeconds` (or sent `WATCHDOG=trigger`),
    /// and lrpm stopped it.
    Watchdog,
    /// Its health check failed `retries` times in a row, and lrpm stopped
    /// it.
    Unhealthy,
    /// It could not be started; the error's text is in
    /// [`ExitStatus::error`].
    SpawnFailed,
    /// lrpm stopped it on purpose: its declaration changed, an operator
    /// restarted it, or it was removed. Not a crash.
    Stopped,
}

impl ExitReason {
    /// The name used on the wire and in the status table.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Exit => "exit",
            ExitReason::Signal => "signal",
            ExitReason::OomKilled => "oom-killed",
            ExitReason::Watchdog => "watchdog",
            ExitReason::Unhealthy => "unhealthy",
            ExitReason::SpawnFailed => "spawn-failed",
            ExitReason::Stopped => "stopped",
        }
    }

    /// Whether such an end is a crash: one lrpm did not ask for, or asked
    /// for because the process failed (its watchdog, its health check).
    pub fn is_crash(self) -> bool {
        self != ExitReason::Stopped
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The number of the signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Why it could not be started, if it never ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it ended.
    #[serde(default)]
    pub reason: ExitReason,
}

impl ExitStatus {
    /// An exit with `code`.
    pub fn code(code: i32) -> Self {
        Self {
            code: Some(code),
            signal: None,
            error: None,
            reason: ExitReason::Exit,
        }
    }

    /// Death by signal number `signal`.
    pub fn signal(signal: i32) -> Self {
        Self {
            code: None,
            signal: Some(signal),
            error: None,
            reason: ExitReason::Signal,
        }
    }

    /// A process that could not be started.
    pub fn spawn_failed(error: impl Into<String>) -> Self {
        Self {
            code: None,
            signal: None,
            error: Some(error.into()),
            reason: ExitReason::SpawnFailed,
        }
    }

    /// The same end, for another reason.
    pub fn because(self, reason: ExitReason) -> Self {
        Self { reason, ..self }
    }

    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// How it ended, without the reason: `exited with code 1`, `killed by
    /// SIGKILL`, `could not start: REASON`; short: `exit 1`, `SIGKILL`,
    /// `spawn-failed`.
    fn fmt_how(&self, f: &mut fmt::Formatter<'_>, short: bool) -> fmt::Result {
        match (self.code, self.signal, &self.error) {
            (Some(code), _, _) if short => write!(f, "exit {code}"),
            (Some(code), _, _) => write!(f, "exited with code {code}"),
            (None, Some(signal), _) if short => write!(f, "{}", signal_name(signal)),
            (None, Some(signal), _) => write!(f, "killed by {}", signal_name(signal)),
            (None, None, Some(_)) if short => f.write_str("spawn-failed"),
            (None, None, Some(error)) => write!(f, "could not start: {error}"),
            (None, None, None) => f.write_str("ended"),
        }
    }
}

/// How the process ended, for people: `exited with code 1`, `killed by
/// SIGKILL`, `could not start: REASON`, and for the reasons that are not
/// told by the exit itself, the reason first: `oom-killed (killed by
/// SIGKILL)`, `watchdog (killed by SIGTERM)`, `stopped (exited with code
/// 0)`; as the log and error messages say it. The alternate form (`{:#}`)
/// is the short one of the status table's LAST EXIT column: `exit 1`,
/// `SIGKILL`, `spawn-failed` (the error, which may be long, is in `lrpmctl
/// status --json`), or the reason's name (`oom-killed`, `watchdog`,
/// `unhealthy`, `stopped`).
impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = f.alternate();
        match self.reason {
            ExitReason::Exit | ExitReason::Signal | ExitReason::SpawnFailed => {
                self.fmt_how(f, short)
            }
            reason if short => f.write_str(reason.as_str()),
            reason => {
                write!(f, "{reason} (")?;
                self.fmt_how(f, false)?;
                f.write_str(")")
            }
        }
    }
}

/// How and when a job's previous process ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// How it ended.
    #[serde(flatten)]
    pub status: ExitStatus,
    /// When.
    pub at: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_as_sentences_or_as_table_cells() {
        let cases = [
            (ExitStatus::code(1), "exited with code 1", "exit 1"),
            (ExitStatus::code(0), "exited with code 0", "exit 0"),
            (ExitStatus::signal(9), "killed by SIGKILL", "SIGKILL"),
            (ExitStatus::signal(18), "killed by SIGCONT", "SIGCONT"),
            (ExitStatus::signal(99), "killed by signal 99", "signal 99"),
            (
                ExitStatus::spawn_failed("cwd /nowhere: No such file or directory"),
                "could not start: cwd /nowhere: No such file or directory",
                "spawn-failed",
            ),
            (
                ExitStatus {
                    code: None,
                    signal: None,
                    error: None,
                    reason: ExitReason::Exit,
                },
                "ended",
                "ended",
            ),
            (
                ExitStatus::signal(9).because(ExitReason::OomKilled),
                "oom-killed (killed by SIGKILL)",
                "oom-killed",
            ),
            (
                ExitStatus::code(137).because(ExitReason::OomKilled),
                "oom-killed (exited with code 137)",
                "oom-killed",
            ),
            (
                ExitStatus::signal(15).because(ExitReason::Watchdog),
                "watchdog (killed by SIGTERM)",
                "watchdog",
            ),
            (
                ExitStatus::code(0).because(ExitReason::Unhealthy),
                "unhealthy (exited with code 0)",
                "unhealthy",
            ),
            (
                ExitStatus::signal(15).because(ExitReason::Stopped),
                "stopped (killed by SIGTERM)",
                "stopped",
            ),
        ];
        for (status, long, short) in cases {
            assert_eq!(status.to_string(), long);
            assert_eq!(format!("{status:#}"), short);
        }
    }

    #[test]
    fn reasons_are_kebab_case_on_the_wire_and_read_back() {
        for reason in [
            ExitReason::Exit,
            ExitReason::Signal,
            ExitReason::OomKilled,
            ExitReason::Watchdog,
            ExitReason::Unhealthy,
            ExitReason::SpawnFailed,
            ExitReason::Stopped,
        ] {
            let json = serde_json::to_string(&reason).expect("serializes");
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(serde_json::from_str::<ExitReason>(&json).ok(), Some(reason));
            assert_eq!(reason.is_crash(), reason != ExitReason::Stopped);
        }
        let info = ExitInfo {
            status: ExitStatus::spawn_failed("no such file"),
            at: 1.0,
        };
        assert_eq!(
            serde_json::to_value(&info).expect("serializes"),
            serde_json::json!({"code": null, "signal": null, "error": "no such file",
                               "reason": "spawn-failed", "at": 1.0})
        );
        // A status from an lrpm without reasons still reads.
        let old: ExitInfo =
            serde_json::from_str(r#"{"code":1,"signal":null,"at":2.0}"#).expect("reads");
        assert_eq!(old.status.reason, ExitReason::Exit);
    }
}

/// A cluster node's view of its cluster: `supervisor.cluster` in status,
/// and, with the assignment of every job, the answer to `cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `static` (a fixed size and index) or `etcd` (live members).
    pub mode: String,
    /// This node: its index in a static cluster, its node id on etcd.
    pub node: String,
    /// The members, this one included, ordered by name.
    pub members: Vec<MemberStatus>,
    /// The sharding strategy (`balanced`, `hash`, `rendezvous`).
    pub strategy: crate::shard::Strategy,
    /// Where the membership comes from: the cluster file's path, the etcd
    /// URI (without its password), or `flags`/`environment`.
    pub from: String,
    /// How many jobs of the map are assigned to this node.
    pub jobs_here: usize,
    /// How many jobs the map has, all nodes together.
    pub jobs_total: usize,
    /// The lease's time to live in seconds (etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<f64>,
    /// How long the lease has left at most, in seconds, from the send time
    /// of the last keep-alive that etcd answered (etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_left: Option<f64>,
    /// The connection to etcd (etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionStatus>,
    /// The last problem with the membership (a cluster file that became
    /// unreadable: the last good membership stays), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every job of the map with the node that runs it: the answer to
    /// `cluster` only (status leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<BTreeMap<String, String>>,
}

/// A member of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its name: its index, or its node id.
    pub name: String,
    /// Its rendezvous weight.
    pub weight: f64,
}
