//! The HTTP source: GET a JSON job map, polled, with conditional requests.
//!
//! # Theory of operation
//!
//! Every load sends one GET. After a response that was parsed, its `ETag`
//! and `Last-Modified` are kept and sent back as `If-None-Match` and
//! `If-Modified-Since`; a `304 Not Modified` is then [`Loaded::Unchanged`]:
//! nothing is read, parsed or reconciled. Any failure forgets them, so the
//! first success after a failure is a full response, which clears the error
//! in status; a reload forgets them too, so `lrpmctl reload` always reads
//! the whole document.
//!
//! The whole request, body included, must finish within `--source-timeout`.
//! At most [`MAX_REDIRECTS`] redirects are followed, never from `https` down
//! to `http`. The body is read chunk by chunk and refused as soon as it
//! passes [`MAX_DOCUMENT`]. A status other than 2xx, a `Content-Type` that
//! is not JSON, a body that is not UTF-8 or not a job map: each fails the
//! load, and the supervisor keeps its last good configuration.
//!
//! TLS is rustls (with the *ring* provider) and the system's trust store
//! (`/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), read once when
//! the source opens. Proxies come from `HTTPS_PROXY`, `HTTP_PROXY` and
//! `NO_PROXY`. A bearer token may come from [`TOKEN_ENV`], never from the
//! command line; it is never logged, is dropped on a redirect to another
//! host, and no child of lrpm inherits the variable.
//!
//! With `--interval 0` the source long-polls: the next GET goes out as soon
//! as the previous one returns (a server may hold a conditional request
//! until the document changes), but at most once per [`LONG_POLL_GAP`], and
//! with backoff after failures.

use std::fmt;
use std::time::Duration;

use lrpm_core::backoff::Backoff;
use reqwest::header::{
    ACCEPT, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED,
};
use reqwest::{StatusCode, Url, redirect};
use tokio::time::{Instant, sleep, sleep_until};

use super::api::{ConfigSource, LoadError, Loaded, MAX_DOCUMENT, OpenError, Parser, SourceOptions};

use crate::base::HTTP_TOKEN_ENV as TOKEN_ENV;
/// How many redirects one load follows at most.
pub(crate) const MAX_REDIRECTS: usize = 5;
/// With `--interval 0`, the shortest time between the starts of two
/// requests.
pub(crate) const LONG_POLL_GAP: Duration = Duration::from_secs(1);
/// With `--interval 0`, the longest wait after failures.
const LONG_POLL_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How much of an error response's body is quoted in the error.
const MAX_QUOTE: usize = 200;

/// A failed load of an HTTP source.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {failure}")]
pub(crate) struct HttpError {
    /// The URL, its password (if any) masked.
    pub(crate) url: String,
    /// What went wrong.
    #[source]
    pub(crate) failure: HttpFailure,
}

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpFailure {
    /// No complete response within `--source-timeout`.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    /// The request failed (connection, TLS, redirects…).
    #[error("{0}")]
    Request(String),
    /// The server answered with a status other than 2xx or 304.
    #[error("HTTP {status}{}", body.as_ref().map_or_else(String::new, |b| format!(": {b}")))]
    Status {
        status: StatusCode,
        /// The start of the response body.
        body: Option<String>,
    },
    /// A 304 answered a request that had no validators.
    #[error("304 Not Modified to a request that was not conditional")]
    UnexpectedNotModified,
    /// The response is not JSON.
    #[error("expected a JSON response, got Content-Type {0:?}")]
    ContentType(String),
    /// The response is larger than [`MAX_DOCUMENT`].
    #[error("the response is larger than {} MiB", MAX_DOCUMENT >> 20)]
    TooLarge,
    /// The response body is empty.
    #[error("the response is empty (no jobs is an empty map: {{}})")]
    Empty,
    /// The response body is not UTF-8.
    #[error("the response is not UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
}

/// A bearer token; its `Debug` form does not show it.
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// What a server said identifies the version of the document we hold.
#[derive(Debug, Default)]
struct Validators {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

impl Validators {
    fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            etag: headers.get(ETAG).cloned(),
            last_modified: headers.get(LAST_MODIFIED).cloned(),
        }
    }

    fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// What one GET brought.
enum Fetched {
    NotModified,
    Document(String, Validators),
}

