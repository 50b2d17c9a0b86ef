//! The reliability suite: lrpm under crash storms, floods, escaping and
//! stubborn workers, its own death, hostile configuration sources, and the
//! removal guard; and a long soak, run on demand.
//!
//! Every test bounds its waits and ends every process it starts by pid:
//! lrpm through the fixture (SIGTERM, or SIGKILL on drop), its workers by
//! their parent-death signal or their cgroup, and the processes a test
//! starts itself explicitly. The heavy tests (the crash storm, the 500-job
//! reconcile) run alone (`.config/nextest.toml` gives them every test
//! thread), so that they neither disturb nor are disturbed by the timing
//! of others.
//!
//! Scale knobs, for running the full versions by hand:
//!
//! | variable | default | used by |
//! |---|---|---|
//! | `LRPM_STORM_WORKERS` | 500 | `crash_storm_*` |
//! | `LRPM_STORM_SECONDS` | 60 | `crash_storm_*` |
//! | `LRPM_SOAK_WORKERS` | 1000 | `soak` |
//! | `LRPM_SOAK_SECONDS` | 3600 | `soak` |
//! | `LRPM_SOAK_REPORT_SECONDS` | 60 | `soak` |
//!
//! The storm that runs in CI is the issue's: 500 workers for 60 s.
//! `crash_storm_full` (ignored) is twice that size: 1,000 workers for 60 s.
//! `soak` (ignored) runs for an hour by default.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Lrpm, all_running, cgroup_dir, cgroup_of, children_of, fd_count, job_in, jobs_in, loads,
    pid_alive, pid_of, prerequisite, read_pid, rss_kib, signal, source_error, state_of,
    wait_for_value, wait_until,
};

/// How long anything may take on a loaded 2-core machine before a test
/// gives up.
const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Helpers: what /proc says about a process.

/// An integer setting from the environment, or `default`.
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of lrpm `pid` and its output hubs (its children running
/// `__lrpm-output-hub`), in KiB: the output queue's bound is per process.
fn rss_with_hubs_kib(pid: u32) -> u64 {
    let hubs = children_of(pid).into_iter().filter(|child| {
        fs::read(format!("/proc/{child}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"__lrpm-output-hub".as_slice()))
    });
    rss_kib(pid)
        + hubs
            .filter(|h| state_of(*h).is_some())
            .map(rss_kib)
            .sum::<u64>()
}

/// The children of `pid` that are zombies.
fn zombie_children(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|c| state_of(*c) == Some('Z'))
        .collect()
}

/// Every live `sleep MARKER` process (the command line of a shell that
/// runs one does not count).
fn sleepers(marker: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{marker}\0").into_bytes();
    let Ok(procs) = fs::read_dir("/proc") else {
        return vec![];
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(wanted.len()).any(|w| w == wanted))
        })
        .filter(|pid| pid_alive(*pid))
        .collect()
}

