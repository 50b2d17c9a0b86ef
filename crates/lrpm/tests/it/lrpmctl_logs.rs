//! `lrpmctl logs [-n N] ID`: the newest lines of a job's output, from the
//! ring lrpm keeps in memory for each job (`--log-buffer`).

use std::time::Duration;

use crate::support::{Lrpm, wait_for_value};

const LONG: Duration = Duration::from_secs(30);

/// `lrpmctl logs args…`'s standard output, once it succeeded.
fn logs(lrpm: &Lrpm, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = lrpm.ctl(&all);
    assert!(out.status.success(), "lrpmctl {all:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn n_prints_the_last_n_lines_of_a_job() {
    let jobs = r#"{"w": {"name": "w", "command": "seq 1 100; echo err >&2; exec sleep 300"},
                  "quiet": {"name": "quiet", "command": ["sleep", "300"]}}"#;
    let lrpm = Lrpm::start("jobs.json", jobs, &[]);
    // Declared once running: before, lrpm may not have read its source.
    lrpm.running_pid("w");
    let all = wait_for_value("w's 101 lines in the ring", LONG, || {
        let all = logs(&lrpm, &["w"]);
        (all.lines().count() == 101).then_some(all)
    });
    // stdout and stderr are two pipes: their order between them is not
    // kept, each stream's is.
    let numbers: Vec<&str> = all.lines().filter(|l| *l != "err").collect();
    let expected: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    assert_eq!(numbers, expected);
    assert!(all.lines().any(|l| l == "err"), "{all}");
    let three = logs(&lrpm, &["-n", "3", "w"]);
    let tail: Vec<&str> = all.lines().skip(98).collect();
    assert_eq!(three.lines().collect::<Vec<_>>(), tail);
    assert_eq!(logs(&lrpm, &["-n", "0", "w"]), "");
    // --json: lrpm's answer as it is.
    let json: serde_json::Value =
        serde_json::from_str(&logs(&lrpm, &["--json", "-n", "2", "w"])).expect("JSON");
    assert_eq!(json["ok"], true);
    assert_eq!(json["lines"].as_array().map(Vec::len), Some(2));
    // A declared job that has printed nothing: no line, no error.
    lrpm.running_pid("quiet");
    assert_eq!(logs(&lrpm, &["quiet"]), "");
}

#[test]
fn an_unknown_id_exits_1() {
    let lrpm = Lrpm::start("jobs.json", &crate::support::jobs(&["a"]), &[]);
    lrpm.running_pid("a");
    let out = lrpm.ctl(&["logs", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown job") && stderr.contains("nope"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn the_ring_stays_bounded_for_a_worker_printing_much_more() {
    // About 2 MB of output into a 4 KiB ring.
    let jobs = r#"{"w": {"name": "w", "command": "seq 100000 199999; echo end; exec sleep 300"}}"#;
    let lrpm = Lrpm::start("jobs.json", jobs, &["--log-buffer", "4096"]);
    lrpm.running_pid("w");
    let kept = wait_for_value("w's last line in the ring", LONG, || {
        let all = logs(&lrpm, &["w"]);
        all.ends_with("199999\nend\n").then_some(all)
    });
    let lines: Vec<&str> = kept.lines().collect();
    // Each line costs its bytes and 32 of overhead: 7 + 32 for a number.
    let cost: usize = lines.iter().map(|l| l.len() + 32).sum();
    assert!(cost <= 4096, "{cost} bytes kept: {kept}");
    assert!(lines.len() > 50, "only {} lines kept", lines.len());
    // The newest lines, in order, none missing.
    let first: u32 = lines[0].parse().expect("a number");
    let expected: Vec<String> = (first..=199_999).map(|i| i.to_string()).collect();
    assert_eq!(lines[..lines.len() - 1], expected[..]);
}

#[test]
fn follow_receives_a_line_printed_after_it_started_and_ends_when_killed() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let jobs = format!(
        r#"{{"w": {{"name": "w", "command": "echo early; while [ ! -e {} ]; do sleep 0.05; done; echo late; exec sleep 300"}}}}"#,
        go.display()
    );
    let lrpm = Lrpm::start("jobs.json", &jobs, &[]);
    lrpm.running_pid("w");
    wait_for_value("w's first line", LONG, || {
        (logs(&lrpm, &["w"]) == "early\n").then_some(())
    });
    let mut ctl = crate::support::ctl_command();
    ctl.arg("--socket")
        .arg(&lrpm.socket)
        .args(["logs", "-f", "w"])
        .stdout(std::process::Stdio::piped());
    let mut follower = ctl.spawn().expect("spawn lrpmctl logs -f");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.expect("a line")).is_err() {
                return;
            }
        }
    });
    assert_eq!(rx.recv_timeout(LONG).as_deref(), Ok("early"));
    std::fs::write(&go, "").expect("the go file");
    assert_eq!(rx.recv_timeout(LONG).as_deref(), Ok("late"));
    // Still following: nothing else, and it has not exited.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert!(follower.try_wait().expect("try_wait").is_none());
    crate::support::signal(follower.id(), rustix::process::Signal::TERM);
    let ended = wait_for_value("lrpmctl logs -f to end", LONG, || {
        follower.try_wait().expect("try_wait")
    });
    assert!(!ended.success(), "{ended:?}");
    // lrpm serves on, and forgets the follower.
    assert_eq!(logs(&lrpm, &["-n", "1", "w"]), "late\n");
}

