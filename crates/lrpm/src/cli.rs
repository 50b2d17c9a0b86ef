//! The `lrpm` command line, shared by the `lrpm` binary and library-mode
//! binaries.
//!
//! Parsing has two phases (as ripgrep): clap turns the arguments into
//! [`Args`], and [`Args::validate`] turns those into [`Options`], the
//! settings the supervisor runs with, or a usage error (exit code 64).

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Generate {
    /// lrpm's man page, in roff.
    Man,
    /// The completion script of bash.
    CompleteBash,
    /// The completion script of zsh.
    CompleteZsh,
    /// The completion script of fish.
    CompleteFish,
}

/// When lrpm's text log is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ColorChoice {
    /// When stderr is a terminal and NO_COLOR is unset (or empty).
    Auto,
    /// Always, even into a file or a pipe, and whatever NO_COLOR says.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether the log gets colours, given whether stderr is a terminal
    /// and the value of NO_COLOR (<https://no-color.org>: set and not
    /// empty means no colours; an explicit `--color always` wins).
    pub(crate) fn colours(self, stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stderr_is_terminal && no_color.is_none_or(OsStr::is_empty),
        }
    }
}

/// lrpm: a long-running process manager.
///
/// Supervises the jobs declared by SOURCE: starts new ones, stops removed
/// ones, restarts changed ones, restarts crashed ones with exponential
/// backoff, and follows every change of the source.
#[derive(Debug, Parser)]
#[command(
    name = "lrpm",
    version = lrpm_proto::VERSION,
    about,
    long_about,
    after_help = "Exit codes: 0 clean shutdown; 74 clean shutdown, but some output \
                  (lrpm's log or workers' lines) was lost to a blocked, full or closed \
                  stdout or stderr; 1 an error that stopped lrpm; 64 usage error; 66 \
                  the file source does not exist."
)]
pub(crate) struct Args {
    /// The configuration source: a .json/.toml/.yaml file, a directory of
    /// them, file:PATH, exec:'PROGRAM ARG…' (a command that prints the jobs
    /// as JSON), or an http:// or https:// URL.
    ///
    /// A binary built with the lrpm library may leave it out to use its
    /// built-in configuration source.
    #[arg(value_name = "SOURCE")]
    pub(crate) source: Option<String>,

    /// The control socket [default: /run/lrpm/control.sock, else
    /// $XDG_RUNTIME_DIR/lrpm/control.sock, else /tmp/lrpm-$UID/control.sock].
    #[arg(long, env = "LRPM_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,

    /// Poll interval of polled sources, in seconds; 0 means the source
    /// pushes and is read again as soon as it returns.
    #[arg(short, long, value_name = "SECONDS", default_value = "30")]
    pub(crate) interval: f64,

    /// How long one run of an exec: source's command, or one request of an
    /// http(s): source, may take before it is abandoned (a command is
    /// killed with its process group).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::source::DEFAULT_TIMEOUT.as_secs_f64())]
    pub(crate) source_timeout: f64,

    /// The cap of the restart backoff, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "21600")]
    pub(crate) max_backoff: f64,

    /// Hold back a new configuration that would remove more than this
    /// share (0 < R <= 1) of the declared jobs at once, instead of applying
    /// it; `lrpmctl reload --force` applies it. Off by default.
    ///
    /// A guard against a broken source that returns an empty or truncated
    /// job map: the held configuration is shown in status and the log, and
    /// nothing of it is applied until it is confirmed or a configuration
    /// that removes less arrives.
    #[arg(long, value_name = "R")]
    pub(crate) max_removal_ratio: Option<f64>,

    /// Restart the jobs that a configuration change (or `lrpmctl restart
    /// --all`) restarts in waves: at most K stopping or starting at once,
    /// the next one beginning when one of them runs again (is ready, for a
    /// `notify` job). Crashes are never held back. No limit by default.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_restarting: Option<u32>,

    /// Where each job's cgroup goes: `auto` (under lrpm's own cgroup v2,
    /// falling back to a subreaper when it is not writable), `off` (a
    /// subreaper only), or the path of a cgroup v2 directory lrpm may
    /// create cgroups in.
    ///
    /// A job's cgroup is how lrpm kills the daemons a worker starts that
    /// leave its process group (setsid, double fork). Under systemd, give
    /// the unit Delegate=yes.
    #[arg(long, value_name = "auto|off|PATH", default_value = "auto")]
    pub(crate) cgroup: lrpm_process::containment::CgroupChoice,