/// Looks with `look` every 100 ms until what it sees is `good`, for
/// [`LONG`] at most, and returns the last look, good or not: for a test
/// to check it with a message that tells what it saw.
fn last_look<T>(mut look: impl FnMut() -> T, good: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + LONG;
    loop {
        let seen = look();
        if good(&seen) || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a status request and returns how long it took.
fn timed_status(lrpm: &Lrpm) -> (Value, Duration) {
    let started = Instant::now();
    let status = lrpm.status();
    (status, started.elapsed())
}

/// The lines of a file that `job` appends to, or none.
fn lines_of(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Crash storm.

/// The parameters of a storm.
struct Storm {
    workers: usize,
    seconds: u64,
}

/// Whether job `i` of a storm backs off (2 in 5 do): it runs shorter than
/// its `shortRunTimeSeconds`. The others run longer than theirs (0.1 s), so
/// they are restarted at once, every time: the storm itself.
fn backs_off(i: usize) -> bool {
    i % 5 >= 3
}

/// The configuration of `workers` storm jobs. While a file `calm` exists
/// in lrpm's directory, every new run of a job sleeps. Otherwise, a storm
/// job lives 0.2–0.6 s and is restarted at once; a backoff job records the
/// time of its start and of its end (to check the delays between an end and
/// the next start) and fails after 0.2 s.
fn storm_config(workers: usize) -> String {
    let mut config = String::new();
    for i in 0..workers {
        let job = if backs_off(i) {
            "command = \"[ -e calm ] && exec sleep 100000; \
             echo start $(date +%s.%N) >> starts/$LRPM_JOB_ID; sleep 0.2; \
             echo end $(date +%s.%N) >> starts/$LRPM_JOB_ID; exit 1\"\n"
                .to_owned()
        } else {
            format!(
                "command = \"[ -e calm ] && exec sleep 100000; exec sleep 0.{}\"\n\
                 shortRunTimeSeconds = 0.1\n",
                2 + i % 5
            )
        };
        config.push_str(&format!("[s{i}]\nname = \"storm {i}\"\n{job}\n"));
    }
    config
}

/// The `restarts` of every job, by id.
fn restarts(status: &Value) -> BTreeMap<String, u64> {
    jobs_in(status)
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap_or_default().to_owned(),
                j["restarts"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// A delay as lrpm's log writes it (`lrpm_core::human::duration`): `250ms`,
/// `4s`, `1.5s`, `2m08s`, `3h05m`, `2d04h`.
fn parse_delay(text: &str) -> Option<f64> {
    if let Some(ms) = text.strip_suffix("ms") {
        return Some(ms.parse::<f64>().ok()? / 1000.0);
    }
    // The larger unit, the smaller one, and their sizes in seconds.
    let units = [
        ('d', 'h', 86_400.0, 3600.0),
        ('h', 'm', 3600.0, 60.0),
        ('m', 's', 60.0, 1.0),
    ];
    for (large, small, large_s, small_s) in units {
        if let Some((a, b)) = text.strip_suffix(small).and_then(|t| t.split_once(large)) {
            return Some(a.parse::<f64>().ok()? * large_s + b.parse::<f64>().ok()? * small_s);
        }
    }
    text.strip_suffix('s')?.parse().ok()
}

#[test]
fn delays_parse_as_lrpm_writes_them() {
    let cases = [
        ("250ms", 0.25),
        ("4s", 4.0),
        ("1.5s", 1.5),
        ("2m08s", 128.0),
        ("3h05m", 11_100.0),
        ("2d04h", 187_200.0),
    ];
    for (text, seconds) in cases {
        assert_eq!(parse_delay(text), Some(seconds), "{text}");
    }
    assert_eq!(parse_delay("soon"), None);
}

/// Checks a backoff job against lrpm's own account of it. `record` is what
/// the worker wrote (the time of each start and end), `log` lrpm's log
/// lines about the job. For each run that failed (`exited with code 1`),
/// lrpm logs what it decided: `restarting` at once (it saw a long run: on a
/// loaded machine, lrpm counts from before the start to after the end) or
/// `restarting in DELAY`. The delays must double from one failure to the
/// next and start again from 1 s after a long run, and each next start must
/// come at least DELAY after the end of the run (the worker notes its end
/// before it ends and its start after it started, so a loaded machine only
/// lengthens the gap). Returns the number of starts, the number of gaps
/// checked, and the longest a start came after its delay.
fn check_backoff(id: &str, record: &[String], log: &str) -> (usize, usize, f64) {
    let times = |kind: &str| -> Vec<f64> {
        record
            .iter()
            .filter_map(|l| l.strip_prefix(kind)?.trim().parse().ok())
            .collect()
    };
    let (started, ended) = (times("start"), times("end"));
    let decisions: Vec<Option<f64>> = log
        .lines()
        .filter(|l| l.contains("exited with code 1"))
        .map(|l| {
            l.split_once("restarting in ")
                .and_then(|(_, rest)| parse_delay(rest.split_whitespace().next()?))
        })
        .collect();
    let context = || format!("{}\n--- lrpm's log ---\n{log}", record.join("\n"));
    let mut latest: f64 = 0.0;
    let mut checked = 0;
    let mut expected: Option<f64> = None;
    for (k, decision) in decisions.iter().enumerate() {
        // The first failure of the storm follows the killed sleeper:
        // whatever its delay, the next ones double it.
        if let (Some(delay), Some(want)) = (decision, expected) {
            assert!(
                (delay - want).abs() < 0.01,
                "{id}: failure {} was followed by a {delay} s delay, not {want} s\n{}",
                k + 1,
                context()
            );
        }
        expected = Some(decision.map_or(1.0, |d| d * 2.0));
        let (Some(delay), Some(end), Some(next)) = (decision, ended.get(k), started.get(k + 1))
        else {
            continue;
        };
        let gap = next - end;
        assert!(
            gap >= delay - 0.01,
            "{id}: restart {} came {gap:.3} s after the end of the previous run, before its \
             {delay} s backoff\n{}",
            k + 1,
            context()
        );
        latest = latest.max(gap - delay);
        checked += 1;
    }
    assert!(
        decisions.len() + 1 >= ended.len(),
        "{id}: {} runs ended, lrpm saw {} fail\n{}",
        ended.len(),
        decisions.len(),
        context()
    );
    (started.len(), checked, latest)
}

/// The lines of lrpm's log about job `id`, without colours.
fn log_of(lrpm: &Lrpm, id: &str) -> String {
    let plain: String = {
        let log = lrpm.stderr();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // An SGR sequence: ESC [ … m.
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let field = format!("job={id}");
    plain
        .lines()
        .filter(|l| l.ends_with(&field) || l.contains(&format!("{field} ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Memory of `pid`, in KiB: all resident pages, and the anonymous ones
/// (the heap; the rest are pages of the binary and libraries).
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn crash_storm(storm: Storm) {
    let n = storm.workers;
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("starts")).expect("starts dir");
    // Calm at first: every job starts as a sleeper, for the baseline.
    fs::write(dir.path().join("calm"), "").expect("calm");
    let config = dir.path().join("jobs.toml");
    fs::write(&config, storm_config(n)).expect("config");
    let mut lrpm = Lrpm::start_in(dir, config.clone(), |command| {
        command.arg("-q").arg(&config);
    });
    let lrpm_pid = lrpm.pid();
    let calm = lrpm.dir.path().join("calm");

    // The baseline: every job sleeping, after a few requests of each kind
    // the test makes later, so that one-time allocations are in it.
    let status = lrpm.wait_for("every sleeper running", LONG, |s| all_running(s, n));
    for i in (0..n).filter(|i| backs_off(*i)).take(10) {
        let answer = lrpm.request(&format!(r#"{{"cmd":"restart","id":"s{i}"}}"#));
        assert_eq!(answer["ok"], true, "{answer}");
    }
    let status = lrpm.wait_for("every sleeper running again", LONG, |s| {
        all_running(s, n)
            && jobs_in(s).iter().all(|j| j["restarts"].as_u64() <= Some(1))
            && jobs_in(s).len() == jobs_in(&status).len()
    });
    std::thread::sleep(Duration::from_secs(2));
    let fds_before = fd_count(lrpm_pid);
    let (rss_before, anon_before) = memory_kib(lrpm_pid);
    let at_start = restarts(&lrpm.status());
    eprintln!(
        "baseline: {n} jobs running, {fds_before} descriptors, RSS {rss_before} KiB \
         ({anon_before} KiB anonymous)"
    );

    // The storm: every sleeper is killed, and every new run fails.
    fs::remove_file(&calm).expect("uncalm");
    let storm_started = Instant::now();
    for job in jobs_in(&status) {
        if let Some(pid) = pid_of(job) {
            signal(pid, rustix::process::Signal::KILL);
        }
    }
    let mut worst_status = Duration::ZERO;
    let mut last = Value::Null;
    while storm_started.elapsed() < Duration::from_secs(storm.seconds) {
        std::thread::sleep(Duration::from_millis(500));
        let (status, took) = timed_status(&lrpm);
        worst_status = worst_status.max(took);
        assert_eq!(jobs_in(&status).len(), n, "every job is still supervised");
        for job in jobs_in(&status) {
            let state = job["state"].as_str().unwrap_or("?");
            assert!(
                state == "running" || state == "backoff",
                "job {} is {state} in the storm",
                job["id"]
            );
        }
        last = status;
    }
    let storm_seconds = storm_started.elapsed().as_secs_f64();
    let at_end = restarts(&last);

    // Calm again: storm jobs restart as sleepers at once; jobs in backoff
    // are restarted by hand so as not to wait for their delay.
    fs::write(&calm, "").expect("calm");
    let calm_at = Instant::now();
    let settle = |lrpm: &Lrpm| {
        let status = lrpm.status();
        for job in jobs_in(&status) {
            if job["state"] == "backoff" {
                let id = job["id"].as_str().expect("id");
                let answer = lrpm.request(&format!(r#"{{"cmd":"restart","id":"{id}"}}"#));
                assert_eq!(answer["ok"], true, "{answer}");
            }
        }
        all_running(&status, n)
    };
    wait_until("the storm to settle", LONG * 2, || settle(&lrpm));
    let settled_in = calm_at.elapsed();

    // Count the starts: storm jobs from their restarts, backoff jobs from
    // their own records.
    let mut storm_starts = 0;
    let mut fewest = u64::MAX;
    let mut slowest_job = String::new();
    let mut backoff_starts = 0;
    let mut gaps_checked = 0;
    let mut latest: f64 = 0.0;
    for i in 0..n {
        let id = format!("s{i}");
        if backs_off(i) {
            let record = lines_of(&lrpm.dir.path().join(format!("starts/{id}")));
            let (starts, checked, late) = check_backoff(&id, &record, &log_of(&lrpm, &id));
            backoff_starts += starts;
            gaps_checked += checked;
            latest = latest.max(late);
        } else {
            let starts = at_end[&id] - at_start[&id];
            storm_starts += starts;
            if starts < fewest {
                fewest = starts;
                slowest_job = id;
            }
        }
    }
    let storm_jobs = (0..n).filter(|i| !backs_off(*i)).count();
    eprintln!(
        "storm: {storm_seconds:.1} s; {storm_starts} restarts of {storm_jobs} storm jobs \
         ({:.0}/s, the fewest for one job {fewest}); {backoff_starts} starts of {} backoff \
         jobs ({gaps_checked} delays checked, the latest start {latest:.3} s after its \
         delay); slowest status answer \
         {worst_status:?}; settled in {settled_in:?}",
        storm_starts as f64 / storm_seconds,
        n - storm_jobs
    );
    // A storm job lives at most 0.6 s, so it would restart more than
    // storm_seconds / 0.7 times on an idle machine. How often it does here
    // depends on how fast a busy machine forks: the storm saturates it, and
    // lrpm restarts in the order the exits came, so on a machine busy with
    // other tests too a job may wait seconds for its turn. The point is
    // that none is left behind: every storm job was restarted during the
    // storm (the rates are printed above).
    assert!(
        fewest >= 1,
        "storm job {slowest_job} was restarted only {fewest} times in {storm_seconds:.1} s\n\
         --- its status at the end of the storm ---\n{}\n--- its log ---\n{}",
        job_in(&last, &slowest_job)
            .map(Value::to_string)
            .unwrap_or_default(),
        log_of(&lrpm, &slowest_job)
    );
    assert!(gaps_checked > 0, "no backoff delay was checked");
    assert!(
        worst_status < Duration::from_secs(10),
        "a status request took {worst_status:?} in the storm"
    );

    // Afterwards: no zombie, no leaked descriptor, memory back (lrpm gives
    // freed memory back to the system 5 s after the activity that freed
    // it, here the last restarts of the settling).
    wait_until("no zombie children", LONG, || {
        zombie_children(lrpm_pid).is_empty()
    });
    let fds_after = wait_for_value("the descriptors back to the baseline", LONG, || {
        Some(fd_count(lrpm_pid)).filter(|&fds| fds <= fds_before)
    });
    let (rss_after, anon_after) = last_look(
        || memory_kib(lrpm_pid),
        |&(rss, _)| rss as f64 <= rss_before as f64 * 1.10,
    );
    let percent = |after: u64, before: u64| (after as f64 / before as f64 - 1.0) * 100.0;
    eprintln!(
        "after: {fds_after} descriptors (baseline {fds_before}), RSS {rss_after} KiB \
         ({:+.1} %), {anon_after} KiB anonymous ({:+.1} %)",
        percent(rss_after, rss_before),
        percent(anon_after, anon_before),
    );
    assert!(
        rss_after as f64 <= rss_before as f64 * 1.10,
        "RSS {rss_after} KiB is more than 10 % above the baseline {rss_before} KiB"
    );
    let status = lrpm.terminate();
    assert!(status.success(), "lrpm exits 0 after the storm: {status:?}");
}

#[test]
fn crash_storm_leaves_no_zombie_no_leak_and_respects_backoff() {
    crash_storm(Storm {
        workers: knob("LRPM_STORM_WORKERS", 500) as usize,
        seconds: knob("LRPM_STORM_SECONDS", 60),
    });
}

#[test]
#[ignore = "twice the issue's storm: 1,000 workers for 60 s (run alone, with --ignored)"]
fn crash_storm_full() {
    crash_storm(Storm {
        workers: 1000,
        seconds: 60,
    });
}

// ---------------------------------------------------------------------------
// Output: floods, a blocked stdout, a closed stdout.

/// A farm with a worker that floods stdout with 64 MB without a newline, one
/// that closes its stdout and stderr and keeps running, and a victim that
/// the test kills to time its restart.
const FLOOD: &str = r#"
[flood]
name = "flood"
command = "head -c 64000000 /dev/zero | tr '\\0' x; echo; echo flood-done; exec sleep 100000"

[closer]
name = "closer"
command = "echo $$ > closer.pid; exec >&- 2>&-; exec sleep 100000"

[victim]
name = "victim"
command = ["sleep", "100000"]
shortRunTimeSeconds = 0
"#;

/// Kills the victim and returns how long lrpm took to have it running again.
fn restart_latency(lrpm: &Lrpm) -> Duration {
    let status = lrpm.wait_for("the victim running", LONG, |s| {
        job_in(s, "victim").is_some_and(|j| j["state"] == "running" && j["pid"].is_u64())
    });
    let old = pid_of(job_in(&status, "victim").expect("victim")).expect("pid");
    let killed = Instant::now();
    signal(old, rustix::process::Signal::KILL);
    lrpm.wait_for("the victim restarted", LONG, |s| {
        job_in(s, "victim")
            .and_then(pid_of)
            .is_some_and(|pid| pid != old)
    });
    killed.elapsed()
}

#[test]
fn a_flood_without_newlines_and_a_closed_stdout_leave_lrpm_responsive() {
    let lrpm = Lrpm::start("jobs.toml", FLOOD, &[]);
    let closer = lrpm.dir.path().join("closer.pid");
    let closer = read_pid(&closer);
    let rss_before = rss_kib(lrpm.pid());
    let mut slowest_status = Duration::ZERO;
    let mut slowest_restart = Duration::ZERO;
    let mut max_rss = rss_before;
    let started = Instant::now();
    while !lrpm.stdout().contains("[flood] flood-done") {
        assert!(
            started.elapsed() < LONG * 2,
            "the flood did not get through"
        );
        slowest_status = slowest_status.max(timed_status(&lrpm).1);
        slowest_restart = slowest_restart.max(restart_latency(&lrpm));
        max_rss = max_rss.max(rss_kib(lrpm.pid()));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "flood of 64 MB forwarded in {:?}; slowest status {slowest_status:?}, slowest \
         restart {slowest_restart:?}; RSS {rss_before} KiB, at most {max_rss} KiB",
        started.elapsed()
    );
    assert!(
        slowest_status < Duration::from_secs(2),
        "{slowest_status:?}"
    );
    assert!(
        slowest_restart < Duration::from_secs(3),
        "{slowest_restart:?}"
    );
    assert!(
        max_rss < rss_before + 32 * 1024,
        "lrpm grew from {rss_before} KiB to {max_rss} KiB during the flood"
    );
    // The flood was cut into pieces of 64 KiB, none lost.
    let out = lrpm.stdout();
    let pieces: Vec<&str> = out.lines().filter(|l| l.starts_with("[flood] x")).collect();
    let bytes: usize = pieces.iter().map(|l| l.len() - "[flood] ".len()).sum();
    assert_eq!(bytes, 64_000_000);
    assert!(
        pieces
            .iter()
            .all(|l| l.len() <= "[flood] ".len() + 64 * 1024)
    );
    // The worker without stdout still runs, supervised.
    let status = lrpm.status();
    let job = job_in(&status, "closer").expect("closer");
    assert_eq!(job["state"], "running");
    assert_eq!(pid_of(job), Some(closer));
    assert!(pid_alive(closer));
}

/// Whether `pipe` is full, so that its writers wait.
fn pipe_full(pipe: impl std::os::fd::AsFd) -> bool {
    let (Ok(capacity), Ok(held)) = (
        rustix::pipe::fcntl_getpipe_size(&pipe),
        rustix::io::ioctl_fionread(&pipe),
    ) else {
        return false;
    };
    // A writer waits once no page of the pipe is free, which may leave
    // the last page written partly empty.
    held + 4096 > capacity as u64
}

/// The pipe on descriptor `fd` of process `pid`, opened through `/proc`: a
/// read end of the test's own, from which it reads nothing.
fn pipe_of(pid: u32, fd: u32) -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .ok()
}

#[test]
fn a_stuck_log_reader_bounds_lrpms_memory_and_blocks_only_the_talkers() {
    // An lrpm whose stdout is a pipe that the test reads only when it
    // wants to, as a stuck log collector would.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobs.toml");
    fs::write(&config, FLOOD).expect("config");
    let mut lrpm = Lrpm::start_in_with_piped_stdout(dir, config.clone(), |command| {
        command.arg(&config);
    });
    let pid = lrpm.pid();
    let rss_before = rss_with_hubs_kib(pid);
    let flood = lrpm.running_pid("flood");
    // Nobody reads lrpm's stdout: its pipe fills, then the output queue,
    // then the flood's own pipe, and the flood waits.
    let mut stdout = lrpm.take_stdout();
    wait_until("lrpm's stdout and the flood's to fill", LONG, || {
        pipe_full(&stdout) && pipe_of(flood, 1).is_some_and(pipe_full)
    });
    let rss_blocked = rss_with_hubs_kib(pid);
    // Supervision goes on meanwhile.
    let victim = lrpm.running_pid("victim");
    let killed = Instant::now();
    signal(victim, rustix::process::Signal::KILL);
    lrpm.wait_for("the victim restarted", LONG, |s| {
        job_in(s, "victim")
            .and_then(pid_of)
            .is_some_and(|p| p != victim)
    });
    let restart = killed.elapsed();
    eprintln!(
        "stdout blocked: RSS {rss_before} KiB before, {rss_blocked} KiB blocked; victim \
         restarted in {restart:?}"
    );
    assert!(
        rss_blocked < rss_before + 16 * 1024,
        "lrpm grew from {rss_before} KiB to {rss_blocked} KiB behind a stuck stdout"
    );
    // A supervisor blocked by its stdout would never restart it: the bound
    // only has to be finite.
    assert!(restart < Duration::from_secs(10), "{restart:?}");
    // Once the reader reads again, everything comes through.
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = std::io::Read::read(&mut stdout, &mut buf).unwrap_or(0);
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(10).any(|w| w == b"flood-done") {
                return true;
            }
            let keep = seen.len().saturating_sub(16);
            seen.drain(..keep);
        }
    });
    wait_until("the flood to come through", LONG * 2, || {
        reader.is_finished()
    });
    assert!(reader.join().expect("reader"), "the flood came through");
}

// ---------------------------------------------------------------------------
// Workers that fork: grandchildren, double-forked daemons, setsid.

/// A worker that leaves behind, each with `marker` in its command line: a
/// background grandchild in its process group; a double-forked daemon in a
/// session of its own, with a child of its own; a setsid daemon that ignores
/// SIGTERM and SIGHUP; and a nohup'ed one. It then sleeps, or, with
/// `crash`, exits after a moment.
fn fork_happy(marker: &str, crash: bool) -> String {
    let end = if crash {
        "sleep 1; exit 3".to_owned()
    } else {
        format!("exec sleep {marker}")
    };
    format!(
        "sleep {marker} & \
         setsid sh -c 'sleep {marker} & exec sleep {marker}' & \
         (trap '' TERM HUP; setsid sleep {marker} &) ; \
         nohup sleep {marker} >/dev/null 2>&1 & \
         {end}"
    )
}

/// A number for `sleep` unique to this test process and `n`, to find the
/// processes of one test by their command line.
fn sleep_marker(n: u32) -> String {
    format!("{}{n:02}.5", 100_000_000 + std::process::id())
}

#[test]
fn fork_happy_workers_leave_nothing_behind_their_stop_or_their_crash() {
    let stopped = sleep_marker(1);
    let crashed = sleep_marker(2);
    let mut config = String::new();
    for i in 0..5 {
        config.push_str(&format!(
            "[stop{i}]\nname = \"s\"\ncommand = {:?}\n\n",
            fork_happy(&stopped, false)
        ));
    }
    config.push_str(&format!(
        "[crash]\nname = \"c\"\ncommand = {:?}\nshortRunTimeSeconds = 100\n",
        fork_happy(&crashed, true)
    ));
    let lrpm = Lrpm::start("jobs.toml", &config, &[]);
    // 6 sleeps per stopped worker: its own, the grandchild, the daemon and
    // its child, the stubborn daemon, the nohup'ed one.
    wait_until("every descendant to start", LONG, || {
        sleepers(&stopped).len() == 30
    });
    // The crashing worker ends after 1 s, and all it left with it.
    let crash_status = lrpm.wait_for("the crash", LONG, |s| {
        job_in(s, "crash").is_some_and(|j| j["state"] == "backoff")
    });
    assert_eq!(
        job_in(&crash_status, "crash").expect("crash")["last_exit"]["code"],
        3
    );
    wait_until("the crashed worker's descendants to die", LONG, || {
        sleepers(&crashed).is_empty()
    });
    // Stopping the others kills all their descendants.
    let survivors = sleepers(&stopped);
    lrpm.write_config("# no jobs\n");
    lrpm.wait_for("every job gone", LONG, |s| jobs_in(s).is_empty());
    wait_until("the stopped workers' descendants to die", LONG, || {
        sleepers(&stopped).is_empty()
    });
    assert!(survivors.iter().all(|p| !pid_alive(*p)));
}

#[test]
fn with_cgroups_a_daemon_left_by_a_worker_dies_at_shutdown() {
    // During a shutdown a run's cgroup is killed only when it cannot be
    // removed: one that holds an escaped daemon must still be killed. The
    // empty ones (20 plain jobs) are removed by the sweeper's thread, the
    // daemon's killed there and removed with lrpm's tree, which is gone
    // when lrpm has exited.
    const PLAIN: usize = 20;
    let marker = sleep_marker(6);
    let mut config =
        format!("[d]\nname = \"d\"\ncommand = \"setsid sleep {marker} & exec sleep {marker}\"\n\n");
    for i in 0..PLAIN {
        config.push_str(&format!(
            "[p{i}]\nname = \"p{i}\"\ncommand = \"exec sleep {marker}\"\n\n"
        ));
    }
    let mut lrpm = Lrpm::start("jobs.toml", &config, &[]);
    if !prerequisite("a writable cgroup v2", lrpm.uses_cgroups()) {
        return;
    }
    let sleeping = wait_for_value("the workers and the daemon", LONG, || {
        let sleeping = sleepers(&marker);
        (sleeping.len() == PLAIN + 2).then_some(sleeping)
    });
    let tree = sleeping
        .iter()
        .find_map(|p| cgroup_dir(&cgroup_of(*p)?))
        .and_then(|dir| Some(dir.parent()?.to_path_buf()))
        .expect("lrpm's cgroup tree");
    assert!(tree.exists(), "{}", tree.display());
    assert!(lrpm.terminate().success());
    wait_until("the daemon to die with its job at shutdown", LONG, || {
        sleepers(&marker).is_empty()
    });
    assert!(sleeping.iter().all(|p| !pid_alive(*p)));
    assert!(
        !tree.exists(),
        "lrpm's tree {} is left after its exit",
        tree.display()
    );
}

#[test]
fn without_cgroups_escaped_daemons_are_killed_with_their_job_or_at_shutdown() {
    let tracked = sleep_marker(3);
    let scrubbed = sleep_marker(4);
    // One daemon keeps the environment (LRPM_RUN_ID), one clears it.
    let config = format!(
        "[d]\nname = \"d\"\ncommand = {:?}\n",
        format!(
            "setsid sh -c 'sleep {tracked} & exec sleep {tracked}' & \
             setsid env -i sleep {scrubbed} & exec sleep {tracked}"
        )
    );
    let mut lrpm = Lrpm::start("jobs.toml", &config, &["--cgroup", "off"]);
    let daemons = wait_for_value("the daemons to start", LONG, || {
        let daemons = sleepers(&tracked);
        (daemons.len() == 3 && sleepers(&scrubbed).len() == 1).then_some(daemons)
    });
    lrpm.write_config("# no jobs\n");
    // lrpm adopts the daemons, kills the tracked ones and reaps them; the
    // pass over its adopted processes that reaped them looked at the
    // untracked one too, and is over once lrpm answers after that.
    wait_until(
        "the tracked daemons to die with their job and be reaped",
        LONG,
        || {
            sleepers(&tracked).is_empty()
                && children_of(lrpm.pid())
                    .iter()
                    .all(|child| !daemons.contains(child))
        },
    );
    lrpm.status();
    // The one that cleared its environment cannot be told apart: it runs
    // until lrpm shuts down, as the log says.
    assert_eq!(sleepers(&scrubbed).len(), 1);
    assert!(
        lrpm.stderr().contains("cannot be tracked"),
        "{}",
        lrpm.stderr()
    );
    assert!(lrpm.stderr().contains("--cgroup off"));
    let status = lrpm.terminate();
    assert!(status.success());
    wait_until("the untracked daemon to die at shutdown", LONG, || {
        sleepers(&scrubbed).is_empty()
    });
}

#[test]
fn a_job_and_everything_it_forks_share_a_cgroup_that_is_removed_with_it() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        "[c]\nname = \"c\"\ncommand = \"setsid sleep 100000 & exec sleep 100000\"\n",
        &[],
    );
    let status = lrpm.wait_for("c running", LONG, |s| {
        job_in(s, "c").is_some_and(|j| j["pid"].is_u64())
    });
    let pid = pid_of(job_in(&status, "c").expect("c")).expect("pid");
    if !prerequisite("a writable cgroup v2", lrpm.uses_cgroups()) {
        return;
    }
    let cgroup = cgroup_of(pid).expect("the job's cgroup");
    assert!(
        cgroup.ends_with("/job-c-0") && cgroup.contains(&format!("/lrpm-{}", lrpm.pid())),
        "{cgroup}"
    );
    // The daemon, in a session of its own, is in the job's cgroup too (once
    // the shell has forked it).
    let members = wait_for_value("the daemon in the job's cgroup", LONG, || {
        let members: BTreeSet<u32> = children_of(pid)
            .into_iter()
            .chain(sleepers("100000"))
            .chain([pid])
            .filter(|p| cgroup_of(*p).as_deref() == Some(cgroup.as_str()))
            .collect();
        (members.len() >= 2).then_some(members)
    });
    // The job's end removes the cgroup; lrpm's end removes its tree.
    let mut lrpm = lrpm;
    lrpm.write_config("# none\n");
    lrpm.wait_for("c gone", LONG, |s| jobs_in(s).is_empty());
    let dir = cgroup_dir(&cgroup).expect("the cgroup's directory");
    wait_until("the job's cgroup to be removed", LONG, || !dir.exists());
    assert!(lrpm.terminate().success());
    assert!(
        !dir.parent().expect("tree").exists(),
        "lrpm's tree is removed at exit"
    );
    assert!(members.iter().all(|p| !pid_alive(*p)));
}

#[test]
fn a_crashed_job_restarts_in_its_emptied_cgroup_and_one_left_with_a_daemon_is_replaced() {
    // A restart reuses the cgroup its job's last run left empty (never
    // killed); one that still holds an escaped daemon is killed, daemon
    // and all, and the replacement gets a new one.
    let daemon = sleep_marker(8);
    // Restarted at once (no run is too short): a restart delayed by its
    // backoff gets a new cgroup, the last one removed meanwhile.
    let config = format!(
        "[plain]\nname = \"p\"\ncommand = \"exec sleep 100000\"\nshortRunTimeSeconds = 0\n\n\
         [d]\nname = \"d\"\ncommand = \"setsid sleep {daemon} & exec sleep 100000\"\n\
         shortRunTimeSeconds = 0\n"
    );
    let mut lrpm = Lrpm::start("jobs.toml", &config, &[]);
    if !prerequisite("a writable cgroup v2", lrpm.uses_cgroups()) {
        return;
    }
    let status = lrpm.wait_for("both running", LONG, |s| {
        ["plain", "d"]
            .iter()
            .all(|j| job_in(s, j).is_some_and(|j| j["pid"].is_u64()))
    });
    let pid = |s: &Value, job: &str| pid_of(job_in(s, job).expect("the job")).expect("a pid");
    let (plain, d) = (pid(&status, "plain"), pid(&status, "d"));
    let plain_cgroup = cgroup_of(plain).expect("plain's cgroup");
    let d_cgroup = cgroup_of(d).expect("d's cgroup");
    let escaped = wait_for_value("d's daemon", LONG, || {
        let found = sleepers(&daemon);
        (found.len() == 1).then_some(found)
    });
    for crashed in [plain, d] {
        signal(crashed, rustix::process::Signal::KILL);
    }
    let status = lrpm.wait_for("both restarted", LONG, |s| {
        ["plain", "d"].iter().all(|j| {
            job_in(s, j)
                .is_some_and(|j| j["restarts"] == 1 && j["state"] == "running" && j["pid"].is_u64())
        })
    });
    let (new_plain, new_d) = (pid(&status, "plain"), pid(&status, "d"));
    assert_eq!(
        cgroup_of(new_plain).as_deref(),
        Some(plain_cgroup.as_str()),
        "the empty cgroup is reused"
    );
    let new_d_cgroup = cgroup_of(new_d).expect("d's new cgroup");
    assert_ne!(new_d_cgroup, d_cgroup, "a cgroup that held a daemon is not");
    wait_until("the escaped daemon to die with its run", LONG, || {
        escaped.iter().all(|p| !pid_alive(*p))
    });
    let d_dir = cgroup_dir(&d_cgroup).expect("d's old cgroup directory");
    wait_until("d's old cgroup to be removed", LONG, || !d_dir.exists());
    // The replacement in the reused cgroup lives on (a cgroup once killed
    // would have its clones killed by the kernel), and stays countable.
    let status = lrpm.status();
    let plain_now = job_in(&status, "plain").expect("plain");
    assert_eq!(plain_now["restarts"], 1, "{plain_now}");
    assert!(pid_alive(new_plain));
    // The job's end removes the reused cgroup too.
    lrpm.write_config("# none\n");
    lrpm.wait_for("both gone", LONG, |s| jobs_in(s).is_empty());
    let plain_dir = cgroup_dir(&plain_cgroup).expect("plain's cgroup directory");
    wait_until("plain's cgroup to be removed", LONG, || !plain_dir.exists());
    assert!(lrpm.terminate().success());
}

// ---------------------------------------------------------------------------
// Stopping: stubborn workers, and workers that are gone already.

#[test]
fn stop_escalation_copes_with_stubborn_late_and_vanished_workers() {
    let stubborn_child = sleep_marker(5);
    let config = format!(
        r#"
[ignores-term]
name = "ignores TERM"
command = "trap '' TERM; exec sleep 100000"
shutdownTimeoutSeconds = 1

[exits-during-escalation]
name = "exits at about the SIGKILL"
command = "trap 'sleep 0.95; exit 0' TERM; while :; do sleep 0.05; done"
shutdownTimeoutSeconds = 1

[child-ignores-term]
name = "leaves a child that ignores TERM"
command = "sh -c \"trap '' TERM; exec sleep {stubborn_child}\" & trap 'exit 0' TERM; while :; do sleep 0.1; done"
shutdownTimeoutSeconds = 30
"#
    );
    let lrpm = Lrpm::start("jobs.toml", &config, &[]);
    let status = lrpm.wait_for("all running", LONG, |s| all_running(s, 3));
    let pids: Vec<u32> = jobs_in(&status).iter().filter_map(pid_of).collect();
    wait_until("the stubborn child", LONG, || {
        sleepers(&stubborn_child).len() == 1
    });
    let removed = Instant::now();
    lrpm.write_config("# none\n");
    // The leader that exits on SIGTERM takes its stubborn child along at
    // once, long before its 30 s timeout.
    wait_until("the stubborn child to die", Duration::from_secs(10), || {
        sleepers(&stubborn_child).is_empty()
    });
    lrpm.wait_for("every job gone", LONG, |s| jobs_in(s).is_empty());
    let took = removed.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "SIGKILL came early: {took:?}"
    );
    assert!(pids.iter().all(|p| !pid_alive(*p)));
    assert!(
        !lrpm.stderr().contains("cannot signal"),
        "{}",
        lrpm.stderr()
    );
}

#[test]
fn workers_that_end_just_as_they_are_stopped_are_handled_once() {
    let mut config = String::new();
    for i in 0..30 {
        config.push_str(&format!(
            "[v{i}]\nname = \"v\"\ncommand = [\"sleep\", \"0.{}\"]\nshortRunTimeSeconds = 0\n\n",
            1 + i % 5
        ));
    }
    let mut lrpm = Lrpm::start("jobs.toml", "# none\n", &[]);
    for round in 0..6u64 {
        lrpm.write_config(&config);
        lrpm.wait_for("the jobs", LONG, |s| jobs_in(s).len() == 30);
        // Stop them at about the moment many of them end by themselves.
        std::thread::sleep(Duration::from_millis(100 + 60 * round));
        lrpm.write_config("# none\n");
        lrpm.wait_for("every job gone", LONG, |s| jobs_in(s).is_empty());
    }
    assert!(
        !lrpm.stderr().contains("cannot signal"),
        "{}",
        lrpm.stderr()
    );
    assert!(zombie_children(lrpm.pid()).is_empty());
    assert!(lrpm.terminate().success());
}

// ---------------------------------------------------------------------------
// lrpm's own death.

#[test]
fn sigkill_in_the_middle_of_a_reconcile_leaves_no_worker_and_a_restart_restores_the_farm() {
    let worker = sleep_marker(6);
    let left = sleep_marker(7);
    let mut config = String::from("{");
    for i in 0..500 {
        if i > 0 {
            config.push(',');
        }
        let command = if i % 25 == 0 {
            // A worker that leaves a grandchild, which has no parent-death
            // signal of its own.
            format!(r#""sleep {left} & exec sleep {worker}""#)
        } else {
            format!(r#"["sleep", "{worker}"]"#)
        };
        config.push_str(&format!(r#""w{i}": {{"name": "w", "command": {command}}}"#));
    }
    config.push('}');
    // Without its guardian, which would kill the grandchildren at once
    // (the guardian module's tests): here the next lrpm cleans up.
    let mut first = Lrpm::start("jobs.json", "{}", &["--guardian", "off"]);
    let lrpm_pid = first.pid();
    first.write_config(&config);
    wait_until("the reconcile to be under way", LONG, || {
        children_of(lrpm_pid).len() >= 100
    });
    signal(lrpm_pid, rustix::process::Signal::KILL);
    let spawned = children_of(lrpm_pid).len();
    assert!(first.wait_timeout(LONG).is_some(), "lrpm is dead");
    wait_until("every worker to die with lrpm", LONG, || {
        sleepers(&worker).is_empty()
    });
    let orphans = sleepers(&left);
    eprintln!(
        "killed with {spawned} of 500 workers started; {} grandchildren outlived it",
        orphans.len()
    );

    // Started again on the same source, lrpm brings the farm back, and the
    // grandchildren its predecessor left are killed.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut second = Lrpm::start_in(dir, first.config.clone(), |command| {
        command.arg(&first.config);
    });
    second.wait_for("the whole farm", LONG * 2, |s| all_running(s, 500));
    if prerequisite(
        "a writable cgroup v2, to kill what the killed lrpm left",
        first.uses_cgroups() && second.uses_cgroups(),
    ) {
        assert!(
            orphans.iter().all(|p| !pid_alive(*p)),
            "the previous lrpm's leftovers are killed: {}",
            second.stderr()
        );
        assert!(
            second
                .stderr()
                .contains("left by an lrpm that did not shut down cleanly"),
            "{}",
            second.stderr()
        );
    }
    assert!(second.terminate().success());
    wait_until("the farm to stop", LONG, || {
        sleepers(&worker).is_empty() && sleepers(&left).is_empty()
    });
}

// ---------------------------------------------------------------------------
// Configuration sources that fail in every way.

/// One long-running job, `a`.
const ONE_JOB: &str = "[a]\nname = \"a\"\ncommand = [\"sleep\", \"100000\"]\n";

/// Waits for a source error that contains `needle`, and checks that the
/// farm did not change meanwhile: job `a` still runs as `pid`.
fn assert_failure_keeps_the_farm(lrpm: &Lrpm, needle: &str, pid: u32) -> String {
    let status = lrpm.wait_for_source_error_status(needle);
    let error = source_error(&status).unwrap_or_default().to_owned();
    assert_eq!(jobs_in(&status).len(), 1, "{error}");
    assert_eq!(
        pid_of(job_in(&status, "a").expect("a")),
        Some(pid),
        "{error}"
    );
    assert!(pid_alive(pid));
    error
}

/// Waits until the source error is gone and job `b` runs besides `a`.
fn assert_recovered(lrpm: &Lrpm, pid: u32) {
    let status = lrpm.wait_for("the source to recover", LONG, |s| {
        s["supervisor"]["source"]["last_error"].is_null()
            && job_in(s, "b").is_some_and(|j| j["state"] == "running")
    });
    assert_eq!(pid_of(job_in(&status, "a").expect("a")), Some(pid));
}

fn two_jobs() -> String {
    format!("{ONE_JOB}[b]\nname = \"b\"\ncommand = [\"sleep\", \"100000\"]\n")
}

#[test]
fn a_config_file_that_cannot_be_read_or_disappears_keeps_the_farm() {
    let lrpm = Lrpm::start("jobs.toml", ONE_JOB, &[]);
    let pid = lrpm.running_pid("a");
    let config = lrpm.config.clone();

    // lrpm runs as root in CI, and root reads a file whatever its mode, so
    // "unreadable" is something else in the file's place: a directory…
    fs::remove_file(&config).expect("rm");
    fs::create_dir(&config).expect("mkdir");
    let error = assert_failure_keeps_the_farm(&lrpm, "not a regular file", pid);
    assert!(error.contains("jobs.toml"), "{error}");
    fs::remove_dir(&config).expect("rmdir");
    lrpm.write_config(&two_jobs());
    assert_recovered(&lrpm, pid);
    lrpm.write_config(ONE_JOB);
    lrpm.wait_for("b removed", LONG, |s| job_in(s, "b").is_none());

    // …or a FIFO, which would block a plain read until a writer came.
    fs::remove_file(&config).expect("rm");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &config,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    assert_failure_keeps_the_farm(&lrpm, "not a regular file", pid);
    fs::remove_file(&config).expect("rm fifo");
    fs::write(&config, two_jobs()).expect("write");
    assert_recovered(&lrpm, pid);
    lrpm.write_config(ONE_JOB);
    lrpm.wait_for("b removed", LONG, |s| job_in(s, "b").is_none());

    // Deleted, then created again.
    fs::remove_file(&config).expect("rm");
    assert_failure_keeps_the_farm(&lrpm, "No such file", pid);
    fs::write(&config, ONE_JOB).expect("recreate");
    lrpm.wait_for("the recreated file", LONG, |s| {
        source_error(s).is_none() && jobs_in(s).len() == 1
    });
    assert_eq!(lrpm.running_pid("a"), pid, "a is unchanged");
}

#[test]
fn a_half_written_file_is_not_applied_until_it_is_whole() {
    let job = |id: &str| format!(r#""{id}": {{"name": "{id}", "command": ["sleep", "100000"]}}"#);
    let lrpm = Lrpm::start("jobs.json", &format!("{{{}}}", job("a")), &[]);
    let pid = lrpm.running_pid("a");
    // Written in place, in two halves, the way a careless editor or a
    // script with `>` does.
    let whole = format!("{{{}, {}}}", job("a"), job("b"));
    let (first, second) = whole.split_at(whole.len() / 2);
    let mut file = fs::File::create(&lrpm.config).expect("truncate");
    std::io::Write::write_all(&mut file, first.as_bytes()).expect("first half");
    std::io::Write::flush(&mut file).expect("flush");
    assert_failure_keeps_the_farm(&lrpm, "jobs.json", pid);
    std::io::Write::write_all(&mut file, second.as_bytes()).expect("second half");
    drop(file);
    assert_recovered(&lrpm, pid);
}

#[test]
fn a_50_mb_file_is_read_without_stalling_and_a_larger_than_64_mib_one_is_refused() {
    let lrpm = Lrpm::start(
        "jobs.json",
        r#"{"a": {"name": "a", "command": ["sleep", "100000"]}}"#,
        &[],
    );
    let pid = lrpm.running_pid("a");
    let rss_before = rss_kib(lrpm.pid());
    // A job with a 50 MB value under a key lrpm does not know: read,
    // parsed, warned about, and dropped.
    let padding = "x".repeat(50_000_000);
    let big = format!(
        r#"{{"a": {{"name": "a", "command": ["sleep", "100000"]}}, "b": {{"name": "b", "command": ["sleep", "100000"], "padding": "{padding}"}}}}"#
    );
    let written = Instant::now();
    lrpm.write_config(&big);
    let mut slowest = Duration::ZERO;
    let status = loop {
        let (status, took) = timed_status(&lrpm);
        slowest = slowest.max(took);
        if job_in(&status, "b").is_some_and(|j| j["state"] == "running") {
            break status;
        }
        assert!(written.elapsed() < LONG, "the 50 MB file was not applied");
        std::thread::sleep(Duration::from_millis(50));
    };
    let applied_in = written.elapsed();
    let warnings = status["supervisor"]["source"]["warnings"].to_string();
    assert!(warnings.contains("padding"), "{warnings}");
    assert!(
        warnings.len() < 1000,
        "the warning does not quote the value"
    );
    assert_eq!(pid_of(job_in(&status, "a").expect("a")), Some(pid));
    // What the parse took is given back a moment after (5 s at most).
    let rss_after = last_look(|| rss_kib(lrpm.pid()), |&rss| rss < rss_before + 32 * 1024);
    eprintln!(
        "50 MB file applied in {applied_in:?}, slowest status meanwhile {slowest:?}; RSS \
         {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(slowest < Duration::from_secs(2), "status took {slowest:?}");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "lrpm kept {rss_after} KiB after the 50 MB file (before: {rss_before} KiB)"
    );

    // Past 64 MiB the file is refused before it is read.
    drop(big);
    let huge = format!(
        r#"{{"a": {{"name": "a", "command": ["sleep", "100000"], "padding": "{}"}}}}"#,
        "x".repeat(65 << 20)
    );
    lrpm.write_config(&huge);
    let status = lrpm.wait_for("the refusal", LONG, |s| {
        s["supervisor"]["source"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("larger than 64 MiB"))
    });
    assert_eq!(jobs_in(&status).len(), 2, "the farm is unchanged");
}

#[test]
fn deeply_nested_json_is_an_error_not_a_crash() {
    let lrpm = Lrpm::start(
        "jobs.json",
        r#"{"a": {"name": "a", "command": ["sleep", "100000"]}}"#,
        &[],
    );
    let pid = lrpm.running_pid("a");
    let depth = 100_000;
    let nested = format!(
        r#"{{"a": {{"name": "a", "command": ["sleep", "100000"], "workerConfig": {}{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    lrpm.write_config(&nested);
    let error = assert_failure_keeps_the_farm(&lrpm, "jobs.json", pid);
    assert!(error.contains("recursion limit"), "{error}");
}

#[test]
fn a_map_of_100000_jobs_is_validated_and_reported_without_drowning_the_log() {
    // Spawning 100,000 processes is not the point (nor kind to a CI
    // machine): 99,990 of these jobs are invalid, so the whole map is
    // parsed, validated and reconciled, and 10 jobs run.
    let mut config = String::with_capacity(6_000_000);
    config.push('{');
    for i in 0..100_000 {
        if i > 0 {
            config.push(',');
        }
        if i % 10_000 == 0 {
            config.push_str(&format!(
                r#""j{i}": {{"name": "j", "command": ["sleep", "100000"]}}"#
            ));
        } else {
            config.push_str(&format!(
                r#""j{i}": {{"name": "j", "shortRunTimeSeconds": -1}}"#
            ));
        }
    }
    config.push('}');
    let lrpm = Lrpm::start("jobs.json", "{}", &[]);
    let written = Instant::now();
    lrpm.write_config(&config);
    let status = lrpm.wait_for("the 10 valid jobs", LONG, |s| all_running(s, 10));
    let took = written.elapsed();
    let invalid = status["supervisor"]["source"]["invalid_jobs"]
        .as_object()
        .map_or(0, |m| m.len());
    assert_eq!(invalid, 99_990);
    let (_, status_took) = timed_status(&lrpm);
    let log = lrpm.stderr();
    let logged = log
        .lines()
        .filter(|l| l.contains("invalid job left out"))
        .count();
    eprintln!(
        "100,000 jobs applied in {took:?}; a status of {invalid} invalid jobs took \
         {status_took:?}; {logged} log lines about them; RSS {} KiB",
        rss_kib(lrpm.pid())
    );
    assert!(logged <= 20, "{logged} lines of invalid jobs in the log");
    assert!(log.contains("and 99970 more invalid jobs"), "{log}");
}

#[test]
fn the_same_id_twice_and_invalid_utf8() {
    let lrpm = Lrpm::start(
        "jobs.json",
        r#"{"a": {"name": "a", "command": ["sleep", "100000"]}}"#,
        &[],
    );
    let pid = lrpm.running_pid("a");
    // Twice in one map: invalid, and neither copy runs.
    lrpm.write_config(
        r#"{"a": {"name": "a", "command": ["sleep", "100000"]},
            "d": {"name": "d1", "command": ["sleep", "100000"]},
            "d": {"name": "d2", "command": ["sleep", "100001"]}}"#,
    );
    let status = lrpm.wait_for("d reported", LONG, |s| {
        s["supervisor"]["source"]["invalid_jobs"]["d"].is_string()
    });
    assert!(job_in(&status, "d").is_none());
    assert_eq!(pid_of(job_in(&status, "a").expect("a")), Some(pid));
    // Bytes that are not UTF-8.
    fs::write(
        &lrpm.config,
        b"{\"a\": {\"name\": \"\xff\xfe\", \"command\": [\"sleep\", \"1\"]}}",
    )
    .expect("write");
    let error = assert_failure_keeps_the_farm(&lrpm, "jobs.json", pid);
    assert!(error.contains("UTF-8"), "{error}");
}

// ---------------------------------------------------------------------------
// The removal guard.

fn farm_of(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("[{id}]\nname = \"{id}\"\ncommand = [\"sleep\", \"100000\"]\n"))
        .collect()
}

fn pids(status: &Value) -> BTreeMap<String, u32> {
    jobs_in(status)
        .iter()
        .filter_map(|j| Some((j["id"].as_str()?.to_owned(), pid_of(j)?)))
        .collect()
}

#[test]
fn the_removal_guard_holds_an_emptied_configuration_until_forced() {
    let lrpm = Lrpm::start(
        "jobs.toml",
        &farm_of(&["a", "b", "c", "d"]),
        &["--max-removal-ratio", "0.5"],
    );
    let before = pids(&lrpm.wait_for("the farm", LONG, |s| all_running(s, 4)));

    // A broken source hands over an empty map: held, nothing stops.
    lrpm.write_config("# nothing\n");
    let status = lrpm.wait_for("the hold", LONG, |s| {
        s["supervisor"]["source"]["held"].is_object()
    });
    let held = &status["supervisor"]["source"]["held"];
    assert_eq!(held["removals"], 4);
    assert_eq!(held["declared"], 4);
    assert_eq!(held["max_removal_ratio"], 0.5);
    assert_eq!(
        held["would_remove"],
        serde_json::json!(["a", "b", "c", "d"])
    );
    let error = status["supervisor"]["source"]["last_error"]
        .as_str()
        .expect("the hold shows as the source's error");
    assert!(error.contains("lrpmctl reload --force"), "{error}");
    assert_eq!(pids(&status), before, "nothing was stopped");
    assert!(lrpm.stderr().contains("configuration held back"));
    // The table of `lrpmctl status` shows it too.
    let table = lrpm.ctl(&["status"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("held back"));

    // A plain reload reads the same thing and holds it again: once the
    // log says so, nothing stops.
    let held = || lrpm.stderr().matches("configuration held back").count();
    let held_before = held();
    let reload = lrpm.ctl(&["reload"]);
    assert!(reload.status.success());
    wait_until("the reloaded configuration held", LONG, || {
        held() > held_before
    });
    let status = lrpm.status();
    assert!(all_running(&status, 4), "{status}");
    assert_eq!(pids(&status), before);

    // A configuration within the ratio is applied and clears the hold.
    lrpm.write_config(&farm_of(&["a", "b", "c"]));
    let status = lrpm.wait_for("d removed", LONG, |s| {
        jobs_in(s).len() == 3 && s["supervisor"]["source"]["held"].is_null()
    });
    assert!(status["supervisor"]["source"]["last_error"].is_null());

    // Emptied again, then confirmed by the operator.
    lrpm.write_config("# nothing\n");
    lrpm.wait_for("the hold", LONG, |s| {
        s["supervisor"]["source"]["held"].is_object()
    });
    let forced = lrpm.ctl(&["reload", "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    let status = lrpm.wait_for("every job stopped", LONG, |s| jobs_in(s).is_empty());
    assert!(status["supervisor"]["source"]["held"].is_null());
    assert!(status["supervisor"]["source"]["last_error"].is_null());
    assert!(before.values().all(|p| !pid_alive(*p)));
}

#[test]
fn an_empty_map_from_a_broken_exec_source_is_held_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs_file = dir.path().join("jobs.json");
    fs::write(
        &jobs_file,
        r#"{"a": {"name": "a", "command": ["sleep", "100000"]}, "b": {"name": "b", "command": ["sleep", "100000"]}}"#,
    )
    .expect("jobs");
    let lrpm = Lrpm::start_in(dir, jobs_file.clone(), |command| {
        command
            .args(["--interval", "0.2", "--max-removal-ratio", "0.9"])
            .arg(format!("exec:cat {}", jobs_file.display()));
    });
    let before = pids(&lrpm.wait_for("the farm", LONG, |s| all_running(s, 2)));
    fs::write(&jobs_file, "{}").expect("empty");
    let status = lrpm.wait_for("the hold", LONG, |s| {
        s["supervisor"]["source"]["held"]["removals"] == 2
    });
    assert_eq!(pids(&status), before);
    // The command keeps printing `{}`: held every time, never applied.
    let seen = loads(&status);
    let status = lrpm.wait_for("five more loads", LONG, |s| loads(s) >= seen + 5);
    assert!(all_running(&status, 2), "{status}");
    assert_eq!(pids(&status), before);
}

#[test]
fn without_the_guard_an_empty_map_stops_every_job_as_php_lrpm_does() {
    let lrpm = Lrpm::start("jobs.toml", &farm_of(&["a", "b"]), &[]);
    lrpm.wait_for("the farm", LONG, |s| all_running(s, 2));
    lrpm.write_config("# nothing\n");
    let status = lrpm.wait_for("every job stopped", LONG, |s| jobs_in(s).is_empty());
    assert!(status["supervisor"]["source"]["held"].is_null());
}

// ---------------------------------------------------------------------------
// The soak.

/// The soak's farm, generation `generation`: most workers run for 5–60 s
/// and end (restarted at once); some fail at once (backoff, capped at 60 s
/// here); some print a line a second; some leave a daemon behind at every
/// run. Each generation renames a twentieth of the jobs (removals and
/// additions) and changes another twentieth (updates).
fn soak_config(workers: usize, generation: usize) -> String {
    let mut config = String::new();
    for i in 0..workers {
        let renamed = (i + generation) % 20 == 0;
        let id = if renamed {
            format!("w{i}-g{generation}")
        } else {
            format!("w{i}")
        };
        let changed = (i + generation) % 20 == 1;
        let command = match i % 10 {
            0 => "exit 1".to_owned(),
            1 => "while :; do echo tick; sleep 1; done".to_owned(),
            2 => "setsid sleep 1000 & exec sleep $(( $$ % 50 + 10 ))".to_owned(),
            _ => "exec sleep $(( $$ % 55 + 5 ))".to_owned(),
        };
        let env = if changed {
            format!("env = {{ GENERATION = \"{generation}\" }}\n")
        } else {
            String::new()
        };
        config.push_str(&format!(
            "[{id}]\nname = \"soak {i}\"\ncommand = {command:?}\n{env}\n"
        ));
    }
    config
}

/// One line of the soak's report.
fn soak_report(lrpm: &Lrpm, elapsed: Duration) -> (u64, usize, usize) {
    let pid = lrpm.pid();
    let (status, took) = timed_status(lrpm);
    let (rss, anon) = memory_kib(pid);
    let fds = fd_count(pid);
    let zombies = zombie_children(pid).len();
    let threads = fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |t| t.count());
    let count = |state: &str| {
        jobs_in(&status)
            .iter()
            .filter(|j| j["state"] == state)
            .count()
    };
    let restarts: u64 = jobs_in(&status)
        .iter()
        .filter_map(|j| j["restarts"].as_u64())
        .sum();
    eprintln!(
        "soak t={:>5}s rss={:>6}KiB anon={:>6}KiB fds={:>5} zombies={:>3} threads={} \
         jobs={} (running {}, backoff {}, stopping {}) restarts={restarts} status={took:?}",
        elapsed.as_secs(),
        rss,
        anon,
        fds,
        zombies,
        threads,
        jobs_in(&status).len(),
        count("running"),
        count("backoff"),
        count("stopping"),
    );
    (rss, fds, zombies)
}

#[test]
#[ignore = "the soak: 1,000 workers for an hour by default; see the module documentation"]
fn soak() {
    let workers = knob("LRPM_SOAK_WORKERS", 1000) as usize;
    let seconds = knob("LRPM_SOAK_SECONDS", 3600);
    let every = Duration::from_secs(knob("LRPM_SOAK_REPORT_SECONDS", 60).max(1));
    let mut lrpm = Lrpm::start("jobs.toml", "# empty\n", &["-q", "--max-backoff", "60"]);
    std::thread::sleep(Duration::from_secs(1));
    let fds_empty = fd_count(lrpm.pid());
    let (rss_empty, anon_empty) = memory_kib(lrpm.pid());
    eprintln!(
        "soak: {workers} workers for {seconds} s; empty farm: {fds_empty} descriptors, RSS \
         {rss_empty} KiB ({anon_empty} KiB anonymous)"
    );
    let started = Instant::now();
    let mut generation = 0;
    lrpm.write_config(&soak_config(workers, generation));
    let mut next_report = Duration::ZERO;
    let mut next_change = Duration::from_secs(30);
    let mut first_rss = None;
    let mut most_zombies = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let elapsed = started.elapsed();
        if elapsed >= next_change {
            generation += 1;
            lrpm.write_config(&soak_config(workers, generation));
            next_change += Duration::from_secs(30);
        }
        if elapsed >= next_report {
            let (rss, _, zombies) = soak_report(&lrpm, elapsed);
            // The first report comes before the farm has warmed up.
            if next_report > Duration::ZERO && first_rss.is_none() {
                first_rss = Some(rss);
            }
            most_zombies = most_zombies.max(zombies);
            next_report += every;
        }
    }
    let (rss_end, _, _) = soak_report(&lrpm, started.elapsed());
    // Stop every job: the descriptors and children go back to the empty
    // farm's.
    lrpm.write_config("# empty\n");
    lrpm.wait_for("the farm to stop", LONG * 2, |s| jobs_in(s).is_empty());
    // lrpm gives freed memory back 5 s after the activity that freed it:
    // the report's memory figures come after that.
    std::thread::sleep(Duration::from_secs(7));
    let pid = lrpm.pid();
    let fds_end = last_look(|| fd_count(pid), |&fds| fds <= fds_empty);
    let zombies_end = last_look(|| zombie_children(pid).len(), |&zombies| zombies == 0);
    let (rss_stopped, anon_stopped) = memory_kib(pid);
    eprintln!(
        "soak done: {generation} configuration changes; empty again: {fds_end} descriptors \
         (at start {fds_empty}), {zombies_end} zombies, RSS {rss_stopped} KiB (at start \
         {rss_empty} KiB), {anon_stopped} KiB anonymous (at start {anon_empty} KiB; the rest \
         is pages of the binary that more code paths touched); the most zombies seen at once \
         {most_zombies}"
    );
    assert_eq!(zombies_end, 0);
    assert!(
        fds_end <= fds_empty,
        "{fds_end} descriptors, {fds_empty} at start"
    );
    if let Some(first) = first_rss {
        assert!(
            rss_end as f64 <= first as f64 * 1.25,
            "RSS grew from {first} KiB to {rss_end} KiB over the soak"
        );
    }
    assert!(lrpm.terminate().success());
}

// ---------------------------------------------------------------------------
// Reaping keeps pace with a storm.

/// The sum of every job's restarts in a status response.
fn total_restarts(status: &Value) -> u64 {
    restarts(status).values().sum()
}

#[test]
fn in_a_storm_no_exit_waits_long_to_be_reaped() {
    // 300 jobs that exit at once, restarted at once: a thousand or more
    // exits a second, more than one epoll wait's worth at a time.
    let n = 300;
    let mut config = String::new();
    for i in 0..n {
        config.push_str(&format!(
            "[t{i}]\nname = \"t{i}\"\ncommand = [\"true\"]\nshortRunTimeSeconds = 0\n\n"
        ));
    }
    let mut lrpm = Lrpm::start("jobs.toml", &config, &["-q"]);
    let lrpm_pid = lrpm.pid();
    lrpm.wait_for("the storm under way", LONG, |s| {
        total_restarts(s) > 2 * n as u64
    });
    // Little's law: the mean time an exit waits to be reaped is the mean
    // number of zombies waiting divided by the rate of exits. lrpm's
    // zombies are its ended workers not reaped yet (an ended run's zombie
    // is reaped in the same turn of the loop as its exit is handled).
    let before = total_restarts(&lrpm.status());
    let started = Instant::now();
    let (mut samples, mut zombies, mut most) = (0u64, 0u64, 0usize);
    while started.elapsed() < Duration::from_secs(4) {
        let now = zombie_children(lrpm_pid).len();
        zombies += now as u64;
        most = most.max(now);
        samples += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = started.elapsed().as_secs_f64();
    let exits = total_restarts(&lrpm.status()) - before;
    let rate = exits as f64 / seconds;
    let mean_zombies = zombies as f64 / samples as f64;
    let mean_wait_ms = mean_zombies / rate * 1000.0;
    eprintln!(
        "storm: {rate:.0} exits/s, {mean_zombies:.1} zombies on average ({most} at most), \
         an exit waits {mean_wait_ms:.1} ms on average to be reaped"
    );
    assert!(rate > 50.0, "the storm ran at {rate:.0} exits/s only");
    // One turn of the loop spawns for 20 ms at most; an exit waits for the
    // turn under way, and no more. Generous, for a loaded machine.
    assert!(
        mean_wait_ms < 60.0,
        "an exit waits {mean_wait_ms:.1} ms on average to be reaped"
    );
    assert!(lrpm.terminate().success());
}

// ---------------------------------------------------------------------------
// Memory returned after churn.

/// `n` jobs that sleep while a file `calm` exists in lrpm's directory, and
/// otherwise exit at once and are restarted at once.
fn churn_config(n: usize) -> String {
    let mut config = String::new();
    for i in 0..n {
        config.push_str(&format!(
            "[c{i}]\nname = \"churn {i}\"\n\
             command = \"[ -e calm ] && exec sleep 100000; exit 0\"\n\
             shortRunTimeSeconds = 0\n\n"
        ));
    }
    config
}

/// Starts lrpm on `n` churn jobs; with `churn`, they churn for that long
/// before they calm down. Returns lrpm once every job sleeps.
fn churn_farm(n: usize, churn: Option<Duration>) -> Lrpm {
    let dir = tempfile::tempdir().expect("tempdir");
    let calm = dir.path().join("calm");
    if churn.is_none() {
        fs::write(&calm, "").expect("calm");
    }
    let config = dir.path().join("jobs.toml");
    fs::write(&config, churn_config(n)).expect("config");
    let lrpm = Lrpm::start_in(dir, config.clone(), |command| {
        command.arg("-q").arg(&config);
    });
    if let Some(churn) = churn {
        lrpm.wait_for("the churn under way", LONG, |s| {
            restarts(s).values().sum::<u64>() > n as u64
        });
        let started = Instant::now();
        while started.elapsed() < churn {
            // Status answers during the churn, as a monitor would ask.
            let _ = lrpm.status();
            std::thread::sleep(Duration::from_millis(200));
        }
        fs::write(&calm, "").expect("calm");
    }
    lrpm.wait_for("every job sleeping", LONG * 2, |s| all_running(s, n));
    lrpm
}

#[test]
fn after_heavy_churn_memory_is_within_10_percent_of_a_fresh_farm() {
    let n = knob("LRPM_CHURN_WORKERS", 300) as usize;
    let churn = Duration::from_secs(knob("LRPM_CHURN_SECONDS", 8));
    let mut churned = churn_farm(n, Some(churn));
    let churned_settled = Instant::now();
    let mut fresh = churn_farm(n, None);
    let fresh_settled = Instant::now();
    // Both have trimmed their heaps once they settled: lrpm trims 5 s after
    // the first activity since its last trim, and once after the last.
    let trimmed = |since: Instant| Duration::from_secs(7).saturating_sub(since.elapsed());
    std::thread::sleep(trimmed(churned_settled).max(trimmed(fresh_settled)));
    let fresh_rss = memory_kib(fresh.pid()).0;
    let (churned_rss, churned_anon) = last_look(
        || memory_kib(churned.pid()),
        |&(rss, _)| rss as f64 <= fresh_rss as f64 * 1.10,
    );
    let fresh_anon = memory_kib(fresh.pid()).1;
    eprintln!(
        "{n} jobs, churned for {churn:?}: RSS {churned_rss} KiB ({churned_anon} KiB anonymous); \
         fresh: RSS {fresh_rss} KiB ({fresh_anon} KiB anonymous): {:+.1} %",
        (churned_rss as f64 / fresh_rss as f64 - 1.0) * 100.0
    );
    assert!(
        churned_rss as f64 <= fresh_rss as f64 * 1.10,
        "RSS after churn {churned_rss} KiB is more than 10 % above a fresh farm's {fresh_rss} KiB"
    );
    assert!(churned.terminate().success());
    assert!(fresh.terminate().success());
}

/// A farm grown to three times its size and cut back keeps some memory that
/// a fresh one does not: the survivors' allocations were made among the
/// removed jobs' and pin part of their pages (jemalloc returns a page only
/// when nothing on it is live). Measured +5.6 to +13.5 % on a quiet machine,
/// +16.5 to +21.2 % on a loaded one, the same with jemalloc's decay at 0 (so
/// nothing free is kept): fragmentation, not memory held. The bound is
/// against a regression to what glibc's malloc kept (+53 %).
#[test]
fn after_growing_and_shrinking_memory_is_within_30_percent_of_a_fresh_farm() {
    let n = 1000;
    let ids = |prefix: &str, count: usize| -> Vec<String> {
        (0..count).map(|i| format!("{prefix}{i}")).collect()
    };
    let config =
        |ids: &[String]| crate::support::jobs(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    let last = ids("f", n);
    let mut churned = Lrpm::start("jobs.json", &config(&ids("g0-", n)), &["-q"]);
    churned.wait_for("the first farm", LONG, |s| all_running(s, n));
    for round in 1..6 {
        let size = if round % 2 == 1 { 3 * n } else { n };
        churned.write_config(&config(&ids(&format!("g{round}-"), size)));
        churned.wait_for("the farm of the round", LONG * 2, |s| all_running(s, size));
    }
    churned.write_config(&config(&last));
    churned.wait_for("the last farm", LONG * 2, |s| all_running(s, n));
    let settled = Instant::now();
    let mut fresh = Lrpm::start("jobs.json", &config(&last), &["-q"]);
    fresh.wait_for("the fresh farm", LONG * 2, |s| all_running(s, n));
    std::thread::sleep(Duration::from_secs(8));
    let (fresh_rss, fresh_anon) = memory_kib(fresh.pid());
    let (churned_rss, churned_anon) = last_look(
        || memory_kib(churned.pid()),
        |&(rss, _)| rss as f64 <= fresh_rss as f64 * 1.30,
    );
    eprintln!(
        "grown to {} jobs and back to {n}: RSS {churned_rss} KiB ({churned_anon} KiB anonymous), {:?} after it settled; \
         fresh: {fresh_rss} KiB ({fresh_anon} KiB anonymous) ({:+.1} %)",
        3 * n,
        settled.elapsed(),
        (churned_rss as f64 / fresh_rss as f64 - 1.0) * 100.0
    );
    assert!(
        churned_rss as f64 <= fresh_rss as f64 * 1.30,
        "RSS {churned_rss} KiB after growing and shrinking, fresh {fresh_rss} KiB"
    );
    assert!(churned.terminate().success());
    assert!(fresh.terminate().success());
}
