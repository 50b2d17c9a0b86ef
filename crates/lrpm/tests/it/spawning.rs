//! How workers are started (`crate::spawn`, a vfork-style clone), with real
//! processes: start failures are clear and leave nothing behind, the job's
//! `PATH` is searched, a worker starts with clean signals, and lrpm keeps no
//! write end of a worker's output.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::{
    Lrpm, children_but_the_guardian, is_guardian, job_in, jobs, pid_alive, pid_of, signal,
    wait_until,
};

const LONG: Duration = Duration::from_secs(30);

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
    // The failed children were reaped: lrpm has no child but its guardian
    // (a retry may be starting one for a few microseconds, hence the wait).
    wait_until("lrpm to have no child", LONG, || {
        children_but_the_guardian(lrpm.pid()).is_empty()
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
    lrpm.running_pid("p");
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
    let pid = lrpm.running_pid("s");
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
    let first = lrpm.running_pid("w");
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
    signal(first, rustix::process::Signal::KILL);
    let status = lrpm.wait_for("a new worker", LONG, |s| {
        job_in(s, "w").and_then(pid_of).is_some_and(|p| p != first)
    });
    let second = job_in(&status, "w").and_then(pid_of).expect("pid");
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
        // Its guardian is no worker.
        by_thread.entry(name.trim().to_owned()).or_default().extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .filter(|p| !is_guardian(*p)),
        );
    }
    by_thread.retain(|_, children| !children.is_empty());
    by_thread
}

#[test]
fn a_mass_start_spawns_on_two_threads_and_their_workers_live_on() {
    let ids: Vec<String> = (0..120).map(|i| format!("w{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (first, second) = ids.split_at(100);
    let lrpm = Lrpm::start("jobs.json", &jobs(first), &[]);
    // The pid of each running job, and the jobs that have been restarted.
    let running = |s: &serde_json::Value| -> (BTreeMap<String, u32>, Vec<String>) {
        let running = ids
            .iter()
            .filter_map(|id| {
                let job = job_in(s, id)?;
                (job["state"] == "running").then_some(((*id).to_owned(), pid_of(job)?))
            })
            .collect();
        let restarted = ids
            .iter()
            .filter(|id| job_in(s, id).is_some_and(|j| j["restarts"] != 0))
            .map(|id| (*id).to_owned())
            .collect();
        (running, restarted)
    };
    let status = lrpm.wait_for("100 workers running", LONG, |s| running(s).0.len() == 100);
    let (pids, _) = running(&status);
    // A worker's parent is the thread that cloned it: both spawned some.
    let by_thread = children_by_thread(lrpm.pid());
    let helper = by_thread.get("lrpm-spawn").cloned().unwrap_or_default();
    let total: usize = by_thread.values().map(Vec::len).sum();
    assert_eq!(total, 100, "{by_thread:?}");
    assert!(
        !helper.is_empty() && helper.len() < 100,
        "the spawn helper started {} of 100 workers: {by_thread:?}",
        helper.len()
    );
    // The parent-death signal follows the cloning thread: had the helper
    // ended after its batch, its workers would have died with it. It lives
    // on: after another mass start, it is still there, with the same
    // children, and no worker of the first start died or was restarted.
    lrpm.write_config(&jobs(&[first, second].concat()));
    let status = lrpm.wait_for("120 workers running", LONG, |s| running(s).0.len() == 120);
    let (now, restarted) = running(&status);
    assert!(
        pids.iter().all(|(id, pid)| now.get(id) == Some(pid)),
        "a worker died or was restarted: {pids:?} then {now:?}"
    );
    assert!(restarted.is_empty(), "restarted: {restarted:?}");
    let helper_now = children_by_thread(lrpm.pid())
        .remove("lrpm-spawn")
        .unwrap_or_default();
    assert!(
        helper
            .iter()
            .all(|pid| helper_now.contains(pid) && pid_alive(*pid)),
        "the helper's workers {helper:?}, its children now {helper_now:?}"
    );
}
