//! The `etcd://` source against a real etcd started by each test on
//! 127.0.0.1 (free ports, a temp data directory; [`EtcdServer`]): the
//! initial load, puts and deletes followed, a garbage value rejecting only
//! its job, recovery after a compaction and after a restart of etcd (the
//! farm keeps running meanwhile, and status shows the connection lost),
//! several endpoints, and the password kept out of the status and the log.

use std::time::Duration;

use serde_json::Value;

use crate::etcd_server::{self, EtcdServer, free_port};
use crate::support::{Lrpm, job_in, jobs_in, pid_of, running, signal, wall_now};

/// The bound on a change being followed (the benchmark gives the real
/// figure, in milliseconds).
const FOLLOW: f64 = 5.0;
/// The bound of the waits.
const LONG: Duration = Duration::from_secs(30);

fn job(name: &str) -> String {
    serde_json::json!({"name": name, "command": ["sleep", "600"]}).to_string()
}

/// lrpm on `uri`.
fn lrpm(uri: &str) -> Lrpm {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("unused");
    Lrpm::start_in(dir, config, |command| {
        command.arg(uri);
    })
}

fn source(status: &Value) -> &Value {
    &status["supervisor"]["source"]
}

fn connection_state(status: &Value) -> &str {
    source(status)["connection"]["state"].as_str().unwrap_or("")
}

/// Waits until job `id` runs; returns its status object.
fn wait_running(lrpm: &Lrpm, id: &str) -> Value {
    let status = lrpm.wait_for(&format!("job {id} running"), LONG, |s| running(s, id));
    job_in(&status, id).cloned().expect("the job")
}

/// Puts `key`, waits until job `id` runs, and checks that lrpm started it
/// within [`FOLLOW`] seconds of the put, by lrpm's own clock.
fn put_and_follow(etcd: &EtcdServer, lrpm: &Lrpm, key: &str, id: &str) -> Value {
    let before = wall_now();
    etcd.put(key, &job(id));
    let job = wait_running(lrpm, id);
    let took = job["started_at"].as_f64().expect("started_at") - before;
    assert!(took < FOLLOW, "job {id} started {took:.3}s after the put");
    job
}

#[test]
fn loads_the_prefix_then_follows_puts_and_deletes() {
    if !etcd_server::available() {
        return;
    }
    let etcd = EtcdServer::start();
    etcd.put("jobs/a", &job("a"));
    etcd.put("jobs/b", &job("b"));
    // Outside the prefix: not jobs.
    etcd.put("jobsx/c", &job("c"));
    etcd.put("other/d", &job("d"));
    let lrpm = lrpm(&format!("etcd://{}/jobs", etcd.endpoint()));
    let a = pid_of(&wait_running(&lrpm, "a")).expect("a pid");
    let status = wait_running(&lrpm, "b");
    let b = pid_of(&status).expect("b's pid");
    let status = lrpm.status();
    let ids: Vec<&str> = jobs_in(&status)
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(connection_state(&status), "connected");
    assert_eq!(source(&status)["revision"], etcd.revision());

    // A new key: a new worker.
    put_and_follow(&etcd, &lrpm, "jobs/c", "c");
    // A changed key: that job restarts, and only it.
    let before = wall_now();
    let revision = etcd.put(
        "jobs/b",
        &serde_json::json!({"name": "b2", "command": ["sleep", "600"]}).to_string(),
    );
    let status = lrpm.wait_for("b restarted as b2", LONG, |s| {
        job_in(s, "b").is_some_and(|j| j["name"] == "b2" && j["state"] == "running")
    });
    let b2 = job_in(&status, "b").expect("b");
    assert_ne!(pid_of(b2), Some(b));
    let took = b2["started_at"].as_f64().expect("started_at") - before;
    assert!(took < FOLLOW, "b restarted {took:.3}s after the put");
    assert_eq!(
        job_in(&status, "a").and_then(pid_of),
        Some(a),
        "a untouched"
    );
    assert_eq!(
        job_in(&status, "c").map(|j| j["restarts"].clone()),
        Some(0.into())
    );
    lrpm.wait_for("the revision of the put", LONG, |s| {
        source(s)["revision"] == revision
    });

    // A deleted key: that job stops.
    let revision = etcd.delete("jobs/a");
    let status = lrpm.wait_for("a gone", LONG, |s| job_in(s, "a").is_none());
    assert!(running(&status, "b") && running(&status, "c"));
    lrpm.wait_for("the revision of the delete", LONG, |s| {
        source(s)["revision"] == revision
    });
}

