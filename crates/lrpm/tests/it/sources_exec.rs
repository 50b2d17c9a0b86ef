//! The `exec:` source with real commands: polled and streaming, each failure
//! mode (the farm keeps running and the error shows in status), timeouts
//! that kill a whole process group, restarts, reloads, and the PHP bridge of
//! `examples/php` under a real `php`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{
    Lrpm, job_in, jobs, lrpm_command, pid_alive, pid_of, prerequisite, run_bounded, signal,
    source_error, wait_for_value, wait_until,
};

const LONG: Duration = Duration::from_secs(30);

/// Starts lrpm on `source` with `args` and the environment `env`, in a
/// fresh temp dir that is also its working directory, after writing `files`
/// there (a name ending in `.sh` is made executable).
fn start(source: &str, args: &[&str], env: &[(&str, &str)], files: &[(&str, &str)]) -> Lrpm {
    let dir = tempfile::tempdir().expect("create a temp dir");
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write a file");
        if name.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    let config = dir.path().join("jobs.json");
    Lrpm::start_in(dir, config, |command| {
        command.envs(env.iter().copied()).args(args).arg(source);
    })
}

/// Replaces a file in lrpm's directory atomically.
fn put(lrpm: &Lrpm, name: &str, text: &str) {
    let path = lrpm.dir.path().join(name);
    let tmp = lrpm.dir.path().join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
}

fn path(lrpm: &Lrpm, name: &str) -> PathBuf {
    lrpm.dir.path().join(name)
}

/// The line of lrpm's log that reports a source error containing `text`,
/// once there is one: an error that lasts only until the command's next run
/// delivers may come and go between two looks at the status.
fn wait_for_logged_error(lrpm: &Lrpm, text: &str) -> String {
    wait_for_value(&format!("a logged source error {text:?}"), LONG, || {
        lrpm.stderr()
            .lines()
            .find(|l| l.contains("configuration source failed") && l.contains(text))
            .map(str::to_owned)
    })
}

/// The pids written to a file, one a line, once there are at least `n`.
fn pids(file: &Path, n: usize) -> Vec<u32> {
    let read = || -> Vec<u32> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    wait_until(&format!("{n} pids in {}", file.display()), LONG, || {
        read().len() >= n
    });
    read()
}

#[test]
fn a_polled_command_is_followed_and_its_stderr_is_logged() {
    let lrpm = start(
        "exec:sh -c 'echo \"reading jobs\" >&2; cat jobs.json'",
        &["-i", "1"],
        &[],
        &[("jobs.json", &jobs(&["a"]))],
    );
    let a = lrpm.running_pid("a");
    put(&lrpm, "jobs.json", &jobs(&["a", "b"]));
    let b = lrpm.running_pid("b");
    assert_eq!(lrpm.running_pid("a"), a, "an unchanged job keeps running");
    put(&lrpm, "jobs.json", &jobs(&["b"]));
    lrpm.wait_for("job a removed", LONG, |s| job_in(s, "a").is_none());
    assert_eq!(lrpm.running_pid("b"), b);
    assert!(
        lrpm.stderr().contains("[exec:sh] reading jobs"),
        "{}",
        lrpm.stderr()
    );
    assert_eq!(source_error(&lrpm.status()), None);
}

#[test]
fn every_failure_of_a_polled_command_keeps_the_farm() {
    let script = r#"#!/bin/sh
ulimit -c 0
case "$(cat mode)" in
  ok) cat jobs.json ;;
  fail) echo "database is down" >&2; exit 3 ;;
  garbage) echo "this is not json" ;;
  list) echo "[1, 2]" ;;
  empty) ;;
  crash) kill -SEGV $$ ;;
  huge) head -c 70000000 /dev/zero ;;
  binary) printf '\377\376\n' ;;
