//! lrpm: a long-running process manager.
//!
//! lrpm supervises a farm of worker processes declared by a configuration
//! source, and follows the source as it changes: it starts new jobs, stops
//! removed ones, restarts changed ones, restarts crashed ones with
//! exponential backoff, and escalates a stop from the job's polite signal
//! to SIGKILL.
//!
//! The supervision logic is the I/O-free state machine of the
//! [`lrpm_core`] crate; this crate is the shell around it: the
//! [configuration sources](source), the [process table](process), the
//! [output forwarding](output), the [control plane](control) and the
//! [event loop](runtime). [`run`] is the entry point the `lrpm` binary
//! calls.
#![warn(missing_docs)]

pub mod cli;
pub mod containment;
pub mod control;
pub mod ctl;
mod exits;
pub mod hub;
mod lanes;
pub mod library;
mod lines;
pub mod output;
pub mod process;
pub mod protocol;
pub mod runtime;
pub mod source;
pub mod spawn;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
pub use lrpm_core;
use tokio::sync::mpsc;

use crate::cli::{Args, EX_NOINPUT, EX_USAGE, LogFormat, Options};
use crate::output::Output;
use crate::process::SpawnContext;
use crate::runtime::Shell;
use crate::source::{OpenError, SourceOptions};

/// Runs the supervisor with the command-line arguments `args` (the first is
/// the program name) and returns its exit code: 0 after a clean shutdown,
/// 64 for a usage error, 66 for a missing file source, 1 otherwise.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(args, None)
}

/// What a library-mode binary brings besides the `lrpm` command line: its
/// registered worker classes and whether it has a configuration source.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sandbox {
    /// The `workerClass` names it can run.
    pub(crate) worker_classes: std::collections::BTreeSet<String>,
    /// Whether it has a built-in configuration source.
    pub(crate) has_source: bool,
}

/// Makes glibc's malloc use one arena for every thread of the process. lrpm's
/// threads (the event loop, the output writer, the blocking pool that reads
/// configurations) rarely allocate at the same time, and an arena per thread
/// kept megabytes of freed memory each (the thread that parses a large
/// configuration most of all). Called before any thread starts.
fn one_malloc_arena() {
    // SAFETY: mallopt only tunes the allocator; M_ARENA_MAX takes effect
    // for threads that have not allocated yet, and no other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// [`run`], for a plain `lrpm` (`sandbox` is `None`) or a library-mode
/// binary.
pub(crate) fn run_with<I, T>(args: I, sandbox: Option<Sandbox>) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    one_malloc_arena();
    if args.get(1).is_some_and(|a| a == hub::HUB_MODE) {
        return hub::run(&args);
    }
    let args = match Args::try_parse_from(args) {
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
    let has_source = sandbox.as_ref().is_some_and(|s| s.has_source);
    let options = match args.validate(has_source) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    init_logging(&options);
    match supervise(options, sandbox) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(options: &Options) {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(options.log_level.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match options.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn supervise(options: Options, sandbox: Option<Sandbox>) -> anyhow::Result<ExitCode> {
    // First, so that the spawner's descriptor slots get the lowest numbers
    // and every child's private descriptor table stays a few entries long.
    crate::spawn::reserve()?;
    process::cloexec_inherited_fds();
    let (child_nofile, raised) = process::raise_nofile_limit();
    match raised {
        Some(limit) => tracing::info!("descriptor limit raised to {limit}"),
        None => tracing::info!("descriptor limit is unlimited"),
    }
    let started_at = runtime::wall_now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut output, output_thread) = Output::start()?;
    let hubs = hub::Hubs::new();
    if let Some(hubs) = &hubs {
        output.use_hubs(hubs.clone());
    }
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
        // Before anything is spawned: a subreaper must be one before the
        // first child can leave an orphan.
        let containment = match containment::Containment::setup(&options.cgroup) {
            Ok(containment) => containment,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let spawn_ctx = SpawnContext {
            worker_binary: sandbox.is_some(),
            ..SpawnContext::current(child_nofile)
        };
        let source_options = SourceOptions {
            interval: options.interval,
            timeout: options.source_timeout,
            spawn: spawn_ctx.clone(),
        };
        let source_uri = options
            .source
            .clone()
            .unwrap_or_else(|| source::exec::SANDBOX_URI.to_owned());
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
        let procs = match process::ProcessTable::new(spawn_ctx, output, containment) {
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
            env!("CARGO_PKG_VERSION")
        );
        let config = lrpm_core::supervisor::Config {
            max_backoff: options.max_backoff,
            source_uri,
            max_removal_ratio: options.max_removal_ratio,
        };
        Shell {
            core: lrpm_core::supervisor::Supervisor::new(config),
            procs,
            updates,
            source,
            control,
            started_at,
            worker_classes: sandbox.map(|s| s.worker_classes),
            force_window: options.source_timeout + runtime::FORCE_GRACE,
            status_size: 0,
            loads: 0,
            last_attempt_at: None,
        }
        .run()
        .await;
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
    output_thread.join();
    Ok(code)
}

/// A short human form of a duration: `250ms`, `4s`, `1.5s`, `2m8s`.
pub(crate) fn humantime(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 if ms % 1000 == 0 => format!("{}s", ms / 1000),
        1000..60_000 => format!("{:.1}s", d.as_secs_f64()),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The name of signal number `n` (`SIGTERM`), or `signal N`.
pub fn signal_name(n: i32) -> String {
    use rustix::process::Signal as S;
    const NAMES: [(S, &str); 20] = [
        (S::HUP, "SIGHUP"),
        (S::INT, "SIGINT"),
        (S::QUIT, "SIGQUIT"),
        (S::ILL, "SIGILL"),
        (S::TRAP, "SIGTRAP"),
        (S::ABORT, "SIGABRT"),
        (S::BUS, "SIGBUS"),
        (S::FPE, "SIGFPE"),
        (S::KILL, "SIGKILL"),
        (S::USR1, "SIGUSR1"),
        (S::SEGV, "SIGSEGV"),
        (S::USR2, "SIGUSR2"),
        (S::PIPE, "SIGPIPE"),
        (S::ALARM, "SIGALRM"),
        (S::TERM, "SIGTERM"),
        (S::XCPU, "SIGXCPU"),
        (S::XFSZ, "SIGXFSZ"),
        (S::SYS, "SIGSYS"),
        (S::WINCH, "SIGWINCH"),
        (S::STOP, "SIGSTOP"),
    ];
    NAMES
        .iter()
        .find(|(s, _)| s.as_raw() == n)
        .map_or_else(|| format!("signal {n}"), |(_, name)| (*name).to_owned())
}
