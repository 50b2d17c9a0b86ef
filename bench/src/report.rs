//! The Markdown report: the run, the targets of issues 7 and 18, the
//! figures with their ratios to the floor and to lrpm, every system side by
//! side, the plots, and the method.

use std::fmt::Write as _;
use std::time::Duration;

use crate::machine::Machine;
use crate::plot;
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
    /// The peers measured (or meant to be), with their versions.
    pub peers: Vec<(Subject, String)>,
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
        label: "a job added → its worker's main",
        metric: Metric::JobAdded,
        jobs: 1000,
        floor: Some((Metric::ExitReplace, 1, "exit → replacement")),
    },
    Row {
        label: "that job removed → its worker exited",
        metric: Metric::JobRemoved,
        jobs: 1000,
        floor: Some((Metric::ExitWake, 1, "exit → wake")),
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
        floor: Some((Metric::Shutdown, 1000, "SIGTERM all, reap all, exit")),
    },
    Row {
        label: "shutdown",
        metric: Metric::Shutdown,
        jobs: BIG,
        floor: Some((Metric::Shutdown, BIG, "SIGTERM all, reap all, exit")),
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
        (Metric::Shutdown, Subject::Floor) => "SIGTERM → all reaped, exited",
        (Metric::MassStart, Subject::Supervisord) => "start → all mains ran",
        (Metric::AllRunning, _) => "start → all RUNNING (`supervisorctl status`, polled)",
        (Metric::Restart, _) => "crash → restart",
        (Metric::ConfigPush, _) => "config change → effect",
        (Metric::JobAdded, _) => "a job added → its worker's main",
        (Metric::JobRemoved, _) => "that job removed → its worker exited",
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

/// The report: its Markdown, and the plots it embeds (file name, SVG),
/// to be written beside it.
#[derive(Debug)]
pub struct Rendered {
    /// The Markdown.
    pub markdown: String,
    /// The plots: each file's name (relative to the Markdown's directory)
    /// and its SVG.
    pub plots: Vec<(String, String)>,
}

/// Renders the whole report; its plots' files are named after `stem`
/// (`benchmarks` → `benchmarks-restart.svg`).
pub fn render(run: &Run, results: &Results, stem: &str) -> Rendered {
    let mut out = String::new();
    header(&mut out, run);
    targets(&mut out, results);
    main_table(&mut out, results);
    let plots = systems(&mut out, run, results, stem);
    resources(&mut out, results);
    storm(&mut out, results);
    postgres(&mut out, run, results);
    subject_table(&mut out, results, Subject::Floor, "The floor");
    if !results.notes().is_empty() {
        out.push_str("\n## Notes on this run\n\n");
        for note in results.notes() {
            let _ = writeln!(out, "- {note}");
        }
    }
    out.push_str(METHOD);
    Rendered {
        markdown: out,
        plots,
    }
}

/// One row of the systems' table: a scenario, at how many jobs, and the
/// floor figure it is compared to.
struct SystemRow {
    label: &'static str,
    metric: Metric,
    jobs: usize,
    floor: Option<(Metric, usize)>,
}

const SYSTEM_ROWS: &[SystemRow] = &[
    SystemRow {
        label: "crash → restart",
        metric: Metric::Restart,
        jobs: 1,
        floor: Some((Metric::ExitReplace, 1)),
    },
    SystemRow {
        label: "crash → restart",
        metric: Metric::Restart,
        jobs: 1000,
        floor: Some((Metric::ExitReplace, 1)),
    },
    SystemRow {
        label: "a job added → its worker's main",
        metric: Metric::JobAdded,
        jobs: 1000,
        floor: Some((Metric::ExitReplace, 1)),
    },
    SystemRow {
        label: "that job removed → its worker exited",
        metric: Metric::JobRemoved,
        jobs: 1000,
        floor: Some((Metric::ExitWake, 1)),
    },
    SystemRow {
        label: "mass start → every main ran",
        metric: Metric::MassStart,
        jobs: 1000,
        floor: Some((Metric::MassStart, 1000)),
    },
    SystemRow {
        label: "mass start → all RUNNING by its own account (polled)",
        metric: Metric::AllRunning,
        jobs: 1000,
        floor: Some((Metric::MassStart, 1000)),
    },
    SystemRow {
        label: "shutdown → every worker exited",
        metric: Metric::Shutdown,
        jobs: 1000,
        floor: Some((Metric::Shutdown, 1000)),
    },
    SystemRow {
        label: "status, raw (no client)",
        metric: Metric::StatusSocket,
        jobs: 1000,
        floor: None,
    },
    SystemRow {
        label: "status table (its client)",
        metric: Metric::StatusTable,
        jobs: 1000,
        floor: None,
    },
];

/// Why `subject` has no figure for `metric`, when it cannot have one.
fn cannot(subject: Subject, metric: Metric) -> Option<&'static str> {
    match (subject, metric) {
        (Subject::Pm2, Metric::StatusSocket) => Some(
            "its protocol (axon RPC over its socket) is spoken only by its client: see the table",
        ),
        (Subject::Circus, Metric::StatusSocket) => {
            Some("its protocol (JSON over ZeroMQ) is spoken only by its client: see the table")
        }
        _ => None,
    }
}

