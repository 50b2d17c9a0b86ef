//! The spec's "Supervision semantics", with real processes: each test runs
//! the `lrpm` binary on a configuration in a temp dir and watches its
//! workers through the control socket and the files they write.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Lrpm, all_running, is_root, job_in, jobs_in, loads, lrpm_command, pid_alive, pid_of,
    prerequisite, read_pid, run_bounded, signal, source_error, state_of, wait_until,
};

const LONG: Duration = Duration::from_secs(30);

/// The pid job `id`'s shell wrote to `pid` in lrpm's directory, once the
/// job runs.
fn written_pid(lrpm: &Lrpm, id: &str) -> u32 {
    lrpm.running_pid(id);
    read_pid(&lrpm.dir.path().join("pid"))
}

#[test]
fn workers_get_their_environment_and_working_directory() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let cwd = cwd.path().canonicalize().expect("canonical");
    let lrpm = Lrpm::start(
        "jobs.toml",
        &format!(
            r#"
[7]
name = "Seven"
command = "printf '%s|%s|%s|%s|%s' \"$LRPM_JOB_ID\" \"$LRPM_JOB_NAME\" \"$LRPM_WORKER_CONFIG\" \"$EXTRA\" \"$(pwd)\" > env.out; exec sleep 1000"
workerConfig = {{ queue = "q1", n = 2 }}
env = {{ EXTRA = "x y" }}
cwd = "{}"
"#,
            cwd.display()
        ),
        &[],
    );
    lrpm.running_pid("7");
    let out = cwd.join("env.out");
    wait_until("env.out", LONG, || {
        fs::read_to_string(&out).is_ok_and(|s| s.starts_with("7|"))
    });
    let text = fs::read_to_string(&out).expect("env.out");
    let fields: Vec<&str> = text.split('|').collect();
    assert_eq!(fields[0], "7");
    assert_eq!(fields[1], "Seven");
    let config: Value = serde_json::from_str(fields[2]).expect("worker config is JSON");
    assert_eq!(config, serde_json::json!({"queue": "q1", "n": 2}));
    assert_eq!(fields[3], "x y");
    assert_eq!(Path::new(fields[4]), cwd);
}

/// lrpm run as a job of another lrpm (as its copy 41): its own workers
/// get the variables of their own runs only, and a worker of a job without
/// `instances` no `LRPM_INSTANCE` at all.
#[test]
fn a_nested_lrpms_workers_see_their_own_run_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobs.toml");
    let out = dir.path().join("env.out");
    fs::write(
        &config,
        format!(
            "[w]\nname = \"w\"\ncommand = \"env > '{}'; exec sleep 1000\"\n",
            out.display()
        ),
    )
    .expect("config");
    let source = config.clone();
    let lrpm = Lrpm::start_in(dir, config, move |command| {
        command
            .env("LRPM_RUN_ID", "1.7")
            .env("LRPM_JOB_ID", "outer")
            .env("LRPM_INSTANCE", "41")
            .arg(&source);
    });
    lrpm.running_pid("w");
    wait_until("env.out", LONG, || {
        fs::read_to_string(&out).is_ok_and(|s| s.contains("LRPM_JOB_ID="))
    });
    let env = fs::read_to_string(&out).expect("env.out");
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
    };
    assert_eq!(var("LRPM_JOB_ID"), Some("w"), "{env}");
    assert_eq!(var("LRPM_INSTANCE"), None, "{env}");
    let run = var("LRPM_RUN_ID").expect("a run id");
    assert!(run.starts_with(&format!("{}.", lrpm.pid())), "{env}");
}

