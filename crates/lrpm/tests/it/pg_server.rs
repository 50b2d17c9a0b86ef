//! A real PostgreSQL 15 server for the tests of the postgres source: a
//! fresh cluster (`initdb`) in a temp dir, run by the `postgres` user
//! (`runuser`, since the server refuses to run as root) on loopback on a
//! free port, and stopped by its pid and removed when the fixture drops.
//!
//! The cluster has the database `lrpm` and the role `lrpm` (password
//! [`PASSWORD`]), which may read every table the tests create. Over TCP
//! every role must give its password (scram-sha-256), so the password
//! paths of the source are exercised by every test; the tests themselves
//! speak as the superuser over the cluster's Unix socket (trust), with
//! `psql`.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, pid_alive, prerequisite, signal};

/// Debian's PostgreSQL 15 programs.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The password of the role `lrpm`: a text that appears nowhere else, so
/// that a test can look for it in lrpm's log and status.
pub const PASSWORD: &str = "pw-7Hq2-xZ9k";

/// How long the server may take to start or to stop.
const SERVER_WAIT: Duration = Duration::from_secs(60);

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    /// The temp dir (owned by `postgres`): the cluster in `data/`, the
    /// socket in `sock/`, the server's log in `server.log`.
    dir: tempfile::TempDir,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// `runuser … postgres`, while the server runs.
    child: Option<Child>,
    /// The postmaster's pid, while the server runs.
    pid: Option<u32>,
}

/// Whether this machine can run the server (Debian's `postgresql`, root
/// for `runuser`); a test that cannot returns at once (or fails, with
/// `LRPM_TEST_REQUIRE_ALL=1`).
pub fn available() -> bool {
    prerequisite(
        "PostgreSQL 15 (Debian's postgresql package) and root, for runuser -u postgres",
        support::is_root()
            && Path::new(PG_BIN).join("postgres").exists()
            && Path::new("/usr/sbin/runuser").exists()
            && matches!(nix::unistd::User::from_name("postgres"), Ok(Some(_))),
    )
}

impl PgServer {
    /// Creates a cluster and starts its server; `None` when the machine
    /// cannot (see [`available`]).
    pub fn start() -> Option<PgServer> {
        if !available() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("lrpm-pg-")
            .tempdir()
            .expect("a temp dir");
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temp dir");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).expect("create the socket dir");
        std::os::unix::fs::chown(&sock, Some(uid), Some(gid)).expect("chown the socket dir");
        let initdb = as_postgres(&Path::new(PG_BIN).join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-instructions",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut server = PgServer {
            dir,
            port: 0,
            child: None,
            pid: None,
        };
        // Another test may take the free port between the probe and the
        // server's bind: try a few.
        for attempt in 0.. {
            server.port = free_port();
            match server.launch() {
                Ok(()) => break,
                Err(e) if attempt < 5 && e.contains("already in use") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        server.psql_as(
            "postgres",
            &format!("CREATE ROLE lrpm LOGIN PASSWORD '{PASSWORD}'; CREATE DATABASE lrpm;"),
        );
        server.psql("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO lrpm;");
        Some(server)
    }

    /// Starts the server on the cluster and port of this fixture and waits
    /// until it answers.
    fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open server.log");
        let err = log.try_clone().expect("clone the log");
        let child = as_postgres(&Path::new(PG_BIN).join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.socket_dir())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=50",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn the server");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "the server exited with {status}:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ));
            }
            if self.pid.is_none() {
                self.pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
                    .ok()
                    .and_then(|text| text.lines().next()?.trim().parse().ok());
            }
            if self.pid.is_some() && self.try_psql("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if started.elapsed() > SERVER_WAIT {
                self.stop();
                return Err(format!(
                    "the server did not answer within {SERVER_WAIT:?}:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (a fast shutdown: SIGINT to the postmaster, by its
    /// pid), waiting until it is gone; the cluster stays.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal(pid, rustix::process::Signal::INT);
            let deadline = Instant::now() + SERVER_WAIT;
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                signal(pid, rustix::process::Signal::KILL);
            }
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + SERVER_WAIT;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts the stopped server again, on the same port.
    pub fn restart(&mut self) {
        self.launch().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Turns TLS on, with a self-signed certificate made by `openssl`.
    pub fn enable_tls(&self) {
        let data = self.dir.path().join("data");
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        let output = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (uid, gid) = postgres_ids();
        for file in [&cert, &key] {
            std::os::unix::fs::chown(file, Some(uid), Some(gid)).expect("chown");
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        self.psql("ALTER SYSTEM SET ssl = on; SELECT pg_reload_conf();");
        support::wait_until("ssl on", SERVER_WAIT, || self.psql("SHOW ssl") == "on");
    }

    /// The source URI of lrpm's role, with the password in it, and the
    /// `query` (`table=jobs&channel=c`).
    pub fn url(&self, query: &str) -> String {
        format!(
            "postgres://lrpm:{PASSWORD}@127.0.0.1:{}/lrpm?{query}",
            self.port
        )
    }

    /// The same without the password.
    pub fn url_without_password(&self, query: &str) -> String {
        format!("postgres://lrpm@127.0.0.1:{}/lrpm?{query}", self.port)
    }

    /// Runs `sql` in the database `lrpm` as the superuser; returns psql's
    /// output (unaligned, tuples only). Panics when it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_as("lrpm", sql)
    }

    fn psql_as(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql failed on {sql:?}: {e}"))
    }

    fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut command = Command::new(Path::new(PG_BIN).join("psql"));
        command
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| format!("run psql: {e}"))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin
                .write_all(sql.as_bytes())
                .map_err(|e| format!("write to psql: {e}"))?;
        }
        let output = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The directory of the server's Unix socket.
    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `program` run as the `postgres` user.
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("/usr/sbin/runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command.current_dir("/");
    command
}

/// The uid and gid of `postgres`.
fn postgres_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("the postgres user");
    (user.uid.as_raw(), user.gid.as_raw())
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
