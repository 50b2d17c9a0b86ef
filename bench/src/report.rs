//! The Markdown report: the run, the targets of issue 7, the figures with
//! their ratios to the floor and to supervisord, and the method.

use std::fmt::Write as _;
use std::time::Duration;

use crate::machine::Machine;
use crate::results::{Metric, Results, Subject};
use crate::stats::Ms;

/// What the report says about the run itself.
#[derive(Debug, Clone)]
pub struct Run {
    /// The command that produced it.
    pub command: String,
    /// Quick mode or not.
    pub quick: bool,
    /// When it started.
    pub date: String,
    /// The machine and versions.
    pub machine: Machine,
    /// `supervisord --version`, when it was measured.
    pub supervisord: Option<String>,
    /// The load averages before and after.
    pub load_before: String,
    /// The load averages after the run.
    pub load_after: String,
    /// The 1-minute load average before the run.
    pub load1_before: f64,
    /// How long the run took.
    pub duration: Duration,
}

/// Stands for the size of the big farm in [`ROWS`]: 10,000 jobs, or the
/// largest farm that fits the machine's descriptor limit.
const BIG: usize = usize::MAX;

/// One row of the main table: an lrpm figure, with what it is compared to.
struct Row {
    label: &'static str,
    metric: Metric,
    jobs: usize,
    /// The floor figure it is compared to, and its name.
    floor: Option<(Metric, usize, &'static str)>,
}

const ROWS: &[Row] = &[
    Row {
        label: "crash → restart",
        metric: Metric::Restart,
        jobs: 1,
        floor: Some((Metric::ExitReplace, 1, "exit → replacement")),
    },
    Row {
        label: "crash → restart",
        metric: Metric::Restart,
        jobs: 1000,
        floor: Some((Metric::ExitReplace, 1, "exit → replacement")),
    },
    Row {
        label: "crash → restart",
        metric: Metric::Restart,
        jobs: BIG,
        floor: Some((Metric::ExitReplace, 1, "exit → replacement")),
    },
    Row {
        label: "config change → effect",
        metric: Metric::ConfigPush,
        jobs: 1000,
        floor: Some((Metric::ExitReplace, 1, "exit → replacement")),
    },
    Row {
        label: "mass start",
        metric: Metric::MassStart,
        jobs: 1000,
        floor: Some((Metric::MassStart, 1000, "sequential spawns")),
    },
    Row {
        label: "mass start, `--cgroup off` (no cgroup per run)",
        metric: Metric::MassStartUncontained,
        jobs: 1000,
        floor: Some((Metric::MassStart, 1000, "sequential spawns")),
    },
    Row {
        label: "mass start",
        metric: Metric::MassStart,
        jobs: BIG,
        floor: Some((Metric::MassStart, BIG, "sequential spawns")),
    },
    Row {
        label: "shutdown",
        metric: Metric::Shutdown,
        jobs: 1000,
        floor: Some((Metric::Shutdown, 1000, "SIGTERM all, reap all")),
    },
    Row {
        label: "shutdown",
        metric: Metric::Shutdown,
        jobs: BIG,
        floor: Some((Metric::Shutdown, BIG, "SIGTERM all, reap all")),
    },
    Row {
        label: "status, raw over the socket",
        metric: Metric::StatusSocket,
        jobs: 1000,
        floor: None,
    },
    Row {
        label: "status, raw over the socket",
        metric: Metric::StatusSocket,
        jobs: BIG,
        floor: None,
    },
    Row {
        label: "status table (`lrpmctl status`)",
        metric: Metric::StatusTable,
        jobs: 1000,
        floor: None,
    },
    Row {
        label: "status table (`lrpmctl status`)",
        metric: Metric::StatusTable,
        jobs: BIG,
        floor: None,
    },
];

/// The label of a floor or supervisord figure in their own tables.
fn label(metric: Metric, subject: Subject) -> &'static str {
    match (metric, subject) {
        (Metric::SpawnTrue, _) => "fork+exec+wait of /bin/true",
        (Metric::SpawnWorker, _) => "fork+exec+wait of the tiny worker",
        (Metric::ExitWake, _) => "exit → parent woken (pidfd)",
        (Metric::ExitReplace, _) => {
            "exit → replacement's main (kill, pidfd, reap, spawn), 5 ms apart"
        }
        (Metric::ExitReplaceBackToBack, _) => "the same, back to back",
        (Metric::MassStart, Subject::Floor) => "sequential spawns → all mains ran",
        (Metric::MassStartTwoThreads, _) => "the same on two threads, half each",
        (Metric::Shutdown, Subject::Floor) => "SIGTERM to all → all reaped",
        (Metric::MassStart, Subject::Supervisord) => "start → all mains ran",
        (Metric::AllRunning, _) => "start → all RUNNING (`supervisorctl status`, polled)",
        (Metric::Restart, _) => "crash → restart",
        (Metric::ConfigPush, _) => "config change → effect",
        (Metric::MassStart, _) => "mass start",
        (Metric::MassStartUncontained, _) => "mass start, `--cgroup off`",
        (Metric::Shutdown, _) => "shutdown",
        (Metric::StatusSocket, Subject::Supervisord) => "status, raw XML-RPC over the socket",
        (Metric::StatusSocket, _) => "status, raw over the socket",
        (Metric::StatusTable, Subject::Supervisord) => "status table (`supervisorctl status`)",
        (Metric::StatusTable, _) => "status table",
        (Metric::PgNotify, _) => "row UPDATE → NOTIFY → new worker's main",
        (Metric::PgNotifyFloor, _) => "row UPDATE → NOTIFY at a bare LISTEN client",
    }
}

