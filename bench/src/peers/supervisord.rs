//! Driving supervisord, the peer lrpm is compared with: installing it,
//! writing its configuration, running it, querying it.
//!
//! supervisord runs with a configuration generated in the session's own
//! directory (`-c`), in the foreground (`-n`), with its control socket in
//! that directory: never the system service, and nothing under
//! /etc/supervisor is read or written.

use std::fs;
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
use crate::peers::{Installed, Peer, apt_install, run_client, spawn_daemon, version_of, which};
use crate::procfs;

fn find() -> Option<Installed> {
    let daemon = which("supervisord")?;
    Some(Installed {
        version: version_of(Command::new(&daemon).arg("--version")),
        daemon,
        ctl: which("supervisorctl")?,
    })
}

/// Finds supervisord, installing Debian's `supervisor` package first if it
/// is missing. The package's own service is not started (the suite never
/// uses it).
pub fn find_or_install() -> anyhow::Result<Installed> {
    if let Some(found) = find() {
        return Ok(found);
    }
    apt_install("supervisor")?;
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
    /// Where added programs' sections go (an `[include]` of the
    /// configuration).
    extra: PathBuf,
}

impl Supervisord {
    /// Writes a configuration of `jobs` programs of `mode` workers and
    /// starts supervisord on it; returns it and `CLOCK_MONOTONIC` just
    /// before the spawn.
    pub fn start(bench: &Bench, programs: &Installed, jobs: usize) -> anyhow::Result<(Self, u64)> {
        let dir = bench.session_dir("supervisord")?;
        let conf = dir.join("supervisord.conf");
        let socket = dir.join("supervisor.sock");
        let log = dir.join("supervisord.log");
        let extra = dir.join("extra");
        fs::create_dir(&extra)?;
        fs::write(&conf, config(bench, &dir, &socket, jobs, WorkerMode::Pause))?;
        let (child, t0) = spawn_daemon(
            Command::new(&programs.daemon)
                .arg("-n")
                .arg("-c")
                .arg(&conf),
            &dir,
            &dir.join("supervisord.out"),
        )?;
        Ok((
            Self {
                child,
                conf,
                socket,
                log,
                ctl: programs.ctl.clone(),
                extra,
            },
            t0,
        ))
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

    /// `supervisorctl update`: rereads the configuration and adds or
    /// removes programs as their sections came or went.
    fn update(&self) -> anyhow::Result<()> {
        run_client(
            Command::new(&self.ctl)
                .arg("-c")
                .arg(&self.conf)
                .arg("update"),
            "supervisorctl update",
        )?;
        Ok(())
    }
}

impl Peer for Supervisord {
    fn pid(&self) -> u32 {
        self.child.pid()
    }

    fn add_job(&mut self, bench: &Bench, id: usize) -> anyhow::Result<u64> {
        let t0 = procfs::monotonic_ns();
        fs::write(
            self.extra.join(format!("w{id}.conf")),
            program(bench, id, WorkerMode::Pause),
        )?;
        self.update()?;
        Ok(t0)
    }

    fn remove_job(&mut self, id: usize) -> anyhow::Result<u64> {
        let t0 = procfs::monotonic_ns();
        fs::remove_file(self.extra.join(format!("w{id}.conf")))?;
        self.update()?;
        Ok(t0)
    }

    fn status_raw(&self) -> Option<anyhow::Result<Duration>> {
        let t0 = Instant::now();
        Some(self.xmlrpc_all_info().map(|_| t0.elapsed()))
    }

    fn status_table(&self) -> anyhow::Result<(Duration, usize)> {
        self.ctl_status()
    }

    fn running_by_own_account(&self) -> anyhow::Result<Option<usize>> {
        Ok(Some(self.ctl_status()?.1))
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
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

    /// SIGTERM, then waits until supervisord has exited. It exits once
    /// every program has stopped.
    fn stop(mut self: Box<Self>) -> anyhow::Result<()> {
        self.child.signal(Signal::TERM)?;
        let status = self.child.wait()?;
        ensure!(
            status.success(),
            "supervisord exited with {status}:\n{}",
            tail(&self.log)
        );
        Ok(())
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
         [supervisorctl]\nserverurl=unix://{socket}\n\n\
         [include]\nfiles = {d}/extra/*.conf\n\n",
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
        out.push_str(&program(bench, id, mode));
    }
    out
}

/// The section of job `id`'s program.
fn program(bench: &Bench, id: usize, mode: WorkerMode) -> String {
    let argv = bench.worker_argv(id, mode).join(" ");
    format!(
        "[program:w{id}]\ncommand={argv}\nautostart=true\nautorestart=true\n\
         startsecs=0\nstartretries=100\nstopwaitsecs=10\n\
         stdout_logfile=NONE\nstderr_logfile=NONE\n\n"
    )
}
