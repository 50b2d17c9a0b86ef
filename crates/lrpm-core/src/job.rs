//! The validated job model: what one declared job asks lrpm to run.
//!
//! Values of these types only ever come out of [`crate::decl`], which checks
//! every field; the supervisor relies on them being valid.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A job's unique identifier: the key of the configuration map.
///
/// php-lrpm allows integer and string keys; both are normalised to a string,
/// so `42` and `"42"` name the same job.
///
/// The text is shared: the core's maps and the process table hold a job's
/// id many times over, and a clone only counts a reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(Arc<str>);

impl JobId {
    /// Wraps an identifier.
    pub fn new(id: impl Into<String>) -> Self {
        Self(Arc::from(id.into()))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// An argv executed directly (`command` given as an array). Never empty.
    Argv(Vec<String>),
    /// A command line run through `/bin/sh -c` (`command` given as a string).
    Shell(String),
    /// A `Worker` registered by name in a library-mode binary (`workerClass`).
    WorkerClass(String),
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Program::Argv(argv) => {
                for (i, arg) in argv.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    f.write_str(arg)?;
                }
                Ok(())
            }
            Program::Shell(line) => f.write_str(line),
            Program::WorkerClass(class) => write!(f, "worker {class}"),
        }
    }
}

/// A signal that lrpm sends to a worker's process group.
///
/// The core only names signals; the process shell maps them to the
/// platform's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGHUP
    Hup,
    /// SIGINT
    Int,
    /// SIGQUIT
    Quit,
    /// SIGKILL: cannot be caught; the end of every stop escalation.
    Kill,
    /// SIGUSR1
    Usr1,
    /// SIGUSR2
    Usr2,
    /// SIGALRM
    Alrm,
    /// SIGTERM: the default polite stop signal.
    Term,
    /// SIGCONT: a stopped process goes on.
    Cont,
    /// SIGSTOP: cannot be caught; the process is stopped until SIGCONT.
    Stop,
    /// SIGTTIN (gunicorn: one worker more)
    Ttin,
    /// SIGTTOU (gunicorn: one worker less)
    Ttou,
    /// SIGWINCH
    Winch,
}

impl Signal {
    /// Every signal, in the order of their usual numbers.
    pub const ALL: [Signal; 13] = [
        Signal::Hup,
        Signal::Int,
        Signal::Quit,
        Signal::Kill,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Alrm,
        Signal::Term,
        Signal::Cont,
        Signal::Stop,
        Signal::Ttin,
        Signal::Ttou,
        Signal::Winch,
    ];

    /// The name without the `SIG` prefix, as written in a job declaration.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Alrm => "ALRM",
            Signal::Term => "TERM",
            Signal::Cont => "CONT",
            Signal::Stop => "STOP",
            Signal::Ttin => "TTIN",
            Signal::Ttou => "TTOU",
            Signal::Winch => "WINCH",
        }
    }

    /// Parses `TERM`, `SIGTERM` or `sigterm` alike.
    pub fn from_name(name: &str) -> Option<Signal> {
        let upper = name.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        Signal::ALL.into_iter().find(|s| s.name() == bare)
    }

    /// Parses what an operator may write (`lrpmctl signal`): a name as
    /// [`Signal::from_name`] takes it, or the signal's Linux number (`15`).
    pub fn from_name_or_number(text: &str) -> Option<Signal> {
        match text.trim().parse::<i32>() {
            Ok(n) => crate::human::signal_name(n)
                .standard()
                .and_then(Signal::from_name),
            Err(_) => Signal::from_name(text),
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// Default for `shortRunTimeSeconds`, as php-lrpm.
pub const DEFAULT_SHORT_RUN: Duration = Duration::from_secs(5);
/// Default for `shutdownTimeoutSeconds`, as php-lrpm.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A job's extra environment variables, each name once, in name order.
///
/// A sorted list rather than a `BTreeMap`: a map's first node has room for
/// eleven entries (about 540 bytes), which every job paid for its one or
/// two variables, 6 MB of a farm of 10,000.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(Vec<(String, String)>);

impl Env {
    /// Sets `name` to `value`; returns the value it replaces, if any.
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        match self.0.binary_search_by(|(n, _)| n.as_str().cmp(&name)) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, value)),
            Err(at) => {
                self.0.insert(at, (name, value));
                None
            }
        }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|at| &self.0[at].1)
    }

    /// The variables, in name order.
    pub fn iter(&self) -> EnvIter<'_> {
        self.into_iter()
    }

    /// How many variables there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same, holding no spare room.
    pub fn shrunk(mut self) -> Self {
        self.0.shrink_to_fit();
        self
    }
}

/// The variables of an [`Env`], in name order.
pub type EnvIter<'a> = std::iter::Map<
    std::slice::Iter<'a, (String, String)>,
    fn(&'a (String, String)) -> (&'a String, &'a String),
>;

impl<'a> IntoIterator for &'a Env {
    type Item = (&'a String, &'a String);
    type IntoIter = EnvIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(name, value)| (name, value))
    }
}

impl FromIterator<(String, String)> for Env {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(vars: I) -> Self {
        let mut env = Env::default();
        for (name, value) in vars {
            env.insert(name, value);
        }
        env.shrunk()
    }
}