/// An HTTP or HTTPS source.
#[derive(Debug)]
pub(crate) struct HttpSource {
    url: Url,
    /// The URL for messages, its password masked.
    shown: String,
    client: reqwest::Client,
    token: Option<Token>,
    timeout: Duration,
    interval: Option<Duration>,
    /// The validators of the document last delivered.
    validators: Validators,
    /// When the next long-polling request may start.
    next_at: Instant,
    backoff: Backoff,
    parser: Parser,
}

impl HttpSource {
    /// Opens the source at `uri` (`http://…` or `https://…`), reading the
    /// bearer token from [`TOKEN_ENV`] and the system's trust store.
    pub(crate) fn open(uri: &str, options: &SourceOptions) -> Result<Self, OpenError> {
        let url = Url::parse(uri)
            .map_err(|e| OpenError::Usage(format!("{}: not a valid URL: {e}", mask(uri))))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(OpenError::Usage(format!(
                "{}: the URL has no host",
                mask(uri)
            )));
        }
        let shown = mask(uri);
        let token = read_token()?;
        if token.is_some() && url.scheme() == "http" && !is_loopback(&url) {
            tracing::warn!(
                "{shown}: the bearer token from {TOKEN_ENV} is sent in clear text over http://"
            );
        }
        let client = build_client(&url, &shown, options.timeout)?;
        Ok(Self {
            url,
            shown,
            client,
            token,
            timeout: options.timeout,
            interval: options.interval,
            validators: Validators::default(),
            next_at: Instant::now(),
            backoff: Backoff::new(LONG_POLL_BACKOFF_MAX),
            parser: Parser::default(),
        })
    }

    fn error(&self, failure: HttpFailure) -> LoadError {
        HttpError {
            url: self.shown.clone(),
            failure,
        }
        .into()
    }

    /// Sends one GET and reads the response.
    async fn fetch(&self) -> Result<Fetched, HttpFailure> {
        let mut request = self
            .client
            .get(self.url.clone())
            .header(ACCEPT, "application/json");
        if let Some(etag) = &self.validators.etag {
            request = request.header(IF_NONE_MATCH, etag.clone());
        }
        if let Some(last_modified) = &self.validators.last_modified {
            request = request.header(IF_MODIFIED_SINCE, last_modified.clone());
        }
        if let Some(Token(token)) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(|e| self.failure(&e))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return if self.validators.is_empty() {
                Err(HttpFailure::UnexpectedNotModified)
            } else {
                Ok(Fetched::NotModified)
            };
        }
        if !status.is_success() {
            let body = self.quote_body(&mut response).await;
            return Err(HttpFailure::Status { status, body });
        }
        if let Some(content_type) = response.headers().get(CONTENT_TYPE) {
            let content_type = String::from_utf8_lossy(content_type.as_bytes()).into_owned();
            if !is_json(&content_type) {
                return Err(HttpFailure::ContentType(content_type));
            }
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(HttpFailure::TooLarge);
        }
        let validators = Validators::from_headers(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(&e))? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(HttpFailure::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).map_err(|e| HttpFailure::NotUtf8(e.utf8_error()))?;
        if text.trim().is_empty() {
            return Err(HttpFailure::Empty);
        }
        Ok(Fetched::Document(text, validators))
    }

    /// The first line of an error response's body, short and printable.
    async fn quote_body(&self, response: &mut reqwest::Response) -> Option<String> {
        let mut head = Vec::new();
        while head.len() < MAX_QUOTE {
            match response.chunk().await {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&head);
        let line: String = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())?
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_QUOTE)
            .collect();
        (!line.is_empty()).then_some(line)
    }

    /// Describes a request error, with its causes but without the URL
    /// (which the message already starts with).
    fn failure(&self, error: &reqwest::Error) -> HttpFailure {
        if error.is_timeout() {
            return HttpFailure::Timeout(self.timeout);
        }
        let mut message = String::new();
        let mut cause: Option<&dyn std::error::Error> = Some(error);
        while let Some(e) = cause {
            let text = e.to_string();
            // reqwest repeats the URL in its own message.
            let text = text
                .split_once(" for url (")
                .map_or(text.as_str(), |(before, _)| before);
            if !message.contains(text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(text);
            }
            cause = e.source();
        }
        HttpFailure::Request(message)
    }
}

