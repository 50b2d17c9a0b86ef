//! The ledger of a cluster test: every worker appends a line as it
//! starts, and a thread of the test watches every pid it reads there for
//! its death, so that two workers of one job overlapping is measured, not
//! assumed.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;

use crate::support::wall_now;

/// A map of `n` jobs (`job-0`…) that all run the shell command `line`.
pub(crate) fn map_of(n: usize, line: &str) -> String {
    let map: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let job = serde_json::json!({"name": format!("job {i}"), "command": line});
            (format!("job-{i}"), job)
        })
        .collect();
    Value::Object(map).to_string()
}

/// A map of `n` jobs whose workers append `JOB PID NODE TOKEN START` to
/// `ledger` as they start (`TOKEN` their `LRPM_FENCING_TOKEN`, `none`
/// without one; `START` the wall time in seconds), then sleep.
pub(crate) fn ledger_map(n: usize, ledger: &Path) -> String {
    let line = format!(
        "echo \"$LRPM_JOB_ID $$ $LRPM_NODE_ID ${{LRPM_FENCING_TOKEN:-none}} $(date +%s.%N)\" \
         >> {}; exec sleep 300",
        ledger.display()
    );
    map_of(n, &line)
}

/// One worker as the ledger knows it.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) job: String,
    pub(crate) pid: u32,
    pub(crate) node: String,
    /// Its `LRPM_FENCING_TOKEN` (`None` without one).
    pub(crate) token: Option<i64>,
    /// Wall-clock seconds, written by the worker as it starts.
    pub(crate) started: f64,
    /// When its pidfd became readable (wall-clock seconds): its exit.
    /// `None` while it lives.
    pub(crate) died: Option<f64>,
}

/// Follows the ledger the workers write and watches every worker's pid
/// for its death, on a thread of its own.
pub(crate) struct Ledger {
    runs: Arc<Mutex<Vec<Run>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ledger {
    /// Starts following `path` (which need not exist yet).
    pub(crate) fn watch(path: PathBuf) -> Ledger {
        let runs = Arc::new(Mutex::new(Vec::<Run>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (runs, stop) = (Arc::clone(&runs), Arc::clone(&stop));
            std::thread::spawn(move || follow(&path, &runs, &stop))
        };
        Ledger {
            runs,
            stop,
            thread: Some(thread),
        }
    }

    /// Every run read so far.
    pub(crate) fn runs(&self) -> Vec<Run> {
        self.runs.lock().expect("the runs").clone()
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The ledger thread: reads new lines (`JOB PID NODE TOKEN START`) every 10 ms
/// and waits on the pidfds of the live workers in between.
fn follow(path: &Path, runs: &Mutex<Vec<Run>>, stop: &AtomicBool) {
    let mut read = 0usize;
    // (index in `runs`, pidfd)
    let mut live: Vec<(usize, OwnedFd)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let text = std::fs::read(path).unwrap_or_default();
        let end = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if end > read {
            for line in String::from_utf8_lossy(&text[read..end]).lines() {
                let f: Vec<&str> = line.split(' ').collect();
                let [job, pid, node, token, started] = f[..] else {
                    panic!("a bad ledger line: {line:?}")
                };
                let pid: u32 = pid.parse().expect("a pid");
                let mut run = Run {
                    job: job.to_owned(),
                    pid,
                    node: node.to_owned(),
                    token: token.parse().ok(),
                    started: started.parse().expect("a start time"),
                    died: None,
                };
                let fd = rustix::process::Pid::from_raw(pid as i32).and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
                });
                let mut runs = runs.lock().expect("the runs");
                match fd {
                    Some(fd) => live.push((runs.len(), fd)),
                    // Gone before it was seen: it died by now at the latest.
                    None => run.died = Some(wall_now()),
                }
                runs.push(run);
            }
            read = end;
        }
        let mut fds: Vec<rustix::event::PollFd<'_>> = live
            .iter()
            .map(|(_, fd)| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
            .collect();
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        let now = wall_now();
        let exited: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        let mut runs = runs.lock().expect("the runs");
        let mut i = 0;
        live.retain(|(index, _)| {
            let gone = exited[i];
            i += 1;
            if gone {
                runs[*index].died = Some(now);
            }
            !gone
        });
    }
}

/// Every pair of runs of one job that overlapped (a later run started
/// before the earlier one died), among the pairs whose later run started
/// in `since..until` (wall-clock seconds).
pub(crate) fn overlaps(runs: &[Run], since: f64, until: f64) -> Vec<(Run, Run)> {
    let mut by_job: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        by_job.entry(&run.job).or_default().push(run);
    }
    let mut found = Vec::new();
    for runs in by_job.values_mut() {
        runs.sort_by(|a, b| a.started.total_cmp(&b.started));
        for pair in runs.windows(2) {
            let later = pair[1].started;
            if (since..until).contains(&later) && pair[0].died.is_none_or(|died| died >= later) {
                found.push((pair[0].clone(), pair[1].clone()));
            }
        }
    }
    found
}

/// Every pair of successive runs of one job (in the order they started)
/// whose fencing tokens did not grow; runs without a token are passed over.
pub(crate) fn tokens_not_growing(runs: &[Run]) -> Vec<(Run, Run)> {
    let mut by_job: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.token.is_some()) {
        by_job.entry(&run.job).or_default().push(run);
    }
    let mut found = Vec::new();
    for runs in by_job.values_mut() {
        runs.sort_by(|a, b| a.started.total_cmp(&b.started));
        for pair in runs.windows(2) {
            if pair[0].token >= pair[1].token {
                found.push((pair[0].clone(), pair[1].clone()));
            }
        }
    }
    found
}
