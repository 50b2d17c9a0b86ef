//! `/metrics`: a [`Snapshot`] and the workers' `/proc` as metric families,
//! encoded by prometheus-client.
//!
//! prometheus-client writes OpenMetrics text only; the Prometheus text
//! format (0.0.4), which a scraper gets unless it asks for OpenMetrics,
//! differs from it in what lrpm emits by two things alone, which
//! [`to_prometheus_text`] changes: a counter's `# HELP` and `# TYPE` lines
//! name the sample (`…_total`), and there is no `# EOF`.
//!
//! The workers' memory and CPU time come from their `/proc/PID/stat`, one
//! open and read each, which is most of a scrape's cost at 10,000 jobs.
//! A [`UsageCache`] keeps the figures between scrapes, and a scrape spends
//! at most [`READ_BUDGET`] reading `/proc`: the workers it has no figure
//! for first, then those whose figure is oldest. A scrape of a large farm
//! on a busy machine thus costs a bounded time, and some of its workers'
//! figures are from an earlier scrape (the next ones take them in turn).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lrpm_core::status::{JobState, JobStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::msg::Snapshot;
use crate::usage::Units;
use lrpm_core::status::ProcessUsage as Usage;

/// Every state a job can be in, for `lrpm_job_state` and `lrpm_jobs`
/// (which list each one, 0 included, as Prometheus state sets do).
fn all_states() -> [JobState; 6] {
    // A new state fails to compile here until it is listed.
    let listed = |state: JobState| match state {
        JobState::Starting
        | JobState::Running
        | JobState::Backoff
        | JobState::Stopping
        | JobState::Paused
        | JobState::Waiting => state,
    };
    [
        listed(JobState::Starting),
        listed(JobState::Running),
        listed(JobState::Backoff),
        listed(JobState::Stopping),
        listed(JobState::Paused),
        listed(JobState::Waiting),
    ]
}

/// How long one scrape may spend reading the workers' `/proc/PID/stat`.
pub(crate) const READ_BUDGET: Duration = Duration::from_millis(20);

/// A worker process, as the figures are kept: its pid and when it started
/// (the bits of the status's `started_at`), so that a pid that the kernel
/// gives again to another worker is not taken for the first.
type ProcessKey = (u32, u64);

/// The workers' last figures from `/proc`, kept between scrapes.
#[derive(Debug, Default)]
pub(crate) struct UsageCache {
    figures: HashMap<ProcessKey, (Usage, Instant)>,
}

impl UsageCache {
    /// Reads `/proc` for the processes of `live` (the others are forgotten):
    /// those without a figure first, then the oldest figures, until
    /// `budget` is spent.
    fn refresh(&mut self, live: &[ProcessKey], units: Units, budget: Duration) {
        let wanted: HashSet<ProcessKey> = live.iter().copied().collect();
        self.figures.retain(|key, _| wanted.contains(key));
        // `None` (no figure) sorts first.
        let mut order: Vec<(Option<Instant>, ProcessKey)> = live
            .iter()
            .map(|key| (self.figures.get(key).map(|(_, at)| *at), *key))
            .collect();
        order.sort_unstable();
        let began = Instant::now();
        for (i, (_, key)) in order.into_iter().enumerate() {
            // The clock is read once every 64 processes: a read takes a
            // few microseconds.
            if i % 64 == 0 && i > 0 && began.elapsed() >= budget {
                break;
            }
            match units.usage(key.0) {
                Some(usage) => {
                    self.figures.insert(key, (usage, Instant::now()));
                }
                None => {
                    self.figures.remove(&key);
                }
            }
        }
    }

    fn get(&self, key: &ProcessKey) -> Option<Usage> {
        self.figures.get(key).map(|(usage, _)| *usage)
    }
}

/// A job's live process, as [`UsageCache`] knows it.
fn process_key(job: &JobStatus) -> Option<ProcessKey> {
    Some((job.pid?, job.started_at.unwrap_or_default().to_bits()))
}

/// The collector of one scrape: the snapshot, and what `/proc` said of
/// each job's process and of lrpm's.
#[derive(Debug)]
struct Scrape {
    snapshot: Snapshot,
    /// Per job, in the snapshot's order: its process's usage, if it has a
    /// live one.
    usage: Vec<Option<Usage>>,
    /// lrpm's own process.
    own: ProcessFacts,
}

