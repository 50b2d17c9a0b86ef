//! lrpm and the kernel's OOM killer, with real processes: lrpm's own
//! `oom_score_adj` is set at start and its workers are put back to theirs,
//! and in a memory-limited cgroup lrpm outlives the workers the OOM killer
//! takes, and restarts them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Lrpm, job_in, lrpm_command, pid_alive, prerequisite, wait_until};

const LONG: Duration = Duration::from_secs(30);

/// The `oom_score_adj` of process `pid`.
fn oom_score_adj(pid: u32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .expect("read oom_score_adj")
        .trim()
        .parse()
        .expect("an integer")
}

#[test]
fn lrpm_sets_its_own_oom_score_adj_and_workers_keep_the_value_it_started_with() {
    let inherited = oom_score_adj(std::process::id());
    let jobs = r#"{"w": {"name": "w", "command": ["sleep", "1000"]}}"#;

    // Raising needs no privilege, so this holds whoever runs the test.
    let raised = (inherited + 300).min(1000);
    let lrpm = Lrpm::start("jobs.json", jobs, &["--oom-score-adj", &raised.to_string()]);
    let worker = lrpm.running_pid("w");
    assert_eq!(oom_score_adj(lrpm.pid()), raised, "{}", lrpm.stderr());
    assert_eq!(oom_score_adj(worker), inherited, "{}", lrpm.stderr());
    drop(lrpm);

    let workers = (inherited + 500).min(1000);
    let lrpm = Lrpm::start(
        "jobs.json",
        jobs,
        &[
            "--oom-score-adj",
            &raised.to_string(),
            "--worker-oom-score-adj",
            &workers.to_string(),
        ],
    );
    let worker = lrpm.running_pid("w");
    assert_eq!(oom_score_adj(worker), workers, "{}", lrpm.stderr());
    drop(lrpm);

    // The default, -900: set where lrpm may lower its value (CAP_SYS_RESOURCE),
    // and the workers keep the inherited value; said once otherwise, and
    // the workers go up by what lrpm could not go down.
    let lrpm = Lrpm::start("jobs.json", jobs, &[]);
    let worker = lrpm.running_pid("w");
    let stderr = lrpm.stderr();
    let refusals = stderr.matches("cannot set lrpm's oom_score_adj").count();
    if oom_score_adj(lrpm.pid()) == -900 {
        assert_eq!(refusals, 0, "{stderr}");
        assert_eq!(oom_score_adj(worker), inherited, "{stderr}");
    } else {
        assert_eq!(oom_score_adj(lrpm.pid()), inherited, "{stderr}");
        assert_eq!(refusals, 1, "{stderr}");
        let raised = (inherited + (inherited + 900)).min(1000);
        assert_eq!(oom_score_adj(worker), raised, "{stderr}");
    }
    assert!(stderr.contains("oom_score_adj: lrpm "), "{stderr}");

    // `keep` leaves lrpm's value alone, and says nothing about privilege.
    let lrpm = Lrpm::start("jobs.json", jobs, &["--oom-score-adj", "keep"]);
    assert_eq!(oom_score_adj(lrpm.pid()), inherited);
    assert!(!lrpm.stderr().contains("cannot set lrpm's oom_score_adj"));
}

/// A memory cgroup the test creates (cgroup v2 with `memory.max` where the
/// test's cgroup may have one, else the v1 memory hierarchy), removed on
/// drop once every process in it is gone.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// A new memory cgroup limited to `limit` bytes, beside or below the
    /// test's own; `None` if neither hierarchy lets the test make one.
    fn create(limit: u64) -> Option<Self> {
        let name = format!("lrpm-test-oom-{}", std::process::id());
        let candidates = [(v2_memory_parent(), true), (v1_memory_parent(), false)];
        for (parent, v2) in candidates {
            let Some(parent) = parent else { continue };
            let dir = parent.join(&name);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            let file = if v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            let cgroup = Self { dir, v2 };
            if std::fs::write(cgroup.dir.join(file), limit.to_string()).is_ok() {
                // No swap to escape to (v2; v1 has no separate file when
                // swap accounting is off).
                let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
                return Some(cgroup);
            }
        }
        None
    }

    /// How many times the OOM killer killed a process in this cgroup.
    fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill ")
        } else {
            ("memory.oom_control", "oom_kill ")
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The cgroup's `cgroup.procs`.
    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The test's own cgroup v2 directory, if a child of it can have a
/// memory limit (the memory controller is enabled for its children).
fn v2_memory_parent() -> Option<PathBuf> {
    let own = crate::support::cgroup_of(std::process::id())?;
    let dir = crate::support::cgroup_dir(&own)?;
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).ok()?;
    enabled
        .split_whitespace()
        .any(|c| c == "memory")
        .then_some(dir)
}

/// The test's own cgroup of the v1 memory hierarchy, if it is mounted.
fn v1_memory_parent() -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_owned())
    })?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        let (kind, options) = (right.next()?, right.nth(1)?);
        if kind != "cgroup" || !options.split(',').any(|o| o == "memory") {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (root, mount) = (*fields.get(3)?, *fields.get(4)?);
        let rest = path.strip_prefix(root.trim_end_matches('/'))?;
        Some(Path::new(mount).join(rest.trim_start_matches('/')))
    })
}

