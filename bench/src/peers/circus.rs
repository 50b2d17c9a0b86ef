//! Driving circus: `circusd` runs in the foreground on an ini file in the
//! session's own directory, its control, pub/sub and stats endpoints as
//! Unix sockets (`ipc://`) in that directory; `circusctl` talks to it.
//!
//! Every job is a watcher of one process running the worker, its output
//! not captured, everything else left at circus's defaults (`respawn`,
//! `warmup_delay` 0, `graceful_timeout` 30 s, `check_delay` 1 s: circus
//! checks its watchers' processes once a second besides reaping on
//! SIGCHLD).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bench::{Bench, WorkerMode};
use crate::cleanup::Tracked;
use crate::lrpm::tail;
use crate::peers::{
    Installed, Peer, apt_install, quietly, run_client, spawn_daemon, stop_daemon, version_of,
    wait_until, which,
};
use crate::procfs;

/// The PyPI package.
const PACKAGE: &str = "circus";

fn found_in(bin: &Path) -> Option<Installed> {
    let daemon = bin.join("circusd");
    let ctl = bin.join("circusctl");
    (daemon.is_file() && ctl.is_file()).then(|| Installed {
        version: version_of(Command::new(&daemon).arg("--version")),
        daemon,
        ctl,
    })
}

/// Finds circus on `PATH`, or in the virtual environment `peers/circus`,
/// creating it and installing circus there from PyPI first (with Debian's
/// `python3-venv` if `python3 -m venv` is missing).
pub fn find_or_install(peers: &Path) -> anyhow::Result<Installed> {
    if let Some(found) = which("circusd").and_then(|p| found_in(p.parent()?)) {
        return Ok(found);
    }
    let venv = peers.join("circus");
    if let Some(found) = found_in(&venv.join("bin")) {
        return Ok(found);
    }
    eprintln!(
        "lrpm-bench: installing circus from PyPI into {}",
        venv.display()
    );
    fs::create_dir_all(peers)?;
    let make_venv = || {
        quietly(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        )
    };
    if make_venv().is_err() {
        apt_install("python3-venv")?;
        make_venv()?;
    }
    quietly(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .arg(PACKAGE),
        "pip install circus",
    )?;
    found_in(&venv.join("bin")).context("circus is still missing after pip installed it")
}

/// A running circusd, killed if dropped before it is stopped.
#[derive(Debug)]
pub struct Circus {
    child: Tracked,
    endpoint: String,
    ctl: PathBuf,
    log: PathBuf,
}

/// The `cmd` of job `id`'s watcher.
fn command(bench: &Bench, id: usize) -> String {
    bench.worker_argv(id, WorkerMode::Pause).join(" ")
}

impl Circus {
    /// Writes an ini file of `jobs` watchers and starts `circusd` on it;
    /// returns it and `CLOCK_MONOTONIC` just before the spawn.
    pub fn start(bench: &Bench, programs: &Installed, jobs: usize) -> anyhow::Result<(Self, u64)> {
        let dir = bench.session_dir("circus")?;
        let d = dir.display();
        let endpoint = format!("ipc://{d}/control.sock");
        let log = dir.join("circusd.log");
        let mut ini = format!(
            "[circus]\nendpoint = {endpoint}\npubsub_endpoint = ipc://{d}/pubsub.sock\n\
             logoutput = {log}\nloglevel = WARNING\n\n",
            log = log.display()
        );
        for id in 0..jobs {
            let _ = write!(
                ini,
                "[watcher:w{id}]\ncmd = {}\nnumprocesses = 1\n\n",
                command(bench, id)
            );
        }
        let conf = dir.join("circus.ini");
        fs::write(&conf, ini)?;
        let (child, t0) = spawn_daemon(
            Command::new(&programs.daemon).arg(&conf),
            &dir,
            &dir.join("circusd.out"),
        )?;
        Ok((
            Self {
                child,
                endpoint,
                ctl: programs.ctl.clone(),
                log,
            },
            t0,
        ))
    }

    /// Runs `circusctl ARGS` on this daemon to its end; fails unless it
    /// succeeds. Its timeout is raised from 5 s: 1,000 watchers are slow
    /// to list.
    fn run_ctl(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        run_client(
            Command::new(&self.ctl)
                .arg("--endpoint")
                .arg(&self.endpoint)
                .args(["--timeout", "60"])
                .args(args),
            &format!("circusctl {}", args.join(" ")),
        )
    }
}

impl Peer for Circus {
    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits until `circusctl status` answers.
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let (ctl, endpoint) = (&self.ctl, &self.endpoint);
        wait_until(
            &mut self.child,
            "circusd",
            &self.log,
            timeout,
            Duration::from_millis(100),
            || {
                Command::new(ctl)
                    .arg("--endpoint")
                    .arg(endpoint)
                    .arg("status")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
        )
    }

    /// `circusctl add --start NAME CMD`.
    fn add_job(&mut self, bench: &Bench, id: usize) -> anyhow::Result<u64> {
        let t0 = procfs::monotonic_ns();
        self.run_ctl(&["add", "--start", &format!("w{id}"), &command(bench, id)])?;
        Ok(t0)
    }

    /// `circusctl rm NAME`.
    fn remove_job(&mut self, id: usize) -> anyhow::Result<u64> {
        let t0 = procfs::monotonic_ns();
        self.run_ctl(&["rm", &format!("w{id}")])?;
        Ok(t0)
    }

    /// `circusctl status`, counting the watchers shown `active`.
    fn status_table(&self) -> anyhow::Result<(Duration, usize)> {
        let t0 = Instant::now();
        let out = self.run_ctl(&["status"])?;
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&out);
        let active = text.lines().filter(|l| l.ends_with(": active")).count();
        Ok((took, active))
    }

    /// SIGTERM to circusd, which stops every watcher and exits.
    fn stop(mut self: Box<Self>) -> anyhow::Result<()> {
        stop_daemon(&mut self.child, "circusd")
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }
}
