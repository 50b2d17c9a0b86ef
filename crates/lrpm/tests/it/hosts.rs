//! Worker hosts (docs/hosts.md) with real hosts: the Python host of
//! examples/python forks the workers of a small module written by each
//! test into its temp dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Lrpm, children_of, job_in, pid_alive, pid_of, prerequisite, python3, running, signal,
    wait_for_value, wait_until,
};

const LONG: Duration = Duration::from_secs(30);

/// The test workers, php-lrpm's shape: `start(config)`, then `cycle()`.
const WORKERS: &str = r#"
import json, os, signal, sys, time

def record(config, extra=None):
    fds = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
           if os.path.exists(f"/proc/self/fd/{fd}")}
    info = {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0),
            "sid": os.getsid(0), "config": config, "fds": fds,
            "env": {k: v for k, v in os.environ.items() if k.startswith("LRPM_")}}
    info.update(extra or {})
    path = os.path.join(config["dir"], os.environ["LRPM_JOB_ID"] + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(info, f)
    os.rename(path + ".tmp", path)

class Recorder:
    def start(self, config):
        record(config)
        print("hello from", os.environ["LRPM_JOB_ID"], flush=True)
        print("to stderr", file=sys.stderr, flush=True)
    def cycle(self):
        time.sleep(0.05)

class Stubborn(Recorder):
    def start(self, config):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        super().start(config)

class Daemon(Recorder):
    def start(self, config):
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode())
                time.sleep(1000)
            os._exit(0)
        os.close(w)
        daemon = int(os.read(r, 32))
        os.wait()
        record(config, {"daemon": daemon})
"#;

fn python_host() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python/lrpm_host.py")
}

/// A hosted job of class `class` (of the test module), recording into
/// `dir`.
fn hosted(dir: &Path, class: &str, extra: Value) -> Value {
    let mut job = json!({
        "name": class,
        "workerClass": format!("hostworkers:{class}"),
        "workerConfig": {"dir": dir, "greeting": "hi"},
        "host": ["python3", python_host(), "--path", dir, "hostworkers"],
        "shortRunTimeSeconds": 0,
        "shutdownTimeoutSeconds": 2,
    });
    for (k, v) in extra.as_object().expect("a map") {
        job[k] = v.clone();
    }
    job
}

/// Starts lrpm on `jobs(dir)`, in a temp dir holding the test workers.
fn start(jobs: impl FnOnce(&Path) -> Value) -> Lrpm {
    start_with(&[], jobs)
}

/// [`start`], with lrpm's arguments `args` too.
fn start_with(args: &[&str], jobs: impl FnOnce(&Path) -> Value) -> Lrpm {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hostworkers.py"), WORKERS).expect("workers");
    let config = dir.path().join("jobs.json");
    std::fs::write(&config, jobs(dir.path()).to_string()).expect("config");
    let source = config.clone();
    Lrpm::start_in(dir, config, move |command| {
        command.args(args).arg(&source);
    })
}

