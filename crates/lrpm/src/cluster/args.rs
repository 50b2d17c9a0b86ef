//! The cluster's command line: the flags, their environment variables
//! (php-lrpm-cluster's too) and the cluster file, validated into a
//! [`ClusterChoice`]. Every value that is missing, malformed or out of
//! range is a usage error: a node that silently took itself for the only
//! one would run every job a second time.

use std::path::PathBuf;

use lrpm_core::shard::{StaticShard, Strategy};

/// The cluster's flags, flattened into `lrpm`'s command line.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClusterArgs {
    /// The number of nodes of a static cluster (env LRPM_NUMBER_OF_INSTANCES,
    /// or php-lrpm-cluster's PHP_LRPM_NUMBER_OF_INSTANCES); with
    /// --cluster-index.
    #[arg(long, value_name = "N", help_heading = "Cluster")]
    pub(crate) cluster_size: Option<String>,

    /// This node's index in a static cluster, from 0 (env
    /// LRPM_INSTANCE_NUMBER, or PHP_LRPM_INSTANCE_NUMBER); with
    /// --cluster-size.
    #[arg(long, value_name = "I", help_heading = "Cluster")]
    pub(crate) cluster_index: Option<String>,

    /// A JSON file holding {"numberOfInstances": N, "instanceNumber": I}
    /// (php-lrpm-cluster's), read again whenever it changes.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["cluster_size", "cluster_index"], help_heading = "Cluster")]
    pub(crate) cluster_file: Option<PathBuf>,

    /// Which jobs each node of a static cluster runs: the same assignment
    /// as php-lrpm-cluster's filter of that name.
    #[arg(
        long,
        value_name = "balanced|hash|rendezvous",
        help_heading = "Cluster"
    )]
    pub(crate) shard: Option<Strategy>,

    /// Dynamic membership on etcd: etcd://HOST:PORT[,HOST:PORT…]/PREFIX.
    /// Each node holds a lease and registers as PREFIX/members/NODE; the
    /// jobs go by rendezvous hashing over the live members.
    #[arg(long, value_name = "URI", conflicts_with_all = ["cluster_size", "cluster_index", "cluster_file"], help_heading = "Cluster")]
    pub(crate) cluster: Option<String>,

    /// This node's id in an etcd cluster [default: the host name].
    #[arg(
        long,
        env = "LRPM_NODE_ID",
        value_name = "ID",
        help_heading = "Cluster"
    )]
    pub(crate) node_id: Option<String>,

    /// The lease's time to live in seconds (at least 2): a dead node's jobs
    /// run elsewhere within this plus 2 s.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "10",
        help_heading = "Cluster"
    )]
    pub(crate) lease_ttl: u64,

    /// This node's rendezvous weight (> 0): a node of weight 2 gets about
    /// twice the jobs of a node of weight 1.
    #[arg(long, value_name = "W", default_value = "1", help_heading = "Cluster")]
    pub(crate) node_weight: f64,
}

/// The environment variables of a static cluster's size, lrpm's first.
pub(crate) const SIZE_ENV: [&str; 2] = ["LRPM_NUMBER_OF_INSTANCES", "PHP_LRPM_NUMBER_OF_INSTANCES"];
/// The environment variables of a static node's index, lrpm's first.
pub(crate) const INDEX_ENV: [&str; 2] = ["LRPM_INSTANCE_NUMBER", "PHP_LRPM_INSTANCE_NUMBER"];

/// How this lrpm takes part in a cluster.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClusterChoice {
    /// It runs every job itself.
    Alone,
    /// A static cluster with a fixed size and index.
    Static {
        /// The size, the index and the strategy.
        shard: StaticShard,
        /// Where they came from, for status: `flags` or `environment`.
        from: String,
    },
    /// A static cluster whose size and index are in a file, followed.
    File {
        /// The file.
        path: PathBuf,
        /// What it held at start.
        shard: StaticShard,
    },
    /// Dynamic membership on etcd.
    Etcd {
        /// The URI, as given (shown without its password).
        uri: String,
        /// This node's id.
        node: String,
        /// The lease's time to live.
        ttl: std::time::Duration,
        /// This node's weight.
        weight: f64,
    },
}

