//! The spec's "Logs and observability", lrpm's own log: colours only where
//! they belong, JSON lines that all parse (workers' lines included), a
//! reason on every start and stop, and messages that say what happened.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Lrpm, wait_for_value, wait_until};

const LONG: Duration = Duration::from_secs(30);

/// Every line of `text` as a JSON object; panics on a line that is not
/// one.
fn json_lines(what: &str, text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a line of {what} is not JSON ({e}): {line:?}"));
            assert!(value.is_object(), "{what}: {line}");
            value
        })
        .collect()
}

/// The JSON log events of job `id` whose message starts with `message`.
fn events<'a>(log: &'a [Value], id: &str, message: &str) -> Vec<&'a Value> {
    log.iter()
        .filter(|e| {
            e["job"] == id
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

/// Whether `ts` is RFC 3339 in UTC as lrpm writes it:
/// `2026-12-06T20:01:02.123456Z`.
fn is_rfc3339(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 27
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            26 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn no_ansi_escape_in_the_log_when_stderr_is_a_file() {
    // A crash loop logs warnings, which a terminal would show coloured.
    let jobs = r#"{"c": {"name": "c", "command": "exit 3"}}"#;
    let mut plain = Lrpm::start("jobs.json", jobs, &[]);
    wait_until("a crash logged", LONG, || {
        plain.stderr().contains("too soon")
    });
    plain.terminate();
    let log = plain.stderr();
    assert!(!log.contains('\u{1b}'), "an escape in the log:\n{log}");
    // The check can fail: told to, lrpm colours a file too, whatever
    // NO_COLOR says (an explicit flag wins).
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobs.json");
    std::fs::write(&config, jobs).expect("write the config");
    let mut coloured = Lrpm::start_in(dir, config.clone(), |command| {
        command
            .env("NO_COLOR", "1")
            .args(["--color", "always"])
            .arg(&config);
    });
    wait_until("a crash logged", LONG, || {
        coloured.stderr().contains("too soon")
    });
    coloured.terminate();
    assert!(
        coloured.stderr().contains("\u{1b}["),
        "{}",
        coloured.stderr()
    );
}

#[test]
fn with_json_every_line_parses_workers_lines_included() {
    let jobs = r#"{
        "talker": {"name": "t", "command": "printf 'out \"q\" \\033[2J\\n'; printf 'err\\tline\\n' >&2; printf 'third\\n'; exec sleep 300"},
        "c": {"name": "c", "command": "echo bye; exit 3"}
    }"#;
    let mut lrpm = Lrpm::start("jobs.json", jobs, &["--log-format", "json"]);
    wait_until("the workers' lines", LONG, || {
        lrpm.stdout().contains("third") && lrpm.stderr().contains("err\\tline")
    });
    wait_until("a crash logged", LONG, || {
        lrpm.stderr().contains("too soon")
    });
    lrpm.terminate();
    let stdout = json_lines("stdout", &lrpm.stdout());
    let stderr = json_lines("stderr", &lrpm.stderr());
    let worker = |lines: &[Value], job: &str, text: &str| -> Value {
        lines
            .iter()
            .find(|l| l["job"] == job && l["line"] == text)
            .unwrap_or_else(|| panic!("no line {text:?} of {job} in {lines:#?}"))
            .clone()
    };
    let out = worker(&stdout, "talker", "out \"q\" \u{1b}[2J");
    assert_eq!(out["stream"], "stdout");
    let ts = out["ts"].as_str().expect("ts");
    assert!(is_rfc3339(ts), "{ts}");
    worker(&stdout, "talker", "third");
    worker(&stdout, "c", "bye");
    let err = worker(&stderr, "talker", "err\tline");
    assert_eq!(err["stream"], "stderr");
    assert!(is_rfc3339(err["ts"].as_str().expect("ts")));
    // lrpm's own events are there too, with their fields.
    let started = events(&stderr, "talker", "started");
    assert_eq!(started.len(), 1, "{stderr:#?}");
    assert_eq!(started[0]["reason"], "added");
}

#[test]
fn every_start_and_stop_says_why() {
    let sleeper = |cmd: &str| format!(r#"{{"name": "n", "command": "{cmd}"}}"#);
    let config = |jobs: &[(&str, String)]| {
        let body: Vec<String> = jobs
            .iter()
            .map(|(id, j)| format!("\"{id}\": {j}"))
            .collect();
        format!("{{{}}}", body.join(","))
    };
    let lrpm = Lrpm::start(
        "jobs.json",
        &config(&[
            ("u", sleeper("sleep 300")),
            ("r", sleeper("sleep 300")),
            ("o", sleeper("sleep 300")),
            ("c", sleeper("sleep 2; exit 1")),
        ]),
        &["--log-format", "json"],
    );
    for id in ["u", "r", "o"] {
        lrpm.running_pid(id);
    }
    lrpm.write_config(&config(&[
        ("u", sleeper("sleep 301")),
        ("o", sleeper("sleep 300")),
        ("c", sleeper("sleep 2; exit 1")),
    ]));
    let out = lrpm.ctl(&["restart", "o"]);
    assert!(out.status.success(), "{out:?}");
    let log = wait_for_value("every reason in the log", LONG, || {
        let log = json_lines("stderr", &lrpm.stderr());
        let has = |id: &str, message: &str, reason: &str| {
            events(&log, id, message)
                .iter()
                .any(|e| e["reason"] == reason)
        };
        (has("u", "stopping", "updated")
            && has("u", "stopped", "updated")
            && has("u", "started", "updated")
            && has("r", "stopping", "removed")
            && has("r", "stopped", "removed")
            && has("o", "stopping", "operator")
            && has("o", "started", "operator")
            && has("c", "exited", "crashed"))
        .then_some(log)
    });
    // Every start and stop line has one.
    for e in &log {
        let message = e["message"].as_str().unwrap_or_default();
        if ["started", "stopping", "stopped"]
            .iter()
            .any(|m| message.starts_with(m))
        {
            assert!(e["reason"].is_string(), "no reason: {e}");
        }
    }
}

#[test]
fn messages_say_what_happened() {
    let lrpm = Lrpm::start(
        "jobs.json",
        r#"{"a": {"name": "a", "command": "sleep 300", "mtime": 10}}"#,
        &[],
    );
    lrpm.running_pid("a");
    // An invalid declaration of a running job: it keeps running, and the
    // log says so (not that it was left out); a new invalid job is left
    // out, with its misspelt key named.
    lrpm.wait_for_load_after(|| {
        lrpm.write_config(
            r#"{"a": {"name": "a", "command": "sleep 300", "mtime": 10, "stopSignal": "NOPE"},
                "b": {"name": "b", "comand": "sleep 300"}}"#,
        );
    });
    // The log is written by a thread of its own, maybe after the status
    // that saw the load.
    let log = wait_for_value("the invalid jobs logged", LONG, || {
        let log = lrpm.stderr();
        log.contains("comand").then_some(log)
    });
    assert!(
        log.contains("invalid declaration ignored, the job keeps its last valid one: stopSignal"),
        "{log}"
    );
    assert!(!log.contains("invalid job left out: stopSignal"), "{log}");
    assert!(
        log.contains("invalid job left out: command: one of command or workerClass is required; comand: unknown key (ignored)"),
        "{log}"
    );
    // A change with the same mtime is ignored, and the log says so.
    let pid = lrpm.running_pid("a");
    lrpm.wait_for_load_after(|| {
        lrpm.write_config(r#"{"a": {"name": "a", "command": "sleep 301", "mtime": 10}}"#);
    });
    assert_eq!(lrpm.running_pid("a"), pid);
    wait_until("the ignored change logged", LONG, || {
        lrpm.stderr().contains("mtime did not grow")
    });
    // Loaded again, it is not logged again.
    lrpm.wait_for_load_after(|| {
        lrpm.write_config(r#"{"a": {"name": "a", "command": "sleep 301", "mtime": 10}, "z": {"name": "z", "command": "sleep 300"}}"#);
    });
    lrpm.running_pid("z");
    wait_until("z's start logged", LONG, || lrpm.stderr().contains("job=z"));
    let log = lrpm.stderr();
    let ignored: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("mtime did not grow"))
        .collect();
    assert_eq!(ignored.len(), 1, "{log}");
    assert!(ignored[0].contains("INFO"), "{log}");
    // `reload --force` without a removal guard does not talk of one.
    let out = lrpm.ctl(&["reload", "--force"]);
    assert!(out.status.success(), "{out:?}");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("guard"), "{said}");
    // One job left: "1 job", not "1 jobs".
    lrpm.write_config(r#"{"a": {"name": "a", "command": "sleep 301", "mtime": 10}}"#);
    lrpm.wait_for("z removed", LONG, |s| {
        crate::support::job_in(s, "z").is_none()
    });
    let mut lrpm = lrpm;
    lrpm.terminate();
    let log = lrpm.stderr();
    assert!(!log.contains("guard"), "{log}");
    assert!(log.contains("shutting down 1 job"), "{log}");
    assert!(!log.contains("1 jobs"), "{log}");
}

/// The lines of job `id`'s log files in `dir`, oldest first (`ID.log.N` …
/// `ID.log.1`, then `ID.log`, and `extra` files before them), each without
/// its timestamp, which is checked.
fn job_log_lines(dir: &std::path::Path, id: &str, extra: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    let mut rotated: Vec<u32> = std::fs::read_dir(dir)
        .expect("the log dir")
        .filter_map(|e| {
            let name = e
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            name.strip_prefix(&format!("{id}.log."))?.parse().ok()
        })
        .collect();
    rotated.sort_unstable();
    names.extend(rotated.iter().rev().map(|n| format!("{id}.log.{n}")));
    names.push(format!("{id}.log"));
    let mut lines = Vec::new();
    for name in names {
        let text = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        for line in text.lines() {
            let (ts, rest) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("{name}: {line:?}"));
            assert!(is_rfc3339(ts), "{name}: {line:?}");
            lines.push(rest.to_owned());
        }
    }
    lines
}

/// `0` … `n - 1`, then `end`.
fn numbered(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| i.to_string())
        .chain(std::iter::once("end".to_owned()))
        .collect()
}

#[test]
fn size_rotation_under_a_fast_writer_loses_no_line() {
    let logs = tempfile::tempdir().expect("tempdir");
    let n = 30_000;
    let jobs = format!(
        r#"{{"w": {{"name": "w", "command": "seq 0 {}; echo end; exec sleep 300"}}}}"#,
        n - 1
    );
    let dir = logs.path().to_str().expect("UTF-8");
    let lrpm = Lrpm::start(
        "jobs.json",
        &jobs,
        &[
            "--log-dir",
            dir,
            "--log-max-bytes",
            "65536",
            "--log-keep",
            "1000",
        ],
    );
    lrpm.running_pid("w");
    wait_until("every line in the files", LONG, || {
        job_log_lines(logs.path(), "w", &[])
            .last()
            .map(String::as_str)
            == Some("end")
    });
    // Read again: the look that found the end may have raced a rotation
    // (listed the files before it, read them after), and there is none
    // after the last line.
    assert_eq!(job_log_lines(logs.path(), "w", &[]), numbered(n));
    let rotated = std::fs::read_dir(logs.path()).expect("dir").count() - 1;
    assert!(rotated >= 10, "{rotated} rotated files");
    for entry in std::fs::read_dir(logs.path()).expect("dir") {
        let size = entry.expect("entry").metadata().expect("metadata").len();
        assert!(size <= 65536, "{size}");
    }
    let status = lrpm.status();
    assert_eq!(
        status["supervisor"]["output"]["job_logs"]["lines_dropped"], 0,
        "{status}"
    );
}

#[test]
fn a_logrotate_rename_and_sigusr1_lose_no_line() {
    let logs = tempfile::tempdir().expect("tempdir");
    let stop = logs.path().join("stop-writing");
    let jobs = format!(
        r#"{{"w": {{"name": "w", "command": "i=0; while [ ! -e {} ]; do echo $i; i=$((i+1)); done; echo end; exec sleep 300"}}}}"#,
        stop.display()
    );
    let dir = logs.path().to_str().expect("UTF-8");
    // No size rotation here: the loop may write more than the default
    // 10 MiB before the test is done, and a rotation would put lines in
    // w.log.1 that belong before w.log-rotated.
    let lrpm = Lrpm::start(
        "jobs.json",
        &jobs,
        &["--log-dir", dir, "--log-max-bytes", "100000000000"],
    );
    lrpm.running_pid("w");
    let count = |name: &str| {
        std::fs::read_to_string(logs.path().join(name)).map_or(0, |t| t.lines().count())
    };
    wait_until("lines in w.log", LONG, || count("w.log") > 1000);
    // logrotate's default: rename, then tell the writer to reopen.
    std::fs::rename(logs.path().join("w.log"), logs.path().join("w.log-rotated")).expect("rename");
    crate::support::signal(lrpm.pid(), rustix::process::Signal::USR1);
    wait_until("lines in the new w.log", LONG, || count("w.log") > 1000);
    // The same through lrpmctl.
    std::fs::rename(
        logs.path().join("w.log"),
        logs.path().join("w.log-rotated2"),
    )
    .expect("rename");
    let out = lrpm.ctl(&["reopen-logs"]);
    assert!(out.status.success(), "{out:?}");
    wait_until("lines in the third w.log", LONG, || count("w.log") > 1000);
    std::fs::write(&stop, "").expect("stop file");
    let extra = ["w.log-rotated", "w.log-rotated2"];
    wait_until("the last line", LONG, || {
        job_log_lines(logs.path(), "w", &extra)
            .last()
            .map(String::as_str)
            == Some("end")
    });
    let lines = job_log_lines(logs.path(), "w", &extra);
    assert_eq!(lines, numbered(lines.len() - 1));
    assert!(count("w.log-rotated") > 1000 && count("w.log-rotated2") > 1000);
}

#[test]
fn a_full_disk_under_the_job_logs_is_reported_and_the_farm_runs_on() {
    let logs = tempfile::tempdir().expect("tempdir");
    // Every write to w.log fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", logs.path().join("w.log")).expect("symlink");
    let jobs = r#"{"w": {"name": "w", "command": "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.01; done"}}"#;
    let dir = logs.path().to_str().expect("UTF-8");
    let lrpm = Lrpm::start("jobs.json", jobs, &["--log-dir", dir]);
    let pid = lrpm.running_pid("w");
    let status = lrpm.wait_for("the failed writes in status", LONG, |s| {
        s["supervisor"]["output"]["job_logs"]["write_errors"].as_u64() > Some(0)
    });
    let job_logs = &status["supervisor"]["output"]["job_logs"];
    assert!(job_logs["lines_dropped"].as_u64() > Some(0), "{status}");
    assert!(
        job_logs["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device")),
        "{status}"
    );
    wait_until("the failure logged", LONG, || {
        lrpm.stderr().contains("per-job logs: ")
    });
    // The worker runs on, and its lines still reach lrpm's stdout.
    let seen = lrpm.stdout().lines().count();
    wait_until("more lines on stdout", LONG, || {
        lrpm.stdout().lines().count() > seen + 10
    });
    assert_eq!(lrpm.running_pid("w"), pid);
}

