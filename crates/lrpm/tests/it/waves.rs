//! `--max-restarting K` with real processes: 12 `notify` workers updated at
//! once are restarted at most 3 at a time. Each worker writes to a ledger
//! when it is up (before its `READY=1`) and when its stop signal arrives,
//! stamped with the system's monotonic clock; lrpm stops the next job of a
//! wave only after a new worker said `READY=1`, so the ledger's order is
//! the order of the events themselves.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::support::{Lrpm, job_in, prerequisite};

const LONG: Duration = Duration::from_secs(60);

/// The worker: `up ID VERSION T` to the ledger, `READY=1`, and `down ID
/// VERSION T` on SIGTERM.
const WORKER: &str = r#"
import os, signal, socket, sys, time
ledger, me, version = sys.argv[1], os.environ["LRPM_JOB_ID"], os.environ["VERSION"]
def note(what):
    with open(ledger, "a") as f:
        f.write(f"{what} {me} {version} {time.monotonic()}\n")
def down(*_):
    note("down")
    sys.exit(0)
signal.signal(signal.SIGTERM, down)
note("up")
addr = os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
s.send(b"READY=1")
while True:
    time.sleep(1000)
"#;

fn farm(ledger: &Path, version: u32) -> String {
    let jobs: serde_json::Map<String, serde_json::Value> = (0..12)
        .map(|i| {
            let job = json!({
                "name": "w",
                "command": ["python3", "-c", WORKER, ledger.display().to_string()],
                "notify": true,
                "shutdownTimeoutSeconds": 10,
                "env": {"VERSION": version.to_string()},
            });
            (format!("j{i:02}"), job)
        })
        .collect();
    serde_json::Value::Object(jobs).to_string()
}

#[test]
fn twelve_jobs_updated_under_max_restarting_3_are_never_more_than_3_down() {
    let python = std::process::Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success());
    if !prerequisite("python3", python) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger");
    let lrpm = Lrpm::start("jobs.json", &farm(&ledger, 1), &["--max-restarting", "3"]);
    lrpm.wait_for("12 jobs up", LONG, |s| {
        (0..12).all(|i| job_in(s, &format!("j{i:02}")).is_some_and(|j| j["state"] == "running"))
    });
    lrpm.write_config(&farm(&ledger, 2));
    lrpm.wait_for("every job restarted and up", LONG, |_| {
        let text = std::fs::read_to_string(&ledger).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("up ") && l.contains(" 2 "))
            .count()
            == 12
    });
    let text = std::fs::read_to_string(&ledger).expect("the ledger");
    let mut events: Vec<(f64, i32)> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let t: f64 = fields.get(3)?.parse().ok()?;
            match (fields[0], fields[2]) {
                ("down", "1") => Some((t, 1)),
                ("up", "2") => Some((t, -1)),
                _ => None,
            }
        })
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut down, mut most) = (0, 0);
    for (_, change) in &events {
        down += change;
        most = most.max(down);
    }
    assert_eq!(events.len(), 24, "{text}");
    assert!(most <= 3, "{most} jobs were down at once:\n{text}");
    assert!(most >= 1, "{text}");
    eprintln!("at most {most} of 12 jobs down at once");
}
