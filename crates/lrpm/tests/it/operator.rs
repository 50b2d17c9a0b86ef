//! The operator's commands, with real processes through `lrpmctl`:
//! `pause`/`resume`, `signal`, `restart ID…` and `restart --all`, and
//! `status ID…`.

use std::fs;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Lrpm, job_in, jobs_in, pid_alive, pid_of, running, state_of, wait_until};

const LONG: Duration = Duration::from_secs(30);

/// `lrpmctl args…`, which must succeed; returns its stdout.
fn ctl_ok(lrpm: &Lrpm, args: &[&str]) -> String {
    let out = lrpm.ctl(args);
    assert!(out.status.success(), "lrpmctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lrpmctl args…`, which lrpm must refuse (exit status 1); returns its
/// stderr.
fn ctl_refused(lrpm: &Lrpm, args: &[&str]) -> String {
    let out: Output = lrpm.ctl(args);
    assert_eq!(out.status.code(), Some(1), "lrpmctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A job map of `sleep` jobs, `id` → seconds.
fn sleepers(jobs: &[(&str, u32)]) -> String {
    let map: serde_json::Map<String, Value> = jobs
        .iter()
        .map(|(id, secs)| {
            let job = serde_json::json!({"name": id, "command": ["sleep", secs.to_string()]});
            ((*id).to_owned(), job)
        })
        .collect();
    Value::Object(map).to_string()
}

/// The pid of every job, once all of `ids` run.
fn pids(lrpm: &Lrpm, ids: &[&str]) -> Vec<u32> {
    let status = lrpm.wait_for(&format!("{ids:?} running"), LONG, |s| {
        ids.iter().all(|id| running(s, id))
    });
    ids.iter()
        .map(|id| job_in(&status, id).and_then(pid_of).expect("a pid"))
        .collect()
}

#[test]
fn a_pause_survives_a_configuration_change_and_resume_starts_the_job() {
    let lrpm = Lrpm::start("jobs.json", &sleepers(&[("a", 300), ("b", 300)]), &[]);
    let [a, b] = pids(&lrpm, &["a", "b"])[..] else {
        unreachable!()
    };
    let said = ctl_ok(&lrpm, &["pause", "a"]);
    assert!(said.contains("paused a"), "{said}");
    let status = lrpm.wait_for("a paused", LONG, |s| {
        job_in(s, "a").is_some_and(|j| j["state"] == "paused")
    });
    assert_eq!(job_in(&status, "a").and_then(pid_of), None);
    wait_until("a's process gone", LONG, || !pid_alive(a));

    // An update of a, and a new job: the new job starts, a stays paused.
    lrpm.write_config(&sleepers(&[("a", 301), ("b", 300), ("c", 300)]));
    let status = lrpm.wait_for("c running", LONG, |s| running(s, "c"));
    let job_a = job_in(&status, "a").expect("a is kept");
    assert_eq!(job_a["state"], "paused", "{job_a}");
    assert_eq!(
        job_in(&status, "b").and_then(pid_of),
        Some(b),
        "b untouched"
    );
    let status = lrpm.wait_for_load_after(|| {
        ctl_ok(&lrpm, &["reload"]);
    });
    assert_eq!(job_in(&status, "a").expect("a")["state"], "paused");

    let said = ctl_ok(&lrpm, &["resume", "a"]);
    assert!(said.contains("resumed a"), "{said}");
    let status = lrpm.wait_for("a running again", LONG, |s| running(s, "a"));
    let job_a = job_in(&status, "a").expect("a");
    assert_eq!(
        job_a["command"], "sleep 301",
        "the update waited for the resume"
    );
    let log = lrpm.stderr();
    assert!(log.contains("paused by operator"), "{log}");
    assert!(log.contains("resumed by operator"), "{log}");
}

#[test]
fn signal_reaches_the_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().canonicalize().expect("canonical");
    let config = serde_json::json!({
        "w": {
            "name": "trapper",
            "command": "n=0; trap 'n=$((n+1)); echo $n > usr1.out' USR1; \
                        while :; do sleep 1 & wait $!; done",
            "cwd": work,
        },
        "idle": {"name": "idle", "command": ["sleep", "300"]},
    });
    let lrpm = Lrpm::start("jobs.json", &config.to_string(), &[]);
    let [w] = pids(&lrpm, &["w"])[..] else {
        unreachable!()
    };
    let out = work.join("usr1.out");
    let said = ctl_ok(&lrpm, &["signal", "USR1", "w"]);
    assert!(said.contains("sent SIGUSR1 to w"), "{said}");
    wait_until("the trap's file", LONG, || {
        fs::read_to_string(&out).is_ok_and(|s| s.trim() == "1")
    });
    // By number, too.
    ctl_ok(&lrpm, &["signal", "10", "w"]);
    wait_until("the second trap", LONG, || {
        fs::read_to_string(&out).is_ok_and(|s| s.trim() == "2")
    });
    assert_eq!(
        lrpm.job("w").as_ref().and_then(pid_of),
        Some(w),
        "w lives on"
    );
    // STOP and CONT reach it too.
    ctl_ok(&lrpm, &["signal", "STOP", "w"]);
    wait_until("w stopped", LONG, || state_of(w) == Some('T'));
    ctl_ok(&lrpm, &["signal", "sigcont", "w"]);
    wait_until("w going on", LONG, || state_of(w).is_some_and(|s| s != 'T'));

    let refused = ctl_refused(&lrpm, &["signal", "USR1", "nope"]);
    assert!(refused.contains("no such job: nope"), "{refused}");
    let out = lrpm.ctl(&["signal", "SEGV", "w"]);
    assert_eq!(out.status.code(), Some(64), "an unknown signal: {out:?}");
    ctl_ok(&lrpm, &["pause", "idle"]);
    lrpm.wait_for("idle paused", LONG, |s| {
        job_in(s, "idle").is_some_and(|j| j["state"] == "paused")
    });
    let refused = ctl_refused(&lrpm, &["signal", "HUP", "idle"]);
    assert!(refused.contains("no process to signal: idle"), "{refused}");
}

#[test]
fn restart_all_restarts_every_job_and_restart_ids_only_those() {
    let ids = ["a", "b", "c"];
    let lrpm = Lrpm::start(
        "jobs.json",
        &sleepers(&[("a", 300), ("b", 300), ("c", 300)]),
        &[],
    );
    let before = pids(&lrpm, &ids);

    ctl_ok(&lrpm, &["restart", "a", "b"]);
    let status = lrpm.wait_for("a and b restarted", LONG, |s| {
        ["a", "b"]
            .iter()
            .all(|id| job_in(s, id).is_some_and(|j| j["restarts"] == 1 && running(s, id)))
    });
    assert_eq!(
        job_in(&status, "c").and_then(pid_of),
        Some(before[2]),
        "c untouched"
    );

    let said = ctl_ok(&lrpm, &["restart", "--all"]);
    assert!(said.contains("(3)"), "{said}");
    let status = lrpm.wait_for("every job restarted", LONG, |s| {
        jobs_in(s).len() == 3
            && ids.iter().all(|id| {
                job_in(s, id).is_some_and(|j| j["restarts"] == 2 - u32::from(*id == "c"))
                    && running(s, id)
            })
    });
    for (id, old) in ids.iter().zip(&before) {
        let pid = job_in(&status, id).and_then(pid_of).expect("a pid");
        assert_ne!(pid, *old, "{id} restarted");
    }
    let refused = ctl_refused(&lrpm, &["restart", "a", "zz"]);
    assert!(refused.contains("no such job: zz"), "{refused}");
    ctl_ok(&lrpm, &["pause", "c"]);
    let refused = ctl_refused(&lrpm, &["restart", "a", "c"]);
    assert!(refused.contains("paused, so not restarted: c"), "{refused}");
    let said = ctl_ok(&lrpm, &["restart", "--all"]);
    assert!(said.contains("(2)"), "the paused job left alone: {said}");
    assert!(lrpm.stderr().contains("restarted by operator"));
}

#[test]
fn status_of_some_jobs_lists_only_those() {
    let config = serde_json::json!({
        "a": {"name": "a", "command": ["sleep", "300"]},
        "b": {"name": "b", "command": ["sleep", "300"]},
        "w": {"name": "w", "command": ["sleep", "300"], "instances": 2},
    });
    let lrpm = Lrpm::start("jobs.json", &config.to_string(), &[]);
    pids(&lrpm, &["a", "b", "w#0", "w#1"]);
    let json = ctl_ok(&lrpm, &["status", "--json", "b", "w"]);
    let status: Value = serde_json::from_str(&json).expect("a status document");
    let listed: Vec<&str> = jobs_in(&status)
        .iter()
        .map(|j| j["id"].as_str().expect("an id"))
        .collect();
    assert_eq!(listed, ["b", "w#0", "w#1"]);
    assert!(status["supervisor"]["pid"].is_u64());
    let table = ctl_ok(&lrpm, &["status", "a"]);
    assert!(table.contains("1 job: 1 running"), "{table}");
    let refused = ctl_refused(&lrpm, &["status", "a", "nope"]);
    assert!(refused.contains("no such job: nope"), "{refused}");
}
