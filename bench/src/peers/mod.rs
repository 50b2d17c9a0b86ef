//! The peers: the supervisors a user would pick instead of lrpm
//! (supervisord, pm2, circus, s6), each installed by the suite if missing
//! and driven through one interface, [`Peer`], so that every peer runs the
//! same scenarios the same way (`suite::peer`).
//!
//! Every peer runs from a directory of its own inside the run's temporary
//! directory (its configuration, sockets, logs and state), started by the
//! harness as a [`crate::cleanup::Tracked`] child in its own session and
//! stopped by SIGTERM through its pidfd: never a system service, never a
//! file outside the run's directory, except the installed programs
//! themselves. The programs are looked for on `PATH` first; what is missing
//! is installed the quietest way there is: Debian's packages for
//! supervisord and s6 (`apt-get`), the npm registry for pm2
//! (`npm install -g --prefix`) and PyPI for circus (a virtual environment),
//! both into `target/bench-peers/` of the workspace, which later runs
//! reuse.

pub mod circus;
pub mod pm2;
pub mod s6;
pub mod supervisord;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rustix::process::Signal;

use crate::bench::Bench;
use crate::cleanup::Tracked;
use crate::lrpm::tail;
use crate::procfs;
use crate::results::Subject;

/// A peer, started with jobs `0..n` of the benchmark worker.
pub trait Peer {
    /// The daemon's pid.
    fn pid(&self) -> u32;

    /// Every process of the supervisor, whose memory and CPU count: the
    /// daemon, and for s6 its `s6-supervise` processes.
    fn processes(&self) -> Vec<u32> {
        vec![self.pid()]
    }

    /// Waits until its control interface answers.
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()>;

    /// Adds job `id` (the benchmark worker) to the running set, its own
    /// way; returns `CLOCK_MONOTONIC` just before the change began.
    fn add_job(&mut self, bench: &Bench, id: usize) -> anyhow::Result<u64>;

    /// Removes job `id` again; returns `CLOCK_MONOTONIC` just before.
    fn remove_job(&mut self, id: usize) -> anyhow::Result<u64>;

    /// One raw status round trip over its control socket, without its
    /// client, if the harness can speak its protocol; `None` otherwise
    /// (pm2's axon RPC and circus's JSON over ZeroMQ are spoken only by
    /// their clients).
    fn status_raw(&self) -> Option<anyhow::Result<Duration>> {
        None
    }

    /// Runs its client's status table (into a pipe); returns how long it
    /// took and how many jobs it shows running.
    fn status_table(&self) -> anyhow::Result<(Duration, usize)>;

    /// How many jobs the supervisor itself counts as running, when that is
    /// distinct from the workers having run their `main` (supervisord's
    /// RUNNING); `None` when it is not.
    fn running_by_own_account(&self) -> anyhow::Result<Option<usize>> {
        Ok(None)
    }

    /// SIGTERM to the daemon; waits until it has exited.
    fn stop(self: Box<Self>) -> anyhow::Result<()>;

    /// The end of its log, for error messages.
    fn log_tail(&self) -> String;
}

/// Which peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// supervisord (Debian's `supervisor`).
    Supervisord,
    /// pm2 (npm).
    Pm2,
    /// circus (PyPI).
    Circus,
    /// s6 (Debian's `s6`).
    S6,
}

impl Kind {
    /// Every peer, in the report's order.
    pub const ALL: [Kind; 4] = [Kind::Supervisord, Kind::Pm2, Kind::Circus, Kind::S6];

    /// Its subject in the results.
    pub fn subject(self) -> Subject {
        match self {
            Kind::Supervisord => Subject::Supervisord,
            Kind::Pm2 => Subject::Pm2,
            Kind::Circus => Subject::Circus,
            Kind::S6 => Subject::S6,
        }
    }

