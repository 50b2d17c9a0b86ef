//! Library mode: binaries built from the `lrpm` crate (the `mock` and
//! `faults` examples), whose Rust workers and configuration source run in
//! sandbox processes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    Lrpm, children_but_the_guardian, job_in, lrpm_binary, pid_alive, pid_of, wait_until,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

/// An example binary of this package, built (or found up to date) by cargo
/// first: `cargo test` builds the examples, but a run of this test target
/// alone does not. The build asks for what `.ci/run` builds before the
/// tests (the whole workspace, every target): a narrower selection would
/// resolve the dependencies' features differently and rebuild them from
/// inside a test, which under load outlasted the test's time limit.
///
/// Nor may the build see the variables cargo sets for a test
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`…): ring's build script asks to
/// be run again when they change, and cargo compares them with its own
/// environment, where they are unset. Inherited, they made this build
/// rebuild ring and all that depends on it, lrpm included (a minute or
/// more on a loaded machine, in each library test), and the next build
/// outside the tests rebuild them back.
fn example(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if set_by_cargo_for_a_test(key) {
            command.env_remove(key);
        }
    }
    let built = command
        .args(["build", "--quiet", "--workspace", "--all-targets"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(built.success(), "cargo build --example {name} failed");
    lrpm_binary()
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name)
}

/// Whether cargo sets the environment variable `key` for the test it runs
/// (<https://doc.rust-lang.org/cargo/reference/environment-variables.html>),
/// as opposed to what configures cargo itself (`CARGO_HOME`,
/// `CARGO_TARGET_DIR`, `CARGO_BUILD_*`…), which the build must keep.
fn set_by_cargo_for_a_test(key: &str) -> bool {
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_BIN_EXE_", "CARGO_CFG_"];
    const NAMES: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    NAMES.contains(&key) || PREFIXES.iter().any(|prefix| key.starts_with(prefix))
}

/// Starts the `faults` example with its source reading `source_text`.
fn faults(source_text: &str, args: &[&str]) -> Lrpm {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    let source = dir.path().join("source.json");
    std::fs::write(&source, source_text).expect("write the source");
    let mut command = Command::new(example("faults"));
    command
        .env("LRPM_FAULTS_SOURCE", &source)
        .arg("--socket")
        .arg(&socket)
        .args(args);
    Lrpm::spawn_in(dir, socket, source, command).expect("the faults example starts")
}

fn restarts(status: &Value, id: &str) -> u64 {
    job_in(status, id)
        .and_then(|j| j["restarts"].as_u64())
        .unwrap_or_else(|| panic!("no job {id}"))
}

#[test]
fn the_mock_example_restarts_42_on_every_poll_and_never_23_or_33() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    let mut command = Command::new(example("mock"));
    command
        .arg("--socket")
        .arg(&socket)
        .args(["--interval", "1"]);
    let lrpm = Lrpm::spawn_in(dir, socket, PathBuf::new(), command).expect("mock starts");
    let status = lrpm.wait_for("42 restarted three times", LONG, |s| {
        job_in(s, "42").is_some_and(|j| j["restarts"].as_u64() >= Some(3))
    });
    assert_eq!(restarts(&status, "23"), 0);
    assert_eq!(restarts(&status, "33"), 0);
    for id in ["23", "33", "42"] {
        let job = job_in(&status, id).expect("job");
        assert_eq!(job["command"], "worker MockWorker");
    }
    assert_eq!(
        status["supervisor"]["source"]["uri"],
        "built-in configuration source"
    );
    assert!(lrpm.stdout().contains("[23] MockWorker initialized"));
    assert!(lrpm.stdout().contains("[42] MockWorker cycle"));
}

#[test]
fn a_worker_gets_its_config_and_a_panicking_one_backs_off() {
    let lrpm = faults(
        r#"{"ok": {"name": "ok", "workerClass": "Sleeper", "workerConfig": {"queue": "q"}},
            "boom": {"name": "boom", "workerClass": "Panicker"},
            "nostart": {"name": "nostart", "workerClass": "FailsToStart"}}"#,
        &[],
    );
    lrpm.running_pid("ok");
    wait_for_output(&lrpm, r#"[ok] started with {"queue":"q"}"#);
    let status = lrpm.wait_for("both failing workers in backoff, twice", LONG, |s| {
        ["boom", "nostart"].iter().all(|id| {
            job_in(s, id)
                .is_some_and(|j| j["state"] == "backoff" && j["restarts"].as_u64() >= Some(1))
        })
    });
    let boom = job_in(&status, "boom").expect("boom");
    assert_eq!(boom["last_exit"]["code"], 101, "a panic exits 101");
    assert!(boom["backoff_seconds"].as_f64() >= Some(2.0));
    assert_eq!(
        job_in(&status, "nostart").expect("nostart")["last_exit"]["code"],
        1
    );
    assert!(lrpm.stderr().contains("the worker panics on purpose"));
    assert!(
        lrpm.stderr()
            .contains("cannot connect to the queue (on purpose)")
    );
}

/// Waits until lrpm's stdout holds `text`.
fn wait_for_output(lrpm: &Lrpm, text: &str) {
    let deadline = Instant::now() + LONG;
    while !lrpm.stdout().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in stdout:\n{}",
            lrpm.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_that_ignores_shutdown_between_long_cycles_is_killed() {
    let lrpm = faults(
        r#"{"s": {"name": "s", "workerClass": "Stubborn", "shutdownTimeoutSeconds": 1}}"#,
        &["--interval", "3600"],
    );
    let pid = lrpm.running_pid("s");
    wait_for_output(&lrpm, "[s] stubborn started");
    std::fs::write(&lrpm.config, "{}").expect("write");
    let asked = Instant::now();
    lrpm.ctl(&["reload"]);
    lrpm.wait_for("s gone", LONG, |s| job_in(s, "s").is_none());
    let took = asked.elapsed();
    assert!(!pid_alive(pid));
    assert!(took >= Duration::from_millis(900), "killed after {took:?}");
    // The log line comes through lrpm's log thread and this test's reader
    // of its stderr, which may lag behind the status on a loaded machine:
    // waited for, not looked at once.
    wait_until("the SIGKILL in lrpm's log", LONG, || {
        lrpm.stderr().contains("killed by SIGKILL")
    });
}

#[test]
fn a_source_that_fails_panics_or_hangs_never_stops_the_farm() {
    let good = r#"{"a": {"name": "a", "workerClass": "Sleeper"}}"#;
    let lrpm = faults(good, &["--interval", "1", "--source-timeout", "1"]);
    let pid = lrpm.running_pid("a");
    let error = |s: &Value| {
        s["supervisor"]["source"]["last_error"]
            .as_str()
            .map(str::to_owned)
    };
    for (fault, expected) in [
        ("error", "the source fails on purpose"),
        ("panic", "exited with code 101"),
        ("hang", "sent no configuration for 2s"),
    ] {
        std::fs::write(&lrpm.config, fault).expect("write");
        let status = lrpm.wait_for(&format!("the {fault} to show"), LONG, |s| {
            error(s).is_some_and(|e| e.contains(expected))
        });
        assert_eq!(
            job_in(&status, "a").and_then(pid_of),
            Some(pid),
            "the farm runs on after a source {fault}"
        );
        std::fs::write(&lrpm.config, good).expect("write");
        lrpm.wait_for("the source to recover", LONG, |s| error(s).is_none());
    }
    // A job the source declares invalid is reported; the others run.
    std::fs::write(
        &lrpm.config,
        r#"{"a": {"name": "a", "workerClass": "Sleeper"},
            "b": {"name": "b", "workerClass": "Sleeper", "shortRunTimeSeconds": "x"},
            "c": {"name": "c", "workerClass": "NoSuchWorker"}}"#,
    )
    .expect("write");
    let status = lrpm.wait_for("b and c reported", LONG, |s| {
        let invalid = &s["supervisor"]["source"]["invalid_jobs"];
        invalid["b"].is_string() && invalid["c"].is_string()
    });
    let invalid = &status["supervisor"]["source"]["invalid_jobs"];
    assert!(
        invalid["b"]
            .as_str()
            .is_some_and(|r| r.contains("shortRunTimeSeconds"))
    );
    assert!(
        invalid["c"]
            .as_str()
            .is_some_and(|r| r.contains("no worker is registered as \"NoSuchWorker\"")),
        "{invalid}"
    );
    assert!(pid_alive(pid));
}

#[test]
fn reload_makes_the_source_load_at_once() {
    let lrpm = faults(
        r#"{"a": {"name": "a", "workerClass": "Sleeper"}}"#,
        &["--interval", "3600"],
    );
    lrpm.running_pid("a");
    std::fs::write(
        &lrpm.config,
        r#"{"a": {"name": "a", "workerClass": "Sleeper"}, "b": {"name": "b", "workerClass": "Sleeper"}}"#,
    )
    .expect("write");
    let asked = Instant::now();
    let out = lrpm.ctl(&["reload"]);
    assert!(out.status.success());
    lrpm.running_pid("b");
    assert!(asked.elapsed() < Duration::from_secs(10));
    let loads = std::fs::read_to_string(lrpm.config.with_extension("json.loads")).expect("loads");
    assert_eq!(loads.lines().count(), 2, "one load at start, one on reload");
}

/// The targets of a process's descriptors from 3 up (`pipe:[…]`,
/// `socket:[…]`, `anon_inode:[pidfd]`…), with their inode where they have
/// one, so that two processes sharing an open file show the same target.
fn fd_targets(pid: u32, from: u32) -> BTreeSet<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: u32 = e.file_name().to_str()?.parse().ok()?;
        (fd >= from)
            .then(|| std::fs::read_link(e.path()).ok())??
            .to_str()
            .map(str::to_owned)
    })
    .collect()
}

#[test]
fn sandbox_processes_inherit_no_descriptor_of_the_supervisor() {
    let lrpm = faults(
        r#"{"a": {"name": "a", "workerClass": "Sleeper"}}"#,
        &["--interval", "3600"],
    );
    lrpm.running_pid("a");
    // Its guardian holds a pidfd (of lrpm) and a socket of its own.
    let kids = children_but_the_guardian(lrpm.pid());
    assert_eq!(kids.len(), 2, "the worker and the configuration sandbox");
    let supervisor = fd_targets(lrpm.pid(), 0);
    assert!(
        supervisor.iter().any(|t| t.contains("pidfd")),
        "the supervisor holds pidfds: {supervisor:?}"
    );
    for kid in kids {
        // Files opened by path (a shared library, /dev/null) may well be
        // open in both; a shared pipe, socket or pidfd would be inherited.
        let shared: Vec<String> = fd_targets(kid, 3)
            .intersection(&supervisor)
            .filter(|t| !t.starts_with('/'))
            .cloned()
            .collect();
        assert!(shared.is_empty(), "process {kid} inherited {shared:?}");
    }
}

#[test]
fn the_plain_lrpm_binary_refuses_worker_classes() {
    let lrpm = Lrpm::start(
        "jobs.json",
        r#"{"w": {"name": "w", "workerClass": "MockWorker"}, "c": {"name": "c", "command": ["sleep", "1000"]}}"#,
        &[],
    );
    lrpm.running_pid("c");
    let status = lrpm.status();
    let reason = status["supervisor"]["source"]["invalid_jobs"]["w"]
        .as_str()
        .expect("w is invalid");
    assert!(reason.starts_with("workerClass: "), "{reason}");
    assert!(job_in(&status, "w").is_none());
}
