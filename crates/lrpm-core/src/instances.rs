//! `instances`: several copies of one declared job.
//!
//! # Theory of operation
//!
//! A job declared with `instances: N` runs as N jobs, `ID#0` … `ID#N-1`,
//! each supervised, shown and restarted on its own, with `LRPM_INSTANCE`
//! set to its index. The copies are made by
//! [`Declaration::expand_instances`], after validation and before the
//! supervisor reconciles ([`crate::supervisor::Supervisor::handle_config`]
//! calls it; it is idempotent, so a shell may call it earlier, for a
//! filter that must see the copies). Reconciliation then needs nothing
//! special:
//!
//! * a copy's declaration is the job's, with `instances` cleared and
//!   [`JobSpec::instance`] set: it does not change with the count, so
//!   changing the count only adds or removes copies (ADDED, REMOVED), and
//!   the others are UNCHANGED;
//! * an update of the job's declaration changes every copy's, so every copy
//!   is UPDATED, through the same path as any job (and the same waves);
//! * a job whose new declaration is invalid keeps its copies running on
//!   their last valid declaration: the supervisor takes a copy whose base
//!   id is invalid for declared ([`base_id`]).
//!
//! A job declared without `instances` keeps its own id and gets no
//! `LRPM_INSTANCE`; `instances: 1` is one copy, `ID#0`, so that a count
//! that goes from 1 to 2 and back only starts and stops `ID#1`.

use std::sync::Arc;

use serde_json::Value;

use crate::decl::Declaration;
use crate::job::{JobId, JobSpec};

/// The largest `instances` accepted: far more copies of one job than a
/// host runs, yet a typo cannot ask for millions of processes.
pub const MAX_INSTANCES: u32 = 10_000;

/// Parses `instances`: an integer from 1 to [`MAX_INSTANCES`] (a float
/// without fraction will do, as YAML and TOML writers may give one).
pub(crate) fn count(value: &Value) -> Result<u32, String> {
    let n = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (1.0..=f64::from(MAX_INSTANCES)).contains(f))
            // Exact: a whole number within range.
            .map(|f| f as u64)
    });
    match n {
        Some(n) if (1..=u64::from(MAX_INSTANCES)).contains(&n) => {
            Ok(u32::try_from(n).expect("invariant: at most MAX_INSTANCES"))
        }
        _ => Err(format!("must be an integer from 1 to {MAX_INSTANCES}")),
    }
}

/// The id of copy `k` of job `base`: `base#k`.
pub fn copy_id(base: &JobId, k: u32) -> JobId {
    JobId::new(format!("{base}#{k}"))
}

/// The id of the declared job that `id`, running `spec`, is a copy of; `None`
/// for a job that is no copy.
pub fn base_id<'a>(id: &'a JobId, spec: &JobSpec) -> Option<&'a str> {
    let k = spec.instance?;
    let (base, index) = id.as_str().rsplit_once('#')?;
    (index.parse() == Ok(k)).then_some(base)
}