/// `a / b` as `1.23×`, or `—`.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a > 0.0 => {
            let r = a / b;
            if r >= 10.0 {
                format!("{r:.0}×")
            } else if r >= 0.1 {
                format!("{r:.2}×")
            } else {
                // Two significant digits: 0.0031×.
                let decimals = (-r.log10()).ceil() as usize + 1;
                format!("{r:.decimals$}×")
            }
        }
        _ => "—".into(),
    }
}

/// A job count with a thousands separator: `10,000`.
pub fn jobs(n: usize) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// Renders the whole report.
pub fn render(run: &Run, results: &Results) -> String {
    let mut out = String::new();
    header(&mut out, run);
    targets(&mut out, results);
    main_table(&mut out, results);
    resources(&mut out, results);
    storm(&mut out, results);
    postgres(&mut out, run, results);
    subject_table(&mut out, results, Subject::Floor, "The floor");
    subject_table(&mut out, results, Subject::Supervisord, "supervisord");
    if !results.notes().is_empty() {
        out.push_str("\n## Notes on this run\n\n");
        for note in results.notes() {
            let _ = writeln!(out, "- {note}");
        }
    }
    out.push_str(METHOD);
    out
}

fn header(out: &mut String, run: &Run) {
    let m = &run.machine;
    let _ = write!(
        out,
        "# Benchmarks\n\n\
         <!-- Generated by the benchmark suite (bench/, `bench/run`); \
         change bench/src/report.rs, not this file. -->\n\n\
         lrpm measured against the physical floor of the machine (the harness \
         itself doing the least possible work) and against supervisord, in \
         one run. Regenerate this file with:\n\n\
         ```sh\n\
         bench/run            # the full run (4 to 5 minutes here); writes docs/benchmarks.md\n\
         bench/run --quick    # a smoke test: fewer samples, 1,000 jobs at most;\n\
         \x20                    # writes target/benchmarks-quick.md\n\
         ```\n\n\
         `bench/run` builds lrpm and the suite in release mode and runs \
         `target/release/lrpm-bench` with its arguments (`--help` lists them).\n\n\
         ## This run\n\n\
         | | |\n|---|---|\n\
         | command | `{command}` |\n\
         | mode | {mode} |\n\
         | date | {date} |\n\
         | machine | {nproc} CPUs (`nproc`), {cpu}, {mem:.0} GiB |\n\
         | kernel | {kernel} |\n\
         | rustc | {rustc} |\n\
         | lrpm | {lrpm} |\n\
         | supervisord | {sv} |\n\
         | load average (1, 5, 15 min) | before: {lb}; after, with the suite's own work: {la} |\n\
         | duration | {dur} |\n",
        command = run.command,
        mode = if run.quick { "quick" } else { "full" },
        date = run.date,
        nproc = m.nproc,
        cpu = m.cpu,
        mem = m.memory_gib,
        kernel = m.kernel,
        rustc = m.rustc,
        lrpm = m.lrpm,
        sv = run.supervisord.as_deref().unwrap_or("not measured"),
        lb = run.load_before,
        la = run.load_after,
        dur = format_args!(
            "{} min {} s",
            run.duration.as_secs() / 60,
            run.duration.as_secs() % 60
        ),
    );
    // The load at the end counts the suite's own processes (thousands of
    // workers started and stopped in the last minutes): only the load
    // before the run tells of other work.
    if run.load1_before >= 0.5 {
        let _ = write!(
            out,
            "\n**The machine was busy** (1-minute load {:.2} at the start; the suite \
             asks for less than 0.5): other work competed for the CPUs, so these \
             figures are noisier and slower than on a quiet machine. The ratios to \
             the floor, measured in the same run, are the more robust figures.\n",
            run.load1_before
        );
    }
    if run.quick {
        out.push_str(
            "\n**Quick mode**: few samples, 1,000 jobs at most. These figures are a \
             smoke test, not a measurement.\n",
        );
    }
}

