//! lrpm nodes on etcd (`--cluster etcd://…`): failover time, rebalance on a
//! join, and etcd's load at rest.
//!
//! Usage: `lrpm-bench-cluster [--kills 20] [--ttls 3,10] [--jobs 30]
//! [--big 1000] [--rest 30]`, after
//! `cargo build --release -p lrpm --bin lrpm && cargo build --release -p lrpm-bench`; it runs `lrpm`
//! and `lrpm-bench-worker` from its own directory and Debian's
//! `/usr/bin/etcd`, started on free loopback ports in a temp directory.
//! Every process it starts is killed by its pid at the end. It prints
//! Markdown tables.
//!
//! Every node reads the same job map (a JSON file); each job runs
//! `lrpm-bench-worker SOCKET ID`, which sends its `CLOCK_MONOTONIC` reading
//! at the start of `main` to the harness.
//!
//! - **Failover**, per TTL: three nodes share `--jobs` jobs. A round
//!   SIGKILLs one node (in turn) and measures from just before the kill to
//!   the `main` of the last of its jobs' new workers on the other nodes;
//!   then the node is started again and the farm settles (every node sees
//!   every member, every job runs on exactly one node) before the next
//!   round.
//! - **Rebalance**: `--big` jobs on three nodes (TTL 10 s); a fourth node
//!   starts; the jobs that moved (a new worker) are counted, and the time is
//!   taken from the start of the fourth `lrpm` to the `main` of the last
//!   moved job's new worker, and to the settled farm (every old copy
//!   stopped: each job running on exactly one node, as every node's status
//!   says).
//! - **At rest**: the gRPC messages etcd received from every client in
//!   `--rest` seconds (etcd's own `grpc_server_msg_received_total` on its
//!   `/metrics`, differenced), per method, with 1 to 4 nodes on `--big`
//!   jobs and 3 nodes on `--jobs` jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

#[path = "../etcd_server.rs"]
mod etcd_server;
#[path = "../samples.rs"]
mod samples;

use etcd_server::{Etcd, monotonic_ns};
use samples::Samples;

/// How long a farm may take to settle, or a failover to complete.
const SETTLE: Duration = Duration::from_secs(120);

struct Options {
    kills: usize,
    ttls: Vec<u64>,
    jobs: usize,
    big: usize,
    rest: u64,
}

fn main() -> anyhow::Result<()> {
    let mut o = Options {
        kills: 20,
        ttls: vec![3, 10],
        jobs: 30,
        big: 1000,
        rest: 30,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--kills" => o.kills = value()?.parse()?,
            "--jobs" => o.jobs = value()?.parse()?,
            "--big" => o.big = value()?.parse()?,
            "--rest" => o.rest = value()?.parse()?,
            "--ttls" => {
                o.ttls = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            other => bail!("unknown argument {other:?} (--kills, --ttls, --jobs, --big, --rest)"),
        }
    }
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("the harness's directory")?
        .to_owned();
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start(dir.path())?;
    let socket = dir.path().join("hello.sock");
    let collector = Collector(UnixDatagram::bind(&socket)?);
    let bench = Bench {
        bin_dir,
        dir: dir.path().to_owned(),
        etcd,
        collector,
        socket,
    };
    println!("load average at the start: {}", loadavg());
    let mut rest = Vec::new();
    let mut failovers = Vec::new();
    for &ttl in &o.ttls {
        let (samples, at_rest) = failover(&bench, ttl, o.jobs, o.kills, o.rest)?;
        failovers.push((ttl, samples));
        rest.push(at_rest);
    }
    let (join, big_rest) = rebalance(&bench, o.big, o.rest)?;
    rest.extend(big_rest);
    println!("load average at the end: {}", loadavg());
    println!();
    println!(
        "| lease TTL | nodes | jobs | node kills | failover (kill → last moved job's new `main`): median | p99 | max |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (ttl, samples) in &failovers {
        println!(
            "| {ttl} s | 3 | {} | {} | {} | {} | {} |",
            o.jobs,
            samples.0.len(),
            secs(samples.p(50)),
            secs(samples.p(99)),
            secs(samples.p(100)),
        );
    }
    println!();
    println!(
        "| jobs | nodes before → after | jobs moved | the new node's start → last moved job's new `main` | → settled (every old copy stopped) |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | 3 → 4 | {} ({:.1} %) | {} | {} |",
        o.big,
        join.moved,
        100.0 * join.moved as f64 / o.big as f64,
        secs(join.started),
        secs(join.settled),
    );
    println!();
    println!(
        "| nodes | jobs | lease TTL | etcd gRPC messages received per second, at rest | of which LeaseKeepAlive | others |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &rest {
        let keep_alive = r.per_method.get("LeaseKeepAlive").copied().unwrap_or(0.0);
        let others: Vec<String> = r
            .per_method
            .iter()
            .filter(|(method, rate)| *method != "LeaseKeepAlive" && **rate > 0.0)
            .map(|(method, rate)| format!("{method} {rate:.2}"))
            .collect();
        println!(
            "| {} | {} | {} s | {:.2} | {keep_alive:.2} | {} |",
            r.nodes,
            r.jobs,
            r.ttl,
            r.total,
            if others.is_empty() {
                "none".to_owned()
            } else {
                others.join(", ")
            }
        );
    }
    Ok(())
}