    /// Keep a guardian process: when lrpm dies, even by SIGKILL, it kills
    /// every job's cgroup (or, without cgroups, every process carrying one
    /// of lrpm's run ids), so that daemons that left their job's process
    /// group do not outlive lrpm. A guardian that dies is started again.
    #[arg(long, value_enum, value_name = "on|off", default_value = "on")]
    pub(crate) guardian: OnOff,

    /// lrpm's own oom_score_adj (-1000 to 1000), or `keep` to leave what
    /// it inherited. The default, -900, makes the kernel's OOM killer pick
    /// workers (which lrpm restarts) long before lrpm; lowering it needs
    /// CAP_SYS_RESOURCE (root), and without it lrpm says so once and runs
    /// with what it has.
    #[arg(
        long,
        value_name = "N|keep",
        default_value = "-900",
        allow_hyphen_values = true
    )]
    pub(crate) oom_score_adj: String,

    /// Every worker's oom_score_adj (-1000 to 1000) [default: the value
    /// lrpm started with, before it lowered its own].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub(crate) worker_oom_score_adj: Option<String>,

    /// Log line format. With `json`, workers' lines are JSON objects too
    /// (`ts`, `job`, `stream`, `line`).
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,

    /// Also append each job's stdout and stderr lines, each with an RFC
    /// 3339 timestamp, to DIR/ID.log (created if needed). SIGUSR1 or
    /// `lrpmctl reopen-logs` reopens the files (after logrotate).
    #[arg(long, value_name = "DIR")]
    pub(crate) log_dir: Option<PathBuf>,

    /// Rotate a job's log file before it grows past this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 10 * 1024 * 1024)]
    pub(crate) log_max_bytes: u64,

    /// How many rotated files of a job's log are kept (ID.log.1 newest).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub(crate) log_keep: u32,

    /// Keep each job's most recent output lines, up to this many bytes,
    /// in memory for `lrpmctl logs` (with or without --log-dir); 0 keeps
    /// none.
    #[arg(long, value_name = "BYTES", default_value_t = crate::logring::DEFAULT_CAPACITY)]
    pub(crate) log_buffer: usize,

    /// When the text log is coloured: `auto` (stderr is a terminal and
    /// NO_COLOR is not set), `always` or `never`.
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    pub(crate) color: ColorChoice,

    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub(crate) verbose: u8,

    /// Less log output (-q: warnings, -qq: errors).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub(crate) quiet: u8,

    /// Serve metrics on ADDR over HTTP: /metrics (Prometheus text, or
    /// OpenMetrics when asked), /healthz, and a status page at /. ADDR is
    /// HOST:PORT, or a PORT alone for 127.0.0.1:PORT.
    ///
    /// The endpoint is read-only and NOT authenticated: whoever reaches it
    /// sees every job's id, name, command and state. Keep it on loopback,
    /// or behind a firewall or an authenticating proxy.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,

    /// Print lrpm's man page or a shell's completion script, made from this
    /// command line's own definition, and exit.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub(crate) generate: Option<Generate>,

    /// Clustering: which share of the jobs this node runs.
    #[command(flatten)]
    pub(crate) cluster: crate::cluster::ClusterArgs,
}

/// The man page or completion script `what` names, for the `lrpm`
/// command line.
pub(crate) fn generate(what: Generate) -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    let shell = match what {
        Generate::Man => {
            clap_mangen::Man::new(Args::command()).render(&mut out)?;
            return Ok(out);
        }
        Generate::CompleteBash => clap_complete::Shell::Bash,
        Generate::CompleteZsh => clap_complete::Shell::Zsh,
        Generate::CompleteFish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Args::command(), "lrpm", &mut out);
    Ok(out)
}

