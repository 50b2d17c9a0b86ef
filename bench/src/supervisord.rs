//! Driving supervisord, the peer lrpm is compared with: installing it,
//! writing its configuration, running it, querying it.
//!
//! supervisord runs with a configuration generated in the session's own
//! directory (`-c`), in the foreground (`-n`), with its control socket in
//! that directory: never the system service, and nothing under
//! /etc/supervisor is read or written.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rustix::process::Signal;

use crate::bench::{Bench, WorkerMode};
use crate::cleanup::Tracked;
use crate::lrpm::tail;
use crate::procfs;

/// The installed supervisord and supervisorctl.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The daemon.
    pub supervisord: PathBuf,
    /// Its control client.
    pub supervisorctl: PathBuf,
}

/// Finds `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn find() -> Option<Programs> {
    Some(Programs {
        supervisord: which("supervisord")?,
        supervisorctl: which("supervisorctl")?,
    })
}

/// Finds supervisord, installing Debian's `supervisor` package first if it
/// is missing (`apt-get install`, after an `apt-get update` if the first
/// attempt fails). The package's own service is not started (the suite
/// never uses it).
pub fn find_or_install() -> anyhow::Result<Programs> {
    if let Some(found) = find() {
        return Ok(found);
    }
    eprintln!("lrpm-bench: supervisord is missing; installing Debian's supervisor package");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "supervisor",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
    };
    if !install().is_ok_and(|s| s.success()) {
        let updated = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running apt-get update")?;
        ensure!(updated.success(), "apt-get update failed");
        let installed = install().context("running apt-get install")?;
        ensure!(installed.success(), "apt-get install supervisor failed");
    }
    find().context("supervisord is still not on PATH after installing it")
}

/// A running supervisord, killed if dropped before [`Supervisord::stop`].
#[derive(Debug)]
pub struct Supervisord {
    child: Tracked,
    conf: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    ctl: PathBuf,
}

impl Supervisord {
    /// Writes a configuration of `jobs` programs of `mode` workers and
    /// starts supervisord on it; returns it and `CLOCK_MONOTONIC` just
    /// before the spawn.
    pub fn start(
        bench: &Bench,
        programs: &Programs,
        jobs: usize,
        mode: WorkerMode,
    ) -> anyhow::Result<(Self, u64)> {
        let dir = bench.session_dir("supervisord")?;
        let conf = dir.join("supervisord.conf");
        let socket = dir.join("supervisor.sock");
        let log = dir.join("supervisord.log");
        fs::write(&conf, config(bench, &dir, &socket, jobs, mode))?;
        let out = File::create(dir.join("supervisord.out"))?;
        let mut cmd = Command::new(&programs.supervisord);
        cmd.arg("-n")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let t0 = procfs::monotonic_ns();
        let child = Tracked::spawn(&mut cmd)?;
        Ok((
            Self {
                child,
                conf,
                socket,
                log,
                ctl: programs.supervisorctl.clone(),
            },
            t0,
        ))
    }

    /// supervisord's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Runs `supervisorctl status` (its table, into a pipe); returns how
    /// long it took and how many programs it shows RUNNING.
    pub fn ctl_status(&self) -> anyhow::Result<(Duration, usize)> {
        let mut cmd = Command::new(&self.ctl);
        cmd.arg("-c")
            .arg(&self.conf)
            .arg("status")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = Tracked::spawn(&mut cmd)?;
        let out = child.stdout_to_end()?;
        // supervisorctl exits 3 when some program is not running; only the
        // table matters here.
        child.wait()?;
        let elapsed = t0.elapsed();
        let text = String::from_utf8_lossy(&out);
        let running = text
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("RUNNING"))
            .count();
        Ok((elapsed, running))
    }

    /// One raw XML-RPC `supervisor.getAllProcessInfo` round trip over the
    /// control socket (what supervisorctl asks for `status`); returns the
    /// response's size.
    pub fn xmlrpc_all_info(&self) -> anyhow::Result<usize> {
        let body = "<?xml version=\"1.0\"?><methodCall>\
                    <methodName>supervisor.getAllProcessInfo</methodName>\
                    <params></params></methodCall>";
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            stream,
            "POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = Vec::with_capacity(1 << 20);
        stream.read_to_end(&mut response)?;
        ensure!(
            response.starts_with(b"HTTP/1.0 200") || response.starts_with(b"HTTP/1.1 200"),
            "supervisord answered: {}",
            String::from_utf8_lossy(&response[..response.len().min(200)])
        );
        ensure!(
            !procfs::contains(&response, b"<fault>"),
            "supervisord returned a fault"
        );
        Ok(response.len())
    }

    /// Waits until its control socket answers.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("supervisord exited ({status}):\n{}", tail(&self.log));
            }
            if self.xmlrpc_all_info().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("supervisord's socket does not answer:\n{}", tail(&self.log));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits until supervisord has exited; returns how long
    /// that took. It exits once every program has stopped.
    pub fn stop(mut self) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.child.signal(Signal::TERM)?;
        let status = self.child.wait()?;
        let elapsed = t0.elapsed();
        ensure!(
            status.success(),
            "supervisord exited with {status}:\n{}",
            tail(&self.log)
        );
        Ok(elapsed)
    }
}

/// supervisord's configuration: its socket and files in `dir`, and one
/// program per job, restarted at once whatever its exit (`startsecs=0`,
/// `autorestart=true`), its output discarded.
fn config(bench: &Bench, dir: &Path, socket: &Path, jobs: usize, mode: WorkerMode) -> String {
    let d = dir.display();
    let mut out = format!(
        "[unix_http_server]\nfile={socket}\nchmod=0700\n\n\
         [supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\nloglevel=warn\n\
         pidfile={d}/supervisord.pid\nchildlogdir={d}\n\
         minfds={minfds}\nminprocs={minprocs}\n{user}\n\
         [rpcinterface:supervisor]\n\
         supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
         [supervisorctl]\nserverurl=unix://{socket}\n\n",
        socket = socket.display(),
        minfds = 1024 + jobs * 6,
        minprocs = 200 + jobs,
        // As root, saying so silences supervisord's warning about it.
        user = if rustix::process::geteuid().is_root() {
            "user=root\n"
        } else {
            ""
        },
    );
    for id in 0..jobs {
        let argv = bench.worker_argv(id, mode).join(" ");
        let _ = write!(
            out,
            "[program:w{id}]\ncommand={argv}\nautostart=true\nautorestart=true\n\
             startsecs=0\nstartretries=100\nstopwaitsecs=10\n\
             stdout_logfile=NONE\nstderr_logfile=NONE\n\n"
        );
    }
    out
}