/// What every scenario uses.
struct Bench {
    bin_dir: PathBuf,
    dir: PathBuf,
    etcd: Etcd,
    collector: Collector,
    socket: PathBuf,
}

/// The workers' reports.
struct Collector(UnixDatagram);

impl Collector {
    /// The next report (job index, pid, `CLOCK_MONOTONIC` at its `main`),
    /// or `None` at `deadline`.
    fn recv(&self, deadline: Instant) -> anyhow::Result<Option<(usize, u32, u64)>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        self.0.set_read_timeout(Some(left))?;
        let mut buf = [0u8; 128];
        let n = match self.0.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let text = std::str::from_utf8(&buf[..n])?;
        let mut f = text.split(' ');
        let id = f.next().context("id")?.parse()?;
        let pid = f.next().context("pid")?.parse()?;
        let ns = f.next().context("ns")?.trim().parse()?;
        Ok(Some((id, pid, ns)))
    }

    /// Throws away the reports already there.
    fn drain(&self) -> anyhow::Result<()> {
        while self
            .recv(Instant::now() + Duration::from_millis(1))?
            .is_some()
        {}
        Ok(())
    }
}

fn secs(ns: u64) -> String {
    format!("{:.2} s", ns as f64 / 1e9)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One lrpm node, killed by its pid when dropped (its workers die with it).
struct Node {
    name: String,
    socket: PathBuf,
    child: Child,
}

impl Node {
    fn start(bench: &Bench, farm: &str, name: &str, ttl: u64, jobs: &Path) -> anyhow::Result<Node> {
        let socket = bench.dir.join(format!("{farm}-{name}.sock"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(bench.dir.join(format!("{farm}-{name}.log")))?;
        let child = Command::new(bench.bin_dir.join("lrpm"))
            .arg("--socket")
            .arg(&socket)
            .arg("--cluster")
            .arg(format!("etcd://{}/{farm}", bench.etcd.endpoint()))
            .args(["--node-id", name, "--lease-ttl", &ttl.to_string()])
            .arg(jobs)
            .env_remove("LRPM_NODE_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start lrpm")?;
        Ok(Node {
            name: name.to_owned(),
            socket,
            child,
        })
    }

    /// The status document; an error while lrpm does not answer yet.
    fn status(&self) -> anyhow::Result<Value> {
        let stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        (&stream).write_all(b"{\"cmd\":\"status\"}\n")?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// SIGKILL, and the wait.
    fn kill(&mut self) -> anyhow::Result<()> {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::KILL,
        )?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.kill();
        }
    }
}

/// Writes a map of `n` jobs for `farm`; returns its path.
fn job_map(bench: &Bench, farm: &str, n: usize) -> anyhow::Result<PathBuf> {
    let worker = bench.bin_dir.join("lrpm-bench-worker");
    let map: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let job = serde_json::json!({
                "name": format!("job {i}"),
                "command": [&worker, &bench.socket, i.to_string()],
            });
            (format!("j{i}"), job)
        })
        .collect();
    let path = bench.dir.join(format!("{farm}.json"));
    std::fs::write(&path, Value::Object(map).to_string())?;
    Ok(path)
}