impl ConfigSource for HttpSource {
    async fn load(&mut self) -> Result<Loaded, LoadError> {
        let started = Instant::now();
        let result = match self.fetch().await {
            Ok(Fetched::NotModified) => {
                tracing::debug!("{}: not modified", self.shown);
                Ok(Loaded::Unchanged)
            }
            Ok(Fetched::Document(text, validators)) => self
                .parser
                .json(self.shown.clone(), text)
                .await
                .map(|decl| {
                    self.validators = validators;
                    Loaded::Config(decl)
                }),
            Err(failure) => Err(self.error(failure)),
        };
        if result.is_err() {
            // The next success is a full response, which clears the error.
            self.validators = Validators::default();
            self.next_at = Instant::now() + self.backoff.fail();
        } else {
            self.backoff.reset();
            self.next_at = started + LONG_POLL_GAP;
        }
        result
    }

    async fn changed(&mut self) {
        match self.interval {
            Some(interval) => sleep(interval).await,
            None => sleep_until(self.next_at).await,
        }
    }

    fn reload_requested(&mut self) {
        // A reload reads the whole document, whatever the server's cache
        // says.
        self.validators = Validators::default();
    }
}

/// Reads the bearer token from [`TOKEN_ENV`]; blank means none.
fn read_token() -> Result<Option<Token>, OpenError> {
    let token = match std::env::var(TOKEN_ENV) {
        Ok(token) => token.trim().to_owned(),
        Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(OpenError::Usage(format!("{TOKEN_ENV} is not valid UTF-8")));
        }
    };
    if token.is_empty() {
        return Ok(None);
    }
    if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        return Err(OpenError::Usage(format!(
            "{TOKEN_ENV} holds characters that cannot be sent in an HTTP header"
        )));
    }
    Ok(Some(Token(token)))
}

/// The HTTP client: rustls with the system's trust store, a total timeout,
/// a bounded redirect policy.
fn build_client(url: &Url, shown: &str, timeout: Duration) -> Result<reqwest::Client, OpenError> {
    // reqwest uses the process's default rustls provider; a program built
    // on the lrpm library may have installed its own already.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let builder = || {
        reqwest::Client::builder()
            .user_agent(concat!("lrpm/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .redirect(redirect_policy())
            .pool_max_idle_per_host(1)
    };
    match builder().build() {
        Ok(client) => Ok(client),
        // A machine without CA certificates can still fetch over http.
        Err(e) if url.scheme() == "http" => {
            tracing::warn!(
                "{shown}: no usable CA certificates, so a redirect to https will fail: {e}"
            );
            builder()
                .tls_certs_only(std::iter::empty())
                .build()
                .map_err(|e| {
                    OpenError::Other(format!("{shown}: cannot create an HTTP client: {e}"))
                })
        }
        Err(e) => Err(OpenError::Other(format!(
            "{shown}: cannot set up TLS: {e} (install ca-certificates, or set SSL_CERT_FILE)"
        ))),
    }
}

/// Follows at most [`MAX_REDIRECTS`] redirects, and none from https to
/// http.
fn redirect_policy() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if downgrade {
            attempt.error("refusing a redirect from https to http")
        } else {
            attempt.follow()
        }
    })
}

/// Whether a `Content-Type` is JSON: `application/json`, `text/json` or
/// `…+json`, whatever its parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Whether the URL's host is this machine (`localhost`, 127.0.0.0/8, ::1).
fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The URL as given, with its password (if any) masked.
fn mask(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(_) => uri.to_owned(),
        Err(_) => match uri.split_once('@') {
            Some((_, host)) if uri.contains("://") => {
                let scheme = uri.split("://").next().unwrap_or_default();
                format!("{scheme}://***@{host}")
            }
            _ => uri.to_owned(),
        },
    }
}

impl From<HttpError> for LoadError {
    fn from(e: HttpError) -> Self {
        LoadError::Kind(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.lrpm.jobs+json"));
        assert!(is_json("text/json"));
        assert!(!is_json("text/html; charset=utf-8"));
        assert!(!is_json("application/octet-stream"));
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask("https://user:secret@example.com/jobs"),
            "https://user:***@example.com/jobs"
        );
        assert_eq!(mask("https://example.com/jobs"), "https://example.com/jobs");
        assert!(!mask("https://user:secret@[bad/jobs").contains("secret"));
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        assert_eq!(format!("{:?}", Token("s3cret".into())), "Token(…)");
    }
}
