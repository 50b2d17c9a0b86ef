//! Dynamic membership on a real etcd (started on loopback by the test):
//! three or four lrpm nodes, each with its own socket, share one job map;
//! every job runs on exactly one node (and its worker gets LRPM_NODE_ID); a
//! node killed with SIGKILL has its jobs running elsewhere within the
//! lease's TTL plus 2 s; with etcd gone every node stops its workers before
//! its lease could expire; a fourth node takes only its share. The
//! ownership layer, measured on the ledger (`cluster_ledger`): a node
//! thawed after a freeze past its lease, and a job moving to a joining
//! node, never run a worker while another node's still lives, and each
//! job's fencing tokens grow; a node that shuts down hands its jobs over
//! without making the others wait for its lease; a short etcd outage
//! keeps the leases and restarts no worker.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::cluster_ledger::{Ledger, Run, ledger_map, overlaps, tokens_not_growing};
use crate::etcd_server::{self, EtcdServer};
use crate::support::{Lrpm, jobs_in, signal, wait_for_value, wait_until, wall_now};

/// The lease TTL of these tests' nodes: lrpm's default, 10 s. A node
/// fences itself when a keep-alive is answered later than TTL / 2 - 1 s
/// after the next one was due: 0.5 s at TTL 3 s, which a loaded machine
/// misses (a node that fences itself spuriously restarts its jobs); 4 s at
/// TTL 10 s. The bounds below are what the TTL gives (TTL + 2 s, TTL - 1 s),
/// so they prove the same properties at any TTL, with more room for the
/// machine's latency between a node's stop signal and its deadline.
const TTL: u64 = 10;
const WAIT: Duration = Duration::from_secs(30);

/// A job map of `n` jobs whose workers append `JOB PID NODE` to the ledger
/// when they start, then sleep.
fn job_map(n: usize, ledger: &std::path::Path) -> String {
    let line = format!(
        "echo \"$LRPM_JOB_ID $$ $LRPM_NODE_ID\" >> {}; exec sleep 300",
        ledger.display()
    );
    crate::cluster_ledger::map_of(n, &line)
}

/// Starts node `name` of a cluster on the etcd at `endpoint`
/// (`HOST:PORT`), reading `jobs` (a file), with a lease of [`TTL`].
fn node(endpoint: &str, name: &str, jobs: &std::path::Path) -> Lrpm {
    node_with_ttl(endpoint, name, jobs, TTL)
}

/// [`node`], with a lease TTL of `ttl` seconds.
pub(crate) fn node_with_ttl(endpoint: &str, name: &str, jobs: &std::path::Path, ttl: u64) -> Lrpm {
    let dir = tempfile::tempdir().expect("a temp dir");
    let uri = format!("etcd://{endpoint}/lrpm-test");
    let jobs = jobs.to_path_buf();
    Lrpm::start_in(dir, jobs.clone(), |c| {
        // The node id by flag: a worker knows it only if lrpm tells it.
        c.env_remove("LRPM_NODE_ID")
            .args(["--cluster", &uri, "--node-id", name])
            .args(["--lease-ttl", &ttl.to_string()])
            .arg(&jobs);
    })
}

/// Every running job of `nodes`, with the node that runs it; `None` until
/// `n` jobs run, each on exactly one node.
pub(crate) fn placement(nodes: &[&Lrpm], n: usize) -> Option<BTreeMap<String, (usize, Value)>> {
    let mut placed = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for job in jobs_in(&node.status()) {
            if job["state"] != "running" {
                return None;
            }
            let id = job["id"].as_str().expect("an id").to_owned();
            if placed.insert(id, (i, job.clone())).is_some() {
                return None;
            }
        }
    }
    (placed.len() == n).then_some(placed)
}

/// The jobs that `placed` puts on node `node`, with their workers' pids.
pub(crate) fn running_on(
    placed: &BTreeMap<String, (usize, Value)>,
    node: usize,
) -> Vec<(String, u32)> {
    placed
        .iter()
        .filter(|(_, (on, _))| *on == node)
        .map(|(id, (_, job))| {
            let pid = u32::try_from(job["pid"].as_u64().expect("pid")).expect("a pid");
            (id.clone(), pid)
        })
        .collect()
}