/// Job index → (node, pid), once every node sees every node as a member
/// and every one of the `n` jobs runs on exactly one node.
fn settled(nodes: &[Node], n: usize) -> anyhow::Result<Option<BTreeMap<usize, (usize, u32)>>> {
    let mut placed = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let Ok(status) = node.status() else {
            return Ok(None);
        };
        let members = status["supervisor"]["cluster"]["members"]
            .as_array()
            .map_or(0, Vec::len);
        if members != nodes.len() {
            return Ok(None);
        }
        for job in status["jobs"].as_array().context("status without jobs")? {
            if job["state"] != "running" {
                return Ok(None);
            }
            let id = job["id"].as_str().context("a job id")?;
            let index = id.trim_start_matches('j').parse()?;
            // A worker between its spawn and its pid's report.
            let Some(pid) = job["pid"].as_u64() else {
                return Ok(None);
            };
            let pid = u32::try_from(pid)?;
            if placed.insert(index, (i, pid)).is_some() {
                return Ok(None);
            }
        }
    }
    Ok((placed.len() == n).then_some(placed))
}

/// Waits for [`settled`].
fn wait_settled(nodes: &[Node], n: usize) -> anyhow::Result<BTreeMap<usize, (usize, u32)>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(placed) = settled(nodes, n)? {
            return Ok(placed);
        }
        ensure!(
            Instant::now() < deadline,
            "{n} jobs on {} nodes did not settle within {SETTLE:?}",
            nodes.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// etcd's load at rest on one farm.
struct Rest {
    nodes: usize,
    jobs: usize,
    ttl: u64,
    total: f64,
    per_method: BTreeMap<String, f64>,
}

/// `grpc_server_msg_received_total` per method, from etcd's `/metrics`.
fn received(etcd: &Etcd) -> anyhow::Result<BTreeMap<String, f64>> {
    let (_, metrics) = etcd.request("GET", "/metrics", "")?;
    let mut counts = BTreeMap::new();
    for line in metrics.lines() {
        let Some(labels) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let (labels, value) = labels.rsplit_once("} ").context("a metric's value")?;
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_method=\""))
            .context("grpc_method")?
            .trim_end_matches('"');
        *counts.entry(method.to_owned()).or_insert(0.0) += value.trim().parse::<f64>()?;
    }
    Ok(counts)
}

/// The messages per second etcd receives over `seconds`, with nothing
/// happening but the farm's own upkeep.
fn at_rest(
    bench: &Bench,
    nodes: usize,
    jobs: usize,
    ttl: u64,
    seconds: u64,
) -> anyhow::Result<Rest> {
    let before = received(&bench.etcd)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let after = received(&bench.etcd)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let per_method: BTreeMap<String, f64> = after
        .iter()
        .map(|(method, n)| {
            let rate = (n - before.get(method).copied().unwrap_or(0.0)) / elapsed;
            (method.clone(), rate)
        })
        .collect();
    let total = per_method.values().sum();
    eprintln!("at rest, {nodes} nodes, {jobs} jobs, TTL {ttl} s: {total:.2} messages/s");
    Ok(Rest {
        nodes,
        jobs,
        ttl,
        total,
        per_method,
    })
}

