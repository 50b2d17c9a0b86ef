//! etcd put → the new worker's `main`: how long lrpm's etcd source takes
//! to turn a changed key into a running worker, at 1 and 1,000 jobs, with
//! the floor of the same run beside it (the put's own round trip).
//!
//! Usage: `lrpm-bench-etcd [--samples N] [--jobs 1,1000]`, after
//! `cargo build --release -p lrpm --bin lrpm && cargo build --release -p lrpm-bench`; it runs
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

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[path = "../etcd_server.rs"]
mod etcd_server;
#[path = "../samples.rs"]
mod samples;

use etcd_server::{Etcd, monotonic_ns};
use samples::Samples;

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

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
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
        put(
            etcd,
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
        let t0 = put(etcd, &format!("{prefix}/{id}"), &value)?;
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
        let t1 = put(etcd, "floor/key", &value)?;
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

/// Puts `key` through etcd's JSON gateway; returns `CLOCK_MONOTONIC` just
/// before the request was written.
fn put(etcd: &Etcd, key: &str, value: &str) -> anyhow::Result<u64> {
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        base64(key.as_bytes()),
        base64(value.as_bytes())
    );
    Ok(etcd.request("POST", "/v3/kv/put", &body)?.0)
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