#[test]
fn a_job_can_run_as_another_user() {
    if !prerequisite("root, to switch identities", is_root()) {
        return;
    }
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[n]\nname = \"n\"\ncommand = \"echo ids $(id -u):$(id -g):$(id -G); exec sleep 1000\"\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
        &[],
    );
    lrpm.running_pid("n");
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("nss")
        .expect("nobody exists");
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .expect("nss")
        .expect("nogroup exists");
    wait_until("the ids", LONG, || lrpm.stdout().contains("[n] ids"));
    let line = lrpm
        .stdout()
        .lines()
        .find(|l| l.starts_with("[n] ids"))
        .map(str::to_owned)
        .expect("line");
    assert_eq!(
        line,
        format!("[n] ids {}:{}:{}", nobody.uid, nogroup.gid, nogroup.gid),
        "uid, gid and no supplementary group of root's"
    );
    // An unknown user is a start failure, retried with backoff.
    lrpm.write_config("[u]\nname = \"u\"\ncommand = [\"true\"]\nuser = \"no-such-user-lrpm\"\n");
    let status = lrpm.wait_for("the start failure", LONG, |s| {
        job_in(s, "u").is_some_and(|j| j["state"] == "backoff")
    });
    let error = job_in(&status, "u").expect("u")["last_exit"]["error"].clone();
    assert!(
        error
            .as_str()
            .is_some_and(|e| e.contains("no-such-user-lrpm")),
        "{error}"
    );
}

#[test]
fn workers_inherit_no_descriptor_but_stdio() {
    let lrpm = Lrpm::start(
        "jobs.json",
        r#"{"fds": {"name": "fds", "command": ["sleep", "1000"]}}"#,
        &[],
    );
    // The worker's own descriptors, read from outside: a shell listing its
    // own would race with the pipes of its pipeline. `sleep` itself opens
    // its locale's files for a moment as it starts, so the test waits for
    // it to settle; an inherited descriptor would stay open for good.
    let pid = lrpm.running_pid("fds");
    let fds = || {
        let mut fds: Vec<(u32, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd")
            .filter_map(|e| {
                let e = e.ok()?;
                let target = fs::read_link(e.path()).ok()?.display().to_string();
                Some((e.file_name().to_str()?.parse().ok()?, target))
            })
            .collect();
        fds.sort_unstable();
        fds
    };
    let deadline = Instant::now() + LONG;
    let mut seen = fds();
    while seen.len() != 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        seen = fds();
    }
    let numbers: Vec<u32> = seen.iter().map(|(fd, _)| *fd).collect();
    assert_eq!(numbers, [0, 1, 2], "inherited descriptors: {seen:?}");
}

#[test]
fn worker_output_is_forwarded_line_by_line_with_the_job_id() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        r#"
[talker]
name = "talker"
command = "echo out-line; echo err-line >&2; printf 'no newline'; exec sleep 1000"
"#,
        &[],
    );
    lrpm.running_pid("talker");
    wait_until("forwarded output", LONG, || {
        lrpm.stdout().contains("[talker] out-line") && lrpm.stderr().contains("[talker] err-line")
    });
}

#[test]
fn a_crashed_long_running_worker_is_restarted_at_once() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[w]\nname = \"w\"\ncommand = [\"sleep\", \"1000\"]\nshortRunTimeSeconds = 0\n",
        &[],
    );
    let first = lrpm.running_pid("w");
    let killed_at = Instant::now();
    signal(first, rustix::process::Signal::KILL);
    let status = lrpm.wait_for("a new process", LONG, |s| {
        job_in(s, "w").and_then(pid_of).is_some_and(|p| p != first)
    });
    let elapsed = killed_at.elapsed();
    let job = job_in(&status, "w").expect("job");
    assert_eq!(job["restarts"], 1);
    assert_eq!(job["last_exit"]["signal"], 9);
    // The benchmark measures milliseconds; this only proves that lrpm does
    // not wait for a tick or a backoff (of a second at least), timed by
    // lrpm's own clock so that a slow test thread cannot fail it.
    let gap = job["started_at"].as_f64().expect("started_at")
        - job["last_exit"]["at"].as_f64().expect("exit time");
    assert!(
        (0.0..0.5).contains(&gap),
        "restarted {gap} s after the exit"
    );
    assert!(elapsed < Duration::from_secs(5), "restart took {elapsed:?}");
}

