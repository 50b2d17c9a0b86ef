//! Test fixtures shared by the integration tests: a real `lrpm` process on a
//! temp-dir socket, a raw protocol client, and `lrpmctl`.
//!
//! Every process a test starts is ended by pid when its fixture drops, never
//! by name: lrpm by SIGKILL, and its workers by their parent-death signal.
//! Timeouts are generous because the tests run in parallel on a small,
//! loaded machine.
#![allow(dead_code)] // Each test binary uses a different part of it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long lrpm may take to answer on its socket after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long lrpm may take to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one raw request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker may take to write its pid file.
pub const PID_TIMEOUT: Duration = Duration::from_secs(30);

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
        Lrpm::try_start(config_file_name, config_text, extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Lrpm::start`], returning the failure instead of panicking. The
    /// error starts with `lrpm exited with exit status: N` when lrpm
    /// exited, and holds its stderr.
    pub fn try_start(
        config_file_name: &str,
        config_text: &str,
        extra_args: &[&str],
    ) -> Result<Lrpm, String> {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let socket = dir.path().join("control.sock");
        let config = dir.path().join(config_file_name);
        std::fs::write(&config, config_text).expect("write the config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_lrpm"));
        command
            .arg("--socket")
            .arg(&socket)
            .args(extra_args)
            .arg(&config);
        Lrpm::spawn_in(dir, socket, config, command)
    }

    /// Starts lrpm as `command` (whose arguments the caller set), with its
    /// output in `dir`, and waits until `socket` answers.
    pub fn spawn_in(
        dir: tempfile::TempDir,
        socket: PathBuf,
        config: PathBuf,
        mut command: Command,
    ) -> Result<Lrpm, String> {
        let stdout =
            std::fs::File::create(dir.path().join("stdout.log")).expect("create stdout.log");
        let stderr =
            std::fs::File::create(dir.path().join("stderr.log")).expect("create stderr.log");
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

    /// Sends one raw request line and returns the parsed response line.
    /// Panics, with lrpm's stderr, when there is no valid answer.
    pub fn request(&self, json_line: &str) -> serde_json::Value {
        raw_request(&self.socket, json_line).unwrap_or_else(|e| {
            panic!(
                "request {json_line} failed: {e}\n--- stderr ---\n{}",
                self.stderr()
            )
        })
    }

    /// The status response.
    pub fn status(&self) -> serde_json::Value {
        self.request(r#"{"cmd":"status"}"#)
    }

    /// Job `id`'s status object, if lrpm has that job.
    pub fn job(&self, id: &str) -> Option<serde_json::Value> {
        job_in(&self.status(), id).cloned()
    }

    /// Polls status every ~10 ms until `pred` holds, and returns that
    /// status; panics with `what`, the last status and stderr after
    /// `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
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
            let _ = child.wait();
        }
    }
}

/// `id`'s job object in a status response.
pub fn job_in<'a>(status: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    status["jobs"]
        .as_array()?
        .iter()
        .find(|job| job["id"] == id)
}

/// Sends one request line on a fresh connection to `socket` and reads one
/// response line.
pub fn raw_request(socket: &Path, json_line: &str) -> Result<serde_json::Value, String> {
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

/// The `lrpmctl` binary: built by its own crate into the same directory as
/// `lrpm` (`cargo build --workspace`, or any test run of the workspace,
/// which builds the binaries of every crate with integration tests).
pub fn lrpmctl_bin() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_lrpm")).with_file_name("lrpmctl");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// A `Command` for the `lrpmctl` binary, with no socket set.
pub fn ctl_command() -> Command {
    let mut command = Command::new(lrpmctl_bin());
    command.stdin(Stdio::null());
    command
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

/// Whether process `pid` is alive: it exists (`kill(pid, 0)`) and is not a
/// zombie.
pub fn pid_alive(pid: u32) -> bool {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(raw) {
        Ok(()) | Err(rustix::io::Errno::PERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_none_or(|state| state != "Z"),
        Err(_) => false,
    }
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
    wait_for_value(&format!("a pid in {}", path.display()), PID_TIMEOUT, || {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    })
}

/// The pid of a job of the status document, if it has one.
pub fn pid_of(job: &Value) -> Option<u32> {
    job["pid"].as_u64().map(|p| p as u32)
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
