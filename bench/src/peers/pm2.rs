//! Driving pm2: its daemon runs in the foreground as `pm2-runtime` (pm2's
//! "no daemon" mode, made for containers), with `PM2_HOME` in the
//! session's own directory, so that the harness starts it as its own child
//! and stops it by pid; the `pm2` client talks to it through the sockets in
//! that `PM2_HOME`.
//!
//! Every job is an app of the ecosystem file, `interpreter: none` (the
//! worker is executed, not run by node), its output discarded
//! (`/dev/null`), everything else left at pm2's defaults (`autorestart`,
//! `restart_delay` 0, `min_uptime` 1 s with `max_restarts` 16: a process
//! that dies within a second of its start counts as unstable, and pm2
//! stops restarting it after 16 such restarts in a row).

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bench::{Bench, WorkerMode};
use crate::cleanup::Tracked;
use crate::lrpm::tail;
use crate::peers::{
    Installed, Peer, apt_install, quietly, run_client, spawn_daemon, stop_daemon, wait_until, which,
};
use crate::procfs;

/// The npm package.
const PACKAGE: &str = "pm2";

fn found_in(bin: &Path) -> Option<Installed> {
    let daemon = bin.join("pm2-runtime");
    let ctl = bin.join("pm2");
    (daemon.is_file() && ctl.is_file()).then(|| Installed {
        // `pm2 --version` may start a daemon in ~/.pm2: the version is read
        // from the package instead.
        version: package_version(bin).unwrap_or_else(|| "version unknown".into()),
        daemon,
        ctl,
    })
}

/// The version in the package.json of the pm2 whose `bin` directory (or
/// symbolic links in it) is `bin`.
fn package_version(bin: &Path) -> Option<String> {
    let script = fs::canonicalize(bin.join("pm2")).ok()?;
    let package = script.parent()?.parent()?.join("package.json");
    let json: serde_json::Value = serde_json::from_slice(&fs::read(package).ok()?).ok()?;
    Some(json["version"].as_str()?.to_owned())
}

/// Finds pm2 on `PATH`, or in `peers/pm2`, installing it there from the
/// npm registry first (`npm install -g --prefix`, with Debian's `npm` if
/// npm itself is missing).
pub fn find_or_install(peers: &Path) -> anyhow::Result<Installed> {
    if let Some(found) = which("pm2").and_then(|p| found_in(p.parent()?)) {
        return Ok(found);
    }
    let prefix = peers.join("pm2");
    if let Some(found) = found_in(&prefix.join("bin")) {
        return Ok(found);
    }
    if which("npm").is_none() {
        apt_install("npm")?;
    }
    eprintln!(
        "lrpm-bench: installing pm2 from the npm registry into {}",
        prefix.display()
    );
    fs::create_dir_all(&prefix)?;
    quietly(
        Command::new("npm")
            .args([
                "install",
                "-g",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .arg("--prefix")
            .arg(&prefix)
            .arg(PACKAGE),
        "npm install pm2",
    )?;
    found_in(&prefix.join("bin")).context("pm2 is still missing after npm installed it")
}

/// A running pm2, killed if dropped before it is stopped.
#[derive(Debug)]
pub struct Pm2 {
    child: Tracked,
    home: PathBuf,
    dir: PathBuf,
    ctl: PathBuf,
    log: PathBuf,
}

/// One app of an ecosystem file: job `id`'s worker.
fn app(bench: &Bench, id: usize) -> serde_json::Value {
    let [script, args @ ..] = bench.worker_argv(id, WorkerMode::Pause);
    serde_json::json!({
        "name": format!("w{id}"),
        "script": script,
        "args": args,
        "interpreter": "none",
        "out_file": "/dev/null",
        "error_file": "/dev/null",
    })
}

impl Pm2 {
    /// Writes an ecosystem file of `jobs` apps and starts `pm2-runtime` on
    /// it; returns it and `CLOCK_MONOTONIC` just before the spawn.
    pub fn start(bench: &Bench, programs: &Installed, jobs: usize) -> anyhow::Result<(Self, u64)> {
        let dir = bench.session_dir("pm2")?;
        let home = dir.join("home");
        fs::create_dir(&home)?;
        let ecosystem = dir.join("ecosystem.json");
        let apps: Vec<_> = (0..jobs).map(|id| app(bench, id)).collect();
        fs::write(&ecosystem, serde_json::json!({ "apps": apps }).to_string())?;
        let log = dir.join("pm2-runtime.log");
        let mut cmd = Command::new(&programs.daemon);
        cmd.arg("start").arg(&ecosystem).env("PM2_HOME", &home);
        let (child, t0) = spawn_daemon(&mut cmd, &dir, &log)?;
        Ok((
            Self {
                child,
                home,
                dir,
                ctl: programs.ctl.clone(),
                log,
            },
            t0,
        ))
    }

    /// Runs `pm2 ARGS` on this daemon to its end; fails unless it
    /// succeeds.
    fn run_ctl(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        run_client(
            Command::new(&self.ctl)
                .env("PM2_HOME", &self.home)
                .current_dir(&self.dir)
                .args(args),
            &format!("pm2 {}", args.join(" ")),
        )
    }
}

impl Peer for Pm2 {
    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits until the daemon's RPC socket accepts a connection (`pm2 ping`
    /// would start a daemon of its own if none answered).
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let socket = self.home.join("rpc.sock");
        wait_until(
            &mut self.child,
            "pm2-runtime",
            &self.log,
            timeout,
            Duration::from_millis(20),
            || UnixStream::connect(&socket).is_ok(),
        )
    }

    /// `pm2 start` of an ecosystem file holding the one new app.
    fn add_job(&mut self, bench: &Bench, id: usize) -> anyhow::Result<u64> {
        let file = self.dir.join(format!("add-{id}.json"));
        let t0 = procfs::monotonic_ns();
        fs::write(
            &file,
            serde_json::json!({ "apps": [app(bench, id)] }).to_string(),
        )?;
        self.run_ctl(&["start", &file.display().to_string()])?;
        Ok(t0)
    }

    /// `pm2 delete NAME`.
    fn remove_job(&mut self, id: usize) -> anyhow::Result<u64> {
        let t0 = procfs::monotonic_ns();
        self.run_ctl(&["delete", &format!("w{id}")])?;
        Ok(t0)
    }

    /// `pm2 ls`, counting the apps shown `online`.
    fn status_table(&self) -> anyhow::Result<(Duration, usize)> {
        let t0 = Instant::now();
        let out = self.run_ctl(&["ls"])?;
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&out);
        let online = text.lines().filter(|l| l.contains("online")).count();
        Ok((took, online))
    }

    /// SIGTERM to `pm2-runtime`, which stops every app (SIGINT to each,
    /// SIGKILL after `kill_timeout`, 1.6 s) and exits.
    fn stop(mut self: Box<Self>) -> anyhow::Result<()> {
        stop_daemon(&mut self.child, "pm2-runtime")
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }
}
