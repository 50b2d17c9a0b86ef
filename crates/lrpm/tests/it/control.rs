//! The control plane end to end: a real lrpm, its socket, and `lrpmctl`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{
    Lrpm, ctl_command, is_root, job_in, jobs_in, lrpm_command, lrpmctl_binary, pid_alive, pid_of,
    prerequisite, raw_request, run_bounded, running, wait_for_value, wait_until, wall_now,
};

/// Two long-running jobs; `7` has an integer id, as php-lrpm's are.
const FARM: &str = r#"
[a]
name = "Job A"
command = ["sleep", "1000"]

[7]
name = "Seven"
command = ["sleep", "1000"]
"#;

/// How long anything that should be prompt may take on a loaded machine.
const PROMPT: Duration = Duration::from_secs(5);

/// How long a state change may take to show.
const SETTLE: Duration = Duration::from_secs(30);

/// lrpm on [`FARM`], with both jobs running.
fn farm() -> Lrpm {
    let lrpm = Lrpm::start("jobs.toml", FARM, &[]);
    lrpm.wait_for("both jobs running", SETTLE, |s| {
        running(s, "a") && running(s, "7")
    });
    lrpm
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts `output` exited with `code`, showing its output otherwise.
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Runs lrpmctl with `args` only (no socket unless the args name one).
fn ctl_alone(args: &[&str]) -> Output {
    let mut command = ctl_command();
    command.args(args).env_remove("LRPM_SOCKET");
    run_bounded(command, PROMPT * 6)
}

/// Sends raw `bytes` on a fresh connection and reads one answer line.
fn send_raw(socket: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(SETTLE))
        .expect("set a read timeout");
    stream.write_all(bytes).expect("send");
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .expect("receive");
    answer
}

fn error_of(answer: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(answer)
        .unwrap_or_else(|e| panic!("answer {answer:?} is not JSON: {e}"));
    assert_eq!(value["ok"], false, "{answer}");
    value["error"].as_str().expect("an error string").to_owned()
}

// ---------------------------------------------------------------- status

