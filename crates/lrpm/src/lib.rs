//! lrpm: a long-running process manager.
//!
//! lrpm supervises a farm of worker processes declared by a configuration
//! source, and follows the source as it changes: it starts new jobs, stops
//! removed ones, restarts changed ones, restarts crashed ones with
//! exponential backoff, and escalates a stop from the job's polite signal
//! to SIGKILL.
//!
//! The supervision logic is the I/O-free state machine of the
//! [`lrpm_core`] crate; processes are started and followed by the
//! `lrpm-process` crate; this crate is the shell that joins them: the
//! configuration sources, the process table, the output forwarding, the
//! control plane and the event loop. [`run`] is the entry point the `lrpm`
//! binary calls; [`library`] is the API of a binary that brings its own
//! workers and configuration source, as php-lrpm's users write them.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod base;
mod cli;
mod cluster;
mod control;
#[cfg(feature = "etcd")]
mod etcd;
mod guardian;
mod host;
mod hub;
mod idle;
mod joblog;
pub mod library;
mod lines;
mod logburst;
mod logfmt;
mod logring;
mod output;
mod probe;
mod process;
mod runtime;
mod source;
mod stdio;
mod systemd;
mod usage;
mod web;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
pub use lrpm_core;
use tokio::sync::mpsc;

use lrpm_process::command::SpawnContext;
use lrpm_process::containment::Containment;

use crate::base::{EX_IOERR, EX_NOINPUT, EX_USAGE, HIDDEN_ENV, Role};
use crate::cli::{Args, LogFormat, Options};
use crate::hub::Forwarding;
use crate::output::{LineFormat, Output};
use crate::runtime::Shell;
use crate::source::{OpenError, SourceMonitor, SourceOptions};

/// Runs the supervisor with the command-line arguments `args` (the first is
/// the program name) and returns its exit code: 0 after a clean shutdown,
/// 74 after a clean shutdown during which some of lrpm's output (its log,
/// or its workers' lines) was lost to a blocked, full or closed stdout or
/// stderr, 64 for a usage error, 66 for a missing file source, 1
/// otherwise.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_as(args.into_iter().map(Into::into).collect(), None)
}

impl library::Lrpm {
    /// Runs the role this process was started for, with the process's own
    /// arguments: the supervisor (the `lrpm` command line), a worker, or
    /// the configuration source. Returns the exit code.
    pub fn main(self) -> ExitCode {
        self.main_with(std::env::args_os())
    }

    /// [`Lrpm::main`](library::Lrpm::main) with explicit arguments (the
    /// first is the program name).
    pub fn main_with<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        run_as(args.into_iter().map(Into::into).collect(), Some(self))
    }
}

/// Runs the role `args` name: the one place the roles of a re-executed
/// lrpm are dispatched, for the plain `lrpm` (`library` is `None`) and a
/// library-mode binary alike.
fn run_as(args: Vec<OsString>, library: Option<library::Lrpm>) -> ExitCode {
    lrpm_process::mem::one_arena();
    let role = match Role::parse(&args) {
        Ok(role) => role,
        Err(e) => {
            say(format_args!("lrpm: {e}"));
            return ExitCode::from(EX_USAGE);
        }
    };
    match (role, library) {
        (Role::Supervisor, library) => supervise_args(args, library),
        (Role::OutputHub { fd, json }, _) => hub::run(fd, LineFormat::json_if(json)),
        (Role::Guardian { lrpm, tree }, _) => guardian::run(lrpm, tree),
        (Role::Worker { class }, Some(library)) => library.run_worker(&class),
        (Role::Config { interval_secs }, Some(library)) => {
            library.run_config(std::time::Duration::from_secs_f64(interval_secs))
        }
        (Role::Worker { .. } | Role::Config { .. }, None) => {
            say(format_args!(
                "lrpm: this binary has no registered workers or configuration source"
            ));
            ExitCode::from(EX_USAGE)
        }
    }
}