esac
"#;
    let lrpm = start(
        "exec:./source.sh",
        &["-i", "1"],
        &[],
        &[
            ("source.sh", script),
            ("mode", "ok"),
            ("jobs.json", &jobs(&["a"])),
        ],
    );
    let a = lrpm.running_pid("a");
    let cases = [
        ("fail", "exited with code 3 (stderr: database is down)"),
        ("garbage", "cannot parse"),
        ("list", "top level must be a map"),
        ("empty", "printed no configuration"),
        ("crash", "killed by SIGSEGV"),
        ("huge", "larger than 64 MiB"),
        ("binary", "not UTF-8"),
    ];
    for (mode, expected) in cases {
        put(&lrpm, "mode", mode);
        let error = lrpm.wait_for_source_error(expected);
        assert!(error.starts_with("exec:./source.sh: "), "{error}");
        let job = lrpm.job("a").expect("job a is still there");
        assert_eq!(job["state"], "running", "{mode}");
        assert_eq!(pid_of(&job), Some(a), "{mode}: job a was not restarted");
        put(&lrpm, "mode", "ok");
        lrpm.wait_for_no_source_error();
    }
    assert_eq!(lrpm.running_pid("a"), a);
}

#[test]
fn a_timeout_kills_the_commands_whole_process_group() {
    let script = r#"#!/bin/sh
if [ "$(cat mode)" = hang ]; then
  echo $$ > leader.pid
  sleep 120 &
  echo $! > grandchild.pid
  sleep 120
fi
cat jobs.json
"#;
    let lrpm = start(
        "exec:./source.sh",
        &["-i", "1", "--source-timeout", "2"],
        &[],
        &[
            ("source.sh", script),
            ("mode", "ok"),
            ("jobs.json", &jobs(&["a"])),
        ],
    );
    let a = lrpm.running_pid("a");
    put(&lrpm, "mode", "hang");
    let leader = pids(&path(&lrpm, "leader.pid"), 1)[0];
    let grandchild = pids(&path(&lrpm, "grandchild.pid"), 1)[0];
    let error = lrpm.wait_for_source_error("did not finish within 2s");
    assert!(error.contains("process group was killed"), "{error}");
    wait_until("the command and its grandchild to die", LONG, || {
        !pid_alive(leader) && !pid_alive(grandchild)
    });
    assert_eq!(lrpm.job("a").as_ref().and_then(pid_of), Some(a));
    put(&lrpm, "mode", "ok");
    lrpm.wait_for_no_source_error();
}

#[test]
fn what_a_finished_command_left_behind_is_killed_at_once() {
    // The background process keeps stdout open: without the group kill the
    // load would wait for it until the timeout.
    let lrpm = start(
        "exec:sh -c 'sleep 120 & echo $! >> background.pid; cat jobs.json'",
        &["-i", "3600", "--source-timeout", "60"],
        &[],
        &[("jobs.json", &jobs(&["a"]))],
    );
    lrpm.running_pid("a");
    let background = pids(&path(&lrpm, "background.pid"), 1)[0];
    wait_until("the background process to die", LONG, || {
        !pid_alive(background)
    });
    assert_eq!(source_error(&lrpm.status()), None);
}

#[test]
fn reload_and_sighup_run_a_polled_command_at_once() {
    let lrpm = start(
        "exec:cat jobs.json",
        &["-i", "3600"],
        &[],
        &[("jobs.json", &jobs(&["a"]))],
    );
    let a = lrpm.running_pid("a");
    put(&lrpm, "jobs.json", &jobs(&["a", "b"]));
    let out = lrpm.ctl(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    lrpm.running_pid("b");
    put(&lrpm, "jobs.json", &jobs(&["a", "c"]));
    signal(lrpm.pid(), rustix::process::Signal::HUP);
    lrpm.running_pid("c");
    lrpm.wait_for("job b removed", LONG, |s| job_in(s, "b").is_none());
    assert_eq!(lrpm.running_pid("a"), a);
}

#[test]
fn a_command_that_cannot_start_is_an_error_in_status() {
    let lrpm = start(
        "exec:/nonexistent/lrpm-source --flag",
        &["-i", "1"],
        &[],
        &[],
    );
    let error = lrpm.wait_for_source_error("cannot start it");
    assert!(error.contains("No such file or directory"), "{error}");
}

#[test]
fn malformed_exec_sources_are_usage_errors() {
    let cases: [&[&str]; 4] = [
        &["exec:"],
        &["exec:   "],
        &["exec:php 'unclosed"],
        &["--source-timeout", "0", "exec:cat jobs.json"],
    ];
    for args in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = lrpm_command();
        command
            .arg("--socket")
            .arg(dir.path().join("control.sock"))
            .args(args);
        let out = run_bounded(command, LONG);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
    }
}

