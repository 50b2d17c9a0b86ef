//! The postgres source against a real PostgreSQL 15 server
//! ([`PgServer`]): rows followed through LISTEN/NOTIFY, bursts, the query
//! form, garbage rows, a lost connection and a restarted server, TLS, and
//! the password that never shows.
//!
//! How fast lrpm followed a change is read from the two clocks of the
//! machine that the test does not own: the server's commit time
//! (`clock_timestamp()` after the statement) and the worker's `started_at`
//! in lrpm's status.

use std::time::Duration;

use serde_json::Value;

use crate::pg_server::{PASSWORD, PgServer};
use crate::support::{self, Lrpm, job_in, loads, pid_of, running, source_error};

/// How long a change may take to reach a worker in these tests, measured
/// from the commit to the new worker's start, on lrpm's and the server's
/// clocks (the benchmark gives the real figure: a few milliseconds). It
/// proves that the change came through NOTIFY, not a poll of the table
/// (every 30 s by default); the tests run in parallel on a loaded 2-core
/// machine, hence the margin.
const FOLLOW_BOUND: f64 = 5.0;

/// How long anything else may take: a reconnection, a poll.
const WAIT: Duration = Duration::from_secs(30);

/// The trigger function of docs/sources.md: NOTIFY on the channel named by
/// the trigger's argument, once per statement that changed the table.
const NOTIFY_FUNCTION: &str = "
CREATE FUNCTION lrpm_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], TG_TABLE_NAME);
  RETURN NULL;
END $$;
";

/// A table of jobs with its notifying trigger on channel `lrpm_jobs`.
fn jobs_table(pg: &PgServer) {
    pg.psql(&format!(
        "{NOTIFY_FUNCTION}
         CREATE TABLE jobs (id text PRIMARY KEY, declaration jsonb NOT NULL, note text);
         CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON jobs
           FOR EACH STATEMENT EXECUTE FUNCTION lrpm_notify('lrpm_jobs');"
    ));
}

/// A sleeping job's declaration, as an SQL string literal.
fn sleeper(name: &str, secs: u32) -> String {
    format!("'{{\"name\": \"{name}\", \"command\": [\"sleep\", \"{secs}\"]}}'")
}

/// Starts lrpm on `uri` with `extra` arguments before it, and the
/// environment `setup` gives it.
fn lrpm_on(uri: &str, extra: &[&str], setup: impl FnOnce(&mut std::process::Command)) -> Lrpm {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("unused");
    Lrpm::start_in(dir, config, |command| {
        command.env_remove("PGPASSWORD").env_remove("PGPASSFILE");
        setup(command);
        command.args(extra).arg(uri);
    })
}

/// Runs `sql` and returns the server's clock right after it (each
/// statement of psql commits on its own).
fn change(pg: &PgServer, sql: &str) -> f64 {
    pg.psql(&format!(
        "{sql}; SELECT extract(epoch FROM clock_timestamp());"
    ))
    .lines()
    .last()
    .and_then(|line| line.parse().ok())
    .expect("the server's clock")
}

fn started_at(status: &Value, id: &str) -> f64 {
    job_in(status, id)
        .and_then(|job| job["started_at"].as_f64())
        .expect("started_at")
}

fn connection_state(status: &Value) -> &str {
    status["supervisor"]["source"]["connection"]["state"]
        .as_str()
        .unwrap_or("")
}

/// Checks that job `id` started within [`FOLLOW_BOUND`] of `committed`.
fn assert_followed(status: &Value, id: &str, committed: f64, what: &str) {
    let took = started_at(status, id) - committed;
    eprintln!(
        "{what}: the worker started {:.1} ms after the commit",
        took * 1e3
    );
    assert!(
        took < FOLLOW_BOUND,
        "{what}: the worker started {took:.3} s after the commit"
    );
}