impl Default for ClusterArgs {
    fn default() -> Self {
        Self {
            cluster_size: None,
            cluster_index: None,
            cluster_file: None,
            shard: None,
            cluster: None,
            node_id: None,
            lease_ttl: 10,
            node_weight: 1.0,
        }
    }
}

impl ClusterArgs {
    /// Validates the flags, with `env` as the environment (a function, so
    /// that tests give their own); reads the cluster file if one is named.
    pub(crate) fn validate(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ClusterChoice, String> {
        let strategy = self.shard.unwrap_or_default();
        if let Some(uri) = self.cluster {
            return etcd_choice(
                uri,
                self.node_id,
                self.lease_ttl,
                self.node_weight,
                self.shard,
            );
        }
        if self.lease_ttl != 10 || self.node_weight != 1.0 {
            return Err("--lease-ttl and --node-weight need --cluster etcd://…".into());
        }
        // The first variable of each list that is set, with its name.
        let from_env = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|name| env(name).map(|value| (name, value)))
        };
        if let Some(path) = self.cluster_file {
            let set: Vec<&str> = SIZE_ENV
                .iter()
                .chain(&INDEX_ENV)
                .copied()
                .filter(|name| env(name).is_some())
                .collect();
            if !set.is_empty() {
                return Err(format!(
                    "--cluster-file and {} both say how large the cluster is: give one",
                    set.join(", ")
                ));
            }
            let shard = super::file::read(&path, strategy)?;
            return Ok(ClusterChoice::File { path, shard });
        }
        let size = match self.cluster_size {
            Some(value) => Some(("--cluster-size", value)),
            None => from_env(SIZE_ENV),
        };
        let index = match self.cluster_index {
            Some(value) => Some(("--cluster-index", value)),
            None => from_env(INDEX_ENV),
        };
        let from = |flag: &str| {
            if flag.starts_with("--") {
                "flags"
            } else {
                "environment"
            }
        };
        match (size, index) {
            (None, None) => match self.shard {
                Some(_) => Err(
                    "--shard needs a cluster: --cluster-size and --cluster-index, or \
                                --cluster-file"
                        .into(),
                ),
                None => Ok(ClusterChoice::Alone),
            },
            (Some((name, _)), None) => Err(format!(
                "{name} is given but not this node's index: give --cluster-index (or {})",
                INDEX_ENV[0]
            )),
            (None, Some((name, _))) => Err(format!(
                "{name} is given but not the cluster's size: give --cluster-size (or {})",
                SIZE_ENV[0]
            )),
            (Some((size_name, size)), Some((index_name, index))) => {
                let n = number(size_name, &size)?;
                let i = number(index_name, &index)?;
                let shard = StaticShard::new(n, i, strategy)
                    .map_err(|e| format!("{size_name}={size}, {index_name}={index}: {e}"))?;
                let from = if from(size_name) == from(index_name) {
                    from(size_name).to_owned()
                } else {
                    "flags and environment".to_owned()
                };
                Ok(ClusterChoice::Static { shard, from })
            }
        }
    }
}

/// Checks the etcd cluster's settings.
fn etcd_choice(
    uri: String,
    node: Option<String>,
    ttl: u64,
    weight: f64,
    shard: Option<Strategy>,
) -> Result<ClusterChoice, String> {
    if !cfg!(feature = "etcd") {
        return Err("--cluster etcd://… needs lrpm built with the etcd feature".into());
    }
    if !uri.starts_with("etcd://") {
        return Err(format!(
            "--cluster: {uri:?} is not an etcd://HOST:PORT/PREFIX URI"
        ));
    }
    if shard.is_some_and(|s| s != Strategy::Rendezvous) {
        return Err(
            "--cluster etcd://… assigns jobs by rendezvous hashing: --shard \
                    balanced and hash are for static clusters"
                .into(),
        );
    }
    if ttl < 2 {
        return Err(format!("--lease-ttl: at least 2 seconds, got {ttl}"));
    }
    if !(weight.is_finite() && weight > 0.0) {
        return Err(format!("--node-weight: must be a number > 0, got {weight}"));
    }
    let node = match node {
        Some(node) => node,
        None => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    };
    if node.is_empty() || node.contains('/') || node.chars().any(char::is_control) {
        return Err(format!(
            "--node-id: {node:?} must be a non-empty name without '/' or control characters"
        ));
    }
    Ok(ClusterChoice::Etcd {
        uri,
        node,
        ttl: std::time::Duration::from_secs(ttl),
        weight,
    })
}