/// [`placement`], once every node sees every node as a member.
pub(crate) fn settled(nodes: &[&Lrpm], n: usize) -> Option<BTreeMap<String, (usize, Value)>> {
    let all_members = nodes.iter().all(|node| {
        node.status()["supervisor"]["cluster"]["members"]
            .as_array()
            .map(Vec::len)
            == Some(nodes.len())
    });
    if all_members {
        placement(nodes, n)
    } else {
        None
    }
}

/// A test's cluster: its etcd, the temp dir of the job map and the
/// ledger, and the nodes.
struct Cluster {
    etcd: EtcdServer,
    dir: tempfile::TempDir,
    nodes: Vec<Lrpm>,
}

impl Cluster {
    /// An etcd and one node per name, on a map of `jobs` jobs.
    fn start(jobs: usize, names: &[&str]) -> Cluster {
        Self::start_on(|ledger| job_map(jobs, ledger), names)
    }

    /// An etcd and one node per name, on the job map `map` makes for
    /// the ledger's path.
    fn start_on(map: impl FnOnce(&std::path::Path) -> String, names: &[&str]) -> Cluster {
        let etcd = EtcdServer::start();
        let dir = tempfile::tempdir().expect("a temp dir");
        let map = map(&dir.path().join("ledger"));
        std::fs::write(dir.path().join("jobs.json"), map).expect("write the jobs");
        let mut cluster = Cluster {
            etcd,
            dir,
            nodes: Vec::new(),
        };
        for name in names {
            cluster.add(name);
        }
        cluster
    }

    /// Starts one more node.
    fn add(&mut self, name: &str) {
        let node = node(
            &self.etcd.endpoint(),
            name,
            &self.dir.path().join("jobs.json"),
        );
        self.nodes.push(node);
    }

    fn ledger(&self) -> std::path::PathBuf {
        self.dir.path().join("ledger")
    }
}

#[test]
fn three_nodes_run_every_job_once_and_a_killed_nodes_jobs_move_within_ttl_plus_2s() {
    if !etcd_server::available() {
        return;
    }
    let mut cluster = Cluster::start(30, &["n0", "n1", "n2"]);
    // Once all three are members, each job runs on exactly one of them.
    let placed = wait_for_value("30 jobs, each on one node, 3 members", WAIT, || {
        settled(&cluster.nodes.iter().collect::<Vec<_>>(), 30)
    });
    let on_first: Vec<String> = placed
        .iter()
        .filter(|(_, (i, _))| *i == 0)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!on_first.is_empty(), "node n0 runs some jobs: {placed:?}");
    let status = cluster.nodes[0].status();
    let view = &status["supervisor"]["cluster"];
    assert_eq!(view["mode"], "etcd");
    assert_eq!(view["node"], "n0");
    assert_eq!(view["connection"]["state"], "connected");
    assert!(
        view["lease_left"]
            .as_f64()
            .is_some_and(|left| left > 0.0 && left <= TTL as f64)
    );

    // SIGKILL n0: its jobs run on n1 and n2 within TTL + 2 s.
    let killed_at = wall_now();
    signal(cluster.nodes[0].pid(), rustix::process::Signal::KILL);
    let mut first = cluster.nodes.remove(0);
    first.wait_timeout(WAIT).expect("n0 exits");
    let placed = wait_for_value("the 30 jobs on the 2 nodes left", WAIT, || {
        let refs: Vec<&Lrpm> = cluster.nodes.iter().collect();
        placement(&refs, 30)
    });
    let mut slowest: f64 = 0.0;
    for id in &on_first {
        let started = placed[id].1["started_at"].as_f64().expect("started_at");
        slowest = slowest.max(started - killed_at);
    }
    eprintln!(
        "failover of {} jobs: the last started {slowest:.2} s after the kill",
        on_first.len()
    );
    assert!(slowest <= TTL as f64 + 2.0, "failover took {slowest:.2} s");
    // The ledger (each worker writes its line as it starts): every moved
    // job started on n0, then on n1 or n2.
    let starts = |text: &str, id: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{id} ")))
            .map(str::to_owned)
            .collect()
    };
    let text = wait_for_value("the moved workers' lines in the ledger", WAIT, || {
        let text = std::fs::read_to_string(cluster.ledger()).unwrap_or_default();
        on_first
            .iter()
            .all(|id| starts(&text, id).len() >= 2)
            .then_some(text)
    });
    for id in &on_first {
        let starts = starts(&text, id);
        assert!(starts[0].ends_with(" n0"), "{id}: {starts:?}");
        assert!(
            starts[1..].iter().all(|s| !s.ends_with(" n0")),
            "{id}: {starts:?}"
        );
    }
}

