//! [`Cluster`]: what the event loop knows of the cluster it runs in, and
//! the filter between the source and the core.
//!
//! Every configuration the source delivers goes through
//! [`Cluster::filter`], which keeps the whole map (a later membership
//! change assigns it again) and hands the core only this node's share.
//! When the membership changes, [`Cluster::membership_changed`] gives the
//! core the new share of the same map. Both log every job that moves
//! between nodes, with the reason.

use std::collections::BTreeMap;

use lrpm_core::decl::Declaration;
use lrpm_core::job::JobId;
use lrpm_core::shard::{StaticShard, share};
use lrpm_core::status::{ClusterStatus, MemberStatus};

use super::args::ClusterChoice;
use super::file::ClusterFile;

/// How many moved jobs one change logs one by one; a summary line counts
/// the others.
const LOGGED_MOVES: usize = 20;

/// A node's cluster: its membership and the last job map.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The size, this node's index and the strategy.
    shard: StaticShard,
    /// Where they come from, for status.
    from: String,
    /// The cluster file, followed, if the membership is in one.
    file: Option<ClusterFile>,
    /// The last job map the source delivered, whole: a membership change
    /// assigns it again.
    map: Option<Declaration>,
    /// Every job of that map with its node.
    assignment: BTreeMap<JobId, u32>,
    /// The last problem with the membership, if the last read of the
    /// cluster file failed.
    error: Option<String>,
}

/// Something the cluster has to tell the event loop.
#[derive(Debug)]
pub(crate) enum ClusterEvent {
    /// The cluster file was read again: its membership, or why it is
    /// unusable.
    File(Result<StaticShard, String>),
}

impl Cluster {
    /// The cluster `choice` describes (`None` for a lone node), with its
    /// file watched.
    pub(crate) fn start(choice: ClusterChoice) -> Result<Option<Self>, String> {
        let (shard, from, file) = match choice {
            ClusterChoice::Alone => return Ok(None),
            ClusterChoice::Static { shard, from } => (shard, from, None),
            ClusterChoice::File { path, shard } => {
                let file = ClusterFile::watch(&path, shard.strategy())?;
                (shard, path.display().to_string(), Some(file))
            }
        };
        tracing::info!(
            node = shard.index(),
            "static cluster of {} nodes ({}), this one node {}, strategy {}",
            shard.size(),
            from,
            shard.index(),
            shard.strategy()
        );
        Ok(Some(Self {
            shard,
            from,
            file,
            map: None,
            assignment: BTreeMap::new(),
            error: None,
        }))
    }

    /// The next event; never returns if there can be none.
    pub(crate) async fn next_event(&mut self) -> ClusterEvent {
        match &mut self.file {
            Some(file) => ClusterEvent::File(file.changed().await),
            None => std::future::pending().await,
        }
    }

    /// This node's share of `decl`, a map the source delivered; keeps the
    /// whole map for later membership changes.
    pub(crate) fn filter(&mut self, decl: Declaration) -> Declaration {
        let share = self.share(&decl, "the job map changed");
        self.map = Some(decl);
        share
    }

    /// Handles `event`; returns this node's new share of the last map when
    /// the membership changed.
    pub(crate) fn handle(&mut self, event: ClusterEvent) -> Option<Declaration> {
        match event {
            ClusterEvent::File(Err(e)) => {
                if self.error.as_ref() != Some(&e) {
                    tracing::error!("{e}; keeping the last good membership");
                }
                self.error = Some(e);
                None
            }
            ClusterEvent::File(Ok(shard)) => {
                self.error = None;
                if shard == self.shard {
                    return None;
                }
                let why = format!(
                    "the cluster file changed: {} nodes, this one node {} (was {} nodes, node {})",
                    shard.size(),
                    shard.index(),
                    self.shard.size(),
                    self.shard.index()
                );
                tracing::info!("{why}");
                self.shard = shard;
                let map = self.map.take()?;
                let share = self.share(&map, &why);
                self.map = Some(map);
                Some(share)
            }
        }
    }

    /// Assigns `decl`'s jobs, logs those that moved since the last
    /// assignment with `why`, and returns this node's share.
    fn share(&mut self, decl: &Declaration, why: &str) -> Declaration {
        let assignment = self.shard.assignment(decl);
        let me = self.shard.index();
        log_moves(&self.assignment, &assignment, me, why);
        self.assignment = assignment;
        share(decl, &self.assignment, &me)
    }

    /// `supervisor.cluster`, with every job's node when `assignment`.
    pub(crate) fn status(&self, assignment: bool) -> ClusterStatus {
        let me = self.shard.index();
        ClusterStatus {
            mode: "static".into(),
            node: me.to_string(),
            members: (0..self.shard.size())
                .map(|i| MemberStatus {
                    name: i.to_string(),
                    weight: 1.0,
                })
                .collect(),
            strategy: self.shard.strategy(),
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
                    .map(|(id, node)| (id.to_string(), node.to_string()))
                    .collect()
            }),
        }
    }
}

/// Logs the jobs that `before` and `after` give to different nodes, when
/// this node (`me`) is one of the two: up to [`LOGGED_MOVES`] one by one.
fn log_moves(before: &BTreeMap<JobId, u32>, after: &BTreeMap<JobId, u32>, me: u32, why: &str) {
    let moves = after.iter().filter_map(|(id, to)| {
        let from = *before.get(id)?;
        (from != *to && (from == me || *to == me)).then_some((id, from, *to))
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
