//! `status` latency: a raw round trip over the control socket, on a new
//! connection each time, and the control client's table, as a process run
//! from spawn to exit (its output read through a pipe).

use std::time::Instant;

use anyhow::ensure;

use crate::bench::Bench;
use crate::results::{Metric, Results, Subject};
use crate::scenarios::mass_start::{LrpmFarm, SupervisordFarm};

/// lrpm: `{"cmd":"status"}` over the socket, then `lrpmctl status`.
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
        let took = farm.lrpm.ctl_status(bench)?;
        results
            .times(Metric::StatusTable, Subject::Lrpm, jobs)
            .push(took);
    }
    Ok(())
}

/// supervisord: XML-RPC `getAllProcessInfo` over the socket, then
/// `supervisorctl status`.
pub fn supervisord(
    farm: &SupervisordFarm,
    socket_samples: usize,
    table_samples: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    for _ in 0..socket_samples {
        let t0 = Instant::now();
        farm.supervisord.xmlrpc_all_info()?;
        results
            .times(Metric::StatusSocket, Subject::Supervisord, farm.jobs)
            .push(t0.elapsed());
    }
    for _ in 0..table_samples {
        let (took, running) = farm.supervisord.ctl_status()?;
        ensure!(
            running == farm.jobs,
            "supervisorctl shows {running} of {} programs RUNNING",
            farm.jobs
        );
        results
            .times(Metric::StatusTable, Subject::Supervisord, farm.jobs)
            .push(took);
    }
    Ok(())
}