impl Declaration {
    /// Replaces every job declared with `instances: N` by its N copies
    /// (see the [module documentation](self)). A copy whose id is also
    /// declared as a job of its own (`a#1` beside `a` with 2 instances) is
    /// invalid, and so is that job: neither runs.
    ///
    /// Idempotent: a copy has no `instances` of its own.
    pub fn expand_instances(&mut self) {
        if self.jobs.values().all(|spec| spec.instances.is_none()) {
            return;
        }
        let (multi, single): (Vec<_>, Vec<_>) = std::mem::take(&mut self.jobs)
            .into_iter()
            .partition(|(_, spec)| spec.instances.is_some());
        self.jobs = single.into_iter().collect();
        for (base, spec) in multi {
            let n = spec.instances.expect("invariant: partitioned on instances");
            let mut copy = JobSpec::clone(&spec);
            copy.instances = None;
            for k in 0..n {
                let id = copy_id(&base, k);
                let clash = format!("job id: also copy {k} of job {base}, which has instances {n}");
                if self.jobs.remove(&id).is_some() {
                    self.invalid.insert(id, clash);
                } else if let Some(reason) = self.invalid.get_mut(&id) {
                    reason.push_str("; ");
                    reason.push_str(&clash);
                } else {
                    copy.instance = Some(k);
                    self.jobs.insert(id, Arc::new(copy.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decl::{Document, Format, parse_documents};

    fn parse(json: &str) -> Declaration {
        let mut decl = parse_documents(&[Document {
            origin: "t.json",
            format: Format::Json,
            text: json,
        }])
        .expect("parses");
        decl.expand_instances();
        decl
    }

    fn ids(decl: &Declaration) -> Vec<&str> {
        decl.jobs.keys().map(JobId::as_str).collect()
    }

    #[test]
    fn a_job_with_instances_becomes_its_copies() {
        let decl = parse(
            r#"{"w": {"name": "W", "command": "x", "instances": 3}, "s": {"name": "S", "command": "y"}}"#,
        );
        assert_eq!(ids(&decl), ["s", "w#0", "w#1", "w#2"]);
        for k in 0..3 {
            let id = copy_id(&JobId::from("w"), k);
            let spec = &decl.jobs[&id];
            assert_eq!(spec.instance, Some(k));
            assert_eq!(spec.instances, None);
            assert_eq!(base_id(&id, spec), Some("w"));
        }
        let s = &decl.jobs[&JobId::from("s")];
        assert_eq!((s.instance, base_id(&JobId::from("s"), s)), (None, None));
    }

    #[test]
    fn one_instance_is_one_copy() {
        let decl = parse(r#"{"w": {"name": "W", "command": "x", "instances": 1}}"#);
        assert_eq!(ids(&decl), ["w#0"]);
    }

    #[test]
    fn a_copys_declaration_does_not_depend_on_the_count() {
        let three = parse(r#"{"w": {"name": "W", "command": "x", "instances": 3}}"#);
        let two = parse(r#"{"w": {"name": "W", "command": "x", "instances": 2}}"#);
        for id in ["w#0", "w#1"] {
            let id = JobId::from(id);
            assert!(!three.jobs[&id].needs_restart_for(&two.jobs[&id]));
        }
        let changed = parse(r#"{"w": {"name": "W", "command": "z", "instances": 2}}"#);
        assert!(
            three.jobs[&JobId::from("w#0")].needs_restart_for(&changed.jobs[&JobId::from("w#0")])
        );
    }

    #[test]
    fn expansion_is_idempotent() {
        let mut decl = parse(r#"{"w": {"name": "W", "command": "x", "instances": 2}}"#);
        let before = decl.clone();
        decl.expand_instances();
        assert_eq!(decl, before);
    }

    #[test]
    fn a_copy_id_declared_as_a_job_is_invalid() {
        let decl = parse(
            r#"{"w": {"name": "W", "command": "x", "instances": 2},
                "w#1": {"name": "other", "command": "y"},
                "w#0": {"name": "bad"}}"#,
        );
        assert_eq!(ids(&decl), [] as [&str; 0]);
        assert!(decl.invalid[&JobId::from("w#1")].contains("also copy 1 of job w"));
        let w0 = &decl.invalid[&JobId::from("w#0")];
        assert!(
            w0.starts_with("command:") && w0.contains("also copy 0 of job w"),
            "{w0}"
        );
    }

    #[test]
    fn the_count_is_checked() {
        for bad in ["0", "-1", "1.5", "\"2\"", "10001", "true"] {
            let decl = parse(&format!(
                r#"{{"w": {{"name": "W", "command": "x", "instances": {bad}}}}}"#
            ));
            let reason = &decl.invalid[&JobId::from("w")];
            assert!(
                reason.starts_with("instances: must be an integer from 1 to 10000"),
                "{bad}: {reason}"
            );
        }
        let decl = parse(r#"{"w": {"name": "W", "command": "x", "instances": 2.0}}"#);
        assert_eq!(ids(&decl), ["w#0", "w#1"]);
    }

    #[test]
    fn base_id_needs_the_matching_index() {
        let mut spec = JobSpec::new("W", crate::job::Program::Shell("x".into()));
        spec.instance = Some(2);
        assert_eq!(base_id(&JobId::from("a#b#2"), &spec), Some("a#b"));
        assert_eq!(base_id(&JobId::from("a#1"), &spec), None);
        assert_eq!(base_id(&JobId::from("a"), &spec), None);
    }
}
