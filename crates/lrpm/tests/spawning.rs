//! How workers are started (`crate::spawn`, a vfork-style clone), with real
//! processes: start failures are clear and leave nothing behind, the job's
//! `PATH` is searched, a worker starts with clean signals, and lrpm keeps no
//! write end of a worker's output.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{Lrpm, job_in, wait_until};

const LONG: Duration = Duration::from_secs(20);

fn running_pid(lrpm: &Lrpm, id: &str) -> u32 {
    let status = lrpm.wait_for(&format!("job {id} running"), LONG, |s| {
        job_in(s, id).is_some_and(|j| j["state"] == "running" && j["pid"].is_u64())
    });
    job_in(&status, id).expect("job")["pid"]
        .as_u64()
        .expect("pid") as u32
}

/// The pids of every child of process `pid` (all its threads').
fn children(pid: u32) -> Vec<u32> {
    children_by_thread(pid).into_values().flatten().collect()
}

/// A `SigXxx:` mask of /proc/PID/status.
fn signal_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in {status}"));
    u64::from_str_radix(line[field.len()..].trim(), 16).expect("hex mask")
}

#[test]
fn start_failures_are_clear_errors_and_leave_no_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_executable = dir.path().join("not-executable");
    fs::write(&not_executable, "#!/bin/sh\nexit 0\n").expect("write");
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = serde_json::json!({
        "missing": {"name": "missing", "command": ["/nonexistent/lrpm-program"]},
        "unknown": {"name": "unknown", "command": ["lrpm-no-such-program-in-path"]},
        "noexec": {"name": "noexec", "command": [not_executable]},
        "nocwd": {"name": "nocwd", "command": ["true"], "cwd": "/nonexistent/lrpm-dir"},
    });
    let lrpm = Lrpm::start("jobs.json", &config.to_string(), &[]);
    let status = lrpm.wait_for("four start failures", LONG, |s| {
        ["missing", "unknown", "noexec", "nocwd"]
            .iter()
            .all(|id| job_in(s, id).is_some_and(|j| j["last_exit"]["error"].is_string()))
    });
    let error = |id: &str| -> String {
        job_in(&status, id).expect("job")["last_exit"]["error"]
            .as_str()
            .expect("error")
            .to_owned()
    };
    let missing = error("missing");
    assert!(
        missing.contains("cannot run \"/nonexistent/lrpm-program\"")
            && missing.contains("No such file or directory"),
        "{missing}"
    );
    let unknown = error("unknown");
    assert!(
        unknown.contains("lrpm-no-such-program-in-path")
            && unknown.contains("No such file or directory"),
        "{unknown}"
    );
    let noexec = error("noexec");
    assert!(noexec.contains("Permission denied"), "{noexec}");
    let nocwd = error("nocwd");
    assert!(
        nocwd.contains("working directory /nonexistent/lrpm-dir")
            && nocwd.contains("No such file or directory"),
        "{nocwd}"
    );
    // The failed children were reaped: lrpm has no child at all (a retry
    // may be starting one for a few microseconds, hence the wait).
    wait_until("lrpm to have no child", LONG, || {
        children(lrpm.pid()).is_empty()
    });
}

#[test]
fn the_path_of_a_jobs_env_is_searched() {
    let bin = tempfile::tempdir().expect("tempdir");
    let program = bin.path().join("lrpm-test-program");
    fs::write(&program, "#!/bin/sh\necho found in path\nexec sleep 1000\n").expect("write");
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).expect("chmod");
    // An earlier entry that is not a directory, and one without the
    // program, are passed over as execvp would.
    let path = format!(
        "/nonexistent:/etc/hostname:{}:/usr/bin:/bin",
        bin.path().display()
    );
    let config = serde_json::json!({
        "p": {"name": "p", "command": ["lrpm-test-program"], "env": {"PATH": path}},
    });
    let lrpm = Lrpm::start("jobs.json", &config.to_string(), &[]);
    running_pid(&lrpm, "p");
    wait_until("the program's line", LONG, || {
        lrpm.stdout().contains("[p] found in path")
    });
}

#[test]
fn a_worker_starts_with_an_empty_mask_and_default_signals() {
    let lrpm = Lrpm::start(
        "jobs.json",
        r#"{"s": {"name": "s", "command": ["sleep", "1000"]}}"#,
        &[],
    );
    let pid = running_pid(&lrpm, "s");
    let worker = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(signal_mask(&worker, "SigBlk:"), 0, "blocked: {worker}");
    assert_eq!(signal_mask(&worker, "SigCgt:"), 0, "caught: {worker}");
    // What lrpm's parent (this test, through std's Command, which resets
    // SIGPIPE) left ignored, and nothing more.
    let own = fs::read_to_string("/proc/self/status").expect("own status");
    let sigpipe = 1u64 << (libc_sigpipe() - 1);
    assert_eq!(
        signal_mask(&worker, "SigIgn:"),
        signal_mask(&own, "SigIgn:") & !sigpipe,
        "ignored: {worker}"
    );
}