/// The usual `process_*` metrics of lrpm itself.
#[derive(Debug, Default)]
struct ProcessFacts {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl ProcessFacts {
    fn read(units: Units) -> ProcessFacts {
        let pid = std::process::id();
        let own = units.usage(pid);
        // statm: size and resident, in pages.
        let virtual_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .map(|pages| pages * units.page());
        let open_fds = open_fds();
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        ProcessFacts {
            cpu_seconds: own.map(|u| u.cpu_seconds),
            resident_bytes: own.map(|u| u.rss_bytes),
            virtual_bytes,
            open_fds,
            max_fds,
        }
    }
}

/// How many descriptors lrpm has open: the size that Linux ≥ 6.2 gives
/// `/proc/self/fd` (the count, without listing it), else the directory's
/// entries. Listing it made the kernel build a dentry and an inode for
/// each of a large farm's 13,000 descriptors at every scrape, the largest
/// part of its cost.
fn open_fds() -> Option<u64> {
    match std::fs::metadata("/proc/self/fd") {
        Ok(meta) if meta.len() > 0 => Some(meta.len()),
        _ => std::fs::read_dir("/proc/self/fd")
            .ok()
            // Less the descriptor of the listing itself.
            .map(|dir| (dir.count() as u64).saturating_sub(1)),
    }
}

/// The text of a scrape of `snapshot`: OpenMetrics if `openmetrics`, else
/// the Prometheus text format. Reads `/proc` (for [`READ_BUDGET`] at most,
/// figures kept in `cache`): run it on a blocking thread.
pub(crate) fn encode(snapshot: Snapshot, openmetrics: bool, cache: &Mutex<UsageCache>) -> String {
    let units = Units::get();
    let keys: Vec<Option<ProcessKey>> = snapshot.jobs.iter().map(process_key).collect();
    let usage = {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        let live: Vec<ProcessKey> = keys.iter().flatten().copied().collect();
        cache.refresh(&live, units, READ_BUDGET);
        keys.iter()
            .map(|key| key.and_then(|key| cache.get(&key)))
            .collect()
    };
    let scrape = Scrape {
        snapshot,
        usage,
        own: ProcessFacts::read(units),
    };
    // About 60 bytes a sample, 20 samples a job.
    let mut text = String::with_capacity(4096 + 1200 * scrape.snapshot.jobs.len());
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("invariant: writing to a String cannot fail");
    if openmetrics {
        text
    } else {
        to_prometheus_text(&text)
    }
}

/// The Prometheus text format (0.0.4) of the OpenMetrics text that
/// prometheus-client wrote: counters' `# HELP` and `# TYPE` lines name
/// their `_total` samples, and the `# EOF` line goes.
fn to_prometheus_text(openmetrics: &str) -> String {
    // Only the `# HELP`/`# TYPE` pair of a counter changes: the samples,
    // most of the text, are copied as they are, every run of them between
    // two comment lines at once (a sample line never starts with `#`, and
    // a label value holds no raw newline).
    let counter = |line: &str| line.starts_with("# TYPE ") && line.ends_with(" counter");
    let line_at = |text: &str| text.find('\n').map_or(text.len(), |i| i + 1);
    let mut out = String::with_capacity(openmetrics.len());
    let mut rest = openmetrics;
    while !rest.is_empty() {
        let samples = next_comment(rest);
        out.push_str(&rest[..samples]);
        rest = &rest[samples..];
        if rest.is_empty() {
            break;
        }
        let end = line_at(rest);
        let line = rest[..end].trim_end_matches('\n');
        rest = &rest[end..];
        if line == "# EOF" {
            continue;
        }
        if let Some(help) = line.strip_prefix("# HELP ") {
            // HELP comes right before its family's TYPE.
            let next = rest[..line_at(rest)].trim_end_matches('\n');
            if counter(next) {
                let (name, help) = help.split_once(' ').unwrap_or((help, ""));
                for part in ["# HELP ", name, "_total ", help, "\n"] {
                    out.push_str(part);
                }
                continue;
            }
        } else if counter(line) {
            let name = &line["# TYPE ".len()..line.len() - " counter".len()];
            for part in ["# TYPE ", name, "_total counter\n"] {
                out.push_str(part);
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Where the next comment line of `text` starts (`#` at the start of a
/// line), or its length. `#` is looked for with `memchr` (`str::find` of a
/// char), faster than a search for `"\n#"`, which walks the text byte by
/// byte; a `#` inside a line (an instance's id, `job="w#0"`) is skipped.
fn next_comment(text: &str) -> usize {
    let mut from = 0;
    while let Some(i) = text[from..].find('#') {
        let at = from + i;
        if at == 0 || text.as_bytes()[at - 1] == b'\n' {
            return at;
        }
        from = at + 1;
    }
    text.len()
}

/// One metric family: its samples come from `value` for each job that has
/// one.
fn per_job<'a, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    jobs: impl Iterator<Item = (&'a str, Option<V>)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (id, value) in jobs {
        if let Some(value) = value {
            family.encode_family(&[("job", id)])?.encode_gauge(&value)?;
        }
    }
    Ok(())
}

/// A counter family, one sample per job.
fn per_job_counter<'a, V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    jobs: impl Iterator<Item = (&'a str, Option<V>)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (id, value) in jobs {
        if let Some(value) = value {
            family
                .encode_family(&[("job", id)])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&value, None)?;
        }
    }
    Ok(())
}

/// One gauge without labels, if it has a value.
fn single<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: Option<V>,
) -> fmt::Result {
    if let Some(value) = value {
        encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&value)?;
    }
    Ok(())
}