#[test]
fn with_etcd_gone_every_node_stops_its_workers_before_its_lease_could_expire_then_all_come_back_once()
 {
    if !etcd_server::available() {
        return;
    }
    let mut cluster = Cluster::start(12, &["a", "b", "c"]);
    let refs: Vec<&Lrpm> = cluster.nodes.iter().collect();
    let placed = wait_for_value("12 jobs, each on one node, 3 members", WAIT, || {
        settled(&refs, 12)
    });
    let pids: Vec<u32> = placed
        .values()
        .map(|(_, job)| u32::try_from(job["pid"].as_u64().expect("pid")).expect("a pid"))
        .collect();
    // etcd goes away. Each node's last keep-alive was sent before now, so
    // its lease cannot expire before now + TTL: every worker must be dead
    // a second before that.
    let stopped = std::time::Instant::now();
    cluster.etcd.stop();
    let dead = |pid: &u32| crate::support::state_of(*pid).is_none_or(|s| s == 'Z');
    wait_for_value("every worker dead", WAIT, || {
        pids.iter().all(dead).then_some(())
    });
    let took = stopped.elapsed();
    eprintln!(
        "every worker was dead {:.2} s after etcd stopped (lease TTL {TTL} s)",
        took.as_secs_f64()
    );
    assert!(
        took <= Duration::from_secs(TTL) - Duration::from_secs(1),
        "workers outlived the fence: {took:?}"
    );
    for node in &cluster.nodes {
        let status = node.status();
        assert_eq!(jobs_in(&status).len(), 0, "{status}");
        assert_ne!(
            status["supervisor"]["cluster"]["connection"]["state"],
            "connected"
        );
    }
    // etcd is back: every job runs again, each on exactly one node.
    cluster.etcd.resume();
    wait_for_value("12 jobs again, each on one node", WAIT, || {
        settled(&refs, 12)
    });
}

#[test]
fn a_fourth_node_takes_only_its_share_and_the_others_are_not_restarted() {
    if !etcd_server::available() {
        return;
    }
    let mut cluster = Cluster::start(40, &["w0", "w1", "w2"]);
    let before = wait_for_value("40 jobs on 3 nodes", WAIT, || {
        settled(&cluster.nodes.iter().collect::<Vec<_>>(), 40)
    });
    cluster.add("w3");
    let after = wait_for_value("40 jobs on 4 nodes", WAIT, || {
        settled(&cluster.nodes.iter().collect::<Vec<_>>(), 40)
    });
    // Rendezvous over the four: what the new node must run.
    let names = ["w0", "w1", "w2", "w3"];
    let members: Vec<lrpm::lrpm_core::shard::Node<'_>> = names
        .iter()
        .map(|name| lrpm::lrpm_core::shard::Node { name, weight: 1.0 })
        .collect();
    let mut moved = 0;
    for (id, (node, job)) in &after {
        let expected = lrpm::lrpm_core::shard::rendezvous(&members, id).expect("a node");
        assert_eq!(
            *node, expected,
            "{id} runs on {} instead of {}",
            names[*node], names[expected]
        );
        let (old_node, old_job) = &before[id];
        if *node == 3 {
            moved += 1;
        } else {
            assert_eq!(node, old_node, "{id} moved between old nodes");
            assert_eq!(job["pid"], old_job["pid"], "{id} was restarted");
        }
    }
    eprintln!(
        "a fourth node took {moved} of 40 jobs; the other {} kept their workers",
        40 - moved
    );
    assert!(moved > 0 && moved < 20, "{moved} jobs moved");
}

