//! A node's membership of an etcd cluster (`--cluster etcd://…/PREFIX`):
//! one lease, kept alive at a third of its TTL, the member key
//! `PREFIX/members/NODE` bound to it, a watch on every member, and a
//! watch on every owner key (`PREFIX/owners/JOB`, see `owners.rs`), which
//! the task takes and gives up when the event loop asks ([`OwnerRequest`]).
//! At rest it sends the keep-alives only: the watches are streams.
//!
//! A task of its own does all of it and tells the event loop, through a
//! channel, the live members and the send time of every keep-alive etcd
//! answered: the lease cannot expire on etcd before that time plus the TTL,
//! which is the node's deadline for having stopped its workers. A lost
//! connection, an expired lease or a broken watch is retried with backoff
//! (1 s doubling to 30 s), on the same lease if etcd still holds it
//! (its owner keys are then still this node's: its workers need not
//! stop), else on a new one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use tokio::sync::{mpsc, oneshot};

use super::owners::{self, Owner};
use crate::etcd::{Etcd, EtcdUri};

/// What the membership task tells the event loop.
#[derive(Debug)]
pub(crate) enum LeaseEvent {
    /// The live members (node id → weight), this node among them once it
    /// has registered.
    Members(BTreeMap<String, f64>),
    /// Etcd answered a keep-alive (or the grant) sent at this instant: the
    /// lease lives at least until then plus the TTL.
    Renewed(Instant),
    /// The lease or the connection is lost: why.
    Lost(String),
    /// The lease of this membership: new (the owner keys of older ones
    /// are not this node's any more), or the last one, which etcd still
    /// held.
    Granted(i64),
    /// Owner keys changed: each job's owner, `None` once deleted; with
    /// `whole`, these are all the keys (a new snapshot).
    Owners {
        whole: bool,
        changes: Vec<(String, Option<Owner>)>,
    },
    /// A request to take keys is done: these jobs' were not taken (the
    /// others' puts come through the watch).
    Took(Vec<String>),
    /// A request to give up keys is done: these jobs' were not deleted
    /// (the others' deletes come through the watch).
    Gave(Vec<String>),
}

/// What the event loop asks of the task.
#[derive(Debug)]
pub(crate) enum OwnerRequest {
    /// Take the owner keys of these jobs (assigned here, held by no one).
    Take(Vec<String>),
    /// Give up these jobs' keys (their workers and cgroups are gone),
    /// each with the token it was taken with.
    Give(Vec<(String, i64)>),
    /// lrpm ends, every worker gone: revoke the lease (its member and
    /// owner keys go with it), then answer.
    Finish(oneshot::Sender<()>),
}

/// The two ends the event loop keeps.
#[derive(Debug)]
pub(crate) struct LeaseTask {
    /// The task's reports.
    pub(crate) events: mpsc::UnboundedReceiver<LeaseEvent>,
    /// Its requests.
    pub(crate) requests: mpsc::UnboundedSender<OwnerRequest>,
}

/// What the task needs.
#[derive(Debug, Clone)]
pub(crate) struct LeaseConfig {
    /// The cluster's etcd.
    pub(crate) uri: EtcdUri,
    /// This node's id.
    pub(crate) node: String,
    /// Its rendezvous weight.
    pub(crate) weight: f64,
    /// The lease's time to live.
    pub(crate) ttl: Duration,
}

/// Starts the membership task; it runs until the receiver is dropped.
pub(crate) fn start(config: LeaseConfig) -> LeaseTask {
    let (tx, rx) = mpsc::unbounded_channel();
    let (requests, mut asked) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        // The lease of the last membership: kept across a reconnection
        // while etcd still holds it.
        let mut kept: Option<i64> = None;
        loop {
            let mut registered = false;
            let why = match member(&config, &tx, &mut asked, &mut kept, &mut registered).await {
                Ok(()) => return,
                Err(why) => why,
            };
            // A membership that was up retries from the shortest wait: its
            // node must not wait 30 s to rejoin for cuts long past.
            if registered {
                backoff = Duration::from_secs(1);
            }
            if tx.send(LeaseEvent::Lost(why)).is_err() {
                return;
            }
            // A lrpm that ends meanwhile has no lease to revoke.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    request = asked.recv() => match request {
                        Some(OwnerRequest::Finish(done)) => {
                            let _ = done.send(());
                            return;
                        }
                        // Lost with the lease: the event loop asks again.
                        Some(_) => {}
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    });
    LeaseTask {
        events: rx,
        requests,
    }
}

