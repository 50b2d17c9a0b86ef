//! [`Cluster`]: what the event loop knows of the cluster it runs in, and
//! the filter between the source and the core.
//!
//! Every configuration the source delivers goes through
//! [`Cluster::filter`], which keeps the whole map (a later membership
//! change assigns it again) and hands the core only this node's share.
//! When the membership changes, [`Cluster::handle`] gives the core the new
//! share of the same map. Both log every job that moves between nodes,
//! with the reason.
//!
//! On etcd, the share also depends on the lease: a node whose lease may
//! expire soon (no keep-alive answered for a while) fences itself: its
//! share becomes empty, so that the core stops every worker, and the
//! workers still alive one second before the lease could expire are
//! killed ([`ClusterEvent::Kill`]). The fence is also checked at once
//! before anything that could start a worker ([`Cluster::due`]): a
//! supervisor that thaws after a freeze fences itself before it handles
//! its workers' exits.
//!
//! And on the owner keys: a job of the share whose key this node does not
//! hold on its current lease is `waiting` ([`Share::waiting`]; the core
//! holds it), its key is asked for when no one holds it, and a key this
//! node holds for a job no longer its own is given up once the core has
//! forgotten the job (its worker reaped, its cgroup removed:
//! [`Cluster::release`]). The owner key's create revision is the worker's
//! `LRPM_FENCING_TOKEN`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
#[cfg(feature = "etcd")]
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lrpm_core::decl::Declaration;
use lrpm_core::job::JobId;
#[cfg(feature = "etcd")]
use lrpm_core::shard::{Node, rendezvous};
use lrpm_core::shard::{StaticShard, Strategy, share};
use lrpm_core::status::{ClusterStatus, MemberStatus};
#[cfg(feature = "etcd")]
use lrpm_core::status::{ConnectionState, ConnectionStatus};

use super::args::ClusterChoice;
use super::file::ClusterFile;
#[cfg(feature = "etcd")]
use super::lease::{self, LeaseEvent, OwnerRequest};
#[cfg(feature = "etcd")]
use super::owners::Owner;

/// How many moved jobs one change logs one by one; a summary line counts
/// the others.
const LOGGED_MOVES: usize = 20;

/// The worker's environment variable naming the node that runs it (etcd
/// clusters).
#[cfg(feature = "etcd")]
const NODE_ID_ENV: &str = "LRPM_NODE_ID";

/// The worker's environment variable holding its owner key's create
/// revision, the fencing token (etcd clusters).
#[cfg(feature = "etcd")]
const TOKEN_ENV: &str = "LRPM_FENCING_TOKEN";

/// How long before the lease could expire every worker is dead at the
/// latest.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
const FENCE_MARGIN: Duration = Duration::from_secs(1);

/// A node's cluster: its membership and the last job map.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// How the membership is known.
    mode: Mode,
    /// Where it comes from, for status.
    from: String,
    /// The last job map the source delivered, whole: a membership change
    /// assigns it again.
    map: Option<Declaration>,
    /// Every job of that map with its node's name.
    assignment: BTreeMap<JobId, String>,
    /// The last problem with the membership, if any.
    error: Option<String>,
}

/// How the membership is known.
#[derive(Debug)]
enum Mode {
    /// A fixed size and index, perhaps from a followed file.
    Static {
        shard: StaticShard,
        file: Option<ClusterFile>,
    },
    /// Live members on etcd.
    #[cfg(feature = "etcd")]
    Etcd(Box<EtcdMember>),
}

