//! `--metrics`: `/metrics` read by Prometheus's own parser (Python's
//! `prometheus_client`, both formats), `/healthz`, and the status page in a
//! real headless Chromium, before and after a crash.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Lrpm, prerequisite, run_bounded, signal, wait_for_value};

const LONG: Duration = Duration::from_secs(30);

/// Two jobs: `steady` sleeps; `victim` sleeps too, until the file `broken`
/// in the temp dir exists: then each of its runs fails at once (exit 3),
/// so after a crash it stays in backoff most of the time.
fn start() -> Lrpm {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobs.toml");
    let broken = dir.path().join("broken");
    let text = format!(
        "[steady]\nname = \"steady\"\ncommand = [\"sleep\", \"300\"]\n\
         [victim]\nname = \"the victim\"\n\
         command = [\"sh\", \"-c\", \"test -e '{}' && exit 3; exec sleep 300\"]\n",
        broken.display()
    );
    std::fs::write(&config, text).expect("write the config");
    let lrpm = Lrpm::start_in(dir, config.clone(), |command| {
        command.args(["--metrics", "127.0.0.1:0"]).arg(&config);
    });
    lrpm.wait_for("both jobs running", LONG, |s| {
        crate::support::running(s, "steady") && crate::support::running(s, "victim")
    });
    lrpm
}

/// The address lrpm's log says it serves metrics on.
fn address(lrpm: &Lrpm) -> String {
    wait_for_value("the metrics address in the log", LONG, || {
        let log = lrpm.stderr();
        let at = log.find("metrics on http://")? + "metrics on http://".len();
        let end = at + log[at..].find('/')?;
        Some(log[at..end].to_owned())
    })
}

/// Makes `victim` crash: its runs fail from now on, and its process is
/// killed.
fn crash(lrpm: &Lrpm) {
    std::fs::write(lrpm.dir.path().join("broken"), "").expect("break the victim");
    signal(lrpm.running_pid("victim"), rustix::process::Signal::KILL);
}