#[test]
fn rows_are_followed_through_notify() {
    let Some(pg) = PgServer::start() else { return };
    jobs_table(&pg);
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('a', {}, 'x'), ('b', {}, 'y');",
        sleeper("A", 300),
        sleeper("B", 300)
    ));
    let lrpm = lrpm_on(&pg.url("table=jobs&channel=lrpm_jobs"), &[], |_| {});
    let status = lrpm.wait_for("a and b running", WAIT, |s| support::all_running(s, 2));
    assert_eq!(connection_state(&status), "connected", "{status}");
    assert!(status["supervisor"]["source"]["revision"].as_u64() >= Some(1));
    let a_pid = lrpm.running_pid("a");

    // INSERT: a new worker.
    let committed = change(
        &pg,
        &format!("INSERT INTO jobs VALUES ('c', {}, 'z')", sleeper("C", 300)),
    );
    let status = lrpm.wait_for("c running", WAIT, |s| running(s, "c"));
    assert_followed(&status, "c", committed, "INSERT");

    // UPDATE: the worker restarts with its new declaration.
    let b_pid = lrpm.running_pid("b");
    let committed = change(
        &pg,
        &format!(
            "UPDATE jobs SET declaration = {} WHERE id = 'b'",
            sleeper("B2", 301)
        ),
    );
    let status = lrpm.wait_for("b restarted", WAIT, |s| {
        job_in(s, "b")
            .is_some_and(|job| job["name"] == "B2" && pid_of(job).is_some_and(|p| p != b_pid))
    });
    assert_followed(&status, "b", committed, "UPDATE");

    // A change of another column changes no job.
    let status = lrpm.wait_for_load_after(|| {
        pg.psql("UPDATE jobs SET note = 'changed' WHERE id = 'c'");
    });
    let c_pid = job_in(&status, "c").and_then(pid_of);

    // DELETE: the worker stops; the others were never touched.
    pg.psql("DELETE FROM jobs WHERE id = 'b'");
    let status = lrpm.wait_for("b gone", WAIT, |s| job_in(s, "b").is_none());
    assert_eq!(job_in(&status, "a").and_then(pid_of), Some(a_pid));
    assert_eq!(job_in(&status, "c").and_then(pid_of), c_pid);
}

#[test]
fn a_burst_of_notifications_makes_few_loads() {
    let Some(pg) = PgServer::start() else { return };
    jobs_table(&pg);
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('a', {}, '')",
        sleeper("A", 300)
    ));
    let lrpm = lrpm_on(&pg.url("table=jobs&channel=lrpm_jobs"), &[], |_| {});
    let before = loads(&lrpm.wait_for("a running", WAIT, |s| running(s, "a")));
    // 100 transactions, each notifying, as fast as psql sends them.
    let burst: String = (0..100)
        .map(|i| format!("UPDATE jobs SET note = '{i}';\n"))
        .collect();
    pg.psql(&burst);
    // A change after the burst: once lrpm has loaded it, it has loaded
    // everything the burst caused.
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('z', {}, '')",
        sleeper("Z", 300)
    ));
    let status = lrpm.wait_for("z running", WAIT, |s| running(s, "z"));
    let made = loads(&status) - before;
    eprintln!("100 notifications and one more change made {made} loads");
    assert!(made <= 8, "100 notifications made {made} loads");
}

#[test]
fn a_query_is_polled_with_integer_ids_and_json() {
    let Some(pg) = PgServer::start() else { return };
    pg.psql(&format!(
        "CREATE TABLE things (num integer, body json, enabled boolean);
         INSERT INTO things VALUES (7, {}, true), (8, {}, false);",
        sleeper("seven", 300),
        sleeper("eight", 300)
    ));
    let query = "SELECT num AS id, body AS declaration FROM things WHERE enabled";
    let encoded = query.replace(' ', "%20");
    let lrpm = lrpm_on(&pg.url(&format!("query={encoded}")), &["-i", "1"], |_| {});
    let status = lrpm.wait_for("7 running", WAIT, |s| running(s, "7"));
    assert!(job_in(&status, "8").is_none());
    assert!(status["supervisor"]["source"]["connection"].is_object());
    pg.psql("UPDATE things SET enabled = true WHERE num = 8");
    lrpm.wait_for("8 running, polled", WAIT, |s| running(s, "8"));
    // A query that lacks a column is an error; the farm keeps running.
    let bad = lrpm_on(
        &pg.url("query=SELECT%20num%20AS%20id%20FROM%20things"),
        &["-i", "1"],
        |_| {},
    );
    let error = bad.wait_for_source_error("columns id and declaration");
    assert!(error.contains("they have id"), "{error}");
    eprintln!("{error}");
    // So is a table that does not exist.
    let missing = lrpm_on(&pg.url("table=missing&channel=c"), &[], |_| {});
    let error = missing.wait_for_source_error("relation \"missing\" does not exist");
    eprintln!("{error}");
}

