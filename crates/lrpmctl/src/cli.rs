//! The `lrpmctl` command line. The man page and the shell completions are
//! generated from this same definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The text after the option list of `lrpmctl --help`.
const AFTER_HELP: &str = "\
Exit status: 0 done, 1 refused by lrpm (its message is printed), 64 usage error,
69 cannot connect, 76 invalid response.

Shell completions: lrpmctl completions bash|zsh|fish|elvish|powershell.
Man page: lrpmctl man > lrpmctl.1";

/// Controls a running lrpm: shows its jobs, restarts, pauses, resumes or
/// signals them, reloads the configuration, shuts it down.
///
/// lrpmctl talks to lrpm over its control socket. Without --socket or
/// LRPM_SOCKET it uses the first that exists of /run/lrpm/control.sock,
/// $XDG_RUNTIME_DIR/lrpm/control.sock and /tmp/lrpm-$UID/control.sock, the
/// paths lrpm itself picks from.
#[derive(Debug, Parser)]
#[command(
    name = "lrpmctl",
    version = lrpm_proto::VERSION,
    disable_help_subcommand = true,
    arg_required_else_help = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The control socket of the lrpm to talk to.
    #[arg(long, env = "LRPM_SOCKET", value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,

    /// Print lrpm's answer as it is: one JSON object.
    #[arg(long, global = true)]
    pub json: bool,

    /// When to colour the output (auto: on a terminal, unless NO_COLOR is set).
    #[arg(
        long,
        value_enum,
        value_name = "WHEN",
        default_value_t = ColorWhen::Auto,
        global = true
    )]
    pub color: ColorWhen,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// When to colour the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set or TERM is dumb.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// An lrpmctl command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the supervisor, its configuration source and every job.
    ///
    /// The table has one row per job: ID, PID, STATE (starting, running,
    /// backoff, stopping, paused), %CPU and RSS of its process (read from
    /// /proc), UPTIME, RESTARTS, LAST EXIT and NAME. Above it: lrpm's pid and
    /// version and the configuration source with its last load and last
    /// error; below it: the jobs left out as invalid, with the reason. With
    /// --json, the status document instead. With IDs, only those jobs (an
    /// unknown id is refused: exit status 1).
    Status {
        /// Only these jobs (the id of a job with instances names every copy).
        #[arg(value_name = "ID")]
        ids: Vec<String>,
    },

    /// Restart jobs now, with their backoff reset.
    ///
    /// Also starts at once a job that is waiting in backoff. A paused job is
    /// not restarted: resume it. All the jobs named, or none when one is
    /// unknown.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["ids", "all"]))]
    Restart {
        /// The jobs' ids (the id of a job with instances names every copy).
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        /// Restart every job that is not paused.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },

    /// Stop jobs and hold them stopped until resumed.
    ///
    /// A paused job is stopped (its stop signal, then SIGKILL after its
    /// shutdown timeout) and is not started again, whatever the
    /// configuration source says meanwhile (an update is kept for when it is
    /// resumed), until `lrpmctl resume` or until lrpm restarts. A job removed
    /// from the source is forgotten, pause and all.
    Pause {
        /// The jobs' ids (the id of a job with instances names every copy).
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },

    /// Start paused jobs again, on their latest declaration.
    Resume {
        /// The jobs' ids (the id of a job with instances names every copy).
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },

    /// Send a signal to jobs' process groups.
    ///
    /// SIG is a name, with or without SIG (USR1, SIGHUP), or its number (15).
    /// The jobs without a process (backoff, paused) are skipped and named;
    /// when none has one, exit status 1.
    Signal {
        /// The signal: HUP, INT, QUIT, KILL, USR1, USR2, ALRM, TERM, CONT,
        /// STOP, TTIN, TTOU or WINCH, with or without SIG, or its number.
        #[arg(value_name = "SIG")]
        signal: String,
        /// The jobs' ids (the id of a job with instances names every copy).
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },

    /// Read the configuration source again now.
    Reload {
        /// Apply the configuration even when a safety check would hold it
        /// back.
        #[arg(long)]
        force: bool,
    },

    /// Close and reopen the per-job log files of `lrpm --log-dir`, after
    /// an external logrotate renamed them (as SIGUSR1 to lrpm does).
    ReopenLogs,

    /// Print the newest lines of a job's output (stdout and stderr), from
    /// the ring of recent lines lrpm keeps in memory for each job (its
    /// --log-buffer, 64 KiB by default), with or without --log-dir.
    ///
    /// An unknown job id: exit status 1. Lines of workers whose output goes
    /// through an output hub (a farm past half of lrpm's descriptors) are
    /// not kept.
    Logs {
        /// Print at most the N newest lines (all the ring holds when
        /// absent).
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<u64>,
        /// Then print each new line as the job prints it, until
        /// interrupted (or lrpm shuts down). When lrpmctl cannot keep up,
        /// lrpm skips lines rather than wait, and lrpmctl says how many on
        /// standard error.
        #[arg(short = 'f', long)]
        follow: bool,
        /// The job's id (the id of one copy, for a job with instances).
        #[arg(value_name = "ID")]
        id: String,
    },

    /// Shut lrpm down gracefully, and wait until it has exited.
    ///
    /// lrpm stops every worker (its stop signal, then SIGKILL after its
    /// shutdown timeout) and exits. lrpmctl returns when the lrpm process is
    /// gone.
    Stop {
        /// How long to wait for lrpm to exit, in seconds; exit status 1 when
        /// it has not.
        #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = seconds)]
        timeout: std::time::Duration,

        /// Return as soon as lrpm has accepted the request.
        #[arg(long)]
        no_wait: bool,
    },

    /// Show this node's cluster: the node, the members and which node runs
    /// each job.
    ///
    /// In a static cluster (--cluster-size, --cluster-file) every node
    /// computes the whole assignment from the same job map. With --json,
    /// lrpm's answer as it is.
    Cluster,

    /// Print this help, or the help of COMMAND.
    ///
    /// With --json, print lrpm's own list of protocol commands instead.
    Help {
        /// The command to explain.
        command: Option<String>,
    },

    /// Print the completion script for SHELL.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },

    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

/// Parses a number of seconds.
fn seconds(value: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{value:?} is not a number of seconds >= 0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_are_global() {
        let before = Cli::try_parse_from(["lrpmctl", "--json", "status"]).expect("parses");
        let after = Cli::try_parse_from(["lrpmctl", "status", "--json"]).expect("parses");
        assert!(before.json && after.json);
        let cli =
            Cli::try_parse_from(["lrpmctl", "restart", "7", "--socket", "/x", "--color=never"])
                .expect("parses");
        assert_eq!(cli.socket, Some(PathBuf::from("/x")));
        assert_eq!(cli.color, ColorWhen::Never);
    }

    #[test]
    fn job_commands_take_ids() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
        assert!(matches!(
            parse(&["lrpmctl", "restart", "a", "b"]),
            Ok(Command::Restart { ids, all: false }) if ids == ["a", "b"]
        ));
        assert!(matches!(
            parse(&["lrpmctl", "restart", "--all"]),
            Ok(Command::Restart { ids, all: true }) if ids.is_empty()
        ));
        assert!(parse(&["lrpmctl", "restart"]).is_err(), "ids or --all");
        assert!(parse(&["lrpmctl", "restart", "--all", "a"]).is_err());
        assert!(parse(&["lrpmctl", "pause"]).is_err());
        assert!(parse(&["lrpmctl", "resume"]).is_err());
        assert!(parse(&["lrpmctl", "signal", "USR1"]).is_err());
        assert!(matches!(
            parse(&["lrpmctl", "signal", "15", "w"]),
            Ok(Command::Signal { signal, ids }) if signal == "15" && ids == ["w"]
        ));
        assert!(matches!(
            parse(&["lrpmctl", "status", "a", "b#1"]),
            Ok(Command::Status { ids }) if ids == ["a", "b#1"]
        ));
    }

    #[test]
    fn stop_timeouts_are_seconds() {
        let cli = Cli::try_parse_from(["lrpmctl", "stop", "--timeout", "1.5"]).expect("parses");
        let Command::Stop { timeout, .. } = cli.command else {
            panic!("not stop");
        };
        assert_eq!(timeout, std::time::Duration::from_millis(1500));
        assert!(Cli::try_parse_from(["lrpmctl", "stop", "--timeout", "-1"]).is_err());
    }
}