/// The value of `LRPM_RUN_ID` in `pid`'s `/proc/PID/environ` (what the
/// kernel shows, which lrpm's scans by run id read), if it has one.
fn environ_run_id(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"LRPM_RUN_ID="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// What job `id`'s worker recorded at its start (with pid `pid`, if given).
fn recorded(lrpm: &Lrpm, id: &str, pid: Option<u32>) -> Value {
    let path = lrpm.dir.path().join(format!("{id}.json"));
    wait_for_value(&format!("{id}'s record"), LONG, || {
        let info: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
        (pid.is_none() || info["pid"].as_u64() == pid.map(u64::from)).then_some(info)
    })
}

/// Waits until job `id` runs and its worker has recorded its start;
/// returns its pid and record.
fn running_worker(lrpm: &Lrpm, id: &str) -> (u32, Value) {
    let status = lrpm.wait_for(&format!("{id} running"), LONG, |s| running(s, id));
    let pid = pid_of(job_in(&status, id).expect("the job")).expect("its pid");
    (pid, recorded(lrpm, id, Some(pid)))
}

/// SIGKILLs job `id`'s worker `pid` and waits for its replacement; returns
/// the new worker's pid, and how long after the crash it started by lrpm's
/// clock (seconds).
fn crash(lrpm: &Lrpm, id: &str, pid: u32) -> (u32, f64) {
    signal(pid, rustix::process::Signal::KILL);
    let status = lrpm.wait_for("a new worker", LONG, |s| {
        job_in(s, id).and_then(pid_of).is_some_and(|p| p != pid)
    });
    let job = job_in(&status, id).expect("the job");
    assert_eq!(job["last_exit"]["signal"], 9);
    let took = job["started_at"].as_f64().expect("started")
        - job["last_exit"]["at"].as_f64().expect("exit time");
    let next = pid_of(job).expect("its pid");
    recorded(lrpm, id, Some(next));
    (next, took)
}

/// The host processes: lrpm's children that run no job.
fn hosts_of(lrpm: &Lrpm) -> Vec<u32> {
    let status = lrpm.status();
    let workers: Vec<u32> = status["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(pid_of)
        .collect();
    children_of(lrpm.pid())
        .into_iter()
        .filter(|pid| !workers.contains(pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("lrpm_host.py") || c.contains("lrpm-host.php"))
        })
        .collect()
}

#[test]
fn a_hosted_worker_gets_its_config_its_group_its_cgroup_and_only_stdio() {
    if !python3() {
        return;
    }
    let lrpm = start(|dir| {
        json!({
            "a": hosted(dir, "Recorder", json!({"env": {"EXTRA": "x"}})),
            "b": hosted(dir, "Recorder", json!({})),
        })
    });
    let status = lrpm.wait_for("both running", LONG, |s| running(s, "a") && running(s, "b"));
    let pid = pid_of(job_in(&status, "a").expect("a")).expect("a pid");
    let info = recorded(&lrpm, "a", Some(pid));
    assert_eq!(info["config"]["greeting"], "hi");
    assert_eq!(info["env"]["LRPM_JOB_ID"], "a");
    assert_eq!(info["env"]["LRPM_JOB_NAME"], "Recorder");
    assert!(info["env"]["LRPM_RUN_ID"].is_string(), "{info}");
    // Its parent is lrpm, its process group and session its own.
    assert_eq!(info["ppid"], lrpm.pid());
    assert_eq!(info["pgid"], pid);
    assert_eq!(info["sid"], pid);
    // Nothing of the host's but stdio (the listing's own descriptor aside).
    let fds = info["fds"].as_object().expect("fds");
    for (fd, target) in fds {
        let target = target.as_str().expect("a link");
        assert!(
            ["0", "1", "2"].contains(&fd.as_str()) || target.starts_with("/proc/"),
            "descriptor {fd} -> {target} leaked into the worker: {info}"
        );
    }
    assert!(fds["0"].as_str().expect("stdin") == "/dev/null", "{info}");
    if lrpm.uses_cgroups() {
        let cgroup = crate::support::cgroup_of(pid).expect("its cgroup");
        assert!(cgroup.contains("/job-a-"), "{cgroup}");
    }
    // Two jobs, one host.
    let b = pid_of(job_in(&status, "b").expect("b")).expect("b pid");
    recorded(&lrpm, "b", Some(b));
    assert_eq!(hosts_of(&lrpm).len(), 1, "{}", lrpm.stderr());
    // Its output, prefixed.
    wait_until("its output, prefixed", LONG, || {
        lrpm.stdout().contains("[a] hello from a") && lrpm.stderr().contains("[a] to stderr")
    });
}

#[test]
fn a_crashed_hosted_worker_is_restarted_at_once() {
    if !python3() {
        return;
    }
    let lrpm = start(|dir| json!({"a": hosted(dir, "Recorder", json!({}))}));
    let (first, _) = running_worker(&lrpm, "a");
    let (second, took) = crash(&lrpm, "a", first);
    eprintln!("hosted crash → restart: {:.1} ms", took * 1000.0);
    assert!(took < 1.0, "restarted {took} s after its crash");
    assert_eq!(recorded(&lrpm, "a", Some(second))["ppid"], lrpm.pid());
}

#[test]
fn a_stubborn_hosted_worker_is_killed_after_its_timeout() {
    if !python3() {
        return;
    }
    let lrpm =
        start(|dir| json!({"s": hosted(dir, "Stubborn", json!({"shutdownTimeoutSeconds": 1}))}));
    let (pid, _) = running_worker(&lrpm, "s");
    lrpm.write_config("{}");
    wait_until("the stubborn worker gone", LONG, || !pid_alive(pid));
    // lrpm's log is written by a thread of its own: it may lag the kill.
    wait_until("its SIGKILL in the log", LONG, || {
        let log = lrpm.stderr();
        log.contains("killed by signal 9") || log.contains("SIGKILL")
    });
}

#[test]
fn a_host_killed_with_sigkill_is_restarted_and_its_workers_keep_running() {
    if !python3() {
        return;
    }
    let lrpm = start(|dir| json!({"a": hosted(dir, "Recorder", json!({}))}));
    let (worker, _) = running_worker(&lrpm, "a");
    let hosts = hosts_of(&lrpm);
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    // Status shows the host: its argv, state and pid.
    let shown = lrpm.status()["supervisor"]["hosts"].clone();
    assert_eq!(shown[0]["state"], "ready", "{shown}");
    assert_eq!(shown[0]["pid"], hosts[0], "{shown}");
    assert_eq!(shown[0]["restarts"], 0, "{shown}");
    assert!(shown[0]["last_error"].is_null(), "{shown}");
    assert_eq!(shown[0]["argv"][0], "python3", "{shown}");
    signal(hosts[0], rustix::process::Signal::KILL);
    wait_until("the host started again", LONG, || {
        lrpm.stderr().matches("worker host ready").count() >= 2
    });
    // … and, now, that it was started again, and why.
    let shown = lrpm.wait_for("the new host in status", LONG, |s| {
        s["supervisor"]["hosts"][0]["state"] == "ready"
    })["supervisor"]["hosts"]
        .clone();
    assert_eq!(shown[0]["restarts"], 1, "{shown}");
    assert_ne!(shown[0]["pid"], hosts[0], "{shown}");
    let error = shown[0]["last_error"].as_str().expect("its last error");
    // Its exit or its socket's end, whichever lrpm saw first.
    assert!(
        error.contains("it ended") || error.contains("it closed its socket"),
        "{error}"
    );
    assert!(shown[0]["last_error_at"].is_f64(), "{shown}");
    assert!(pid_alive(worker), "the worker died with its host");
    assert_eq!(lrpm.job("a").as_ref().and_then(pid_of), Some(worker));
    // The new host forks the next worker.
    crash(&lrpm, "a", worker);
}

#[test]
fn a_hosted_worker_and_its_daemon_end_with_their_job() {
    if !python3() {
        return;
    }
    let lrpm = start(|dir| json!({"d": hosted(dir, "Daemon", json!({}))}));
    let (pid, info) = running_worker(&lrpm, "d");
    let daemon = info["daemon"].as_u64().expect("daemon pid") as u32;
    assert!(pid_alive(daemon));
    if !prerequisite(
        "cgroups (a daemon that left its group)",
        lrpm.uses_cgroups(),
    ) {
        return;
    }
    lrpm.write_config("{}");
    wait_until("the worker and its daemon gone", LONG, || {
        !pid_alive(pid) && !pid_alive(daemon)
    });
}

#[test]
fn without_cgroups_a_hosted_workers_daemon_carries_its_run_id_and_ends_with_its_job_and_lrpm() {
    if !python3() {
        return;
    }
    let mut lrpm = start_with(
        &["--cgroup", "off"],
        |dir| json!({"d1": hosted(dir, "Daemon", json!({})), "d2": hosted(dir, "Daemon", json!({}))}),
    );
    let (pid1, info1) = running_worker(&lrpm, "d1");
    let (pid2, info2) = running_worker(&lrpm, "d2");
    let daemon = |info: &Value| info["daemon"].as_u64().expect("daemon pid") as u32;
    let (daemon1, daemon2) = (daemon(&info1), daemon(&info2));
    // As an exec'd worker's, the hosted worker's environment block (and
    // its daemon's, forked from it) names its run.
    for (pid, worker) in [(pid1, pid1), (daemon1, pid1), (pid2, pid2), (daemon2, pid2)] {
        let run_id = environ_run_id(pid).unwrap_or_else(|| panic!("{pid} has no LRPM_RUN_ID"));
        assert!(
            run_id.starts_with(&format!("{}.", lrpm.pid())),
            "{pid}: LRPM_RUN_ID={run_id}"
        );
        assert_eq!(Some(run_id), environ_run_id(worker));
    }
    assert!(info1["env"]["LRPM_RUN_ID"].is_string());
    // Removing its job kills its daemon (lrpm adopted it: a subreaper).
    lrpm.write_config(&json!({"d2": hosted(lrpm.dir.path(), "Daemon", json!({}))}).to_string());
    wait_until("d1's worker and daemon gone", LONG, || {
        !pid_alive(pid1) && !pid_alive(daemon1)
    });
    // lrpm SIGKILLed: its guardian kills d2's daemon, found by its run id.
    assert!(pid_alive(daemon2));
    signal(lrpm.pid(), rustix::process::Signal::KILL);
    lrpm.wait_timeout(LONG).expect("lrpm killed");
    wait_until("d2's worker and daemon gone", LONG, || {
        !pid_alive(pid2) && !pid_alive(daemon2)
    });
}

#[test]
fn hosted_workers_die_with_lrpm() {
    if !python3() {
        return;
    }
    let mut lrpm = start(|dir| json!({"a": hosted(dir, "Stubborn", json!({}))}));
    let (pid, _) = running_worker(&lrpm, "a");
    let hosts = hosts_of(&lrpm);
    signal(lrpm.pid(), rustix::process::Signal::KILL);
    lrpm.wait_timeout(LONG).expect("lrpm killed");
    wait_until("the worker and its host gone", LONG, || {
        !pid_alive(pid) && hosts.iter().all(|h| !pid_alive(*h))
    });
}

/// The `LRPM_*` variables of `pid`'s `/proc/PID/environ`, as `NAME=value`.
fn environ_lrpm(pid: u32) -> Vec<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ
        .split(|b| *b == 0)
        .filter(|var| var.starts_with(b"LRPM_"))
        .map(|var| String::from_utf8_lossy(var).into_owned())
        .collect()
}