/// The systems side by side: one table, system by system, with ratios to
/// lrpm and to the floor, then the plots. Returns the plots' files.
fn systems(out: &mut String, run: &Run, results: &Results, stem: &str) -> Vec<(String, String)> {
    let subjects: Vec<Subject> = std::iter::once(Subject::Lrpm)
        .chain(run.peers.iter().map(|(s, _)| *s))
        .collect();
    if subjects.len() < 2 {
        return Vec::new();
    }
    out.push_str(
        "\n## Every system side by side (issue 18)\n\n\
         The same worker, the same scenarios, in one run; each peer at its own defaults \
         (see the method). Medians, and the ratios of medians to lrpm's and to the \
         floor's (lower is better); `—` where a system cannot do a scenario, with the \
         reason.\n\n\
         | system | scenario | jobs | n | median | p99 | × lrpm | × floor |\n\
         |---|---|--:|--:|--:|--:|--:|--:|\n",
    );
    for &subject in &subjects {
        let name = subject.name();
        let mut any = false;
        for row in SYSTEM_ROWS {
            let lrpm = results.median(row.metric, Subject::Lrpm, row.jobs);
            let floor = row
                .floor
                .and_then(|(metric, n)| results.median(metric, Subject::Floor, n));
            match results.get(row.metric, subject, row.jobs) {
                Some(s) => {
                    any = true;
                    let _ = writeln!(
                        out,
                        "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                        row.label,
                        jobs(row.jobs),
                        s.len(),
                        Ms(s.median()),
                        Ms(s.p99()),
                        ratio(s.median(), lrpm),
                        ratio(s.median(), floor),
                    );
                }
                None => {
                    if let Some(why) = cannot(subject, row.metric) {
                        let _ = writeln!(
                            out,
                            "| {name} | {} | {} | | — ({why}) | | | |",
                            row.label,
                            jobs(row.jobs),
                        );
                    }
                }
            }
        }
        if let Some(rest) = results.rest(subject, 1000) {
            any = true;
            let lrpm = results.rest(Subject::Lrpm, 1000);
            let _ = writeln!(
                out,
                "| {name} | at rest: RSS (PSS) of {} process{} | 1,000 | | {} ({}) | | {} | |\n\
                 | {name} | at rest: CPU (% of one core) | 1,000 | | {:.3} % | | {} | |",
                rest.processes,
                if rest.processes == 1 { "" } else { "es" },
                mib(rest.rss_kib),
                mib(rest.pss_kib),
                ratio(Some(rest.rss_kib as f64), lrpm.map(|r| r.rss_kib as f64)),
                rest.cpu_percent,
                ratio(Some(rest.cpu_percent), lrpm.map(|r| r.cpu_percent)),
            );
        }
        if !any {
            let _ = writeln!(
                out,
                "| {name} | not measured in this run (see the notes) | | | | | | |"
            );
        }
    }
    plots(out, &subjects, results, stem)
}

