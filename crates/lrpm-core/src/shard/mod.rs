//! Sharding: which node of a cluster runs which job.
//!
//! # Theory of operation
//!
//! Every node of a cluster reads the same job map; a pure filter keeps the
//! jobs assigned to this node before the supervisor reconciles. Three
//! strategies, each giving the very same assignment as php-lrpm-cluster's
//! filter of that name for the same ids and cluster size, so that a mixed
//! cluster agrees during a migration:
//!
//! - [`Strategy::Balanced`]: the ids sorted as PHP's `ksort` sorts array
//!   keys ([`ksort`]), the i-th to node `i mod N`. Even shares, but adding
//!   or removing one job moves many others.
//! - [`Strategy::Hash`]: node `crc32(id) mod N` (PHP's `crc32`, CRC-32/IEEE
//!   of the id's text). Stable per job, but changing N moves most jobs.
//! - [`Strategy::Rendezvous`]: highest random weight hashing with
//!   php-rendezvous-hashing's score ([`score`]), nodes named `"0"` …
//!   `"N-1"`, weight 1, the first node winning a tie. Stable per job, and
//!   removing a node moves only that node's jobs. (php-lrpm-cluster builds
//!   its nodes with weight 0, which sends every job to node 0; lrpm uses 1.)
//!
//! The etcd cluster mode uses rendezvous hashing too, over the live members
//! with their names and weights ([`rendezvous`]).
//!
//! ```
//! use lrpm_core::shard::{Strategy, StaticShard};
//!
//! let shard = StaticShard::new(3, 1, Strategy::Hash).unwrap();
//! let nodes = shard.assign(&["a", "b", "c", "42"]);
//! assert_eq!(nodes.len(), 4);
//! assert!(nodes.iter().all(|node| *node < 3));
//! ```

mod ksort;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::decl::Declaration;
use crate::job::JobId;

pub use ksort::ksort;

/// A sharding strategy (`--shard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// php-lrpm-cluster's `BalancedShardingConfigurationFilter`.
    Balanced,
    /// php-lrpm-cluster's `HashingShardingConfigurationFilter`.
    Hash,
    /// php-lrpm-cluster's `RendezvousHashingShardingConfigurationFilter`,
    /// with weight 1.
    #[default]
    Rendezvous,
}

impl Strategy {
    /// The strategy's name, as `--shard` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Balanced => "balanced",
            Strategy::Hash => "hash",
            Strategy::Rendezvous => "rendezvous",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "balanced" => Ok(Strategy::Balanced),
            "hash" => Ok(Strategy::Hash),
            "rendezvous" => Ok(Strategy::Rendezvous),
            _ => Err(format!(
                "unknown strategy {s:?}: balanced, hash or rendezvous"
            )),
        }
    }
}

/// Why a static cluster's size and index are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The size is 0.
    #[error("the number of instances must be at least 1, not 0")]
    NoInstances,
    /// The index is not below the size.
    #[error("the instance number {index} is out of range: from 0 to {} for {size} instances", size - 1)]
    IndexOutOfRange {
        /// The index given.
        index: u32,
        /// The number of instances.
        size: u32,
    },
}

/// A node of a static cluster: the cluster's size, this node's index in
/// it, and the strategy (php-lrpm-cluster's model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticShard {
    size: u32,
    index: u32,
    strategy: Strategy,
}

impl StaticShard {
    /// Node `index` (from 0) of `size` nodes; an empty cluster or an index
    /// out of range is an error, never a silent one-node cluster.
    pub fn new(size: u32, index: u32, strategy: Strategy) -> Result<Self, ShardError> {
        if size == 0 {
            return Err(ShardError::NoInstances);
        }
        if index >= size {
            return Err(ShardError::IndexOutOfRange { index, size });
        }
        Ok(Self {
            size,
            index,
            strategy,
        })
    }