fn targets(out: &mut String, results: &Results) {
    out.push_str("\n## Targets (issue 7)\n\n| target | measured | verdict |\n|---|---|---|\n");
    let lrpm = Subject::Lrpm;
    let floor_replace = results.median(Metric::ExitReplace, Subject::Floor, 1);

    let restart = results.get(Metric::Restart, lrpm, 1000);
    let (median, p99) = (
        restart.and_then(|s| s.median()),
        restart.and_then(|s| s.p99()),
    );
    let met = match (median, p99, floor_replace) {
        (Some(m), Some(p), Some(f)) => Some(m <= 2.0 * f && p <= 10.0),
        _ => None,
    };
    let back_to_back = results.median(Metric::ExitReplaceBackToBack, Subject::Floor, 1);
    let _ = writeln!(
        out,
        "| crash → restart at 1,000 jobs ≤ 2× the floor's exit → replacement, p99 ≤ 10 ms \
         | median {} = {} the floor's {} (5 ms apart, as lrpm's crashes; {} its {} back to \
         back); p99 {} | {} |",
        Ms(median),
        ratio(median, floor_replace),
        Ms(floor_replace),
        ratio(median, back_to_back),
        Ms(back_to_back),
        Ms(p99),
        verdict(met)
    );

    let push = results.get(Metric::ConfigPush, lrpm, 1000);
    let median = push.and_then(|s| s.median());
    let _ = writeln!(
        out,
        "| config change → effect at 1,000 jobs ≤ 20 ms | median {}; p95 {}; p99 {} | {} |",
        Ms(median),
        Ms(push.and_then(|s| s.p95())),
        Ms(push.and_then(|s| s.p99())),
        verdict(median.map(|m| m <= 20.0))
    );

    let start = results.median(Metric::MassStart, lrpm, 1000);
    let floor_start = results.median(Metric::MassStart, Subject::Floor, 1000);
    let met = match (start, floor_start) {
        (Some(s), Some(f)) => Some(s <= 1.5 * f),
        _ => None,
    };
    let two_threads = results.median(Metric::MassStartTwoThreads, Subject::Floor, 1000);
    let _ = writeln!(
        out,
        "| 1,000 jobs all running ≤ 1.5× the floor's 1,000 sequential spawns \
         | median {} = {} the floor's {} ({} its {} on two threads, as lrpm spawns) | {} |",
        Ms(start),
        ratio(start, floor_start),
        Ms(floor_start),
        ratio(start, two_threads),
        Ms(two_threads),
        verdict(met)
    );

    // The 10,000-job targets, or what was measured instead when 10,000
    // jobs do not fit this machine's descriptor limit.
    let big = results.big_farm();
    let at_big = |what: String| match big {
        Some(10_000) | None => what,
        Some(n) => format!(
            "10,000 jobs do not fit here (see the notes); at {}: {what}",
            jobs(n)
        ),
    };
    let big_verdict = |met: Option<bool>| match big {
        Some(10_000) => verdict(met),
        Some(_) => "not measurable here",
        None => verdict(None),
    };
    let rest = big.and_then(|n| results.rest(lrpm, n));
    let _ = writeln!(
        out,
        "| 10,000 jobs: supervisor RSS ≤ 64 MiB (lrpm + output hubs) | {} | {} |",
        at_big(rest.map_or("—".into(), |r| format!(
            "{} in {} processes",
            mib(r.rss_kib),
            r.processes
        ))),
        big_verdict(rest.map(|r| r.rss_kib <= 64 * 1024))
    );
    let _ = writeln!(
        out,
        "| 10,000 jobs: supervisor CPU at rest ≤ 0.1 % | {} | {} |",
        at_big(rest.map_or("—".into(), |r| format!(
            "{:.3} % over {} s",
            r.cpu_percent,
            r.window.as_secs()
        ))),
        big_verdict(rest.map(|r| r.cpu_percent <= 0.1))
    );

    let shutdown = results.get(Metric::Shutdown, lrpm, 1000);
    let median = shutdown.and_then(|s| s.median());
    let _ = writeln!(
        out,
        "| shutdown of 1,000 cooperative workers ≤ 1 s | median {}; max {} | {} |",
        Ms(median),
        Ms(shutdown.and_then(|s| s.quantile(1.0))),
        verdict(median.map(|m| m <= 1000.0))
    );

    let status = big.and_then(|n| results.get(Metric::StatusSocket, lrpm, n));
    let median = status.and_then(|s| s.median());
    let _ = writeln!(
        out,
        "| `status` of 10,000 jobs over the socket ≤ 50 ms | {} | {} |",
        at_big(format!(
            "median {}; p99 {}",
            Ms(median),
            Ms(status.and_then(|s| s.p99()))
        )),
        big_verdict(median.map(|m| m <= 50.0))
    );
}