/// This node's membership of an etcd cluster.
#[cfg(feature = "etcd")]
#[derive(Debug)]
struct EtcdMember {
    node: String,
    ttl: Duration,
    /// The live members, with their weights.
    members: BTreeMap<String, f64>,
    /// The membership task's reports.
    events: tokio::sync::mpsc::UnboundedReceiver<LeaseEvent>,
    /// Its requests (owner keys to take or give up).
    requests: tokio::sync::mpsc::UnboundedSender<OwnerRequest>,
    /// The current lease, once granted.
    lease: Option<i64>,
    /// Every owner key: job id → its owner.
    owners: BTreeMap<String, Owner>,
    /// The jobs of this node's share (assigned here, not fenced).
    wanted: BTreeSet<String>,
    /// The jobs of the share that are waiting for their owner key.
    waiting: BTreeSet<String>,
    /// The keys asked for and not answered yet.
    taking: BTreeSet<String>,
    /// The keys this node holds for jobs no longer its own, to give up
    /// once their workers are gone.
    leaving: BTreeSet<String>,
    /// The keys being given up.
    giving: BTreeSet<String>,
    /// The send time of the last keep-alive etcd answered, plus the TTL:
    /// the lease lives at least until then. `None` before the first.
    deadline: Option<Instant>,
    /// Whether this node has fenced itself (its share is empty until its
    /// lease is renewed).
    fenced: bool,
    /// Whether the workers left at the fence were killed.
    killed: bool,
    /// Since when the connection is in its state, and the state, for
    /// status.
    connection: ConnectionStatus,
}

/// Something the cluster has to tell the event loop.
#[derive(Debug)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) enum ClusterEvent {
    /// The cluster file was read again: its membership, or why it is
    /// unusable.
    File(Result<StaticShard, String>),
    /// The etcd membership task reported.
    #[cfg(feature = "etcd")]
    Lease(LeaseEvent),
    /// The lease may expire soon: stop every worker.
    Fence,
    /// The lease may expire within [`FENCE_MARGIN`]: kill every worker
    /// still alive.
    Kill,
}

/// This node's share of the job map, for the core
/// (`Supervisor::handle_share`).
#[derive(Debug)]
pub(crate) struct Share {
    /// The jobs assigned to this node.
    pub(crate) decl: Declaration,
    /// Those of them not owned yet (etcd clusters): held, not started.
    pub(crate) waiting: BTreeSet<JobId>,
    /// The jobs that left this node for another one since the last share.
    pub(crate) moved: BTreeSet<JobId>,
}

/// What the event loop does after an event.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing.
    Nothing,
    /// Give the core this node's new share.
    Share(Share),
    /// Kill every worker still stopping (the lease's last second nears).
    Kill,
}

impl Cluster {
    /// The cluster `choice` describes (`None` for a lone node), with its
    /// file watched or its etcd membership started.
    pub(crate) fn start(choice: ClusterChoice) -> Result<Option<Self>, String> {
        let (mode, from) = match choice {
            ClusterChoice::Alone => return Ok(None),
            ClusterChoice::Static { shard, from } => (Mode::Static { shard, file: None }, from),
            ClusterChoice::File { path, shard } => {
                let file = ClusterFile::watch(&path, shard.strategy())?;
                let from = path.display().to_string();
                (
                    Mode::Static {
                        shard,
                        file: Some(file),
                    },
                    from,
                )
            }
            #[cfg(feature = "etcd")]
            ClusterChoice::Etcd {
                uri,
                node,
                ttl,
                weight,
            } => {
                let parsed =
                    crate::etcd::EtcdUri::parse(&uri).map_err(|e| format!("--cluster: {e}"))?;
                let task = lease::start(lease::LeaseConfig {
                    uri: parsed,
                    node: node.clone(),
                    weight,
                    ttl,
                });
                tracing::info!(node = %node, "etcd cluster {}, this node {node} (weight {weight}), lease TTL {}s", crate::base::mask_password(&uri), ttl.as_secs());
                let member = EtcdMember::new(node, ttl, task);
                (
                    Mode::Etcd(Box::new(member)),
                    crate::base::mask_password(&uri),
                )
            }
            #[cfg(not(feature = "etcd"))]
            ClusterChoice::Etcd { .. } => {
                return Err("--cluster etcd://… needs lrpm built with the etcd feature".into());
            }
        };
        #[cfg_attr(not(feature = "etcd"), allow(irrefutable_let_patterns))]
        if let Mode::Static { shard, .. } = &mode {
            tracing::info!(
                node = shard.index(),
                "static cluster of {} nodes ({}), this one node {}, strategy {}",
                shard.size(),
                from,
                shard.index(),
                shard.strategy()
            );
        }
        Ok(Some(Self {
            mode,
            from,
            map: None,
            assignment: BTreeMap::new(),
            error: None,
        }))
    }