/// Starts lrpm on `config` in `cgroup`: its shell writes itself into the
/// cgroup and execs lrpm (same pid), so lrpm runs there from its start.
fn start_in(cgroup: &MemoryCgroup, dir: tempfile::TempDir, config: PathBuf) -> Lrpm {
    let socket = dir.path().join("control.sock");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"echo $$ > "$0" && exec "$@""#)
        .arg(cgroup.procs())
        .arg(lrpm_command().get_program())
        .arg("--socket")
        .arg(&socket)
        .arg(&config);
    Lrpm::spawn_in(dir, socket, config, command).expect("lrpm starts")
}

#[test]
fn lrpm_outlives_a_farm_too_large_for_its_memory_cgroup() {
    // 32 MiB for 400 small workers (about 200 KiB each where they share
    // lrpm's memory cgroup): the cgroup runs out of memory while lrpm is
    // its largest process, which the OOM killer would pick first at an
    // equal oom_score_adj.
    let Some(cgroup) = MemoryCgroup::create(32 << 20) else {
        prerequisite("a memory cgroup the test may create (root)", false);
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobs.json");
    let jobs: serde_json::Map<String, serde_json::Value> = (0..400)
        .map(|i| {
            let job = serde_json::json!({"name": "w", "command": ["sleep", "1000"]});
            (format!("w{i}"), job)
        })
        .collect();
    std::fs::write(&config, serde_json::Value::Object(jobs).to_string()).expect("write");
    let mut lrpm = start_in(&cgroup, dir, config);
    let pid = lrpm.pid();
    wait_until("OOM kills in the cgroup", LONG, || {
        cgroup.oom_kills() >= 20 || lrpm.try_wait().is_some()
    });
    // Every kill was a worker's: lrpm is alive, the same process, and
    // answers; some workers were restarted after theirs.
    assert!(lrpm.try_wait().is_none(), "lrpm died: {}", lrpm.stderr());
    let status = lrpm.wait_for("a worker restarted after its kill", LONG, |s| {
        crate::support::jobs_in(s)
            .iter()
            .any(|j| j["restarts"].as_u64().unwrap_or(0) >= 1)
    });
    assert_eq!(status["supervisor"]["pid"].as_u64(), Some(u64::from(pid)));
    assert!(pid_alive(pid));
    let exit = lrpm.terminate();
    assert!(exit.success(), "{exit}: {}", lrpm.stderr());
    wait_until("the cgroup empty", LONG, || {
        std::fs::read_to_string(cgroup.procs()).is_ok_and(|p| p.trim().is_empty())
    });
}

#[test]
fn lrpm_survives_in_a_memory_limited_cgroup_while_its_workers_are_oom_killed() {
    // 64 MiB: lrpm (a debug build) and a few small workers fit; a worker
    // that reads /dev/zero as one endless line does not.
    let Some(cgroup) = MemoryCgroup::create(64 << 20) else {
        prerequisite("a memory cgroup the test may create (root)", false);
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobs.json");
    let jobs = serde_json::json!({
        "hog1": {"name": "hog", "command": ["tail", "-n", "1", "/dev/zero"],
                 "shortRunTimeSeconds": 0},
        "hog2": {"name": "hog", "command": ["tail", "-n", "1", "/dev/zero"],
                 "shortRunTimeSeconds": 0},
        "small": {"name": "small", "command": ["sleep", "1000"]},
    });
    std::fs::write(&config, jobs.to_string()).expect("write the config");
    let mut lrpm = start_in(&cgroup, dir, config);
    let pid = lrpm.pid();

    // Each hog is OOM-killed and restarted, again and again.
    let status = lrpm.wait_for("each hog OOM-killed and restarted twice", LONG, |s| {
        ["hog1", "hog2"].iter().all(|id| {
            job_in(s, id).is_some_and(|j| {
                j["restarts"].as_u64().unwrap_or(0) >= 2 && j["last_exit"]["signal"] == 9
            })
        })
    });
    assert!(cgroup.oom_kills() >= 4, "{} OOM kills", cgroup.oom_kills());
    // lrpm is alive, the same process, and answers.
    assert!(
        pid_alive(pid) && lrpm.try_wait().is_none(),
        "{}",
        lrpm.stderr()
    );
    assert_eq!(status["supervisor"]["pid"].as_u64(), Some(u64::from(pid)));
    let small = job_in(&status, "small").expect("small")["pid"].clone();
    assert!(small.is_u64(), "{status}");
    let ctl = lrpm.ctl(&["status"]);
    assert!(ctl.status.success(), "{ctl:?}");

    let exit = lrpm.terminate();
    assert!(exit.success(), "{exit}: {}", lrpm.stderr());
    wait_until("the cgroup empty", LONG, || {
        std::fs::read_to_string(cgroup.procs()).is_ok_and(|p| p.trim().is_empty())
    });
}
