//! Graceful shutdown: SIGTERM to the supervisor at t0, until it has exited.
//! Both supervisors exit only once every worker is reaped; the workers are
//! cooperative (SIGTERM ends them at once).

use crate::results::{Metric, Results, Subject};
use crate::scenarios::mass_start::{LrpmFarm, SupervisordFarm};

/// Shuts an lrpm farm down and records how long it took.
pub fn lrpm(farm: LrpmFarm, results: &mut Results) -> anyhow::Result<()> {
    let jobs = farm.jobs.generation.len();
    let took = farm.lrpm.stop()?;
    results
        .times(Metric::Shutdown, Subject::Lrpm, jobs)
        .push(took);
    Ok(())
}

/// Shuts a supervisord farm down and records how long it took.
pub fn supervisord(farm: SupervisordFarm, results: &mut Results) -> anyhow::Result<()> {
    let took = farm.supervisord.stop()?;
    results
        .times(Metric::Shutdown, Subject::Supervisord, farm.jobs)
        .push(took);
    Ok(())
}
