use std::collections::BTreeSet;

use proptest::prelude::{prop_assert, prop_assert_eq, proptest};
use proptest::strategy::Strategy as _;

use super::*;
use crate::job::{JobSpec, Program};

#[test]
fn crc32_is_php_crc32() {
    // PHP: crc32("The quick brown fox jumped over the lazy dog.") === 2191738434
    assert_eq!(
        crc32(b"The quick brown fox jumped over the lazy dog."),
        2_191_738_434
    );
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn out_of_range_sizes_and_indexes_are_errors() {
    assert_eq!(
        StaticShard::new(0, 0, Strategy::Hash),
        Err(ShardError::NoInstances)
    );
    assert_eq!(
        StaticShard::new(3, 3, Strategy::Hash),
        Err(ShardError::IndexOutOfRange { index: 3, size: 3 })
    );
    assert!(StaticShard::new(1, 0, Strategy::Balanced).is_ok());
}

#[test]
fn one_node_runs_everything() {
    for strategy in [Strategy::Balanced, Strategy::Hash, Strategy::Rendezvous] {
        let shard = StaticShard::new(1, 0, strategy).unwrap();
        assert_eq!(shard.assign(&["a", "7", "-1", ""]), [0, 0, 0, 0]);
    }
}

#[test]
fn balanced_deals_the_sorted_ids_in_turn() {
    let shard = StaticShard::new(2, 0, Strategy::Balanced).unwrap();
    // ksort: 2, 10, "a", "b"
    assert_eq!(shard.assign(&["10", "2", "a", "b"]), [1, 0, 0, 1]);
}

#[test]
fn weight_zero_sends_everything_to_the_first_node() {
    // php-lrpm-cluster's mistake, reproduced to show why lrpm uses weight 1.
    let nodes = [
        Node {
            name: "0",
            weight: 0.0,
        },
        Node {
            name: "1",
            weight: 0.0,
        },
    ];
    for id in ["a", "b", "c", "d", "42"] {
        assert_eq!(rendezvous(&nodes, id), Some(0));
    }
    assert_eq!(rendezvous(&[], "a"), None);
}

#[test]
fn heavier_nodes_get_more_jobs() {
    let nodes = [
        Node {
            name: "light",
            weight: 1.0,
        },
        Node {
            name: "heavy",
            weight: 3.0,
        },
    ];
    let heavy = (0..4000)
        .filter(|i| rendezvous(&nodes, &i.to_string()) == Some(1))
        .count();
    // Three quarters expected; CRC-32 is no uniform hash (2,780 here), so a
    // wide margin.
    assert!((2600..3400).contains(&heavy), "{heavy} of 4000");
}

#[test]
fn filter_keeps_this_nodes_valid_and_invalid_jobs() {
    let mut decl = Declaration::default();
    let spec = |id: &str| std::sync::Arc::new(JobSpec::new(id, Program::Shell("true".into())));
    for id in ["a", "b", "c", "d", "e", "f"] {
        decl.jobs.insert(JobId::from(id), spec(id));
    }
    decl.invalid
        .insert(JobId::from("g"), "name: missing".into());
    decl.warnings.push("a: unknown key".into());
    let mut seen = BTreeSet::new();
    for index in 0..3 {
        let shard = StaticShard::new(3, index, Strategy::Balanced).unwrap();
        let mine = share(&decl, &shard.assignment(&decl), &index);
        assert_eq!(mine.warnings, decl.warnings);
        for id in mine.jobs.keys().chain(mine.invalid.keys()) {
            assert!(seen.insert(id.clone()), "{id} on two nodes");
        }
    }
    assert_eq!(seen.len(), 7);
}

fn ids() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
    proptest::collection::btree_set("[-+ .0-9a-cA-C]{0,6}", 0..60)
        .prop_map(|s| s.into_iter().collect())
}

proptest! {
    #[test]
    fn every_job_lands_on_exactly_one_node(ids in ids(), size in 1u32..9, which in 0usize..3) {
        let strategy = [Strategy::Balanced, Strategy::Hash, Strategy::Rendezvous][which];
        let texts: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut owners = vec![0u32; texts.len()];
        for index in 0..size {
            let shard = StaticShard::new(size, index, strategy).unwrap();
            let nodes = shard.assign(&texts);
            // Every node computes the same assignment.
            prop_assert_eq!(&nodes, &StaticShard::new(size, 0, strategy).unwrap().assign(&texts));
            for (i, node) in nodes.iter().enumerate() {
                prop_assert!(*node < size);
                if *node == index {
                    owners[i] += 1;
                }
            }
        }
        prop_assert!(owners.iter().all(|n| *n == 1));
    }

    #[test]
    fn removing_a_node_moves_only_its_jobs(
        ids in ids(),
        names in proptest::collection::btree_set("[a-z]{1,4}", 2..8),
        weights in proptest::collection::vec(0.25f64..4.0, 8),
        gone in 0usize..8,
    ) {
        let names: Vec<&String> = names.iter().collect();
        let nodes: Vec<Node<'_>> = names.iter().zip(&weights).map(|(name, weight)| Node { name, weight: *weight }).collect();
        let gone = gone % nodes.len();
        let mut rest = nodes.clone();
        rest.remove(gone);
        for id in &ids {
            let before = nodes[rendezvous(&nodes, id).unwrap()].name;
            let after = rest[rendezvous(&rest, id).unwrap()].name;
            if before != nodes[gone].name {
                prop_assert_eq!(before, after, "{} moved without its node leaving", id);
            }
        }
    }

    #[test]
    fn ksort_is_a_permutation(ids in ids()) {
        let texts: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut order = ksort(&texts);
        order.sort_unstable();
        prop_assert_eq!(order, (0..texts.len()).collect::<Vec<_>>());
    }
}