/// The plots of crash → restart at 1,000 jobs (a CDF) and of the mass
/// start of 1,000 (workers running against time), embedded in the report.
fn plots(
    out: &mut String,
    subjects: &[Subject],
    results: &Results,
    stem: &str,
) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut lines = Vec::new();
    if let Some(s) = results.get(Metric::ExitReplace, Subject::Floor, 1) {
        lines.push(plot::Line {
            subject: Subject::Floor,
            label: "floor (exit → replacement)".into(),
            points: plot::cdf(&s.sorted()),
        });
    }
    for &subject in subjects {
        if let Some(s) = results.get(Metric::Restart, subject, 1000) {
            lines.push(plot::Line {
                subject,
                label: format!("{} (n = {})", subject.name(), s.len()),
                points: plot::cdf(&s.sorted()),
            });
        }
    }
    let restart = plot::StepPlot {
        title: "Crash → restart at 1,000 jobs: share of restarts done within a time".into(),
        y_label: "restarts done".into(),
        y_max: 1.0,
        percent: true,
        lines,
    };
    let mut lines = Vec::new();
    for (subject, curve) in results.curves() {
        if subject == Subject::Floor || subjects.contains(&subject) {
            lines.push(plot::Line {
                subject,
                label: if subject == Subject::Floor {
                    "floor (sequential spawns)".into()
                } else {
                    subject.name().into()
                },
                points: plot::running(curve),
            });
        }
    }
    let start = plot::StepPlot {
        title: "Mass start of 1,000 jobs: workers whose main ran, against time".into(),
        y_label: "workers running".into(),
        y_max: 1000.0,
        percent: false,
        lines,
    };
    for (plot, name, alt) in [
        (
            restart,
            "restart",
            "crash → restart latency per system (CDF)",
        ),
        (
            start,
            "mass-start",
            "mass start of 1,000: workers running against time",
        ),
    ] {
        if let Some(svg) = plot.render() {
            let file = format!("{stem}-{name}.svg");
            let _ = write!(out, "\n![{alt}]({file})\n");
            files.push((file, svg));
        }
    }
    files
}

