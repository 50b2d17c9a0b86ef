//! Why a worker's process ended, with real processes: `last_exit.reason`
//! and the `crashes` counter in status, the LAST EXIT column of `lrpmctl
//! status`, and lrpm's log line. A crash (an exit, a signal lrpm did not
//! send, a missing binary, a watchdog or a health check that failed) is
//! counted; a deliberate restart (an update, an operator's restart) is not.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Lrpm, job_in, signal};

const LONG: Duration = Duration::from_secs(30);

fn field<'a>(status: &'a Value, id: &str, key: &str) -> &'a Value {
    job_in(status, id).map_or(&Value::Null, |j| &j[key])
}

fn reason<'a>(status: &'a Value, id: &str) -> &'a Value {
    &field(status, id, "last_exit")["reason"]
}

fn crashes(status: &Value, id: &str) -> u64 {
    field(status, id, "crashes").as_u64().unwrap_or(0)
}

/// `lrpmctl status`'s table row of job `id`.
fn table_row(lrpm: &Lrpm, id: &str) -> String {
    let out = lrpm.ctl(&["--color", "never", "status"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no row for {id}: {out:?}"))
        .to_owned()
}

#[test]
fn exits_signals_and_missing_binaries_are_crashes_with_their_reason() {
    let config = json!({
        "code": {"name": "code", "command": "sleep 0.2; exit 3"},
        "missing": {"name": "missing", "command": ["/nonexistent/lrpm-no-such-binary"]},
        "sig": {"name": "sig", "command": ["sleep", "1000"]},
    });
    let lrpm = Lrpm::start("jobs.json", &config.to_string(), &[]);
    let pid = lrpm.running_pid("sig");
    signal(pid, rustix::process::Signal::KILL);
    let s = lrpm.wait_for("three crashes", LONG, |s| {
        ["code", "missing", "sig"]
            .iter()
            .all(|id| crashes(s, id) >= 1)
            && reason(s, "sig") == "signal"
    });
    let exit = |id| field(&s, id, "last_exit");
    assert_eq!(reason(&s, "code"), "exit", "{s:#}");
    assert_eq!(exit("code")["code"], 3, "{s:#}");
    assert_eq!(reason(&s, "missing"), "spawn-failed", "{s:#}");
    let error = exit("missing")["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("/nonexistent/lrpm-no-such-binary") && error.contains("No such file"),
        "{s:#}"
    );
    assert_eq!(exit("sig")["signal"], 9, "{s:#}");
    assert_eq!(field(&s, "sig", "crashes"), 1, "{s:#}");
    // Killed after a short run: it waits out its backoff.
    assert_eq!(field(&s, "sig", "state"), "backoff", "{s:#}");

    assert!(table_row(&lrpm, "code").contains("exit 3"));
    assert!(table_row(&lrpm, "missing").contains("spawn-failed"));
    assert!(table_row(&lrpm, "sig").contains("SIGKILL"));
    let log = lrpm.stderr();
    assert!(
        log.contains("exited with code 3 too soon; restarting in"),
        "{log}"
    );
    assert!(
        log.contains("killed by SIGKILL too soon; restarting in"),
        "{log}"
    );
}

#[test]
fn an_update_or_an_operators_restart_is_not_a_crash() {
    let job = |name: &str| json!({"a": {"name": name, "command": ["sleep", "1000"]}});
    let lrpm = Lrpm::start("jobs.json", &job("one").to_string(), &[]);
    let first = lrpm.running_pid("a");
    lrpm.write_config(&job("two").to_string());
    let s = lrpm.wait_for("the update's restart", LONG, |s| {
        field(s, "a", "name") == "two" && field(s, "a", "state") == "running"
    });
    assert_ne!(field(&s, "a", "pid"), first, "{s:#}");
    assert_eq!(reason(&s, "a"), "stopped", "{s:#}");
    assert_eq!(field(&s, "a", "last_exit")["signal"], 15, "{s:#}");
    assert_eq!(field(&s, "a", "crashes"), 0, "{s:#}");
    assert!(table_row(&lrpm, "a").contains("stopped"));

    let out = lrpm.ctl(&["restart", "a"]);
    assert!(out.status.success(), "{out:?}");
    let s = lrpm.wait_for("the operator's restart", LONG, |s| {
        field(s, "a", "restarts") == 2 && field(s, "a", "state") == "running"
    });
    assert_eq!(reason(&s, "a"), "stopped", "{s:#}");
    assert_eq!(field(&s, "a", "crashes"), 0, "{s:#}");
    let log = lrpm.stderr();
    assert_eq!(
        log.matches("stopped (killed by SIGTERM)").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("restarting"), "no crash was logged: {log}");
}

#[test]
fn a_hung_or_unhealthy_worker_is_a_crash_with_its_reason() {
    let job = |extra: Value| {
        let mut job = json!({
            "name": "w",
            "command": ["sleep", "1000"],
            "shortRunTimeSeconds": 0,
            "shutdownTimeoutSeconds": 1,
        });
        for (k, v) in extra.as_object().expect("a map") {
            job[k] = v.clone();
        }
        job
    };
    let config = json!({
        "hung": job(json!({"watchdogSeconds": 0.5})),
        "sick": job(json!({"healthCheck": {"command": ["false"], "intervalSeconds": 0.3,
            "retries": 1}})),
    });
    let lrpm = Lrpm::start("jobs.json", &config.to_string(), &[]);
    let s = lrpm.wait_for("both restarted as crashes", LONG, |s| {
        reason(s, "hung") == "watchdog" && reason(s, "sick") == "unhealthy"
    });
    for id in ["hung", "sick"] {
        assert!(crashes(&s, id) >= 1, "{s:#}");
        assert!(field(&s, id, "restarts").as_u64() >= Some(1), "{s:#}");
        assert_eq!(field(&s, id, "last_exit")["signal"], 15, "{s:#}");
    }
    assert!(table_row(&lrpm, "hung").contains("watchdog"));
    let log = lrpm.stderr();
    assert!(
        log.contains("watchdog (killed by SIGTERM); restarting"),
        "{log}"
    );
    assert!(
        log.contains("unhealthy (killed by SIGTERM); restarting"),
        "{log}"
    );
}
