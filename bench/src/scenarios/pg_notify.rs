//! A row changed in PostgreSQL → the changed job's new worker's `main`,
//! with lrpm's source on `postgres://…?table=jobs&channel=lrpm_jobs`.
//!
//! The harness UPDATEs one job's `declaration` (its `env` changes), at
//! t0 just before the statement is sent; a statement-level trigger NOTIFYs
//! the channel (the one of docs/sources.md). In between, lrpm's connection
//! receives the notification, lrpm SELECTs the whole table, reparses the
//! changed row, stops the job's old worker (SIGTERM) and reaps it, and
//! spawns the new one. The floor is the same UPDATE → the notification
//! received by a bare LISTEN client of the harness's own, plus the floor's
//! exit → replacement.

use std::future::poll_fn;
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Runtime;
use tokio_postgres::{AsyncMessage, Client};

use crate::bench::{Bench, Plan, WorkerMode};
use crate::collector::Roster;
use crate::lrpm::Lrpm;
use crate::pg::PgServer;
use crate::procfs::monotonic_ns;
use crate::results::{Metric, Results, Subject};
use crate::scenarios::{floor, restart};
use crate::stats::Rng;

/// How long lrpm is left alone between two changes (more than the 5 ms
/// within which lrpm takes a notification for part of a burst).
const SETTLE: Duration = Duration::from_millis(20);

/// The farm sizes.
pub const FARMS: [usize; 2] = [1, 1000];

/// The table and its trigger, as docs/sources.md gives them.
const SCHEMA: &str = "
CREATE TABLE jobs (id text PRIMARY KEY, declaration jsonb NOT NULL);
CREATE FUNCTION lrpm_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], TG_TABLE_NAME);
  RETURN NULL;
END $$;
CREATE TRIGGER lrpm_jobs_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON jobs
  FOR EACH STATEMENT EXECUTE FUNCTION lrpm_notify('lrpm_jobs');
";

/// Runs the floor and lrpm at 1 and 1,000 jobs.
pub fn run(bench: &Bench, results: &mut Results) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pg = PgServer::start(bench, &rt)?;
    let client = pg.client(&rt)?;
    rt.block_on(client.batch_execute(SCHEMA))
        .context("creating the table")?;
    let samples = bench.plan.push_samples;

    eprintln!("[postgres] floor: UPDATE → NOTIFY received by a bare LISTEN client");
    notify_floor(bench, &rt, &pg, &client, samples, results)
        .with_context(|| format!("the server's log:\n{}", pg.log()))?;
    if results
        .get(Metric::ExitReplace, Subject::Floor, 1)
        .is_none()
    {
        eprintln!("[postgres] floor: exit → replacement");
        floor::exit_replace(bench, restart::PAUSE, Metric::ExitReplace, results)?;
    }
    for jobs in FARMS {
        eprintln!("[postgres] {jobs} jobs: row UPDATE → new worker's main");
        farm(bench, &rt, &pg, &client, jobs, samples, results)?;
    }
    if let Some(s) = results.get(Metric::PgNotify, Subject::Lrpm, 1000) {
        eprintln!("[postgres] at 1000 jobs: {}", s.summary());
    }
    Ok(())
}

/// Job `id`'s declaration at `generation`, as an SQL string literal.
fn declaration(bench: &Bench, id: usize, generation: u32) -> String {
    let job = serde_json::json!({
        "name": format!("bench {id}"),
        "command": bench.worker_argv(id, WorkerMode::Pause),
        "shortRunTimeSeconds": 0,
        "shutdownTimeoutSeconds": 10,
        "env": {"BENCH_GENERATION": generation.to_string()},
    });
    format!("'{}'", job.to_string().replace('\'', "''"))
}

/// UPDATE → the notification at a LISTEN connection of the harness's own,
/// whose task stamps each notification as it arrives.
fn notify_floor(
    bench: &Bench,
    rt: &Runtime,
    pg: &PgServer,
    client: &Client,
    samples: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let (listener, mut connection) = rt.block_on(
        tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(pg.port)
            .user("postgres")
            .dbname("postgres")
            .connect(tokio_postgres::NoTls),
    )?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = rt.spawn(async move {
        while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(_) = message {
                let _ = tx.send(monotonic_ns());
            }
        }
    });
    rt.block_on(listener.batch_execute("LISTEN lrpm_jobs"))?;
    rt.block_on(client.batch_execute(&format!(
        "INSERT INTO jobs VALUES ('0', {})",
        declaration(bench, 0, 0)
    )))?;
    // The INSERT's own notification, so that each sample waits for its own.
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
        .context("no notification of the first INSERT within 10 s")?;
    for generation in 1..=samples {
        let sql = format!(
            "UPDATE jobs SET declaration = {} WHERE id = '0'",
            declaration(bench, 0, generation as u32)
        );
        let took = rt.block_on(async {
            let t0 = monotonic_ns();
            client.batch_execute(&sql).await?;
            let at = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .context("no notification within 10 s")?
                .context("the listening connection ended")?;
            anyhow::Ok(at.saturating_sub(t0))
        })?;
        results
            .times(Metric::PgNotifyFloor, Subject::Floor, 1)
            .push_ns(took);
        std::thread::sleep(SETTLE);
    }
    driver.abort();
    rt.block_on(client.batch_execute("DELETE FROM jobs"))?;
    Ok(())
}

/// lrpm on a table of `jobs` rows: `samples` changes of one random job.
fn farm(
    bench: &Bench,
    rt: &Runtime,
    pg: &PgServer,
    client: &Client,
    jobs: usize,
    samples: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let mut generation = vec![0u32; jobs];
    let values: Vec<String> = (0..jobs)
        .map(|id| format!("('{id}', {})", declaration(bench, id, 0)))
        .collect();
    rt.block_on(client.batch_execute(&format!(
        "DELETE FROM jobs; INSERT INTO jobs VALUES {}",
        values.join(", ")
    )))?;
    let mut roster = Roster::new(jobs);
    bench.collector.drain();
    let lrpm = Lrpm::start_on(
        bench,
        None,
        &[],
        Some(&pg.uri("table=jobs&channel=lrpm_jobs")),
    )?;
    roster
        .wait_all(&bench.collector, Plan::start_timeout(jobs))
        .with_context(|| format!("lrpm's log ends with:\n{}", lrpm.log_tail()))?;
    let mut rng = Rng::new(0x9057_6E55 + jobs as u64);
    for _ in 0..samples {
        let id = rng.below(jobs);
        generation[id] += 1;
        let old = roster.pid(id).context("the job has no known worker")?;
        let sql = format!(
            "UPDATE jobs SET declaration = {} WHERE id = '{id}'",
            declaration(bench, id, generation[id])
        );
        let t0 = monotonic_ns();
        rt.block_on(client.batch_execute(&sql))?;
        let hello = roster
            .wait_for(&bench.collector, Duration::from_secs(10), |h| {
                h.id as usize == id && h.pid != old
            })
            .with_context(|| {
                format!(
                    "the change of job {id} had no effect; lrpm's log ends with:\n{}",
                    lrpm.log_tail()
                )
            })?;
        results
            .times(Metric::PgNotify, Subject::Lrpm, jobs)
            .push_ns(hello.ns.saturating_sub(t0));
        std::thread::sleep(SETTLE);
    }
    lrpm.stop()?;
    Ok(())
}