fn main_table(out: &mut String, results: &Results) {
    out.push_str(
        "\n## lrpm, against the floor and supervisord\n\n\
         Latencies; the ratios are of medians (lower is better).\n\n\
         | scenario | jobs | n | median | p95 | p99 | floor | × floor | supervisord | × supervisord |\n\
         |---|--:|--:|--:|--:|--:|---|--:|--:|--:|\n",
    );
    let size = |n: usize| {
        if n == BIG {
            results.big_farm().unwrap_or(10_000)
        } else {
            n
        }
    };
    for row in ROWS {
        let n = size(row.jobs);
        let Some(s) = results.get(row.metric, Subject::Lrpm, n) else {
            continue;
        };
        let median = s.median();
        let (floor_text, floor_ratio) = match row.floor {
            Some((metric, jobs, name)) => {
                let f = results.median(metric, Subject::Floor, size(jobs));
                (
                    f.map_or("—".into(), |f| format!("{} ({name})", Ms(Some(f)))),
                    ratio(median, f),
                )
            }
            None => ("—".into(), "—".into()),
        };
        let sv = results.median(row.metric, Subject::Supervisord, n);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.label,
            jobs(n),
            s.len(),
            Ms(median),
            Ms(s.p95()),
            Ms(s.p99()),
            floor_text,
            floor_ratio,
            Ms(sv),
            ratio(median, sv),
        );
    }
}