#[test]
fn short_runs_are_restarted_with_exponential_backoff() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[f]\nname = \"f\"\ncommand = \"date +%s.%N >> starts; date +%s.%N >> ends; exit 3\"\n",
        &[],
    );
    let (starts, ends) = (lrpm.dir.path().join("starts"), lrpm.dir.path().join("ends"));
    // Starts at about 0 s, 1 s and 3 s; the next would be at 7 s.
    wait_until("three starts", LONG, || {
        fs::read_to_string(&starts).is_ok_and(|s| s.lines().count() >= 3)
    });
    // lrpm's decisions, from its log: 1 s, then twice that.
    wait_until("the first two backoffs in the log", LONG, || {
        let log = lrpm.stderr();
        log.contains("too soon; restarting in 1s") && log.contains("too soon; restarting in 2s")
    });
    let times = |path: &Path| -> Vec<f64> {
        fs::read_to_string(path)
            .expect("times")
            .lines()
            .map(|l| l.parse().expect("time"))
            .collect()
    };
    let (started, ended) = (times(&starts), times(&ends));
    // Each run started at least its backoff after the previous one's last
    // line (written before its exit), whatever the machine's load: a
    // restart at once fails both. The bound above is loose (3 s more, room
    // for a loaded machine's exit, spawn and start of `sh`): the delays
    // themselves are lrpm's decisions above.
    let gap1 = started[1] - ended[0];
    let gap2 = started[2] - ended[1];
    assert!((0.99..4.0).contains(&gap1), "first backoff {gap1}");
    assert!((1.99..5.0).contains(&gap2), "second backoff {gap2}");
    let status = lrpm.status();
    let job = job_in(&status, "f").expect("job");
    assert_eq!(job["last_exit"]["code"], 3);
    assert!(job["backoff_seconds"].as_f64() >= Some(4.0));
}

#[test]
fn a_worker_that_ignores_sigterm_is_killed_after_its_timeout() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        r#"
[stubborn]
name = "stubborn"
command = "trap '' TERM; echo $$ > pid; while true; do sleep 0.1; done"
shutdownTimeoutSeconds = 1.5
"#,
        &[],
    );
    let pid = written_pid(&lrpm, "stubborn");
    let removed_at = Instant::now();
    lrpm.write_config("# no jobs\n");
    wait_until("SIGKILL", LONG, || !pid_alive(pid));
    // SIGTERM was ignored: the worker lived on until its timeout.
    let took = removed_at.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "killed too early: {took:?}"
    );
    lrpm.wait_for("job forgotten", LONG, |s| job_in(s, "stubborn").is_none());
    assert!(lrpm.stderr().contains("killed by SIGKILL"));
}

#[test]
fn a_custom_stop_signal_is_used() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        r#"
[polite]
name = "polite"
command = "trap 'echo got-int; exit 0' INT; trap '' TERM; echo ready; while true; do sleep 0.1; done"
stopSignal = "SIGINT"
"#,
        &[],
    );
    lrpm.running_pid("polite");
    // Stop it only once its traps are set.
    wait_until("the traps", LONG, || {
        lrpm.stdout().contains("[polite] ready")
    });
    lrpm.write_config("# no jobs\n");
    lrpm.wait_for("job gone", LONG, |s| job_in(s, "polite").is_none());
    wait_until("the INT trap's output", LONG, || {
        lrpm.stdout().contains("[polite] got-int")
    });
}

#[test]
fn a_stopped_worker_gets_sigcont_and_handles_its_stop_signal_before_the_timeout() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        r#"
[frozen]
name = "frozen"
command = "trap 'echo got-term; exit 0' TERM; echo $$ > pid; kill -STOP $$; while true; do sleep 0.1; done"
shutdownTimeoutSeconds = 30
"#,
        &[],
    );
    let pid = written_pid(&lrpm, "frozen");
    wait_until("the worker to stop itself", LONG, || {
        state_of(pid) == Some('T')
    });
    let removed_at = Instant::now();
    lrpm.write_config("# no jobs\n");
    lrpm.wait_for("job gone", LONG, |s| job_in(s, "frozen").is_none());
    let took = removed_at.elapsed();
    // Without SIGCONT it would sit stopped until the SIGKILL, 30 s later.
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    wait_until("the TERM trap's output", LONG, || {
        lrpm.stdout().contains("[frozen] got-term")
    });
    assert!(
        !lrpm.stderr().contains("killed by SIGKILL"),
        "{}",
        lrpm.stderr()
    );
}

