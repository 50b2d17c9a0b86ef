//! Driving s6: `s6-svscan` on a scan directory in the session's own
//! directory, which starts one `s6-supervise` per service directory, which
//! runs the service's `run`.
//!
//! Every job is a service directory `wID` whose `run` is a symbolic link to
//! the benchmark worker, with its arguments in the file `bench-args` beside
//! it (`run` is executed with no argument, in its service directory; the
//! worker reads the file after its clock): no shell stands between
//! s6-supervise and the worker. s6-svscan maintains at most 500 services
//! by default, so a farm of more is started with `-c` (room for the farm
//! and the services added to it). Everything else is s6's default, notably
//! its throttle: s6-supervise starts a service at most once a second (a
//! service that died less than a second after it started is restarted one
//! second after that start).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::bench::{Bench, WorkerMode};
use crate::cleanup::Tracked;
use crate::lrpm::tail;
use crate::peers::{
    Installed, Peer, apt_install, run_client, spawn_daemon, stop_daemon, version_of, wait_until,
    which,
};
use crate::procfs;

/// How many services s6-svscan maintains by default (`-c`): too few for
/// 1,000 jobs, the one setting s6 needs here.
const DEFAULT_MAX_SERVICES: usize = 500;

/// Room for the services added beyond a farm's jobs.
const ROOM: usize = 100;

fn find() -> Option<Installed> {
    Some(Installed {
        daemon: which("s6-svscan")?,
        ctl: which("s6-svscanctl")?,
        // s6's programs have no --version; the package has one.
        version: version_of(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "s6"])),
    })
}

/// Finds s6, installing Debian's `s6` package first if it is missing.
pub fn find_or_install() -> anyhow::Result<Installed> {
    if let Some(found) = find() {
        return Ok(found);
    }
    apt_install("s6")?;
    find().context("s6-svscan is still not on PATH after installing s6")
}

/// A running s6-svscan, killed if dropped before it is stopped.
#[derive(Debug)]
pub struct S6 {
    child: Tracked,
    dir: PathBuf,
    scan: PathBuf,
    ctl: PathBuf,
    svstat: PathBuf,
    log: PathBuf,
    jobs: usize,
}

/// Makes job `id`'s service directory in `parent`.
fn service(bench: &Bench, parent: &Path, id: usize) -> anyhow::Result<PathBuf> {
    let dir = parent.join(format!("w{id}"));
    fs::create_dir(&dir)?;
    let [worker, args @ ..] = bench.worker_argv(id, WorkerMode::Pause);
    fs::write(dir.join("bench-args"), args.join(" "))?;
    symlink(worker, dir.join("run"))?;
    Ok(dir)
}

impl S6 {
    /// Makes a scan directory of `jobs` services and starts `s6-svscan` on
    /// it; returns it and `CLOCK_MONOTONIC` just before the spawn.
    pub fn start(bench: &Bench, programs: &Installed, jobs: usize) -> anyhow::Result<(Self, u64)> {
        let dir = bench.session_dir("s6")?;
        let scan = dir.join("scan");
        fs::create_dir(&scan)?;
        fs::create_dir(dir.join("staging"))?;
        fs::create_dir(dir.join("removed"))?;
        for id in 0..jobs {
            service(bench, &scan, id)?;
        }
        let log = dir.join("s6-svscan.log");
        let mut cmd = Command::new(&programs.daemon);
        if jobs + ROOM > DEFAULT_MAX_SERVICES {
            cmd.arg(format!("-c{}", jobs + ROOM));
        }
        let (child, t0) = spawn_daemon(cmd.arg(&scan), &dir, &log)?;
        let bin = programs.ctl.parent().unwrap_or(Path::new("/usr/bin"));
        Ok((
            Self {
                child,
                dir,
                scan,
                ctl: programs.ctl.clone(),
                svstat: bin.join("s6-svstat"),
                log,
                jobs,
            },
            t0,
        ))
    }

    /// `s6-svscanctl OPTIONS SCANDIR`.
    fn svscanctl(&self, options: &str) -> anyhow::Result<()> {
        let status = Command::new(&self.ctl)
            .arg(options)
            .arg(&self.scan)
            .stdin(Stdio::null())
            .status()
            .context("running s6-svscanctl")?;
        ensure!(status.success(), "s6-svscanctl {options} failed ({status})");
        Ok(())
    }

    /// The service directories in the scan directory.
    fn services(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut dirs = Vec::with_capacity(self.jobs);
        for entry in fs::read_dir(&self.scan)? {
            let entry = entry?;
            if !entry.file_name().as_encoded_bytes().starts_with(b".") {
                dirs.push(entry.path());
            }
        }
        Ok(dirs)
    }
}

impl Peer for S6 {
    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// s6-svscan and its s6-supervise processes: every one of them is part
    /// of the supervisor.
    fn processes(&self) -> Vec<u32> {
        let pid = self.pid();
        let mut pids = vec![pid];
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        pids
    }

    /// Waits until s6-svscan's control pipe exists.
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let control = self.scan.join(".s6-svscan/control");
        wait_until(
            &mut self.child,
            "s6-svscan",
            &self.log,
            timeout,
            Duration::from_millis(20),
            || control.exists(),
        )
    }

    /// A new service directory, made beside the scan directory and renamed
    /// into it, then `s6-svscanctl -a` (rescan).
    fn add_job(&mut self, bench: &Bench, id: usize) -> anyhow::Result<u64> {
        let t0 = procfs::monotonic_ns();
        let made = service(bench, &self.dir.join("staging"), id)?;
        fs::rename(&made, self.scan.join(format!("w{id}")))?;
        self.svscanctl("-a")?;
        Ok(t0)
    }

    /// The service directory moved out of the scan directory, then
    /// `s6-svscanctl -an` (rescan, and stop the supervisors of services
    /// that are gone).
    fn remove_job(&mut self, id: usize) -> anyhow::Result<u64> {
        let t0 = procfs::monotonic_ns();
        let name = format!("w{id}");
        fs::rename(self.scan.join(&name), self.dir.join("removed").join(&name))?;
        self.svscanctl("-an")?;
        Ok(t0)
    }

    /// s6 has no status socket: a service's state is the 35-byte file
    /// `supervise/status`, which `s6-svstat` decodes. The raw status is
    /// the harness reading every service's file.
    fn status_raw(&self) -> Option<anyhow::Result<Duration>> {
        let t0 = Instant::now();
        let read = self.services().and_then(|dirs| {
            for dir in dirs {
                let status = fs::read(dir.join("supervise/status"))?;
                ensure!(status.len() >= 35, "{} is short", dir.display());
            }
            Ok(())
        });
        Some(read.map(|()| t0.elapsed()))
    }

    /// `s6-svstat DIR` for every service directory, one process each (s6
    /// has no command for all of them), counting those shown `up`.
    fn status_table(&self) -> anyhow::Result<(Duration, usize)> {
        let t0 = Instant::now();
        let mut up = 0;
        for dir in self.services()? {
            let out = run_client(Command::new(&self.svstat).arg(&dir), "s6-svstat")?;
            up += usize::from(out.starts_with(b"up "));
        }
        Ok((t0.elapsed(), up))
    }

    /// SIGTERM to s6-svscan, which stops every s6-supervise (each stops
    /// its service) and exits.
    fn stop(mut self: Box<Self>) -> anyhow::Result<()> {
        stop_daemon(&mut self.child, "s6-svscan")
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }
}
