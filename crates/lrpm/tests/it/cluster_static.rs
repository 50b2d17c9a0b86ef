//! Static clusters (php-lrpm-cluster's model): a fixed size and index per
//! node from flags, environment variables or a cluster file followed
//! through inotify; every job on exactly one node; every bad value a
//! usage error.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use lrpm::lrpm_core::shard::{StaticShard, Strategy};
use serde_json::Value;

use crate::support::{Lrpm, jobs, jobs_in, lrpm_command, run_bounded};

const WAIT: Duration = Duration::from_secs(30);

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("job-{i}")).collect()
}

/// The ids of the jobs a node runs, once `expected` of them are running.
fn running_ids(node: &Lrpm, expected: usize) -> BTreeSet<String> {
    let status = node.wait_for(&format!("{expected} jobs running"), WAIT, |s| {
        let jobs = jobs_in(s);
        jobs.len() == expected && jobs.iter().all(|j| j["state"] == "running")
    });
    jobs_in(&status)
        .iter()
        .map(|j| j["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Starts one node of a static cluster on `config` (in a fresh dir each).
fn node(config: &str, setup: impl FnOnce(&mut Command)) -> Lrpm {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("jobs.json");
    std::fs::write(&path, config).expect("write the jobs");
    Lrpm::start_in(dir, path.clone(), |command| {
        setup(command);
        command.arg(&path);
    })
}

#[test]
fn three_nodes_run_every_job_exactly_once_as_the_core_assigns() {
    let ids = ids(24);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let config = jobs(&refs);
    let strategy = Strategy::Balanced;
    let expected = StaticShard::new(3, 0, strategy)
        .expect("a valid cluster")
        .assign(&refs);
    // Node 0 by flags, node 1 by lrpm's variables, node 2 by
    // php-lrpm-cluster's.
    let nodes = [
        node(&config, |c| {
            c.args([
                "--shard",
                "balanced",
                "--cluster-size",
                "3",
                "--cluster-index",
                "0",
            ]);
        }),
        node(&config, |c| {
            c.args(["--shard", "balanced"])
                .env("LRPM_NUMBER_OF_INSTANCES", "3")
                .env("LRPM_INSTANCE_NUMBER", "1");
        }),
        node(&config, |c| {
            c.args(["--shard", "balanced"])
                .env("PHP_LRPM_NUMBER_OF_INSTANCES", "3")
                .env("PHP_LRPM_INSTANCE_NUMBER", "2");
        }),
    ];
    let mut seen = BTreeSet::new();
    for (index, node) in nodes.iter().enumerate() {
        let mine: BTreeSet<String> = refs
            .iter()
            .zip(&expected)
            .filter(|(_, n)| **n as usize == index)
            .map(|(id, _)| (*id).to_owned())
            .collect();
        assert_eq!(running_ids(node, mine.len()), mine, "node {index}");
        for id in mine {
            assert!(seen.insert(id.clone()), "{id} on two nodes");
        }
        let status = node.status();
        let cluster = &status["supervisor"]["cluster"];
        assert_eq!(cluster["mode"], "static");
        assert_eq!(cluster["node"], index.to_string());
        assert_eq!(cluster["jobs_total"], 24);
        assert_eq!(cluster["members"].as_array().map(Vec::len), Some(3));
        assert!(
            cluster.get("assignment").is_none(),
            "status leaves the assignment out"
        );
        // `lrpmctl cluster` has every job's node, the same on every node.
        let out = node.ctl(&["--json", "cluster"]);
        assert!(out.status.success(), "{out:?}");
        let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let assignment = &answer["cluster"]["assignment"];
        for (id, n) in refs.iter().zip(&expected) {
            assert_eq!(assignment[*id], n.to_string(), "{id}");
        }
        let table = node.ctl(&["cluster"]);
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(text.contains(&format!("node:    {index}\n")), "{text}");
        assert!(text.contains("  (here)\n"), "{text}");
    }
    assert_eq!(seen.len(), 24);
}

/// A bad command line: its arguments, its environment, and what lrpm's
/// message must say.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn every_bad_size_or_index_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("jobs.json");
    std::fs::write(&config, jobs(&["a"])).expect("write the jobs");
    let bad_file = dir.path().join("bad.json");
    std::fs::write(
        &bad_file,
        r#"{"numberOfInstances": 2, "instanceNumber": 2}"#,
    )
    .expect("write");
    let cases: Vec<Case<'_>> = vec![
        (vec!["--cluster-size", "3"], vec![], "not this node's index"),
        (
            vec!["--cluster-index", "1"],
            vec![],
            "not the cluster's size",
        ),
        (
            vec!["--cluster-size", "3", "--cluster-index", "3"],
            vec![],
            "out of range",
        ),
        (
            vec!["--cluster-size", "0", "--cluster-index", "0"],
            vec![],
            "at least 1",
        ),
        (
            vec!["--cluster-size", "two", "--cluster-index", "0"],
            vec![],
            "not a whole number",
        ),
        (
            vec![],
            vec![("LRPM_NUMBER_OF_INSTANCES", "2")],
            "not this node's index",
        ),
        (
            vec![],
            vec![
                ("PHP_LRPM_NUMBER_OF_INSTANCES", "2"),
                ("PHP_LRPM_INSTANCE_NUMBER", "-1"),
            ],
            "not a whole number",
        ),
        (
            vec![],
            vec![
                ("LRPM_NUMBER_OF_INSTANCES", ""),
                ("LRPM_INSTANCE_NUMBER", "0"),
            ],
            "not a whole number",
        ),
        (vec!["--shard", "hash"], vec![], "needs a cluster"),
        (
            vec![
                "--shard",
                "random",
                "--cluster-size",
                "2",
                "--cluster-index",
                "0",
            ],
            vec![],
            "unknown strategy",
        ),
        (
            vec!["--cluster-file", "/nonexistent/cluster.json"],
            vec![],
            "No such file",
        ),
        (
            vec!["--cluster-file", bad_file.to_str().expect("utf-8")],
            vec![],
            "out of range",
        ),
    ];
    for (args, env, message) in cases {
        let mut command = lrpm_command();
        command
            .env_remove("LRPM_NUMBER_OF_INSTANCES")
            .env_remove("LRPM_INSTANCE_NUMBER")
            .env_remove("PHP_LRPM_NUMBER_OF_INSTANCES")
            .env_remove("PHP_LRPM_INSTANCE_NUMBER")
            .arg("--socket")
            .arg(dir.path().join("control.sock"))
            .args(&args)
            .envs(env.iter().copied())
            .arg(&config);
        let out = run_bounded(command, WAIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?} {env:?}: {stderr}");
    }
}

#[test]
fn a_changed_cluster_file_moves_jobs_and_a_broken_one_changes_nothing() {
    let ids = ids(12);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("jobs.json");
    std::fs::write(&config, jobs(&refs)).expect("write the jobs");
    let file = dir.path().join("cluster.json");
    let tmp = dir.path().join(".cluster.json.tmp");
    let write = |text: &str| {
        std::fs::write(&tmp, text).expect("write the cluster file");
        std::fs::rename(&tmp, &file).expect("rename it into place");
    };
    write(r#"{"numberOfInstances": 2, "instanceNumber": 0}"#);
    let half = StaticShard::new(2, 0, Strategy::Rendezvous)
        .expect("valid")
        .assign(&refs)
        .iter()
        .filter(|n| **n == 0)
        .count();
    let node = Lrpm::start_in(dir, config.clone(), |c| {
        c.arg("--cluster-file").arg(&file).arg(&config);
    });
    let before = running_ids(&node, half);
    let pids: Vec<(String, u64)> = jobs_in(&node.status())
        .iter()
        .map(|j| {
            (
                j["id"].as_str().expect("id").to_owned(),
                j["pid"].as_u64().expect("pid"),
            )
        })
        .collect();
    // The other node leaves: this one takes every job, and keeps its own
    // running as they were.
    write(r#"{"numberOfInstances": 1, "instanceNumber": 0}"#);
    let all = running_ids(&node, 12);
    assert!(before.is_subset(&all));
    let status = node.status();
    for (id, pid) in &pids {
        let job = crate::support::job_in(&status, id).expect("still here");
        assert_eq!(job["pid"].as_u64(), Some(*pid), "{id} was restarted");
    }
    assert_eq!(status["supervisor"]["cluster"]["jobs_here"], 12);
    let moved = ids
        .iter()
        .find(|id| !before.contains(*id))
        .expect("a job moved");
    crate::support::wait_until("the move in the log", WAIT, || {
        node.stderr().lines().any(|l| {
            l.contains(moved.as_str())
                && l.contains("moving here from node 1: the cluster file changed")
        })
    });
    // A broken file: an error in status, the farm unchanged.
    write(r#"{"numberOfInstances": 1, "instanceNumber": 1}"#);
    let status = node.wait_for("the cluster file's error", WAIT, |s| {
        s["supervisor"]["cluster"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("out of range"))
    });
    assert_eq!(jobs_in(&status).len(), 12);
    assert_eq!(
        status["supervisor"]["cluster"]["members"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}
