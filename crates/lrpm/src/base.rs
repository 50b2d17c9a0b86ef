//! The vocabulary every module of the shell shares: exit codes, the names
//! of environment variables, and the roles a re-executed lrpm binary plays.
//!
//! Architecture invariant: this module imports nothing from the crate, so
//! any module may import it.

use std::ffi::OsString;
use std::os::fd::RawFd;

use lrpm_process::command::{HANDED_FD, SpawnRequest};

pub(crate) use lrpm_proto::exit::{EX_IOERR, EX_NOINPUT, EX_USAGE};

/// A worker's job id.
pub(crate) const JOB_ID_ENV: &str = "LRPM_JOB_ID";
/// A worker's job name.
pub(crate) const JOB_NAME_ENV: &str = "LRPM_JOB_NAME";
/// Which copy of an `instances` job a worker is (`0` … `N-1`); unset for a
/// job without `instances`.
pub(crate) const INSTANCE_ENV: &str = "LRPM_INSTANCE";
/// A worker's `workerConfig`, as JSON.
pub(crate) const WORKER_CONFIG_ENV: &str = "LRPM_WORKER_CONFIG";
/// The bearer token of the HTTP source: never inherited by a child.
pub(crate) const HTTP_TOKEN_ENV: &str = "LRPM_HTTP_TOKEN";
/// The password of the etcd source's user, when its URI names the user
/// without one: never inherited by a child.
pub(crate) const ETCD_PASSWORD_ENV: &str = "LRPM_ETCD_PASSWORD";
/// What no child of lrpm inherits from lrpm's own environment unless its
/// declaration sets it: the sources' secrets, an `LRPM_RUN_ID` lrpm
/// itself inherited (which would tie the child to a run of another lrpm),
/// an `LRPM_INSTANCE` it inherited (lrpm sets it only for a copy of an
/// `instances` job, so the copy number of an outer lrpm's job would pass
/// for the child's own), and systemd's notification settings, which are
/// lrpm's, not its workers'.
pub(crate) const HIDDEN_ENV: &[&str] = &HIDDEN;
const HIDDEN: [&str; 7] = [
    HTTP_TOKEN_ENV,
    ETCD_PASSWORD_ENV,
    lrpm_process::containment::RUN_ID_ENV,
    INSTANCE_ENV,
    NOTIFY_SOCKET_ENV,
    WATCHDOG_USEC_ENV,
    WATCHDOG_PID_ENV,
];
/// The variables of a run that every worker's own replace (all but its
/// run id and copy, which [`HIDDEN`] holds): what lrpm itself has when it
/// runs as a job of another lrpm.
const RUN_ENV: [&str; 3] = [JOB_ID_ENV, JOB_NAME_ENV, WORKER_CONFIG_ENV];
/// What a worker host does not inherit from lrpm's own environment:
/// [`HIDDEN_ENV`], and the other variables of a run that lrpm itself has
/// when it runs as a job of another lrpm (its job id and name, its
/// `workerConfig`, its copy). A host is no run: it and the workers it forks
/// see only what each fork request sets, their own run's variables.
pub(crate) const HOST_HIDDEN_ENV: &[&str] = &{
    let mut all = [""; HIDDEN.len() + RUN_ENV.len()];
    let mut i = 0;
    while i < HIDDEN.len() {
        all[i] = HIDDEN[i];
        i += 1;
    }
    while i < all.len() {
        all[i] = RUN_ENV[i - HIDDEN.len()];
        i += 1;
    }
    all
};
/// sd_notify's socket: lrpm's own (under systemd) never reaches a worker;
/// each worker gets lrpm's notification socket instead.
pub(crate) const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// sd_notify's watchdog period in microseconds: set for a job with
/// `watchdogSeconds`, lrpm's own never passed on.
pub(crate) const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The pid systemd's watchdog is for: lrpm's own never passed on.
pub(crate) const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// The first argument of a worker sandbox: `BINARY __lrpm-worker CLASS`.
pub(crate) const WORKER_ROLE: &str = "__lrpm-worker";
/// The first argument of a configuration sandbox:
/// `BINARY __lrpm-config INTERVAL`.
pub(crate) const CONFIG_ROLE: &str = "__lrpm-config";
/// The first argument of an output hub: `BINARY __lrpm-output-hub FD
/// [json]`.
pub(crate) const HUB_ROLE: &str = "__lrpm-output-hub";
/// The first argument of lrpm's guardian:
/// `BINARY __lrpm-guardian LRPM_PID [CGROUP_TREE]`.
pub(crate) const GUARDIAN_ROLE: &str = "__lrpm-guardian";

