//! lrpm under a small descriptor limit: it follows workers without a pidfd
//! each once descriptors run short, starts every job it can, and says so in
//! status when the limit is what holds jobs back.

use std::process::Command;
use std::time::Duration;

use crate::support::{self, Lrpm, jobs_in, pid_of, wait_for_value, wait_until};

/// How many jobs the farm has: about twice what 256 descriptors held with
/// a pidfd and two pipes per worker.
const JOBS: usize = 500;

/// Starts lrpm with a soft and hard `RLIMIT_NOFILE` of `limit` (through
/// `prlimit`, which executes lrpm in its own process, so the fixture's pid
/// is lrpm's), on `JOBS` `sleep` jobs.
fn start_limited(limit: u32) -> Lrpm {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let config = dir.path().join("jobs.json");
    let ids: Vec<String> = (0..JOBS).map(|i| format!("j{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    std::fs::write(&config, support::jobs(&ids)).expect("write the config");
    let socket = dir.path().join("control.sock");
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--nofile={limit}:{limit}"))
        .arg(support::lrpm_binary())
        .arg("--socket")
        .arg(&socket)
        .arg(&config);
    Lrpm::spawn_in(dir, socket, config.clone(), command).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn under_256_descriptors_500_jobs_all_run_and_stop_cleanly() {
    let mut lrpm = start_limited(256);
    let status = lrpm.wait_for(
        "500 jobs running with pids",
        Duration::from_secs(60),
        |status| support::all_running(status, JOBS),
    );
    let pids: Vec<u32> = jobs_in(&status).iter().filter_map(pid_of).collect();
    assert_eq!(pids.len(), JOBS);
    // Within the limit: lrpm holds fewer descriptors than 256 with 500
    // workers (their pipes went to hubs, their pidfds were given up).
    let fds = support::fd_count(lrpm.pid());
    assert!(fds < 256, "lrpm holds {fds} descriptors");
    // Nothing holds the farm back any more, and no job lost its cgroup.
    let held = wait_for_value("no job held back", Duration::from_secs(30), || {
        let status = lrpm.status();
        status["supervisor"]["held_back"]
            .is_null()
            .then_some(status)
    });
    assert!(support::all_running(&held, JOBS));
    let log = lrpm.stderr() + &lrpm.stdout();
    assert!(
        !log.contains("without one"),
        "a job started without its cgroup:\n{log}"
    );
    // A worker without a pidfd is still followed: killing one restarts it.
    let victim = pids[JOBS - 1];
    let id = jobs_in(&status)
        .iter()
        .find(|job| pid_of(job) == Some(victim))
        .map(|job| job["id"].as_str().expect("an id").to_owned())
        .expect("the victim's job");
    support::signal(victim, rustix::process::Signal::KILL);
    lrpm.wait_for(
        "the killed worker restarted",
        Duration::from_secs(30),
        |status| {
            support::job_in(status, &id)
                .and_then(pid_of)
                .is_some_and(|pid| pid != victim)
        },
    );
    stop_and_check_no_worker_is_left(&mut lrpm);
}

#[test]
fn under_a_limit_too_small_for_the_farm_status_says_the_limit_holds_jobs_back() {
    // 64 descriptors cannot hold 500 workers in any way (a hub then takes
    // one worker, for two descriptors of lrpm's): the jobs that cannot
    // start must be named, and retried, not backed off silently.
    let mut lrpm = start_limited(64);
    let (status, held) = wait_for_value(
        "status says that the limit holds jobs back",
        Duration::from_secs(60),
        || {
            let status = lrpm.status();
            let held = status["supervisor"]["held_back"].as_str()?.to_owned();
            Some((status, held))
        },
    );
    assert!(held.contains("RLIMIT_NOFILE 64"), "{held}");
    // Exactly the jobs that wait: every job not running waits for the
    // limit (they are all sleepers), and status counts them.
    let waiting: Vec<&serde_json::Value> = jobs_in(&status)
        .iter()
        .filter(|job| job["state"] != "running")
        .collect();
    assert!(
        held.contains(&format!(
            "holds {} back",
            lrpm::lrpm_core::human::count(waiting.len(), "job")
        )),
        "{held}, {} jobs waiting",
        waiting.len()
    );
    for job in &waiting {
        let error = job["last_exit"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("descriptor limit (RLIMIT_NOFILE 64)"),
            "{job}"
        );
        // Retried every 2 s, never drifting toward the long backoff.
        let backoff = job["backoff_seconds"].as_f64().unwrap_or(f64::MAX);
        assert!(backoff <= 2.0, "{job}");
    }
    let log = lrpm.stderr();
    assert_eq!(
        log.matches("lrpm's descriptor limit (RLIMIT_NOFILE 64) holds jobs back")
            .count(),
        1,
        "{log}"
    );
    stop_and_check_no_worker_is_left(&mut lrpm);
}

/// Stops lrpm, which must exit cleanly, and waits until every worker it ran
/// is gone.
fn stop_and_check_no_worker_is_left(lrpm: &mut Lrpm) {
    let status = lrpm.status();
    let pids: Vec<u32> = jobs_in(&status).iter().filter_map(pid_of).collect();
    assert!(
        lrpm.terminate().success(),
        "lrpm's exit:\n{}",
        lrpm.stderr()
    );
    wait_until("every worker gone", Duration::from_secs(30), || {
        pids.iter().all(|&pid| !support::pid_alive(pid))
    });
}