    /// Finds the peer's programs, installing them first if they are
    /// missing; `workspace` holds `target/bench-peers/`.
    pub fn find_or_install(self, workspace: &Path) -> anyhow::Result<Installed> {
        let peers = workspace.join("target/bench-peers");
        match self {
            Kind::Supervisord => supervisord::find_or_install(),
            Kind::Pm2 => pm2::find_or_install(&peers),
            Kind::Circus => circus::find_or_install(&peers),
            Kind::S6 => s6::find_or_install(),
        }
    }

    /// Starts the peer with jobs `0..jobs`; returns it and
    /// `CLOCK_MONOTONIC` just before its spawn.
    pub fn start(
        self,
        bench: &Bench,
        installed: &Installed,
        jobs: usize,
    ) -> anyhow::Result<(Box<dyn Peer>, u64)> {
        Ok(match self {
            Kind::Supervisord => {
                let (p, t0) = supervisord::Supervisord::start(bench, installed, jobs)?;
                (Box::new(p), t0)
            }
            Kind::Pm2 => {
                let (p, t0) = pm2::Pm2::start(bench, installed, jobs)?;
                (Box::new(p), t0)
            }
            Kind::Circus => {
                let (p, t0) = circus::Circus::start(bench, installed, jobs)?;
                (Box::new(p), t0)
            }
            Kind::S6 => {
                let (p, t0) = s6::S6::start(bench, installed, jobs)?;
                (Box::new(p), t0)
            }
        })
    }
}

/// A peer's installed programs.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The daemon (`supervisord`, `pm2-runtime`, `circusd`, `s6-svscan`).
    pub daemon: PathBuf,
    /// Its control client (`supervisorctl`, `pm2`, `circusctl`,
    /// `s6-svscanctl`).
    pub ctl: PathBuf,
    /// Its version, as the report shows it.
    pub version: String,
}

/// Finds `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd` quietly (no input, its output discarded); fails unless it
/// succeeds.
fn quietly(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {what}"))?;
    ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// Installs Debian's `package` (`apt-get install`, after an `apt-get
/// update` if the first attempt fails). A package's own service is not
/// used by the suite.
pub fn apt_install(package: &str) -> anyhow::Result<()> {
    eprintln!("lrpm-bench: installing Debian's {package} package");
    let install = || {
        quietly(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends", package])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("apt-get install {package}"),
        )
    };
    if install().is_err() {
        quietly(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-get update",
        )?;
        install()?;
    }
    Ok(())
}

/// The trimmed stdout of `cmd`, or an error saying what failed.
fn version_of(cmd: &mut Command) -> String {
    crate::machine::output(cmd).unwrap_or_else(|| "version unknown".into())
}

/// Spawns a peer's daemon `cmd` (in `dir`, its output into `log`) as a
/// tracked child; returns it and `CLOCK_MONOTONIC` just before the spawn.
fn spawn_daemon(cmd: &mut Command, dir: &Path, log: &Path) -> anyhow::Result<(Tracked, u64)> {
    let out = File::create(log)?;
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let t0 = procfs::monotonic_ns();
    Ok((Tracked::spawn(cmd)?, t0))
}

/// Waits until `ready` says the daemon `child` (called `name`, logging to
/// `log`) answers, checking every `every`; fails if it exits or
/// `timeout` passes.
fn wait_until(
    child: &mut Tracked,
    name: &str,
    log: &Path,
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited ({status}):\n{}", tail(log));
        }
        if ready() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{name} does not answer:\n{}",
            tail(log)
        );
        std::thread::sleep(every);
    }
}

/// SIGTERM to the daemon `child` (called `name`), then waits until it has
/// exited. Its exit status after a SIGTERM is not specified by every peer
/// (pm2-runtime, circusd, s6-svscan): that it exited is what counts, and
/// another status than 0 is only said.
fn stop_daemon(child: &mut Tracked, name: &str) -> anyhow::Result<()> {
    child.signal(Signal::TERM)?;
    let status = child.wait()?;
    if !status.success() {
        eprintln!("lrpm-bench: {name} exited with {status} after SIGTERM");
    }
    Ok(())
}

/// Runs the client command `cmd` (described by `what`) to its end; fails
/// unless it succeeds, with what it printed.
fn run_client(cmd: &mut Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}
