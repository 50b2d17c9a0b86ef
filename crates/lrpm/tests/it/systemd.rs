//! lrpm as a systemd `Type=notify` service: a socket of the test's stands
//! for systemd's `NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::Lrpm;

const LONG: Duration = Duration::from_secs(30);

/// How many processes have `token` in their command line.
fn processes_with(token: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.parse::<u32>().ok()?;
            std::fs::read(format!("/proc/{}/cmdline", name.to_str()?)).ok()
        })
        .filter(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == token.as_bytes())
        })
        .count()
}

/// The next message on `rx` that starts with `prefix`, within [`LONG`].
fn next_with(rx: &mpsc::Receiver<(String, usize)>, prefix: &str) -> (String, usize) {
    let deadline = Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {prefix} message within {LONG:?}"));
        if message.0.lines().any(|line| line.starts_with(prefix)) {
            return message;
        }
    }
}

#[test]
fn systemd_hears_ready_after_the_first_spawns_then_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).expect("bind the notify socket");
    // A token no other test's process carries: the temp dir's name.
    let token = dir
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    // Each message, and how many of the jobs' processes existed when it
    // arrived.
    let (tx, rx) = mpsc::channel();
    let counted = token.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if tx.send((text, processes_with(&counted))).is_err() {
                return;
            }
        }
    });
    let jobs: String = (0..3)
        .map(|i| {
            format!(
                "[j{i}]\nname = \"J{i}\"\ncommand = [\"sh\", \"-c\", \
                 \"echo \\\"$NOTIFY_SOCKET\\\" > ns{i}; sleep 1000\", \"{token}\"]\n"
            )
        })
        .collect();
    let config = dir.path().join("jobs.toml");
    std::fs::write(&config, jobs).expect("config");
    let mut lrpm = Lrpm::start_in(dir, config.clone(), |command| {
        command
            .env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", "400000")
            .arg(&config);
    });
    let (ready, spawned) = next_with(&rx, "READY=1");
    assert!(
        spawned >= 3,
        "READY=1 came before the first configuration's workers: {ready:?}, {spawned} spawned"
    );
    assert!(ready.contains("STATUS=3 jobs"), "{ready:?}");
    // WATCHDOG=1 at half of WATCHDOG_USEC: a few in a second.
    let started = Instant::now();
    for _ in 0..3 {
        next_with(&rx, "WATCHDOG=1");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The workers never see lrpm's own NOTIFY_SOCKET.
    for i in 0..3 {
        let path = lrpm.dir.path().join(format!("ns{i}"));
        crate::support::wait_until("the worker wrote its NOTIFY_SOCKET", LONG, || path.exists());
        let seen = std::fs::read_to_string(&path).expect("ns");
        assert_ne!(seen.trim(), notify.to_str().expect("utf-8"));
    }
    assert!(lrpm.terminate().success());
    let (stopping, _) = next_with(&rx, "STOPPING=1");
    assert!(
        stopping.contains("STATUS=stopping (SIGTERM)"),
        "{stopping:?}"
    );
}
