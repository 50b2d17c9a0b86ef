//! Health probes: running a job's `healthCheck` without ever blocking the
//! event loop.
//!
//! # Theory of operation
//!
//! The core says when a probe is due (`Action::Probe`); [`Probes::start`]
//! starts it at once and returns: an HTTP GET or a TCP connection runs as a
//! task of the runtime, and a probe command is spawned here (a child of
//! lrpm, spawned from the event loop's thread, in its own process group,
//! with stdin from `/dev/null`) and waited for by a task. Every probe has
//! its check's timeout: a slower one is a failure, and a probe command is
//! then killed (its process group, through its pidfd) and reaped. The
//! result comes back to the loop through [`Probes::next`], which the loop
//! hands to the core (`Supervisor::handle_probe`).
//!
//! A probe command's output is read and dropped but for its last line,
//! which the log shows when the probe fails; it inherits the job's `env`,
//! `cwd`, `user` and `group`, with `LRPM_JOB_ID`.

use std::sync::Arc;
use std::time::Duration;

use lrpm_core::health::{HealthCheck, HttpTarget, Probe};
use lrpm_core::job::{JobId, JobSpec};
use lrpm_core::supervisor::RunId;
use lrpm_process::command::{SpawnContext, SpawnRequest, resolve_identity, spawn_command};
use lrpm_process::pidfd::AsyncChild;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::base;

/// A probe's result.
#[derive(Debug)]
pub(crate) struct ProbeResult {
    /// The process probed.
    pub(crate) run: RunId,
    /// Its job.
    pub(crate) job: JobId,
    /// Why it failed; `None` if it succeeded.
    pub(crate) failure: Option<String>,
}

/// The probes under way, and their results.
#[derive(Debug)]
pub(crate) struct Probes {
    tx: mpsc::UnboundedSender<ProbeResult>,
    rx: mpsc::UnboundedReceiver<ProbeResult>,
    ctx: SpawnContext,
}

impl Probes {
    /// No probe under way; probe commands are spawned with `ctx`.
    pub(crate) fn new(ctx: SpawnContext) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Probes { tx, rx, ctx }
    }

    /// Starts the probe of `spec`'s health check against run `run`; its
    /// result comes through [`Probes::next`], within the check's timeout
    /// (and a little).
    pub(crate) fn start(&self, run: RunId, job: JobId, spec: &Arc<JobSpec>) {
        let Some(check) = spec.health_check.clone() else {
            return;
        };
        let tx = self.tx.clone();
        let spawned = match &check.probe {
            Probe::Command(argv) => Some(self.spawn(argv, &job, spec)),
            _ => None,
        };
        let send = move |failure: Option<String>| {
            // The loop is gone only at shutdown.
            let _ = tx.send(ProbeResult { run, job, failure });
        };
        match &check.probe {
            Probe::Command(_) => match spawned.expect("invariant: spawned above") {
                Ok((child, out, err)) => {
                    tokio::spawn(async move {
                        send(run_command(child, out, err, check.timeout).await.err());
                    });
                }
                Err(e) => send(Some(format!("cannot start the probe command: {e}"))),
            },
            Probe::Http(target) => {
                let target = target.clone();
                tokio::spawn(async move {
                    send(within(&check, http(&target)).await.err());
                });
            }
            Probe::Tcp { host, port } => {
                let (host, port) = (host.clone(), *port);
                tokio::spawn(async move {
                    let connect = async {
                        TcpStream::connect((host.as_str(), port)).await?;
                        Ok(())
                    };
                    send(within(&check, connect).await.err());
                });
            }
        }
    }

    /// The next result of a probe. Cancel-safe.
    pub(crate) async fn next(&mut self) -> ProbeResult {
        match self.rx.recv().await {
            Some(result) => result,
            // `self` holds a sender: never closed.
            None => std::future::pending().await,
        }
    }

    fn spawn(
        &self,
        argv: &[String],
        job: &JobId,
        spec: &JobSpec,
    ) -> Result<(AsyncChild, pipe::Receiver, pipe::Receiver), String> {
        let identity = resolve_identity(spec.user.as_deref(), spec.group.as_deref())
            .map_err(|e| e.to_string())?;
        let mut cmd = SpawnRequest::new(&argv[0])
            .args(&argv[1..])
            .identity(identity)
            .env(base::JOB_ID_ENV, job.as_str())
            .env(base::JOB_NAME_ENV, &spec.name);
        if let Some(k) = spec.instance {
            // A copy's check may look at the copy's own port or file.
            cmd = cmd.env(base::INSTANCE_ENV, k.to_string());
        }
        for (name, value) in &spec.env {
            cmd = cmd.env(name, value);
        }
        if let Some(cwd) = &spec.cwd {
            cmd = cmd.current_dir(cwd);
        }
        let spawned = spawn_command(cmd, &self.ctx).map_err(|e| e.to_string())?;
        let output = spawned.output;
        let child = AsyncChild::new(spawned.pid, spawned.pidfd).map_err(|e| e.to_string())?;
        let (out, err) = output.ok_or("invariant: a probe's output is piped")?;
        let out = pipe::Receiver::from_owned_fd(out).map_err(|e| e.to_string())?;
        let err = pipe::Receiver::from_owned_fd(err).map_err(|e| e.to_string())?;
        Ok((child, out, err))
    }
}

/// `probe` within the check's timeout.
async fn within(
    check: &HealthCheck,
    probe: impl Future<Output = std::io::Result<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

/// An HTTP/1.1 GET: healthy on a 2xx or 3xx status line.
async fn http(target: &HttpTarget) -> std::io::Result<()> {
    let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
    let host = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: lrpm-health\r\nConnection: close\r\n\r\n",
        target.path, target.port
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all that counts: read until its end, 1 KiB at most.
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let line = line.lines().next().unwrap_or("");
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(200..=399) => Ok(()),
        Some(code) => Err(std::io::Error::other(format!("HTTP status {code}"))),
        None => Err(std::io::Error::other(format!(
            "not an HTTP answer: {}",
            lrpm_core::human::cut(line)
        ))),
    }
}

/// Waits for a probe command, killing it at `timeout`: healthy when it
/// exits 0.
async fn run_command(
    child: AsyncChild,
    mut out: pipe::Receiver,
    mut err: pipe::Receiver,
    timeout: Duration,
) -> Result<(), String> {
    let mut last = Vec::new();
    let drain = async {
        let (mut buf_out, mut buf_err) = ([0u8; 2048], [0u8; 2048]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            let (n, from_err) = tokio::select! {
                r = out.read(&mut buf_out), if out_open => (r.unwrap_or(0), false),
                r = err.read(&mut buf_err), if err_open => (r.unwrap_or(0), true),
            };
            if n == 0 {
                if from_err {
                    err_open = false;
                } else {
                    out_open = false;
                }
                continue;
            }
            // Keeps the last line's worth.
            let read = if from_err {
                &buf_err[..n]
            } else {
                &buf_out[..n]
            };
            last.extend_from_slice(read);
            if last.len() > 1024 {
                last.drain(..last.len() - 1024);
            }
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(timeout, drain).await {
        Ok(status) => status,
        Err(_) => {
            child.kill();
            // Reaped in the background once killed, as a dropped child is.
            drop(child);
            return Err(format!("killed after its timeout of {timeout:?}"));
        }
    };
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&last);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(if line.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {}", lrpm_core::human::cut(line))
    })
}
