//! `status` latency: a raw round trip over the control socket, on a new
//! connection each time, and the control client's table, as a process run
//! from spawn to exit (its output read through a pipe).

use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::bench::Bench;
use crate::results::{Metric, Results, Subject};
use crate::scenarios::mass_start::{LrpmFarm, PeerFarm};

/// A little more than lrpm keeps the figures of a table (its `MAX_AGE`).
const USAGE_KEPT: Duration = Duration::from_millis(1100);

/// lrpm: `{"cmd":"status"}` over the socket, then `lrpmctl status`, each
/// table with figures read anew.
pub fn lrpm(
    bench: &Bench,
    farm: &LrpmFarm,
    socket_samples: usize,
    table_samples: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let jobs = farm.jobs.generation.len();
    let (listed, _) = farm.lrpm.running()?;
    ensure!(
        listed == jobs,
        "lrpm's status lists {listed} of {jobs} jobs"
    );
    for _ in 0..socket_samples {
        let t0 = Instant::now();
        let line = farm.lrpm.status_line()?;
        let took = t0.elapsed();
        ensure!(line.starts_with(b"{\"ok\":true"), "status refused");
        results
            .times(Metric::StatusSocket, Subject::Lrpm, jobs)
            .push(took);
    }
    for _ in 0..table_samples {
        // lrpm keeps the workers' CPU time and memory it read for a table
        // one second (`usage` in docs/lrpmctl.md): each sample waits that
        // out, so that every table is one whose figures are read anew, as
        // for an operator's first `lrpmctl status`, not one answered from
        // the last sample's figures.
        std::thread::sleep(USAGE_KEPT);
        let took = farm.lrpm.ctl_status(bench)?;
        results
            .times(Metric::StatusTable, Subject::Lrpm, jobs)
            .push(took);
    }
    Ok(())
}

/// A peer: its raw status over its socket when the harness speaks its
/// protocol, then its client's table, which must show every job running.
pub fn peer(
    farm: &PeerFarm,
    socket_samples: usize,
    table_samples: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    for _ in 0..socket_samples {
        let Some(took) = farm.peer.status_raw() else {
            break;
        };
        results
            .times(Metric::StatusSocket, farm.subject, farm.jobs)
            .push(took?);
    }
    for _ in 0..table_samples {
        let (took, running) = farm.peer.status_table()?;
        ensure!(
            running == farm.jobs,
            "{}'s status table shows {running} of {} jobs running",
            farm.subject.name(),
            farm.jobs
        );
        results
            .times(Metric::StatusTable, farm.subject, farm.jobs)
            .push(took);
    }
    Ok(())
}
