//! The cost of worker notifications and health probes at 1,000 jobs: the
//! CPU lrpm uses, at rest otherwise, while every worker sends `WATCHDOG=1`
//! each second to its notification socket, and while it probes every
//! worker over HTTP (or TCP) every 10 s; beside it the same farm with
//! neither, the baseline.
//!
//! Usage: `lrpm-bench-notify [--jobs N] [--seconds S] [--only MODE]…`,
//! after `cargo build --release -p lrpm --bin lrpm && cargo build --release -p lrpm-bench`; it runs
//! `lrpm` from its own directory. It prints a Markdown table.
//!
//! Each mode starts a fresh lrpm on N jobs whose worker is this very
//! binary (`lrpm-bench-notify worker MODE [PORT]`): `idle` sleeps;
//! `watchdog` sends `WATCHDOG=1` to `NOTIFY_SOCKET` every second (the job
//! has `watchdogSeconds = 5`); `http` serves `200 OK` on its own loopback
//! port (the job's `healthCheck` is `{"http": …}` every 10 s); `tcp`
//! accepts on its port (`{"tcp": …}` every 10 s). Once every job runs (and,
//! with probes, is healthy), and after a warm-up, lrpm's `utime + stime`
//! (`/proc/PID/stat`) is read before and after S seconds during which
//! nothing else talks to lrpm; the last status checks that no job was
//! restarted (the watchdog fed, every probe passing).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The modes, in the order they run.
const MODES: [&str; 4] = ["idle", "watchdog", "http", "tcp"];

/// The probes' interval.
const PROBE_INTERVAL: u64 = 10;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut jobs = 1000usize;
    let mut seconds = 30u64;
    let mut only = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "worker" => {
                let mode = args.next().context("worker MODE")?;
                let port = args.next().map(|p| p.parse()).transpose()?;
                return worker(&mode, port);
            }
            "--jobs" => jobs = args.next().context("--jobs N")?.parse()?,
            "--seconds" => seconds = args.next().context("--seconds S")?.parse()?,
            "--only" => only.push(args.next().context("--only MODE")?),
            other => bail!("unknown argument {other:?} (--jobs N, --seconds S, --only MODE)"),
        }
    }
    let modes: Vec<&str> = MODES
        .into_iter()
        .filter(|m| only.is_empty() || only.iter().any(|o| o == m))
        .collect();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("the harness's directory")?
        .to_owned();
    let mut rows = Vec::new();
    for mode in modes {
        let row = run(&bin_dir, mode, jobs, seconds).with_context(|| format!("mode {mode}"))?;
        eprintln!("{mode}: {row:?}");
        rows.push(row);
    }
    let baseline = rows
        .iter()
        .find(|r| r.mode == "idle")
        .map(|r| r.cpu_ms_per_s);
    println!(
        "| workers | lrpm's CPU over {seconds} s | ms of CPU per second | % of one core | \
         events per second | CPU per event, above the baseline | lrpm's RSS | restarts |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let per_event = match (baseline, r.events_per_s) {
            (Some(base), Some(rate)) if r.mode != "idle" => {
                format!("{:.1} µs", (r.cpu_ms_per_s - base).max(0.0) * 1000.0 / rate)
            }
            _ => "—".to_owned(),
        };
        println!(
            "| {} | {:.2} s | {:.2} ms | {:.2} % | {} | {} | {:.1} MiB | {} |",
            describe(r.mode, jobs),
            r.cpu_s,
            r.cpu_ms_per_s,
            r.cpu_ms_per_s / 10.0,
            r.events_per_s.map_or("—".to_owned(), |e| format!("{e:.0}")),
            per_event,
            r.rss_kib as f64 / 1024.0,
            r.restarts,
        );
    }
    Ok(())
}

fn describe(mode: &str, jobs: usize) -> String {
    match mode {
        "idle" => format!("{jobs} idle (the baseline)"),
        "watchdog" => format!("{jobs} sending `WATCHDOG=1` every second"),
        "http" => format!("{jobs} probed over HTTP every {PROBE_INTERVAL} s"),
        "tcp" => format!("{jobs} probed over TCP every {PROBE_INTERVAL} s"),
        other => other.to_owned(),
    }
}

/// One mode's figures.
#[derive(Debug)]
struct Row {
    mode: &'static str,
    /// lrpm's CPU time over the measurement.
    cpu_s: f64,
    cpu_ms_per_s: f64,
    /// Notifications or probes per second.
    events_per_s: Option<f64>,
    rss_kib: u64,
    /// Restarts of all jobs at the end (0: the watchdog was fed, every
    /// probe passed).
    restarts: u64,
}

