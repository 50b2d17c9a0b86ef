//! lrpm-bench: the benchmark suite of lrpm.
//!
//! It measures lrpm on the scenarios of issue 7 (crash → restart, change
//! of configuration, mass start, rest, shutdown, status, crash storm),
//! measures in the same run the physical floor of the machine and lrpm's
//! peers (supervisord, pm2, circus, s6) on the scenarios each supports, and
//! writes the figures, with the ratios to lrpm and to the floor, and their
//! plots (SVG), as Markdown (`docs/benchmarks.md`).
//!
//! Run it with `bench/run` (which builds lrpm and the suite first); see
//! `bench/README.md`. The codemap:
//!
//! - `bench.rs`: the run's context (temporary directory, binaries, plan);
//! - `cleanup.rs`: no process outlives the run, also on panic or Ctrl-C;
//! - `collector.rs`: the workers' reports and who runs each job;
//! - `lrpm.rs`: driving lrpm; `peers/`: installing and driving its peers
//!   (supervisord, pm2, circus, s6) through one interface; `pg.rs`: a
//!   PostgreSQL server for the postgres part;
//! - `scenarios/`: one module per scenario; `suite.rs`: their order;
//! - `results.rs`, `report.rs`, `stats.rs`, `machine.rs`: the figures and
//!   their Markdown.

mod bench;
mod cleanup;
mod collector;
mod lrpm;
mod machine;
mod peers;
mod pg;
mod plot;
mod procfs;
mod report;
mod results;
mod scenarios;
mod stats;
mod suite;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::bench::{Bench, Plan};
use crate::results::Results;
use crate::suite::Part;

/// The workspace this suite belongs to.
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Where the sections of docs/benchmarks.md that other harnesses measure
/// begin; `lrpm-bench` keeps them when it rewrites the file.
const KEPT_MARKER: &str = "<!-- Kept by bench/run:";

/// The benchmark suite of lrpm: lrpm against the physical floor of this
/// machine and against its peers (supervisord, pm2, circus, s6).

#[derive(Debug, Parser)]
#[command(name = "lrpm-bench", version)]
struct Args {
    /// A smoke test: fewer samples, 1,000 jobs at most, a few minutes.
    #[arg(long)]
    quick: bool,

    /// The size of lrpm's big farm [default: 10000; none with --quick];
    /// 0 runs none.
    #[arg(long, value_name = "JOBS")]
    big_farm: Option<usize>,

    /// Run only these parts (repeatable); ratios to a part not run show `—`.
    #[arg(long, value_enum, value_name = "PART")]
    only: Vec<Part>,

    /// Do not measure (nor install) supervisord.
    #[arg(long)]
    no_supervisord: bool,

    /// Do not measure (nor install) any peer: supervisord, pm2, circus, s6.
    #[arg(long)]
    no_peers: bool,

    /// Where to write the Markdown report [default: docs/benchmarks.md, or
    /// target/benchmarks-quick.md with --quick].
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// Where the binaries under test are (lrpm, lrpmctl,
    /// lrpm-bench-worker) [default: this program's directory].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,

    /// Wait up to this many seconds for the 1-minute load average to drop
    /// below 0.5 before starting.
    #[arg(long, value_name = "SECONDS", default_value = "0")]
    wait_quiet: u64,

    /// Keep the run's temporary directory (logs, generated configurations).
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn runs(&self, part: Part) -> bool {
        let peer = matches!(
            part,
            Part::Supervisord | Part::Pm2 | Part::Circus | Part::S6
        );
        (self.only.is_empty() || self.only.contains(&part))
            && !(part == Part::Supervisord && self.no_supervisord)
            && !(peer && self.no_peers)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lrpm-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let workspace = Path::new(WORKSPACE)
        .canonicalize()
        .context("finding the workspace")?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program has no directory")?
            .to_path_buf(),
    };
    let output = args.output.clone().unwrap_or_else(|| {
        if args.quick {
            workspace.join("target/benchmarks-quick.md")
        } else {
            workspace.join("docs/benchmarks.md")
        }
    });
    wait_quiet(Duration::from_secs(args.wait_quiet));