/// The supervisor's role: parses and validates its command line, then
/// supervises.
fn supervise_args(args: Vec<OsString>, library: Option<library::Lrpm>) -> ExitCode {
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(what) = args.generate {
        return match cli::generate(what) {
            Ok(text) => match std::io::stdout().lock().write_all(&text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    say(format_args!("lrpm: cannot write to stdout: {e}"));
                    ExitCode::from(EX_IOERR)
                }
            },
            Err(e) => {
                say(format_args!("lrpm: cannot generate {what:?}: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    let has_source = library.as_ref().is_some_and(library::Lrpm::has_source);
    let options = match args.validate(has_source) {
        Ok(options) => options,
        Err(e) => {
            say(format_args!("error: {e}"));
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(e) = init_logging(&options) {
        say(format_args!("lrpm: cannot start the log thread: {e}"));
        return ExitCode::FAILURE;
    }
    let worker_classes = library.as_ref().map(library::Lrpm::worker_classes);
    let code = match supervise(options, worker_classes) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    };
    // The last lines, if stderr takes them; lrpm exits either way.
    stdio::flush_log(LOG_GRACE);
    code
}

/// Parses lrpm's command line on a thread with a stack of its own: clap's
/// derived parser takes hundreds of KiB of stack in a debug build (a large
/// frame per flattened group of flags), more than the main thread has
/// under a small `ulimit -s` (256 KiB), which lrpm must start under.
fn parse_args(args: Vec<OsString>) -> Result<Args, clap::Error> {
    /// The parser's stack: far more than it needs, and only mapped.
    const PARSE_STACK: usize = 8 * 1024 * 1024;
    let parser = std::thread::Builder::new()
        .name("lrpm-args".into())
        .stack_size(PARSE_STACK)
        .spawn(move || Args::try_parse_from(args));
    match parser {
        Ok(parser) => parser
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        Err(e) => Err(clap::Error::raw(
            clap::error::ErrorKind::Io,
            format!("cannot start the thread that parses the command line: {e}\n"),
        )),
    }
}

/// How long lrpm waits at exit for its log to be written.
const LOG_GRACE: Duration = Duration::from_secs(1);
/// How long lrpm waits at exit for its workers' last lines to be written.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Writes a message to stderr before logging is up: a failed write is
/// ignored (lrpm exits with a code that says why anyway), never a panic as
/// `eprintln!`'s.
fn say(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Sets up lrpm's log: `tracing` formats each event into a lossy queue
/// that the log thread writes to stderr (the `stdio` module), so that a
/// blocked or broken stderr never stops, or kills, the event loop.
fn init_logging(options: &Options) -> std::io::Result<()> {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(options.log_level.into())
        .from_env_lossy();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let ansi = options
        .color
        .colours(terminal, std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(stdio::start_log_thread()?)
        // Its report of a failed write is an `eprintln!`, which panics on a
        // broken stderr; the writer never fails anyway.
        .log_internal_errors(false)
        .with_target(false);
    let _ = match options.log_format {
        // Every field escaped: see `logfmt`.
        LogFormat::Text => builder.fmt_fields(logfmt::EscapedFields).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// Sets lrpm's own `oom_score_adj` and its workers' as `options` say, and
/// logs the outcome: without the privilege to lower its own, lrpm says so
/// once and goes on.
fn own_oom_score_adj(options: &Options) {
    match lrpm_process::oom::setup(options.oom_score_adj, options.worker_oom_score_adj) {
        Ok(setup) => {
            if let Some(e) = &setup.refused {
                tracing::warn!(
                    "cannot set lrpm's oom_score_adj to {} ({e}): it stays {}, and its \
                     workers get {} so that the OOM killer picks them first; lowering it \
                     needs CAP_SYS_RESOURCE (or the service's OOMScoreAdjust=)",
                    options.oom_score_adj.unwrap_or(setup.before),
                    setup.now,
                    setup.workers
                );
            }
            tracing::info!(
                oom_score_adj = setup.now,
                workers = setup.workers,
                "oom_score_adj: lrpm {}, workers {}",
                setup.now,
                setup.workers
            );
        }
        Err(e) => tracing::warn!("cannot read lrpm's oom_score_adj: {e}"),
    }
}

/// Binds the workers' notification socket (an abstract name of this lrpm's
/// own) and names it in the workers' environment; without it (an error
/// logged) workers get no `NOTIFY_SOCKET`, and `notify` jobs never get
/// ready.
fn notify_socket(procs: &mut process::ProcessTable) -> Option<lrpm_process::notify::NotifySocket> {
    // The pid makes the name this lrpm's; the counter, a second bind in
    // the same process (tests) or a stale name, a fresh one.
    for n in 0..8 {
        let name = format!("lrpm-notify-{}-{n}", std::process::id());
        match lrpm_process::notify::NotifySocket::bind(&name) {
            Ok(socket) => {
                procs.set_notify_socket(socket.name());
                return Some(socket);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                tracing::error!("cannot bind the workers' notification socket: {e}");
                return None;
            }
        }
    }
    tracing::error!("cannot bind the workers' notification socket: every name is in use");
    None
}

/// Starts the `--metrics` web server on `addr`, if there is one: the
/// receiver of its requests for the event loop, or the exit code when the
/// address cannot be bound.
async fn start_web(
    addr: Option<std::net::SocketAddr>,
) -> Result<Option<mpsc::Receiver<web::WebRequest>>, ExitCode> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    #[cfg(feature = "metrics")]
    {
        let (tx, rx) = mpsc::channel(64);
        match web::start(addr, tx).await {
            Ok(bound) => {
                tracing::info!(
                    "metrics on http://{bound}/metrics, status page on http://{bound}/ \
                     (unauthenticated)"
                );
                Ok(Some(rx))
            }
            Err(e) => {
                tracing::error!("--metrics: cannot listen on {addr}: {e}");
                Err(ExitCode::FAILURE)
            }
        }
    }
    #[cfg(not(feature = "metrics"))]
    {
        // `Args::validate` refuses --metrics without the feature.
        tracing::error!("--metrics {addr}: this lrpm was built without the `metrics` feature");
        Err(ExitCode::from(EX_USAGE))
    }
}

/// Supervises the farm as `options` say, with the worker classes of a
/// library-mode binary (`None`: commands only).
fn supervise(
    options: Options,
    worker_classes: Option<std::collections::BTreeSet<String>>,
) -> anyhow::Result<ExitCode> {
    // First, so that the spawner's descriptor slots get the lowest numbers
    // and every child's private descriptor table stays a few entries long.
    lrpm_process::spawn::reserve()?;
    lrpm_process::fd::cloexec_inherited();
    let (child_nofile, raised) = lrpm_process::fd::raise_nofile_limit();
    match raised {
        Some(limit) => tracing::info!("descriptor limit raised to {limit}"),
        None => tracing::info!("descriptor limit is unlimited"),
    }
    own_oom_score_adj(&options);
    let started_at = runtime::wall_now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let format = LineFormat::json_if(options.log_format == LogFormat::Json);
    let job_logs = match &options.log_dir {
        Some(config) => Some(
            joblog::JobLogs::start(config.clone())
                .map_err(|e| anyhow::anyhow!("--log-dir {}: {e}", config.dir.display()))?,
        ),
        None => None,
    };
    let rings = logring::LogRings::new(options.log_buffer);
    let (output, output_thread) = Output::start(format, job_logs, Some(rings))?;
    let spawn_ctx = SpawnContext::current(child_nofile, HIDDEN_ENV);
    let hubs = hub::Hubs::new(spawn_ctx.clone(), format);
    let forwarding = Forwarding::new(output, hubs.clone());
    let code = rt.block_on(async move {
        let (control_tx, control) = mpsc::channel(64);
        // The socket listens before anything is started, so a second lrpm
        // on the same socket refuses to start before it runs any command.
        let control_server = match control::start(options.socket.as_deref(), control_tx).await {
            Ok(server) => server,
            Err(e) => {
                tracing::error!("{:#}", anyhow::Error::from(e));
                return ExitCode::FAILURE;
            }
        };
        let web = match start_web(options.metrics).await {
            Ok(web) => web,
            Err(code) => return code,
        };
        // Before anything is spawned: a subreaper must be one before the
        // first child can leave an orphan.
        let containment = match Containment::setup(&options.cgroup) {
            Ok(containment) => containment,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        // Before anything is spawned, so that no worker runs unguarded.
        let guardian = options.guardian.then(|| {
            let tree = containment.cgroups.as_ref().map(|t| t.base().to_path_buf());
            guardian::Guardian::start(spawn_ctx.clone(), tree)
        });
        let guardian_handle = guardian
            .as_ref()
            .map(guardian::Guardian::handle)
            .unwrap_or_default();
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let source_options = SourceOptions {
            interval: options.interval,
            timeout: options.source_timeout,
            spawn: spawn_ctx.clone(),
            monitor: SourceMonitor::default(),
        };
        let source_monitor = source_options.monitor.clone();
        // As it is logged and shown in status: without its password.
        let source_uri = options
            .source
            .as_deref()
            .map_or_else(|| source::exec::SANDBOX_URI.to_owned(), base::mask_password);
        let source = match &options.source {
            Some(uri) => source::start(uri, source_options, updates_tx),
            None => Ok(source::spawn(
                source::exec::StreamingExec::sandbox(options.interval, &source_options),
                updates_tx,
            )),
        };
        let source = match source {
            Ok(source) => source,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(match e {
                    OpenError::Usage(_) => EX_USAGE,
                    OpenError::NotFound { .. } => EX_NOINPUT,
                    OpenError::Other(_) => 1,
                });
            }
        };
        let cluster = match cluster::Cluster::start(options.cluster.clone()) {
            Ok(cluster) => cluster,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let probes = probe::Probes::new(spawn_ctx.clone());
        let procs = match process::ProcessTable::new(
            spawn_ctx.clone(),
            worker_classes.is_some(),
            containment,
        ) {
            Ok(procs) => procs,
            Err(e) => {
                tracing::error!("cannot watch workers' exits (epoll): {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            pid = std::process::id(),
            source = %source_uri,
            "lrpm {} started",
            lrpm_proto::VERSION
        );
        let mut procs = procs;
        let notify = notify_socket(&mut procs);
        let config = lrpm_core::supervisor::Config {
            max_backoff: options.max_backoff,
            source_uri,
            max_removal_ratio: options.max_removal_ratio,
            max_restarting: options.max_restarting,
        };
        Shell {
            core: lrpm_core::supervisor::Supervisor::new(config),
            procs,
            output: forwarding,
            updates,
            source,
            source_monitor,
            control,
            started_at,
            worker_classes,
            force_window: options.source_timeout + runtime::FORCE_GRACE,
            status_size: 0,
            usage: Default::default(),
            loads: 0,
            last_attempt_at: None,
            held_back: Default::default(),
            notify,
            probes,
            systemd: systemd::Systemd::from_env(),
            web,
            load_counts: Default::default(),
            cluster,
            guardian: guardian_handle,
            guarded_until: None,
            hosts: host::Hosts::new(spawn_ctx),
            log_burst: Default::default(),
        }
        .run()
        .await;
        // Every worker is gone: the guardian has nothing left to guard.
        if let Some(guardian) = guardian {
            guardian.bye().await;
        }
        // Every worker is reaped: the hubs forward what is left in their
        // pipes and exit.
        if let Some(hubs) = hubs {
            hubs.close().await;
        }
        // Lets the answer to `stop` reach its client, then removes the socket.
        control_server.close().await;
        ExitCode::SUCCESS
    });
    rt.shutdown_timeout(runtime::RUNTIME_SHUTDOWN);
    if !output_thread.join_within(OUTPUT_GRACE) {
        tracing::warn!("workers' last lines could not be written within {OUTPUT_GRACE:?}");
    }
    Ok(exit_code(code))
}

/// The exit code of a shutdown that ended with `code`: EX_IOERR (74) in
/// place of success when output was lost on the way, after a log line
/// that says what was lost (if stderr takes it).
fn exit_code(code: ExitCode) -> ExitCode {
    if !stdio::output_was_lost() {
        return code;
    }
    let lost = stdio::output_status();
    let describe = |s: &lrpm_core::status::StreamStatus| {
        format!(
            "{} lines lost, {} writes failed{}",
            s.lines_dropped,
            s.write_errors,
            s.last_error
                .as_ref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        )
    };
    tracing::error!(
        "output was lost during this run: lrpm's log: {}; workers' stdout: {}; workers' stderr: {}",
        describe(&lost.log),
        describe(&lost.stdout),
        describe(&lost.stderr)
    );
    if code == ExitCode::SUCCESS {
        ExitCode::from(EX_IOERR)
    } else {
        code
    }
}