/// A mass start logs its first start lines one by one and sums up the
/// rest, so that lrpm's log queue (1 MiB) holds a mass start behind a
/// stderr that is not read: before, 5,000 start lines of long ids (about
/// 1.3 MB) overflowed it, lines were dropped and lrpm exited 74.
#[test]
fn a_mass_start_behind_an_unread_stderr_loses_no_log_line() {
    const JOBS: usize = 5000;
    // Ids of 100 characters: each start line is about 200 bytes.
    let id = |i: usize| format!("{:x<94}{i:06}", "mass-start-");
    let config: String = (0..JOBS)
        .map(|i| {
            format!(
                "[\"{0}\"]\nname = \"{0}\"\ncommand = \"sleep 3600\"\n",
                id(i)
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().join("jobs.toml");
    std::fs::write(&path, config).expect("write the config");
    let socket = dir.path().join("control.sock");
    let mut command = crate::support::lrpm_command();
    command.arg("--socket").arg(&socket).arg(&path);
    let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout.log");
    let began = std::time::Instant::now();
    let mut lrpm = Lrpm::spawn_with_output(
        dir,
        socket,
        path,
        command,
        stdout.into(),
        std::process::Stdio::piped(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Nobody reads stderr until every job runs: the log thread blocks on
    // the full pipe and lines wait in the queue.
    let status = lrpm.wait_for("every job running", Duration::from_secs(300), |s| {
        crate::support::all_running(s, JOBS)
    });
    let dropped = &status["supervisor"]["output"]["log"]["lines_dropped"];
    let mut stderr = lrpm.take_stderr();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).expect("read lrpm's stderr");
        text
    });
    assert_eq!(dropped, 0, "log lines dropped during the mass start");
    crate::support::signal(lrpm.pid(), rustix::process::Signal::TERM);
    let exit = lrpm
        .wait_timeout(Duration::from_secs(300))
        .expect("lrpm exits after SIGTERM");
    let took = began.elapsed();
    let log = reader.join().expect("stderr reader");
    assert_eq!(exit.code(), Some(0), "lrpm's exit\n{log}");
    assert!(!log.contains("dropped"), "{log}");
    // The first starts of each second one by one, with their reason (20
    // a second); the rest summed up.
    let one_by_one = log.lines().filter(|l| l.contains("started: sleep")).count();
    let bound = 20 * (took.as_secs() as usize + 2);
    assert!(one_by_one <= bound, "{one_by_one} start lines in {took:?}");
    assert!(log.contains("reason=added"), "{log}");
    let summed: usize = log
        .lines()
        .filter_map(|l| l.split("… and ").nth(1))
        .filter(|rest| rest.contains("more jobs started in"))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(one_by_one + summed, JOBS, "{log}");
}