#[test]
fn status_over_the_socket_has_the_documented_shape() {
    let lrpm = farm();
    let status = lrpm.status();
    assert_eq!(status["ok"], true);
    let sup = &status["supervisor"];
    assert_eq!(sup["pid"], lrpm.pid());
    assert_eq!(sup["version"], lrpm_proto::VERSION);
    assert!(lrpm_proto::VERSION.starts_with(env!("CARGO_PKG_VERSION")));
    assert!(sup["started_at"].is_f64());
    let source = &sup["source"];
    assert_eq!(source["uri"], lrpm.config.to_str().expect("utf-8 path"));
    assert!(source["last_load_at"].is_f64());
    // The first load is an attempt, and began before it was applied.
    assert!(source["loads"].as_u64() >= Some(1), "{source}");
    assert!(
        source["last_attempt_at"].as_f64() <= source["last_load_at"].as_f64(),
        "{source}"
    );
    assert!(source["last_error"].is_null());
    assert!(source["invalid_jobs"].is_object());
    let ids: Vec<&str> = status["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("string id"))
        .collect();
    assert_eq!(ids, ["7", "a"]);
    let a = job_in(&status, "a").expect("job a");
    for field in [
        "id",
        "name",
        "state",
        "pid",
        "started_at",
        "restarts",
        "last_exit",
        "backoff_seconds",
        "restart_at",
        "mtime",
    ] {
        assert!(a.get(field).is_some(), "job status lacks {field}: {a}");
    }
    assert_eq!(a["name"], "Job A");
    assert_eq!(a["restarts"], 0);
    assert!(pid_alive(pid_of(a).expect("pid")));
}

#[test]
fn status_shows_invalid_jobs_and_jobs_in_backoff() {
    let config = r#"
[ok]
name = "Fine"
command = ["sleep", "1000"]

[crashy]
name = "Crashes"
command = ["sh", "-c", "exit 3"]

[bad]
command = ["sleep", "1000"]
"#;
    let lrpm = Lrpm::start("jobs.toml", config, &[]);
    let status = lrpm.wait_for("crashy in backoff", SETTLE, |s| {
        job_in(s, "crashy").is_some_and(|j| j["state"] == "backoff" && j["last_exit"]["code"] == 3)
    });
    let invalid = &status["supervisor"]["source"]["invalid_jobs"];
    assert!(invalid["bad"].is_string(), "{invalid}");
    assert!(job_in(&status, "bad").is_none());

    // crashy runs again for a few milliseconds every second or two: ask
    // again if lrpmctl's status caught it then.
    let text = wait_for_value("lrpmctl to show crashy in backoff", SETTLE, || {
        let output = lrpm.ctl(&["status"]);
        assert_exit(&output, 0);
        Some(stdout(&output)).filter(|text| text.contains("backoff"))
    });
    assert!(text.contains("exit 3"), "{text}");
    assert!(text.contains("invalid jobs"), "{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("bad:")),
        "{text}"
    );
}

#[test]
fn lrpmctl_json_is_the_status_document_wherever_the_option_goes() {
    let lrpm = farm();
    for args in [&["--json", "status"][..], &["status", "--json"][..]] {
        let output = lrpm.ctl(args);
        assert_exit(&output, 0);
        let doc: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON: {e}: {}", stdout(&output)));
        assert_eq!(doc["ok"], true);
        assert_eq!(doc["supervisor"]["pid"], lrpm.pid());
        assert_eq!(doc["jobs"].as_array().map(Vec::len), Some(2));
    }
}

#[test]
fn a_status_with_usage_gives_each_live_process_cpu_time_and_memory() {
    let lrpm = farm();
    let plain = lrpm.request(r#"{"cmd":"status"}"#);
    assert!(plain.get("usage").is_none(), "{plain}");
    let before = wall_now();
    let doc = lrpm.request(r#"{"cmd":"status","usage":true}"#);
    assert_eq!(doc["ok"], true, "{doc}");
    for id in ["a", "7"] {
        let job = job_in(&doc, id).unwrap_or_else(|| panic!("no job {id} in {doc}"));
        let pid = pid_of(job).unwrap_or_else(|| panic!("{id} has no pid: {doc}"));
        let usage = &doc["usage"][pid.to_string()];
        assert!(usage["rss_bytes"].as_u64().unwrap_or(0) > 0, "{doc}");
        assert!(
            usage["cpu_seconds"].as_f64().is_some_and(|s| s >= 0.0),
            "{doc}"
        );
        // Read for this request: it is the first to ask.
        let at = usage["at"].as_f64().unwrap_or(0.0);
        assert!(at >= before - 0.01 && at <= wall_now() + 0.01, "{at} {doc}");
    }
    // Asked again, the figures are the ones read, unless they had been
    // kept their second (on a loaded machine): then they are read anew.
    let a_pid = lrpm.running_pid("a").to_string();
    let again = lrpm.request(r#"{"cmd":"status","usage":true,"ids":["a"]}"#);
    assert_eq!(
        again["usage"]
            .as_object()
            .map(|u| u.keys().cloned().collect::<Vec<_>>()),
        Some(vec![a_pid.clone()]),
        "{again}"
    );
    let first_at = doc["usage"][&a_pid]["at"].as_f64().unwrap_or(0.0);
    let again_at = again["usage"][&a_pid]["at"].as_f64().unwrap_or(0.0);
    assert!(
        again["usage"][&a_pid] == doc["usage"][&a_pid] || again_at >= first_at + 0.99,
        "read again {:.3} s after the first read: {again}",
        again_at - first_at
    );
    let refused = lrpm.request(r#"{"cmd":"status","usage":1}"#);
    assert_eq!(refused["ok"], false, "{refused}");
    // The table shows them.
    let output = lrpm.ctl(&["status", "a"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    let row = text
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap_or_else(|| panic!("no row for a in\n{text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // ID PID STATE %CPU RSS …
    assert!(cells[3].parse::<f64>().is_ok(), "{row}");
    assert!(cells[4].ends_with('K') || cells[4].ends_with('M'), "{row}");
}

#[test]
fn status_table_is_plain_when_piped_or_no_color() {
    let lrpm = farm();
    let output = lrpm.ctl(&["status"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    let header = text
        .lines()
        .find(|l| l.starts_with("ID "))
        .unwrap_or_else(|| panic!("no table header in\n{text}"));
    let columns: Vec<&str> = header
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        columns,
        [
            "ID",
            "PID",
            "STATE",
            "%CPU",
            "RSS",
            "UPTIME",
            "RESTARTS",
            "LAST EXIT",
            "NAME"
        ]
    );
    let a_pid = lrpm.job("a").expect("job a")["pid"].to_string();
    let row = text
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap_or_else(|| panic!("no row for a in\n{text}"));
    assert!(
        row.contains(&a_pid) && row.contains("running") && row.ends_with("Job A"),
        "{row}"
    );
    assert!(text.contains(&format!("pid {}", lrpm.pid())), "{text}");
    assert!(text.contains("source "), "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes in piped output:\n{text}"
    );

    let mut command = ctl_command();
    command
        .env("NO_COLOR", "1")
        .args(["--color", "auto", "--socket"])
        .arg(&lrpm.socket)
        .arg("status");
    let output = run_bounded(command, SETTLE);
    assert_exit(&output, 0);
    assert!(!stdout(&output).contains('\x1b'));

    let output = lrpm.ctl(&["status", "--color", "never"]);
    assert!(!stdout(&output).contains('\x1b'));
    let output = lrpm.ctl(&["status", "--color=always"]);
    assert_exit(&output, 0);
    assert!(
        stdout(&output).contains("\x1b["),
        "--color=always has no colour"
    );
}

/// Runs `lrpmctl … status` on a pseudo-terminal (through `script`).
fn status_on_a_terminal(lrpm: &Lrpm, no_color: bool) -> Option<String> {
    if !prerequisite(
        "/usr/bin/script to make a terminal (bsdutils)",
        Path::new("/usr/bin/script").exists(),
    ) {
        return None;
    }
    let line = format!(
        "{} --socket {} status",
        lrpmctl_binary().display(),
        lrpm.socket.display()
    );
    let mut command = Command::new("/usr/bin/script");
    command
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("TERM", "xterm");
    if no_color {
        command.env("NO_COLOR", "1");
    }
    let output = run_bounded(command, SETTLE);
    assert_exit(&output, 0);
    Some(stdout(&output))
}

#[test]
fn status_table_is_coloured_on_a_terminal_unless_no_color() {
    let lrpm = farm();
    let Some(coloured) = status_on_a_terminal(&lrpm, false) else {
        return;
    };
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal:\n{coloured}"
    );
    assert!(coloured.contains("running"));
    let plain = status_on_a_terminal(&lrpm, true).expect("script exists");
    assert!(!plain.contains('\x1b'), "colour despite NO_COLOR:\n{plain}");
    assert!(plain.contains("running"));
}

#[test]
fn lrpm_socket_env_names_the_socket() {
    let lrpm = farm();
    let mut command = ctl_command();
    command
        .env("LRPM_SOCKET", &lrpm.socket)
        .args(["--json", "status"]);
    let output = run_bounded(command, SETTLE);
    assert_exit(&output, 0);
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(doc["supervisor"]["pid"], lrpm.pid());
}

// ---------------------------------------------------------------- restart

#[test]
fn restart_replaces_the_process_at_once() {
    let lrpm = farm();
    let before = lrpm.job("a").expect("job a");
    let output = lrpm.ctl(&["restart", "a"]);
    assert_exit(&output, 0);
    assert!(stdout(&output).contains('a'), "{}", stdout(&output));
    let after = lrpm.wait_for("a restarted", SETTLE, |s| {
        job_in(s, "a").is_some_and(|j| j["restarts"] == 1 && j["state"] == "running")
    });
    let after = job_in(&after, "a").expect("job a");
    assert_ne!(after["pid"], before["pid"]);
    let old_pid = pid_of(&before).expect("pid");
    wait_until("the old process to end", SETTLE, || !pid_alive(old_pid));
}

#[test]
fn restart_takes_integer_ids_over_the_socket() {
    let lrpm = farm();
    let answer = lrpm.request(r#"{"cmd":"restart","id":7}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(answer["message"].is_string());
    lrpm.wait_for("7 restarted", SETTLE, |s| {
        job_in(s, "7").is_some_and(|j| j["restarts"] == 1 && j["state"] == "running")
    });
    let output = lrpm.ctl(&["restart", "7"]);
    assert_exit(&output, 0);
}

#[test]
fn restart_starts_a_job_in_backoff_at_once() {
    // Crashes until the test fixes it: the run the restart starts stays.
    let config = r#"
[crashy]
name = "Crashes"
command = ["sh", "-c", "[ -e fixed ] && exec sleep 1000; exit 3"]
"#;
    let lrpm = Lrpm::start("jobs.toml", config, &[]);
    // Wait until the next start is well ahead (the delay doubles: 1, 2, 4 s).
    let status = lrpm.wait_for("a long backoff", SETTLE, |s| {
        let job = &s["jobs"][0];
        job["state"] == "backoff"
            && job["restart_at"]
                .as_f64()
                .is_some_and(|at| at - wall_now() > 2.5)
    });
    let planned = status["jobs"][0]["restart_at"].as_f64().expect("planned");
    std::fs::write(lrpm.dir.path().join("fixed"), "").expect("fixed");
    let output = lrpm.ctl(&["restart", "crashy"]);
    assert_exit(&output, 0);
    let status = lrpm.wait_for("crashy running again", SETTLE, |s| {
        s["jobs"][0]["state"] == "running"
    });
    // lrpm's own clock, so that a slow test thread cannot fail it.
    let started = status["jobs"][0]["started_at"].as_f64().expect("started");
    assert!(
        started < planned - 0.2,
        "the restart waited for the backoff: started at {started}, planned for {planned}"
    );
}

#[test]
fn restart_of_an_unknown_job_is_refused() {
    let lrpm = farm();
    let output = lrpm.ctl(&["restart", "no-such-job"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("no-such-job"),
        "{}",
        stderr(&output)
    );
    let output = lrpm.ctl(&["--json", "restart", "no-such-job"]);
    assert_exit(&output, 1);
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(doc["ok"], false);
    let answer = lrpm.request(r#"{"cmd":"restart","id":"no-such-job"}"#);
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-job"))
    );
}

// ---------------------------------------------------------------- reload

#[test]
fn reload_is_acknowledged_and_reads_the_source() {
    let lrpm = farm();
    let output = lrpm.ctl(&["reload"]);
    assert_exit(&output, 0);
    assert!(!stdout(&output).trim().is_empty());
    let output = lrpm.ctl(&["reload", "--force"]);
    assert_exit(&output, 0);
    let answer = lrpm.request(r#"{"cmd":"reload"}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(answer["message"].is_string());
    let answer = lrpm.request(r#"{"cmd":"reload","force":true}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    // A reload after a change applies it.
    lrpm.write_config(&format!(
        "{FARM}\n[b]\nname = \"B\"\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let output = lrpm.ctl(&["reload"]);
    assert_exit(&output, 0);
    lrpm.wait_for("job b", SETTLE, |s| running(s, "b"));
}

// ---------------------------------------------------------------- stop

#[test]
fn lrpmctl_stop_returns_once_lrpm_has_exited() {
    let mut lrpm = farm();
    let workers: Vec<u32> = jobs_in(&lrpm.status())
        .iter()
        .map(|j| pid_of(j).expect("pid"))
        .collect();
    let output = lrpm.ctl(&["stop"]);
    assert_exit(&output, 0);
    assert!(
        !pid_alive(lrpm.pid()),
        "lrpmctl stop returned while lrpm runs"
    );
    assert!(stdout(&output).contains("exited"), "{}", stdout(&output));
    let status = lrpm.wait_timeout(SETTLE).expect("lrpm has exited");
    assert!(status.success(), "lrpm exited with {status}");
    for pid in workers {
        assert!(!pid_alive(pid), "worker {pid} outlived lrpm");
    }
    assert!(!lrpm.socket.exists(), "the socket is left behind");
}

/// A job that ignores SIGTERM, so that a shutdown takes its timeout.
const STUBBORN: &str = r#"
[stubborn]
name = "Ignores SIGTERM"
command = ["sh", "-c", "trap '' TERM; touch trapped; while :; do sleep 0.1; done"]
shutdownTimeoutSeconds = 3
"#;

/// lrpm running [`STUBBORN`], once its shell has set its trap.
fn stubborn() -> Lrpm {
    let lrpm = Lrpm::start("jobs.toml", STUBBORN, &[]);
    let trapped = lrpm.dir.path().join("trapped");
    wait_until("the stubborn job's trap", SETTLE, || trapped.exists());
    lrpm
}

#[test]
fn stop_replies_before_the_farm_is_gone() {
    let mut lrpm = stubborn();
    let asked = Instant::now();
    let answer = lrpm.request(r#"{"cmd":"stop"}"#);
    let replied = asked.elapsed();
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(
        replied < Duration::from_secs(2),
        "the reply took {replied:?}"
    );
    // lrpm still answers while the stubborn job runs out its timeout.
    let status = lrpm.status();
    assert_eq!(status["supervisor"]["shutting_down"], true, "{status}");
    assert_eq!(
        job_in(&status, "stubborn").expect("stubborn")["state"],
        "stopping"
    );
    let exit = lrpm.wait_timeout(SETTLE).expect("lrpm exits");
    assert!(exit.success(), "{exit}");
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "the shutdown did not wait for the job"
    );
    assert!(!lrpm.socket.exists());
}

#[test]
fn lrpmctl_stop_waits_for_a_slow_shutdown_or_not() {
    let mut lrpm = stubborn();
    let asked = Instant::now();
    let output = lrpm.ctl(&["stop"]);
    assert_exit(&output, 0);
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "stop did not wait"
    );
    assert!(!pid_alive(lrpm.pid()));
    assert!(lrpm.wait_timeout(SETTLE).expect("exited").success());

    let mut lrpm = stubborn();
    let output = lrpm.ctl(&["stop", "--no-wait"]);
    assert_exit(&output, 0);
    assert!(pid_alive(lrpm.pid()), "--no-wait waited for the exit");
    assert!(lrpm.wait_timeout(SETTLE).expect("exited").success());
}

#[test]
fn lrpmctl_stop_gives_up_after_its_timeout() {
    let mut lrpm = stubborn();
    let output = lrpm.ctl(&["stop", "--timeout", "0.2"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("has not exited"),
        "{}",
        stderr(&output)
    );
    assert!(lrpm.wait_timeout(SETTLE).expect("exited").success());
}

#[test]
fn sigterm_removes_the_socket() {
    let mut lrpm = farm();
    assert!(lrpm.socket.exists());
    let status = lrpm.terminate();
    assert!(status.success(), "{status}");
    assert!(!lrpm.socket.exists());
}

// ---------------------------------------------------------------- help

#[test]
fn help_lists_every_command() {
    let lrpm = farm();
    let answer = lrpm.request(r#"{"cmd":"help"}"#);
    assert_eq!(answer["ok"], true);
    let names: Vec<&str> = answer["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .map(|c| c["cmd"].as_str().expect("cmd"))
        .collect();
    assert_eq!(
        names,
        [
            "status",
            "restart",
            "pause",
            "resume",
            "signal",
            "reload",
            "reopen-logs",
            "logs",
            "stop",
            "cluster",
            "help"
        ]
    );

    let output = lrpm.ctl(&["--json", "help"]);
    assert_exit(&output, 0);
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(doc, answer);

    let output = lrpm.ctl(&["help"]);
    assert_exit(&output, 0);
    for name in names {
        assert!(stdout(&output).contains(name), "help lacks {name}");
    }
    let output = lrpm.ctl(&["help", "restart"]);
    assert_exit(&output, 0);
    assert!(
        stdout(&output).contains("Usage: lrpmctl restart"),
        "{}",
        stdout(&output)
    );
    assert_exit(&lrpm.ctl(&["help", "nonsense"]), 64);
}

#[test]
fn every_command_has_help_without_a_server() {
    for command in ["status", "restart", "reload", "stop", "help"] {
        let output = ctl_alone(&[command, "--help"]);
        assert_exit(&output, 0);
        let text = stdout(&output);
        assert!(
            text.contains(&format!("Usage: lrpmctl {command}")),
            "{text}"
        );
        assert!(
            text.contains("--socket") && text.contains("--json"),
            "{text}"
        );
    }
    let output = ctl_alone(&["--help"]);
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("Exit status"));
    let output = ctl_alone(&["help"]);
    assert_exit(&output, 0);
    assert_exit(&ctl_alone(&["--version"]), 0);
}

#[test]
fn completions_and_man_page_come_from_the_cli() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = ctl_alone(&["completions", shell]);
        assert_exit(&output, 0);
        let text = stdout(&output);
        assert!(
            text.contains("lrpmctl") && text.contains("restart"),
            "{shell}: {text}"
        );
    }
    let output = ctl_alone(&["man"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    assert!(text.contains(".TH lrpmctl"), "{text}");
    assert!(
        text.contains("restart") && text.contains("\\-\\-socket"),
        "{text}"
    );
}

// ---------------------------------------------------------------- exit codes

#[test]
fn usage_errors_exit_64() {
    for args in [
        &[][..],
        &["bogus"][..],
        &["restart"][..],
        &["restart", "--all", "a"][..],
        &["pause"][..],
        &["signal", "USR1"][..],
        &["signal", "NOPE", "a"][..],
        &["--color", "sometimes", "status"][..],
        &["stop", "--timeout", "soon"][..],
        &["status", "--nonsense"][..],
        &["completions", "tcsh"][..],
    ] {
        let output = ctl_alone(args);
        assert_exit(&output, 64);
        assert!(!stderr(&output).is_empty(), "{args:?}: nothing on stderr");
    }
}

#[test]
fn no_server_exits_69() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.sock");
    let output = ctl_alone(&["--socket", missing.to_str().expect("utf-8"), "status"]);
    assert_exit(&output, 69);
    assert!(
        stderr(&output).contains("cannot connect"),
        "{}",
        stderr(&output)
    );

    // A socket file nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    for command in ["status", "stop", "reload"] {
        let output = ctl_alone(&["--socket", stale.to_str().expect("utf-8"), command]);
        assert_exit(&output, 69);
    }
}

/// A one-shot server that answers every request with `answer` (or closes
/// without a word when it is empty); returns its socket.
fn fake_server(dir: &Path, name: &str, answer: &'static [u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    let listener = UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut line = String::new();
            let _ = BufReader::new(&mut stream).read_line(&mut line);
            let _ = stream.write_all(answer);
        }
    });
    path
}

#[test]
fn invalid_responses_exit_76() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, &'static [u8]); 7] = [
        ("status", b"nonsense\n"),
        ("status", b"[1, 2]\n"),
        ("status", b"{\"ok\":true}\n"),
        ("status", b""),
        ("status", b"{\"ok\":true,\"supervisor\":"),
        ("stop", b"{\"ok\":false}\n"),
        ("reload", b"{\"ok\":true,\"message\":5}\n"),
    ];
    for (i, (command, answer)) in cases.into_iter().enumerate() {
        let socket = fake_server(dir.path(), &format!("fake{i}.sock"), answer);
        let output = ctl_alone(&["--socket", socket.to_str().expect("utf-8"), command]);
        assert_exit(&output, 76);
        assert!(
            stderr(&output).contains("invalid response"),
            "{}",
            stderr(&output)
        );
    }
}

// ---------------------------------------------------------------- the socket

#[test]
fn the_socket_is_private_and_its_directory_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run/lrpm/control.sock");
    let config = dir.path().join("jobs.toml");
    std::fs::write(&config, FARM).expect("write config");
    let mut command = lrpm_command();
    command.arg("--socket").arg(&socket).arg(&config);
    let mut lrpm = Lrpm::spawn_in(dir, socket.clone(), config, command).expect("lrpm starts");
    let mode = |p: &Path| p.metadata().expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().expect("dir")), 0o700);
    assert!(lrpm.terminate().success());
    assert!(!socket.exists());
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let config = dir.path().join("jobs.toml");
    std::fs::write(&config, FARM).expect("write config");
    let mut command = lrpm_command();
    command.arg("--socket").arg(&socket).arg(&config);
    let lrpm =
        Lrpm::spawn_in(dir, socket, config, command).expect("lrpm replaces the stale socket");
    assert_eq!(lrpm.status()["supervisor"]["pid"], lrpm.pid());
}

#[test]
fn a_second_lrpm_on_a_live_socket_refuses_to_start() {
    let lrpm = farm();
    let mut command = lrpm_command();
    command.arg("--socket").arg(&lrpm.socket).arg(&lrpm.config);
    let output = run_bounded(command, SETTLE);
    assert!(!output.status.success(), "the second lrpm ran");
    let err = stderr(&output);
    assert!(err.contains("already running"), "{err}");
    assert!(err.contains(&lrpm.pid().to_string()), "{err}");
    // The first one is undisturbed.
    assert_eq!(lrpm.status()["supervisor"]["pid"], lrpm.pid());
    assert!(running(&lrpm.status(), "a"));
}

#[test]
fn something_else_in_the_way_is_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    std::fs::write(&socket, "precious").expect("write");
    let config = dir.path().join("jobs.toml");
    std::fs::write(&config, FARM).expect("write config");
    let mut command = lrpm_command();
    command.arg("--socket").arg(&socket).arg(&config);
    let output = run_bounded(command, SETTLE);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not a socket"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read_to_string(&socket).expect("intact"),
        "precious"
    );
}

#[test]
fn another_uid_is_refused() {
    if !prerequisite("root, to run the client as nobody", is_root()) {
        return;
    }
    let setpriv = Path::new("/usr/bin/setpriv");
    if !prerequisite(
        "/usr/bin/setpriv to run the client as nobody (util-linux)",
        setpriv.exists(),
    ) {
        return;
    }
    let lrpm = farm();
    // Let nobody reach the socket, so that the server's own check is what
    // refuses it; copy lrpmctl to where nobody can run it.
    let dir = lrpm.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let ctl = dir.join("lrpmctl");
    std::fs::copy(lrpmctl_binary(), &ctl).expect("copy lrpmctl");
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).expect("chmod lrpmctl");
    let as_nobody = |args: &[&str]| {
        let mut command = Command::new(setpriv);
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&ctl)
            .arg("--socket")
            .arg(&lrpm.socket)
            .args(args);
        run_bounded(command, SETTLE)
    };

    // With the socket's own mode (0600), nobody cannot even connect.
    let output = as_nobody(&["status"]);
    assert_exit(&output, 69);

    std::fs::set_permissions(&lrpm.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    let output = as_nobody(&["status"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("permission denied"),
        "{}",
        stderr(&output)
    );
    let output = as_nobody(&["--json", "stop"]);
    assert_exit(&output, 1);
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        doc,
        serde_json::json!({"ok": false, "error": "permission denied"})
    );
    // Nothing happened: lrpm runs on, and root is served.
    assert_eq!(lrpm.status()["supervisor"]["shutting_down"], false);
    assert!(lrpm.stderr().contains("permission denied"));
}

// ---------------------------------------------------------------- the protocol

#[test]
fn protocol_errors_are_precise() {
    let lrpm = farm();
    let cases = [
        ("{\n", "malformed JSON"),
        ("nonsense\n", "malformed JSON"),
        ("[1]\n", "a request must be a JSON object, got an array"),
        ("{}\n", "missing \"cmd\""),
        ("{\"cmd\":5}\n", "\"cmd\" must be a string, got an integer"),
        ("{\"cmd\":\"dance\"}\n", "unknown command \"dance\""),
        ("{\"cmd\":\"restart\"}\n", "restart needs \"id\""),
        (
            "{\"cmd\":\"restart\",\"id\":{}}\n",
            "\"id\" must be a job id: a string or an integer, got an object",
        ),
        ("{\"cmd\":\"restart\",\"id\":[\"a\"]}\n", "got an array"),
        (
            "{\"cmd\":\"reload\",\"force\":1}\n",
            "\"force\" must be a boolean",
        ),
    ];
    for (line, expected) in cases {
        let error = error_of(&send_raw(&lrpm.socket, line.as_bytes()));
        assert!(
            error.contains(expected),
            "{line:?}: {error:?} lacks {expected:?}"
        );
    }
}

#[test]
fn one_connection_carries_many_requests() {
    let lrpm = farm();
    let mut stream = UnixStream::connect(&lrpm.socket).expect("connect");
    stream.set_read_timeout(Some(SETTLE)).expect("timeout");
    // Blank lines are skipped; an error does not close the connection; a
    // last request without a newline counts when the client shuts down.
    stream
        .write_all(b"{\"cmd\":\"status\"}\n\n  \r\nbad\n{\"cmd\":\"help\"}\r\n{\"cmd\":\"restart\",\"id\":\"a\"}")
        .expect("send");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let answers: Vec<serde_json::Value> = BufReader::new(stream)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("line")).expect("JSON"))
        .collect();
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert!(answers[0]["jobs"].is_array());
    assert_eq!(answers[1]["ok"], false);
    assert!(answers[2]["commands"].is_array());
    assert_eq!(answers[3]["ok"], true);
}

#[test]
fn hostile_clients_do_not_delay_others() {
    let lrpm = farm();
    let socket = lrpm.socket.clone();
    let mut hostile = Vec::new();
    // 200 idle connections.
    for _ in 0..200 {
        hostile.push(UnixStream::connect(&socket).expect("connect"));
    }
    // Half a line, never finished.
    let mut half = UnixStream::connect(&socket).expect("connect");
    half.write_all(b"{\"cmd\":\"sta").expect("send");
    hostile.push(half);
    // Garbage bytes without a newline.
    let mut garbage = UnixStream::connect(&socket).expect("connect");
    let noise: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 0x80)
        .collect();
    garbage.write_all(&noise).expect("send");
    hostile.push(garbage);
    // A 2 MiB line, written by a thread that stops when the server hangs up.
    let long_socket = socket.clone();
    let long_line = std::thread::spawn(move || {
        let mut stream = UnixStream::connect(&long_socket).expect("connect");
        stream.set_read_timeout(Some(SETTLE)).expect("timeout");
        let mut line = vec![b'x'; 2 * 1024 * 1024];
        line.push(b'\n');
        let _ = stream.write_all(&line);
        let mut answer = String::new();
        let _ = BufReader::new(stream).read_line(&mut answer);
        answer
    });

    for _ in 0..5 {
        let asked = Instant::now();
        let status = raw_request(&socket, r#"{"cmd":"status"}"#).expect("status answers");
        assert_eq!(status["ok"], true);
        assert!(
            asked.elapsed() < PROMPT,
            "status took {:?}",
            asked.elapsed()
        );
        let asked = Instant::now();
        let output = lrpm.ctl(&["status"]);
        assert_exit(&output, 0);
        assert!(
            asked.elapsed() < PROMPT,
            "lrpmctl status took {:?}",
            asked.elapsed()
        );
    }
    // Supervision goes on too.
    assert_exit(&lrpm.ctl(&["restart", "a"]), 0);
    lrpm.wait_for("a restarted", SETTLE, |s| {
        job_in(s, "a").is_some_and(|j| j["restarts"] == 1 && j["state"] == "running")
    });

    let answer = long_line.join().expect("long-line thread");
    assert_eq!(error_of(&answer), "request longer than 65536 bytes");
    // Garbage with a newline is malformed JSON, and the connection lives on.
    let mut garbage = UnixStream::connect(&socket).expect("connect");
    garbage.set_read_timeout(Some(SETTLE)).expect("timeout");
    garbage.write_all(&noise).expect("send");
    garbage
        .write_all(b"\n{\"cmd\":\"status\"}\n")
        .expect("send");
    let mut reader = BufReader::new(garbage);
    let mut first = String::new();
    reader.read_line(&mut first).expect("answer");
    assert!(error_of(&first).starts_with("malformed JSON"), "{first}");
    let mut second = String::new();
    reader.read_line(&mut second).expect("answer");
    assert!(second.contains("\"jobs\""), "{second}");
    drop(hostile);
}

#[test]
fn idle_connections_are_closed() {
    let lrpm = farm();
    let mut idle = UnixStream::connect(&lrpm.socket).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let started = Instant::now();
    let mut answer = String::new();
    idle.read_to_string(&mut answer).expect("read until closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(20),
        "closed after {waited:?}"
    );
    assert!(
        error_of(&answer).contains("no complete request"),
        "{answer}"
    );
}

#[test]
fn a_connection_over_the_share_replaces_the_oldest_idle_one() {
    let lrpm = farm();
    let mut open = Vec::new();
    // The share is 256 connections per uid; the test process needs that
    // many descriptors.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current.is_some_and(|n| n < 700) {
        let raised = rustix::process::Rlimit {
            current: limit.maximum.map(|m| m.min(4096)),
            maximum: limit.maximum,
        };
        let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised);
    }
    for _ in 0..256 {
        open.push(UnixStream::connect(&lrpm.socket).expect("connect"));
    }
    // Make sure the server has accepted them all: the last one asks.
    let last = open.last_mut().expect("a connection");
    last.set_read_timeout(Some(SETTLE)).expect("timeout");
    last.write_all(b"{\"cmd\":\"help\"}\n").expect("send");
    let mut line = String::new();
    BufReader::new(&*last).read_line(&mut line).expect("answer");
    // One more is served, and the oldest idle connection is told why it
    // is closed.
    let status = raw_request(&lrpm.socket, r#"{"cmd":"status"}"#).expect("status answers");
    assert_eq!(status["ok"], true);
    let first = &mut open[0];
    first.set_read_timeout(Some(SETTLE)).expect("timeout");
    let mut answer = String::new();
    first.read_to_string(&mut answer).expect("closed");
    assert!(
        error_of(&answer).contains("to make room for a newer connection"),
        "{answer}"
    );
}

