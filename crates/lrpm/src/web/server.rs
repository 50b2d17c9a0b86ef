//! The HTTP server of `--metrics`: hyper's HTTP/1 connections, a bounded
//! number at once, each request answered from the event loop's reply.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::metrics::UsageCache;
use super::msg::{HEALTH_TIMEOUT, WebRequest};

/// How many connections are served at once; more wait in the listen
/// backlog.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for the event loop (but `/healthz`, which
/// waits [`HEALTH_TIMEOUT`]).
const LOOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The status page: one file, no framework, nothing fetched from
/// elsewhere.
const PAGE: &str = include_str!("page.html");

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// OpenMetrics's.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves it until lrpm exits; returns the address bound
/// (the port chosen, for port 0).
pub(crate) async fn start(
    addr: SocketAddr,
    loop_tx: mpsc::Sender<WebRequest>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept(listener, loop_tx));
    Ok(bound)
}

async fn accept(listener: TcpListener, loop_tx: mpsc::Sender<WebRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // The workers' figures, kept from one scrape to the next.
    let usage = Arc::new(std::sync::Mutex::new(UsageCache::default()));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!("metrics: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let loop_tx = loop_tx.clone();
        let usage = usage.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let loop_tx = loop_tx.clone();
                let usage = usage.clone();
                async move { Ok::<_, Infallible>(respond(request, &loop_tx, usage).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// A response with `status`, `content_type` and `body`.
fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 503: the event loop did not answer.
fn unavailable() -> Response<Full<Bytes>> {
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain; charset=utf-8",
        "lrpm's event loop does not answer\n",
    )
}

/// Asks the event loop with the request `make` builds, and waits for its
/// answer at most `timeout`.
async fn ask<T>(
    loop_tx: &mpsc::Sender<WebRequest>,
    make: impl FnOnce(oneshot::Sender<T>) -> WebRequest,
    timeout: Duration,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    let asked = async {
        loop_tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    };
    tokio::time::timeout(timeout, asked).await.ok().flatten()
}

/// Whether the client's `Accept` header asks for OpenMetrics.
fn wants_openmetrics(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .trim()
                .to_ascii_lowercase()
                .starts_with("application/openmetrics-text")
        })
}

async fn respond(
    request: Request<Incoming>,
    loop_tx: &mpsc::Sender<WebRequest>,
    usage: Arc<std::sync::Mutex<UsageCache>>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "read-only: GET only\n",
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let openmetrics = wants_openmetrics(&request);
            let Some(snapshot) = ask(loop_tx, WebRequest::Metrics, LOOP_TIMEOUT).await else {
                return unavailable();
            };
            let encoded = tokio::task::spawn_blocking(move || {
                super::metrics::encode(snapshot, openmetrics, &usage)
            })
            .await;
            match encoded {
                Ok(text) => reply(
                    StatusCode::OK,
                    if openmetrics {
                        OPENMETRICS_TEXT
                    } else {
                        PROMETHEUS_TEXT
                    },
                    text,
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("cannot encode the metrics: {e}\n"),
                ),
            }
        }
        "/healthz" => match ask(loop_tx, WebRequest::Health, HEALTH_TIMEOUT).await {
            Some(()) => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
            None => unavailable(),
        },
        "/status" => match ask(loop_tx, WebRequest::Status, LOOP_TIMEOUT).await {
            Some(line) => reply(StatusCode::OK, "application/json", line),
            None => unavailable(),
        },
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /, /metrics, /healthz or /status\n",
        ),
    }
}