/// What a run of the lrpm binary (or of a library-mode binary) is for,
/// read from its first argument. lrpm re-executes itself
/// (`/proc/self/exe`) for every role but the supervisor's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Role {
    /// The supervisor, with its command line.
    Supervisor,
    /// A worker sandbox running the registered worker `class`.
    Worker {
        /// The `workerClass`.
        class: String,
    },
    /// The configuration sandbox, loading every `interval_secs` seconds (0:
    /// streaming).
    Config {
        /// `--interval`, in seconds.
        interval_secs: f64,
    },
    /// An output hub, on the socket it was handed as descriptor `fd`.
    OutputHub {
        /// Its socket's descriptor number.
        fd: RawFd,
        /// Whether it writes workers' lines as JSON objects (`--log-format
        /// json`) rather than prefixed text.
        json: bool,
    },
    /// lrpm's guardian (the `guardian` module), on the socket handed to it
    /// as descriptor 3.
    Guardian {
        /// The pid of the lrpm it watches.
        lrpm: u32,
        /// lrpm's cgroup tree (`PARENT/lrpm-PID`), if it has one.
        tree: Option<std::path::PathBuf>,
    },
}

/// A role's arguments that make no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RoleError(String);

impl Role {
    /// The role of a process started with `args` (the first is the program
    /// name).
    pub(crate) fn parse(args: &[OsString]) -> Result<Role, RoleError> {
        let arg = |i: usize| args.get(i).and_then(|a| a.to_str());
        match arg(1) {
            Some(WORKER_ROLE) => match arg(2) {
                Some(class) => Ok(Role::Worker {
                    class: class.to_owned(),
                }),
                None => Err(RoleError(format!("{WORKER_ROLE} needs a worker class"))),
            },
            Some(CONFIG_ROLE) => match arg(2).and_then(|s| s.parse::<f64>().ok()) {
                Some(interval_secs) if interval_secs.is_finite() && interval_secs >= 0.0 => {
                    Ok(Role::Config { interval_secs })
                }
                _ => Err(RoleError(format!(
                    "{CONFIG_ROLE} needs the interval in seconds"
                ))),
            },
            Some(HUB_ROLE) => match (arg(2).and_then(|s| s.parse::<RawFd>().ok()), arg(3)) {
                (Some(fd), format @ (None | Some("json"))) if fd > 2 => Ok(Role::OutputHub {
                    fd,
                    json: format.is_some(),
                }),
                _ => Err(RoleError(format!(
                    "{HUB_ROLE} needs the descriptor of its socket (and `json`, or nothing)"
                ))),
            },
            Some(GUARDIAN_ROLE) => match arg(2).and_then(|s| s.parse::<u32>().ok()) {
                Some(lrpm) if lrpm > 0 => Ok(Role::Guardian {
                    lrpm,
                    tree: args.get(3).map(std::path::PathBuf::from),
                }),
                _ => Err(RoleError(format!("{GUARDIAN_ROLE} needs lrpm's pid"))),
            },
            _ => Ok(Role::Supervisor),
        }
    }

    /// The arguments after the program name that start this role.
    fn args(&self) -> Vec<String> {
        match self {
            Role::Supervisor => Vec::new(),
            Role::Worker { class } => vec![WORKER_ROLE.to_owned(), class.clone()],
            Role::Config { interval_secs } => {
                vec![CONFIG_ROLE.to_owned(), interval_secs.to_string()]
            }
            Role::OutputHub { fd, json } => {
                let mut args = vec![HUB_ROLE.to_owned(), fd.to_string()];
                if *json {
                    args.push("json".to_owned());
                }
                args
            }
            Role::Guardian { lrpm, tree } => {
                let mut args = vec![GUARDIAN_ROLE.to_owned(), lrpm.to_string()];
                args.extend(tree.iter().map(|t| t.to_string_lossy().into_owned()));
                args
            }
        }
    }

    /// The argv that runs this role in this very binary (even if its file
    /// was replaced since), for a command source.
    pub(crate) fn argv(&self) -> Vec<String> {
        let mut argv = vec![SELF_EXE.to_owned()];
        argv.extend(self.args());
        argv
    }

    /// A request that runs this role in this very binary, under the name it
    /// was started with.
    pub(crate) fn request(&self) -> SpawnRequest {
        let mut request = SpawnRequest::new(SELF_EXE);
        if let Some(name) = std::env::args_os().next() {
            request = request.arg0(name);
        }
        request.args(self.args())
    }