#[test]
fn a_follower_that_does_not_read_gets_a_skipped_count_and_stalls_nothing() {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let jobs = format!(
        r#"{{"w": {{"name": "w", "command": "while [ ! -e {} ]; do sleep 0.05; done; seq 100000 299999; echo end; exec sleep 300"}}}}"#,
        go.display()
    );
    let lrpm = Lrpm::start("jobs.json", &jobs, &[]);
    lrpm.running_pid("w");
    let mut follower =
        std::os::unix::net::UnixStream::connect(&lrpm.socket).expect("connect the follower");
    follower
        .write_all(b"{\"cmd\":\"logs\",\"id\":\"w\",\"follow\":true}\n")
        .expect("send");
    let mut answers = std::io::BufReader::new(follower.try_clone().expect("clone"));
    let mut first = String::new();
    answers.read_line(&mut first).expect("the first answer");
    assert_eq!(first, "{\"ok\":true,\"lines\":[]}\n");
    // About 1.4 MB that the follower does not read meanwhile.
    std::fs::write(&go, "").expect("the go file");
    wait_for_value("w's last line in the ring", LONG, || {
        logs(&lrpm, &["-n", "1", "w"]).eq("end\n").then_some(())
    });
    assert!(lrpm.ctl(&["status"]).status.success());
    // Now read: lines in order, and how many were skipped.
    follower.set_read_timeout(Some(LONG)).expect("read timeout");
    let (mut received, mut skipped, mut last) = (0_u64, 0_u64, 99_999_u64);
    loop {
        let mut line = String::new();
        answers.read_line(&mut line).expect("an answer");
        let answer: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(answer["ok"], true, "{line}");
        if let Some(n) = answer["skipped"].as_u64() {
            skipped += n;
            continue;
        }
        let lines = answer["lines"].as_array().expect("lines");
        let mut ended = false;
        for l in lines.iter().map(|l| l.as_str().expect("a string")) {
            received += 1;
            if l == "end" {
                ended = true;
                break;
            }
            let n: u64 = l.parse().expect("a number");
            assert!(n > last, "{n} after {last}");
            last = n;
        }
        if ended {
            break;
        }
    }
    assert!(skipped > 0, "nothing skipped, {received} received");
    assert_eq!(received + skipped, 200_001, "{received} + {skipped}");
}

/// A removed job's ring is kept while it stops (its last lines can still
/// be read), then forgotten at the next trim of lrpm's memory, a few
/// seconds after the activity: a farm whose job ids keep changing does not
/// keep a ring for every id it ever ran.
#[test]
fn a_removed_jobs_ring_is_forgotten_once_it_has_stopped() {
    let jobs = r#"{"gone": {"name": "g", "command": "echo last words; exec sleep 300"},
                  "kept": {"name": "k", "command": "echo still here; exec sleep 300"}}"#;
    let lrpm = Lrpm::start("jobs.json", jobs, &[]);
    lrpm.running_pid("gone");
    wait_for_value("gone's line in the ring", LONG, || {
        (logs(&lrpm, &["gone"]) == "last words\n").then_some(())
    });
    lrpm.write_config(r#"{"kept": {"name": "k", "command": "echo still here; exec sleep 300"}}"#);
    wait_for_value("gone's ring forgotten", LONG, || {
        let out = lrpm.ctl(&["logs", "gone"]);
        (out.status.code() == Some(1)).then_some(())
    });
    assert_eq!(logs(&lrpm, &["kept"]), "still here\n");
}
