//! A configuration kept one job per key: the declaration store of the
//! sources whose server holds each job apart (an etcd key, a database row).
//!
//! # Theory of operation
//!
//! Such a source does not hand over one document but a set of
//! `(key, value)` pairs: the key is the job id, the value the job's JSON
//! declaration (one object, as a job is in a JSON job map). A change
//! usually touches one pair among thousands, and the server says which
//! (an etcd watch event) or the source finds out by comparing (a table
//! read again). [`KeyedJobs`] remembers every pair's raw value with its
//! verdict, and checks a value again only when its bytes changed, so that:
//!
//! - a change to one key reparses that one job; every other job keeps its
//!   very same `Arc<JobSpec>`, by which the supervisor sees it unchanged;
//! - a value that is not JSON, or not a valid job, makes only its own job
//!   invalid (`declaration: not valid JSON: …`, or the field's reason), and
//!   the rest of the configuration is applied.
//!
//! The store is updated one key at a time ([`KeyedJobs::insert`],
//! [`KeyedJobs::remove`]), or as a whole by a full load
//! ([`KeyedJobs::replace_all`], which keeps the verdicts of the values that
//! did not change and forgets the keys the load no longer has). Each of
//! them says whether anything changed, and [`KeyedJobs::declaration`]
//! gives the whole configuration for the supervisor.
//!
//! ```
//! use lrpm_core::JobId;
//! use lrpm_core::keyed::KeyedJobs;
//!
//! let mut jobs = KeyedJobs::new();
//! jobs.insert("a", br#"{"name": "A", "command": ["sleep", "9"]}"#);
//! jobs.insert("b", b"not json");
//! let decl = jobs.declaration();
//! assert!(decl.jobs.contains_key(&JobId::from("a")));
//! assert!(decl.invalid[&JobId::from("b")].starts_with("declaration: not valid JSON"));
//! ```

use std::collections::BTreeMap;

use serde_json::Value;

use crate::decl::{self, Declaration, Verdict};
use crate::job::JobId;

/// The jobs of a source that keeps one job per key, each with its last
/// raw value and verdict (see the module's docs).
#[derive(Debug, Default, Clone)]
pub struct KeyedJobs {
    /// Per key: what its value declares.
    entries: BTreeMap<String, Entry>,
}

/// One key's value and what it declares.
#[derive(Debug, Clone)]
struct Entry {
    /// The raw value, as the server gave it.
    raw: Box<[u8]>,
    /// The job the key names.
    id: JobId,
    /// The job, or why it is invalid.
    verdict: Verdict,
    /// How many times the last full load had the key (a query may return
    /// an id twice); more than once makes the job invalid.
    copies: usize,
}

