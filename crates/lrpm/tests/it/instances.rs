//! `instances`, with real processes: copies `ID#k` with `LRPM_INSTANCE`,
//! and a change of the count that touches only the copies added or
//! removed.

use std::fs;
use std::time::Duration;

use crate::support::{Lrpm, job_in, jobs_in, pid_of, running, wait_until};

const LONG: Duration = Duration::from_secs(30);

/// A job `w` of `n` copies, each writing its `LRPM_INSTANCE` to
/// `inst-K` in `dir` (with `tag`, to tell an update's run apart).
fn config(dir: &std::path::Path, n: u32, tag: &str) -> String {
    serde_json::json!({
        "w": {
            "name": "W",
            "command": format!("printf '%s {tag}' \"$LRPM_INSTANCE\" > inst-$LRPM_INSTANCE; exec sleep 300"),
            "cwd": dir,
            "instances": n,
        }
    })
    .to_string()
}

/// The pid of every copy of `w`, once `n` copies run.
fn copies_running(lrpm: &Lrpm, n: usize) -> Vec<u32> {
    let ids: Vec<String> = (0..n).map(|k| format!("w#{k}")).collect();
    let status = lrpm.wait_for(&format!("{n} copies running"), LONG, |s| {
        jobs_in(s).len() == n && ids.iter().all(|id| running(s, id))
    });
    ids.iter()
        .map(|id| job_in(&status, id).and_then(pid_of).expect("a pid"))
        .collect()
}

#[test]
fn three_instances_then_two_stops_only_the_third() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().canonicalize().expect("canonical");
    let lrpm = Lrpm::start("jobs.json", &config(&work, 3, "v1"), &[]);
    let pids = copies_running(&lrpm, 3);
    for k in 0..3 {
        let file = work.join(format!("inst-{k}"));
        wait_until(&format!("inst-{k}"), LONG, || {
            fs::read_to_string(&file).is_ok_and(|s| s == format!("{k} v1"))
        });
    }

    lrpm.write_config(&config(&work, 2, "v1"));
    let status = lrpm.wait_for("w#2 gone", LONG, |s| job_in(s, "w#2").is_none());
    for (k, pid) in pids.iter().take(2).enumerate() {
        let job = job_in(&status, &format!("w#{k}")).expect("the copy is kept");
        assert_eq!(pid_of(job), Some(*pid), "w#{k} was not restarted");
        assert_eq!(job["restarts"], 0);
        assert_eq!(job["state"], "running");
    }
    assert_eq!(jobs_in(&status).len(), 2);
    wait_until("w#2's process gone", LONG, || {
        !crate::support::pid_alive(pids[2])
    });

    // An update of the declaration restarts every copy.
    lrpm.write_config(&config(&work, 2, "v2"));
    for k in 0..2 {
        let file = work.join(format!("inst-{k}"));
        wait_until(&format!("inst-{k} of v2"), LONG, || {
            fs::read_to_string(&file).is_ok_and(|s| s == format!("{k} v2"))
        });
    }
    let after = copies_running(&lrpm, 2);
    assert!(
        after.iter().zip(&pids).all(|(new, old)| new != old),
        "{after:?} {pids:?}"
    );
}