/// A switch's value: `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// The validated settings of a supervisor run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The source argument; `None` for a library-mode binary's built-in
    /// source.
    pub(crate) source: Option<String>,
    /// The control socket, if given (else the default chain applies).
    pub(crate) socket: Option<PathBuf>,
    /// The poll interval; `None` for a pushing source (`--interval 0`).
    pub(crate) interval: Option<Duration>,
    /// The limit of one load of an exec or HTTP source.
    pub(crate) source_timeout: Duration,
    /// The backoff cap.
    pub(crate) max_backoff: Duration,
    /// The removal guard's ratio, if it is on.
    pub(crate) max_removal_ratio: Option<f64>,
    /// The restart waves' width (`--max-restarting`), if limited.
    pub(crate) max_restarting: Option<usize>,
    /// Where job cgroups go.
    pub(crate) cgroup: lrpm_process::containment::CgroupChoice,
    /// Whether lrpm keeps a guardian (`--guardian`).
    pub(crate) guardian: bool,
    /// lrpm's own `oom_score_adj`; `None`: keep it.
    pub(crate) oom_score_adj: Option<i32>,
    /// The workers' `oom_score_adj`; `None`: the value lrpm started with.
    pub(crate) worker_oom_score_adj: Option<i32>,
    /// Log format.
    pub(crate) log_format: LogFormat,
    /// Whether the text log is coloured.
    pub(crate) color: ColorChoice,
    /// The per-job log files, if `--log-dir` asks for them.
    pub(crate) log_dir: Option<crate::joblog::JobLogConfig>,
    /// The size of each job's ring of recent lines (`--log-buffer`).
    pub(crate) log_buffer: usize,
    /// Log level.
    pub(crate) log_level: tracing::Level,
    /// Where `--metrics` serves, if it does.
    pub(crate) metrics: Option<SocketAddr>,
    /// The cluster this node belongs to, if any.
    pub(crate) cluster: crate::cluster::ClusterChoice,
}

/// `--metrics`'s ADDR: `HOST:PORT` (an IP address, or `localhost`), or a
/// port alone on loopback.
fn metrics_addr(value: &str) -> Result<SocketAddr, String> {
    let loopback = |port: &str| {
        port.parse::<u16>()
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
    };
    if let Ok(addr) = loopback(value) {
        return Ok(addr);
    }
    if let Some(port) = value.strip_prefix("localhost:") {
        if let Ok(addr) = loopback(port) {
            return Ok(addr);
        }
    }
    value.parse::<SocketAddr>().map_err(|_| {
        format!("--metrics: {value:?} is not HOST:PORT (an IP address and a port) nor a PORT")
    })
}

fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "{flag}: must be a number of seconds >= 0, got {value}"
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|e| format!("{flag}: {e}"))
}