/// One valid job declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Descriptive name, shown in status.
    pub name: String,
    /// What to run.
    pub program: Program,
    /// Handed to the worker (`LRPM_WORKER_CONFIG`, or `Worker::start`).
    pub worker_config: serde_json::Value,
    /// php-lrpm's modification time: when present, the job restarts only
    /// when a new declaration carries a larger one.
    pub mtime: Option<u64>,
    /// A run shorter than this is a failure and is restarted with backoff.
    pub short_run: Duration,
    /// How long the polite stop signal has before SIGKILL follows.
    pub shutdown_timeout: Duration,
    /// Extra environment variables.
    pub env: Env,
    /// Working directory.
    pub cwd: Option<String>,
    /// User to switch to before exec (root only).
    pub user: Option<String>,
    /// Group to switch to before exec (root only).
    pub group: Option<String>,
    /// The polite stop signal.
    pub stop_signal: Signal,
    /// `notify`: the worker says when it is ready (`READY=1`); until then
    /// its state is `starting`.
    pub notify: bool,
    /// `watchdogSeconds`: the worker must send `WATCHDOG=1` at least this
    /// often, or it is taken for hung and restarted.
    pub watchdog: Option<Duration>,
    /// `healthCheck`: a probe run every interval while the job runs.
    pub health_check: Option<crate::health::HealthCheck>,
    /// `instances`: how many copies of the job run, each a job of its own
    /// (`ID#0` … `ID#N-1`, see [`crate::instances`]); `None` when the key
    /// is not given: one job, under its own id.
    pub instances: Option<u32>,
    /// Which copy of an `instances` job this declaration runs (its
    /// `LRPM_INSTANCE`). Only the expansion of a declaration sets it, and
    /// then `instances` is `None`, so that a copy's declaration does not
    /// change with the count.
    pub instance: Option<u32>,
    /// `host`: the argv of the worker host that forks this job's worker
    /// (a [`Program::WorkerClass`] job only); jobs naming the same argv
    /// share one host process. `None`: the worker is executed afresh.
    pub host: Option<Vec<String>>,
    /// `memoryMax`: the cap of the job's memory in bytes (its cgroup's
    /// limit); `None`: no cap of its own.
    pub memory_max: Option<u64>,
}

impl JobSpec {
    /// A declaration with every optional field at its default.
    pub fn new(name: impl Into<String>, program: Program) -> Self {
        Self {
            name: name.into(),
            program,
            worker_config: serde_json::Value::Object(serde_json::Map::new()),
            mtime: None,
            short_run: DEFAULT_SHORT_RUN,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            env: Env::default(),
            cwd: None,
            user: None,
            group: None,
            stop_signal: Signal::Term,
            notify: false,
            watchdog: None,
            health_check: None,
            instances: None,
            instance: None,
            host: None,
            memory_max: None,
        }
    }

    /// Whether replacing `self` (running) by `new` must restart the job.
    ///
    /// php-lrpm's rule: when both declarations carry an `mtime`, only a
    /// larger `mtime` restarts the job (and a declaration with an equal or
    /// older `mtime` is ignored altogether). Without `mtime`, any change of
    /// content restarts it.
    pub fn needs_restart_for(&self, new: &JobSpec) -> bool {
        match (self.mtime, new.mtime) {
            (Some(old), Some(new)) => new > old,
            _ => self != new,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keeps_one_value_per_name_in_name_order() {
        let mut env: Env = [("B", "2"), ("A", "1"), ("B", "3")]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(env.len(), 2);
        assert_eq!(env.get("B").map(String::as_str), Some("3"));
        assert_eq!(env.insert("A".into(), "0".into()).as_deref(), Some("1"));
        assert_eq!(env.insert("C".into(), "4".into()), None);
        let vars: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(vars, [("A", "0"), ("B", "3"), ("C", "4")]);
        assert_eq!(env.get("D"), None);
        assert!(Env::default().is_empty());
    }

    #[test]
    fn signal_names_round_trip() {
        for s in Signal::ALL {
            assert_eq!(Signal::from_name(s.name()), Some(s));
            assert_eq!(Signal::from_name(&s.to_string()), Some(s));
            assert_eq!(Signal::from_name(&s.name().to_lowercase()), Some(s));
        }
        assert_eq!(Signal::from_name("SIGBOGUS"), None);
        assert_eq!(Signal::from_name_or_number("15"), Some(Signal::Term));
        assert_eq!(Signal::from_name_or_number("10"), Some(Signal::Usr1));
        assert_eq!(Signal::from_name_or_number("sigusr2"), Some(Signal::Usr2));
        assert_eq!(
            Signal::from_name_or_number("11"),
            None,
            "SIGSEGV is no signal of lrpm's"
        );
        assert_eq!(Signal::from_name_or_number("-1"), None);
        assert_eq!(Signal::from_name(""), None);
    }

    #[test]
    fn mtime_rule() {
        let mut a = JobSpec::new("a", Program::Shell("sleep 1".into()));
        a.mtime = Some(10);
        let mut b = a.clone();
        b.program = Program::Shell("sleep 2".into());
        assert!(!a.needs_restart_for(&b), "same mtime: no restart");
        b.mtime = Some(9);
        assert!(!a.needs_restart_for(&b), "older mtime: no restart");
        b.mtime = Some(11);
        assert!(a.needs_restart_for(&b));
        let mut c = a.clone();
        c.mtime = Some(11);
        assert!(
            a.needs_restart_for(&c),
            "newer mtime restarts even unchanged"
        );
    }

    #[test]
    fn content_rule_without_mtime() {
        let a = JobSpec::new("a", Program::Shell("sleep 1".into()));
        assert!(!a.needs_restart_for(&a.clone()));
        let mut b = a.clone();
        b.env.insert("X".into(), "1".into());
        assert!(a.needs_restart_for(&b));
        let mut c = a.clone();
        c.mtime = Some(1);
        assert!(a.needs_restart_for(&c), "gaining an mtime is a change");
    }
}
