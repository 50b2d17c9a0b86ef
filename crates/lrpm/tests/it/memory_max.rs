//! `memoryMax` with real processes: a worker that allocates past its cap is
//! OOM-killed in its own memory cgroup and restarted, with the reason in
//! status; a bad value makes the job invalid, with the reason; the memory
//! cgroups lrpm creates are gone when it stops. Where the memory controller
//! is on cgroup v1 (this test host), a run gets a memory cgroup of its own;
//! on cgroup v2 its cap is its own cgroup's `memory.max` (checked here where
//! the host has that, and always in a VM by `cgroup_v2_vm`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Lrpm, job_in, prerequisite, python3};

const LONG: Duration = Duration::from_secs(30);

/// What lrpm says in its log when jobs with `memoryMax` can run, on cgroup
/// v1 and on cgroup v2.
const MEMORY_TREE_LOG: [&str; 2] = [
    "jobs with memoryMax run in a cgroup v1 memory cgroup under ",
    "jobs with memoryMax are capped by the memory.max of their cgroup under ",
];

/// The tree where the runs' caps are, from lrpm's log, and whether it is
/// cgroup v2's; `None` when jobs with `memoryMax` cannot run.
fn memory_tree(lrpm: &Lrpm) -> Option<(PathBuf, bool)> {
    let log = lrpm.stderr();
    MEMORY_TREE_LOG
        .iter()
        .zip([false, true])
        .find_map(|(said, v2)| {
            let rest = &log[log.find(said)? + said.len()..];
            Some((PathBuf::from(rest.lines().next()?.trim()), v2))
        })
}

fn counter(status: &Value, id: &str, key: &str) -> u64 {
    job_in(status, id)
        .and_then(|j| j[key].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_worker_past_its_memory_max_is_oom_killed_and_restarted() {
    if !python3() {
        return;
    }
    // 200 MiB written (so that every page is really used) under a 50 MiB cap.
    let config = json!({
        "hog": {
            "name": "hog",
            "command": ["python3", "-c",
                "import time\nb = b'x' * (200 << 20)\ntime.sleep(1000)"],
            "memoryMax": "50M",
            "shortRunTimeSeconds": 0,
        },
        "calm": {"name": "calm", "command": ["sleep", "1000"], "memoryMax": 50 << 20},
    });
    let mut lrpm = Lrpm::start("jobs.json", &config.to_string(), &[]);
    let Some((tree, v2)) = memory_tree(&lrpm) else {
        // Without memory cgroups the jobs are invalid, and say why.
        let s = lrpm.wait_for("the invalid jobs", LONG, |s| {
            s["supervisor"]["source"]["invalid_jobs"]["hog"].is_string()
        });
        let reason = s["supervisor"]["source"]["invalid_jobs"]["hog"]
            .as_str()
            .expect("a reason");
        assert!(
            reason.starts_with("memoryMax: cannot be enforced: "),
            "{reason}"
        );
        prerequisite("a memory controller lrpm can use", false);
        return;
    };
    assert!(tree.is_dir(), "{}", tree.display());
    // The worker joined its memory cgroup, with its cap.
    let calm = lrpm.running_pid("calm");
    let cgroups = std::fs::read_to_string(format!("/proc/{calm}/cgroup")).expect("its cgroups");
    let memcg = cgroups
        .lines()
        .find_map(|l| {
            let controllers = l.split(':').nth(1)?;
            let memory = if v2 {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "memory")
            };
            memory.then_some(l)
        })
        .expect("a memory line");
    let name = memcg.rsplit('/').next().expect("a cgroup name");
    assert!(name.starts_with("job-calm-"), "{memcg}");
    let limit_file = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit = std::fs::read_to_string(tree.join(name).join(limit_file)).expect("its limit");
    assert_eq!(limit.trim(), (50u64 << 20).to_string());

    // Two OOM kills: it was killed, restarted, and killed again.
    let s = lrpm.wait_for("two OOM kills", LONG, |s| {
        counter(s, "hog", "oom_kills") >= 2
    });
    let hog = job_in(&s, "hog").expect("hog in status");
    assert_eq!(hog["last_exit"]["reason"], "oom-killed", "{hog:#}");
    assert!(counter(&s, "hog", "crashes") >= 2, "{hog:#}");
    assert_eq!(counter(&s, "calm", "oom_kills"), 0);
    assert!(lrpm.stderr().contains("oom-killed"), "{}", lrpm.stderr());

    lrpm.terminate();
    assert!(!tree.exists(), "{} is left", tree.display());
}

#[test]
fn a_bad_memory_max_makes_the_job_invalid_with_the_reason() {
    let config = json!({
        "bad": {"name": "bad", "command": ["sleep", "1000"], "memoryMax": "lots"},
        "small": {"name": "small", "command": ["sleep", "1000"], "memoryMax": "4K"},
        "ok": {"name": "ok", "command": ["sleep", "1000"]},
    });
    let lrpm = Lrpm::start("jobs.json", &config.to_string(), &[]);
    let s = lrpm.wait_for("the invalid jobs", LONG, |s| {
        s["supervisor"]["source"]["invalid_jobs"]["small"].is_string()
    });
    let invalid = &s["supervisor"]["source"]["invalid_jobs"];
    assert_eq!(
        invalid["bad"],
        "memoryMax: must be a number of bytes or a string like \"512M\" (K, M or G)"
    );
    assert!(
        invalid["small"]
            .as_str()
            .is_some_and(|r| r.starts_with("memoryMax: 4096 bytes is under the smallest cap")),
        "{invalid:#}"
    );
    lrpm.running_pid("ok");
}
