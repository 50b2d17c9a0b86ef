//! The control plane under abuse: floods of connections, requests that try
//! to smuggle a second command, text that tries to reach a terminal raw,
//! and a second lrpm after the first one's lock directory was removed.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{
    Lrpm, all_running, lrpm_command, pid_alive, raw_request, rss_kib, run_bounded, running,
    wait_until,
};

/// How long a state change may take to show.
const SETTLE: Duration = Duration::from_secs(30);

/// One long-running job.
const ONE_JOB: &str = r#"
[a]
name = "A"
command = ["sleep", "1000"]
"#;

fn one_job() -> Lrpm {
    let lrpm = Lrpm::start("jobs.toml", ONE_JOB, &[]);
    lrpm.wait_for("a running", SETTLE, |s| running(s, "a"));
    lrpm
}

/// `lrpmctl status` succeeds within 5 s.
fn lrpmctl_status_answers(lrpm: &Lrpm) {
    let asked = Instant::now();
    let output = lrpm.ctl(&["status"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(asked.elapsed() < Duration::from_secs(5));
}

/// Raises this process's descriptor limit to at least `n`, as far as its
/// hard limit allows.
fn raise_nofile(n: u64) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current.is_some_and(|c| c < n) {
        let raised = rustix::process::Rlimit {
            current: limit.maximum.map(|m| m.min(n)).or(Some(n)),
            maximum: limit.maximum,
        };
        let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised);
    }
}

/// lrpm's CPU time so far, user and system, in seconds (the kernel's clock
/// ticks are USER_HZ, 100 a second, in `/proc/PID/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = lrpm_process::procfs::read_stat(pid).expect("lrpm's stat");
    (stat.utime + stat.stime) as f64 / 100.0
}