#[test]
fn a_nested_lrpms_host_and_workers_see_their_own_run_only() {
    if !python3() {
        return;
    }
    // lrpm run as a job of another lrpm: the outer one's run variables.
    let outer = [
        ("LRPM_RUN_ID", "1.7"),
        ("LRPM_JOB_ID", "outer"),
        ("LRPM_JOB_NAME", "outer"),
        ("LRPM_WORKER_CONFIG", "{\"outer\":true}"),
        ("LRPM_INSTANCE", "41"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hostworkers.py"), WORKERS).expect("workers");
    let config = dir.path().join("jobs.json");
    let jobs = json!({"a": hosted(dir.path(), "Recorder", json!({}))});
    std::fs::write(&config, jobs.to_string()).expect("config");
    let source = config.clone();
    let lrpm = Lrpm::start_in(dir, config, move |command| {
        command.envs(outer).arg(&source);
    });
    let (pid, info) = running_worker(&lrpm, "a");
    let own = |value: &str| !outer.iter().any(|(_, v)| *v == value);
    // What the worker sees, and what the kernel shows of it.
    let env = info["env"].as_object().expect("env");
    assert_eq!(env["LRPM_JOB_ID"], "a", "{info}");
    assert!(
        env["LRPM_RUN_ID"]
            .as_str()
            .is_some_and(|run| run.starts_with(&format!("{}.", lrpm.pid()))),
        "{info}"
    );
    assert!(env.values().all(|v| v.as_str().is_some_and(own)), "{info}");
    assert!(!env.contains_key("LRPM_INSTANCE"), "{info}");
    let shown = environ_lrpm(pid);
    assert!(
        shown
            .iter()
            .all(|var| var.split_once('=').is_some_and(|(_, v)| own(v))),
        "the worker's environ: {shown:?}"
    );
    // The host is no run: none of the outer run's variables.
    let hosts = hosts_of(&lrpm);
    assert_eq!(hosts.len(), 1, "{}", lrpm.stderr());
    let shown = environ_lrpm(hosts[0]);
    for (name, _) in outer {
        assert!(
            !shown.iter().any(|var| var.starts_with(&format!("{name}="))),
            "the host's environ: {shown:?}"
        );
    }
}

/// The PHP test workers (php-lrpm `Worker`s) and their autoloader.
const PHP_WORKERS: &str = r#"<?php
namespace T;

class Recorder implements \PHPLRPM\Worker
{
    public function start(array $config): void
    {
        $fds = [];
        foreach (scandir('/proc/self/fd') as $fd) {
            if (ctype_digit($fd)) {
                $fds[] = [$fd, (string) @readlink("/proc/self/fd/$fd")];
            }
        }
        $info = ['pid' => getmypid(), 'ppid' => posix_getppid(), 'pgid' => posix_getpgid(0),
                 'config' => $config, 'fds' => $fds,
                 'env' => ['LRPM_JOB_ID' => getenv('LRPM_JOB_ID')]];
        $path = $config['dir'] . '/' . getenv('LRPM_JOB_ID') . '.json';
        file_put_contents("$path.tmp", json_encode($info));
        rename("$path.tmp", $path);
        echo 'hello from ', getenv('LRPM_JOB_ID'), PHP_EOL;
    }

    public function cycle(): void
    {
        usleep(50000);
    }
}
"#;

const PHP_AUTOLOAD: &str = r#"<?php
spl_autoload_register(function (string $class): void {
    if (strncmp($class, 'T\\', 2) === 0) {
        require __DIR__ . '/workers.php';
    }
});
"#;

fn php() -> bool {
    prerequisite(
        "php with pcntl, posix, sockets and FFI",
        std::process::Command::new("php")
            .args(["-r", "exit(function_exists('pcntl_fork') && function_exists('posix_setsid') && function_exists('socket_recvmsg') && class_exists('FFI') ? 0 : 1);"])
            .status()
            .is_ok_and(|s| s.success()),
    )
}

fn php_hosted(dir: &Path) -> Value {
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/php/lrpm-host.php");
    json!({
        "name": "php",
        "workerClass": "T\\Recorder",
        "workerConfig": {"dir": dir},
        "host": ["php", "-d", "opcache.enable_cli=1", host, dir.join("autoload.php")],
        "shortRunTimeSeconds": 0,
        "shutdownTimeoutSeconds": 2,
    })
}

/// `Rss` and `Pss` of `pid` in KiB, from `/proc/PID/smaps_rollup`.
fn rss_pss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("a field of smaps_rollup")
    };
    (field("Rss:"), field("Pss:"))
}