#[test]
fn a_garbage_row_makes_only_its_job_invalid() {
    let Some(pg) = PgServer::start() else { return };
    pg.psql(&format!(
        "{NOTIFY_FUNCTION}
         CREATE TABLE jobs (id text, declaration text);
         CREATE TRIGGER n AFTER INSERT OR UPDATE OR DELETE ON jobs
           FOR EACH STATEMENT EXECUTE FUNCTION lrpm_notify('c');
         INSERT INTO jobs VALUES
           ('a', {}),
           ('b', '{{not json'),
           ('c', '{{\"command\": \"true\"}}'),
           ('d', NULL),
           (NULL, {}),
           ('e', {}), ('e', {});",
        sleeper("A", 300),
        sleeper("orphan", 300),
        sleeper("E", 300),
        sleeper("E", 300)
    ));
    let lrpm = lrpm_on(&pg.url("table=jobs&channel=c"), &[], |_| {});
    let status = lrpm.wait_for("a running", WAIT, |s| running(s, "a"));
    assert_eq!(support::jobs_in(&status).len(), 1, "{status}");
    assert_eq!(source_error(&status), None, "{status}");
    let invalid = &status["supervisor"]["source"]["invalid_jobs"];
    let reason = |id: &str| invalid[id].as_str().unwrap_or_default().to_owned();
    assert!(reason("b").contains("not valid JSON"), "{invalid}");
    assert!(reason("c").contains("name"), "{invalid}");
    assert_eq!(reason("d"), "declaration: is NULL", "{invalid}");
    assert_eq!(reason("e"), "declared 2 times", "{invalid}");
    let a_pid = lrpm.running_pid("a");
    // Mended, b runs; a is not touched.
    pg.psql(&format!(
        "UPDATE jobs SET declaration = {} WHERE id = 'b'",
        sleeper("B", 300)
    ));
    let status = lrpm.wait_for("b running", WAIT, |s| running(s, "b"));
    assert_eq!(job_in(&status, "a").and_then(pid_of), Some(a_pid));
    assert!(status["supervisor"]["source"]["invalid_jobs"]["b"].is_null());
}

#[test]
fn a_restarted_server_is_followed_again_after_a_full_load() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    jobs_table(&pg);
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('a', {}, '')",
        sleeper("A", 300)
    ));
    let lrpm = lrpm_on(&pg.url("table=jobs&channel=lrpm_jobs"), &[], |_| {});
    let a_pid = lrpm.running_pid("a");

    pg.stop();
    let status = lrpm.wait_for("the connection lost", WAIT, |s| {
        connection_state(s) == "reconnecting"
            && source_error(s).is_some_and(|e| e.contains("cannot connect"))
    });
    let connection = &status["supervisor"]["source"]["connection"];
    assert!(connection["error"].is_string(), "{connection}");
    assert!(connection["retry_at"].is_f64(), "{connection}");
    assert_eq!(
        job_in(&status, "a").and_then(pid_of),
        Some(a_pid),
        "the farm keeps running"
    );

    pg.restart();
    // Changed before lrpm is back: no one listens to this notification,
    // and the full load after the reconnection finds it.
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('b', {}, '')",
        sleeper("B", 300)
    ));
    let status = lrpm.wait_for("b running after the reconnection", WAIT, |s| {
        running(s, "b") && connection_state(s) == "connected"
    });
    assert_eq!(source_error(&status), None);
    assert_eq!(job_in(&status, "a").and_then(pid_of), Some(a_pid));
    // And changes are followed again.
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('c', {}, '')",
        sleeper("C", 300)
    ));
    lrpm.wait_for("c running", WAIT, |s| running(s, "c"));
    assert!(lrpm.stderr().contains("the connection was lost"));
}

#[test]
fn a_terminated_connection_catches_up_with_what_changed_meanwhile() {
    let Some(pg) = PgServer::start() else { return };
    jobs_table(&pg);
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('a', {}, ''), ('b', {}, '')",
        sleeper("A", 300),
        sleeper("B", 300)
    ));
    let lrpm = lrpm_on(&pg.url("table=jobs&channel=lrpm_jobs"), &[], |_| {});
    lrpm.wait_for("a and b running", WAIT, |s| support::all_running(s, 2));
    let a_pid = lrpm.running_pid("a");
    // lrpm's backend is ended while rows change.
    pg.psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'lrpm';
         INSERT INTO jobs VALUES ('c', {c}, '');
         UPDATE jobs SET declaration = {a2} WHERE id = 'a';
         DELETE FROM jobs WHERE id = 'b';
         INSERT INTO jobs VALUES ('d', {d}, '');",
        c = sleeper("C", 300),
        a2 = sleeper("A2", 301),
        d = sleeper("D", 300)
    ));
    let status = lrpm.wait_for("everything caught up", WAIT, |s| {
        running(s, "c")
            && running(s, "d")
            && job_in(s, "b").is_none()
            && job_in(s, "a").is_some_and(|j| j["name"] == "A2" && pid_of(j) != Some(a_pid))
            && connection_state(s) == "connected"
    });
    assert_eq!(source_error(&status), None);
    assert!(
        lrpm.stderr().contains("the connection was lost"),
        "{}",
        lrpm.stderr()
    );
}

/// Neither lrpm's log, nor its status (raw or as `lrpmctl` prints it),
/// holds the password.
fn assert_password_hidden(lrpm: &Lrpm) {
    let status = lrpm.status().to_string();
    assert!(!status.contains(PASSWORD), "{status}");
    let table = lrpm.ctl(&["status"]);
    assert!(!String::from_utf8_lossy(&table.stdout).contains(PASSWORD));
    let json = lrpm.ctl(&["status", "--json"]);
    assert!(!String::from_utf8_lossy(&json.stdout).contains(PASSWORD));
    assert!(!lrpm.stderr().contains(PASSWORD), "{}", lrpm.stderr());
}