    /// The role of an output hub that is handed its socket by
    /// [`SpawnRequest::hand`], writing JSON lines if `json`.
    pub(crate) fn handed_hub(json: bool) -> Role {
        Role::OutputHub {
            fd: HANDED_FD,
            json,
        }
    }
}

/// This very binary.
const SELF_EXE: &str = "/proc/self/exe";

/// What a password in a source's URI is shown as.
pub(crate) const MASK: &str = "***";

/// `uri` as it may be logged and shown in status: the password of its
/// user information (`scheme://user:PASSWORD@host…`) and the value of any
/// `password` parameter of its query (`?password=PASSWORD`, any case) are
/// replaced by `***`. Anything else is kept as it is, and a text that is
/// not a URI (a path) is returned unchanged.
///
/// Every source whose URI may hold a secret (postgres, etcd) names itself
/// through this in its messages; lrpm's log line at start and the status's
/// `supervisor.source.uri` use it for every source.
pub(crate) fn mask_password(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    let mut out = String::with_capacity(uri.len());
    out.push_str(&uri[..scheme_end]);
    // The user information ends at the authority's last `@` (a password
    // may hold an `@` of its own, though it should be escaped).
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = tail.split_at(tail.find('#').unwrap_or(tail.len()));
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            for (i, param) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        out.push_str(key);
                        out.push('=');
                        out.push_str(MASK);
                    }
                    _ => out.push_str(param),
                }
            }
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn every_role_parses_back_from_the_arguments_it_builds() {
        for role in [
            Role::Worker {
                class: "Mailer".into(),
            },
            Role::Config { interval_secs: 2.5 },
            Role::Config { interval_secs: 0.0 },
            Role::handed_hub(false),
            Role::handed_hub(true),
            Role::Guardian {
                lrpm: 42,
                tree: None,
            },
            Role::Guardian {
                lrpm: 42,
                tree: Some("/sys/fs/cgroup/lrpm-42".into()),
            },
        ] {
            let mut argv = vec!["lrpm".to_owned()];
            argv.extend(role.args());
            let argv: Vec<OsString> = argv.into_iter().map(OsString::from).collect();
            assert_eq!(Role::parse(&argv), Ok(role.clone()), "{argv:?}");
            assert_eq!(role.argv()[0], SELF_EXE);
        }
    }

    #[test]
    fn anything_else_is_the_supervisor_and_a_broken_role_an_error() {
        assert_eq!(Role::parse(&args(&["lrpm"])), Ok(Role::Supervisor));
        assert_eq!(
            Role::parse(&args(&["lrpm", "jobs.toml"])),
            Ok(Role::Supervisor)
        );
        for broken in [
            &["lrpm", WORKER_ROLE][..],
            &["lrpm", CONFIG_ROLE, "-1"],
            &["lrpm", CONFIG_ROLE, "NaN"],
            &["lrpm", HUB_ROLE, "2"],
            &["lrpm", HUB_ROLE, "x"],
            &["lrpm", HUB_ROLE, "3", "yaml"],
            &["lrpm", GUARDIAN_ROLE],
            &["lrpm", GUARDIAN_ROLE, "0"],
        ] {
            assert!(Role::parse(&args(broken)).is_err(), "{broken:?}");
        }
    }

    #[test]
    fn mask_password_hides_the_password_and_nothing_else() {
        for (uri, shown) in [
            ("jobs.toml", "jobs.toml"),
            ("exec:cat a:b@c", "exec:cat a:b@c"),
            ("http://example.com/x?y=1", "http://example.com/x?y=1"),
            (
                "postgres://lrpm:s3cr%40t@db:5432/app?table=jobs",
                "postgres://lrpm:***@db:5432/app?table=jobs",
            ),
            ("postgres://lrpm@db/app", "postgres://lrpm@db/app"),
            ("postgres://lrpm:p@ss@db/app", "postgres://lrpm:***@db/app"),
            (
                "postgres://db/app?user=u&PassWord=x&table=t#f",
                "postgres://db/app?user=u&PassWord=***&table=t#f",
            ),
            (
                "etcd://root:pw@127.0.0.1:2379,127.0.0.1:2380/lrpm",
                "etcd://root:***@127.0.0.1:2379,127.0.0.1:2380/lrpm",
            ),
            ("etcd://h:1/p:q@r", "etcd://h:1/p:q@r"),
        ] {
            assert_eq!(mask_password(uri), shown, "{uri}");
        }
    }
}