#[test]
fn a_frozen_supervisors_workers_are_killed_by_its_guardian_before_another_node_starts_them() {
    if !etcd_server::available() {
        return;
    }
    let cluster = Cluster::start(20, &["f0", "f1", "f2"]);
    let placed = wait_for_value("20 jobs on 3 nodes", WAIT, || {
        settled(&cluster.nodes.iter().collect::<Vec<_>>(), 20)
    });
    let frozen = running_on(&placed, 0);
    assert!(!frozen.is_empty(), "f0 runs some jobs");
    // f0's supervisor stops dead: it cannot fence itself, its guardian must.
    let stopped = std::time::Instant::now();
    signal(cluster.nodes[0].pid(), rustix::process::Signal::STOP);
    let dead = |pid: u32| crate::support::state_of(pid).is_none_or(|s| s == 'Z');
    let mut death: BTreeMap<String, f64> = BTreeMap::new();
    wait_until("every worker of f0 dead", WAIT, || {
        for (id, pid) in &frozen {
            if !death.contains_key(id) && dead(*pid) {
                death.insert(id.clone(), wall_now());
            }
        }
        death.len() == frozen.len()
    });
    let took = stopped.elapsed();
    eprintln!(
        "the guardian killed f0's {} workers {:.2} s after SIGSTOP (TTL {TTL} s)",
        frozen.len(),
        took.as_secs_f64()
    );
    // The kill is due a second before the lease's deadline, which is at
    // most TTL after the SIGSTOP (the last answered keep-alive was sent
    // before it); the guardian's latency (1–30 ms quiet) and this test's
    // polling on a loaded machine get half a second of that second. That
    // no other node started a job before its old worker died is checked
    // below, death by death.
    assert!(
        took <= Duration::from_secs(TTL) - Duration::from_millis(500),
        "took {took:?}"
    );
    // f1 and f2 start them once f0's lease expired, never before the old
    // worker was dead.
    let others: Vec<&Lrpm> = cluster.nodes[1..].iter().collect();
    let moved = wait_for_value("f0's jobs on f1 and f2", WAIT, || placement(&others, 20));
    for (id, _) in &frozen {
        let started = moved[id].1["started_at"].as_f64().expect("started_at");
        assert!(
            started > death[id],
            "{id} started at {started}, its old worker died at {}",
            death[id]
        );
    }
    signal(cluster.nodes[0].pid(), rustix::process::Signal::KILL);
}

// ---------------------------------------------------------------------------
// The ownership layer, measured with the ledger (`cluster_ledger`): every
// worker writes its start and its fencing token, and a thread watches
// each one's pidfd for its end.

impl Cluster {
    /// An etcd and one node per name, on a ledgered map of `jobs` jobs,
    /// the ledger followed from before the first node starts.
    fn start_ledgered(jobs: usize, names: &[&str]) -> (Cluster, Ledger) {
        let mut ledger = None;
        let cluster = Self::start_on(
            |path| {
                ledger = Some(Ledger::watch(path.to_path_buf()));
                ledger_map(jobs, path)
            },
            names,
        );
        (cluster, ledger.expect("the ledger followed"))
    }
}

/// Checks that no two workers of one job overlapped and that every
/// worker had a fencing token, each job's growing across moves; returns
/// the workers by job, in the order they started.
fn no_overlap_and_growing_tokens(runs: &[Run]) -> BTreeMap<String, Vec<Run>> {
    let overlapping = overlaps(runs, 0.0, f64::INFINITY);
    assert!(
        overlapping.is_empty(),
        "overlapping workers: {overlapping:#?}"
    );
    // A worker restarted on the node that holds the key all along (after
    // a crash, or a fence that the loaded machine's stalls caused) keeps
    // the key's token; a move takes a new key, whose token is larger.
    let falling: Vec<(Run, Run)> = tokens_not_growing(runs)
        .into_iter()
        .filter(|(old, new)| old.node != new.node || new.token < old.token)
        .collect();
    assert!(falling.is_empty(), "tokens that did not grow: {falling:#?}");
    let mut by_job: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for run in runs {
        assert!(run.token.is_some(), "a worker without a token: {run:?}");
        by_job.entry(run.job.clone()).or_default().push(run.clone());
    }
    let mut closest = f64::INFINITY;
    for runs in by_job.values_mut() {
        runs.sort_by(|a, b| a.started.total_cmp(&b.started));
        for pair in runs.windows(2) {
            if let Some(died) = pair[0].died {
                closest = closest.min(pair[1].started - died);
            }
        }
    }
    eprintln!(
        "the closest handover: the next worker started {closest:.3} s after the old one ended"
    );
    by_job
}

/// Every run of the ledger, once the thread has read `n` live workers
/// (each job's, as it runs now).
fn live_runs_read(ledger: &Ledger, n: usize) -> Vec<Run> {
    wait_for_value("every running worker in the ledger", WAIT, || {
        let runs = ledger.runs();
        (runs.iter().filter(|run| run.died.is_none()).count() == n).then_some(runs)
    })
}

