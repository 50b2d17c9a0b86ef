//! The `http://` and `https://` sources against a real server started by
//! each test on 127.0.0.1 (a random port): conditional requests and what a
//! 304 costs, every failure mode (the farm keeps running and the error shows
//! in status), redirects, the bearer token, reloads, long polling, and TLS
//! with the system trust store.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Lrpm, jobs, lrpm_command, pid_of, run_bounded, signal, wait_until};

const LONG: Duration = Duration::from_secs(30);

/// A request the server received.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    /// The status it was answered with (0 for a raw or endless answer).
    answered: u16,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn is_conditional(&self) -> bool {
        self.header("if-none-match").is_some() || self.header("if-modified-since").is_some()
    }
}

/// How the server answers one request.
enum Reply {
    /// A complete response.
    Response {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// The same, after a delay.
    Slow(Duration, Box<Reply>),
    /// Bytes that are not HTTP.
    Raw(&'static [u8]),
    /// A 200 whose body never ends (no Content-Length).
    Endless,
}

impl Reply {
    fn json(body: &str) -> Reply {
        Reply::Response {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    fn status(status: u16, body: &str) -> Reply {
        Reply::Response {
            status,
            headers: vec![("content-type", "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        if let Reply::Response { headers, .. } = &mut self {
            headers.push((name, value.into()));
        }
        self
    }
}

type Handler = Box<dyn FnMut(&Request) -> Reply + Send>;

/// A tiny HTTP/1.1 server: one thread per connection, one request per
/// connection, every request recorded.
struct Server {
    addr: SocketAddr,
    handler: Arc<Mutex<Handler>>,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Bytes written by endless answers.
    endless_written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The server's side of TLS, when it speaks https.
type Tls = Arc<rustls::ServerConfig>;

impl Server {
    fn start(handler: impl FnMut(&Request) -> Reply + Send + 'static) -> Server {
        Server::start_with(None, Box::new(handler))
    }

    fn start_with(tls: Option<Tls>, handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let handler = Arc::new(Mutex::new(handler));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let endless_written = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (handler, requests, endless, stop) = (
                handler.clone(),
                requests.clone(),
                endless_written.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (handler, requests, endless, tls) = (
                        handler.clone(),
                        requests.clone(),
                        endless.clone(),
                        tls.clone(),
                    );
                    std::thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(LONG));
                        match tls {
                            Some(config) => {
                                let Ok(conn) = rustls::ServerConnection::new(config) else {
                                    return;
                                };
                                let stream = rustls::StreamOwned::new(conn, stream);
                                serve(stream, &handler, &requests, &endless);
                            }
                            None => serve(stream, &handler, &requests, &endless),
                        }
                    });
                }
            })
        };
        Server {
            addr,
            handler,
            requests,
            endless_written,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, handler: impl FnMut(&Request) -> Reply + Send + 'static) {
        *self.handler.lock().expect("handler") = Box::new(handler);
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }

    fn count(&self) -> usize {
        self.requests.lock().expect("requests").len()
    }

    /// Waits until the server has received `n` requests in all.
    fn wait_for_requests(&self, n: usize) -> Vec<Request> {
        let deadline = Instant::now() + LONG;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} requests"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.requests()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop up.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request, answers it, and closes the connection.
fn serve<S: Read + Write>(
    stream: S,
    handler: &Mutex<Handler>,
    requests: &Mutex<Vec<Request>>,
    endless: &AtomicUsize,
) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let mut request = Request {
        path,
        headers,
        answered: 0,
    };
    // Recorded with the status of its answer, before any delay of a slow
    // one, and under the handler's lock so that the record keeps the order
    // of the answers: a test that waits for n requests sees n answered ones.
    let mut reply = {
        let mut handler = handler.lock().expect("handler");
        let reply = handler(&request);
        request.answered = status_of(&reply);
        requests.lock().expect("requests").push(request);
        reply
    };
    while let Reply::Slow(delay, inner) = reply {
        std::thread::sleep(delay);
        reply = *inner;
    }
    let stream = reader.get_mut();
    match reply {
        Reply::Response {
            status,
            headers,
            body,
        } => {
            let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            if !headers.iter().any(|(n, _)| *n == "content-length") {
                head.push_str(&format!("content-length: {}\r\n", body.len()));
            }
            head.push_str("connection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
        Reply::Raw(bytes) => {
            let _ = stream.write_all(bytes);
        }
        Reply::Endless => {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            let chunk = vec![b' '; 64 * 1024];
            while stream.write_all(&chunk).is_ok() {
                endless.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        }
        Reply::Slow(..) => unreachable!("unwrapped above"),
    }
    let _ = stream.flush();
}

/// The status a reply will have, if it is HTTP at all.
fn status_of(reply: &Reply) -> u16 {
    match reply {
        Reply::Response { status, .. } => *status,
        Reply::Slow(_, inner) => status_of(inner),
        Reply::Raw(_) | Reply::Endless => 0,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

/// Starts lrpm on `source` with `args`, and the environment changed by
/// `env` (a `None` value removes the variable). Proxies are switched off so
/// that requests go straight to the test server.
fn start(source: &str, args: &[&str], env: &[(&str, Option<&str>)]) -> Lrpm {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let config = dir.path().join("unused.json");
    Lrpm::start_in(dir, config, |command| {
        for name in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "all_proxy",
        ] {
            command.env_remove(name);
        }
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        command.args(args).arg(source);
    })
}

fn source_status(lrpm: &Lrpm) -> Value {
    lrpm.status()["supervisor"]["source"].clone()
}

/// A document that changes when `version` does, served with an ETag and
/// answered 304 when the client already has it.
fn etag_server(doc: Arc<Mutex<(u32, String)>>) -> impl FnMut(&Request) -> Reply + Send {
    move |request| {
        let (version, body) = doc.lock().expect("doc").clone();
        let etag = format!("\"v{version}\"");
        if request.header("if-none-match") == Some(etag.as_str()) {
            Reply::status(304, "").with("etag", etag)
        } else {
            Reply::json(&body).with("etag", etag)
        }
    }
}

#[test]
fn an_etag_makes_an_unchanged_document_cost_one_304() {
    let doc = Arc::new(Mutex::new((1, jobs(&["a"]))));
    let server = Server::start(etag_server(doc.clone()));
    let lrpm = start(&server.url("/jobs.json"), &["-i", "1"], &[]);
    let a = lrpm.running_pid("a");
    let loaded_at = source_status(&lrpm)["last_load_at"]
        .as_f64()
        .expect("loaded");
    // The status derives wall times from a monotonic clock: allow for jitter.
    let loaded_since = |lrpm: &Lrpm| {
        source_status(lrpm)["last_load_at"]
            .as_f64()
            .expect("loaded")
            - loaded_at
            > 0.5
    };
    let requests = server.wait_for_requests(4);
    assert_eq!(requests[0].answered, 200);
    assert!(!requests[0].is_conditional());
    assert_eq!(requests[0].header("accept"), Some("application/json"));
    for request in &requests[1..4] {
        assert_eq!(request.header("if-none-match"), Some("\"v1\""));
        assert_eq!(request.answered, 304);
    }
    // A 304 is not parsed and delivers nothing: once lrpm has handled the
    // attempts of those requests, the last load is still the first.
    let status = lrpm.wait_for("four attempts to load", LONG, |s| {
        s["supervisor"]["source"]["loads"].as_u64() >= Some(4)
    });
    let source = &status["supervisor"]["source"];
    assert!(
        source["last_load_at"].as_f64().expect("loaded") - loaded_at <= 0.5,
        "{source}"
    );
    assert!(source["last_error"].is_null());

    *doc.lock().expect("doc") = (2, jobs(&["a", "b"]));
    lrpm.running_pid("b");
    assert_eq!(lrpm.running_pid("a"), a, "an unchanged job keeps running");
    assert!(loaded_since(&lrpm));
}

#[test]
fn last_modified_makes_an_unchanged_document_cost_one_304() {
    const STAMP: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    let server = Server::start(|request: &Request| {
        if request.header("if-modified-since") == Some(STAMP) {
            Reply::status(304, "")
        } else {
            Reply::json(&jobs(&["a"])).with("last-modified", STAMP)
        }
    });
    let lrpm = start(&server.url("/jobs.json"), &["-i", "1"], &[]);
    lrpm.running_pid("a");
    let requests = server.wait_for_requests(3);
    assert_eq!(requests[0].answered, 200);
    for request in &requests[1..3] {
        assert_eq!(request.header("if-modified-since"), Some(STAMP));
        assert_eq!(request.header("if-none-match"), None);
        assert_eq!(request.answered, 304);
    }
}

#[test]
fn every_failure_of_a_server_keeps_the_farm() {
    let doc = Arc::new(Mutex::new((1, jobs(&["a"]))));
    let server = Server::start(etag_server(doc.clone()));
    let lrpm = start(
        &server.url("/jobs.json"),
        &["-i", "1", "--source-timeout", "2"],
        &[],
    );
    let a = lrpm.running_pid("a");
    type Case = (&'static str, Box<dyn Fn(&Request) -> Reply + Send + Sync>);
    let cases: Vec<Case> = vec![
        (
            "HTTP 500 Internal Server Error: database is down",
            Box::new(|_| Reply::status(500, "\n  database is down\nat line 3")),
        ),
        (
            "cannot parse",
            Box::new(|_| Reply::json("this is not json")),
        ),
        (
            "top level must be a map",
            Box::new(|_| Reply::json("[1, 2]")),
        ),
        (
            "expected a JSON response, got Content-Type \"text/html; charset=utf-8\"",
            Box::new(|_| Reply::Response {
                status: 200,
                headers: vec![("content-type", "text/html; charset=utf-8".into())],
                body: b"<html>login</html>".to_vec(),
            }),
        ),
        ("the response is empty", Box::new(|_| Reply::json(""))),
        (
            "not UTF-8",
            Box::new(|_| Reply::Response {
                status: 200,
                headers: vec![],
                body: vec![0xff, 0xfe, b'{', b'}'],
            }),
        ),
        (
            "no complete response within 2s",
            Box::new(|_| Reply::Slow(Duration::from_secs(5), Box::new(Reply::json(&jobs(&[]))))),
        ),
        (
            "more than 5 redirects",
            Box::new(|_| Reply::status(302, "").with("location", "/jobs.json")),
        ),
        (
            "larger than 64 MiB",
            Box::new(|_| Reply::json("{}").with("content-length", "100000000")),
        ),
        (
            "304 Not Modified to a request that was not conditional",
            // Conditional requests fail, so that one comes without validators.
            Box::new(|request| match request.is_conditional() {
                true => Reply::status(500, ""),
                false => Reply::status(304, ""),
            }),
        ),
        (
            "error sending request",
            Box::new(|_| Reply::Raw(b"garbage\r\n\r\n")),
        ),
    ];
    for (expected, reply) in cases {
        server.set(move |request| reply(request));
        let error = lrpm.wait_for_source_error(expected);
        assert!(error.starts_with(&server.url("/jobs.json")), "{error}");
        let job = lrpm.job("a").expect("job a is still there");
        assert_eq!(job["state"], "running", "{expected}");
        assert_eq!(pid_of(&job), Some(a), "{expected}: job a was not restarted");
        // Back to normal: the first success is a full response (a failure
        // forgot the validators), which clears the error.
        let before = server.count();
        server.set(etag_server(doc.clone()));
        lrpm.wait_for_no_source_error();
        let after = server.requests();
        let first_ok = after[before..]
            .iter()
            .find(|r| r.answered == 200)
            .expect("a 200 after the failure");
        assert!(!first_ok.is_conditional(), "{expected}: {first_ok:?}");
    }
    assert_eq!(lrpm.job("a").as_ref().and_then(pid_of), Some(a));
}

#[test]
fn an_endless_body_is_cut_off_at_the_limit_while_it_is_read() {
    let server = Server::start(|_: &Request| Reply::Endless);
    let lrpm = start(&server.url("/jobs.json"), &["-i", "3600"], &[]);
    lrpm.wait_for_source_error("the response is larger than 64 MiB");
    let written = server.endless_written.load(Ordering::SeqCst);
    // What lrpm read, plus what the socket buffers held when it stopped:
    // the kernel grows them up to its tcp_rmem and tcp_wmem maxima (32 MiB
    // and 4 MiB on Debian), the more so on a loaded machine.
    let buffers: usize = ["tcp_rmem", "tcp_wmem"]
        .iter()
        .map(|name| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .ok()
                .and_then(|v| v.split_whitespace().nth(2)?.parse().ok())
                .unwrap_or(8 << 20)
        })
        .sum();
    let bound = (64 << 20) + buffers + (1 << 20);
    assert!(
        written < bound,
        "the server wrote {written} bytes (bound {bound})"
    );
}

#[test]
fn redirects_are_followed_and_the_token_goes_to_the_first_host_only() {
    const TOKEN: &str = "s3cret-t0ken";
    let server = Server::start(|_: &Request| Reply::status(404, ""));
    let port = server.addr.port();
    let worker = serde_json::json!({"w": {
        "name": "w",
        "command": "echo \"token=${LRPM_HTTP_TOKEN:-none}\"; exec sleep 300",
    }})
    .to_string();
    server.set(move |request: &Request| match request.path.as_str() {
        // Same host: the token stays.
        "/start" => Reply::status(302, "").with("location", "/moved"),
        // Another host (localhost is not 127.0.0.1 by name): it is dropped.
        "/moved" => {
            Reply::status(302, "").with("location", format!("http://localhost:{port}/jobs.json"))
        }
        "/jobs.json" => Reply::json(&worker),
        _ => Reply::status(404, ""),
    });
    let lrpm = start(
        &server.url("/start"),
        &["-i", "3600"],
        &[("LRPM_HTTP_TOKEN", Some(TOKEN))],
    );
    lrpm.running_pid("w");
    let requests = server.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/start", "/moved", "/jobs.json"]);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(requests[0].header("authorization"), Some(bearer.as_str()));
    assert_eq!(requests[1].header("authorization"), Some(bearer.as_str()));
    assert_eq!(requests[2].header("authorization"), None);
    // No worker inherits it, and it is never logged.
    wait_until("the worker's line", LONG, || {
        lrpm.stdout().contains("[w] token=")
    });
    assert!(
        lrpm.stdout().contains("[w] token=none"),
        "{}",
        lrpm.stdout()
    );
    assert!(!lrpm.stderr().contains(TOKEN));
    assert!(!lrpm.status().to_string().contains(TOKEN));
}

#[test]
fn reload_and_sighup_fetch_the_whole_document_at_once() {
    let doc = Arc::new(Mutex::new((1, jobs(&["a"]))));
    let server = Server::start(etag_server(doc.clone()));
    let lrpm = start(&server.url("/jobs.json"), &["-i", "3600"], &[]);
    lrpm.running_pid("a");
    assert_eq!(server.count(), 1);
    let out = lrpm.ctl(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let requests = server.wait_for_requests(2);
    assert!(!requests[1].is_conditional(), "a reload reads everything");
    assert_eq!(requests[1].answered, 200);
    *doc.lock().expect("doc") = (2, jobs(&["a", "b"]));
    signal(lrpm.pid(), rustix::process::Signal::HUP);
    lrpm.running_pid("b");
}

#[test]
fn interval_zero_long_polls_at_most_once_a_second() {
    let doc = Arc::new(Mutex::new((1, jobs(&["a"]))));
    let server = Server::start(etag_server(doc));
    let lrpm = start(&server.url("/jobs.json"), &["-i", "0"], &[]);
    lrpm.running_pid("a");
    let first = server.count();
    let since = Instant::now();
    // Three more requests: at most one a second, and one more for the
    // second already begun, so they take 2 s at least (a loaded machine
    // only makes the wait longer).
    let more = 3;
    server.wait_for_requests(first + more);
    let seconds = since.elapsed().as_secs_f64();
    assert!(
        more as f64 <= seconds + 1.0,
        "{more} requests in {seconds:.2} s"
    );
}

#[test]
fn malformed_urls_are_usage_errors() {
    for source in ["http://", "https://[::1/jobs"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = lrpm_command();
        command
            .arg("--socket")
            .arg(dir.path().join("control.sock"))
            .arg(source);
        let out = run_bounded(command, LONG);
        assert_eq!(out.status.code(), Some(64), "{source}: {out:?}");
    }
}

// TLS: a test CA (valid 2000–2100) and a certificate it signed for
// 127.0.0.1 and localhost.

const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBYjCCAQigAwIBAgICEAAwCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMbHJwbSB0
ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAxMDAwMDAwWjAXMRUwEwYD
VQQDDAxscnBtIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASxGT+Y
TGvBLHLOo6u8ysuptln2HrxfiUniHFTFVxMaMbff5rIn636qrL1aBRp3JfLWN+1h
JpZgdByoyYoRB8Ieo0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIC
BDAdBgNVHQ4EFgQUtiSVgNp6499m8OH5RTZ23ZWisdowCgYIKoZIzj0EAwIDSAAw
RQIhAPuVfcrduc2Oo+w82ngOd8ZbmUJ8OuwkbzD+++26Q+KpAiAg0ZF/1vtTVlVq
bYWbh9vH4PvLifH6vNQUNPB0D0c73A==
-----END CERTIFICATE-----
";

const TEST_SERVER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBrTCCAVOgAwIBAgICEAEwCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMbHJwbSB0
ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAxMDAwMDAwWjAUMRIwEAYD
VQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQegzLEM2S+
PFQ0CM+Q58JygLWgRI8vmM2EvTFao73eHMafRxsFbSigA492zFPMjoZKiTEvoMLP
cALqjNiaE8R4o4GPMIGMMAkGA1UdEwQCMAAwDgYDVR0PAQH/BAQDAgeAMBMGA1Ud
JQQMMAoGCCsGAQUFBwMBMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2FsaG9zdDAfBgNV
HSMEGDAWgBS2JJWA2nrj32bw4flFNnbdlaKx2jAdBgNVHQ4EFgQUgfUzbhM+AxcN
EP55Iie403dh5cMwCgYIKoZIzj0EAwIDSAAwRQIgNzpPrUYjRzGqi6BBSC12Wezz
NvRdmzHMuXkCLbVmVeQCIQCUlMrenqLby/0wZtm9fUvmi0/4wejeenpbtO5vwILh
ww==
-----END CERTIFICATE-----
";

const TEST_SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCDGoII9xJXzuMmHf
EBrClvjQxYcOSBhm15c66rVFdOehRANCAAQegzLEM2S+PFQ0CM+Q58JygLWgRI8v
mM2EvTFao73eHMafRxsFbSigA492zFPMjoZKiTEvoMLPcALqjNiaE8R4
-----END PRIVATE KEY-----
";

fn tls_config() -> Tls {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![
        CertificateDer::from_pem_slice(TEST_SERVER_CERT.as_bytes()).expect("server cert"),
        CertificateDer::from_pem_slice(TEST_CA.as_bytes()).expect("CA cert"),
    ];
    let key = PrivateKeyDer::from_pem_slice(TEST_SERVER_KEY.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    Arc::new(config)
}

#[test]
fn https_trusts_the_system_store_and_only_it() {
    let server = Server::start_with(
        Some(tls_config()),
        Box::new(|_: &Request| Reply::json(&jobs(&["a"]))),
    );
    let url = format!("https://{}/jobs.json", server.addr);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TEST_CA).expect("write the CA");

    // SSL_CERT_FILE is the system store here, and it holds the test CA.
    let trusting = start(
        &url,
        &["-i", "3600"],
        &[
            ("SSL_CERT_FILE", Some(ca.to_str().expect("utf-8 path"))),
            ("SSL_CERT_DIR", None),
        ],
    );
    trusting.running_pid("a");
    drop(trusting);

    // A store without the test CA (whatever this machine's holds).
    let other = dir.path().join("other.pem");
    std::fs::write(&other, TEST_SERVER_CERT).expect("write a store");
    let distrusting = start(
        &url,
        &["-i", "3600"],
        &[
            ("SSL_CERT_FILE", Some(other.to_str().expect("utf-8 path"))),
            ("SSL_CERT_DIR", None),
        ],
    );
    let error = distrusting.wait_for_source_error("certificate");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(distrusting.job("a").is_none());
}

#[test]
fn without_any_ca_certificate_http_works_and_https_refuses_to_start() {
    let server = Server::start(|_: &Request| Reply::json(&jobs(&["a"])));
    let no_store = [
        ("SSL_CERT_FILE", Some("/nonexistent/ca.pem")),
        ("SSL_CERT_DIR", None),
    ];
    let lrpm = start(&server.url("/jobs.json"), &["-i", "3600"], &no_store);
    lrpm.running_pid("a");

    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = lrpm_command();
    command
        .env("SSL_CERT_FILE", "/nonexistent/ca.pem")
        .env_remove("SSL_CERT_DIR")
        .arg("--socket")
        .arg(dir.path().join("control.sock"))
        .arg(format!("https://{}/jobs.json", server.addr));
    let out = run_bounded(command, LONG);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot set up TLS"), "{stderr}");
}