/// Holds `n` connections to `socket` that never send a byte, and opens a
/// new one for each the server closes, until `stop`; counts reconnections.
fn idle_pool(socket: PathBuf, n: usize, stop: Arc<AtomicBool>, reconnects: Arc<AtomicU64>) {
    let connect = || {
        let stream = UnixStream::connect(&socket)
            .map_err(|e| eprintln!("DEBUG {e}"))
            .ok()?;
        stream.set_nonblocking(true).ok()?;
        Some(stream)
    };
    let mut pool: Vec<Option<UnixStream>> = (0..n).map(|_| connect()).collect();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        for conn in &mut pool {
            let closed = match conn {
                None => true,
                Some(stream) => match stream.read(&mut buf) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                    // An answer (why it is closed) or the end: either way
                    // the server let go of it.
                    _ => true,
                },
            };
            if closed {
                *conn = connect();
                reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Connects and hangs up as fast as it can, until `stop`; counts
/// connections.
fn reconnect_storm(socket: PathBuf, stop: Arc<AtomicBool>, connects: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        if UnixStream::connect(&socket).is_ok() {
            connects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn lrpmctl_status_gets_through_a_storm_of_connections() {
    const TRIES: usize = 20;
    raise_nofile(8192);
    let lrpm = one_job();
    let stop = Arc::new(AtomicBool::new(false));
    let reconnects = Arc::new(AtomicU64::new(0));
    let connects = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(lrpm.pid());
    let storm_started = Instant::now();
    let pool = {
        let (socket, stop, reconnects) = (lrpm.socket.clone(), stop.clone(), reconnects.clone());
        std::thread::spawn(move || idle_pool(socket, 1000, stop, reconnects))
    };
    let storm = {
        let (socket, stop, connects) = (lrpm.socket.clone(), stop.clone(), connects.clone());
        std::thread::spawn(move || reconnect_storm(socket, stop, connects))
    };
    // Let the storm fill every slot before asking.
    wait_until("the pool is being churned", SETTLE, || {
        reconnects.load(Ordering::Relaxed) > 1000
    });

    let mut times = Vec::new();
    for _ in 0..TRIES {
        let asked = Instant::now();
        let output = lrpm.ctl(&["status"]);
        let took = asked.elapsed();
        assert!(
            output.status.success(),
            "lrpmctl status failed after {took:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("running"),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        times.push(took);
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = storm_started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(lrpm.pid()) - cpu_before;
    stop.store(true, Ordering::Relaxed);
    pool.join().expect("the idle pool");
    storm.join().expect("the storm");
    times.sort();
    eprintln!(
        "storm of {wall:.1} s: {} connect-and-close, {} idle reconnections; \
         lrpmctl status: median {:?}, slowest {:?}; lrpm CPU {cpu:.2} s ({:.0} % of one core)",
        connects.load(Ordering::Relaxed),
        reconnects.load(Ordering::Relaxed),
        times[TRIES / 2],
        times[TRIES - 1],
        100.0 * cpu / wall
    );
    // Got through: before the listen queue and the per-uid share, none
    // did. The slowest was 77–475 ms at load 18–36; 5 s proves the
    // property with room for a loaded machine, not a speed.
    assert!(
        times[TRIES - 1] < Duration::from_secs(5),
        "a status took {:?}: {times:?}",
        times[TRIES - 1]
    );
    // lrpm's control plane is one thread: a storm cannot make it take more
    // than about one core (the bound is loose, the figure is reported).
    assert!(
        cpu < 1.2 * wall,
        "lrpm used {cpu:.2} s of CPU in {wall:.1} s"
    );
    // And the farm is untouched.
    assert!(running(&lrpm.status(), "a"));
}

#[test]
fn a_slow_client_whose_bytes_keep_coming_is_served() {
    use std::io::{BufRead, BufReader, Write};
    let lrpm = one_job();
    let mut stream = UnixStream::connect(&lrpm.socket).expect("connect");
    stream.set_read_timeout(Some(SETTLE)).expect("timeout");
    // A byte every 0.5 s: 16 bytes take 8 s, four times the idle timeout.
    let request = b"{\"cmd\":\"status\"}\n";
    let started = Instant::now();
    for byte in request {
        stream.write_all(&[*byte]).expect("send a byte");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .expect("an answer");
    assert!(answer.contains("\"jobs\""), "{answer}");
    assert!(started.elapsed() > Duration::from_secs(4));
}

#[test]
fn a_duplicate_key_is_an_error_and_lrpm_runs_on() {
    let lrpm = one_job();
    let answer = raw_request(&lrpm.socket, r#"{"cmd":"status","cmd":"stop"}"#).expect("an answer");
    assert_eq!(answer["ok"], false, "{answer}");
    let error = answer["error"].as_str().expect("an error");
    assert!(error.contains(r#"duplicate key "cmd""#), "{error}");
    let status = lrpm.status();
    assert_eq!(status["supervisor"]["shutting_down"], false);
    assert!(running(&status, "a"));
    assert!(pid_alive(lrpm.pid()));
}

#[test]
fn removing_the_socket_directory_does_not_let_a_second_lrpm_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let socket = run.join("control.sock");
    let starts = dir.path().join("starts");
    let config = dir.path().join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            "[a]\nname = \"A\"\ncommand = [\"sh\", \"-c\", \"echo $$ >> {}; exec sleep 1000\"]\n",
            starts.display()
        ),
    )
    .expect("write config");
    let mut command = lrpm_command();
    command.arg("--socket").arg(&socket).arg(&config);
    let lrpm = Lrpm::spawn_in(dir, socket.clone(), config.clone(), command).expect("lrpm starts");
    lrpm.wait_for("a running", SETTLE, |s| running(s, "a"));
    let started_once = || {
        std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    };
    wait_until("a started once", SETTLE, started_once);

    std::fs::remove_dir_all(&run).expect("rm -rf the socket's directory");
    let mut second = lrpm_command();
    second.arg("--socket").arg(&socket).arg(&config);
    let output = run_bounded(second, SETTLE);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the second lrpm ran: {err}");
    assert!(err.contains("already running"), "{err}");
    // The first one runs on, and the job was started by it alone.
    assert!(pid_alive(lrpm.pid()));
    assert_ne!(
        lrpm_process::procfs::read_stat(lrpm.pid()).map(|s| s.state),
        Some(b'Z')
    );
    assert!(started_once());
    // Once the first is gone, the path is free again.
    let mut lrpm = lrpm;
    lrpm.terminate();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut third = lrpm_command();
    third.arg("--socket").arg(&socket).arg(&config);
    let third = Lrpm::spawn_in(dir, socket, config, third).expect("a new lrpm starts");
    assert_eq!(third.status()["supervisor"]["pid"], third.pid());
}

#[test]
fn control_characters_of_a_job_id_are_escaped_in_the_table_and_the_log() {
    // A TOML key with ESC[2J (clear the screen) and a newline (a forged
    // line): an invalid id, which the status and the log still show; and a
    // valid job whose name holds them and a C1 CSI, a row of the table.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobs.toml");
    std::fs::write(
        &config,
        "[\"evil\\u001b[2J\\nid\"]\nname = \"E\"\ncommand = [\"true\"]\n\
             [n]\nname = \"N\\u001b[2J\\nx\\u009b31m\"\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n",
    )
    .expect("write config");
    // lrpm's own styling off, so that any escape byte in the log is one
    // that leaked.
    let lrpm = Lrpm::start_in(dir, config.clone(), |command| {
        command.env("NO_COLOR", "1").arg(&config);
    });
    lrpm.wait_for("n exited once and the bad id is listed", SETTLE, |s| {
        crate::support::job_in(s, "n").is_some_and(|j| !j["last_exit"].is_null())
            && !s["supervisor"]["source"]["invalid_jobs"]["evil\u{1b}[2J\nid"].is_null()
    });
    let output = lrpm.ctl(&["status"]);
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains(r"evil\x1b[2J\nid: job id"), "{table}");
    assert!(table.contains(r"N\x1b[2J\nx\u{9b}31m"), "{table}");
    assert!(
        !table.chars().any(|c| c != '\n' && c.is_control()),
        "{table:?}"
    );
    wait_until("the log names the bad id", SETTLE, || {
        lrpm.stderr().contains(r"job=evil\x1b[2J\nid")
    });
    let log = lrpm.stderr();
    assert!(!log.chars().any(|c| c != '\n' && c.is_control()), "{log:?}");
}

#[test]
fn out_of_descriptors_the_accept_loop_waits_instead_of_spinning() {
    let lrpm = one_job();
    let pid =
        rustix::process::Pid::from_raw(i32::try_from(lrpm.pid()).expect("a pid")).expect("a pid");
    let nofile = rustix::process::Resource::Nofile;
    // prlimit always sets: read lrpm's limit by setting one and putting
    // the old one back at once.
    let old = rustix::process::prlimit(Some(pid), nofile, rustix::process::getrlimit(nofile))
        .expect("read lrpm's limit");
    rustix::process::prlimit(Some(pid), nofile, old).expect("restore it");
    // Room for what lrpm holds and two connections more.
    let tight = rustix::process::Rlimit {
        current: Some(crate::support::fd_count(lrpm.pid()) as u64 + 2),
        maximum: old.maximum,
    };
    rustix::process::prlimit(Some(pid), nofile, tight).expect("lower lrpm's limit");
    // Connections that wait in the listen queue: accepting them fails.
    let waiting: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&lrpm.socket).expect("connect"))
        .collect();
    wait_until("accepting fails", SETTLE, || {
        lrpm.stderr().contains("cannot accept a connection")
    });
    let before = cpu_seconds(lrpm.pid());
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let cpu = cpu_seconds(lrpm.pid()) - before;
    let wall = started.elapsed().as_secs_f64();
    eprintln!("out of descriptors: lrpm used {cpu:.2} s of CPU in {wall:.1} s");
    assert!(cpu < 0.5, "lrpm spun: {cpu:.2} s of CPU in {wall:.1} s");
    // The failure is said at most once a second.
    let said = lrpm.stderr().matches("cannot accept a connection").count();
    assert!(said <= 6, "said {said} times");
    // With descriptors back, every waiting connection is served or closed
    // and status answers.
    rustix::process::prlimit(Some(pid), nofile, old).expect("restore lrpm's limit");
    drop(waiting);
    lrpm.wait_for("status answers", SETTLE, |s| running(s, "a"));
}

#[test]
fn clients_that_never_read_their_answers_do_not_lock_out_lrpmctl() {
    use std::io::Write;
    raise_nofile(4096);
    let lrpm = one_job();
    // A whole share of connections, each pipelining `help` requests without
    // ever reading an answer, until lrpm stops reading them: then each one's
    // task is blocked writing an answer nobody reads.
    let burst = b"{\"cmd\":\"help\"}\n".repeat(4096);
    let stuck: Vec<UnixStream> = (0..256)
        .map(|_| {
            let mut stream = UnixStream::connect(&lrpm.socket).expect("connect");
            stream.set_nonblocking(true).expect("non-blocking");
            let started = Instant::now();
            loop {
                match stream.write(&burst) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("send: {e}"),
                }
                assert!(started.elapsed() < SETTLE, "lrpm kept reading");
            }
            stream
        })
        .collect();
    // Every one of them has answers waiting, and no more arrive: lrpm is
    // blocked writing to each.
    let queued = || -> Vec<u64> {
        stuck
            .iter()
            .map(|s| rustix::io::ioctl_fionread(s).expect("FIONREAD"))
            .collect()
    };
    let mut last = queued();
    wait_until("every connection's answers stop coming", SETTLE, || {
        std::thread::sleep(Duration::from_millis(200));
        let now = queued();
        let settled = now.iter().all(|&n| n > 0) && now == last;
        last = now;
        settled
    });
    for _ in 0..5 {
        lrpmctl_status_answers(&lrpm);
    }
    drop(stuck);
}

/// Status answers that their clients never read are held within a budget
/// per uid: a full share of connections, each asking for a status of 2 MB
/// and reading none of it, would hold 500 MB in lrpm; the newest answers
/// evict the oldest unread ones instead.
#[test]
fn unread_status_answers_hold_a_bounded_amount_of_memory() {
    raise_nofile(4096);
    // 64 jobs whose 32 KB names make a status of about 2 MB.
    let name = "n".repeat(32 * 1024);
    let config: String = (0..64)
        .map(|i| format!("[j{i}]\nname = \"{name}\"\ncommand = [\"sleep\", \"1000\"]\n"))
        .collect();
    let lrpm = Lrpm::start("jobs.toml", &config, &[]);
    lrpm.wait_for("64 running", SETTLE, |s| all_running(s, 64));
    let answer = raw_request(&lrpm.socket, r#"{"cmd":"status"}"#).expect("status");
    let size = answer.to_string().len();
    assert!(size > 2_000_000, "a status of {size} bytes");
    let before = rss_kib(lrpm.pid());
    let stuck: Vec<UnixStream> = (0..256)
        .map(|_| {
            let mut stream = UnixStream::connect(&lrpm.socket).expect("connect");
            std::io::Write::write_all(&mut stream, b"{\"cmd\":\"status\"}\n").expect("send");
            stream
        })
        .collect();
    // Every request was answered (the start of its answer, or all of it
    // for an evicted one, waits in the client's socket). 256 answers of
    // 2 MB are 512 MB of JSON to write: 33 s were not enough once on a
    // loaded machine, hence the longer wait (what is measured is memory).
    wait_until("every connection has its answer", SETTLE * 3, || {
        stuck
            .iter()
            .all(|s| rustix::io::ioctl_fionread(s).is_ok_and(|n| n > 0))
    });
    let after = rss_kib(lrpm.pid());
    eprintln!(
        "lrpm's RSS {before} KiB before, {after} KiB with 256 unread status answers of {size} bytes"
    );
    assert!(
        after < before + 64 * 1024,
        "{after} KiB held for unread answers (from {before} KiB)"
    );
    lrpmctl_status_answers(&lrpm);
    drop(stuck);
}
