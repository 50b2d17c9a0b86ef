//! Graceful shutdown: SIGTERM to the supervisor at t0, until it has exited
//! and every worker with it. lrpm exits only once every worker is reaped;
//! for a peer, whose workers may outlive it for a moment (s6's services
//! are stopped by their own s6-supervise), the harness also waits for every
//! worker through a pidfd opened before t0. The workers are cooperative
//! (SIGTERM, or pm2's SIGINT, ends them at once).

use std::os::fd::OwnedFd;
use std::time::Instant;

use anyhow::Context;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::results::{Metric, Results, Subject};
use crate::scenarios::mass_start::{LrpmFarm, PeerFarm};

/// Shuts an lrpm farm down and records how long it took.
pub fn lrpm(farm: LrpmFarm, results: &mut Results) -> anyhow::Result<()> {
    let jobs = farm.jobs.generation.len();
    let took = farm.lrpm.stop()?;
    results
        .times(Metric::Shutdown, Subject::Lrpm, jobs)
        .push(took);
    Ok(())
}

/// Shuts a peer's farm down and records how long it took, until the
/// daemon and every worker have exited.
pub fn peer(farm: PeerFarm, results: &mut Results) -> anyhow::Result<()> {
    let workers: Vec<OwnedFd> = farm
        .roster
        .pids()
        .filter_map(|pid| pidfd_open(Pid::from_raw(pid as i32)?, PidfdFlags::empty()).ok())
        .collect();
    let name = farm.subject.name();
    let t0 = Instant::now();
    farm.peer
        .stop()
        .with_context(|| format!("stopping {name}"))?;
    for pidfd in &workers {
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        poll(&mut fds, None).with_context(|| format!("waiting for {name}'s workers"))?;
    }
    results
        .times(Metric::Shutdown, farm.subject, farm.jobs)
        .push(t0.elapsed());
    Ok(())
}