/// A streaming command: prints jobs.json whenever it changes, and its pid
/// to `runs` when it starts.
const STREAMER: &str = r#"#!/bin/sh
echo $$ >> runs
last=
while :; do
  cur=$(cat jobs.json)
  if [ "$cur" != "$last" ]; then
    printf '%s\n' "$cur"
    last=$cur
  fi
  sleep 0.1
done
"#;

#[test]
fn a_streaming_command_pushes_each_change() {
    let lrpm = start(
        "exec:./stream.sh",
        &["-i", "0"],
        &[],
        &[("stream.sh", STREAMER), ("jobs.json", &jobs(&["a"]))],
    );
    let a = lrpm.running_pid("a");
    put(&lrpm, "jobs.json", &jobs(&["a", "b"]));
    lrpm.running_pid("b");
    put(&lrpm, "jobs.json", "not json at all");
    lrpm.wait_for_source_error("cannot parse");
    assert_eq!(lrpm.running_pid("a"), a);
    put(&lrpm, "jobs.json", &jobs(&["b"]));
    lrpm.wait_for("job a removed", LONG, |s| job_in(s, "a").is_none());
    lrpm.wait_for_no_source_error();
    assert_eq!(pids(&path(&lrpm, "runs"), 1).len(), 1, "one run did it all");
}

#[test]
fn a_streaming_command_that_dies_is_restarted_with_backoff() {
    let lrpm = start(
        "exec:./stream.sh",
        &["-i", "0"],
        &[],
        &[("stream.sh", STREAMER), ("jobs.json", &jobs(&["a"]))],
    );
    let a = lrpm.running_pid("a");
    let first = pids(&path(&lrpm, "runs"), 1)[0];
    signal(first, rustix::process::Signal::KILL);
    let error = wait_for_logged_error(&lrpm, "killed by SIGKILL; restarting in 1s");
    assert!(
        error.contains("keeping the last good configuration: exec:./stream.sh: "),
        "{error}"
    );
    let second = pids(&path(&lrpm, "runs"), 2)[1];
    assert_ne!(first, second);
    // Its first document is the configuration the farm already runs.
    lrpm.wait_for_no_source_error();
    assert_eq!(lrpm.running_pid("a"), a);
    // A second early death waits twice as long.
    signal(second, rustix::process::Signal::KILL);
    wait_for_logged_error(&lrpm, "killed by SIGKILL; restarting in 2s");
    pids(&path(&lrpm, "runs"), 3);
    lrpm.wait_for_no_source_error();
    // Changes still flow through the third run.
    put(&lrpm, "jobs.json", &jobs(&["a", "b"]));
    lrpm.running_pid("b");
    assert_eq!(lrpm.running_pid("a"), a);
}

#[test]
fn reload_restarts_a_streaming_command_and_shutdown_stops_it() {
    let mut lrpm = start(
        "exec:./stream.sh",
        &["-i", "0"],
        &[],
        &[("stream.sh", STREAMER), ("jobs.json", &jobs(&["a"]))],
    );
    let a = lrpm.running_pid("a");
    let first = pids(&path(&lrpm, "runs"), 1)[0];
    let out = lrpm.ctl(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let second = pids(&path(&lrpm, "runs"), 2)[1];
    wait_until("the first run to be stopped", LONG, || !pid_alive(first));
    assert!(pid_alive(second));
    assert_eq!(lrpm.running_pid("a"), a, "a reload restarts no job");
    assert_eq!(source_error(&lrpm.status()), None);
    let status = lrpm.terminate();
    assert!(status.success(), "{status:?}\n{}", lrpm.stderr());
    // SIGKILLed as lrpm ends: dead a moment later.
    wait_until("the command to die with lrpm", LONG, || !pid_alive(second));
}

// The PHP bridge (examples/php), under Debian's php-cli.

/// Whether `php` can be run: a prerequisite of the PHP tests, which
/// `.ci/run` installs.
fn php_available() -> bool {
    let found = Command::new("php")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    prerequisite("php (apt-get install php-cli)", found)
}

fn php_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/php")
}