fn libc_sigpipe() -> u32 {
    rustix::process::Signal::PIPE.as_raw() as u32
}

/// The pipe inode behind a `pipe:[N]` link.
fn pipe_inode(link: &std::path::Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    let target = target.to_str()?;
    target.starts_with("pipe:").then(|| target.to_owned())
}

#[test]
fn lrpm_keeps_no_write_end_of_a_workers_output() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[w]\nname = \"w\"\ncommand = \"echo hello from $$; exec sleep 1000\"\nshortRunTimeSeconds = 0\n",
        &[],
    );
    let first = running_pid(&lrpm, "w");
    let worker_pipes: HashSet<String> = [1, 2]
        .iter()
        .filter_map(|fd| pipe_inode(std::path::Path::new(&format!("/proc/{first}/fd/{fd}"))))
        .collect();
    assert_eq!(worker_pipes.len(), 2, "stdout and stderr are two pipes");
    // lrpm holds each pipe's read end only.
    let mut read_ends = 0;
    for entry in fs::read_dir(format!("/proc/{}/fd", lrpm.pid())).expect("fds") {
        let entry = entry.expect("entry");
        let Some(pipe) = pipe_inode(&entry.path()) else {
            continue;
        };
        if !worker_pipes.contains(&pipe) {
            continue;
        }
        let fd = entry.file_name();
        let info = fs::read_to_string(format!(
            "/proc/{}/fdinfo/{}",
            lrpm.pid(),
            fd.to_string_lossy()
        ))
        .expect("fdinfo");
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).expect("octal flags"))
            .expect("flags");
        assert_eq!(
            flags & 3,
            0,
            "lrpm's descriptor {fd:?} on {pipe} is not read-only"
        );
        read_ends += 1;
    }
    assert_eq!(read_ends, 2, "one read end per pipe");
    // The worker dies; its replacement's output arrives, as does its own.
    wait_until("the first line", LONG, || {
        lrpm.stdout().contains(&format!("[w] hello from {first}"))
    });
    support::signal(first, rustix::process::Signal::KILL);
    let status = lrpm.wait_for("a new worker", LONG, |s| {
        job_in(s, "w").is_some_and(|j| j["pid"].as_u64().is_some_and(|p| p as u32 != first))
    });
    let second = job_in(&status, "w").expect("w")["pid"]
        .as_u64()
        .expect("pid");
    wait_until("the second line", LONG, || {
        lrpm.stdout().contains(&format!("[w] hello from {second}"))
    });
}

/// The children of each thread of process `pid` (a child's parent is the
/// thread that cloned it), by the thread's name.
fn children_by_thread(pid: u32) -> BTreeMap<String, Vec<u32>> {
    let mut by_thread = BTreeMap::<String, Vec<u32>>::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_thread;
    };
    for task in tasks.flatten() {
        let task = task.path();
        let (Ok(name), Ok(list)) = (
            fs::read_to_string(task.join("comm")),
            fs::read_to_string(task.join("children")),
        ) else {
            continue;
        };
        by_thread.entry(name.trim().to_owned()).or_default().extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    by_thread.retain(|_, children| !children.is_empty());
    by_thread
}

#[test]
fn a_mass_start_spawns_on_two_threads_and_their_workers_live_on() {
    let ids: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let lrpm = Lrpm::start("jobs.json", &support::jobs(&ids), &[]);
    let running = |s: &serde_json::Value| -> BTreeMap<String, u64> {
        ids.iter()
            .filter_map(|id| {
                let job = job_in(s, id)?;
                (job["state"] == "running").then_some(((*id).to_owned(), job["pid"].as_u64()?))
            })
            .collect()
    };
    let status = lrpm.wait_for("100 workers running", LONG, |s| running(s).len() == 100);
    let pids = running(&status);
    // A worker's parent is the thread that cloned it: both spawned some.
    let by_thread = children_by_thread(lrpm.pid());
    let helper = by_thread.get("lrpm-spawn").map_or(0, Vec::len);
    let total: usize = by_thread.values().map(Vec::len).sum();
    assert_eq!(total, 100, "{by_thread:?}");
    assert!(
        helper > 0 && helper < 100,
        "the spawn helper started {helper} of 100 workers: {by_thread:?}"
    );
    // The parent-death signal follows the cloning thread: had the helper
    // ended, its workers would have died with it.
    std::thread::sleep(Duration::from_millis(500));
    let status = lrpm.status();
    assert_eq!(running(&status), pids, "a worker died or was restarted");
    assert!(
        ids.iter()
            .all(|id| job_in(&status, id).is_some_and(|j| j["restarts"] == 0)),
        "no restarts: {status}"
    );
}