/// `kills` failovers at `ttl` on three nodes and `jobs` jobs; also etcd's
/// load at rest on that farm.
fn failover(
    bench: &Bench,
    ttl: u64,
    jobs: usize,
    kills: usize,
    rest: u64,
) -> anyhow::Result<(Samples, Rest)> {
    let farm = format!("failover-ttl{ttl}");
    let map = job_map(bench, &farm, jobs)?;
    let names = ["a", "b", "c"];
    let mut nodes = names
        .iter()
        .map(|name| Node::start(bench, &farm, name, ttl, &map))
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_settled(&nodes, jobs)?;
    let at_rest = at_rest(bench, nodes.len(), jobs, ttl, rest)?;
    let mut samples = Vec::new();
    for round in 0..kills {
        let placed = wait_settled(&nodes, jobs)?;
        // The nodes in turn, passing over one that runs nothing.
        let victim = (0..nodes.len())
            .map(|i| (round + i) % nodes.len())
            .find(|n| placed.values().any(|(node, _)| node == n))
            .context("no node runs a job")?;
        let moving: BTreeMap<usize, u32> = placed
            .iter()
            .filter(|(_, (node, _))| *node == victim)
            .map(|(id, (_, pid))| (*id, *pid))
            .collect();
        bench.collector.drain()?;
        let t0 = monotonic_ns();
        nodes[victim].kill()?;
        let mut waiting: BTreeSet<usize> = moving.keys().copied().collect();
        let mut last = t0;
        let deadline = Instant::now() + SETTLE;
        while !waiting.is_empty() {
            let (id, pid, ns) = bench
                .collector
                .recv(deadline)?
                .with_context(|| format!("round {round}: {waiting:?} did not move"))?;
            if moving.get(&id).is_some_and(|old| *old != pid) && waiting.remove(&id) {
                last = last.max(ns);
            }
        }
        let took = last - t0;
        eprintln!(
            "TTL {ttl} s, round {round}: node {} killed, its {} jobs ran elsewhere {} later",
            nodes[victim].name,
            moving.len(),
            secs(took)
        );
        samples.push(took);
        nodes[victim] = Node::start(bench, &farm, names[victim], ttl, &map)?;
    }
    drop(nodes);
    Ok((Samples(samples), at_rest))
}

/// The join's figures.
struct Join {
    moved: usize,
    started: u64,
    settled: u64,
}

/// `big` jobs on 1, 2, then 3 nodes (the load at rest of each), then a
/// fourth node joins (the rebalance, then the load at rest of 4).
fn rebalance(bench: &Bench, big: usize, rest: u64) -> anyhow::Result<(Join, Vec<Rest>)> {
    const TTL: u64 = 10;
    let farm = "rebalance";
    let map = job_map(bench, farm, big)?;
    let mut nodes = Vec::new();
    let mut rests = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(Node::start(bench, farm, name, TTL, &map)?);
        wait_settled(&nodes, big)?;
        rests.push(at_rest(bench, nodes.len(), big, TTL, rest)?);
    }
    let before = wait_settled(&nodes, big)?;
    bench.collector.drain()?;
    let t0 = monotonic_ns();
    nodes.push(Node::start(bench, farm, "d", TTL, &map)?);
    let after = wait_settled(&nodes, big)?;
    let settled_at = monotonic_ns();
    let moved: BTreeMap<usize, u32> = after
        .iter()
        .filter(|(id, (_, pid))| before[*id].1 != *pid)
        .map(|(id, (_, pid))| (*id, *pid))
        .collect();
    let mut last = t0;
    let mut seen = BTreeSet::new();
    while seen.len() < moved.len() {
        let (id, pid, ns) = bench
            .collector
            .recv(Instant::now() + Duration::from_secs(10))?
            .context("a moved job's report")?;
        if moved.get(&id) == Some(&pid) && seen.insert(id) {
            last = last.max(ns);
        }
    }
    let on_new = after.values().filter(|(node, _)| *node == 3).count();
    ensure!(
        on_new == moved.len(),
        "{} jobs restarted but the new node runs {on_new}",
        moved.len()
    );
    let join = Join {
        moved: moved.len(),
        started: last - t0,
        settled: settled_at - t0,
    };
    eprintln!(
        "a fourth node took {} of {big} jobs: last started {}, settled {}",
        join.moved,
        secs(join.started),
        secs(join.settled)
    );
    rests.push(at_rest(bench, nodes.len(), big, TTL, rest)?);
    drop(nodes);
    Ok((join, rests))
}
