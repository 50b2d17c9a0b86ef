//! A PostgreSQL 15 server for the postgres part: a fresh cluster
//! (`initdb`) in the run's temporary directory, run by the `postgres` user
//! (`runuser`; the server refuses to run as root) on loopback on a free
//! port, with trust authentication, and stopped by its pid (a fast
//! shutdown) when dropped. Its command line holds the run's directory, so
//! the suite's cleanup finds it too.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rustix::process::{Pid, Signal, kill_process};
use tokio::runtime::Runtime;

use crate::bench::Bench;
use crate::cleanup::Tracked;

/// Debian's PostgreSQL 15 programs.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long the server may take to start or to stop.
const SERVER_WAIT: Duration = Duration::from_secs(60);

/// A running server.
#[derive(Debug)]
pub struct PgServer {
    /// Its directory: the cluster in `data/`, its socket and log.
    dir: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// `runuser … postgres`.
    child: Tracked,
    /// The postmaster's pid.
    pid: u32,
}

impl PgServer {
    /// Creates a cluster and starts its server. Fails, saying why, on a
    /// machine without Debian's `postgresql` or without root.
    pub fn start(bench: &Bench, rt: &Runtime) -> anyhow::Result<Self> {
        ensure!(
            Path::new(PG_BIN).join("postgres").exists(),
            "PostgreSQL 15 is not installed (apt-get install postgresql)"
        );
        ensure!(
            rustix::process::geteuid().is_root(),
            "the server runs as the postgres user, through runuser: run the suite as root"
        );
        let (uid, gid) = postgres_ids()?;
        // The postgres user must reach its directory inside the run's.
        fs::set_permissions(&bench.dir, fs::Permissions::from_mode(0o711))?;
        let dir = bench.session_dir("postgres")?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        let initdb = as_postgres(&Path::new(PG_BIN).join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--no-locale", "--no-instructions", "--no-sync"])
            .output()
            .context("running initdb")?;
        ensure!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = File::create(dir.join("server.log"))?;
        let mut cmd = as_postgres(&Path::new(PG_BIN).join("postgres"));
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = Tracked::spawn(&mut cmd)?;
        let deadline = Instant::now() + SERVER_WAIT;
        let pid = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the server exited ({status}):\n{}",
                    fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                );
            }
            let pid = fs::read_to_string(dir.join("data/postmaster.pid"))
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                if rt.block_on(connect(port)).is_ok() {
                    break pid;
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the server did not answer within {SERVER_WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Self {
            dir,
            port,
            child,
            pid,
        })
    }

    /// lrpm's source URI for `query` (`table=jobs&channel=c`).
    pub fn uri(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }

    /// A new connection as the superuser, driven by a task of `rt` (which
    /// runs while the caller blocks on it).
    pub fn client(&self, rt: &Runtime) -> anyhow::Result<tokio_postgres::Client> {
        let _guard = rt.enter();
        rt.block_on(connect(self.port))
    }

    /// The server's log, for error messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // A fast shutdown, by the postmaster's pid; runuser then exits.
        if let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::INT);
        }
        let deadline = Instant::now() + SERVER_WAIT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Tracked's own drop kills runuser.
    }
}

/// Connects as the superuser over TCP, and spawns the connection's task.
async fn connect(port: u16) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `program` run as the `postgres` user.
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command.current_dir("/");
    command
}

/// The uid and gid of `postgres`, from `/etc/passwd`.
fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&"postgres"))
                .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        })
        .context("there is no postgres user")
}