/// Kills every worker of the ledger still alive, by its pid.
fn kill_workers(runs: &[Run]) {
    for run in runs.iter().filter(|run| run.died.is_none()) {
        signal(run.pid, rustix::process::Signal::KILL);
    }
}

#[test]
fn a_thawed_supervisor_waits_for_the_owner_keys_and_no_two_workers_of_a_job_ever_overlap() {
    if !etcd_server::available() {
        return;
    }
    let (cluster, ledger) = Cluster::start_ledgered(12, &["t0", "t1", "t2"]);
    let placed = wait_for_value("12 jobs on 3 nodes", WAIT, || {
        settled(&cluster.nodes.iter().collect::<Vec<_>>(), 12)
    });
    let frozen: Vec<&String> = placed.keys().filter(|id| placed[*id].0 == 0).collect();
    assert!(!frozen.is_empty(), "t0 runs some jobs");
    // t0 freezes past its lease: its guardian kills its workers, its lease
    // expires, and t1 and t2 take its jobs (their owner keys went with the
    // lease).
    signal(cluster.nodes[0].pid(), rustix::process::Signal::STOP);
    let others: Vec<&Lrpm> = cluster.nodes[1..].iter().collect();
    wait_for_value("t0's jobs on t1 and t2", WAIT, || placement(&others, 12));
    // t0 thaws: it fences itself, gets a new lease, and runs its share
    // again only once t1 and t2 gave the keys up, their workers dead.
    signal(cluster.nodes[0].pid(), rustix::process::Signal::CONT);
    let back = wait_for_value("12 jobs on the 3 nodes again", WAIT, || {
        settled(&cluster.nodes.iter().collect::<Vec<_>>(), 12)
    });
    let view = cluster.nodes[0].status();
    assert_eq!(
        view["supervisor"]["cluster"]["connection"]["state"],
        "connected"
    );
    // `lrpmctl cluster` reads the owner keys: every job's node is the one
    // that runs it.
    let out = cluster.nodes[0].ctl(&["--json", "cluster"]);
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names = ["t0", "t1", "t2"];
    for (id, (node, _)) in &back {
        assert_eq!(
            answer["cluster"]["assignment"][id], names[*node],
            "{answer}"
        );
    }
    let runs = live_runs_read(&ledger, 12);
    drop(ledger);
    kill_workers(&runs);
    let by_job = no_overlap_and_growing_tokens(&runs);
    // Every job of t0 ran on t0, then elsewhere, then on t0 again (the
    // members are the same, so rendezvous gives it back).
    for id in frozen {
        let nodes: Vec<&str> = by_job[id].iter().map(|run| run.node.as_str()).collect();
        assert!(nodes.len() >= 3, "{id}: {nodes:?}");
        assert_eq!(nodes.first(), Some(&"t0"), "{id}: {nodes:?}");
        assert_eq!(nodes.last(), Some(&"t0"), "{id}: {nodes:?}");
    }
}

#[test]
fn a_job_moving_to_a_joining_node_never_overlaps_and_its_fencing_token_grows() {
    if !etcd_server::available() {
        return;
    }
    let (mut cluster, ledger) = Cluster::start_ledgered(24, &["j0", "j1", "j2"]);
    let before = wait_for_value("24 jobs on 3 nodes", WAIT, || {
        settled(&cluster.nodes.iter().collect::<Vec<_>>(), 24)
    });
    cluster.add("j3");
    let after = wait_for_value("24 jobs on 4 nodes", WAIT, || {
        settled(&cluster.nodes.iter().collect::<Vec<_>>(), 24)
    });
    let runs = live_runs_read(&ledger, 24);
    drop(ledger);
    kill_workers(&runs);
    let by_job = no_overlap_and_growing_tokens(&runs);
    let moved: Vec<&String> = after.keys().filter(|id| after[*id].0 == 3).collect();
    assert!(!moved.is_empty(), "j3 took some jobs");
    for id in &moved {
        // (The nodes started one by one, so a job may have moved before
        // the three settled.)
        let runs = &by_job[*id];
        let [.., old, new] = &runs[..] else {
            panic!("{id} ran once only: {runs:?}");
        };
        assert_eq!(
            old.node,
            ["j0", "j1", "j2"][before[*id].0],
            "{id}: {runs:?}"
        );
        assert_eq!(new.node, "j3", "{id}: {runs:?}");
    }
    // The old node's log says where the job went and why.
    let text: String = cluster.nodes[..3].iter().map(Lrpm::stderr).collect();
    for id in &moved {
        assert!(
            text.lines()
                .any(|l| l.contains(id.as_str()) && l.contains("moved to node j3")),
            "{id}: no stop line naming the move"
        );
    }
}