#[test]
fn a_garbage_value_makes_only_its_job_invalid() {
    if !etcd_server::available() {
        return;
    }
    let etcd = EtcdServer::start();
    etcd.put("p/ok", &job("ok"));
    etcd.put("p/garbage", "{not json");
    etcd.put("p/nameless", r#"{"command": "true"}"#);
    let lrpm = lrpm(&format!("etcd://{}/p", etcd.endpoint()));
    let ok = pid_of(&wait_running(&lrpm, "ok")).expect("ok's pid");
    let status = lrpm.wait_for("two invalid jobs", LONG, |s| {
        source(s)["invalid_jobs"]
            .as_object()
            .is_some_and(|m| m.len() == 2)
    });
    let invalid = &source(&status)["invalid_jobs"];
    assert!(
        invalid["garbage"]
            .as_str()
            .is_some_and(|r| r.starts_with("declaration: not valid JSON")),
        "{invalid}"
    );
    assert_eq!(invalid["nameless"], "name: is required");
    assert_eq!(source(&status)["last_error"], Value::Null);
    assert_eq!(jobs_in(&status).len(), 1);

    // Mended, it runs; the other job was never touched.
    etcd.put("p/garbage", &job("garbage"));
    let status = lrpm.wait_for("garbage mended and running", LONG, |s| {
        running(s, "garbage") && source(s)["invalid_jobs"].get("garbage").is_none()
    });
    assert_eq!(job_in(&status, "ok").and_then(pid_of), Some(ok));
    // Garbage again: the job keeps running on its last valid declaration.
    etcd.put("p/garbage", "\u{1}");
    let status = lrpm.wait_for("garbage invalid again", LONG, |s| {
        source(s)["invalid_jobs"].get("garbage").is_some()
    });
    assert!(running(&status, "garbage"));
}

/// A watcher that falls behind (lrpm stopped while 20 MB of changes pile
/// up) is moved off etcd's live stream; a compaction past its revision then
/// cancels it, and lrpm reads everything again: what changed meanwhile is
/// followed.
#[test]
fn a_compaction_past_the_watch_reloads_everything() {
    if !etcd_server::available() {
        return;
    }
    let etcd = EtcdServer::start();
    etcd.put("c/a", &job("a"));
    etcd.put("c/b", &job("b"));
    let lrpm = lrpm(&format!("etcd://{}/c", etcd.endpoint()));
    wait_running(&lrpm, "a");
    let b = pid_of(&wait_running(&lrpm, "b")).expect("b's pid");

    signal(lrpm.pid(), rustix::process::Signal::STOP);
    // Values of 64 KiB (invalid jobs: no command), enough to fill every
    // buffer between etcd and the stopped lrpm.
    let filler = serde_json::json!({"name": "x".repeat(64 << 10)}).to_string();
    let fillers: Vec<(String, String)> = (0..320)
        .map(|i| (format!("c/filler-{i:03}"), filler.clone()))
        .collect();
    etcd.put_many(&fillers);
    etcd.put("c/new", &job("new"));
    etcd.delete("c/a");
    let revision = etcd.revision();
    etcd.compact(revision);
    signal(lrpm.pid(), rustix::process::Signal::CONT);

    let status = lrpm.wait_for("the changes made meanwhile", LONG, |s| {
        running(s, "new") && job_in(s, "a").is_none() && source(s)["revision"] == revision
    });
    assert_eq!(
        job_in(&status, "b").and_then(pid_of),
        Some(b),
        "b untouched"
    );
    assert_eq!(
        source(&status)["invalid_jobs"].as_object().map(|m| m.len()),
        Some(320)
    );
    let log = lrpm.stderr();
    assert!(log.contains("was compacted"), "{log}");
}

#[test]
fn a_restarted_etcd_is_followed_again_and_the_farm_runs_meanwhile() {
    if !etcd_server::available() {
        return;
    }
    let mut etcd = EtcdServer::start();
    etcd.put("r/a", &job("a"));
    etcd.put("r/b", &job("b"));
    let lrpm = lrpm(&format!("etcd://{}/r", etcd.endpoint()));
    let a = pid_of(&wait_running(&lrpm, "a")).expect("a's pid");
    wait_running(&lrpm, "b");

    etcd.stop();
    let status = lrpm.wait_for("the connection lost", LONG, |s| {
        connection_state(s) == "reconnecting" && source(s)["connection"]["error"].is_string()
    });
    assert!(running(&status, "a") && running(&status, "b"));
    let status = lrpm.wait_for("the failed load in status", LONG, |s| {
        source(s)["last_error"].is_string() && source(s)["connection"]["retry_at"].is_f64()
    });
    assert!(running(&status, "a") && running(&status, "b"));

    etcd.resume();
    // Made before lrpm is back: caught up by the full load.
    etcd.delete("r/b");
    etcd.put("r/c", &job("c"));
    let status = lrpm.wait_for("reconnected with the changes", LONG, |s| {
        connection_state(s) == "connected"
            && running(s, "c")
            && job_in(s, "b").is_none()
            && source(s)["last_error"].is_null()
    });
    assert_eq!(
        job_in(&status, "a").and_then(pid_of),
        Some(a),
        "a untouched"
    );
    assert_eq!(source(&status)["connection"]["error"], Value::Null);
    // And followed again.
    put_and_follow(&etcd, &lrpm, "r/d", "d");
}

#[test]
fn the_endpoints_are_tried_in_turn() {
    if !etcd_server::available() {
        return;
    }
    let etcd = EtcdServer::start();
    etcd.put("e/a", &job("a"));
    let dead = format!("127.0.0.1:{}", free_port());
    let lrpm = lrpm(&format!("etcd://{dead},{}/e", etcd.endpoint()));
    wait_running(&lrpm, "a");
    let status = lrpm.status();
    assert_eq!(connection_state(&status), "connected");
    put_and_follow(&etcd, &lrpm, "e/b", "b");
}

#[test]
fn the_password_is_never_shown() {
    if !etcd_server::available() {
        return;
    }
    const SECRET: &str = "s3cret-Pw";
    let mut etcd = EtcdServer::start();
    etcd.enable_auth(SECRET);
    etcd.put("s/a", &job("a"));
    let uri = format!("etcd://root:{SECRET}@{}/s", etcd.endpoint());
    let lrpm = lrpm(&uri);
    wait_running(&lrpm, "a");
    put_and_follow(&etcd, &lrpm, "s/b", "b");
    let status = lrpm.status();
    assert_eq!(
        source(&status)["uri"],
        format!("etcd://root:***@{}/s", etcd.endpoint())
    );

    // The password from the environment, which no worker inherits.
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("unused");
    let env_file = dir.path().join("env.txt");
    etcd.put(
        "s/env",
        &serde_json::json!({"name": "env", "command": ["sh", "-c", "env > env.txt; exec sleep 600"]})
            .to_string(),
    );
    let from_env = Lrpm::start_in(dir, config, |command| {
        command
            .env("LRPM_ETCD_PASSWORD", SECRET)
            .arg(format!("etcd://root@{}/s", etcd.endpoint()));
    });
    wait_running(&from_env, "env");
    let env = crate::support::wait_for_value("the worker's environment", LONG, || {
        std::fs::read_to_string(&env_file)
            .ok()
            .filter(|t| t.contains("LRPM_JOB_ID"))
    });
    assert!(!env.contains(SECRET), "{env}");
    drop(from_env);

    // Lost and failing: the errors do not show it either.
    etcd.stop();
    let status = lrpm.wait_for("the failed load in status", LONG, |s| {
        source(s)["last_error"].is_string()
    });
    let ctl = lrpm.ctl(&["status"]);
    for (what, text) in [
        ("status", status.to_string()),
        (
            "lrpmctl status",
            String::from_utf8_lossy(&ctl.stdout).into_owned(),
        ),
        ("lrpm's log", lrpm.stderr()),
        ("lrpm's stdout", lrpm.stdout()),
    ] {
        assert!(!text.contains(SECRET), "{what} shows the password:\n{text}");
    }
}
