//! Configuration change → effect: one job's declaration changes in the
//! jobs file (its `env`), the file is rewritten the way a careful writer
//! does (temporary file, rename), and the clock runs until that job's new
//! worker's `main`. In between, lrpm sees the rename through inotify,
//! re-reads and diffs the whole file, stops the job's old worker (SIGTERM,
//! which ends it at once), reaps it and spawns the new one.

use std::time::Duration;

use anyhow::Context;

use crate::bench::Bench;
use crate::results::{Metric, Results, Subject};
use crate::scenarios::mass_start::LrpmFarm;
use crate::stats::Rng;

/// How long lrpm is left alone between two changes.
const SETTLE: Duration = Duration::from_millis(20);

/// Changes one job at a time, `samples` times, and records each latency.
pub fn lrpm(
    bench: &Bench,
    farm: &mut LrpmFarm,
    samples: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let jobs = farm.jobs.generation.len();
    let mut rng = Rng::new(0xC0FF_EE00 + jobs as u64);
    for _ in 0..samples {
        let id = rng.below(jobs);
        farm.jobs.generation[id] += 1;
        let content = farm.jobs.to_toml(bench);
        let old = farm.roster.pid(id).context("the job has no known worker")?;
        let t0 = farm.lrpm.write_jobs(&content)?;
        let hello = farm
            .roster
            .wait_for(&bench.collector, Duration::from_secs(10), |h| {
                h.id as usize == id && h.pid != old
            })
            .with_context(|| format!("the change of job {id} had no effect"))?;
        results
            .times(Metric::ConfigPush, Subject::Lrpm, jobs)
            .push_ns(hello.ns.saturating_sub(t0));
        std::thread::sleep(SETTLE);
    }
    Ok(())
}
