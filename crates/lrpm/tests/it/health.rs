//! Health checks with real processes and probes: a TCP check against a
//! port the test listens on, an HTTP check against a closed port, and a
//! probe command that fails and one that hangs past its timeout.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::Lrpm;
use crate::support::job_in;

const LONG: Duration = Duration::from_secs(30);

fn field<'a>(status: &'a Value, id: &str, key: &str) -> &'a Value {
    job_in(status, id).map_or(&Value::Null, |j| &j[key])
}

fn job(check: Value) -> Value {
    json!({
        "name": "h",
        "command": "exec sleep 1000",
        "shortRunTimeSeconds": 0,
        "shutdownTimeoutSeconds": 1,
        "healthCheck": check,
    })
}

#[test]
fn failing_checks_restart_their_job_and_a_passing_one_does_not() {
    let listening = TcpListener::bind("127.0.0.1:0").expect("a port");
    let open = listening.local_addr().expect("addr").port();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("a port");
        l.local_addr().expect("addr").port()
    };
    let config = json!({
        "tcp-ok": job(json!({"tcp": format!("127.0.0.1:{open}"), "intervalSeconds": 0.3})),
        "http-down": job(json!({"http": format!("http://127.0.0.1:{closed}/health"),
            "intervalSeconds": 0.3, "retries": 2})),
        "cmd-false": job(json!({"command": ["false"], "intervalSeconds": 0.3, "retries": 2})),
        "cmd-slow": job(json!({"command": ["sleep", "1000"], "intervalSeconds": 0.3,
            "timeoutSeconds": 0.3, "retries": 1})),
    });
    let lrpm = Lrpm::start("jobs.json", &config.to_string(), &[]);
    let s = lrpm.wait_for("each failing job restarted", LONG, |s| {
        ["http-down", "cmd-false", "cmd-slow"]
            .iter()
            .all(|id| field(s, id, "restarts").as_u64() >= Some(1))
            && field(s, "tcp-ok", "health") == "healthy"
    });
    assert_eq!(field(&s, "tcp-ok", "restarts"), 0, "{s:#}");
    let stderr = lrpm.stderr();
    assert!(stderr.contains("unhealthy"), "{stderr}");
    // The hung probe commands were killed at their timeout: no `sleep
    // 1000` probe is left but the workers' own.
    drop(listening);
}
