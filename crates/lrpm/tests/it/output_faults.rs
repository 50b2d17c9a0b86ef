//! lrpm's own stdout and stderr in trouble: an unread pipe, a closed one, a
//! full filesystem. With workers flooding both streams and a job that keeps
//! crashing, lrpm answers `status` promptly throughout (within 5 s: a loop
//! blocked on a write would never answer; the quiet figure is 55 ms), keeps
//! restarting the crashing job, does not exit, counts what it loses in
//! the status, reports it in its log once the stream takes writes again,
//! and exits with 74 (EX_IOERR) at the end of the run.
//!
//! Each test gives lrpm pipes or files of its own; the tmpfs test mounts a
//! 1 MiB tmpfs (root only) and unmounts it at the end.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Lrpm, fd_count, is_root, job_in, lrpm_command, prerequisite, raw_request, wait_until,
};

const LONG: Duration = Duration::from_secs(60);
/// The longest a `status` may take while output is in trouble. It proves
/// that nothing blocks the event loop: a loop blocked on a write to an
/// unread or full stream would never answer. The quiet figure is about
/// 55 ms; a clean-clone CI run took 1.22 s under load, so the bound is
/// generous (5 s) and measures no speed.
const STATUS_BOUND: Duration = Duration::from_secs(5);

/// A job that crashes every 0.1 s after a line on each stream, a flood on
/// each stream (quiet while the file `quiet` exists in lrpm's working
/// directory), and twenty jobs that crash at once (their restarts fill
/// lrpm's log).
fn farm() -> String {
    let line = "x".repeat(100);
    let flood = |redirect: &str| {
        format!("while :; do if [ -e quiet ]; then sleep 0.1; else echo {line}{redirect}; fi; done")
    };
    let mut jobs = serde_json::Map::new();
    jobs.insert(
        "crash".into(),
        serde_json::json!({"name": "crash", "shortRunTimeSeconds": 0,
            "command": ["sh", "-c", "echo crash-out; echo crash-err >&2; sleep 0.1; exit 1"]}),
    );
    jobs.insert(
        "flood-out".into(),
        serde_json::json!({"name": "flood-out", "command": ["sh", "-c", flood("")]}),
    );
    jobs.insert(
        "flood-err".into(),
        serde_json::json!({"name": "flood-err", "command": ["sh", "-c", flood(" >&2")]}),
    );
    for i in 0..20 {
        let id = format!("churn{i}");
        jobs.insert(
            id.clone(),
            serde_json::json!({"name": id, "shortRunTimeSeconds": 0, "command": ["false"]}),
        );
    }
    Value::Object(jobs).to_string()
}

/// Starts lrpm on [`farm`] with its stdout and stderr as given.
fn start(stdout: Stdio, stderr: Stdio) -> Lrpm {
    start_farm(&farm(), stdout, stderr)
}