#[test]
fn a_workers_grandchildren_die_with_it() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        r#"
[stopped]
name = "stopped"
command = "sleep 1000 & echo $! > stopped.grandchild; exec sleep 1000"

[crashing]
name = "crashing"
command = "sleep 1000 & echo $! > crashing.grandchild; sleep 0.3; exit 1"
"#,
        &[],
    );
    let dir = lrpm.dir.path();
    let stopped = read_pid(&dir.join("stopped.grandchild"));
    let crashing = read_pid(&dir.join("crashing.grandchild"));
    // A worker that exits on its own takes its process group along.
    wait_until("the crashed worker's grandchild to die", LONG, || {
        !pid_alive(crashing)
    });
    // A worker that is stopped too.
    assert!(pid_alive(stopped));
    lrpm.write_config("# no jobs\n");
    wait_until("the stopped worker's grandchild to die", LONG, || {
        !pid_alive(stopped)
    });
}

#[test]
fn sigkill_of_lrpm_leaves_no_worker_alive() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n[b]\nname = \"b\"\ncommand = \"trap '' TERM; exec sleep 1000\"\n",
        &[],
    );
    let a = lrpm.running_pid("a");
    let b = lrpm.running_pid("b");
    signal(lrpm.pid(), rustix::process::Signal::KILL);
    wait_until("workers to die with lrpm", LONG, || {
        !pid_alive(a) && !pid_alive(b)
    });
}

#[test]
fn a_garbage_file_keeps_the_farm_and_shows_the_error() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n",
        &[],
    );
    let pid = lrpm.running_pid("a");
    lrpm.write_config("[a\nthis is not toml ===");
    let status = lrpm.wait_for("the source error", LONG, |s| source_error(s).is_some());
    let error = source_error(&status).expect("error");
    assert!(error.contains("jobs.toml"), "{error}");
    assert_eq!(job_in(&status, "a").and_then(pid_of), Some(pid));
    assert!(pid_alive(pid));
    // Top level not a map: also unreadable, also harmless.
    let status = lrpm.wait_for_load_after(|| lrpm.write_config("a = 1\n"));
    assert_eq!(job_in(&status, "a").and_then(pid_of), Some(pid), "{status}");
    // Repaired: the error clears, nothing restarts.
    lrpm.write_config("[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n");
    let status = lrpm.wait_for("the error to clear", LONG, |s| {
        s["supervisor"]["source"]["last_error"].is_null()
    });
    assert_eq!(job_in(&status, "a").and_then(pid_of), Some(pid));
}

#[test]
fn an_invalid_job_does_not_hold_back_the_valid_ones() {
    let lrpm = Lrpm::start(
        "jobs.yaml",
        r#"
good:
  name: good
  command: [sleep, "1000"]
bad:
  name: bad
  command: [sleep, "1000"]
  shortRunTimeSeconds: -1
"#,
        &[],
    );
    lrpm.running_pid("good");
    let status = lrpm.status();
    let reason = status["supervisor"]["source"]["invalid_jobs"]["bad"]
        .as_str()
        .expect("bad is reported");
    assert!(reason.contains("shortRunTimeSeconds"), "{reason}");
    assert!(job_in(&status, "bad").is_none());
    assert!(lrpm.stderr().contains("bad"));
}

#[test]
fn a_running_job_whose_declaration_turns_invalid_keeps_running() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n",
        &[],
    );
    let pid = lrpm.running_pid("a");
    lrpm.write_config(
        "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\nshutdownTimeoutSeconds = \"soon\"\n",
    );
    let status = lrpm.wait_for("the invalid declaration", LONG, |s| {
        s["supervisor"]["source"]["invalid_jobs"]["a"].is_string()
    });
    let job = job_in(&status, "a").expect("a still supervised");
    assert_eq!(pid_of(job), Some(pid));
    assert!(
        job["invalid"]
            .as_str()
            .is_some_and(|r| r.contains("shutdownTimeoutSeconds"))
    );
}

