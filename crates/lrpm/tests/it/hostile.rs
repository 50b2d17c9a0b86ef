//! Jobs that a hostile trial declares, with real processes: a command line
//! of a megabyte is logged cut to its first bytes and its size, a
//! `workerConfig` over the kernel's limit is invalid with the reason, and a
//! worker that forks hundreds of children under `--cgroup off` raises no
//! false "left its job" warning.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::{Lrpm, job_in};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn a_huge_command_line_is_logged_cut_with_its_size() {
    // 900 KB in nine arguments: each within the kernel's limit of one
    // string, so the job is valid.
    let mut command = vec!["sh".to_owned(), "-c".to_owned(), "exit 1".to_owned()];
    command.extend(std::iter::repeat_n("x".repeat(100_000), 9));
    let jobs = serde_json::json!({
        "huge": {"name": "huge", "command": command, "shortRunTimeSeconds": 0},
    });
    let lrpm = Lrpm::start("jobs.json", &jobs.to_string(), &[]);
    lrpm.wait_for("two starts", LONG, |s| {
        job_in(s, "huge").is_some_and(|j| j["restarts"].as_u64().unwrap_or(0) >= 2)
    });
    let stderr = lrpm.stderr();
    let starts: Vec<&str> = stderr.lines().filter(|l| l.contains("started: ")).collect();
    assert!(starts.len() >= 2, "{}", &stderr[..stderr.len().min(4000)]);
    for line in &starts {
        assert!(line.len() < 1024, "a start line of {} bytes", line.len());
        assert!(line.contains("started: sh -c exit 1 xxx"), "{line}");
        assert!(line.contains("xxx… (900.0 kB)"), "{line}");
    }
    assert!(stderr.len() < 64 * 1024, "a log of {} bytes", stderr.len());
}

#[test]
fn a_worker_config_over_the_kernels_limit_is_invalid_with_the_reason() {
    let jobs = serde_json::json!({
        "big": {"name": "big", "command": ["sleep", "1000"],
                "workerConfig": {"blob": "x".repeat(200 * 1024)}},
        "fits": {"name": "fits", "command": ["sleep", "1000"],
                 "workerConfig": {"blob": "x".repeat(100 * 1024)}},
    });
    let lrpm = Lrpm::start("jobs.json", &jobs.to_string(), &[]);
    let status = lrpm.wait_for("fits running, big invalid", LONG, |s| {
        crate::support::running(s, "fits")
            && s["supervisor"]["source"]["invalid_jobs"]["big"].is_string()
    });
    let reason = status["supervisor"]["source"]["invalid_jobs"]["big"]
        .as_str()
        .expect("a reason");
    assert!(
        reason.starts_with("workerConfig: LRPM_WORKER_CONFIG=workerConfig")
            && reason.contains("MAX_ARG_STRLEN")
            && reason.contains("Argument list too long"),
        "{reason}"
    );
    assert!(
        job_in(&status, "big").is_none_or(|j| j["pid"].is_null()),
        "{status}"
    );
    // The log says why, cut to a line.
    let stderr = lrpm.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("invalid job left out") && l.contains("big"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("LRPM_WORKER_CONFIG"), "{line}");
}

/// The pids of the "left its job" warnings in lrpm's log, with the
/// command name each names.
fn left_job_warnings(stderr: &str) -> Vec<(u32, String)> {
    stderr
        .lines()
        .filter(|l| l.contains("left its job and has no LRPM_RUN_ID"))
        .filter_map(|l| {
            let rest = l.split("process ").nth(1)?;
            let (pid, rest) = rest.split_once(" (")?;
            let (comm, _) = rest.split_once(')')?;
            Some((pid.parse().ok()?, comm.to_owned()))
        })
        .collect()
}

#[test]
fn without_cgroups_only_a_process_that_cleared_its_environment_is_warned_about_once() {
    let jobs = serde_json::json!({
        // Its children are re-parented to lrpm when it exits, and killed or
        // ended while lrpm looks at them: never a warning.
        "forker": {"name": "forker", "shortRunTimeSeconds": 0,
                   "command": "for i in $(seq 200); do sleep 1 & done; exit 0"},
        // Thirty daemons that cleared their environment: each is warned
        // about once, ten at most in a minute.
        "scrubbed": {"name": "scrubbed",
                     "command": "for i in $(seq 30); do setsid env -i tail -f /dev/null & done; \
                                 exec sleep 1000"},
    });
    let mut lrpm = Lrpm::start("jobs.json", &jobs.to_string(), &["--cgroup", "off"]);
    let worker = lrpm.running_pid("scrubbed");
    // Its shell has started the thirty once it is `sleep`.
    crate::support::wait_until("the scrubbed worker's loop done", LONG, || {
        std::fs::read_to_string(format!("/proc/{worker}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    // Orphans of the scrubbed job: restart it; its thirty tails, in
    // sessions of their own, stay.
    let stop = lrpm.ctl(&["restart", "scrubbed"]);
    assert!(stop.status.success(), "{stop:?}");
    let status = lrpm.wait_for("ten warnings", LONG, |_| {
        left_job_warnings(&lrpm.stderr()).len() >= 10
    });
    let restarts_then = job_in(&status, "forker").expect("forker")["restarts"]
        .as_u64()
        .unwrap_or(0);
    // Many more passes over the orphans: the forker's runs end, 200
    // children each.
    lrpm.wait_for("twenty more runs of the forker", LONG, |s| {
        job_in(s, "forker")
            .is_some_and(|j| j["restarts"].as_u64().unwrap_or(0) >= restarts_then + 20)
    });
    let warnings = left_job_warnings(&lrpm.stderr());
    assert_eq!(warnings.len(), 10, "{warnings:?}");
    assert!(
        warnings.iter().all(|(_, comm)| comm == "tail"),
        "{warnings:?}"
    );
    let pids: HashSet<u32> = warnings.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(
        pids.len(),
        warnings.len(),
        "a process warned about twice: {warnings:?}"
    );
    let exit = lrpm.terminate();
    assert!(exit.success(), "{exit}");
    // lrpm killed every adopted process at shutdown.
    for pid in pids {
        crate::support::wait_until("an adopted tail gone", LONG, || {
            !crate::support::pid_alive(pid)
        });
    }
}

#[test]
fn a_start_over_the_kernels_total_limit_says_which_limit() {
    // Under a 256 KiB stack limit the kernel takes 128 KiB of arguments and
    // environment in all: two strings of 100 KB, each valid, are too much.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobs.json");
    let jobs = serde_json::json!({
        "big": {"name": "big", "command": ["true", "x".repeat(100_000)],
                "env": {"BIG": "y".repeat(100_000)}},
    });
    std::fs::write(&config, jobs.to_string()).expect("write");
    let socket = dir.path().join("control.sock");
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(r#"ulimit -s 256 && exec "$@""#)
        .arg("sh")
        .arg(crate::support::lrpm_command().get_program())
        .arg("--socket")
        .arg(&socket)
        .arg(&config);
    let lrpm = Lrpm::spawn_in(dir, socket, config, command).expect("lrpm starts");
    let status = lrpm.wait_for("big's start failure", LONG, |s| {
        job_in(s, "big").is_some_and(|j| j["last_exit"]["error"].is_string())
    });
    let error = job_in(&status, "big").expect("big")["last_exit"]["error"]
        .as_str()
        .expect("error")
        .to_owned();
    assert!(
        error.contains("cannot run \"true\": its arguments and environment")
            && error.contains("Argument list too long"),
        "{error}"
    );
}