    /// The next event; never returns if there can be none.
    pub(crate) async fn next_event(&mut self) -> ClusterEvent {
        match &mut self.mode {
            Mode::Static {
                file: Some(file), ..
            } => ClusterEvent::File(file.changed().await),
            Mode::Static { file: None, .. } => std::future::pending().await,
            #[cfg(feature = "etcd")]
            Mode::Etcd(member) => {
                let fence_at = member.fence_at();
                let kill_at = member
                    .deadline
                    .filter(|_| !member.killed)
                    .map(|d| d - FENCE_MARGIN);
                let until = |at: Option<Instant>| async move {
                    match at {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    Some(event) = member.events.recv() => ClusterEvent::Lease(event),
                    () = until(fence_at) => ClusterEvent::Fence,
                    () = until(kill_at) => ClusterEvent::Kill,
                }
            }
        }
    }

    /// The fence or the kill that is due now, if one is (etcd clusters):
    /// the event loop handles it before anything that could start a
    /// worker, whatever event woke it first.
    pub(crate) fn due(&self, now: std::time::Instant) -> Option<ClusterEvent> {
        #[cfg(feature = "etcd")]
        if let Mode::Etcd(member) = &self.mode {
            if member.fence_at().is_some_and(|at| at <= now) {
                return Some(ClusterEvent::Fence);
            }
            let kill_at = member.deadline.filter(|_| !member.killed);
            if kill_at.is_some_and(|d| d - FENCE_MARGIN <= now) {
                return Some(ClusterEvent::Kill);
            }
        }
        let _ = now;
        None
    }

    /// Gives up the owner keys of the jobs this node left whose workers
    /// are gone (`gone`: the core has forgotten the job, after its exit
    /// and its cgroup's removal). Cheap when nothing is leaving.
    pub(crate) fn release(&mut self, gone: impl Fn(&JobId) -> bool) {
        #[cfg(feature = "etcd")]
        if let Mode::Etcd(member) = &mut self.mode {
            if member.leaving.is_empty() {
                return;
            }
            let give: Vec<(String, i64)> = member
                .leaving
                .iter()
                .filter(|job| !member.giving.contains(*job) && gone(&JobId::new(job.as_str())))
                .filter_map(|job| Some((job.clone(), member.owners.get(job)?.token)))
                .collect();
            if give.is_empty() {
                return;
            }
            for (job, _) in &give {
                tracing::info!(job = %job, "its worker is gone: giving up its owner key");
                member.giving.insert(job.clone());
            }
            let _ = member.requests.send(OwnerRequest::Give(give));
        }
        let _ = gone;
    }

    /// Revokes the lease (etcd clusters), once every worker is gone at
    /// the end: the member and owner keys go with it, and the other nodes
    /// take this node's jobs at once.
    pub(crate) async fn finish(&mut self) {
        #[cfg(feature = "etcd")]
        if let Mode::Etcd(member) = &mut self.mode {
            let (done, answered) = tokio::sync::oneshot::channel();
            if member.requests.send(OwnerRequest::Finish(done)).is_ok() {
                let _ = tokio::time::timeout(member.ttl, answered).await;
            }
        }
    }

    /// This node's share of `decl`, a map the source delivered; keeps the
    /// whole map for later membership changes.
    pub(crate) fn filter(&mut self, decl: Declaration) -> Share {
        let share = self.share(&decl, "the job map changed");
        self.map = Some(decl);
        share
    }

    /// Handles `event`: what the event loop must do.
    pub(crate) fn handle(&mut self, event: ClusterEvent) -> Outcome {
        let why = match event {
            ClusterEvent::File(Err(e)) => {
                if self.error.as_ref() != Some(&e) {
                    tracing::error!("{e}; keeping the last good membership");
                }
                self.error = Some(e);
                return Outcome::Nothing;
            }
            ClusterEvent::File(Ok(new)) => {
                self.error = None;
                #[cfg_attr(not(feature = "etcd"), allow(irrefutable_let_patterns))]
                let Mode::Static { shard, .. } = &mut self.mode else {
                    return Outcome::Nothing;
                };
                if new == *shard {
                    return Outcome::Nothing;
                }
                let why = format!(
                    "the cluster file changed: {} nodes, this one node {} (was {} nodes, node {})",
                    new.size(),
                    new.index(),
                    shard.size(),
                    shard.index()
                );
                tracing::info!("{why}");
                *shard = new;
                why
            }
            #[cfg(feature = "etcd")]
            ClusterEvent::Lease(event) => match self.lease_event(event) {
                Some(why) => why,
                None => return Outcome::Nothing,
            },
            ClusterEvent::Fence => {
                #[cfg(feature = "etcd")]
                if let Mode::Etcd(member) = &mut self.mode {
                    member.fenced = true;
                    member.killed = false;
                }
                let why = "no keep-alive of the lease answered in time: this node fences itself, \
                           stopping every worker before the lease can expire"
                    .to_owned();
                tracing::error!("{why}");
                why
            }
            ClusterEvent::Kill => {
                #[cfg(feature = "etcd")]
                if let Mode::Etcd(member) = &mut self.mode {
                    member.killed = true;
                }
                tracing::error!("the lease may expire within a second: killing every worker left");
                return Outcome::Kill;
            }
        };
        let Some(map) = self.map.take() else {
            return Outcome::Nothing;
        };
        let share = self.share(&map, &why);
        self.map = Some(map);
        Outcome::Share(share)
    }

    /// Takes in a report of the membership task; returns why the share
    /// changes, if it may.
    #[cfg(feature = "etcd")]
    fn lease_event(&mut self, event: LeaseEvent) -> Option<String> {
        let Mode::Etcd(member) = &mut self.mode else {
            return None;
        };
        let now_wall = wall_now();
        match event {
            LeaseEvent::Renewed(sent) => {
                member.deadline = Some(sent + member.ttl);
                if member.connection.state != ConnectionState::Connected {
                    member.connection = ConnectionStatus {
                        state: ConnectionState::Connected,
                        since: now_wall,
                        error: None,
                        retry_at: None,
                    };
                }
                self.error = None;
                let fence_at = sent + member.ttl - FENCE_MARGIN - member.ttl / 6;
                if member.fenced && fence_at > Instant::now() {
                    member.fenced = false;
                    member.killed = true;
                    return Some("the lease is held again".into());
                }
                None
            }
            LeaseEvent::Lost(why) => {
                tracing::warn!("etcd membership: {why}; trying again");
                member.connection = ConnectionStatus {
                    state: ConnectionState::Reconnecting,
                    since: now_wall,
                    error: Some(why.clone()),
                    retry_at: None,
                };
                self.error = Some(why);
                None
            }
            LeaseEvent::Granted(lease) => {
                // The keys of an older lease are not this node's any more;
                // what was asked of the old one is asked again.
                let kept = member.lease == Some(lease);
                member.lease = Some(lease);
                member.taking.clear();
                member.giving.clear();
                Some(if kept {
                    format!("the lease {lease:x} is kept")
                } else {
                    format!("a new lease {lease:x} is granted")
                })
            }
            LeaseEvent::Owners { whole, changes } => {
                if whole {
                    member.owners.clear();
                }
                for (job, owner) in changes {
                    // A key asked for, or given up, is settled once the
                    // watch shows it.
                    member.taking.remove(&job);
                    if owner.is_none() {
                        member.giving.remove(&job);
                    }
                    match owner {
                        Some(owner) => member.owners.insert(job, owner),
                        None => member.owners.remove(&job),
                    };
                }
                Some("the owner keys changed".into())
            }
            LeaseEvent::Took(jobs) => {
                for job in &jobs {
                    member.taking.remove(job);
                }
                None
            }
            LeaseEvent::Gave(jobs) => {
                for job in &jobs {
                    member.giving.remove(job);
                }
                None
            }
            LeaseEvent::Members(members) => {
                if members == member.members {
                    return None;
                }
                let names: Vec<&String> = members.keys().collect();
                let why = format!("the members changed: {names:?}");
                tracing::info!("{why}");
                member.members = members;
                Some(why)
            }
        }
    }

    /// Assigns `decl`'s jobs, logs those that moved since the last
    /// assignment with `why`, and returns this node's share.
    fn share(&mut self, decl: &Declaration, why: &str) -> Share {
        let (assignment, me) = match &self.mode {
            Mode::Static { shard, .. } => (
                shard
                    .assignment(decl)
                    .into_iter()
                    .map(|(id, node)| (id, node.to_string()))
                    .collect(),
                shard.index().to_string(),
            ),
            #[cfg(feature = "etcd")]
            Mode::Etcd(member) => {
                let nodes: Vec<Node<'_>> = member
                    .members
                    .iter()
                    .map(|(name, weight)| Node {
                        name,
                        weight: *weight,
                    })
                    .collect();
                let assignment: BTreeMap<JobId, String> = decl
                    .jobs
                    .keys()
                    .chain(decl.invalid.keys())
                    .filter_map(|id| {
                        rendezvous(&nodes, id.as_str())
                            .map(|i| (id.clone(), nodes[i].name.to_owned()))
                    })
                    .collect();
                // A fenced node, or one not registered yet, runs nothing.
                let me = if member.fenced || !member.members.contains_key(&member.node) {
                    String::new()
                } else {
                    member.node.clone()
                };
                (assignment, me)
            }
        };
        log_moves(&self.assignment, &assignment, &self.node(), why);
        // The jobs that left this node for another one: their stop is a
        // move.
        let moved = self
            .assignment
            .iter()
            .filter(|(id, from)| {
                **from == me
                    && assignment
                        .get(*id)
                        .is_some_and(|to| !to.is_empty() && *to != me)
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.assignment = assignment;
        #[cfg_attr(not(feature = "etcd"), allow(unused_mut))]
        let mut mine = share(decl, &self.assignment, &me);
        #[cfg_attr(not(feature = "etcd"), allow(unused_mut))]
        let mut waiting = BTreeSet::new();
        #[cfg(feature = "etcd")]
        if let Mode::Etcd(member) = &mut self.mode {
            member.wanted = mine
                .jobs
                .keys()
                .chain(mine.invalid.keys())
                .map(|id| id.as_str().to_owned())
                .collect();
            // Every worker learns which node runs it, and its fencing
            // token. The core compares a new `Arc` by content, so an
            // unchanged job is not restarted.
            for (id, spec) in &mut mine.jobs {
                let mut named = (**spec).clone();
                named
                    .env
                    .insert(NODE_ID_ENV.to_owned(), member.node.clone());
                if let Some(token) = member.token(id.as_str()) {
                    named.env.insert(TOKEN_ENV.to_owned(), token.to_string());
                }
                *spec = std::sync::Arc::new(named);
            }
            waiting = member.ask_owners();
        }
        Share {
            decl: mine,
            waiting,
            moved,
        }
    }

    /// When the workers must all be dead if no keep-alive is answered
    /// from now on: the guardian's heartbeat deadline (etcd clusters).
    pub(crate) fn guard_until(&self) -> Option<std::time::Instant> {
        match &self.mode {
            Mode::Static { .. } => None,
            #[cfg(feature = "etcd")]
            Mode::Etcd(member) => member.deadline.map(|d| d - FENCE_MARGIN),
        }
    }

    /// The node the assignment gives job `id` (or, for a copy of an
    /// `instances` job, its base job), for the log.
    pub(crate) fn node_of(&self, id: &JobId) -> Option<String> {
        self.assignment
            .get(id)
            .or_else(|| {
                let (base, _) = id.as_str().rsplit_once('#')?;
                self.assignment.get(&JobId::new(base))
            })
            .cloned()
    }

    /// This node's name.
    fn node(&self) -> String {
        match &self.mode {
            Mode::Static { shard, .. } => shard.index().to_string(),
            #[cfg(feature = "etcd")]
            Mode::Etcd(member) => member.node.clone(),
        }
    }

    /// `supervisor.cluster`, with every job's node when `assignment`.
    pub(crate) fn status(&self, assignment: bool) -> ClusterStatus {
        let me = self.node();
        let mut status = ClusterStatus {
            mode: "static".into(),
            node: me.clone(),
            members: Vec::new(),
            strategy: Strategy::Rendezvous,
            from: self.from.clone(),
            jobs_here: self.assignment.values().filter(|n| **n == me).count(),
            jobs_total: self.assignment.len(),
            lease_ttl: None,
            lease_left: None,
            connection: None,
            error: self.error.clone(),
            assignment: assignment.then(|| {
                self.assignment
                    .iter()
                    .map(|(id, node)| (id.to_string(), node.clone()))
                    .collect()
            }),
        };
        match &self.mode {
            Mode::Static { shard, .. } => {
                status.strategy = shard.strategy();
                status.members = (0..shard.size())
                    .map(|i| MemberStatus {
                        name: i.to_string(),
                        weight: 1.0,
                    })
                    .collect();
            }
            #[cfg(feature = "etcd")]
            Mode::Etcd(member) => {
                status.mode = "etcd".into();
                status.members = member
                    .members
                    .iter()
                    .map(|(name, weight)| MemberStatus {
                        name: name.clone(),
                        weight: *weight,
                    })
                    .collect();
                status.lease_ttl = Some(member.ttl.as_secs_f64());
                status.lease_left = member
                    .deadline
                    .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64());
                status.connection = Some(member.connection.clone());
                // Who runs what is who holds the owner keys: a job no
                // node owns now (moving, or its node gone) has no node.
                status.jobs_here = member
                    .wanted
                    .iter()
                    .filter(|job| member.token(job).is_some())
                    .count();
                if let Some(assignment) = &mut status.assignment {
                    for (job, node) in assignment.iter_mut() {
                        *node = member
                            .owners
                            .get(job)
                            .map(|owner| owner.node.clone())
                            .unwrap_or_default();
                    }
                }
            }
        }
        status
    }
}

#[cfg(feature = "etcd")]
impl EtcdMember {
    /// A node `node` that has no lease yet (fenced: it runs nothing), with
    /// its membership task.
    fn new(node: String, ttl: Duration, task: lease::LeaseTask) -> Self {
        EtcdMember {
            node,
            ttl,
            members: BTreeMap::new(),
            events: task.events,
            requests: task.requests,
            lease: None,
            owners: BTreeMap::new(),
            wanted: BTreeSet::new(),
            waiting: BTreeSet::new(),
            taking: BTreeSet::new(),
            leaving: BTreeSet::new(),
            giving: BTreeSet::new(),
            deadline: None,
            fenced: true,
            killed: true,
            connection: ConnectionStatus {
                state: ConnectionState::Connecting,
                since: wall_now(),
                error: None,
                retry_at: None,
            },
        }
    }

    /// The fencing token of `job`'s owner key if this node holds it on
    /// its current lease.
    fn token(&self, job: &str) -> Option<i64> {
        let owner = self.owners.get(job)?;
        (owner.node == self.node && Some(owner.lease) == self.lease).then_some(owner.token)
    }

    /// After a change of the share or of the owner keys: asks for the
    /// keys of the wanted jobs that no one holds, notes the keys held for
    /// jobs no longer wanted (given up once their workers are gone), logs
    /// the jobs that begin to wait; returns the waiting jobs.
    fn ask_owners(&mut self) -> BTreeSet<JobId> {
        let take: Vec<String> = self
            .wanted
            .iter()
            .filter(|job| !self.owners.contains_key(*job) && !self.taking.contains(*job))
            .cloned()
            .collect();
        if !take.is_empty() && self.lease.is_some() {
            self.taking.extend(take.iter().cloned());
            let _ = self.requests.send(OwnerRequest::Take(take));
        }
        self.leaving = self
            .owners
            .keys()
            .filter(|job| !self.wanted.contains(*job) && self.token(job).is_some())
            .cloned()
            .collect();
        let waiting: BTreeSet<String> = self
            .wanted
            .iter()
            .filter(|job| self.token(job).is_none())
            .cloned()
            .collect();
        let mut logged = 0usize;
        for job in waiting.difference(&self.waiting) {
            logged += 1;
            if logged > LOGGED_MOVES {
                break;
            }
            match self.owners.get(job) {
                Some(owner) if owner.node == self.node => tracing::info!(
                    job = %job,
                    "waiting: its owner key is held by this node's previous lease, until it expires"
                ),
                Some(owner) => tracing::info!(
                    job = %job,
                    "waiting for node {} to stop it and give up its owner key",
                    owner.node
                ),
                None => tracing::debug!(job = %job, "waiting for its owner key"),
            }
        }
        self.waiting = waiting;
        self.waiting
            .iter()
            .map(|job| JobId::new(job.as_str()))
            .collect()
    }

    /// When this node fences itself if no keep-alive is answered: a sixth
    /// of the TTL before the workers must be dead, so that they have time
    /// to stop politely. `None` while already fenced.
    fn fence_at(&self) -> Option<Instant> {
        let deadline = self.deadline?;
        (!self.fenced).then(|| deadline - FENCE_MARGIN - self.ttl / 6)
    }
}

/// Seconds since the Unix epoch, now, for status.
#[cfg(feature = "etcd")]
fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Logs the jobs that `before` and `after` give to different nodes, when
/// this node (`me`) is one of the two: up to [`LOGGED_MOVES`] one by one.
fn log_moves(
    before: &BTreeMap<JobId, String>,
    after: &BTreeMap<JobId, String>,
    me: &str,
    why: &str,
) {
    let moves = after.iter().filter_map(|(id, to)| {
        let from = before.get(id)?;
        (from != to && (from == me || to == me)).then_some((id, from, to))
    });
    let mut count = 0usize;
    for (id, from, to) in moves {
        count += 1;
        if count > LOGGED_MOVES {
            continue;
        }
        if from == me {
            tracing::info!(job = %id, "moving to node {to}: {why}");
        } else {
            tracing::info!(job = %id, "moving here from node {from}: {why}");
        }
    }
    if count > LOGGED_MOVES {
        tracing::info!(
            "… and {} more jobs moving to or from this node: {why}",
            count - LOGGED_MOVES
        );
    }
}

#[cfg(all(test, feature = "etcd"))]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    /// Node `a` on lease 1, holding `x` (token 5) and, on its old lease 0,
    /// `z`; `y` is node `b`'s.
    fn member() -> (
        EtcdMember,
        tokio::sync::mpsc::UnboundedReceiver<OwnerRequest>,
    ) {
        let (_events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (requests, asked) = tokio::sync::mpsc::unbounded_channel();
        let owner = |node: &str, lease, token| Owner {
            node: node.into(),
            lease,
            token,
        };
        let task = lease::LeaseTask { events, requests };
        let mut member = EtcdMember::new("a".into(), Duration::from_secs(3), task);
        member.lease = Some(1);
        member.fenced = false;
        member.owners = [
            ("x".to_owned(), owner("a", 1, 5)),
            ("y".to_owned(), owner("b", 2, 6)),
            ("z".to_owned(), owner("a", 0, 3)),
        ]
        .into();
        (member, asked)
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn only_a_key_held_on_the_current_lease_is_owned_and_only_a_free_one_is_asked_for() {
        let (mut member, mut asked) = member();
        member.wanted = set(&["w", "x", "y", "z"]);
        let waiting = member.ask_owners();
        let waiting: Vec<&str> = waiting.iter().map(JobId::as_str).collect();
        // `y` is another node's, `z` this node's old lease's, `w` no one's.
        assert_eq!(waiting, ["w", "y", "z"]);
        assert_eq!(member.token("x"), Some(5));
        assert_eq!(member.token("z"), None);
        match asked.try_recv().unwrap() {
            OwnerRequest::Take(jobs) => assert_eq!(jobs, ["w"]),
            other => panic!("{other:?}"),
        }
        // Asked once: the same share asks nothing more.
        member.ask_owners();
        assert!(asked.try_recv().is_err());
        assert!(member.leaving.is_empty());
    }

    #[test]
    fn a_key_is_given_up_only_once_its_job_is_gone_and_once() {
        let (mut member, mut asked) = member();
        member.wanted = set(&["y"]);
        member.ask_owners();
        // `x` left the share: given up once its worker is gone; `z` is
        // the old lease's, which takes it away.
        assert_eq!(member.leaving, set(&["x"]));
        let mut cluster = Cluster {
            mode: Mode::Etcd(Box::new(member)),
            from: String::new(),
            map: None,
            assignment: BTreeMap::new(),
            error: None,
        };
        cluster.release(|_| false);
        assert!(asked.try_recv().is_err());
        cluster.release(|id| id.as_str() == "x");
        match asked.try_recv().unwrap() {
            OwnerRequest::Give(jobs) => assert_eq!(jobs, [("x".to_owned(), 5)]),
            other => panic!("{other:?}"),
        }
        cluster.release(|_| true);
        assert!(asked.try_recv().is_err(), "given up twice");
    }
}
