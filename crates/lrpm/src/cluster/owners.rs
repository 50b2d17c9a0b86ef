//! An etcd cluster's owner keys, `PREFIX/owners/JOB` (value: the node
//! id), one per job, bound to the owning node's lease: the transactions
//! that take and give them up, batched so that a change of the membership
//! costs a request per [`BATCH`] jobs, not one per job.
//!
//! A key is taken by a transaction that succeeds only if it does not
//! exist (its create revision is 0); the revision that created it is the
//! job's fencing token. It is given up by a transaction that deletes it
//! only if its create revision is still that token, so that a node never
//! deletes a key another node (or its own next lease) took since.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

/// How many keys one transaction takes or gives up (etcd refuses a
/// transaction of more than 128 operations by default).
pub(crate) const BATCH: usize = 64;

/// Who holds a job's owner key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The node id, the key's value.
    pub(crate) node: String,
    /// The lease it is bound to: a key of an older lease of this very
    /// node is not this node's any more (that lease may expire any time).
    pub(crate) lease: i64,
    /// Its create revision: the fencing token.
    pub(crate) token: i64,
}

/// The owners' prefix of cluster prefix `path`.
pub(crate) fn prefix(path: &str) -> Vec<u8> {
    format!("{}/owners/", path.trim_end_matches('/')).into_bytes()
}

/// Takes the owner keys of `jobs` that no one holds, for `node` on
/// `lease`: one transaction per [`BATCH`] jobs, and one per job of a
/// batch that failed (a key of it exists). Returns the jobs whose keys it
/// took.
pub(crate) async fn take(
    client: &mut Client,
    prefix: &[u8],
    node: &str,
    lease: i64,
    jobs: &[String],
) -> Result<Vec<String>, String> {
    let mut taken = Vec::new();
    for batch in jobs.chunks(BATCH) {
        if take_batch(client, prefix, node, lease, batch).await? {
            taken.extend(batch.iter().cloned());
            continue;
        }
        for job in batch.iter().filter(|_| batch.len() > 1) {
            if take_batch(client, prefix, node, lease, std::slice::from_ref(job)).await? {
                taken.push(job.clone());
            }
        }
    }
    Ok(taken)
}

/// One transaction: every key of `jobs` created if none exists; whether
/// they were.
async fn take_batch(
    client: &mut Client,
    prefix: &[u8],
    node: &str,
    lease: i64,
    jobs: &[String],
) -> Result<bool, String> {
    let key = |job: &String| [prefix, job.as_bytes()].concat();
    let when: Vec<Compare> = jobs
        .iter()
        .map(|job| Compare::create_revision(key(job), CompareOp::Equal, 0))
        .collect();
    let put: Vec<TxnOp> = jobs
        .iter()
        .map(|job| TxnOp::put(key(job), node, Some(PutOptions::new().with_lease(lease))))
        .collect();
    let answer = client
        .txn(Txn::new().when(when).and_then(put))
        .await
        .map_err(|e| format!("taking owner keys: {e}"))?;
    Ok(answer.succeeded())
}

/// Gives up the owner keys of `jobs` (each with the token this node took
/// it with): deleted if still that token. Returns the keys deleted.
pub(crate) async fn give(
    client: &mut Client,
    prefix: &[u8],
    jobs: &[(String, i64)],
) -> Result<Vec<String>, String> {
    let mut given = Vec::new();
    for batch in jobs.chunks(BATCH) {
        if give_batch(client, prefix, batch).await? {
            given.extend(batch.iter().map(|(job, _)| job.clone()));
            continue;
        }
        for one in batch.chunks(1).filter(|_| batch.len() > 1) {
            if give_batch(client, prefix, one).await? {
                given.push(one[0].0.clone());
            }
        }
    }
    Ok(given)
}

/// One transaction: every key of `jobs` deleted if each still has its
/// token; whether they were.
async fn give_batch(
    client: &mut Client,
    prefix: &[u8],
    jobs: &[(String, i64)],
) -> Result<bool, String> {
    let key = |job: &String| [prefix, job.as_bytes()].concat();
    let when: Vec<Compare> = jobs
        .iter()
        .map(|(job, token)| Compare::create_revision(key(job), CompareOp::Equal, *token))
        .collect();
    let delete: Vec<TxnOp> = jobs
        .iter()
        .map(|(job, _)| TxnOp::delete(key(job), None))
        .collect();
    let answer = client
        .txn(Txn::new().when(when).and_then(delete))
        .await
        .map_err(|e| format!("giving up owner keys: {e}"))?;
    Ok(answer.succeeded())
}

/// Every owner key under `prefix` now, and the revision to watch from.
pub(crate) async fn snapshot(
    client: &mut Client,
    prefix: &[u8],
) -> Result<(BTreeMap<String, Owner>, i64), String> {
    let options = etcd_client::GetOptions::new().with_prefix();
    let answer = client
        .get(prefix.to_vec(), Some(options))
        .await
        .map_err(|e| format!("reading the owner keys: {e}"))?;
    let revision = answer.header().map_or(0, |h| h.revision());
    let owners = answer
        .kvs()
        .iter()
        .filter_map(|kv| {
            let job = kv.key().strip_prefix(prefix)?;
            Some((
                String::from_utf8_lossy(job).into_owned(),
                Owner {
                    node: String::from_utf8_lossy(kv.value()).into_owned(),
                    lease: kv.lease(),
                    token: kv.create_revision(),
                },
            ))
        })
        .collect();
    Ok((owners, revision))
}
