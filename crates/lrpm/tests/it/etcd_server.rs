//! A real etcd for a test: started on 127.0.0.1 with free ports and a
//! temp data directory, stopped by its pid (SIGKILL) and removed when the
//! fixture drops. The test talks to it through the etcd-client crate (as
//! an operator's tool would), on a runtime of its own.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::support::prerequisite;

/// The etcd server binary (Debian's `etcd-server`).
const ETCD: &str = "/usr/bin/etcd";
/// How long etcd may take to answer after it was started.
const READY: Duration = Duration::from_secs(30);

/// Whether etcd can be run here; if not, the test skips itself (or fails
/// under `LRPM_TEST_REQUIRE_ALL=1`).
pub fn available() -> bool {
    prerequisite("etcd (Debian etcd-server)", Path::new(ETCD).exists())
}

/// A running etcd of the test's own.
#[derive(Debug)]
pub struct EtcdServer {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    runtime: tokio::runtime::Runtime,
    /// The credentials the fixture's own requests use, once auth is on.
    user: Option<(String, String)>,
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl EtcdServer {
    /// Starts an etcd and waits until it answers.
    pub fn start() -> EtcdServer {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut server = EtcdServer {
            dir: tempfile::tempdir().expect("a temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            runtime,
            user: None,
        };
        server.resume();
        server
    }

    /// The client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Starts etcd (again) on the same ports and data, and waits until it
    /// answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is running already");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd.log");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(ETCD)
            .arg("--name=lrpm-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=lrpm-test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd.log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if self.try_revision().is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited with {status}\n{}", self.log());
            }
            assert!(
                started.elapsed() < READY,
                "etcd did not answer within {READY:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills etcd (SIGKILL, by its pid) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn client(&self) -> Result<Client, etcd_client::Error> {
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(10));
        if let Some((user, password)) = &self.user {
            options = options.with_user(user, password);
        }
        let endpoint = format!("http://{}", self.endpoint());
        self.runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                Client::connect([endpoint], Some(options)),
            )
            .await
            .unwrap_or_else(|_| Err(etcd_client::Error::InvalidArgs("connect timed out".into())))
        })
    }

    /// Runs `f` with a client, and panics with etcd's log on an error.
    fn with<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, etcd_client::Error>,
    ) -> T {
        let result = self.client().and_then(|mut client| {
            self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), f(&mut client))
                    .await
                    .unwrap_or_else(|_| Err(etcd_client::Error::InvalidArgs("timed out".into())))
            })
        });
        result.unwrap_or_else(|e| panic!("etcd {what}: {e}\n{}", self.log()))
    }

    /// Sets `key` to `value`; returns the revision of the put.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        self.with("put", async |c| {
            let r = c.put(key, value, None).await?;
            Ok(r.header().map_or(0, |h| h.revision()))
        })
    }

    /// Sets every `(key, value)`, one put each.
    pub fn put_many(&self, pairs: &[(String, String)]) {
        self.with("put", async |c| {
            for (key, value) in pairs {
                c.put(key.as_str(), value.as_str(), None).await?;
            }
            Ok(())
        });
    }

    /// Deletes `key`; returns the revision of the delete.
    pub fn delete(&self, key: &str) -> i64 {
        self.with("delete", async |c| {
            let r = c.delete(key, None).await?;
            Ok(r.header().map_or(0, |h| h.revision()))
        })
    }

    fn try_revision(&self) -> Result<i64, etcd_client::Error> {
        let mut client = self.client()?;
        self.runtime.block_on(async {
            let get = client.get("\0", Some(GetOptions::new().with_count_only()));
            match tokio::time::timeout(Duration::from_secs(5), get).await {
                Ok(r) => Ok(r?.header().map_or(0, |h| h.revision())),
                Err(_) => Err(etcd_client::Error::InvalidArgs("timed out".into())),
            }
        })
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.try_revision()
            .unwrap_or_else(|e| panic!("etcd revision: {e}\n{}", self.log()))
    }

    /// Compacts the history up to `revision` (physically: waits for it).
    pub fn compact(&self, revision: i64) {
        self.with("compact", async |c| {
            let options = etcd_client::CompactionOptions::new().with_physical();
            c.compact(revision, Some(options)).await?;
            Ok(())
        });
    }

    /// Turns authentication on, with user `root` and `password`; the
    /// fixture's own requests use them from then on.
    pub fn enable_auth(&mut self, password: &str) {
        self.with("auth", async |c| {
            c.user_add("root", password, None).await?;
            // The root role exists only once granted or added, by version.
            let _ = c.role_add("root").await;
            c.user_grant_role("root", "root").await?;
            c.auth_enable().await?;
            Ok(())
        });
        self.user = Some(("root".to_owned(), password.to_owned()));
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