impl KeyedJobs {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`'s value to `value` (the job's JSON declaration, as bytes)
    /// and checks it, unless it is, byte for byte, the value the key has
    /// already. Returns whether anything changed.
    pub fn insert(&mut self, key: &str, value: &[u8]) -> bool {
        if let Some(entry) = self.entries.get_mut(key) {
            if *entry.raw == *value && entry.copies == 1 {
                return false;
            }
            if *entry.raw == *value {
                entry.copies = 1;
                return true;
            }
        }
        self.entries.insert(key.to_owned(), check(key, value));
        true
    }

    /// Removes `key` and its job. Returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Replaces the whole store by the pairs of a full load: a value that
    /// did not change keeps its verdict, a key the load does not have is
    /// forgotten, and a key the load has twice or more makes its job
    /// invalid (`declared N times`). Returns whether anything changed.
    pub fn replace_all<K, V>(&mut self, pairs: impl IntoIterator<Item = (K, V)>) -> bool
    where
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut old = std::mem::take(&mut self.entries);
        let mut changed = false;
        for (key, value) in pairs {
            let (key, value) = (key.as_ref(), value.as_ref());
            if let Some(entry) = self.entries.get_mut(key) {
                // A second copy in this load.
                entry.copies += 1;
                changed = true;
                continue;
            }
            let entry = match old.remove(key) {
                Some(mut entry) if *entry.raw == *value => {
                    changed |= entry.copies != 1;
                    entry.copies = 1;
                    entry
                }
                _ => {
                    changed = true;
                    check(key, value)
                }
            };
            self.entries.insert(key.to_owned(), entry);
        }
        changed || !old.is_empty()
    }

    /// Forgets every key.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The whole configuration: the valid jobs (the same `Arc<JobSpec>` for
    /// a value that did not change), the invalid ones with their reasons,
    /// and the warnings.
    pub fn declaration(&self) -> Declaration {
        let mut decl = Declaration::default();
        for entry in self.entries.values() {
            if entry.copies > 1 {
                let reason = format!("declared {} times", entry.copies);
                decl.invalid.insert(entry.id.clone(), reason);
                continue;
            }
            match &entry.verdict {
                Ok((spec, warnings)) => {
                    decl.jobs.insert(entry.id.clone(), spec.clone());
                    decl.warnings.extend(warnings.iter().cloned());
                }
                Err(reason) => {
                    decl.invalid.insert(entry.id.clone(), reason.clone());
                }
            }
        }
        decl
    }
}

/// Parses and checks `key`'s value.
fn check(key: &str, value: &[u8]) -> Entry {
    let (id, verdict) = match serde_json::from_slice::<Value>(value) {
        Ok(body) => decl::verdict(Value::String(key.to_owned()), &body),
        Err(e) => {
            // The key's own problem, if it has one, comes first.
            let (id, verdict) = decl::verdict(Value::String(key.to_owned()), &Value::Null);
            let reason = format!("declaration: not valid JSON: {e}");
            let reason = match verdict {
                Err(r) if r.starts_with("job id:") => format!("{r}; {reason}"),
                _ => reason,
            };
            (id, Err(reason))
        }
    };
    Entry {
        raw: value.into(),
        id,
        verdict,
        copies: 1,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use std::sync::Arc;

    use super::*;

    const A: &[u8] = br#"{"name": "A", "command": ["sleep", "9"]}"#;
    const B: &[u8] = br#"{"name": "B", "command": "sleep 9"}"#;

    fn spec(jobs: &KeyedJobs, id: &str) -> Arc<crate::JobSpec> {
        jobs.declaration().jobs[&JobId::from(id)].clone()
    }

    #[test]
    fn insert_checks_only_a_changed_value() {
        let mut jobs = KeyedJobs::new();
        assert!(jobs.insert("a", A));
        assert!(jobs.insert("b", B));
        let (a, b) = (spec(&jobs, "a"), spec(&jobs, "b"));
        assert!(!jobs.insert("a", A), "the same value changes nothing");
        assert!(jobs.insert("b", br#"{"name": "B2", "command": "sleep 9"}"#));
        assert!(Arc::ptr_eq(&a, &spec(&jobs, "a")), "a is not reparsed");
        assert!(!Arc::ptr_eq(&b, &spec(&jobs, "b")));
        assert_eq!(spec(&jobs, "b").name, "B2");
    }

    #[test]
    fn garbage_makes_only_its_job_invalid() {
        let mut jobs = KeyedJobs::new();
        jobs.insert("a", A);
        jobs.insert("b", b"{not json");
        jobs.insert("c", br#"{"command": "true"}"#);
        jobs.insert("d", b"[1]");
        let decl = jobs.declaration();
        assert_eq!(
            decl.jobs.keys().map(JobId::as_str).collect::<Vec<_>>(),
            ["a"]
        );
        assert!(
            decl.invalid[&JobId::from("b")]
                .starts_with("declaration: not valid JSON: key must be a string"),
            "{}",
            decl.invalid[&JobId::from("b")]
        );
        assert_eq!(decl.invalid[&JobId::from("c")], "name: is required");
        assert_eq!(
            decl.invalid[&JobId::from("d")],
            "job: must be a map of fields"
        );
        // Mended, it is valid.
        jobs.insert("b", B);
        assert!(jobs.declaration().jobs.contains_key(&JobId::from("b")));
    }

    #[test]
    fn a_bad_key_is_an_invalid_job() {
        let mut jobs = KeyedJobs::new();
        jobs.insert("", A);
        jobs.insert("x\ty", b"garbage");
        let decl = jobs.declaration();
        assert!(decl.jobs.is_empty());
        assert!(decl.invalid[&JobId::from("")].starts_with("job id:"));
        assert!(decl.invalid[&JobId::from("x\ty")].starts_with("job id:"));
        assert!(decl.invalid[&JobId::from("x\ty")].contains("not valid JSON"));
    }

    #[test]
    fn remove_forgets_the_job() {
        let mut jobs = KeyedJobs::new();
        jobs.insert("a", A);
        assert!(jobs.remove("a"));
        assert!(!jobs.remove("a"));
        assert!(jobs.is_empty());
        assert!(jobs.declaration().jobs.is_empty());
    }

    #[test]
    fn replace_all_reuses_unchanged_values_and_forgets_the_missing() {
        let mut jobs = KeyedJobs::new();
        assert!(jobs.replace_all([("a", A), ("b", B)]));
        let a = spec(&jobs, "a");
        assert!(!jobs.replace_all([("b", B), ("a", A)]), "same pairs");
        assert!(jobs.replace_all([("a", A)]), "b is gone");
        assert!(Arc::ptr_eq(&a, &spec(&jobs, "a")));
        assert_eq!(jobs.len(), 1);
        assert!(jobs.replace_all(Vec::<(&str, &[u8])>::new()));
        assert!(jobs.is_empty());
    }

    #[test]
    fn a_key_twice_in_a_load_is_invalid() {
        let mut jobs = KeyedJobs::new();
        assert!(jobs.replace_all([("a", A), ("a", A), ("b", B)]));
        let decl = jobs.declaration();
        assert_eq!(decl.invalid[&JobId::from("a")], "declared 2 times");
        assert!(decl.jobs.contains_key(&JobId::from("b")));
        assert!(jobs.replace_all([("a", A), ("b", B)]), "once again: valid");
        assert!(jobs.declaration().jobs.contains_key(&JobId::from("a")));
        assert!(!jobs.replace_all([("a", A), ("b", B)]));
    }

    #[test]
    fn equals_the_json_map_parse() {
        let mut jobs = KeyedJobs::new();
        let values: [(&str, &[u8]); 3] = [
            ("1", A),
            ("2", br#"{"name": "x", "command": [], "bogus": 1}"#),
            ("3", br#"{"name": "w", "workerClass": "W"}"#),
        ];
        jobs.replace_all(values);
        let mut text = String::from("{");
        for (i, (k, v)) in values.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("{k:?}: {}", std::str::from_utf8(v).unwrap()));
        }
        text.push('}');
        let doc = crate::Document {
            origin: "x",
            format: crate::Format::Json,
            text: &text,
        };
        let whole = decl::parse_documents(&[doc]).unwrap();
        assert_eq!(jobs.declaration(), whole);
    }
}