/// A size or index: decimal digits only (as php-lrpm-cluster's
/// `ctype_digit`), within 32 bits.
fn number(name: &str, value: &str) -> Result<u32, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name}: {value:?} is not a whole number"));
    }
    value
        .parse()
        .map_err(|_| format!("{name}: {value} is too large"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use std::collections::BTreeMap;

    use super::super::file::parse_file;
    use super::*;

    fn choice(args: ClusterArgs, env: &[(&str, &str)]) -> Result<ClusterChoice, String> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        args.validate(|name| env.get(name).cloned())
    }

    fn flags(size: Option<&str>, index: Option<&str>) -> ClusterArgs {
        ClusterArgs {
            cluster_size: size.map(str::to_owned),
            cluster_index: index.map(str::to_owned),
            ..ClusterArgs::default()
        }
    }

    fn shard(n: u32, i: u32) -> StaticShard {
        StaticShard::new(n, i, Strategy::Rendezvous).unwrap()
    }

    #[test]
    fn nothing_given_is_a_lone_node() {
        assert_eq!(choice(flags(None, None), &[]), Ok(ClusterChoice::Alone));
    }

    #[test]
    fn flags_then_lrpms_variables_then_php_lrpm_clusters() {
        let from = |from: &str, n, i| {
            Ok(ClusterChoice::Static {
                shard: shard(n, i),
                from: from.to_owned(),
            })
        };
        assert_eq!(
            choice(flags(Some("3"), Some("1")), &[]),
            from("flags", 3, 1)
        );
        let env = [
            ("LRPM_NUMBER_OF_INSTANCES", "4"),
            ("LRPM_INSTANCE_NUMBER", "2"),
            ("PHP_LRPM_NUMBER_OF_INSTANCES", "5"),
            ("PHP_LRPM_INSTANCE_NUMBER", "0"),
        ];
        assert_eq!(choice(flags(None, None), &env), from("environment", 4, 2));
        assert_eq!(
            choice(flags(None, None), &env[2..]),
            from("environment", 5, 0)
        );
        // --cluster-size 2 with LRPM_INSTANCE_NUMBER=2: out of range.
        assert!(choice(flags(Some("2"), None), &env).is_err());
        assert_eq!(
            choice(flags(Some("6"), None), &env),
            from("flags and environment", 6, 2)
        );
    }

    #[test]
    fn every_bad_value_is_an_error_never_one_node() {
        let bad = [
            (flags(Some("3"), None), vec![]),
            (flags(None, Some("0")), vec![]),
            (flags(Some("0"), Some("0")), vec![]),
            (flags(Some("3"), Some("3")), vec![]),
            (flags(Some("3"), Some("-1")), vec![]),
            (flags(Some("3"), Some("1.0")), vec![]),
            (flags(Some(" 3"), Some("1")), vec![]),
            (flags(Some(""), Some("0")), vec![]),
            (flags(Some("x"), Some("0")), vec![]),
            (flags(Some("99999999999"), Some("0")), vec![]),
            (flags(None, None), vec![("LRPM_NUMBER_OF_INSTANCES", "2")]),
            (flags(None, None), vec![("PHP_LRPM_INSTANCE_NUMBER", "1")]),
            (
                flags(None, None),
                vec![
                    ("LRPM_NUMBER_OF_INSTANCES", ""),
                    ("LRPM_INSTANCE_NUMBER", "0"),
                ],
            ),
            (
                flags(None, None),
                vec![
                    ("LRPM_NUMBER_OF_INSTANCES", "2"),
                    ("LRPM_INSTANCE_NUMBER", "2"),
                ],
            ),
            (
                ClusterArgs {
                    shard: Some(Strategy::Hash),
                    ..ClusterArgs::default()
                },
                vec![],
            ),
        ];
        for (args, env) in bad {
            let shown = format!("{args:?} {env:?}");
            assert!(choice(args, &env).is_err(), "accepted: {shown}");
        }
    }

    #[test]
    fn etcd_settings_are_checked() {
        let etcd =
            |node: Option<&str>, ttl: u64, weight: f64, shard: Option<Strategy>| ClusterArgs {
                cluster: Some("etcd://127.0.0.1:2379/lrpm".into()),
                node_id: node.map(str::to_owned),
                lease_ttl: ttl,
                node_weight: weight,
                shard,
                ..ClusterArgs::default()
            };
        assert_eq!(
            choice(etcd(Some("n1"), 3, 2.0, None), &[]),
            Ok(ClusterChoice::Etcd {
                uri: "etcd://127.0.0.1:2379/lrpm".into(),
                node: "n1".into(),
                ttl: std::time::Duration::from_secs(3),
                weight: 2.0,
            })
        );
        assert!(matches!(
            choice(etcd(None, 10, 1.0, Some(Strategy::Rendezvous)), &[]),
            Ok(ClusterChoice::Etcd { node, .. }) if !node.is_empty()
        ));
        for bad in [
            etcd(Some("n1"), 1, 1.0, None),
            etcd(Some("n1"), 3, 0.0, None),
            etcd(Some("n1"), 3, f64::NAN, None),
            etcd(Some("a/b"), 3, 1.0, None),
            etcd(Some(""), 3, 1.0, None),
            etcd(Some("n1"), 3, 1.0, Some(Strategy::Hash)),
            ClusterArgs {
                cluster: Some("http://x:1/p".into()),
                ..ClusterArgs::default()
            },
            ClusterArgs {
                lease_ttl: 5,
                ..ClusterArgs::default()
            },
        ] {
            let shown = format!("{bad:?}");
            assert!(choice(bad, &[]).is_err(), "accepted: {shown}");
        }
    }

    #[test]
    fn the_file_holds_two_integers_in_range() {
        let ok = |text: &str| parse_file(text.as_bytes(), Strategy::Hash);
        assert_eq!(
            ok(r#"{"numberOfInstances": 3, "instanceNumber": 2}"#),
            Ok(StaticShard::new(3, 2, Strategy::Hash).unwrap())
        );
        for bad in [
            "",
            "null",
            "[]",
            r#"{"numberOfInstances": 3}"#,
            r#"{"instanceNumber": 0}"#,
            r#"{"numberOfInstances": "3", "instanceNumber": 0}"#,
            r#"{"numberOfInstances": 3.0, "instanceNumber": 0}"#,
            r#"{"numberOfInstances": 3, "instanceNumber": 3}"#,
            r#"{"numberOfInstances": 0, "instanceNumber": 0}"#,
            r#"{"numberOfInstances": 3, "instanceNumber": -1}"#,
            r#"{"numberOfInstances": 5000000000, "instanceNumber": 0}"#,
        ] {
            assert!(ok(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn the_file_excludes_the_variables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        std::fs::write(&path, r#"{"numberOfInstances": 2, "instanceNumber": 1}"#).unwrap();
        let args = ClusterArgs {
            cluster_file: Some(path.clone()),
            ..ClusterArgs::default()
        };
        assert_eq!(
            choice(args.clone(), &[]),
            Ok(ClusterChoice::File {
                path: path.clone(),
                shard: shard(2, 1)
            })
        );
        assert!(choice(args, &[("PHP_LRPM_INSTANCE_NUMBER", "0")]).is_err());
        let missing = ClusterArgs {
            cluster_file: Some(dir.path().join("none.json")),
            ..ClusterArgs::default()
        };
        assert!(choice(missing, &[]).is_err());
    }
}
