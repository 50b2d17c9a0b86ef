//! `lrpmctl cluster`: this node, the members, and which node runs each job.

use std::fmt::Write as _;

use lrpm_core::escape::escape;
use lrpm_core::status::ClusterStatus;

use crate::client::Client;
use crate::common::Context;
use crate::error::CtlError;
use lrpm_proto::codec::{Request, Response};

/// Runs `lrpmctl cluster`.
pub fn run(ctx: &Context) -> Result<(), CtlError> {
    let mut client = Client::connect(ctx.socket())?;
    let answer = client.call(&Request::Cluster)?;
    let path = answer.path.clone();
    match crate::common::check(ctx, answer)? {
        Response::Cluster(_) if ctx.json => Ok(()),
        Response::Cluster(None) => {
            crate::common::print("lrpm runs alone: every job runs on this node\n")
        }
        Response::Cluster(Some(cluster)) => crate::common::print(&render(&cluster)),
        _ => Err(CtlError::Invalid {
            path,
            reason: "an answer of the wrong kind".into(),
        }),
    }
}

/// The text of `lrpmctl cluster`: a header (mode, node, members, lease),
/// then one row per job: JOB, NODE, with this node's jobs marked.
pub fn render(cluster: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} cluster ({}), strategy {}",
        cluster.mode,
        escape(&cluster.from),
        cluster.strategy
    );
    let _ = writeln!(out, "node:    {}", escape(&cluster.node));
    let members: Vec<String> = cluster
        .members
        .iter()
        .map(|m| {
            if m.weight == 1.0 {
                escape(&m.name).into_owned()
            } else {
                format!("{} (weight {})", escape(&m.name), m.weight)
            }
        })
        .collect();
    let _ = writeln!(out, "members: {} ({})", members.join(", "), members.len());
    if let Some(ttl) = cluster.lease_ttl {
        let left = cluster
            .lease_left
            .map_or_else(|| "none held".to_owned(), |left| format!("{left:.1}s left"));
        let _ = writeln!(out, "lease:   {ttl}s TTL, {left}");
    }
    if let Some(error) = &cluster.error {
        let _ = writeln!(out, "error:   {}", escape(error));
    }
    let _ = writeln!(
        out,
        "jobs:    {} here of {}",
        cluster.jobs_here, cluster.jobs_total
    );
    if let Some(assignment) = &cluster.assignment {
        let ids: Vec<_> = assignment.keys().map(|id| escape(id)).collect();
        let width = ids
            .iter()
            .map(|id| id.chars().count())
            .max()
            .unwrap_or(0)
            .max(3);
        let _ = writeln!(out, "\n{:width$}  NODE", "JOB");
        for (id, node) in ids.iter().zip(assignment.values()) {
            let here = if *node == cluster.node {
                "  (here)"
            } else {
                ""
            };
            // An etcd cluster's job that no node owns now (moving, or
            // its node gone) has no node.
            let node = if node.is_empty() { "-" } else { node };
            let _ = writeln!(out, "{id:width$}  {}{here}", escape(node));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lrpm_core::shard::Strategy;
    use lrpm_core::status::MemberStatus;

    use super::*;

    #[test]
    fn renders_the_members_and_every_jobs_node() {
        let cluster = ClusterStatus {
            mode: "static".into(),
            node: "1".into(),
            members: (0..3)
                .map(|i| MemberStatus {
                    name: i.to_string(),
                    weight: 1.0,
                })
                .collect(),
            strategy: Strategy::Hash,
            from: "flags".into(),
            jobs_here: 1,
            jobs_total: 2,
            lease_ttl: None,
            lease_left: None,
            connection: None,
            error: None,
            assignment: Some(
                [("a", "0"), ("long-id", "1")]
                    .into_iter()
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .collect(),
            ),
        };
        let text = render(&cluster);
        assert!(
            text.starts_with("static cluster (flags), strategy hash\n"),
            "{text}"
        );
        assert!(text.contains("members: 0, 1, 2 (3)\n"), "{text}");
        assert!(text.contains("jobs:    1 here of 2\n"), "{text}");
        assert!(
            text.contains("JOB      NODE\na        0\nlong-id  1  (here)\n"),
            "{text}"
        );
    }
}