fn resources(out: &mut String, results: &Results) {
    out.push_str(
        "\n## The supervisor at rest, after a mass start\n\n\
         RSS, peak RSS and CPU are summed over the supervisor's processes: lrpm \
         and its output hubs (the processes that forward the output of workers \
         beyond half of lrpm's descriptor limit), whose number is given; the \
         open descriptors are lrpm's own.\n\n\
         | supervisor | jobs | processes | RSS (VmRSS) | peak RSS (VmHWM, sum of peaks) | CPU at rest (% of one core) | window | open descriptors |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for (subject, n, rest) in results.rests() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.3} % | {:.0} s | {} |",
            subject.name(),
            jobs(n),
            rest.processes,
            mib(rest.rss_kib),
            mib(rest.hwm_kib),
            rest.cpu_percent,
            rest.window.as_secs_f64(),
            rest.fds
        );
    }
}

fn storm(out: &mut String, results: &Results) {
    let Some(storm) = results.storm(Subject::Lrpm) else {
        return;
    };
    // The floor restarts one worker after the other as fast as it can:
    // one fork+exec+wait of the tiny worker per restart.
    let floor_rate = results
        .get(Metric::SpawnWorker, Subject::Floor, 1)
        .and_then(|s| s.mean())
        .map(|ms| 1000.0 / ms);
    let _ = write!(
        out,
        "\n## Crash storm\n\n\
         Every one of {} jobs exits as soon as it starts and is restarted at once \
         (higher rates are better).\n\n\
         | | restarts per second | supervisor CPU per restart | supervisor CPU use | window |\n\
         |---|--:|--:|--:|--:|\n\
         | lrpm | {:.0} | {:.3} ms | {:.0} % of one core | {:.1} s |\n\
         | floor (one spawn+wait after the other) | {} | — | — | — |\n\
         | lrpm ÷ floor | {} | | | |\n",
        storm.jobs,
        storm.rate(),
        storm.cpu_per_restart_ms(),
        storm.cpu_percent(),
        storm.window.as_secs_f64(),
        floor_rate.map_or("—".into(), |r| format!("{r:.0}")),
        ratio(Some(storm.rate()), floor_rate),
    );
}

fn postgres(out: &mut String, run: &Run, results: &Results) {
    let floor_notify = results.get(Metric::PgNotifyFloor, Subject::Floor, 1);
    let replace = results.median(Metric::ExitReplace, Subject::Floor, 1);
    let floor = match (floor_notify.and_then(|s| s.median()), replace) {
        (Some(n), Some(r)) => Some(n + r),
        _ => None,
    };
    let mut rows = String::new();
    for n in crate::scenarios::pg_notify::FARMS {
        let Some(s) = results.get(Metric::PgNotify, Subject::Lrpm, n) else {
            continue;
        };
        let _ = writeln!(
            rows,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            label(Metric::PgNotify, Subject::Lrpm),
            jobs(n),
            s.len(),
            Ms(s.median()),
            Ms(s.p95()),
            Ms(s.p99()),
            Ms(floor),
            ratio(s.median(), floor),
        );
    }
    if rows.is_empty() && floor_notify.is_none() {
        return;
    }
    let at_1000 = results.median(Metric::PgNotify, Subject::Lrpm, 1000);
    let _ = write!(
        out,
        "\n## The postgres source (issue 14)\n\n\
         Measured by `{command}` on {date}: one job's row UPDATEd in a PostgreSQL 15 \
         table whose statement-level trigger NOTIFYs lrpm's channel (docs/sources.md), \
         until the job's new worker's `main`. The floor is the same UPDATE until a bare \
         LISTEN client of the harness has the notification, plus the floor's exit → \
         replacement (kill, reap, spawn → `main`).\n\n\
         | target | measured | verdict |\n|---|---|---|\n\
         | NOTIFY → worker `main` at 1,000 jobs ≤ 10 ms median | median {m} | {v} |\n\n\
         | scenario | jobs | n | median | p95 | p99 | floor | × floor |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|\n{rows}",
        command = run.command,
        date = run.date,
        m = Ms(at_1000),
        v = verdict(at_1000.map(|m| m <= 10.0)),
    );
    if let Some(s) = floor_notify {
        let _ = writeln!(
            out,
            "| {} (floor) | 1 | {} | {} | {} | {} | — | — |",
            label(Metric::PgNotifyFloor, Subject::Floor),
            s.len(),
            Ms(s.median()),
            Ms(s.p95()),
            Ms(s.p99()),
        );
    }
    if let Some(r) = replace {
        let _ = writeln!(
            out,
            "| {} (floor) | 1 | | {} | | | — | — |",
            label(Metric::ExitReplace, Subject::Floor),
            Ms(Some(r)),
        );
    }
}