/// `exec:php lrpm-source.php [--watch …] autoload.php 'App\ExampleConfigurationSource'`.
fn php_source(watch: Option<&str>) -> String {
    let example = php_example().canonicalize().expect("examples/php exists");
    let example = example.display();
    let watch = watch.map_or_else(String::new, |s| format!("--watch {s} "));
    format!(
        "exec:php '{example}/lrpm-source.php' {watch}'{example}/autoload.php' \
         'App\\ExampleConfigurationSource'"
    )
}

const QUEUES: &str = "[emails]\nmtime = 1700000000\nbatch = 10\n\n[reports]\nmtime = 1700000000\n";

#[test]
fn php_bridge_runs_an_existing_php_lrpm_configuration_source() {
    if !php_available() {
        return;
    }
    let mut lrpm = start(
        &php_source(None),
        &["-i", "1"],
        &[("EXAMPLE_QUEUES_FILE", "queues.ini")],
        &[("queues.ini", QUEUES)],
    );
    let emails = lrpm.running_pid("consumer-emails");
    let reports = lrpm.running_pid("consumer-reports");
    wait_until("the workers' first output", LONG, || {
        let out = lrpm.stdout();
        out.contains("[consumer-emails] consuming queue emails in batches of 10")
            && out.contains("[consumer-reports] consuming queue reports in batches of 1")
    });
    let job = lrpm.job("consumer-emails").expect("the job");
    assert_eq!(job["name"], "Consumer of queue emails");
    assert_eq!(job["mtime"], 1_700_000_000);

    // php-lrpm's rule: a job restarts when its mtime increases.
    put(
        &lrpm,
        "queues.ini",
        "[emails]\nmtime = 1700000100\nbatch = 20\n\n[reports]\nmtime = 1700000000\n\n[invoices]\nmtime = 1700000100\n",
    );
    lrpm.running_pid("consumer-invoices");
    lrpm.wait_for("consumer-emails restarted", LONG, |s| {
        job_in(s, "consumer-emails")
            .is_some_and(|j| j["state"] == "running" && pid_of(j).is_some_and(|pid| pid != emails))
    });
    wait_until("the new settings", LONG, || {
        lrpm.stdout()
            .contains("[consumer-emails] consuming queue emails in batches of 20")
    });
    assert_eq!(lrpm.running_pid("consumer-reports"), reports);

    // An exception in loadConfiguration() keeps the farm.
    put(&lrpm, "queues.ini", "[broken\n");
    let error = lrpm.wait_for_source_error("exited with code 1");
    assert!(error.contains("loadConfiguration() failed"), "{error}");
    assert_eq!(lrpm.running_pid("consumer-reports"), reports);

    // The workers stop gracefully on SIGTERM, as php-lrpm's did.
    let status = lrpm.terminate();
    assert!(status.success(), "{status:?}");
    let log = lrpm.stderr();
    assert!(
        log.matches("stopped (exited with code 0)").count() >= 3 && !log.contains("SIGKILL"),
        "every worker exits 0 on SIGTERM:\n{log}"
    );
}

#[test]
fn php_bridge_streams_changes_with_watch() {
    if !php_available() {
        return;
    }
    let lrpm = start(
        &php_source(Some("0.2")),
        &["-i", "0"],
        &[("EXAMPLE_QUEUES_FILE", "queues.ini")],
        &[("queues.ini", QUEUES)],
    );
    let reports = lrpm.running_pid("consumer-reports");
    put(&lrpm, "queues.ini", "[reports]\nmtime = 1700000000\n");
    lrpm.wait_for("consumer-emails removed", LONG, |s| {
        job_in(s, "consumer-emails").is_none()
    });
    assert_eq!(lrpm.running_pid("consumer-reports"), reports);
    assert_eq!(source_error(&lrpm.status()), None);
}