#[test]
fn php_hosted_workers_run_restart_and_share_their_memory() {
    if !php() {
        return;
    }
    let lrpm = start(|dir| {
        std::fs::write(dir.join("workers.php"), PHP_WORKERS).expect("workers");
        std::fs::write(dir.join("autoload.php"), PHP_AUTOLOAD).expect("autoload");
        json!({"a": php_hosted(dir), "b": php_hosted(dir), "c": php_hosted(dir)})
    });
    let status = lrpm.wait_for("three running", LONG, |s| {
        ["a", "b", "c"].iter().all(|id| running(s, id))
    });
    let pid = pid_of(job_in(&status, "a").expect("a")).expect("pid");
    let info = recorded(&lrpm, "a", Some(pid));
    assert_eq!(info["ppid"], lrpm.pid());
    assert_eq!(info["pgid"], pid);
    assert_eq!(info["env"]["LRPM_JOB_ID"], "a");
    let run_id = environ_run_id(pid).expect("LRPM_RUN_ID in /proc/PID/environ");
    assert!(run_id.starts_with(&format!("{}.", lrpm.pid())), "{run_id}");
    if lrpm.uses_cgroups() {
        let cgroup = crate::support::cgroup_of(pid).expect("its cgroup");
        assert!(cgroup.contains("/job-a-"), "{cgroup}");
    }
    for pair in info["fds"].as_array().expect("fds") {
        let (fd, target) = (
            pair[0].as_str().expect("fd"),
            pair[1].as_str().expect("link"),
        );
        assert!(
            ["0", "1", "2"].contains(&fd)
                // The listing's own descriptor, closed by the time of readlink.
                || target.is_empty()
                || target.contains("ZendSem"),
            "descriptor {fd} -> {target} leaked into the worker: {info}"
        );
    }
    // Forked from one host, the workers share most of their pages.
    for id in ["a", "b", "c"] {
        let pid = pid_of(job_in(&status, id).expect("job")).expect("pid");
        recorded(&lrpm, id, Some(pid));
        let (rss, pss) = rss_pss(pid);
        eprintln!("{id}: RSS {rss} KiB, PSS {pss} KiB");
        assert!(
            pss * 2 < rss,
            "{id}: PSS {pss} KiB is not well below RSS {rss} KiB"
        );
    }
    wait_until("its output, prefixed", LONG, || {
        lrpm.stdout().contains("[a] hello from a")
    });
    // A crash, and the restart from the same host.
    let (_, took) = crash(&lrpm, "a", pid);
    eprintln!("PHP hosted crash → restart: {:.1} ms", took * 1000.0);
    assert!(took < 1.0, "restarted {took} s after its crash");
    assert_eq!(hosts_of(&lrpm).len(), 1);
}

