//! etcd put → the new worker's `main`: how long lrpm's etcd source takes
//! to turn a changed key into a running worker, at 1 and 1,000 jobs, with
//! the floor of the same run beside it (the put's own round trip).
//!
//! Usage: `lrpm-bench-etcd [--samples N] [--jobs 1,1000]`, after
//! `cargo build --release -p lrpm --bin lrpm -p lrpm-bench`; it runs
//! `lrpm` and `lrpm-bench-worker` from its own directory and Debian's
//! `/usr/bin/etcd`, started on free loopback ports in a temp directory and
//! killed by its pid at the end. It prints a Markdown table.
//!
//! Each job runs `lrpm-bench-worker SOCKET ID`, which sends its
//! `CLOCK_MONOTONIC` reading at the start of `main` to the harness. A
//! sample changes one job's key (its `env`) with a put through etcd's JSON
//! gateway (plain HTTP/1.1 on the client port, so the harness needs no
//! gRPC client): the clock starts just before the request is written and
//! stops at the new worker's `main`. In between: etcd commits the put
//! (with its fsync), the watch delivers it, lrpm reparses that one key,
//! stops the old worker (SIGTERM ends it at once), reaps it and spawns the
//! new one. The floor is the put's round trip alone (request written →
//! response read), on a key outside the prefix.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut samples = 100usize;
    let mut sizes = vec![1usize, 1000];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--samples" => samples = args.next().context("--samples N")?.parse()?,
            "--jobs" => {
                sizes = args
                    .next()
                    .context("--jobs N,M")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            other => bail!("unknown argument {other:?} (--samples N, --jobs N,M)"),
        }
    }
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("the harness's directory")?
        .to_owned();
    let dir = tempfile::tempdir()?;
    let mut etcd = Etcd::start(dir.path())?;
    let socket = dir.path().join("hello.sock");
    let collector = UnixDatagram::bind(&socket)?;
    let mut rows = Vec::new();
    for &jobs in &sizes {
        let row = run(
            &bin_dir,
            dir.path(),
            &etcd,
            &collector,
            &socket,
            jobs,
            samples,
        );
        match row {
            Ok(row) => rows.push(row),
            Err(e) => {
                etcd.stop();
                return Err(e.context(format!("{jobs} jobs")));
            }
        }
    }
    etcd.stop();
    println!(
        "| jobs | samples | put → new worker's `main`: p50 | p90 | p99 | max | floor: the put's round trip, p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.jobs,
            r.samples,
            ms(r.latency.p(50)),
            ms(r.latency.p(90)),
            ms(r.latency.p(99)),
            ms(r.latency.p(100)),
            ms(r.floor.p(50)),
            ms(r.floor.p(99)),
        );
    }
    Ok(())
}

/// One size's figures.
struct Row {
    jobs: usize,
    samples: usize,
    latency: Samples,
    floor: Samples,
}

/// Durations in nanoseconds.
struct Samples(Vec<u64>);