/// Starts lrpm on the JSON configuration `farm` with its stdout and stderr
/// as given.
fn start_farm(farm: &str, stdout: Stdio, stderr: Stdio) -> Lrpm {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobs.json");
    std::fs::write(&config, farm).expect("config");
    let socket = dir.path().join("control.sock");
    let mut command = lrpm_command();
    command.arg("--socket").arg(&socket).arg(&config);
    Lrpm::spawn_with_output(dir, socket, config, command, stdout, stderr)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A status, which must come within [`STATUS_BOUND`], from an lrpm that
/// must still be running.
fn prompt_status(lrpm: &mut Lrpm) -> Value {
    assert_eq!(lrpm.try_wait(), None, "lrpm exited");
    let asked = Instant::now();
    let status = raw_request(&lrpm.socket, r#"{"cmd":"status"}"#)
        .unwrap_or_else(|e| panic!("status failed: {e}"));
    let took = asked.elapsed();
    assert!(took < STATUS_BOUND, "status took {took:?}");
    assert_eq!(status["ok"], true, "{status}");
    status
}

fn restarts(status: &Value) -> u64 {
    job_in(status, "crash").expect("the crash job")["restarts"]
        .as_u64()
        .expect("restarts")
}

/// The `supervisor.output` counter `field` of `stream` (`log`, `stdout`,
/// `stderr`).
fn lost(status: &Value, stream: &str, field: &str) -> u64 {
    status["supervisor"]["output"][stream][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no output.{stream}.{field} in {}", status["supervisor"]))
}

/// Polls status (each within [`STATUS_BOUND`]) until `pred` holds; then
/// checks that the crashing job still restarts, at least five more times,
/// with every status prompt meanwhile.
fn hold_until(lrpm: &mut Lrpm, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    let status = loop {
        let status = prompt_status(lrpm);
        if pred(&status) {
            break status;
        }
        assert!(
            started.elapsed() < LONG,
            "{what}: not within {LONG:?}; last status {}",
            status["supervisor"]
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let before = restarts(&status);
    let started = Instant::now();
    loop {
        let now = prompt_status(lrpm);
        if restarts(&now) >= before + 5 {
            return now;
        }
        assert!(
            started.elapsed() < LONG,
            "{what}: the crashing job stopped restarting at {before}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `from` to its end on a thread, line by line, keeping nothing but
/// whether a line contained each of `wanted`.
fn watch_lines(from: File, wanted: &[&str]) -> Vec<Arc<AtomicBool>> {
    let seen: Vec<Arc<AtomicBool>> = wanted.iter().map(|_| Arc::default()).collect();
    let (wanted, flags): (Vec<String>, Vec<_>) = (
        wanted.iter().map(|w| (*w).to_owned()).collect(),
        seen.clone(),
    );
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            for (w, flag) in wanted.iter().zip(&flags) {
                if text.contains(w.as_str()) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            line.clear();
        }
    });
    seen
}

/// Stops lrpm and checks it says, by its exit code only, that output was
/// lost.
fn expect_ioerr_exit(lrpm: &mut Lrpm) {
    let status = lrpm.terminate();
    assert_eq!(
        status.code(),
        Some(74),
        "{status:?} (signal {:?})",
        status.signal()
    );
}

#[test]
fn an_unread_stdout_and_stderr_block_nothing_and_the_loss_is_reported_once_drained() {
    let (err_r, err_w) = rustix::pipe::pipe().expect("pipe");
    let (out_r, out_w) = rustix::pipe::pipe().expect("pipe");
    let mut lrpm = start(File::from(out_w).into(), File::from(err_w).into());
    // Nobody reads either pipe: lrpm's log fills its queue and is dropped,
    // the workers wait on their pipes, and the farm goes on.
    hold_until(
        &mut lrpm,
        "lrpm's log dropped while stderr is blocked",
        |s| lost(s, "log", "lines_dropped") > 0,
    );
    // Draining both pipes: lrpm's log says what it dropped.
    let report = watch_lines(
        File::from(err_r),
        &["lines of lrpm's log dropped while stderr was blocked"],
    );
    let _out = watch_lines(File::from(out_r), &[]);
    wait_until("the report of the dropped log lines", LONG, || {
        let _ = prompt_status(&mut lrpm);
        report[0].load(Ordering::Relaxed)
    });
    hold_until(&mut lrpm, "restarts after the drain", |_| true);
    expect_ioerr_exit(&mut lrpm);
}

/// While nobody reads lrpm's stdout, workers that print and exit over and
/// over do not leave lrpm one pipe per ended run: an exited worker's lines
/// wait at most a few seconds for room, then they are given up (counted
/// as lost) and its pipe is closed.
#[test]
fn exited_workers_do_not_keep_their_pipes_while_stdout_is_blocked() {
    let line = "x".repeat(100);
    let mut jobs = serde_json::Map::new();
    jobs.insert(
        "flood".into(),
        serde_json::json!({"name": "flood", "command": ["sh", "-c", format!("while :; do echo {line}; done")]}),
    );
    // Ten jobs each printing 20 KB (less than a pipe holds, so each run
    // ends) and ending after half a second, restarted at once.
    for i in 0..10 {
        let id = format!("chatty{i}");
        let script =
            format!("i=0; while [ $i -lt 200 ]; do echo {line}; i=$((i+1)); done; sleep 0.5");
        jobs.insert(
            id.clone(),
            serde_json::json!({"name": id, "shortRunTimeSeconds": 0, "command": ["sh", "-c", script]}),
        );
    }
    let (_out_r, out_w) = rustix::pipe::pipe().expect("pipe");
    let dir_log = tempfile::NamedTempFile::new().expect("stderr file");
    let stderr = dir_log.reopen().expect("stderr");
    let mut lrpm = start_farm(
        &Value::Object(jobs).to_string(),
        File::from(out_w).into(),
        stderr.into(),
    );
    let chatty_restarts = |status: &Value| -> u64 {
        (0..10)
            .map(|i| {
                job_in(status, &format!("chatty{i}")).expect("job")["restarts"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    // Past the grace of the first runs' lines.
    std::thread::sleep(Duration::from_secs(8));
    let first = prompt_status(&mut lrpm);
    let fds_first = fd_count(lrpm.pid());
    std::thread::sleep(Duration::from_secs(12));
    let second = prompt_status(&mut lrpm);
    let fds_second = fd_count(lrpm.pid());
    let runs = chatty_restarts(&second) - chatty_restarts(&first);
    eprintln!(
        "{runs} runs ended in 12 s; lrpm's descriptors {fds_first} -> {fds_second}; \
         stdout lines lost so far {}",
        lost(&second, "stdout", "lines_dropped")
    );
    assert!(runs >= 40, "only {runs} runs: the jobs did not churn");
    assert!(
        fds_second < fds_first + 60,
        "{runs} ended runs took lrpm from {fds_first} to {fds_second} descriptors"
    );
    assert!(lost(&second, "stdout", "lines_dropped") > 0);
    lrpm.terminate();
}

#[test]
fn a_closed_stderr_and_stdout_are_survived() {
    let (err_r, err_w) = rustix::pipe::pipe().expect("pipe");
    let (out_r, out_w) = rustix::pipe::pipe().expect("pipe");
    // As `lrpm 2>&1 | head -c 100` once head has exited.
    drop((err_r, out_r));
    let mut lrpm = start(File::from(out_w).into(), File::from(err_w).into());
    let status = hold_until(&mut lrpm, "write errors on every stream", |s| {
        ["log", "stdout", "stderr"]
            .iter()
            .all(|stream| lost(s, stream, "write_errors") > 0)
    });
    let last = &status["supervisor"]["output"]["stderr"]["last_error"];
    assert!(
        last.as_str().is_some_and(|e| e.contains("Broken pipe")),
        "{last}"
    );
    expect_ioerr_exit(&mut lrpm);
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted and removed on
/// drop.
pub(crate) struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "lrpm-test"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount: {status}");
        Tmpfs { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Fills the filesystem of `path` with the file `path`.
pub(crate) fn fill(path: &Path) {
    let mut filler = File::create(path).expect("create the filler");
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    // A filesystem with a few bytes left in a block takes a last short
    // write.
    while filler.write_all(&block[..1]).is_ok() {}
}

#[test]
fn a_full_filesystem_under_stdout_and_stderr_is_survived_and_reported_once_freed() {
    if !prerequisite("root, to mount a tmpfs", is_root()) {
        return;
    }
    let tmpfs = Tmpfs::mount("1m");
    let (out, err) = (tmpfs.path("stdout.log"), tmpfs.path("stderr.log"));
    let open = |path: &Path| {
        File::options()
            .create(true)
            .append(true)
            .open(path)
            .expect("open a log on the tmpfs")
    };
    let (out_file, err_file) = (open(&out), open(&err));
    fill(&tmpfs.path("filler"));
    let mut lrpm = start(out_file.into(), err_file.into());
    let status = hold_until(&mut lrpm, "write errors on every stream", |s| {
        ["log", "stdout", "stderr"]
            .iter()
            .all(|stream| lost(s, stream, "write_errors") > 0)
    });
    let last = &status["supervisor"]["output"]["log"]["last_error"];
    assert!(
        last.as_str().is_some_and(|e| e.contains("No space left")),
        "{last}"
    );
    // The floods pause, and the filesystem has room again: the next lines
    // are written, and the log says what was lost before.
    File::create(lrpm.dir.path().join("quiet")).expect("quiet");
    std::fs::remove_file(tmpfs.path("filler")).expect("free the tmpfs");
    let reports = ["lrpm's log: ", "workers' stdout: ", "workers' stderr: "];
    wait_until("the reports of what was lost", LONG, || {
        let _ = prompt_status(&mut lrpm);
        let log = std::fs::read_to_string(&err).unwrap_or_default();
        reports.iter().all(|r| {
            log.lines()
                .any(|l| l.contains(r) && l.contains("No space left"))
        })
    });
    hold_until(&mut lrpm, "restarts after the recovery", |_| true);
    expect_ioerr_exit(&mut lrpm);
    drop(lrpm);
    drop(tmpfs);
}
