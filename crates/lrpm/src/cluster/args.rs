//! The cluster's command line: the flags, their environment variables
//! (php-lrpm-cluster's too) and the cluster file, validated into a
//! [`ClusterChoice`]. Every value that is missing, malformed or out of
//! range is a usage error: a node that silently took itself for the only
//! one would run every job a second time.

use std::path::PathBuf;

use lrpm_core::shard::{StaticShard, Strategy};

/// The cluster's flags, flattened into `lrpm`'s command line.
#[derive(Debug, Clone, Default, clap::Args)]
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
}

impl ClusterArgs {
    /// Validates the flags, with `env` as the environment (a function, so
    /// that tests give their own); reads the cluster file if one is named.
    pub(crate) fn validate(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ClusterChoice, String> {
        let strategy = self.shard.unwrap_or_default();
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