#[test]
fn a_host_that_hangs_or_answers_garbage_is_started_again() {
    if !python3() {
        return;
    }
    // Two broken hosts: one says ready and never answers a fork, one
    // answers garbage.
    let host = |after_ready: &str| {
        format!(
            "import os, socket, time\n\
             s = socket.socket(fileno=int(os.environ['LRPM_HOST_FD']))\n\
             s.send(b'{{\"type\":\"ready\",\"protocol\":1}}')\n\
             s.recv(65536)\n\
             {after_ready}\n\
             time.sleep(1000)\n"
        )
    };
    let job = |code: String| {
        json!({"name": "broken", "workerClass": "W", "host": ["python3", "-c", code],
               "shortRunTimeSeconds": 0})
    };
    let lrpm = start(|_| {
        json!({
            "hangs": job(host("pass")),
            "garbage": job(host("s.send(b'garbage')")),
        })
    });
    wait_until("both hosts started again", LONG, || {
        let log = lrpm.stderr();
        log.contains("no answer to a fork within 10s: it hangs")
            && log.contains("not a message of protocol 1")
            && log.matches("worker host started").count() >= 4
    });
    // Their jobs wait for a host that works, and stop when removed.
    lrpm.write_config("{}");
    lrpm.wait_for("no jobs", LONG, |s| {
        s["jobs"].as_array().is_some_and(|jobs| jobs.is_empty())
    });
}
