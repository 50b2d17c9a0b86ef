//! The golden cross-check of the sharding strategies against PHP itself:
//! `tests/php/shard.php` assigns 1,500 ids of every shape with PHP's own
//! `ksort` and `crc32` for clusters of 1 to 7 nodes, and lrpm must give the
//! very same node for every id, and for `balanced` the very same order.
//!
//! Needs `php` (php-cli ≥ 8.2); skips without it, unless
//! `LRPM_TEST_REQUIRE_ALL=1` (as in CI) makes that a failure.
#![allow(clippy::unwrap_used)] // Tests may unwrap.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use lrpm_core::shard::{StaticShard, Strategy, ksort};

/// The largest cluster size checked.
const MAX_SIZE: u32 = 7;

/// A small deterministic generator (xorshift64*), so that every run checks
/// the same ids.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Ids of every shape: integers, integer-like strings, leading zeros,
/// negatives, signs, whitespace, decimals, exponents, 64-bit limits and
/// beyond, mixed case, punctuation, non-ASCII, and random strings over an
/// alphabet that mixes numeric and other text.
fn ids() -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..300 {
        ids.insert(i.to_string());
    }
    for i in 1..60 {
        ids.insert(format!("-{i}"));
        ids.insert(format!("{i:03}"));
        ids.insert(format!("job-{i}"));
        ids.insert(format!("Job_{i}"));
    }
    let fixed = [
        "-0",
        "+5",
        "+0",
        "00",
        "0.0",
        "1.0",
        "1.",
        ".5",
        "-.5",
        "1e3",
        "1E3",
        "2e-2",
        "1e+2",
        "1e",
        "1e+",
        " 12",
        "12 ",
        "\t3",
        "\n4",
        " 7 ",
        "1 2",
        "0x1A",
        "0b11",
        "1_000",
        "inf",
        "INF",
        "NAN",
        "nan",
        " ",
        "",
        "-",
        "+",
        ".",
        "e5",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "99999999999999999999",
        "123456789012345678901.5",
        "0009223372036854775807",
        "9300000000000000000 ",
        "1e400",
        "-1e400",
        "A",
        "a",
        "B",
        "b",
        "Z",
        "z",
        "aa",
        "aA",
        "Aa",
        "a.b",
        "a/b",
        "a:b",
        "a b",
        "#1",
        "@x",
        "~",
        "ünï",
        "日本",
        "job 1",
        "JOB-1",
        "job-1",
        "10",
        "9a",
        "1a",
        "10a",
        "9",
        "08",
        "8",
        "1.5e3",
        "1500",
        "1500.0",
    ];
    ids.extend(fixed.iter().map(|s| (*s).to_owned()));
    let alphabet = b"0123456789-+. eEaAzZ_x";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    while ids.len() < 1500 {
        let len = 1 + rng.below(6);
        let id: String = (0..len)
            .map(|_| char::from(alphabet[rng.below(alphabet.len())]))
            .collect();
        ids.insert(id);
    }
    ids
}

fn php_available() -> bool {
    Command::new("php")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn assignments_match_php_lrpm_clusters_filters() {
    if !php_available() {
        assert!(
            std::env::var_os("LRPM_TEST_REQUIRE_ALL").is_none_or(|v| v != "1"),
            "php is missing and LRPM_TEST_REQUIRE_ALL=1"
        );
        eprintln!("skipped: php is missing");
        return;
    }
    let ids: Vec<String> = ids().into_iter().collect();
    assert!(ids.len() >= 1000);
    // A JSON object with the ids as keys, in lrpm's order (bytes).
    let object: Vec<String> = ids
        .iter()
        .map(|id| format!("{}:1", serde_json::to_string(id).unwrap()))
        .collect();
    let input = format!("{{{}}}", object.join(","));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php/shard.php");
    let mut php = Command::new("php")
        .args([
            "-d",
            "error_reporting=-1",
            "-d",
            "display_errors=stderr",
            script,
            &MAX_SIZE.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run php");
    php.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = php.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "php failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "php warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let texts: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut php_nodes: BTreeMap<(String, u32, String), u32> = BTreeMap::new();
    let mut php_order: Vec<String> = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (strategy, size, node, id): (String, u32, u32, String) =
            serde_json::from_str(line).unwrap();
        if strategy == "balanced" && size == 1 {
            php_order.push(id.clone());
        }
        php_nodes.insert((strategy, size, id), node);
    }
    assert_eq!(
        php_nodes.len(),
        3 * MAX_SIZE as usize * ids.len(),
        "one line per strategy, size and id"
    );

    let lrpm_order: Vec<&str> = ksort(&texts).into_iter().map(|i| texts[i]).collect();
    let first_difference = lrpm_order.iter().zip(&php_order).position(|(a, b)| a != b);
    assert_eq!(
        first_difference, None,
        "ksort differs from PHP's: lrpm {lrpm_order:?}\nphp {php_order:?}"
    );

    let mut differences = Vec::new();
    for strategy in [Strategy::Balanced, Strategy::Hash, Strategy::Rendezvous] {
        for size in 1..=MAX_SIZE {
            let nodes = StaticShard::new(size, 0, strategy).unwrap().assign(&texts);
            for (id, node) in texts.iter().zip(nodes) {
                let php = php_nodes[&(strategy.name().to_owned(), size, (*id).to_owned())];
                if php != node {
                    differences.push(format!(
                        "{strategy} N={size} {id:?}: php {php}, lrpm {node}"
                    ));
                }
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences, the first: {:#?}",
        differences.len(),
        &differences[..differences.len().min(20)]
    );
}