#[test]
fn the_password_is_never_shown_wherever_it_comes_from() {
    let Some(pg) = PgServer::start() else { return };
    jobs_table(&pg);
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('a', {}, '')",
        sleeper("A", 300)
    ));
    let query = "table=jobs&channel=lrpm_jobs";

    // In the URI: the status shows it masked.
    let lrpm = lrpm_on(&pg.url(query), &["-v"], |_| {});
    let status = lrpm.wait_for("a running", WAIT, |s| running(s, "a"));
    let uri = status["supervisor"]["source"]["uri"]
        .as_str()
        .unwrap_or_default();
    assert!(uri.starts_with("postgres://lrpm:***@127.0.0.1:"), "{uri}");
    assert_password_hidden(&lrpm);
    drop(lrpm);

    // From PGPASSWORD.
    let lrpm = lrpm_on(&pg.url_without_password(query), &[], |c| {
        c.env("PGPASSWORD", PASSWORD);
    });
    lrpm.wait_for("a running", WAIT, |s| running(s, "a"));
    assert_password_hidden(&lrpm);
    drop(lrpm);

    // From ~/.pgpass, which must be private.
    let home = tempfile::tempdir().expect("a temp dir");
    let pgpass = home.path().join(".pgpass");
    std::fs::write(
        &pgpass,
        format!("# lrpm\n127.0.0.1:{}:lrpm:lrpm:{PASSWORD}\n", pg.port),
    )
    .expect("write .pgpass");
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod .pgpass");
    let lrpm = lrpm_on(&pg.url_without_password(query), &[], |c| {
        c.env("HOME", home.path());
    });
    lrpm.wait_for("a running", WAIT, |s| running(s, "a"));
    assert_password_hidden(&lrpm);
    drop(lrpm);

    // A wrong password: the server's refusal, and neither password.
    let wrong = "wrong-Qx81";
    let uri = pg.url(query).replace(PASSWORD, wrong);
    let lrpm = lrpm_on(&uri, &[], |_| {});
    let error = lrpm.wait_for_source_error("password authentication failed");
    eprintln!("{error}");
    assert!(!error.contains(wrong), "{error}");
    assert!(!lrpm.stderr().contains(wrong));
    assert!(!lrpm.status().to_string().contains(wrong));
}

#[test]
fn sslmode_require_encrypts_or_refuses() {
    let Some(pg) = PgServer::start() else { return };
    jobs_table(&pg);
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('a', {}, '')",
        sleeper("A", 300)
    ));
    // The server has no TLS yet: require refuses, prefer connects in clear.
    let required = lrpm_on(
        &pg.url("table=jobs&channel=lrpm_jobs&sslmode=require"),
        &[],
        |_| {},
    );
    let error = required.wait_for_source_error("cannot connect");
    assert!(error.to_lowercase().contains("tls"), "{error}");
    eprintln!("{error}");
    drop(required);
    let preferred = lrpm_on(
        &pg.url("table=jobs&channel=lrpm_jobs&sslmode=prefer"),
        &[],
        |_| {},
    );
    preferred.wait_for("a running", WAIT, |s| running(s, "a"));
    drop(preferred);

    // With a self-signed certificate: require connects, encrypted.
    pg.enable_tls();
    let required = lrpm_on(
        &pg.url("table=jobs&channel=lrpm_jobs&sslmode=require"),
        &[],
        |_| {},
    );
    required.wait_for("a running over TLS", WAIT, |s| running(s, "a"));
    let ssl = pg.psql(
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'lrpm'",
    );
    assert_eq!(ssl, "t");
    // Notifications come over TLS too.
    pg.psql(&format!(
        "INSERT INTO jobs VALUES ('b', {}, '')",
        sleeper("B", 300)
    ));
    required.wait_for("b running", WAIT, |s| running(s, "b"));
}

#[test]
fn usage_errors_exit_64() {
    for (uri, extra) in [
        ("postgres://lrpm@127.0.0.1:1/lrpm", vec![]),
        (
            "postgres://lrpm@127.0.0.1:1/lrpm?table=jobs",
            vec!["-i", "0"],
        ),
        (
            "postgres://lrpm:secret-pw@127.0.0.1:1/lrpm?table=a;b",
            vec![],
        ),
    ] {
        let mut command = support::lrpm_command();
        let dir = tempfile::tempdir().expect("a temp dir");
        command
            .arg("--socket")
            .arg(dir.path().join("control.sock"))
            .args(&extra)
            .arg(uri);
        let output = support::run_bounded(command, WAIT);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{uri}: {stderr}");
        assert!(!stderr.contains("secret-pw"), "{stderr}");
    }
}
