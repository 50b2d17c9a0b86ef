//! Driving lrpm: its jobs file, its process, its control socket.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rustix::process::Signal;

use crate::bench::{Bench, WorkerMode, with_nofile};
use crate::cleanup::Tracked;
use crate::procfs;

/// How long lrpm may take to answer a control request.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// A farm's declaration: jobs `0..n`, each running the benchmark worker.
#[derive(Debug, Clone)]
pub struct JobSet {
    /// What the workers do.
    pub mode: WorkerMode,
    /// A counter per job, written into its `env`: bumping one changes that
    /// job's declaration and nothing else, so lrpm restarts just that job.
    pub generation: Vec<u32>,
    /// One more job, with this id, beyond `0..n` (the change of the job
    /// set adds one and removes it again).
    pub extra: Option<usize>,
}

impl JobSet {
    /// `n` jobs of `mode` workers.
    pub fn new(n: usize, mode: WorkerMode) -> Self {
        Self {
            mode,
            generation: vec![0; n],
            extra: None,
        }
    }

    /// The TOML jobs file. Every job restarts at once when its worker dies
    /// (`shortRunTimeSeconds = 0`: no run is too short, so no backoff).
    pub fn to_toml(&self, bench: &Bench) -> String {
        let mut out = String::with_capacity(self.generation.len() * 256);
        let extra = self.extra.map(|id| (id, &0));
        for (id, generation) in self.generation.iter().enumerate().chain(extra) {
            let argv = bench
                .worker_argv(id, self.mode)
                .map(|a| format!("\"{}\"", a.replace('\\', "\\\\").replace('"', "\\\"")))
                .join(", ");
            let _ = write!(
                out,
                "[{id}]\nname = \"bench {id}\"\ncommand = [{argv}]\n\
                 shortRunTimeSeconds = 0\nshutdownTimeoutSeconds = 10\n\
                 env = {{ BENCH_GENERATION = \"{generation}\" }}\n\n"
            );
        }
        if out.is_empty() {
            // A zero-byte file is a write in progress; no jobs is a file
            // holding only a comment.
            out.push_str("# no jobs\n");
        }
        out
    }
}

/// A running lrpm, killed if dropped before [`Lrpm::stop`].
#[derive(Debug)]
pub struct Lrpm {
    child: Tracked,
    socket: PathBuf,
    jobs_file: PathBuf,
    log: PathBuf,
}

impl Lrpm {
    /// Starts lrpm on an empty jobs file, with its hard descriptor limit
    /// raised to `raise_nofile` if given and `args` before the jobs file,
    /// and waits until its control socket answers.
    pub fn start(bench: &Bench, raise_nofile: Option<u64>, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(bench, raise_nofile, args, None)
    }

    /// [`Lrpm::start`], with `source` (a URI: `postgres://…`) as lrpm's
    /// source instead of the jobs file, when given.
    pub fn start_on(
        bench: &Bench,
        raise_nofile: Option<u64>,
        args: &[&str],
        source: Option<&str>,
    ) -> anyhow::Result<Self> {
        let dir = bench.session_dir("lrpm")?;
        // The jobs file has a directory of its own: lrpm watches the
        // directory, and its own log being written next to it would wake
        // its watcher for nothing.
        let conf = dir.join("conf");
        fs::create_dir(&conf)?;
        let jobs_file = conf.join("jobs.toml");
        fs::write(&jobs_file, "# no jobs yet\n")?;
        let socket = dir.join("lrpm.sock");
        let log = dir.join("lrpm.log");
        let log_file = File::create(&log)?;
        let mut cmd = Command::new(&bench.bins.lrpm);
        cmd.arg("--socket")
            .arg(&socket)
            .args(args)
            .arg(source.map_or(jobs_file.as_os_str(), std::ffi::OsStr::new))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(hard) = raise_nofile {
            with_nofile(&mut cmd, hard);
        }
        let mut lrpm = Self {
            child: Tracked::spawn(&mut cmd)?,
            socket,
            jobs_file,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = lrpm.child.try_wait()? {
                bail!("lrpm exited at start ({status}):\n{}", tail(&lrpm.log));
            }
            if lrpm.status_line().is_ok() {
                return Ok(lrpm);
            }
            if Instant::now() > deadline {
                bail!("lrpm's socket does not answer:\n{}", tail(&lrpm.log));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// lrpm's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Replaces the jobs file the way a careful writer does (a temporary
    /// file renamed over it); returns `CLOCK_MONOTONIC` just before the
    /// write began.
    pub fn write_jobs(&self, content: &str) -> anyhow::Result<u64> {
        let tmp = self.jobs_file.with_file_name(".jobs.toml.tmp");
        let t0 = procfs::monotonic_ns();
        fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.jobs_file)
            .with_context(|| format!("renaming onto {}", self.jobs_file.display()))?;
        Ok(t0)
    }

    /// One raw `status` round trip on a new connection: the response line.
    pub fn status_line(&self) -> anyhow::Result<Vec<u8>> {
        let stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
        (&stream).write_all(b"{\"cmd\":\"status\"}\n")?;
        let mut line = Vec::with_capacity(1 << 20);
        BufReader::with_capacity(1 << 16, &stream).read_until(b'\n', &mut line)?;
        ensure!(
            line.ends_with(b"\n"),
            "lrpm closed the connection mid-answer"
        );
        Ok(line)
    }

    /// The status document, decoded.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let line = self.status_line()?;
        let doc: serde_json::Value = serde_json::from_slice(&line).context("decoding status")?;
        ensure!(doc["ok"] == true, "status refused: {doc}");
        Ok(doc)
    }

    /// How many jobs the status lists, and how many of them are running.
    pub fn running(&self) -> anyhow::Result<(usize, usize)> {
        let doc = self.status()?;
        let jobs = doc["jobs"].as_array().context("status without jobs")?;
        let running = jobs.iter().filter(|j| j["state"] == "running").count();
        Ok((jobs.len(), running))
    }

    /// The sum of the jobs' `restarts` counters.
    pub fn restarts(&self) -> anyhow::Result<u64> {
        let doc = self.status()?;
        let jobs = doc["jobs"].as_array().context("status without jobs")?;
        Ok(jobs.iter().filter_map(|j| j["restarts"].as_u64()).sum())
    }

    /// Runs `lrpmctl status` (the table, into a pipe); returns how long the
    /// process took from spawn to exit.
    pub fn ctl_status(&self, bench: &Bench) -> anyhow::Result<Duration> {
        let mut cmd = Command::new(&bench.bins.lrpmctl);
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("status")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = Tracked::spawn(&mut cmd)?;
        // The table is read as a pager would; reading it is part of the
        // cost, and a full pipe would stall the client.
        let out = child.stdout_to_end()?;
        let status = child.wait()?;
        let elapsed = t0.elapsed();
        ensure!(
            status.success(),
            "lrpmctl status failed ({status}): {}",
            child.stderr_to_end().unwrap_or_default()
        );
        ensure!(!out.is_empty(), "lrpmctl status printed nothing");
        Ok(elapsed)
    }

    /// SIGTERM, then waits until lrpm has exited; returns how long that
    /// took. lrpm exits only once every worker is reaped.
    pub fn stop(mut self) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.child.signal(Signal::TERM)?;
        let status = self.child.wait()?;
        let elapsed = t0.elapsed();
        ensure!(
            status.success(),
            "lrpm exited with {status}:\n{}",
            tail(&self.log)
        );
        Ok(elapsed)
    }

    /// The last lines of lrpm's log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

/// The last few lines of the file at `path`.
pub fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
