//! A change of the job set → its effect, on a running farm: a job is
//! added, each system its own way (lrpm: the jobs file rewritten with one
//! more job; supervisord: a program's section added and `supervisorctl
//! update`; pm2: `pm2 start` of an ecosystem file of that app; circus:
//! `circusctl add --start`; s6: a service directory renamed into the scan
//! directory and `s6-svscanctl -a`), until the new worker's `main`; then
//! removed again (lrpm: the file rewritten without it; the others: their
//! reverse command), until that worker has exited. The clock starts
//! before the first step of the change, so a client's own start-up (pm2's
//! node, circus's python) counts: that is how a change is made with them.

use std::time::Duration;

use anyhow::Context;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use crate::bench::Bench;
use crate::collector::Roster;
use crate::procfs::monotonic_ns;
use crate::results::{Metric, Results, Subject};
use crate::scenarios::mass_start::{LrpmFarm, PeerFarm};

/// How long a system is left alone between a removal and the next
/// addition.
const SETTLE: Duration = Duration::from_millis(20);

/// How long an added job's worker may take to start, and a removed one's
/// to exit.
const TIMEOUT: Duration = Duration::from_secs(30);

/// lrpm: `samples` additions and removals of a job beyond the farm's.
pub fn lrpm(
    bench: &Bench,
    farm: &mut LrpmFarm,
    samples: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let jobs = farm.jobs.generation.len();
    let LrpmFarm {
        lrpm,
        roster,
        jobs: set,
    } = farm;
    let write = |extra: Option<usize>| {
        let mut set = set.clone();
        set.extra = extra;
        lrpm.write_jobs(&set.to_toml(bench))
    };
    measure(
        bench,
        roster,
        Subject::Lrpm,
        jobs,
        samples,
        |id| write(Some(id)),
        |_| write(None),
        results,
    )
}

/// A peer: `samples` additions and removals of a job beyond the farm's.
pub fn peer(
    bench: &Bench,
    farm: &mut PeerFarm,
    samples: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let PeerFarm {
        peer,
        subject,
        roster,
        jobs,
    } = farm;
    let peer = std::cell::RefCell::new(peer);
    measure(
        bench,
        roster,
        *subject,
        *jobs,
        samples,
        |id| peer.borrow_mut().add_job(bench, id),
        |id| peer.borrow_mut().remove_job(id),
        results,
    )
}

/// Adds job `jobs + k` with `add` (which returns its t0) and waits for its
/// worker's `main`, then removes it with `remove` and waits for that
/// worker's exit, for `k` in `0..samples`.
#[allow(clippy::too_many_arguments)]
fn measure(
    bench: &Bench,
    roster: &mut Roster,
    subject: Subject,
    jobs: usize,
    samples: usize,
    mut add: impl FnMut(usize) -> anyhow::Result<u64>,
    mut remove: impl FnMut(usize) -> anyhow::Result<u64>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let name = subject.name();
    for k in 0..samples {
        let id = jobs + k;
        let t0 = add(id).with_context(|| format!("adding job {id} to {name}"))?;
        let hello = roster
            .wait_for(&bench.collector, TIMEOUT, |h| h.id as usize == id)
            .with_context(|| format!("{name} did not start the added job {id}"))?;
        results
            .times(Metric::JobAdded, subject, jobs)
            .push_ns(hello.ns.saturating_sub(t0));
        let raw = Pid::from_raw(hello.pid as i32).context("a worker's pid is positive")?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty())
            .with_context(|| format!("pidfd_open of job {id}'s worker"))?;
        let t0 = remove(id).with_context(|| format!("removing job {id} from {name}"))?;
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        let timeout = Timespec::try_from(TIMEOUT).context("invariant: a small timeout")?;
        let ready = poll(&mut fds, Some(&timeout))?;
        anyhow::ensure!(
            ready == 1,
            "{name} did not stop the removed job {id}'s worker within {TIMEOUT:?}"
        );
        results
            .times(Metric::JobRemoved, subject, jobs)
            .push_ns(monotonic_ns().saturating_sub(t0));
        std::thread::sleep(SETTLE);
    }
    Ok(())
}