fn run(bin_dir: &Path, mode: &'static str, jobs: usize, seconds: u64) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let me = std::env::current_exe()?;
    let ports = if matches!(mode, "http" | "tcp") {
        free_ports(jobs)?
    } else {
        Vec::new()
    };
    let mut decl = serde_json::Map::new();
    for id in 0..jobs {
        let mut command = vec![json!(me.to_string_lossy()), json!("worker"), json!(mode)];
        let mut job = json!({"name": format!("job {id}")});
        let port = ports.get(id).copied().unwrap_or_default();
        match mode {
            "watchdog" => job["watchdogSeconds"] = json!(5),
            "http" => {
                command.push(json!(port.to_string()));
                job["healthCheck"] = json!({
                    "http": format!("http://127.0.0.1:{}/", port),
                    "intervalSeconds": PROBE_INTERVAL,
                });
            }
            "tcp" => {
                command.push(json!(port.to_string()));
                job["healthCheck"] = json!({
                    "tcp": format!("127.0.0.1:{}", port),
                    "intervalSeconds": PROBE_INTERVAL,
                });
            }
            _ => {}
        }
        job["command"] = Value::Array(command);
        decl.insert(format!("j{id}"), job);
    }
    let config = dir.path().join("jobs.json");
    std::fs::write(&config, Value::Object(decl).to_string())?;
    let socket = dir.path().join("control.sock");
    let log = std::fs::File::create(dir.path().join("lrpm.log"))?;
    let mut lrpm = Command::new(bin_dir.join("lrpm"))
        .arg("--socket")
        .arg(&socket)
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start lrpm")?;
    let pid = lrpm.id();
    let result = measure(&socket, pid, mode, jobs, seconds);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&lrpm),
        rustix::process::Signal::TERM,
    )?;
    lrpm.wait()?;
    result
}

fn measure(
    socket: &Path,
    pid: u32,
    mode: &'static str,
    jobs: usize,
    seconds: u64,
) -> anyhow::Result<Row> {
    let probed = matches!(mode, "http" | "tcp");
    // Every job running (healthy, with probes: the first probe comes one
    // interval after the start), then a warm-up.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(status) = status(socket) {
            let list = status["jobs"].as_array().map_or(&[][..], Vec::as_slice);
            let ready = list.len() == jobs
                && list
                    .iter()
                    .all(|j| j["state"] == "running" && (!probed || j["health"] == "healthy"));
            if ready {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the farm did not get ready in 180 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let (before, t0) = (cpu_ticks(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (after, wall) = (cpu_ticks(pid)?, t0.elapsed());
    let cpu_s = (after - before) as f64 / ticks;
    let status = status(socket)?;
    let list = status["jobs"].as_array().map_or(&[][..], Vec::as_slice);
    let restarts = list.iter().filter_map(|j| j["restarts"].as_u64()).sum();
    let events_per_s = match mode {
        "watchdog" => Some(jobs as f64),
        "http" | "tcp" => Some(jobs as f64 / PROBE_INTERVAL as f64),
        _ => None,
    };
    Ok(Row {
        mode,
        cpu_s,
        cpu_ms_per_s: cpu_s * 1000.0 / wall.as_secs_f64(),
        events_per_s,
        rss_kib: rss_kib(pid)?,
        restarts,
    })
}

/// lrpm's `utime + stime`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command, which is in parentheses.
    let rest = &stat[stat.rfind(')').context("/proc/PID/stat")? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12
    // after the state (field 3, the first here).
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

fn status(socket: &Path) -> anyhow::Result<Value> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"{\"cmd\":\"status\"}\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

/// `n` loopback ports that are free now, from 20000 up.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::with_capacity(n);
    let mut port = 20000u16;
    while ports.len() < n {
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
        port = port.checked_add(1).context("not enough free ports")?;
    }
    Ok(ports)
}

/// The worker: `idle`, `watchdog`, `http PORT` or `tcp PORT`.
fn worker(mode: &str, port: Option<u16>) -> anyhow::Result<()> {
    match (mode, port) {
        ("idle", _) => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        ("watchdog", _) => {
            let name = std::env::var("NOTIFY_SOCKET").context("NOTIFY_SOCKET")?;
            let addr = match name.strip_prefix('@') {
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
                None => SocketAddr::from_pathname(&name)?,
            };
            let socket = UnixDatagram::unbound()?;
            loop {
                // A send that fails (lrpm's queue full) is tried again the
                // next second, as a real worker's would be: the watchdog
                // allows five seconds.
                if let Err(e) = socket.send_to_addr(b"WATCHDOG=1", &addr) {
                    eprintln!("WATCHDOG=1 not sent: {e}");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        ("http", Some(port)) => {
            let listener = TcpListener::bind(("127.0.0.1", port))?;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = answer(&mut stream);
            }
            Ok(())
        }
        ("tcp", Some(port)) => {
            let listener = TcpListener::bind(("127.0.0.1", port))?;
            for stream in listener.incoming() {
                drop(stream);
            }
            Ok(())
        }
        _ => bail!("worker idle | watchdog | http PORT | tcp PORT"),
    }
}

/// Reads a request's head and answers `200 OK`.
fn answer(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
}
