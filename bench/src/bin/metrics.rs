//! A scrape of `/metrics` at 10,000 jobs: how long `GET /metrics` takes,
//! from the request written to the last byte of the answer, against an
//! lrpm that supervises that many running workers.
//!
//! Usage: `lrpm-bench-metrics [--jobs N] [--samples N] [--lrpm PATH]`,
//! after `cargo build --release -p lrpm --bin lrpm && cargo build --release -p lrpm-bench`; it runs
//! the `lrpm` beside it unless `--lrpm` names another (the `dist` build).
//! Every job runs `sleep 3600`. lrpm serves `--metrics 127.0.0.1:0`; the
//! harness reads the port from lrpm's log, waits until a scrape reports
//! every job running, lets the farm settle for [`SETTLE`] (lrpm trims its
//! memory a few seconds after a mass start), scrapes `2 + jobs / 1,000`
//! times to warm up (a scrape reads the workers' `/proc` for 20 ms at
//! most, about 2,000 of them, and keeps the figures: these fill lrpm's
//! cache, as a scraper's first scrapes do), then times `--samples` scrapes
//! in each format, one after the other, on fresh connections.
//! lrpm is stopped with SIGTERM (SIGKILL after two minutes) by its pid. It
//! prints a Markdown table.
//!
//! A scrape's cost is the event loop's copy of the status, the workers'
//! `/proc/PID/stat` (one read each), and the encoding, which run on a
//! blocking thread; the harness's own HTTP client is a plain socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long the farm rests between its mass start and the first scrape.
const SETTLE: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let mut jobs = 10_000usize;
    let mut samples = 20usize;
    let mut lrpm: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--jobs" => jobs = args.next().context("--jobs N")?.parse()?,
            "--samples" => samples = args.next().context("--samples N")?.parse()?,
            "--lrpm" => lrpm = Some(args.next().context("--lrpm PATH")?.into()),
            other => bail!("unknown argument {other:?} (--jobs N, --samples N, --lrpm PATH)"),
        }
    }
    let lrpm = match lrpm {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("the harness's directory")?
            .join("lrpm"),
    };
    // Three descriptors a worker in lrpm, and some: as root, raise the
    // limit lrpm inherits.
    let want = (jobs as u64) * 4 + 1024;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.maximum.is_some_and(|max| max < want) {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(want),
                maximum: Some(want),
            },
        );
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("jobs.json");
    let map: serde_json::Map<String, serde_json::Value> = (0..jobs)
        .map(|i| {
            let id = format!("job-{i:05}");
            let job = serde_json::json!({"name": id, "command": ["sleep", "3600"]});
            (id, job)
        })
        .collect();
    std::fs::write(&config, serde_json::Value::Object(map).to_string())?;
    let log = dir.path().join("lrpm.log");
    let mut child = Command::new(&lrpm)
        .arg("--socket")
        .arg(dir.path().join("control.sock"))
        .args(["--metrics", "127.0.0.1:0"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("run {}", lrpm.display()))?;
    let pid = rustix::process::Pid::from_child(&child);
    let result = measure(&log, child.id(), jobs, samples);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            child.wait()?;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rows = result?;
    println!(
        "| jobs | format | samples | scrape, wall: p50 | p90 | max | lrpm's CPU time per scrape | body |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// Waits for the farm, then times the scrapes: one table row per format.
fn measure(
    log: &std::path::Path,
    lrpm: u32,
    jobs: usize,
    samples: usize,
) -> anyhow::Result<Vec<String>> {
    let addr = wait(
        Duration::from_secs(60),
        "the metrics address in lrpm's log",
        || {
            let text = std::fs::read_to_string(log).ok()?;
            let at = text.find("metrics on http://")? + "metrics on http://".len();
            let end = at + text[at..].find('/')?;
            Some(text[at..end].to_owned())
        },
    )?;
    let running = format!("lrpm_jobs{{state=\"running\"}} {jobs}\n");
    wait(Duration::from_secs(600), "every job running", || {
        std::thread::sleep(Duration::from_millis(500));
        let body = get(&addr, "*/*").ok()?;
        body.contains(&running).then_some(())
    })?;
    std::thread::sleep(SETTLE);
    for _ in 0..2 + jobs / 1000 {
        get(&addr, "*/*")?;
    }
    let mut rows = Vec::new();
    for (format, accept) in [
        ("Prometheus text", "*/*"),
        ("OpenMetrics", "application/openmetrics-text; version=1.0.0"),
    ] {
        for _ in 0..2 {
            get(&addr, accept)?;
        }
        let mut times = Vec::with_capacity(samples);
        let mut size = 0;
        let cpu_before = cpu_seconds(lrpm)?;
        for _ in 0..samples {
            let started = Instant::now();
            let body = get(&addr, accept)?;
            times.push(started.elapsed());
            size = body.len();
            if !body.contains(&running) {
                bail!("a scrape no longer reports every job running");
            }
        }
        let cpu = (cpu_seconds(lrpm)? - cpu_before) / samples as f64;
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        rows.push(format!(
            "| {jobs} | {format} | {samples} | {} | {} | {} | {:.1} ms | {:.1} MB |",
            ms(at(0.5)),
            ms(at(0.9)),
            ms(times[times.len() - 1]),
            cpu * 1e3,
            size as f64 / 1e6
        ));
    }
    Ok(rows)
}

/// The CPU time (user and system, every thread) process `pid` has used,
/// in seconds: what a scrape costs lrpm whatever the machine's load, which
/// only stretches the wall time.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = &stat[stat.rfind(')').context("a stat line")? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 of proc(5); utime and stime are 14 and 15.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Polls `look` until it finds something, for at most `timeout`.
fn wait<T>(
    timeout: Duration,
    what: &str,
    mut look: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = look() {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("no {what} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` on a fresh connection: the body of a 200.
fn get(addr: &str, accept: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8(response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics: {head}");
    }
    Ok(body.to_owned())
}