/// `GET path` on `addr` with `accept`: the status code, the content type
/// and the body.
fn get(addr: &str, path: &str, accept: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics address");
    stream.set_read_timeout(Some(LONG)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (code, content_type, body.to_owned())
}

/// A Python that has `prometheus_client` (Debian's python3-prometheus-client
/// is in /usr/bin's).
fn python() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import prometheus_client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Parses a scrape with prometheus_client's parser of `format`
/// (`prometheus` or `openmetrics`): every sample as `[name, labels, value]`.
fn parse(python: &str, format: &str, text: &str) -> Vec<(String, Value, f64)> {
    const SCRIPT: &str = "\
import json, sys
from prometheus_client.parser import text_string_to_metric_families as prometheus
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = prometheus if sys.argv[1] == 'prometheus' else openmetrics
out = [[s.name, s.labels, s.value] for f in parse(sys.stdin.read()) for s in f.samples]
print(json.dumps(out))
";
    let mut child = Command::new(python)
        .args(["-c", SCRIPT, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the scrape");
    let out = child.wait_with_output().expect("python's answer");
    assert!(
        out.status.success(),
        "the {format} parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, Value, f64)> =
        serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    samples
}

/// The value of sample `name` with the labels `labels`, if there is one.
fn sample(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[k] == *v))
        .map(|s| s.2)
}

#[test]
fn scrapes_parse_and_follow_a_crash() {
    let Some(python) = python() else {
        prerequisite(
            "python3 with prometheus_client (python3-prometheus-client)",
            false,
        );
        return;
    };
    let lrpm = start();
    let addr = address(&lrpm);

    let (code, content_type, text) = get(&addr, "/metrics", "*/*");
    assert_eq!(code, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let before = parse(python, "prometheus", &text);
    for job in ["steady", "victim"] {
        for counter in ["lrpm_job_crashes_total", "lrpm_job_oom_kills_total"] {
            assert_eq!(
                sample(&before, counter, &[("job", job)]),
                Some(0.0),
                "{counter}"
            );
        }
        assert_eq!(
            sample(&before, "lrpm_job_up", &[("job", job)]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &before,
                "lrpm_job_state",
                &[("job", job), ("state", "running")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &before,
                "lrpm_job_state",
                &[("job", job), ("state", "backoff")]
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(&before, "lrpm_job_restarts_total", &[("job", job)]),
            Some(0.0)
        );
        assert!(sample(&before, "lrpm_job_memory_bytes", &[("job", job)]).is_some_and(|m| m > 0.0));
        assert!(sample(&before, "lrpm_job_start_time_seconds", &[("job", job)]).is_some());
    }
    assert_eq!(
        sample(&before, "lrpm_jobs", &[("state", "running")]),
        Some(2.0)
    );
    assert!(
        sample(&before, "lrpm_source_loads_total", &[("result", "loaded")])
            .is_some_and(|n| n >= 1.0)
    );
    assert!(sample(&before, "lrpm_source_last_success_timestamp_seconds", &[]).is_some());
    assert!(sample(&before, "process_resident_memory_bytes", &[]).is_some_and(|m| m > 0.0));
    assert!(sample(&before, "process_open_fds", &[]).is_some_and(|n| n > 0.0));

    crash(&lrpm);
    // Scraped, in OpenMetrics, until the victim is seen in backoff after a
    // restart (the SIGKILL of a short run may send it to backoff at once).
    let after = wait_for_value("the victim in backoff after a restart", LONG, || {
        let (code, content_type, text) = get(
            &addr,
            "/metrics",
            "application/openmetrics-text; version=1.0.0,text/plain;q=0.5",
        );
        assert_eq!(code, 200);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(text.ends_with("# EOF\n"));
        let samples = parse(python, "openmetrics", &text);
        let backoff = sample(
            &samples,
            "lrpm_job_state",
            &[("job", "victim"), ("state", "backoff")],
        );
        // Restarted since: its failing run (exit 3) is the last exit.
        let restarts = sample(&samples, "lrpm_job_restarts_total", &[("job", "victim")]);
        (backoff == Some(1.0) && restarts.is_some_and(|n| n >= 1.0)).then_some(samples)
    });
    let victim = [("job", "victim")];
    // The SIGKILL and at least one failed run since.
    assert!(sample(&after, "lrpm_job_crashes_total", &victim).is_some_and(|n| n >= 2.0));
    assert_eq!(
        sample(&after, "lrpm_job_crashes_total", &[("job", "steady")]),
        Some(0.0)
    );
    assert_eq!(sample(&after, "lrpm_job_up", &victim), Some(0.0));
    assert_eq!(
        sample(
            &after,
            "lrpm_job_state",
            &[("job", "victim"), ("state", "running")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, "lrpm_job_last_exit_code", &victim),
        Some(3.0)
    );
    assert!(sample(&after, "lrpm_job_backoff_seconds", &victim).is_some_and(|s| s >= 1.0));
    assert_eq!(
        sample(&after, "lrpm_job_up", &[("job", "steady")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "lrpm_job_restarts_total", &[("job", "steady")]),
        Some(0.0)
    );

    let (code, _, body) = get(&addr, "/healthz", "*/*");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, _) = get(&addr, "/nothing", "*/*");
    assert_eq!(code, 404);
}

#[test]
fn a_static_cluster_reports_its_members() {
    let Some(python) = python() else {
        prerequisite(
            "python3 with prometheus_client (python3-prometheus-client)",
            false,
        );
        return;
    };
    let lrpm = Lrpm::start(
        "jobs.json",
        &crate::support::jobs(&["a", "b", "c"]),
        &[
            "--metrics",
            "127.0.0.1:0",
            "--cluster-size",
            "3",
            "--cluster-index",
            "1",
        ],
    );
    let addr = address(&lrpm);
    let (code, _, text) = get(&addr, "/metrics", "*/*");
    assert_eq!(code, 200);
    let samples = parse(python, "prometheus", &text);
    assert_eq!(
        sample(&samples, "lrpm_cluster_members", &[]),
        Some(3.0),
        "{text}"
    );
    // A static cluster has no lease.
    assert_eq!(
        sample(&samples, "lrpm_cluster_lease_remaining_seconds", &[]),
        None
    );
}

#[test]
fn a_bad_address_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = crate::support::lrpm_command();
    command.arg("--socket").arg(dir.path().join("s")).args([
        "--metrics",
        "example.com:80",
        "jobs.toml",
    ]);
    let out = run_bounded(command, LONG);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics"));
}

/// Drives Chromium over its DevTools pipe (`--remote-debugging-pipe`: fds
/// 3 and 4): opens the page, prints `loaded ROWS` once the table holds
/// both jobs running, waits for a line on stdin (the test crashed the
/// victim), then prints `changed ROWS` once the same page, never reloaded,
/// shows the victim in backoff after a restart.
const CDP: &str = r#"
import atexit, json, os, shutil, signal, subprocess, sys, tempfile, time
signal.alarm(150)
chromium, url = sys.argv[1], sys.argv[2]
to_r, to_w = os.pipe()
from_r, from_w = os.pipe()
def fds():
    os.dup2(to_r, 3)
    os.dup2(from_w, 4)
profile = tempfile.mkdtemp()
proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu",
    "--no-first-run", "--remote-debugging-pipe", "--user-data-dir=" + profile, "about:blank"],
    preexec_fn=fds, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
def cleanup():
    try: os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError: pass
    proc.wait()
    shutil.rmtree(profile, ignore_errors=True)
atexit.register(cleanup)
print("pid", proc.pid, flush=True)
os.close(to_r); os.close(from_w)
out = os.fdopen(to_w, "wb", buffering=0)
inp = os.fdopen(from_r, "rb")
ids = [0]
buf = b""
def call(method, params=None, session=None):
    global buf
    ids[0] += 1
    msg = {"id": ids[0], "method": method, "params": params or {}}
    if session: msg["sessionId"] = session
    out.write(json.dumps(msg).encode() + b"\0")
    while True:
        while b"\0" not in buf:
            chunk = inp.read1(65536)
            if not chunk: raise SystemExit("chromium closed its pipe")
            buf += chunk
        line, buf = buf.split(b"\0", 1)
        reply = json.loads(line)
        if reply.get("id") == ids[0]:
            if "error" in reply: raise SystemExit(method + ": " + json.dumps(reply["error"]))
            return reply["result"]
target = call("Target.createTarget", {"url": url})["targetId"]
session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
ROWS = "JSON.stringify({marker: window.lrpmTestMarker || null, rows: [...document.querySelectorAll('#jobs tr')].map(r => [r.dataset.job, r.dataset.state, Number(r.dataset.restarts)])})"
def rows():
    return json.loads(call("Runtime.evaluate", {"expression": ROWS, "returnByValue": True}, session)["result"]["value"])
def wait(cond, what):
    deadline = time.time() + 60
    while time.time() < deadline:
        seen = rows()
        if cond(seen): return seen
        time.sleep(0.2)
    raise SystemExit("page never showed " + what + ": " + json.dumps(seen))
def state(seen, job):
    return next(([s, n] for j, s, n in seen["rows"] if j == job), None)
seen = wait(lambda s: state(s, "steady") == ["running", 0] and state(s, "victim") == ["running", 0], "both jobs running")
call("Runtime.evaluate", {"expression": "window.lrpmTestMarker = 'same page'"}, session)
print("loaded", json.dumps(seen), flush=True)
sys.stdin.readline()
seen = wait(lambda s: s["marker"] == "same page" and (state(s, "victim") or ["", 0])[0] == "backoff" and state(s, "victim")[1] >= 1, "the victim in backoff")
print("changed", json.dumps(seen), flush=True)
"#;

/// Chromium, if installed: Debian's `chromium`.
fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| Path::new(path).exists())
}

#[test]
fn the_status_page_shows_the_jobs_and_a_crash_without_reloading() {
    let (Some(chromium), Some(python)) = (chromium(), python()) else {
        prerequisite("chromium and python3", false);
        return;
    };
    let lrpm = start();
    let addr = address(&lrpm);
    let (code, content_type, page) = get(&addr, "/", "text/html");
    assert_eq!(code, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page fetches nothing from elsewhere"
    );

    let mut driver = Command::new(python)
        .args(["-c", CDP, chromium, &format!("http://{addr}/")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the DevTools driver");
    let mut lines = BufReader::new(driver.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    let chromium_pid: u32 = next()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // Kills the driver and Chromium's process group (its own session,
    // led by the pid it printed) whatever happens; the driver does it
    // itself when it exits normally.
    struct Cleanup(u32, u32);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if crate::support::state_of(self.1).is_some() {
                signal(self.1, rustix::process::Signal::KILL);
            }
            if let Some(group) = rustix::process::Pid::from_raw(self.0 as i32) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
        }
    }
    let _cleanup = Cleanup(chromium_pid, driver.id());
    let loaded = next();
    let mut stderr = String::new();
    if !loaded.starts_with("loaded ") {
        let _ = driver
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut stderr));
        panic!("the page did not show both jobs: {loaded:?} {stderr}");
    }
    crash(&lrpm);
    driver
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"crashed\n")
        .expect("tell the driver");
    let changed = next();
    let _ = driver
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    let _ = driver.wait();
    assert!(
        changed.starts_with("changed "),
        "the page did not follow the crash: {changed:?} {stderr}"
    );
}
