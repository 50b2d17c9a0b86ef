//! Output hubs: an lrpm whose descriptor limit is too low for its farm
//! hands the overflow's pipes to hub processes, and no line is lost.
//!
//! Each test runs lrpm with a small `RLIMIT_NOFILE` (soft = hard) set in
//! the test's `Command`, so a farm of a hundred workers does not fit in
//! process. Every process is ended by pid: lrpm by the fixture, the hubs
//! and workers by their parent-death signal (which a test checks).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use crate::output_faults::{Tmpfs, fill};
use crate::support::{
    Lrpm, all_running, children_of, fd_count, is_root, job_in, jobs_in, lrpm_command, pid_alive,
    pid_of, prerequisite, signal, wait_for_value, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// Starts lrpm on `config` with a descriptor limit of `nofile` (soft and
/// hard).
fn start_limited(config: &str, nofile: u64) -> Lrpm {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.toml");
    std::fs::write(&path, config).expect("config");
    Lrpm::start_in(dir, path.clone(), |command| {
        command.arg(&path);
        limit_nofile(command, nofile);
    })
}

/// Gives `command` a descriptor limit of `nofile` (soft and hard).
fn limit_nofile(command: &mut std::process::Command, nofile: u64) {
    let limit = rustix::process::Rlimit {
        current: Some(nofile),
        maximum: Some(nofile),
    };
    // SAFETY: the hook runs in the forked child before exec and makes one
    // raw system call (no allocation, no lock).
    unsafe {
        command.pre_exec(move || {
            rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
            Ok(())
        });
    }
}

/// [`start_limited`] with lrpm's stdout as given (its stderr in the
/// fixture's `stderr.log`).
fn start_limited_with_stdout(config: &str, nofile: u64, stdout: Stdio) -> Lrpm {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.toml");
    std::fs::write(&path, config).expect("config");
    let stderr = File::create(dir.path().join("stderr.log")).expect("stderr.log");
    let socket = dir.path().join("control.sock");
    let mut command = lrpm_command();
    command.arg("--socket").arg(&socket).arg(&path);
    limit_nofile(&mut command, nofile);
    Lrpm::spawn_with_output(dir, socket, path, command, stdout, stderr.into())
        .unwrap_or_else(|e| panic!("{e}"))
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

/// `n` workers that print nothing and sleep.
fn quiet_sleepers(n: usize) -> String {
    (0..n)
        .map(|i| format!("[q{i}]\nname = \"q{i}\"\ncommand = \"exec sleep 100000\"\n\n"))
        .collect()
}

/// A worker that floods its stdout.
fn stdout_flood() -> String {
    let line = "x".repeat(100);
    format!("[flood]\nname = \"flood\"\ncommand = \"while :; do echo {line}; done\"\n\n")
}

/// The pipes (`pipe:[inode]`) among `pid`'s descriptors.
fn pipes_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("pipe:"))
        .collect()
}

/// Fills lrpm's low descriptors with quiet workers (the first in process,
/// the rest through hubs), then adds a worker that floods its stdout,
/// whose pipes so go to a hub (checked): whatever lrpm's stdout loses is
/// lost by a hub.
fn flood_through_a_hub(stdout: Stdio) -> Lrpm {
    const QUIET: usize = 60;
    let lrpm = start_limited_with_stdout(&quiet_sleepers(QUIET), 128, stdout);
    wait_until("the quiet farm running", LONG, || {
        all_running(&lrpm.status(), QUIET)
    });
    lrpm.wait_for_load_after(|| {
        lrpm.write_config(&format!("{}{}", quiet_sleepers(QUIET), stdout_flood()));
    });
    let flood = wait_for_value("the flood running", LONG, || {
        job_in(&lrpm.status(), "flood").and_then(pid_of)
    });
    let hubs = hubs_of(lrpm.pid());
    let pipe = std::fs::read_link(format!("/proc/{flood}/fd/1"))
        .expect("the flood's stdout")
        .to_string_lossy()
        .into_owned();
    assert!(
        hubs.iter().any(|hub| pipes_of(*hub).contains(&pipe)),
        "the flood's stdout ({pipe}) is not read by a hub of {hubs:?}\n{}",
        lrpm.stderr()
    );
    assert!(
        !pipes_of(lrpm.pid()).contains(&pipe),
        "lrpm reads the flood"
    );
    lrpm
}