#[test]
fn edits_are_picked_up_atomic_rename_and_in_place() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n",
        // Only inotify can pick these up within the test's time.
        &["--interval", "3600"],
    );
    let a = lrpm.running_pid("a");
    // An editor's atomic rename adds a job.
    lrpm.write_config(
        "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n[b]\nname = \"b\"\ncommand = [\"sleep\", \"1001\"]\n",
    );
    lrpm.running_pid("b");
    // An in-place write changes one: it restarts, the other does not.
    fs::write(
        &lrpm.config,
        "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n[b]\nname = \"b\"\ncommand = [\"sleep\", \"1002\"]\n",
    )
    .expect("write");
    let status = lrpm.wait_for("b restarted with its new command", LONG, |s| {
        job_in(s, "b").is_some_and(|j| j["command"] == "sleep 1002" && j["state"] == "running")
    });
    assert_eq!(
        job_in(&status, "a").and_then(pid_of),
        Some(a),
        "a is unchanged"
    );
    // Removing it stops it.
    lrpm.write_config("[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n");
    lrpm.wait_for("b removed", LONG, |s| job_in(s, "b").is_none());
}

#[test]
fn a_change_is_delivered_once_and_a_reload_delivers_even_an_unchanged_file() {
    // Every configuration lrpm applies logs its invalid job once.
    let config = "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n[bad]\nname = \"\"\n";
    let lrpm = Lrpm::start("jobs.toml", config, &["--interval", "3600"]);
    let applied = || lrpm.stderr().matches("invalid job left out").count();
    lrpm.running_pid("a");
    wait_until("the first configuration applied", LONG, || applied() == 1);
    // A rename is two inotify events (the file is seen from both of its
    // names); the second load finds what the first delivered.
    let changed = config.replace("1000", "1001");
    lrpm.write_config(&changed);
    lrpm.wait_for("a restarted", LONG, |s| {
        job_in(s, "a").is_some_and(|j| j["command"] == "sleep 1001" && j["state"] == "running")
    });
    // The same again, written in place: the load it causes finds what the
    // last one delivered, and delivers nothing either.
    let before = loads(&lrpm.status());
    let status = lrpm.wait_for_load_after(|| fs::write(&lrpm.config, &changed).expect("write"));
    assert!(loads(&status) > before, "{status}");
    assert_eq!(applied(), 2, "{}", lrpm.stderr());
    // A change after these: whatever the loads of the rename and of the
    // write were, they are all behind the one that finds it.
    lrpm.write_config(&changed.replace("1001", "1002"));
    lrpm.wait_for("a restarted again", LONG, |s| {
        job_in(s, "a").is_some_and(|j| j["command"] == "sleep 1002" && j["state"] == "running")
    });
    assert_eq!(applied(), 3, "{}", lrpm.stderr());
    // A reload asked for is delivered even though nothing changed.
    let answer = lrpm.request(r#"{"cmd":"reload"}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    wait_until("the reload applied", LONG, || applied() == 4);
}

#[test]
fn mtime_rule_of_php_lrpm() {
    let job = |mtime: u64, cmd: &str| {
        format!(
            r#"{{"42": {{"name": "Job 42", "command": ["sleep", "{cmd}"], "mtime": {mtime}, "workerConfig": []}}}}"#
        )
    };
    let lrpm = Lrpm::start("jobs.json", &job(100, "1000"), &[]);
    let pid = lrpm.running_pid("42");
    // Same mtime: not restarted, even though the content changed.
    let status = lrpm.wait_for_load_after(|| lrpm.write_config(&job(100, "1001")));
    let unchanged = job_in(&status, "42").expect("42");
    assert_eq!(pid_of(unchanged), Some(pid), "{status}");
    assert_eq!(unchanged["command"], "sleep 1000", "{status}");
    // Newer mtime: restarted.
    lrpm.write_config(&job(101, "1001"));
    lrpm.wait_for("restart on a newer mtime", LONG, |s| {
        job_in(s, "42").is_some_and(|j| j["mtime"] == 101 && j["state"] == "running")
    });
}

#[test]
fn a_directory_source_merges_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs = dir.path().join("jobs.d");
    fs::create_dir(&jobs).expect("mkdir");
    fs::write(
        jobs.join("a.toml"),
        "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n",
    )
    .expect("a");
    fs::write(jobs.join("b.json"), r#"{"b": {"name": "b", "command": ["sleep", "1000"]}, "dup": {"name": "d", "command": "true"}}"#).expect("b");
    fs::write(jobs.join("c.yml"), "dup:\n  name: d\n  command: 'true'\n").expect("c");
    fs::write(jobs.join("notes.txt"), "ignored").expect("txt");
    let lrpm = Lrpm::start_in(dir, jobs.clone(), |command| {
        command.args(["--interval", "3600"]).arg(&jobs);
    });
    lrpm.running_pid("a");
    lrpm.running_pid("b");
    let status = lrpm.status();
    assert!(
        job_in(&status, "dup").is_none(),
        "declared twice: neither copy"
    );
    let reason = status["supervisor"]["source"]["invalid_jobs"]["dup"]
        .as_str()
        .expect("dup reported");
    assert!(
        reason.contains("b.json") && reason.contains("c.yml"),
        "{reason}"
    );
    // A file added to the directory is picked up.
    fs::write(
        jobs.join("d.yaml"),
        "d:\n  name: d\n  command: [sleep, '1000']\n",
    )
    .expect("d");
    lrpm.running_pid("d");
    // And one removed is too.
    fs::remove_file(jobs.join("a.toml")).expect("rm");
    lrpm.wait_for("a removed", LONG, |s| job_in(s, "a").is_none());
}

#[test]
fn fifty_workers_shut_down_in_parallel() {
    let mut config = String::new();
    for i in 0..50 {
        config.push_str(&format!(
            "[w{i}]\nname = \"w{i}\"\ncommand = \"trap 'sleep 0.5; exit 0' TERM; while true; do sleep 0.1; done\"\n"
        ));
    }
    let mut lrpm = Lrpm::start("jobs.toml", &config, &[]);
    let status = lrpm.wait_for("50 running", LONG, |s| all_running(s, 50));
    let pids: Vec<u32> = jobs_in(&status).iter().filter_map(pid_of).collect();
    let started = Instant::now();
    let status = lrpm.terminate();
    let took = started.elapsed();
    assert!(
        status.success(),
        "lrpm exits 0 after a clean shutdown: {status:?}"
    );
    // In series this would take 25 s.
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    assert!(pids.iter().all(|p| !pid_alive(*p)));
}

#[test]
fn exit_codes_for_usage_and_missing_source() {
    let lrpm = |args: &[&str]| {
        let mut command = lrpm_command();
        command.args(args);
        run_bounded(command, LONG)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    let socket = socket.to_str().expect("a UTF-8 path");
    let missing = lrpm(&["--socket", socket, "/nonexistent/jobs.toml"]);
    assert_eq!(missing.status.code(), Some(66));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/jobs.toml"));
    assert_eq!(lrpm(&["--bogus"]).status.code(), Some(64));
    assert_eq!(lrpm(&[]).status.code(), Some(64));
    assert_eq!(lrpm(&["--help"]).status.code(), Some(0));
    let bad_interval = lrpm(&["--interval", "-3", "x.toml"]);
    assert_eq!(bad_interval.status.code(), Some(64));
    assert_eq!(lrpm(&["gopher://jobs"]).status.code(), Some(64));
}

#[test]
fn an_idle_supervisor_uses_no_cpu() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[a]\nname = \"a\"\ncommand = [\"sleep\", \"1000\"]\n[b]\nname = \"b\"\ncommand = [\"sleep\", \"1000\"]\n",
        &[],
    );
    lrpm.running_pid("a");
    lrpm.running_pid("b");
    let ticks = || -> u64 {
        let stat = lrpm_process::procfs::read_stat(lrpm.pid()).expect("lrpm's stat");
        stat.utime + stat.stime
    };
    let before = ticks();
    std::thread::sleep(Duration::from_secs(3));
    let used = ticks() - before;
    // A clock tick is 10 ms; a polling loop would use many.
    assert!(used <= 2, "lrpm used {used} ticks of CPU in 3 s at rest");
}
