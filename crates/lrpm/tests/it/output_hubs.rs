//! Output hubs: an lrpm whose descriptor limit is too low for its farm
//! hands the overflow's pipes to hub processes, and no line is lost.
//!
//! Each test runs lrpm with a small `RLIMIT_NOFILE` (soft = hard) set in
//! the test's `Command`, so a farm of a hundred workers does not fit in
//! process. Every process is ended by pid: lrpm by the fixture, the hubs
//! and workers by their parent-death signal (which a test checks).

use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::support::{
    Lrpm, all_running, children_of, fd_count, jobs_in, pid_alive, pid_of, signal, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// Starts lrpm on `config` with a descriptor limit of `nofile` (soft and
/// hard).
fn start_limited(config: &str, nofile: u64) -> Lrpm {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.toml");
    std::fs::write(&path, config).expect("config");
    let limit = rustix::process::Rlimit {
        current: Some(nofile),
        maximum: Some(nofile),
    };
    Lrpm::start_in(dir, path.clone(), |command| {
        command.arg(&path);
        // SAFETY: the hook runs in the forked child before exec and makes
        // one raw system call (no allocation, no lock).
        unsafe {
            command.pre_exec(move || {
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
                Ok(())
            });
        }
    })
}

/// `n` workers that print one line on each stream, a line every 2 s on
/// stdout (so that a worker whose hub died finds out), and a last line on
/// each stream when asked to stop.
fn talkers(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[w{i}]\nname = \"w{i}\"\nshortRunTimeSeconds = 0\ncommand = \"trap 'echo \
                 last-out-{i}; echo last-err-{i} >&2; exit 0' TERM; echo out-{i}; echo err-{i} \
                 >&2; while :; do sleep 2; echo tick-{i}; done\"\n\n"
            )
        })
        .collect()
}

/// `n` workers that print one line and sleep.
fn sleepers(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("[s{i}]\nname = \"s{i}\"\ncommand = \"echo up-{i}; exec sleep 100000\"\n\n")
        })
        .collect()
}

/// lrpm's output hubs: its children running `__lrpm-output-hub`.
fn hubs_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"__lrpm-output-hub"))
        })
        .filter(|child| pid_alive(*child))
        .collect()
}

