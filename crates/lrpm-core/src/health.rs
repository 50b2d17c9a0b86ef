//! Health checks: the `healthCheck` declaration, validated.
//!
//! A health check is a probe that lrpm runs against a running worker every
//! `intervalSeconds`: a command (healthy when it exits 0 within
//! `timeoutSeconds`), an HTTP GET (healthy on a 2xx or 3xx answer) or a TCP
//! connection (healthy when it is accepted). After `retries` failures in a
//! row the job is unhealthy and is restarted as a crash. The core decides
//! when a probe is due ([`crate::supervisor::Action::Probe`]) and what its
//! result means; the shell runs it.

use std::time::Duration;

use serde_json::Value;

/// Default `intervalSeconds`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `retries`.
pub const DEFAULT_RETRIES: u32 = 3;

/// The shortest accepted `intervalSeconds` and `timeoutSeconds`: a probe
/// more often than this would cost lrpm more than it tells.
pub const MIN_PERIOD: Duration = Duration::from_millis(100);

/// One job's health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What is probed.
    pub probe: Probe,
    /// From one probe's result to the next probe.
    pub interval: Duration,
    /// How long a probe may take; a slower one failed (and a probe command
    /// is killed).
    pub timeout: Duration,
    /// How many failures in a row make the job unhealthy (at least 1).
    pub retries: u32,
    /// A grace period from the job's start (from its readiness, for a
    /// `notify` job): failures within it do not count, until a first
    /// success.
    pub start: Duration,
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A command (argv, run without a shell): healthy when it exits 0.
    Command(Vec<String>),
    /// An HTTP GET: healthy on a 2xx or 3xx status.
    Http(HttpTarget),
    /// A TCP connection: healthy when it is accepted.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

/// An `http://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// The URL as declared.
    pub url: String,
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// Port (80 when the URL names none).
    pub port: u16,
    /// Path and query, `/` when the URL has none.
    pub path: String,
}

/// Parses `healthCheck`; returns every problem found, each as
/// `healthCheck.FIELD: reason`.
pub fn validate(label: &str, value: &Value) -> Result<HealthCheck, Vec<String>> {
    let Some(given) = value.as_object() else {
        return Err(vec![format!(
            "{label}: must be a map with one of command, http or tcp"
        )]);
    };
    // snake_case spellings are accepted too, as for the job's own keys.
    let map: serde_json::Map<String, Value> = given
        .iter()
        .map(|(k, v)| {
            let camel = SNAKE_CASE
                .iter()
                .find(|&&(_, snake)| snake == k)
                .map_or(k.as_str(), |&(camel, _)| camel);
            (camel.to_owned(), v.clone())
        })
        .collect();
    let mut errors = Vec::new();
    let mut err = |field: &str, reason: String| errors.push(format!("{label}.{field}: {reason}"));
    let kinds: Vec<&str> = ["command", "http", "tcp"]
        .into_iter()
        .filter(|k| map.contains_key(*k))
        .collect();
    let probe = match kinds.as_slice() {
        ["command"] => command(&map["command"])
            .map(Probe::Command)
            .map_err(|e| err("command", e))
            .ok(),
        ["http"] => http(&map["http"])
            .map(Probe::Http)
            .map_err(|e| err("http", e))
            .ok(),
        ["tcp"] => tcp(&map["tcp"]).map_err(|e| err("tcp", e)).ok(),
        [] => {
            err("probe", "one of command, http or tcp is required".into());
            None
        }
        _ => {
            err(
                kinds[0],
                format!("only one of command, http or tcp (also {})", kinds[1]),
            );
            None
        }
    };
    let mut period = |key: &str, default: Duration, min: Duration| match map.get(key) {
        None => Some(default),
        Some(v) => match v.as_f64() {
            Some(s) if s.is_finite() && s >= min.as_secs_f64() && s <= MAX_SECONDS => {
                Some(Duration::from_secs_f64(s))
            }
            _ => {
                err(
                    key,
                    format!(
                        "must be a number of seconds from {} to {MAX_SECONDS}",
                        min.as_secs_f64()
                    ),
                );
                None
            }
        },
    };
    let interval = period("intervalSeconds", DEFAULT_INTERVAL, MIN_PERIOD);
    let timeout = period("timeoutSeconds", DEFAULT_TIMEOUT, MIN_PERIOD);
    let start = period("startSeconds", Duration::ZERO, Duration::ZERO);
    let retries = match map.get("retries") {
        None => Some(DEFAULT_RETRIES),
        Some(v) => match v.as_u64().filter(|&n| (1..=1000).contains(&n)) {
            Some(n) => Some(u32::try_from(n).expect("invariant: at most 1000")),
            None => {
                err("retries", "must be an integer from 1 to 1000".into());
                None
            }
        },
    };
    for key in map.keys() {
        if !KEYS.contains(&key.as_str()) {
            err(
                &key.escape_debug().to_string(),
                format!("unknown key (known: {})", KEYS.join(", ")),
            );
        }
    }
    match (probe, interval, timeout, retries, start) {
        (Some(probe), Some(interval), Some(timeout), Some(retries), Some(start))
            if errors.is_empty() =>
        {
            Ok(HealthCheck {
                probe,
                interval,
                timeout,
                retries,
                start,
            })
        }
        _ => Err(errors),
    }
}

/// The keys of a `healthCheck` map.
const KEYS: [&str; 7] = [
    "command",
    "http",
    "tcp",
    "intervalSeconds",
    "timeoutSeconds",
    "retries",
    "startSeconds",
];