#[test]
fn a_node_that_shuts_down_gives_its_jobs_up_once_its_workers_are_gone_without_waiting_for_its_lease()
 {
    if !etcd_server::available() {
        return;
    }
    // A long lease: the other nodes may not wait for it to expire.
    const LONG: u64 = 10;
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let ledger = Ledger::watch(dir.path().join("ledger"));
    let map = ledger_map(12, &dir.path().join("ledger"));
    std::fs::write(dir.path().join("jobs.json"), map).expect("write the jobs");
    let jobs = dir.path().join("jobs.json");
    let mut nodes: Vec<Lrpm> = ["s0", "s1", "s2"]
        .iter()
        .map(|name| node_with_ttl(&etcd.endpoint(), name, &jobs, LONG))
        .collect();
    let placed = wait_for_value("12 jobs on 3 nodes", WAIT, || {
        settled(&nodes.iter().collect::<Vec<_>>(), 12)
    });
    let leaving: Vec<&String> = placed.keys().filter(|id| placed[*id].0 == 0).collect();
    assert!(!leaving.is_empty(), "s0 runs some jobs");
    // s0 shuts down: it stops its workers, then revokes its lease, and
    // the others start its jobs at once.
    let stopped = wall_now();
    let mut first = nodes.remove(0);
    assert!(first.terminate().success(), "{}", first.stderr());
    let others: Vec<&Lrpm> = nodes.iter().collect();
    let moved = wait_for_value("s0's jobs on s1 and s2", WAIT, || placement(&others, 12));
    let last = leaving
        .iter()
        .map(|id| moved[*id].1["started_at"].as_f64().expect("started_at"))
        .fold(0.0, f64::max);
    eprintln!(
        "s0's {} jobs all ran on s1 and s2 {:.2} s after its SIGTERM (lease TTL {LONG} s)",
        leaving.len(),
        last - stopped
    );
    assert!(
        last - stopped < LONG as f64 / 2.0,
        "the others waited for s0's lease: {:.2} s",
        last - stopped
    );
    let runs = live_runs_read(&ledger, 12);
    drop(ledger);
    kill_workers(&runs);
    no_overlap_and_growing_tokens(&runs);
}

#[test]
fn a_short_etcd_outage_keeps_the_lease_and_no_worker_restarts() {
    if !etcd_server::available() {
        return;
    }
    // A long lease: a second without etcd is far from the fence. 30 s,
    // not 10: the outage lasts until etcd, started again, answers, which
    // took seconds at load 50, and the reconnection's backoff (1, 2, 4,
    // 8 s) may add as much; at 10 s a node fenced itself (at 7.3 s) and a
    // worker was restarted. At 30 s the fence is 24 s away.
    const LONG: u64 = 30;
    let mut etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let map = job_map(8, &dir.path().join("ledger"));
    std::fs::write(dir.path().join("jobs.json"), map).expect("write the jobs");
    let jobs = dir.path().join("jobs.json");
    let nodes: Vec<Lrpm> = ["k0", "k1"]
        .iter()
        .map(|name| node_with_ttl(&etcd.endpoint(), name, &jobs, LONG))
        .collect();
    let refs: Vec<&Lrpm> = nodes.iter().collect();
    let before = wait_for_value("8 jobs on 2 nodes", WAIT, || settled(&refs, 8));
    etcd.stop();
    std::thread::sleep(Duration::from_secs(1));
    etcd.resume();
    // Both reconnect on the lease etcd still holds: their owner keys are
    // still theirs, and no worker stopped.
    wait_until("both nodes back on their leases", WAIT, || {
        nodes
            .iter()
            .all(|node| node.stderr().contains("kept across the reconnection"))
    });
    let after = wait_for_value("8 jobs on 2 nodes again", WAIT, || settled(&refs, 8));
    for (id, (node, job)) in &after {
        assert_eq!(*node, before[id].0, "{id} moved");
        assert_eq!(job["pid"], before[id].1["pid"], "{id} was restarted");
    }
}