/// A job's last exit as a number: its exit code, or 128 + the signal that
/// killed it (as a shell's `$?`); none if it never ended or never started.
fn exit_code(job: &JobStatus) -> Option<i64> {
    let exit = &job.last_exit.as_ref()?.status;
    match (exit.code, exit.signal) {
        (Some(code), _) => Some(i64::from(code)),
        (None, Some(signal)) => Some(128 + i64::from(signal)),
        (None, None) => None,
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let jobs = &self.snapshot.jobs;
        let e = &mut encoder;
        // Each family walks the jobs; the label is the job id.
        let each = |f: fn(&JobStatus, Option<Usage>) -> Option<f64>| {
            jobs.iter()
                .zip(&self.usage)
                .map(move |(job, usage)| (job.id.as_str(), f(job, *usage)))
        };
        per_job(
            e,
            "lrpm_job_up",
            "Whether the job has a live process (1) or not (0).",
            jobs.iter()
                .map(|j| (j.id.as_str(), Some(i64::from(j.pid.is_some())))),
        )?;
        {
            let mut family = e.encode_descriptor(
                "lrpm_job_state",
                "The job's state: 1 for the state it is in, 0 for the others.",
                None,
                MetricType::Gauge,
            )?;
            for job in jobs {
                for state in all_states() {
                    family
                        .encode_family(&[("job", job.id.as_str()), ("state", state.as_str())])?
                        .encode_gauge(&i64::from(job.state == state))?;
                }
            }
        }
        per_job_counter(
            e,
            "lrpm_job_restarts",
            "How many times the job was started again after its first start.",
            jobs.iter()
                .map(|j| (j.id.as_str(), Some(u64::from(j.restarts)))),
        )?;
        per_job_counter(
            e,
            "lrpm_job_crashes",
            "How many of the job's processes crashed (ended in a way lrpm did not ask for, or were stopped as failed by a watchdog or health check).",
            jobs.iter()
                .map(|j| (j.id.as_str(), Some(u64::from(j.crashes)))),
        )?;
        per_job_counter(
            e,
            "lrpm_job_oom_kills",
            "How many of the job's processes the kernel's OOM killer ended.",
            jobs.iter()
                .map(|j| (j.id.as_str(), Some(u64::from(j.oom_kills)))),
        )?;
        per_job(
            e,
            "lrpm_job_start_time_seconds",
            "When the job's current process started, in seconds since the Unix epoch.",
            each(|j, _| j.started_at),
        )?;
        per_job(
            e,
            "lrpm_job_last_exit_code",
            "How the job's previous process ended: its exit code, or 128 + the signal that killed it.",
            jobs.iter().map(|j| (j.id.as_str(), exit_code(j))),
        )?;
        per_job(
            e,
            "lrpm_job_backoff_seconds",
            "The delay that follows the job's next short run before it starts again.",
            each(|j, _| Some(j.backoff_seconds)),
        )?;
        per_job(
            e,
            "lrpm_job_memory_bytes",
            "Resident memory of the job's main process.",
            jobs.iter()
                .zip(&self.usage)
                .map(|(j, u)| (j.id.as_str(), u.map(|u| u.rss_bytes))),
        )?;
        per_job_counter(
            e,
            "lrpm_job_cpu_seconds",
            "CPU time (user and system) of the job's current main process.",
            each(|_, u| u.map(|u| u.cpu_seconds)),
        )?;
        {
            let mut family = e.encode_descriptor(
                "lrpm_jobs",
                "How many jobs are in each state.",
                None,
                MetricType::Gauge,
            )?;
            for state in all_states() {
                let n = jobs.iter().filter(|j| j.state == state).count() as u64;
                family
                    .encode_family(&[("state", state.as_str())])?
                    .encode_gauge(&n)?;
            }
        }
        {
            let loads = self.snapshot.loads;
            let mut family = e.encode_descriptor(
                "lrpm_source_loads",
                "Attempts to load the configuration source, by result: loaded (a new configuration), unchanged, failed.",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [
                ("loaded", loads.loaded),
                ("unchanged", loads.unchanged),
                ("failed", loads.failed),
            ] {
                family
                    .encode_family(&[("result", result)])?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
            }
        }
        single(
            e,
            "lrpm_source_last_success_timestamp_seconds",
            "When a configuration was last loaded from the source, in seconds since the Unix epoch.",
            self.snapshot.source.last_load_at,
        )?;
        if let Some(cluster) = &self.snapshot.cluster {
            single(
                e,
                "lrpm_cluster_members",
                "How many nodes the cluster has, this one included.",
                Some(cluster.members.len() as u64),
            )?;
            single(
                e,
                "lrpm_cluster_lease_remaining_seconds",
                "How long this node's etcd lease has left at most.",
                cluster.lease_left,
            )?;
        }
        let own = &self.own;
        if let Some(cpu) = own.cpu_seconds {
            e.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&cpu, None)?;
        }
        single(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            own.resident_bytes,
        )?;
        single(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            own.virtual_bytes,
        )?;
        single(
            e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Some(self.snapshot.started_at),
        )?;
        single(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            own.open_fds,
        )?;
        single(
            e,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            own.max_fds,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_reads_new_processes_first_then_the_oldest_and_forgets_the_gone() {
        let units = Units::get();
        let me = (std::process::id(), 1.0f64.to_bits());
        // A pid that no process has (above the kernel's pid_max).
        let gone = (u32::MAX, 2.0f64.to_bits());
        let mut cache = UsageCache::default();
        cache.refresh(&[me, gone], units, READ_BUDGET);
        assert!(cache.get(&me).is_some());
        assert!(cache.get(&gone).is_none());
        let first = cache.figures[&me].1;
        // No budget: the first process is still read (the clock is looked
        // at every 64), and the figure is newer.
        cache.refresh(&[me], units, Duration::ZERO);
        assert!(cache.figures[&me].1 > first);
        // The same pid started at another time is another process.
        let again = (me.0, 3.0f64.to_bits());
        cache.refresh(&[again], units, READ_BUDGET);
        assert!(cache.get(&me).is_none());
        assert!(cache.get(&again).is_some());
    }

    #[test]
    fn a_spent_budget_leaves_the_rest_for_the_next_scrape_oldest_first() {
        let units = Units::get();
        let keys: Vec<ProcessKey> = (0..200u64).map(|i| (std::process::id(), i)).collect();
        let mut cache = UsageCache::default();
        // Nothing is left of the budget: one round of 64 reads.
        cache.refresh(&keys, units, Duration::ZERO);
        assert_eq!(cache.figures.len(), 64);
        cache.refresh(&keys, units, Duration::ZERO);
        assert_eq!(cache.figures.len(), 128, "the unread ones are read next");
        cache.refresh(&keys, units, READ_BUDGET);
        assert_eq!(cache.figures.len(), 200);
    }

    #[test]
    fn open_fds_counts_lrpms_descriptors() {
        // Other tests of this process (`cargo test` runs them on threads)
        // open and close descriptors meanwhile: one clean round suffices.
        let tracks = (0..100).any(|_| {
            let before = open_fds().expect("a count");
            let extra = std::fs::File::open("/proc/self/stat").expect("open");
            let during = open_fds();
            drop(extra);
            during == Some(before + 1) && open_fds() == Some(before)
        });
        assert!(
            tracks,
            "the count never followed one descriptor opened and closed"
        );
    }

    #[test]
    fn counters_are_renamed_and_eof_dropped_for_prometheus_text() {
        let om = "# HELP a_things Things.\n# TYPE a_things counter\na_things_total{job=\"x\"} 3\n\
                  a_things_total{job=\"w#0\"} 4\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\n\
             a_things_total{job=\"x\"} 3\na_things_total{job=\"w#0\"} 4\n\
             # HELP b Gauge.\n# TYPE b gauge\nb 1\n"
        );
    }
}