/// The members' prefix.
fn members_prefix(config: &LeaseConfig) -> Vec<u8> {
    format!("{}/members/", config.uri.path.trim_end_matches('/')).into_bytes()
}

/// One membership: connect, grant, register, watch and keep alive, until
/// something fails (`Err`, why) or the event loop is gone (`Ok`).
/// `registered` is set once the node is a member.
async fn member(
    config: &LeaseConfig,
    tx: &mpsc::UnboundedSender<LeaseEvent>,
    asked: &mut mpsc::UnboundedReceiver<OwnerRequest>,
    kept: &mut Option<i64>,
    registered: &mut bool,
) -> Result<(), String> {
    let period = config.ttl / 3;
    let mut etcd = Etcd::connect(&config.uri, 0, period)
        .await
        .map_err(|e| e.to_string())?;
    let ttl = i64::try_from(config.ttl.as_secs()).unwrap_or(i64::MAX);
    let sent = Instant::now();
    let lease = match still_alive(etcd.client(), *kept, period).await {
        Some(lease) => {
            tracing::info!("etcd membership: lease {lease:x} kept across the reconnection");
            lease
        }
        None => etcd
            .client()
            .lease_grant(ttl, None)
            .await
            .map_err(|e| format!("lease grant: {e}"))?
            .id(),
    };
    *kept = Some(lease);
    let prefix = members_prefix(config);
    let mut key = prefix.clone();
    key.extend_from_slice(config.node.as_bytes());
    let value = serde_json::json!({ "weight": config.weight }).to_string();
    etcd.client()
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
        .map_err(|e| format!("registering as a member: {e}"))?;
    *registered = true;
    if tx.send(LeaseEvent::Granted(lease)).is_err() || tx.send(LeaseEvent::Renewed(sent)).is_err() {
        return Ok(());
    }
    let owner_prefix = owners::prefix(&config.uri.path);
    let (held, owners_at) = owners::snapshot(etcd.client(), &owner_prefix).await?;
    let whole = LeaseEvent::Owners {
        whole: true,
        changes: held.into_iter().map(|(job, o)| (job, Some(o))).collect(),
    };
    if tx.send(whole).is_err() {
        return Ok(());
    }
    let mut owner_watch = etcd
        .watch(&owner_prefix, owners_at + 1)
        .await
        .map_err(|e| e.to_string())?;
    let snapshot = etcd.snapshot(&prefix).await.map_err(|e| e.to_string())?;
    let mut members: BTreeMap<String, f64> = snapshot
        .kvs
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), weight_of(v)))
        .collect();
    if tx.send(LeaseEvent::Members(members.clone())).is_err() {
        return Ok(());
    }
    let mut watch = etcd
        .watch(&prefix, snapshot.revision + 1)
        .await
        .map_err(|e| e.to_string())?;
    let (mut keeper, mut answers) = etcd
        .client()
        .lease_keep_alive(lease)
        .await
        .map_err(|e| format!("lease keep-alive: {e}"))?;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let sent = Instant::now();
                keeper.keep_alive().await.map_err(|e| format!("lease keep-alive: {e}"))?;
                // An unanswered one keeps its older send time: the deadline
                // never moves past an answer etcd gave.
                pending.get_or_insert(sent);
            }
            answer = answers.message() => {
                let answer = answer
                    .map_err(|e| format!("lease keep-alive: {e}"))?
                    .ok_or("lease keep-alive: the server closed the stream")?;
                if answer.ttl() <= 0 {
                    return Err("the lease expired on etcd".into());
                }
                if let Some(sent) = pending.take() {
                    if tx.send(LeaseEvent::Renewed(sent)).is_err() {
                        return Ok(());
                    }
                }
            }
            changes = watch.next() => {
                let (_, changes) = changes.map_err(|e| e.to_string())?;
                for change in changes {
                    let name = String::from_utf8_lossy(&change.key).into_owned();
                    match change.value {
                        Some(value) => members.insert(name, weight_of(&value)),
                        None => members.remove(&name),
                    };
                }
                if tx.send(LeaseEvent::Members(members.clone())).is_err() {
                    return Ok(());
                }
            }
            changes = owner_watch.next() => {
                let (_, changes) = changes.map_err(|e| e.to_string())?;
                let changes = changes
                    .into_iter()
                    .map(|change| {
                        let job = String::from_utf8_lossy(&change.key).into_owned();
                        let owner = change.value.map(|node| Owner {
                            node: String::from_utf8_lossy(&node).into_owned(),
                            lease: change.lease,
                            token: change.create_revision,
                        });
                        (job, owner)
                    })
                    .collect();
                if tx.send(LeaseEvent::Owners { whole: false, changes }).is_err() {
                    return Ok(());
                }
            }
            request = asked.recv() => {
                match request {
                    // What a transaction changed is told by the watch, in
                    // the store's order, never from its answer: a key's
                    // older events may still be on their way, and applied
                    // after the answer they would undo it.
                    Some(OwnerRequest::Take(jobs)) => {
                        let result =
                            owners::take(etcd.client(), &owner_prefix, &config.node, lease, &jobs)
                                .await;
                        let taken: BTreeSet<&String> = match &result {
                            Ok(taken) => taken.iter().collect(),
                            Err(_) => BTreeSet::new(),
                        };
                        let missed = jobs.iter().filter(|job| !taken.contains(job)).cloned().collect();
                        let _ = tx.send(LeaseEvent::Took(missed));
                        result?;
                    }
                    Some(OwnerRequest::Give(jobs)) => {
                        let result = owners::give(etcd.client(), &owner_prefix, &jobs).await;
                        let given: BTreeSet<&String> = match &result {
                            Ok(given) => given.iter().collect(),
                            Err(_) => BTreeSet::new(),
                        };
                        let missed = jobs
                            .iter()
                            .map(|(job, _)| job)
                            .filter(|job| !given.contains(job))
                            .cloned()
                            .collect();
                        let _ = tx.send(LeaseEvent::Gave(missed));
                        result?;
                    }
                    Some(OwnerRequest::Finish(done)) => {
                        let revoke = etcd.client().lease_revoke(lease);
                        if let Err(e) = tokio::time::timeout(period, revoke).await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                            tracing::warn!("etcd membership: revoking the lease at the end: {e}; its keys go when it expires");
                        }
                        let _ = done.send(());
                        return Ok(());
                    }
                    None => return Ok(()),
                }
            }
            () = tx.closed() => return Ok(()),
        }
    }
}

/// `lease`, if etcd still holds it: a keep-alive sent now answered with
/// time left, within `limit`. Its owner keys are then still this node's
/// (no one else could take them), and its workers need not stop.
async fn still_alive(
    client: &mut etcd_client::Client,
    lease: Option<i64>,
    limit: Duration,
) -> Option<i64> {
    let lease = lease?;
    // etcd-client's keep-alive reads etcd's first answer itself, and fails
    // when the lease has no time left.
    let renewed = client.lease_keep_alive(lease);
    match tokio::time::timeout(limit, renewed).await {
        Ok(Ok(_)) => Some(lease),
        _ => None,
    }
}

/// A member key's weight: `{"weight": W}`, 1 for anything else.
fn weight_of(value: &[u8]) -> f64 {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v["weight"].as_f64())
        .filter(|w| w.is_finite() && *w > 0.0)
        .unwrap_or(1.0)
}