fn subject_table(out: &mut String, results: &Results, subject: Subject, title: &str) {
    let metrics = [
        Metric::SpawnTrue,
        Metric::SpawnWorker,
        Metric::ExitWake,
        Metric::ExitReplace,
        Metric::ExitReplaceBackToBack,
        Metric::Restart,
        Metric::MassStart,
        Metric::MassStartTwoThreads,
        Metric::AllRunning,
        Metric::Shutdown,
        Metric::StatusSocket,
        Metric::StatusTable,
    ];
    let mut rows = String::new();
    for metric in metrics {
        for n in [1, 1000, results.big_farm().unwrap_or(10_000)] {
            let Some(s) = results.get(metric, subject, n) else {
                continue;
            };
            let _ = writeln!(
                rows,
                "| {} | {} | {} | {} | {} | {} |",
                label(metric, subject),
                jobs(n),
                s.len(),
                Ms(s.median()),
                Ms(s.p95()),
                Ms(s.p99())
            );
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "\n## {title}\n\n| measurement | jobs | n | median | p95 | p99 |\n|---|--:|--:|--:|--:|--:|\n{rows}"
    );
}

const METHOD: &str = r#"
## Method

**The worker.** Every scenario supervises the same tiny compiled worker
(`bench/src/bin/worker.rs`, std only). The first thing its `main` does is
read `CLOCK_MONOTONIC`, a system-wide clock; it then sends `ID PID NS` in
one datagram to a Unix datagram socket the harness owns, and sleeps in
`pause()`. SIGTERM keeps its default action, so it stops at once when asked
(a cooperative worker). A latency is the worker's `NS` minus the harness's
own `CLOCK_MONOTONIC` reading at the event, so it runs to the replacement's
`main`, not to the moment the harness hears about it.

**lrpm** runs as `lrpm --socket S jobs.toml`, from a copy of
`target/release/lrpm`, with its log written to a file. Each job is
`command = [worker, socket, id, "pause"]`, `shortRunTimeSeconds = 0` (no run
is too short, so a restart is never delayed by backoff) and an
`env = { BENCH_GENERATION = "n" }` that the configuration-change scenario
bumps. lrpm starts on an empty jobs file; the jobs are then written by
renaming a complete file into place, as a careful writer does.

- *Crash → restart*: a random worker, picked by a seeded generator, gets
  SIGKILL (through a pidfd) at t0; the figure runs to its replacement's
  `main`. lrpm is left alone 5 ms between crashes.
- *Config change → effect*: one job's `env` changes; t0 is just before the
  jobs file is written; the figure runs to that job's new worker's `main`.
  lrpm has to notice the rename (inotify), read, parse and diff the whole
  file, stop the old worker (SIGTERM) and reap it, and spawn the new one.
- *Mass start*: t0 just before the jobs file is written; the figure runs to
  the last worker's `main`. Each farm is started anew (the `n` column),
  and each is also shut down, which gives the shutdown samples. The
  1,000-job start is also run with `--cgroup off` (a subreaper instead of a
  cgroup per run), to show what the containment costs.
- *At rest*: one second after a mass start, lrpm's CPU time is the sum of
  `/proc/PID/task/*/schedstat` (exact nanoseconds, not 10 ms ticks) over the
  window; its memory is `VmRSS` and `VmHWM` from `/proc/PID/status`.
  For lrpm both are summed over lrpm and its output hubs (children running
  `__lrpm-output-hub`, which forward the output of the workers spawned
  beyond half of lrpm's descriptor limit): every process of the supervisor
  counts, including for the 64 MiB target. The peak is a sum of peaks.
- *Shutdown*: SIGTERM to lrpm at t0, until it has exited (it exits once
  every worker is reaped).
- *Status*: one `{"cmd":"status"}` line and its answer, on a new
  connection each time; and `lrpmctl --socket S status`, its table read
  from a pipe, timed from spawn to exit.
- *Crash storm*: workers that exit at once (mode `true`), restarted at once;
  after a one-second warm-up, the sum of the jobs' `restarts` counters and
  lrpm's CPU time are read at both ends of the window.

**The floor** is the harness doing the least possible work with the same
worker: `std::process::Command` with no hooks, so std uses `posix_spawn`
(vfork + exec), output to /dev/null. *fork+exec+wait*: one child after the
other. *Exit → wake*: SIGKILL a child at t0, `poll()` its pidfd until it is
readable. *Exit → replacement*: the same, then reap it, spawn the next
worker and take its `main`: a supervisor's restart with nothing else to do.
Its samples are 5 ms apart, as lrpm's crashes are: on this kind of machine
(a VM) what a crash costs depends on how long the CPUs were idle before it
(caches, the host's scheduling), and the ratio compares crashes that meet
the machine in the same state. The same loop back to back, each crash as
soon as the last replacement reported, is reported too.
*Sequential spawns*: spawn N workers one after the other, until the last
`main`; then SIGTERM them all and reap them all (the floor of a shutdown).
The target compares lrpm's mass start with these sequential spawns, as the
issue sets it; lrpm spawns on two threads, so the same N spawns on two
threads (each thread every other worker) are measured and shown beside it.
lrpm does more per spawn than the floor by design: its own vfork-style
`clone` (the child joins the run's cgroup, arms the parent-death signal,
restores the descriptor limit and resets its signals before it execs), a
new process group, two pipes for the output, a pidfd registered with
epoll, a log line.

**supervisord** (Debian's package, installed by the suite if missing) runs
as `supervisord -n -c CONF` with a configuration generated in the run's
temporary directory (its own socket, log and pid file; never the system
service, never /etc/supervisor). Each program runs the same worker with
`startsecs=0`, `autorestart=true` and its output discarded. supervisord
has no push of a changed configuration, so its mass start runs from its own
spawn, with every program in its configuration. After each crash it is left
alone 1.5 s, because a program it has not yet marked RUNNING (on its next
tick, up to a second later) counts as a failed start and is backed off. Its
raw status is the XML-RPC call `supervisor.getAllProcessInfo` that
`supervisorctl status` makes, over the same socket. It is not run with
10,000 programs.

**What limits each target**, and what was measured to find it, is in
[bench/README.md](../bench/README.md#what-limits-the-targets-met-or-not).

**Statistics.** Medians and percentiles use the nearest rank, so they are
always one of the samples; with fewer than 20 samples the p95 and p99 are
the maximum. The ratios compare medians measured in the same run, which
keeps them meaningful on a machine whose speed varies with its load.

**Limits and clean-up.** Every process the suite starts carries the run's
temporary directory in its command line; on exit, panic or Ctrl-C the
harness SIGKILLs its direct children through pidfds and every process that
carries that path (checked again through a pidfd before the kill). lrpm
needs three descriptors per worker (a pidfd and two pipes); where the hard
`RLIMIT_NOFILE` is too low for 10,000 jobs, the harness (as root) raises
lrpm's hard limit before exec, and the notes above say so.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_keep_two_significant_digits_when_small() {
        assert_eq!(ratio(Some(25.0), Some(2.0)), "12×");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(ratio(Some(3.0), Some(1000.0)), "0.0030×");
        assert_eq!(ratio(Some(3.0), None), "—");
    }

    #[test]
    fn job_counts_have_thousands_separators() {
        assert_eq!(jobs(10_000), "10,000");
        assert_eq!(jobs(6000), "6,000");
        assert_eq!(jobs(1), "1");
    }
}