impl Args {
    /// Checks the values clap cannot. `builtin_source` says whether the
    /// binary has a configuration source of its own (library mode), which
    /// makes SOURCE optional.
    pub(crate) fn validate(self, builtin_source: bool) -> Result<Options, String> {
        if self.source.is_none() && !builtin_source {
            return Err(
                "a SOURCE is required (a jobs file, a directory, exec:…, or http(s)://…)".into(),
            );
        }
        let interval = seconds("--interval", self.interval)?;
        let source_timeout = seconds("--source-timeout", self.source_timeout)?;
        if source_timeout.is_zero() {
            return Err("--source-timeout: must be more than 0 seconds".into());
        }
        let max_backoff = seconds("--max-backoff", self.max_backoff)?;
        if let Some(ratio) = self.max_removal_ratio {
            if !(ratio > 0.0 && ratio <= 1.0) {
                return Err(format!(
                    "--max-removal-ratio: must be more than 0 and at most 1, got {ratio}"
                ));
            }
        }
        let oom_score_adj = match self.oom_score_adj.as_str() {
            "keep" => None,
            value => {
                Some(lrpm_process::oom::parse(value).map_err(|e| format!("--oom-score-adj: {e}"))?)
            }
        };
        let worker_oom_score_adj = self
            .worker_oom_score_adj
            .as_deref()
            .map(lrpm_process::oom::parse)
            .transpose()
            .map_err(|e| format!("--worker-oom-score-adj: {e}"))?;
        let metrics = self.metrics.as_deref().map(metrics_addr).transpose()?;
        if metrics.is_some() && !cfg!(feature = "metrics") {
            return Err("--metrics: this lrpm was built without the `metrics` feature".into());
        }
        let log_level = match i16::from(self.verbose) - i16::from(self.quiet) {
            i16::MIN..=-2 => tracing::Level::ERROR,
            -1 => tracing::Level::WARN,
            0 => tracing::Level::INFO,
            1 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        };
        let cluster = self
            .cluster
            .validate(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))?;
        if self.log_max_bytes == 0 {
            return Err("--log-max-bytes: must be more than 0".into());
        }
        let log_dir = self.log_dir.map(|dir| crate::joblog::JobLogConfig {
            dir,
            max_bytes: self.log_max_bytes,
            keep: self.log_keep,
        });
        Ok(Options {
            source: self.source,
            socket: self.socket,
            interval: (!interval.is_zero()).then_some(interval),
            source_timeout,
            max_backoff,
            max_removal_ratio: self.max_removal_ratio,
            max_restarting: self.max_restarting.map(|k| k as usize),
            cgroup: self.cgroup,
            guardian: self.guardian == OnOff::On,
            oom_score_adj,
            worker_oom_score_adj,
            log_format: self.log_format,
            color: self.color,
            log_dir,
            log_buffer: self.log_buffer,
            log_level,
            metrics,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn interval_zero_means_push() {
        let args = Args::try_parse_from(["lrpm", "-i", "0", "jobs.toml"]).expect("parse");
        assert_eq!(args.validate(false).expect("valid").interval, None);
    }

    #[test]
    fn the_removal_ratio_is_a_share() {
        let ratio = |r: &str| {
            Args::try_parse_from(["lrpm", "--max-removal-ratio", r, "jobs.toml"])
                .map_err(|e| e.to_string())
                .and_then(|args| args.validate(false))
                .map(|options| options.max_removal_ratio)
        };
        assert_eq!(ratio("0.5"), Ok(Some(0.5)));
        assert_eq!(ratio("1"), Ok(Some(1.0)));
        for bad in ["0", "-0.1", "1.5", "NaN", "inf"] {
            assert!(ratio(bad).is_err(), "{bad} accepted");
        }
        let args = Args::try_parse_from(["lrpm", "jobs.toml"]).expect("parse");
        assert_eq!(args.validate(false).expect("valid").max_removal_ratio, None);
    }

    #[test]
    fn oom_score_adj_is_a_value_or_keep() {
        let parse = |args: &[&str]| {
            let mut all = vec!["lrpm"];
            all.extend_from_slice(args);
            all.push("jobs.toml");
            Args::try_parse_from(all)
                .map_err(|e| e.to_string())
                .and_then(|args| args.validate(false))
                .map(|o| (o.oom_score_adj, o.worker_oom_score_adj))
        };
        assert_eq!(parse(&[]), Ok((Some(-900), None)));
        assert_eq!(parse(&["--oom-score-adj", "keep"]), Ok((None, None)));
        assert_eq!(parse(&["--oom-score-adj", "-500"]), Ok((Some(-500), None)));
        assert_eq!(
            parse(&["--oom-score-adj=0", "--worker-oom-score-adj", "-100"]),
            Ok((Some(0), Some(-100)))
        );
        for bad in [
            &["--oom-score-adj", "-1001"][..],
            &["--oom-score-adj", "low"],
            &["--worker-oom-score-adj", "1001"],
            &["--worker-oom-score-adj", "keep"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_man_page_and_completions_come_from_the_definition() {
        let man = String::from_utf8(generate(Generate::Man).expect("man")).expect("utf-8");
        assert!(man.contains(".TH lrpm"), "{man}");
        assert!(man.contains("max\\-removal\\-ratio"), "{man}");
        for (what, marker) in [
            (Generate::CompleteBash, "complete -F"),
            (Generate::CompleteZsh, "#compdef lrpm"),
            (Generate::CompleteFish, "complete -c lrpm"),
        ] {
            let script = String::from_utf8(generate(what).expect("script")).expect("utf-8");
            assert!(script.contains(marker), "{what:?}: {script}");
            assert!(script.contains("max-removal-ratio"), "{what:?}");
        }
    }

    #[test]
    fn the_metrics_address_defaults_to_loopback() {
        let ok = |v: &str| metrics_addr(v).map(|a| a.to_string());
        assert_eq!(ok("9469"), Ok("127.0.0.1:9469".to_owned()));
        assert_eq!(ok("localhost:9469"), Ok("127.0.0.1:9469".to_owned()));
        assert_eq!(ok("0.0.0.0:80"), Ok("0.0.0.0:80".to_owned()));
        assert_eq!(ok("[::1]:9469"), Ok("[::1]:9469".to_owned()));
        for bad in ["", "host", "example.com:80", "1.2.3.4", "70000"] {
            assert!(metrics_addr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color_unless_told() {
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        assert!(ColorChoice::Auto.colours(true, None));
        assert!(ColorChoice::Auto.colours(true, empty));
        assert!(!ColorChoice::Auto.colours(true, set));
        assert!(!ColorChoice::Auto.colours(false, None));
        assert!(ColorChoice::Always.colours(false, set));
        assert!(!ColorChoice::Never.colours(true, None));
        let args = Args::try_parse_from(["lrpm", "--color", "never", "jobs.toml"]).expect("parse");
        assert_eq!(
            args.validate(false).expect("valid").color,
            ColorChoice::Never
        );
        assert!(Args::try_parse_from(["lrpm", "--color", "sometimes", "jobs.toml"]).is_err());
    }

    #[test]
    fn negative_durations_are_usage_errors() {
        let args = Args::try_parse_from(["lrpm", "--max-backoff=-1", "jobs.toml"]).expect("parse");
        assert!(args.validate(false).is_err());
    }
}