    let plan = Plan::new(args.quick, args.big_farm);
    let (bench, _guard) = Bench::new(&bin_dir, plan, args.keep)?;
    let mut results = Results::default();
    let started = Instant::now();
    let date = machine::utc_now();
    let load_before = procfs::loadavg();
    let load1_before = procfs::load1();
    eprintln!(
        "lrpm-bench: {} run in {}; load average {load_before}",
        if args.quick { "quick" } else { "full" },
        bench.dir.display()
    );
    if load1_before >= 0.5 {
        eprintln!(
            "lrpm-bench: the machine is busy (load {load1_before:.2}): figures will be noisy"
        );
    }

    // A part that fails is reported, and the report of the others is still
    // written; the run then exits non-zero.
    let mut failed = Vec::new();
    let mut record = |part: &str, outcome: anyhow::Result<()>, results: &mut Results| {
        if let Err(e) = outcome {
            eprintln!("lrpm-bench: {part} failed: {e:#}");
            results.note(format!("**The {part} part failed**: {e:#}"));
            failed.push(part.to_owned());
        }
    };
    let farms = if args.runs(Part::Floor) || args.runs(Part::Lrpm) {
        suite::size_farms(&bench, &mut results)?
    } else {
        Vec::new()
    };
    if args.runs(Part::Floor) {
        let outcome = suite::floor(&bench, &farms, &mut results);
        record("floor", outcome, &mut results);
    }
    if args.runs(Part::Lrpm) {
        let outcome = suite::lrpm(&bench, &farms, &mut results);
        record("lrpm", outcome, &mut results);
    }
    let mut peers = Vec::new();
    for kind in peers::Kind::ALL {
        let subject = kind.subject();
        let name = subject.name();
        if !args.runs(suite::Part::of(kind)) {
            continue;
        }
        match kind.find_or_install(&workspace) {
            Ok(installed) => {
                peers.push((subject, installed.version.clone()));
                let outcome = suite::peer(&bench, kind, &installed, &mut results);
                record(name, outcome, &mut results);
            }
            Err(e) => {
                results.note(format!("{name} was not measured: {e:#}"));
                peers.push((subject, format!("not measured: {e:#}")));
            }
        }
    }

    if args.runs(Part::Postgres) {
        let outcome = scenarios::pg_notify::run(&bench, &mut results);
        record("postgres", outcome, &mut results);
    }

    let run = report::Run {
        command: command_line(),
        quick: args.quick,
        date,
        machine: machine::Machine::probe(&bench.bins.lrpm, &workspace),
        peers,
        load_before,
        load_after: procfs::loadavg(),
        load1_before,
        duration: started.elapsed(),
    };
    let stem = output
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("benchmarks")
        .to_owned();
    let report::Rendered {
        mut markdown,
        plots,
    } = report::render(&run, &results, &stem);
    // The sections measured by other harnesses (lrpm-bench-etcd…), from
    // their marker on, are kept as they are.
    if let Ok(old) = std::fs::read_to_string(&output) {
        if let Some(at) = old.find(KEPT_MARKER) {
            markdown.push('\n');
            markdown.push_str(&old[at..]);
        }
    }
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&output, &markdown).with_context(|| format!("writing {}", output.display()))?;
    for (name, svg) in plots {
        let path = output.with_file_name(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{markdown}");
    eprintln!(
        "lrpm-bench: done in {:.0} s; report written to {}",
        run.duration.as_secs_f64(),
        output.display()
    );
    anyhow::ensure!(
        failed.is_empty(),
        "these parts failed: {}",
        failed.join(", ")
    );
    Ok(())
}

/// The command as the report shows it: `bench/run` and the arguments
/// given (bench/run passes them through unchanged).
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        "bench/run".into()
    } else {
        format!("bench/run {}", args.join(" "))
    }
}

/// Waits up to `limit` for the 1-minute load average to drop below 0.5.
fn wait_quiet(limit: Duration) {
    let deadline = Instant::now() + limit;
    while procfs::load1() >= 0.5 && Instant::now() < deadline {
        eprintln!(
            "lrpm-bench: waiting for a quiet machine (load {})",
            procfs::loadavg()
        );
        std::thread::sleep(Duration::from_secs(15).min(limit));
    }
}
