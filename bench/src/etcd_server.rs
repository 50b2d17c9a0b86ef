//! An etcd of a benchmark's own, shared by the harnesses that need one
//! (`lrpm-bench-etcd`, `lrpm-bench-cluster`): Debian's `/usr/bin/etcd`,
//! started on free loopback ports with its data in the run's directory and
//! killed by its pid when dropped. The harness speaks plain HTTP/1.0 to its
//! client port (the JSON gateway, `/health`, `/metrics`), so it needs no
//! gRPC client.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running etcd.
pub struct Etcd {
    child: Option<Child>,
    port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock the bench worker
/// stamps at its `main`.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl Etcd {
    /// Starts etcd with its data and log (`etcd.log`) in `dir`, and waits
    /// until `/health` answers (30 s at most).
    pub fn start(dir: &Path) -> anyhow::Result<Etcd> {
        let (port, peer) = (free_port()?, free_port()?);
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = Command::new("/usr/bin/etcd")
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.join("etcd-data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=bench={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start /usr/bin/etcd (Debian etcd-server)")?;
        let mut etcd = Etcd {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while etcd.request("GET", "/health", "").is_err() {
            if Instant::now() > deadline {
                etcd.stop();
                bail!("etcd did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(etcd)
    }

    /// Its client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// One HTTP/1.0 request on a new connection (so that the answer is
    /// not chunked); returns `CLOCK_MONOTONIC` just before the request was
    /// written, and the response's body. A status other than 200 is an
    /// error.
    pub fn request(&self, method: &str, path: &str, body: &str) -> anyhow::Result<(u64, String)> {
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.endpoint(),
            body.len()
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_nodelay(true)?;
        let t0 = monotonic_ns();
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response).into_owned();
        if response.split(' ').nth(1) != Some("200") {
            bail!("{method} {path}: {response}");
        }
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_owned();
        Ok((t0, body))
    }

    /// Kills etcd (SIGKILL, by its pid) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