impl Samples {
    /// The `q`-th percentile (nearest rank).
    fn p(&self, q: usize) -> u64 {
        let mut v = self.0.clone();
        v.sort_unstable();
        let rank = (q * v.len()).div_ceil(100).max(1);
        v.get(rank - 1).copied().unwrap_or(0)
    }
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The declaration of job `id`, at generation `generation`.
fn declaration(worker: &Path, socket: &Path, id: usize, generation: u64) -> String {
    serde_json::json!({
        "name": format!("job {id}"),
        "command": [worker, socket, id.to_string()],
        "env": {"GENERATION": generation.to_string()},
    })
    .to_string()
}

fn run(
    bin_dir: &Path,
    dir: &Path,
    etcd: &Etcd,
    collector: &UnixDatagram,
    socket: &Path,
    jobs: usize,
    samples: usize,
) -> anyhow::Result<Row> {
    let worker = bin_dir.join("lrpm-bench-worker");
    let prefix = format!("bench{jobs}");
    for id in 0..jobs {
        etcd.put(
            &format!("{prefix}/{id}"),
            &declaration(&worker, socket, id, 0),
        )?;
    }
    let log = std::fs::File::create(dir.join(format!("lrpm-{jobs}.log")))?;
    let mut lrpm = Command::new(bin_dir.join("lrpm"))
        .arg("--socket")
        .arg(dir.join(format!("control-{jobs}.sock")))
        .arg(format!("etcd://{}/{prefix}", etcd.endpoint()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start lrpm")?;
    let result = measure(etcd, collector, socket, &worker, &prefix, jobs, samples);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&lrpm),
        rustix::process::Signal::TERM,
    )?;
    lrpm.wait()?;
    let (latency, floor) = result?;
    Ok(Row {
        jobs,
        samples,
        latency,
        floor,
    })
}

fn measure(
    etcd: &Etcd,
    collector: &UnixDatagram,
    socket: &Path,
    worker: &Path,
    prefix: &str,
    jobs: usize,
    samples: usize,
) -> anyhow::Result<(Samples, Samples)> {
    let mut pids = vec![0u32; jobs];
    let mut started = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while started < jobs {
        let (id, pid, _) = recv(collector, deadline).context("the farm's start")?;
        if pids[id] == 0 {
            started += 1;
        }
        pids[id] = pid;
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut generations = vec![0u64; jobs];
    let mut latency = Vec::with_capacity(samples);
    let mut floor = Vec::with_capacity(samples);
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ jobs as u64;
    for _ in 0..samples {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let id = (seed % jobs as u64) as usize;
        generations[id] += 1;
        let value = declaration(worker, socket, id, generations[id]);
        let t0 = etcd.put(&format!("{prefix}/{id}"), &value)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (got, pid, ns) = recv(collector, deadline)
                .with_context(|| format!("the change of job {id} had no effect"))?;
            if got == id && pid != pids[id] {
                pids[id] = pid;
                latency.push(ns.saturating_sub(t0));
                break;
            }
        }
        // The floor: the same put's round trip, on a key lrpm ignores.
        let t1 = etcd.put("floor/key", &value)?;
        floor.push(monotonic_ns() - t1);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Samples(latency), Samples(floor)))
}

/// The next worker's report: job id, pid, `CLOCK_MONOTONIC` at its `main`.
fn recv(collector: &UnixDatagram, deadline: Instant) -> anyhow::Result<(usize, u32, u64)> {
    let mut buf = [0u8; 128];
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("timed out");
    }
    collector.set_read_timeout(Some(left))?;
    let n = collector.recv(&mut buf).context("timed out")?;
    let text = std::str::from_utf8(&buf[..n])?;
    let mut f = text.split(' ');
    let id = f.next().context("id")?.parse()?;
    let pid = f.next().context("pid")?.parse()?;
    let ns = f.next().context("ns")?.parse()?;
    Ok((id, pid, ns))
}

/// An etcd of the benchmark's own.
struct Etcd {
    child: Option<Child>,
    port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    fn start(dir: &Path) -> anyhow::Result<Etcd> {
        let (port, peer) = (free_port()?, free_port()?);
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let data: PathBuf = dir.join("etcd-data");
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = Command::new("/usr/bin/etcd")
            .arg("--name=bench")
            .arg(format!("--data-dir={}", data.display()))
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
        while etcd.put("ready", "1").is_err() {
            if Instant::now() > deadline {
                etcd.stop();
                bail!("etcd did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(etcd)
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Puts `key` through etcd's JSON gateway; returns `CLOCK_MONOTONIC`
    /// just before the request was written.
    fn put(&self, key: &str, value: &str) -> anyhow::Result<u64> {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            base64(key.as_bytes()),
            base64(value.as_bytes())
        );
        let request = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
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
        if !response.starts_with(b"HTTP/1.1 200") {
            bail!("put {key}: {}", String::from_utf8_lossy(&response));
        }
        Ok(t0)
    }

    fn stop(&mut self) {
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

/// Standard base64, with padding.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