fn count_lines(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

#[test]
fn a_farm_beyond_lrpms_descriptors_goes_through_hubs_and_loses_no_line() {
    // Under a limit of 256, lrpm forwards about 33 workers itself (below
    // descriptor 128) and a hub takes up to 96: 120 workers fill one hub
    // but not a second. With 130, a second hub sometimes held one worker,
    // and had room for all but one of the first hub's workers once it was
    // killed: whether a new hub was needed then hung on one descriptor
    // number below 128 being free or not.
    const N: usize = 120;
    const NOFILE: u64 = 256;
    let mut lrpm = start_limited(&talkers(N), NOFILE);
    let pid = lrpm.pid();
    wait_until("every worker's first lines", LONG, || {
        let (out, err) = (lrpm.stdout(), lrpm.stderr());
        (0..N).all(|i| {
            count_lines(&out, &format!("[w{i}] out-{i}")) == 1
                && count_lines(&err, &format!("[w{i}] err-{i}")) == 1
        })
    });
    assert!(all_running(&lrpm.status(), N), "{}", lrpm.stderr());
    // Each line went to its own stream only.
    let (out, err) = (lrpm.stdout(), lrpm.stderr());
    assert!(!out.contains("] err-"), "a stderr line on stdout");
    assert!(!err.contains("] out-"), "a stdout line on stderr");
    // lrpm kept under its limit; hubs took the overflow.
    let fds = fd_count(pid);
    assert!(fds < NOFILE as usize, "lrpm holds {fds} descriptors");
    let hubs = hubs_of(pid);
    let held: Vec<usize> = hubs.iter().map(|h| fd_count(*h)).collect();
    eprintln!("lrpm holds {fds} descriptors; hubs {hubs:?} hold {held:?}");
    assert!(!hubs.is_empty(), "no output hub: {}", lrpm.stderr());
    // At 3 descriptors a worker, N workers would not fit in process.
    assert!(fds < 3 * N, "lrpm holds {fds} descriptors for {N} workers");

    // Kill the fullest hub: that is logged, its workers fail on their next
    // line and are restarted, and a new hub serves them.
    let victim = *hubs.iter().max_by_key(|h| fd_count(**h)).expect("a hub");
    let ticks = |lrpm: &Lrpm| -> Vec<usize> {
        let out = lrpm.stdout();
        (0..N)
            .map(|i| count_lines(&out, &format!("[w{i}] tick-{i}")))
            .collect()
    };
    let ticks_before = ticks(&lrpm);
    signal(victim, rustix::process::Signal::KILL);
    wait_until("the hub's death in the log", LONG, || {
        lrpm.stderr().contains("output hub ended unexpectedly")
    });
    let restarted = |lrpm: &Lrpm| -> Vec<usize> {
        let out = lrpm.stdout();
        (0..N)
            .filter(|i| count_lines(&out, &format!("[w{i}] out-{i}")) >= 2)
            .collect()
    };
    // Each worker either lost its hub, and so died on its next line and
    // printed its first line again, or still has its reader, and shows it
    // with two more ticks (one may have been in the dead hub's queue).
    wait_until(
        "every worker to restart or tick through a live reader",
        LONG,
        || {
            let restarted = restarted(&lrpm);
            let ticks = ticks(&lrpm);
            (0..N).all(|i| restarted.contains(&i) || ticks[i] >= ticks_before[i] + 2)
        },
    );
    assert!(!restarted(&lrpm).is_empty(), "no worker restarted");
    wait_until("the whole farm running", LONG, || {
        all_running(&lrpm.status(), N)
    });
    let new_hubs = hubs_of(pid);
    assert!(!new_hubs.contains(&victim));
    assert!(
        new_hubs.iter().any(|h| !hubs.contains(h)),
        "no new hub: {hubs:?} then {new_hubs:?}"
    );
    let fds = fd_count(pid);
    assert!(fds < NOFILE as usize, "lrpm holds {fds} descriptors");
    eprintln!(
        "{} workers restarted after hub {victim} was killed",
        restarted(&lrpm).len()
    );

    // A graceful stop loses no line: each worker's last lines come through
    // its hub (or lrpm) after it was asked to stop.
    let status = lrpm.terminate();
    assert!(status.success(), "{status}");
    let (out, err) = (lrpm.stdout(), lrpm.stderr());
    let missing: Vec<usize> = (0..N)
        .filter(|i| {
            count_lines(&out, &format!("[w{i}] last-out-{i}")) != 1
                || count_lines(&err, &format!("[w{i}] last-err-{i}")) != 1
        })
        .collect();
    assert!(missing.is_empty(), "last lines missing for {missing:?}");
    for hub in new_hubs {
        assert!(!pid_alive(hub), "hub {hub} outlived lrpm");
    }
}

#[test]
fn sigkill_of_lrpm_leaves_no_hub_and_no_worker() {
    const N: usize = 60;
    let lrpm = start_limited(&sleepers(N), 128);
    let pid = lrpm.pid();
    wait_until("every worker's line", LONG, || {
        let out = lrpm.stdout();
        (0..N).all(|i| count_lines(&out, &format!("[s{i}] up-{i}")) == 1)
    });
    wait_until("the whole farm running", LONG, || {
        all_running(&lrpm.status(), N)
    });
    let hubs = hubs_of(pid);
    // 60 workers in process would take 180 descriptors, over the limit.
    assert!(hubs.len() >= 2, "hubs: {hubs:?}\n{}", lrpm.stderr());
    let workers: Vec<u32> = jobs_in(&lrpm.status()).iter().filter_map(pid_of).collect();
    assert_eq!(workers.len(), N);
    signal(pid, rustix::process::Signal::KILL);
    wait_until("every hub and worker to die with lrpm", LONG, || {
        hubs.iter().chain(&workers).all(|p| !pid_alive(*p))
    });
    drop(lrpm);
}