/// The `supervisor.output.stdout` counter `field`.
fn stdout_lost(status: &serde_json::Value, field: &str) -> u64 {
    status["supervisor"]["output"]["stdout"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no output.stdout.{field} in {}", status["supervisor"]))
}

#[test]
fn a_hubs_losses_on_a_closed_stdout_are_in_the_status_and_the_exit_code() {
    let (out_r, out_w) = rustix::pipe::pipe().expect("pipe");
    // As `lrpm | head -c 100` once head has exited.
    drop(out_r);
    let mut lrpm = flood_through_a_hub(File::from(out_w).into());
    // Only the hub writes to lrpm's stdout: these counters are its own.
    let status = lrpm.wait_for("the hub's write errors in the status", LONG, |s| {
        stdout_lost(s, "write_errors") > 0 && stdout_lost(s, "lines_dropped") > 0
    });
    let last = &status["supervisor"]["output"]["stdout"]["last_error"];
    assert!(
        last.as_str().is_some_and(|e| e.contains("Broken pipe")),
        "{last}"
    );
    // The totals keep growing with the flood.
    let dropped = stdout_lost(&status, "lines_dropped");
    lrpm.wait_for("more of the hub's losses", LONG, |s| {
        stdout_lost(s, "lines_dropped") > dropped
    });
    let status = lrpm.terminate();
    assert_eq!(status.code(), Some(74), "{status:?}\n{}", lrpm.stderr());
    assert!(
        lrpm.stderr()
            .lines()
            .any(|l| l.contains("output was lost during this run")
                && l.contains("workers' stdout: ")
                && l.contains("Broken pipe")),
        "{}",
        lrpm.stderr()
    );
}

#[test]
fn lines_a_hub_holds_for_an_unread_stdout_at_shutdown_count_as_lost() {
    let (out_r, out_w) = rustix::pipe::pipe().expect("pipe");
    // Nobody reads the pipe: the hub's writer blocks, its queue fills, the
    // flood waits on its pipe, and nothing is lost until shutdown, when
    // the hub gives up on its queue and reports it.
    let mut lrpm = flood_through_a_hub(File::from(out_w).into());
    assert_eq!(stdout_lost(&lrpm.status(), "lines_dropped"), 0);
    let status = lrpm.terminate();
    assert_eq!(status.code(), Some(74), "{status:?}\n{}", lrpm.stderr());
    let stderr = lrpm.stderr();
    let report = stderr
        .lines()
        .find(|l| l.contains("output was lost during this run"))
        .unwrap_or_else(|| panic!("no report of the loss\n{stderr}"));
    assert!(
        !report.contains("workers' stdout: 0 lines lost"),
        "{report}"
    );
    drop(out_r);
}

#[test]
fn a_hubs_stdout_on_a_full_filesystem_is_reported_by_lrpm_once_freed() {
    if !prerequisite("root, to mount a tmpfs", is_root()) {
        return;
    }
    let tmpfs = Tmpfs::mount("1m");
    let out = File::options()
        .create(true)
        .append(true)
        .open(tmpfs.path("stdout.log"))
        .expect("open a log on the tmpfs");
    fill(&tmpfs.path("filler"));
    let mut lrpm = flood_through_a_hub(out.into());
    let status = lrpm.wait_for("the hub's write errors in the status", LONG, |s| {
        stdout_lost(s, "write_errors") > 0
    });
    let last = &status["supervisor"]["output"]["stdout"]["last_error"];
    assert!(
        last.as_str().is_some_and(|e| e.contains("No space left")),
        "{last}"
    );
    // Room again: the hub's next write succeeds, and lrpm logs what the
    // hub lost before.
    std::fs::remove_file(tmpfs.path("filler")).expect("free the tmpfs");
    wait_until("lrpm's report of what the hub lost", LONG, || {
        lrpm.stderr()
            .lines()
            .any(|l| l.contains("output hub: workers' stdout: ") && l.contains("No space left"))
    });
    let status = lrpm.terminate();
    assert_eq!(status.code(), Some(74), "{status:?}\n{}", lrpm.stderr());
    drop(lrpm);
    drop(tmpfs);
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