fn header(out: &mut String, run: &Run) {
    let m = &run.machine;
    let _ = write!(
        out,
        "# Benchmarks\n\n\
         <!-- Generated by the benchmark suite (bench/, `bench/run`); \
         change bench/src/report.rs, not this file. -->\n\n\
         lrpm measured against the physical floor of the machine (the harness \
         itself doing the least possible work) and against the supervisors a \
         user would pick instead (supervisord, pm2, circus, s6), in one run, \
         with the same worker. Regenerate this file with:\n\n\
         ```sh\n\
         bench/run            # the full run (about 12 minutes here); writes docs/benchmarks.md\n\
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
         {peers}\
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
        peers = run
            .peers
            .iter()
            .map(|(subject, version)| format!("| {} | {version} |\n", subject.name()))
            .collect::<String>(),
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
    out.push_str(
        "\n## Targets (issue 7, tightened by issue 18)\n\n\
         | target | measured | verdict |\n|---|---|---|\n",
    );
    let lrpm = Subject::Lrpm;
    let floor_replace = results.median(Metric::ExitReplace, Subject::Floor, 1);

    let restart = results.get(Metric::Restart, lrpm, 1000);
    let (median, p99) = (
        restart.and_then(|s| s.median()),
        restart.and_then(|s| s.p99()),
    );
    let met = match (median, p99, floor_replace) {
        (Some(m), Some(p), Some(f)) => Some(m <= 1.2 * f && p <= 5.0),
        _ => None,
    };
    let back_to_back = results.median(Metric::ExitReplaceBackToBack, Subject::Floor, 1);
    let _ = writeln!(
        out,
        "| crash → restart at 1,000 jobs ≤ 1.2× the floor's exit → replacement, p99 ≤ 5 ms \
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
    let met = match (median, floor_replace) {
        (Some(m), Some(f)) => Some(m <= 2.0 * f),
        _ => None,
    };
    let _ = writeln!(
        out,
        "| config change → effect at 1,000 jobs ≤ 2× the floor's exit → replacement \
         | median {} = {} the floor's {}; p95 {}; p99 {} | {} |",
        Ms(median),
        ratio(median, floor_replace),
        Ms(floor_replace),
        Ms(push.and_then(|s| s.p95())),
        Ms(push.and_then(|s| s.p99())),
        verdict(met)
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

    let shutdown = results.get(Metric::Shutdown, lrpm, 1000);
    let median = shutdown.and_then(|s| s.median());
    let floor_shutdown = results.median(Metric::Shutdown, Subject::Floor, 1000);
    let met = match (median, floor_shutdown) {
        (Some(m), Some(f)) => Some(m <= 1.5 * f),
        _ => None,
    };
    let _ = writeln!(
        out,
        "| shutdown of 1,000 cooperative workers ≤ 1.5× the floor's SIGTERM to all, reap all, exit \
         | median {} = {} the floor's {}; max {} | {} |",
        Ms(median),
        ratio(median, floor_shutdown),
        Ms(floor_shutdown),
        Ms(shutdown.and_then(|s| s.quantile(1.0))),
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
        "| 10,000 jobs at rest: RSS ≤ 48 MiB across lrpm and its output hubs | {} | {} |",
        at_big(rest.map_or("—".into(), |r| format!(
            "{} in {} processes",
            mib(r.rss_kib),
            r.processes
        ))),
        big_verdict(rest.map(|r| r.rss_kib <= 48 * 1024))
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
    let table = big.and_then(|n| results.get(Metric::StatusTable, lrpm, n));
    let median = table.and_then(|s| s.median());
    let _ = writeln!(
        out,
        "| `lrpmctl status` table of 10,000 jobs ≤ 60 ms | {} | {} |",
        at_big(format!(
            "median {}; p99 {}",
            Ms(median),
            Ms(table.and_then(|s| s.p99()))
        )),
        big_verdict(median.map(|m| m <= 60.0))
    );
}

fn main_table(out: &mut String, results: &Results) {
    out.push_str(
        "\n## lrpm, against the floor\n\n\
         Latencies; the ratios are of medians (lower is better).\n\n\
         | scenario | jobs | n | median | p95 | p99 | floor | × floor |\n\
         |---|--:|--:|--:|--:|--:|---|--:|\n",
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
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.label,
            jobs(n),
            s.len(),
            Ms(median),
            Ms(s.p95()),
            Ms(s.p99()),
            floor_text,
            floor_ratio,
        );
    }
}

fn resources(out: &mut String, results: &Results) {
    out.push_str(
        "\n## The supervisor at rest, after a mass start\n\n\
         RSS, PSS, peak RSS and CPU are summed over the supervisor's processes, \
         whose number is given: lrpm and its output hubs (the processes that \
         forward the output of workers beyond half of lrpm's descriptor limit); \
         s6-svscan and its s6-supervise, one per service; the daemon of the \
         others. PSS (`Pss` of `smaps_rollup`) counts a page shared by several \
         of them once in all, which RSS does not. The open descriptors are the \
         main process's own.\n\n\
         | supervisor | jobs | processes | RSS (VmRSS) | PSS | peak RSS (VmHWM, sum of peaks) | CPU at rest (% of one core) | window | open descriptors |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for (subject, n, rest) in results.rests() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.3} % | {:.0} s | {} |",
            subject.name(),
            jobs(n),
            rest.processes,
            mib(rest.rss_kib),
            mib(rest.pss_kib),
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
  from a pipe, timed from spawn to exit, each run 1.1 s after the last so
  that lrpm reads its workers' `/proc` anew (it keeps the figures of a
  table one second).
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
`main`. *Shutdown*: a supervisor process of its own (`lrpm-bench-floor`)
spawns N workers the same way; SIGTERM to it at t0, until it has exited,
which it does once it has sent SIGTERM to every worker and reaped them
all: the end point of lrpm's shutdown, so both figures include the
signal's delivery to the supervisor and the supervisor's own exit (a floor
timed inside the harness, from its own `kill` to its last `wait`, left
both out).
The target compares lrpm's mass start with these sequential spawns, as the
issue sets it; lrpm spawns on two threads, so the same N spawns on two
threads (each thread every other worker) are measured and shown beside it.
lrpm does more per spawn than the floor by design: its own vfork-style
`clone` (the child joins the run's cgroup, arms the parent-death signal,
restores the descriptor limit and resets its signals before it execs), a
new process group, two pipes for the output, a pidfd registered with
epoll, a log line.

**The peers** run the same worker, at 1 job and at 1,000, each from a
directory of its own in the run's temporary directory, started by the
harness as its child and stopped by SIGTERM through a pidfd; never a
system service. What is missing is installed by the suite, the quietest
way: Debian's `supervisor` and `s6` packages (`apt-get`), pm2 from the npm
registry (`npm install -g --prefix target/bench-peers/pm2`), circus from
PyPI (a virtual environment in `target/bench-peers/circus`). Each is left
at its defaults, which are, where they decide:

- *supervisord* runs as `supervisord -n -c CONF`. Each job is a program
  with `startsecs=0` (without it a program is not RUNNING for a second, and
  a crash before that is a failed start), `autorestart=true`,
  `startretries=100` and its output discarded. A job is added by writing a
  program's section into an included file and `supervisorctl update`. Its
  raw status is the XML-RPC call `supervisor.getAllProcessInfo` that
  `supervisorctl status` makes, over the same socket; "all RUNNING" polls
  `supervisorctl status` until every program is RUNNING, which it marks on
  its next tick.
- *pm2* runs as `pm2-runtime start ecosystem.json` (pm2's daemon in the
  foreground, `PM2_HOME` in the session's directory). Each job is an app
  with `interpreter: none` and its output sent to `/dev/null`; pm2's
  defaults are `autorestart`, `restart_delay` 0, and `min_uptime` 1 s with
  `max_restarts` 16 (a process that lived less than a second is unstable,
  and pm2 gives up after 16 such restarts in a row), `kill_timeout` 1.6 s,
  SIGINT as the stop signal. A job is added with `pm2 start` of an
  ecosystem file of that one app and removed with `pm2 delete`; the
  status table is `pm2 ls`. Its protocol (axon RPC) is spoken only by its
  client, so it has no raw status figure; its client's start (node) is in
  every figure that uses the client.
- *circus* runs as `circusd circus.ini`, its endpoints as Unix sockets in
  the session's directory. Each job is a watcher of one process; circus's
  defaults are `respawn`, `warmup_delay` 0, `graceful_timeout` 30 s and
  `check_delay` 1 s. A job is added with `circusctl add --start` and removed
  with `circusctl rm`; the status table is `circusctl status`. Its protocol
  (JSON over ZeroMQ) is spoken only by its client, so it has no raw status
  figure; its client's start (python) is in every figure that uses it.
- *s6* runs as `s6-svscan SCANDIR`, which starts one `s6-supervise` per
  service directory. Each job is a service directory whose `run` is a
  symbolic link to the worker, which then reads its arguments from a file
  beside it (after its clock), so no shell stands between s6 and the
  worker. s6-svscan maintains at most 500 services by default: a farm of
  1,000 needs `-c 1100` (the one setting s6 needs to do the job at all).
  s6's default throttle starts a service at most once a second. A
  job is added by renaming a new service directory into the scan directory
  and `s6-svscanctl -a`, and removed by renaming it out and
  `s6-svscanctl -an`. s6 has no status socket: its raw status is the
  harness reading every service's `supervise/status` file, its table
  `s6-svstat` run once per service (s6 has no command for all of them).
  Its memory and CPU add up s6-svscan and every s6-supervise.

With one job, a peer's crashes are 1.5 s apart, so that none of those
throttles decides a restart (s6's second, supervisord's tick, pm2's
`min_uptime`). With 1,000 jobs each crash hits a job not crashed before in
the series, 5 ms after the last replacement reported, as lrpm's. A peer's
mass start runs from its daemon's spawn, with every job in its
configuration; lrpm's from its jobs file written, lrpm already running. A
peer's shutdown runs from SIGTERM until its daemon and every worker have
exited (each worker followed by a pidfd). *A job added*: the clock starts
before the first step of the change (a file written, a client started), and
runs to the new worker's `main`; *removed*: from the first step of the
removal until that worker has exited. lrpm adds and removes a job by
rewriting its jobs file. The peers are not run with more than 1,000 jobs.

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