// ---------------------------------------------------------------- scale

/// Measures the status of 10,000 jobs over the socket and as the lrpmctl
/// table. Starting the farm takes minutes, past nextest's slow-test limit,
/// so run it with
/// `cargo test --release -p lrpm --test it -- --ignored control::ten_thousand --nocapture`.
#[test]
#[ignore = "slow: starts 10,000 processes"]
fn ten_thousand_jobs_status() {
    const JOBS: usize = 10_000;
    let mut config = String::with_capacity(JOBS * 64);
    for i in 0..JOBS {
        config.push_str(&format!(
            "[job-{i}]\nname = \"Job number {i}\"\ncommand = [\"sleep\", \"100000\"]\n"
        ));
    }
    let started = Instant::now();
    let lrpm = Lrpm::start("jobs.toml", &config, &[]);
    // While lrpm spawns the farm its event loop is busy, and a status
    // request may time out: keep asking.
    loop {
        // Each worker costs lrpm three descriptors (a pidfd and two pipes):
        // under a hard limit below 30,000 some starts fail with EMFILE and
        // those jobs wait in backoff. Either way the status lists them all.
        let settled = raw_request(&lrpm.socket, r#"{"cmd":"status"}"#)
            .ok()
            .and_then(|s| {
                let jobs = s["jobs"].as_array()?;
                let running = jobs.iter().filter(|j| j["state"] == "running").count();
                let settled = jobs.len() == JOBS
                    && jobs
                        .iter()
                        .all(|j| j["state"] == "running" || j["state"] == "backoff");
                settled.then_some(running)
            });
        if let Some(running) = settled {
            eprintln!(
                "{JOBS} jobs listed, {running} running, after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the farm did not start\n{}",
            lrpm.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let mut socket_times = Vec::new();
    let mut size = 0;
    for _ in 0..10 {
        let asked = Instant::now();
        let mut stream = UnixStream::connect(&lrpm.socket).expect("connect");
        stream.write_all(b"{\"cmd\":\"status\"}\n").expect("send");
        let mut answer = Vec::new();
        BufReader::new(stream)
            .read_until(b'\n', &mut answer)
            .expect("answer");
        socket_times.push(asked.elapsed());
        size = answer.len();
    }
    let measure = |args: &[&str]| {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let asked = Instant::now();
            let output = lrpm.ctl(args);
            times.push(asked.elapsed());
            assert_exit(&output, 0);
            bytes = output.stdout.len();
        }
        times.sort();
        (times[times.len() / 2], bytes)
    };
    let (table, table_bytes) = measure(&["status"]);
    let (json, json_bytes) = measure(&["status", "--json"]);
    socket_times.sort();
    eprintln!(
        "status of {JOBS} jobs: raw socket round trip median {:?} (min {:?}, max {:?}), {size} bytes",
        socket_times[socket_times.len() / 2],
        socket_times[0],
        socket_times[socket_times.len() - 1]
    );
    eprintln!("lrpmctl status (table incl. /proc reads) median {table:?}, {table_bytes} bytes");
    eprintln!("lrpmctl status --json median {json:?}, {json_bytes} bytes");
}