/// The keys spelled in camelCase, with their snake_case spelling.
const SNAKE_CASE: [(&str, &str); 3] = [
    ("intervalSeconds", "interval_seconds"),
    ("timeoutSeconds", "timeout_seconds"),
    ("startSeconds", "start_seconds"),
];

/// The longest accepted period: a day.
const MAX_SECONDS: f64 = 86_400.0;

fn command(value: &Value) -> Result<Vec<String>, String> {
    let argv: Option<Vec<String>> = value.as_array().and_then(|items| {
        items
            .iter()
            .map(|v| v.as_str().filter(|s| !s.contains('\0')).map(str::to_owned))
            .collect()
    });
    match argv {
        Some(argv) if argv.first().is_some_and(|p| !p.is_empty()) => Ok(argv),
        _ => Err("must be a non-empty array of strings (an argv, run without a shell)".into()),
    }
}

fn http(value: &Value) -> Result<HttpTarget, String> {
    let url = value.as_str().ok_or("must be an http:// URL")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or("must be an http:// URL (https is not probed: probe the worker on loopback)")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("the path must not contain spaces or control characters".into());
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    let (host, port) = host_port(authority, Some(80))?;
    Ok(HttpTarget {
        url: url.to_owned(),
        host,
        port,
        path,
    })
}

fn tcp(value: &Value) -> Result<Probe, String> {
    let text = value.as_str().ok_or("must be a string HOST:PORT")?;
    let (host, port) = host_port(text, None)?;
    Ok(Probe::Tcp { host, port })
}

/// `HOST:PORT`, `[V6]:PORT`, or `HOST` when `default_port` is given.
fn host_port(text: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("an unclosed [ in the host")?;
        (v6, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!("invalid host {host:?}"));
    }
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("invalid port {p:?}"))?,
        (None, Some(p)) => p,
        (None, None) => return Err("must be HOST:PORT".into()),
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> HealthCheck {
        validate("healthCheck", &v).unwrap_or_else(|e| panic!("{v}: {e:?}"))
    }

    fn bad(v: Value) -> String {
        validate("healthCheck", &v).expect_err("invalid").join("; ")
    }

    #[test]
    fn defaults() {
        let c = ok(json!({"tcp": "127.0.0.1:9000"}));
        assert_eq!(
            c,
            HealthCheck {
                probe: Probe::Tcp {
                    host: "127.0.0.1".into(),
                    port: 9000
                },
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                retries: 3,
                start: Duration::ZERO,
            }
        );
    }

    #[test]
    fn snake_case_spellings() {
        let c = ok(
            json!({"tcp": "h:1", "interval_seconds": 1, "timeout_seconds": 1, "start_seconds": 1}),
        );
        assert_eq!(
            (c.interval, c.timeout, c.start),
            (
                Duration::from_secs(1),
                Duration::from_secs(1),
                Duration::from_secs(1)
            )
        );
    }

    #[test]
    fn every_field() {
        let c = ok(
            json!({"command": ["/bin/true", "-x"], "intervalSeconds": 0.5,
            "timeoutSeconds": 1, "retries": 5, "startSeconds": 30}),
        );
        assert_eq!(
            c.probe,
            Probe::Command(vec!["/bin/true".into(), "-x".into()])
        );
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.retries, 5);
        assert_eq!(c.start, Duration::from_secs(30));
    }

    #[test]
    fn urls() {
        let t = |u: &str| match ok(json!({ "http": u })).probe {
            Probe::Http(t) => (t.host, t.port, t.path),
            p => panic!("{p:?}"),
        };
        assert_eq!(
            t("http://127.0.0.1:8080/health"),
            ("127.0.0.1".into(), 8080, "/health".into())
        );
        assert_eq!(t("http://localhost"), ("localhost".into(), 80, "/".into()));
        assert_eq!(
            t("http://[::1]:81/a?b=c"),
            ("::1".into(), 81, "/a?b=c".into())
        );
        assert_eq!(t("http://h?x"), ("h".into(), 80, "/?x".into()));
        for u in [
            "https://h/",
            "ftp://h",
            "http://",
            "http://h:0/",
            "http://h:x/",
            "http://u@h/",
            "http://h/a b",
        ] {
            assert!(
                bad(json!({ "http": u })).starts_with("healthCheck.http: "),
                "{u}"
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            bad(json!([])),
            "healthCheck: must be a map with one of command, http or tcp"
        );
        assert!(bad(json!({})).contains("healthCheck.probe: one of"));
        assert!(bad(json!({"tcp": "h:1", "http": "http://h"})).contains("only one of"));
        assert!(bad(json!({"tcp": "h"})).contains("healthCheck.tcp: must be HOST:PORT"));
        assert!(bad(json!({"command": []})).contains("healthCheck.command"));
        assert!(bad(json!({"tcp": "h:1", "retries": 0})).contains("healthCheck.retries"));
        assert!(bad(json!({"tcp": "h:1", "intervalSeconds": 0})).contains("intervalSeconds"));
        assert!(bad(json!({"tcp": "h:1", "timeoutSeconds": "2"})).contains("timeoutSeconds"));
        assert!(bad(json!({"tcp": "h:1", "startSeconds": -1})).contains("startSeconds"));
        assert!(bad(json!({"tcp": "h:1", "bogus": 1})).contains("healthCheck.bogus: unknown key"));
        let all = bad(json!({"tcp": 1, "retries": -1}));
        assert!(all.contains("tcp") && all.contains("retries"), "{all}");
    }
}