    /// The number of nodes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// This node's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The node of each of `ids`, in the same order. For `balanced` the
    /// order of `ids` matters where PHP's comparison is not a total order
    /// (see [`ksort`]): lrpm holds ids in byte order, as a php-lrpm source
    /// delivering them in that order would.
    pub fn assign(&self, ids: &[&str]) -> Vec<u32> {
        let n = self.size;
        match self.strategy {
            Strategy::Hash => ids.iter().map(|id| crc32(id.as_bytes()) % n).collect(),
            Strategy::Rendezvous => {
                let names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
                let nodes: Vec<Node<'_>> = names
                    .iter()
                    .map(|name| Node { name, weight: 1.0 })
                    .collect();
                ids.iter()
                    .map(|id| {
                        let owner =
                            rendezvous(&nodes, id).expect("invariant: a static cluster has a node");
                        u32::try_from(owner).expect("invariant: fewer than 2^32 nodes")
                    })
                    .collect()
            }
            Strategy::Balanced => {
                let mut nodes = vec![0; ids.len()];
                for (position, id) in ksort(ids).into_iter().enumerate() {
                    // `position mod n`, which is below n: a u32.
                    nodes[id] = (position % n as usize) as u32;
                }
                nodes
            }
        }
    }

    /// The node of every job of `decl`, valid and invalid (php-lrpm-cluster
    /// shards the source's map before validation), keyed by id.
    pub fn assignment(&self, decl: &Declaration) -> BTreeMap<JobId, u32> {
        let mut ids: Vec<&JobId> = decl.jobs.keys().chain(decl.invalid.keys()).collect();
        ids.sort();
        ids.dedup();
        let texts: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        ids.into_iter().cloned().zip(self.assign(&texts)).collect()
    }
}

/// The share of `decl` (valid and invalid jobs) that `assignment` gives to
/// `node`. Warnings are kept: they are about the document.
pub fn share<N: PartialEq>(
    decl: &Declaration,
    assignment: &BTreeMap<JobId, N>,
    node: &N,
) -> Declaration {
    let mine = |id: &JobId| assignment.get(id) == Some(node);
    Declaration {
        jobs: decl
            .jobs
            .iter()
            .filter(|(id, _)| mine(id))
            .map(|(id, spec)| (id.clone(), spec.clone()))
            .collect(),
        invalid: decl
            .invalid
            .iter()
            .filter(|(id, _)| mine(id))
            .map(|(id, why)| (id.clone(), why.clone()))
            .collect(),
        warnings: decl.warnings.clone(),
    }
}

/// A node as rendezvous hashing sees it: a name and a weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node<'a> {
    /// The node's name (its index in a static cluster, its id on etcd).
    pub name: &'a str,
    /// Its weight: a node of weight 2 gets about twice the jobs of a node
    /// of weight 1.
    pub weight: f64,
}

/// php-rendezvous-hashing's score of `node` for the job `id`:
/// `weight / -ln((crc32(name + ": " + id) + 1) / 2^32)`.
///
/// The hash's highest value makes the logarithm 0, where PHP throws a
/// division by zero; lrpm scores it as the highest possible score.
pub fn score(node: &Node<'_>, id: &str) -> f64 {
    let mut text = Vec::with_capacity(node.name.len() + 2 + id.len());
    text.extend_from_slice(node.name.as_bytes());
    text.extend_from_slice(b": ");
    text.extend_from_slice(id.as_bytes());
    let unit = (f64::from(crc32(&text)) + 1.0) / 4_294_967_296.0;
    let denominator = -unit.ln();
    if denominator == 0.0 {
        return f64::INFINITY;
    }
    node.weight / denominator
}

/// The index in `nodes` of the node that runs `id`: the highest score, the
/// first one on a tie. `None` without nodes.
pub fn rendezvous(nodes: &[Node<'_>], id: &str) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, node) in nodes.iter().enumerate() {
        let s = score(node, id);
        if best.is_none_or(|(_, top)| s > top) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// CRC-32/IEEE (the reflected polynomial `0xEDB88320`), as PHP's `crc32`
/// and zlib compute it.
pub fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| {
        CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// The byte-at-a-time table of [`crc32`].
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests;
