//! Crash storm: every worker of a farm exits the moment it starts, and is
//! restarted at once (`shortRunTimeSeconds = 0`: no run counts as too
//! short, so there is no backoff). lrpm alone drives the storm; the harness
//! only reads the `restarts` counters and lrpm's CPU time at both ends of a
//! window. The figures: restarts per second, and lrpm's CPU time per
//! restart.

use std::time::{Duration, Instant};

use crate::bench::{Bench, WorkerMode};
use crate::lrpm::{JobSet, Lrpm};
use crate::procfs::{self, CpuSnapshot};
use crate::results::{Results, Storm, Subject};

/// How long the storm runs before it is measured.
const WARM_UP: Duration = Duration::from_secs(1);

/// Runs a storm of `jobs` jobs under lrpm for `window`.
pub fn lrpm(
    bench: &Bench,
    jobs: usize,
    window: Duration,
    results: &mut Results,
) -> anyhow::Result<()> {
    let lrpm = Lrpm::start(bench, None, &[])?;
    lrpm.write_jobs(&JobSet::new(jobs, WorkerMode::True).to_toml(bench))?;
    std::thread::sleep(WARM_UP);
    let restarts_before = lrpm.restarts()?;
    let cpu_before = CpuSnapshot::take_all(&procfs::supervisor_processes(lrpm.pid()))?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let restarts_after = lrpm.restarts()?;
    let cpu_after = CpuSnapshot::take_all(&procfs::supervisor_processes(lrpm.pid()))?;
    let elapsed = t0.elapsed();
    anyhow::ensure!(
        restarts_after > restarts_before,
        "no restart during the storm:\n{}",
        lrpm.log_tail()
    );
    results.set_storm(
        Subject::Lrpm,
        Storm {
            jobs,
            restarts: restarts_after - restarts_before,
            window: elapsed,
            cpu_ns: cpu_after.since(&cpu_before),
        },
    );
    lrpm.stop()?;
    Ok(())
}
