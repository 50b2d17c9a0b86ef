//! What the integration tests share: a real `lrpm` process on a temp-dir
//! socket ([`Lrpm`]), a raw protocol client, `lrpmctl`, the waits, what
//! `/proc` says about a process, and the tests' prerequisites.
//!
//! Every process a test starts is ended by pid when its fixture drops, never
//! by name: lrpm by SIGKILL, and its workers by their parent-death signal
//! or their cgroup; the cgroup tree a killed lrpm leaves is removed too.
//! Timeouts are generous because the tests run in parallel on a small,
//! loaded machine.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;
use serde_json::Value;

/// How long lrpm may take to answer on its socket after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long lrpm may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one raw request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker may take to write its pid file, a job to be running,
/// or the source to load or to fail.
const WAIT: Duration = Duration::from_secs(30);

/// The `lrpm` binary.
pub fn lrpm_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lrpm"))
}

/// The `lrpmctl` binary: built by its own crate into the directory of
/// `lrpm` (`cargo build --workspace`, or any test run of the workspace,
/// which builds the binaries of every crate with integration tests).
pub fn lrpmctl_binary() -> std::path::PathBuf {
    let bin = lrpm_binary().with_file_name("lrpmctl");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// A `Command` for the `lrpm` binary, with no argument yet.
pub fn lrpm_command() -> Command {
    Command::new(lrpm_binary())
}

/// A `Command` for the `lrpmctl` binary, with no socket set.
pub fn ctl_command() -> Command {
    let mut command = Command::new(lrpmctl_binary());
    command.stdin(Stdio::null());
    command
}

/// A running lrpm, with its config, socket and logs in a temp dir.
#[derive(Debug)]
pub struct Lrpm {
    /// The temp dir holding everything: removed on drop.
    pub dir: tempfile::TempDir,
    /// The control socket.
    pub socket: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    /// The lrpm process; `None` once it has been waited for.
    child: Option<Child>,
    /// Its pid.
    pid: u32,
    /// Its exit status, once it has been waited for.
    exit: Option<ExitStatus>,
}

impl Lrpm {
    /// Writes `config_text` to `config_file_name` in a fresh temp dir and
    /// starts lrpm on it with `--socket <dir>/control.sock` and
    /// `extra_args`; returns once the socket answers `status`. Panics with
    /// lrpm's stderr when it does not.
    pub fn start(config_file_name: &str, config_text: &str, extra_args: &[&str]) -> Lrpm {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let config = dir.path().join(config_file_name);
        std::fs::write(&config, config_text).expect("write the config");
        Lrpm::start_in(dir, config.clone(), |command| {
            command.args(extra_args).arg(&config);
        })
    }

    /// Starts lrpm in the temp dir `dir` with `--socket <dir>/control.sock`
    /// and what `setup` adds to its command (the source, other arguments,
    /// the environment); `config` is the file that
    /// [`Lrpm::write_config`] replaces. Panics with lrpm's stderr when lrpm
    /// does not answer.
    pub fn start_in(
        dir: tempfile::TempDir,
        config: PathBuf,
        setup: impl FnOnce(&mut Command),
    ) -> Lrpm {
        let stdout = File::create(dir.path().join("stdout.log")).expect("create stdout.log");
        Lrpm::launch(dir, config, setup, stdout.into())
    }

    /// [`Lrpm::start_in`], with lrpm's stdout a pipe that the test reads
    /// when it wants to ([`Lrpm::take_stdout`]), as a log collector would.
    pub fn start_in_with_piped_stdout(
        dir: tempfile::TempDir,
        config: PathBuf,
        setup: impl FnOnce(&mut Command),
    ) -> Lrpm {
        Lrpm::launch(dir, config, setup, Stdio::piped())
    }

    fn launch(
        dir: tempfile::TempDir,
        config: PathBuf,
        setup: impl FnOnce(&mut Command),
        stdout: Stdio,
    ) -> Lrpm {
        let socket = dir.path().join("control.sock");
        let mut command = lrpm_command();
        command.arg("--socket").arg(&socket);
        setup(&mut command);
        Lrpm::spawn_with_stdout(dir, socket, config, command, stdout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts lrpm as `command` (whose arguments the caller set), with its
    /// output in files of `dir`, and waits until `socket` answers. The
    /// error starts with `lrpm exited with exit status: N` when lrpm
    /// exited, and holds its stderr.
    pub fn spawn_in(
        dir: tempfile::TempDir,
        socket: PathBuf,
        config: PathBuf,
        command: Command,
    ) -> Result<Lrpm, String> {
        let stdout = File::create(dir.path().join("stdout.log")).expect("create stdout.log");
        Lrpm::spawn_with_stdout(dir, socket, config, command, stdout.into())
    }

    fn spawn_with_stdout(
        dir: tempfile::TempDir,
        socket: PathBuf,
        config: PathBuf,
        command: Command,
        stdout: Stdio,
    ) -> Result<Lrpm, String> {
        let stderr = File::create(dir.path().join("stderr.log")).expect("create stderr.log");
        Lrpm::spawn_with_output(dir, socket, config, command, stdout, stderr.into())
    }

    /// [`Lrpm::spawn_in`] with lrpm's stdout and stderr where the caller
    /// wants them ([`Lrpm::stderr`] then reads nothing).
    pub fn spawn_with_output(
        dir: tempfile::TempDir,
        socket: PathBuf,
        config: PathBuf,
        mut command: Command,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Lrpm, String> {
        // Workers inherit lrpm's working directory: make it the temp dir, so
        // that relative paths in test jobs land there.
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn lrpm");
        let mut lrpm = Lrpm {
            pid: child.id(),
            child: Some(child),
            exit: None,
            dir,
            socket,
            config,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = lrpm.try_wait() {
                return Err(format!(
                    "lrpm exited with {status}\n--- stderr ---\n{}",
                    lrpm.stderr()
                ));
            }
            if let Ok(answer) = raw_request(&lrpm.socket, r#"{"cmd":"status"}"#) {
                if answer["ok"] == true {
                    return Ok(lrpm);
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "lrpm did not answer on {} within {START_TIMEOUT:?}\n--- stderr ---\n{}",
                    lrpm.socket.display(),
                    lrpm.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// lrpm's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The read end of lrpm's stdout, when it was started by
    /// [`Lrpm::spawn_with_piped_stdout`].
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child
            .as_mut()
            .and_then(|child| child.stdout.take())
            .expect("lrpm's stdout is a pipe the test holds")
    }

    /// lrpm's stderr, when it is a pipe the test holds
    /// ([`Lrpm::spawn_with_output`] with `Stdio::piped()`).
    pub fn take_stderr(&mut self) -> std::process::ChildStderr {
        self.child
            .as_mut()
            .and_then(|child| child.stderr.take())
            .expect("lrpm's stderr is a pipe the test holds")
    }

    /// Sends one raw request line and returns the parsed response line.
    /// Panics, with lrpm's stderr, when there is no valid answer.
    pub fn request(&self, json_line: &str) -> Value {
        raw_request(&self.socket, json_line).unwrap_or_else(|e| {
            panic!(
                "request {json_line} failed: {e}\n--- stderr ---\n{}",
                self.stderr()
            )
        })
    }

    /// The status response.
    pub fn status(&self) -> Value {
        self.request(r#"{"cmd":"status"}"#)
    }

    /// Job `id`'s status object, if lrpm has that job.
    pub fn job(&self, id: &str) -> Option<Value> {
        job_in(&self.status(), id).cloned()
    }

    /// Polls status every ~10 ms until `pred` holds, and returns that
    /// status; panics with `what`, the last status and stderr after
    /// `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let status = self.status();
            if pred(&status) {
                return status;
            }
            if started.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n--- last status ---\n{}\n--- stderr ---\n{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid of job `id`, once it is running.
    pub fn running_pid(&self, id: &str) -> u32 {
        let status = self.wait_for(&format!("job {id} running"), WAIT, |s| running(s, id));
        job_in(&status, id).and_then(pid_of).expect("a pid")
    }

    /// Waits until the source's error contains `text`, and returns the
    /// status then.
    pub fn wait_for_source_error_status(&self, text: &str) -> Value {
        self.wait_for(&format!("the source error {text:?}"), WAIT, |s| {
            source_error(s).is_some_and(|e| e.contains(text))
        })
    }

    /// Waits until the source's error contains `text`, and returns it.
    pub fn wait_for_source_error(&self, text: &str) -> String {
        let status = self.wait_for_source_error_status(text);
        source_error(&status).expect("an error").to_owned()
    }

    /// Waits until the source has no error.
    pub fn wait_for_no_source_error(&self) {
        self.wait_for("the source error to clear", WAIT, |s| {
            source_error(s).is_none()
        });
    }

    /// Makes `change` (of the configuration, or a reload), then waits until
    /// the source has finished an attempt to load that began after the
    /// change began (`supervisor.source.last_attempt_at`), and returns the
    /// status then: lrpm has seen the change, and done whatever it does
    /// about it. This is how a test checks that lrpm *ignored* a change,
    /// rather than not seeing it yet.
    ///
    /// An attempt that something else started a moment before the change
    /// was complete also ends the wait (only a rare race allows it: it
    /// makes the check weaker that once, never wrong); an attempt that
    /// began just after the change always counts, which a time taken after
    /// the change would miss.
    pub fn wait_for_load_after(&self, change: impl FnOnce()) -> Value {
        let since = wall_now();
        change();
        self.wait_for(
            "an attempt to load that began after the change",
            WAIT,
            |s| {
                s["supervisor"]["source"]["last_attempt_at"]
                    .as_f64()
                    .is_some_and(|at| at >= since)
            },
        )
    }

    /// Replaces the configuration atomically: a temp file renamed over it.
    pub fn write_config(&self, text: &str) {
        let name = self.config.file_name().expect("the config has a name");
        let tmp = self
            .config
            .with_file_name(format!(".{}.tmp", name.to_string_lossy()));
        std::fs::write(&tmp, text).expect("write the new config");
        std::fs::rename(&tmp, &self.config).expect("rename the new config into place");
    }

    /// Runs `lrpmctl --socket <socket> args…` and returns its output.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut command = ctl_command();
        command.arg("--socket").arg(&self.socket).args(args);
        run_bounded(command, EXIT_TIMEOUT)
    }

    /// What lrpm printed on stdout so far (its workers' output).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// What lrpm printed on stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Whether lrpm put each job in a cgroup of its own, as it says in its
    /// log at start: cgroup v2 is there, and writable.
    pub fn uses_cgroups(&self) -> bool {
        // lrpm's start-up log says it either way, then ends its containment
        // lines with what `memoryMax` does; they reach this test's stderr
        // reader through lrpm's log thread, possibly after lrpm answered
        // its first request: wait for that last line before deciding.
        wait_until("lrpm's containment lines", WAIT, || {
            self.stderr().contains("jobs with memoryMax")
        });
        self.stderr().contains("in a cgroup of its own")
    }

    /// Sends SIGTERM and waits for lrpm to exit; SIGKILLs it and panics if
    /// it takes longer than [`EXIT_TIMEOUT`].
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        signal(self.pid, rustix::process::Signal::TERM);
        match self.wait_timeout(EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                signal(self.pid, rustix::process::Signal::KILL);
                let _ = self.wait_timeout(EXIT_TIMEOUT);
                panic!(
                    "lrpm did not exit within {EXIT_TIMEOUT:?} of SIGTERM\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Waits for lrpm to exit by itself, for at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// lrpm's exit status, if it has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return self.exit;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                self.exit = Some(status);
                Some(status)
            }
            Ok(None) => None,
            Err(e) => panic!("cannot wait for lrpm: {e}"),
        }
    }
}

impl Drop for Lrpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                signal(self.pid, rustix::process::Signal::KILL);
            }
            self.exit = child.wait().ok();
        }
        // Killed (by this drop or by the test), lrpm left its cgroup tree
        // behind: the next lrpm to start on this machine would find it.
        if self.exit.is_some_and(|status| status.signal().is_some()) {
            remove_cgroup_tree(self.pid);
        }
    }
}

// ---------------------------------------------------------------------------
// The status document.

/// `id`'s job object in a status response.
pub fn job_in<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    jobs_in(status).iter().find(|job| job["id"] == id)
}

/// The jobs of a status response.
pub fn jobs_in(status: &Value) -> &[Value] {
    status["jobs"].as_array().map_or(&[], Vec::as_slice)
}

/// The pid of a job of the status document, if it has one.
pub fn pid_of(job: &Value) -> Option<u32> {
    job["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Whether job `id` is running, with a pid.
pub fn running(status: &Value, id: &str) -> bool {
    job_in(status, id).is_some_and(is_running)
}

/// Whether there are `n` jobs, each running with a pid.
pub fn all_running(status: &Value, n: usize) -> bool {
    let jobs = jobs_in(status);
    jobs.len() == n && jobs.iter().all(is_running)
}

fn is_running(job: &Value) -> bool {
    job["state"] == "running" && job["pid"].is_u64()
}

/// The source's error in a status response, if it has one.
pub fn source_error(status: &Value) -> Option<&str> {
    status["supervisor"]["source"]["last_error"].as_str()
}

/// How many attempts to load the source has finished, in a status
/// response.
pub fn loads(status: &Value) -> u64 {
    status["supervisor"]["source"]["loads"]
        .as_u64()
        .expect("supervisor.source.loads")
}

/// A one-line JSON job map with a `sleep` job for each id.
pub fn jobs(ids: &[&str]) -> String {
    let map: serde_json::Map<String, Value> = ids
        .iter()
        .map(|id| {
            let job = serde_json::json!({"name": id, "command": ["sleep", "300"]});
            ((*id).to_owned(), job)
        })
        .collect();
    Value::Object(map).to_string()
}

/// Seconds since the Unix epoch, now: the clock of the status's times.
pub fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// Clients and commands.

/// Sends one request line on a fresh connection to `socket` and reads one
/// response line.
pub fn raw_request(socket: &Path, json_line: &str) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = json_line.to_owned();
    if !line.ends_with('\n') {
        line.push('\n');
    }
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("receive: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("bad answer {answer:?}: {e}"))
}

/// Runs `command` to completion with its output captured; kills it by pid
/// and panics when it takes longer than `timeout`.
pub fn run_bounded(mut command: Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pid = child.id();
    // Read the pipes on threads, so that a chatty child cannot block on a
    // full pipe while we wait for it.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if started.elapsed() > timeout {
            signal(pid, rustix::process::Signal::KILL);
            let _ = child.wait();
            panic!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

// ---------------------------------------------------------------------------
// Waits.

/// Polls `cond` every 10 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_for_value(what, timeout, || cond().then_some(()));
}

/// Polls `look` every 10 ms until it finds something, and returns what it
/// found (not a second look, which may see something else); panics after
/// `timeout`.
pub fn wait_for_value<T>(what: &str, timeout: Duration, mut look: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = look() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pid a worker wrote to `path`, once the file holds one (a worker that
/// rewrites the file truncates it first).
pub fn read_pid(path: &Path) -> u32 {
    wait_for_value(&format!("a pid in {}", path.display()), WAIT, || {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    })
}

// ---------------------------------------------------------------------------
// Processes.

pub use lrpm_process::procfs::pid_alive;

/// The state letter of `pid` (`R`, `S`, `T`, `Z`…), if it exists.
pub fn state_of(pid: u32) -> Option<char> {
    lrpm_process::procfs::read_stat(pid).map(|stat| char::from(stat.state))
}

/// Sends `signal` to process `pid`, ignoring a process that is gone.
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The children of process `pid` (of all its threads).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return vec![];
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether process `pid` is an lrpm's guardian (`__lrpm-guardian`).
pub fn is_guardian(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline.split(|b| *b == 0).nth(1) == Some(b"__lrpm-guardian".as_slice())
    })
}

/// The children of lrpm `pid` but its guardian.
pub fn children_but_the_guardian(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|child| !is_guardian(*child))
        .collect()
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// How many descriptors process `pid` has open (0 once it is gone).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

// ---------------------------------------------------------------------------
// Prerequisites.

/// The environment variable that makes a missing prerequisite fail a test
/// rather than skip it: `.ci/run` sets it to 1, so that CI never passes a
/// test that did not run.
const REQUIRE_ALL: &str = "LRPM_TEST_REQUIRE_ALL";

/// Whether the prerequisite `what` of a test is `available`. When it is
/// not, the test is skipped (it says so, and returns) or, with
/// `LRPM_TEST_REQUIRE_ALL=1`, fails here.
pub fn prerequisite(what: &str, available: bool) -> bool {
    if !available {
        assert!(
            std::env::var_os(REQUIRE_ALL).is_none_or(|v| v != "1"),
            "missing prerequisite: {what} ({REQUIRE_ALL}=1 makes that a failure)"
        );
        eprintln!("skipped: missing prerequisite: {what}");
    }
    available
}

/// Whether `python3` runs (a prerequisite of the tests whose workers or
/// hosts are Python).
pub fn python3() -> bool {
    prerequisite(
        "python3",
        Command::new("python3")
            .arg("-c")
            .arg("pass")
            .status()
            .is_ok_and(|s| s.success()),
    )
}

/// Whether this test process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

// ---------------------------------------------------------------------------
// Cgroups.

/// The cgroup v2 path of process `pid` (the `0::PATH` line of
/// `/proc/PID/cgroup`).
pub fn cgroup_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

/// The directory of the cgroup v2 `path` (as [`cgroup_of`] gives it),
/// under the cgroup2 mount whose root holds it.
pub fn cgroup_dir(path: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (root, mount) = (*fields.get(3)?, *fields.get(4)?);
        let rest = if root == "/" {
            path
        } else {
            path.strip_prefix(root)
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
        };
        Some(Path::new(mount).join(rest.trim_start_matches('/')))
    })
}

/// Removes the cgroup tree that lrpm `pid` left when it was killed
/// (`lrpm-PID/` under the cgroup it inherited from this process), as the
/// next lrpm to start would: it kills what is left in it with
/// `cgroup.kill` (the grandchildren of its workers, which have no
/// parent-death signal), then removes its cgroups, deepest first. A tree
/// that is locked belongs to a live lrpm and is left alone; so is
/// everything while another lrpm creates its tree (the parent's lock).
fn remove_cgroup_tree(pid: u32) {
    let Some(parent) = cgroup_of(std::process::id()).and_then(|path| cgroup_dir(&path)) else {
        return;
    };
    let name = format!("lrpm-{pid}");
    let mut trees = Vec::new();
    {
        let _parent = lock(&parent, Duration::from_secs(2));
        let Ok(entries) = std::fs::read_dir(&parent) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(entry_name) = file_name.to_str() else {
                continue;
            };
            let ours = entry_name == name
                || entry_name
                    .strip_prefix(&name)
                    .is_some_and(|rest| rest.starts_with('.'));
            let tree = entry.path();
            // Held while the tree is removed, so that no lrpm takes it for
            // a stale one of its own to remove.
            let Some(held) = ours.then(|| lock(&tree, Duration::ZERO)).flatten() else {
                continue;
            };
            let _ = std::fs::write(tree.join("cgroup.kill"), "1");
            trees.push((tree, held));
        }
    }
    for (tree, _held) in trees {
        remove_cgroups(&tree);
    }
}

/// An exclusive `flock` on `path`, taken within `patience`.
fn lock(path: &Path, patience: Duration) -> Option<File> {
    let file = File::open(path).ok()?;
    let deadline = Instant::now() + patience;
    loop {
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Some(file),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return None,
        }
    }
}

/// Removes the killed cgroup `dir` and every cgroup below it, deepest
/// first, waiting for the killed processes to die (10 s at most).
fn remove_cgroups(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroups(&entry.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("cannot remove the cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
