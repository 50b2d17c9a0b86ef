//! The PostgreSQL source: one row per job, read by a `SELECT`, reloaded on
//! every `NOTIFY` of a channel (or polled), over a connection that lrpm
//! keeps and restores itself.
//!
//! # Theory of operation
//!
//! **Connection.** tokio-postgres hands out a `Client` and a `Connection`;
//! the connection does the socket I/O and must be driven. A task of its own
//! ([`drive`]) drives it through `Connection::poll_message`, which is the
//! only way notifications come out: each one raises the link's `notified`
//! flag and wakes the source. When the connection ends (an error, the
//! server closing it, `pg_terminate_backend`), the task records why and
//! wakes the source too. Nothing in tokio-postgres reconnects: this source
//! does, with backoff (1 s doubling to 30 s, [`MAX_RETRY`]). A loss of a
//! connection that had lasted [`STABLE`] is retried at once; one that had
//! not (a server that accepts and then drops us) waits its turn of the
//! backoff. TCP keepalives find a peer that vanished without a word.
//!
//! **After every connect: LISTEN first, then a full load.** Notifications
//! sent while no connection listened are lost, so a load that begins after
//! the `LISTEN` is what makes sure nothing was missed: a change committed
//! before it is in the load, one committed after it is notified.
//!
//! **Loads.** One `SELECT id::text, declaration::text FROM TABLE` (or the
//! user's query) by the simple-query protocol, whose rows come as text
//! whatever the columns' types (`text`, `integer`, `jsonb`, `json`). The
//! pairs go to a [`KeyedJobs`] store on a blocking thread: a row whose
//! declaration did not change keeps its checked job (the same
//! `Arc<JobSpec>`), so a change that touches one row reparses one job, and a
//! row of garbage makes only its own job invalid. A load that finds what
//! the last one delivered delivers nothing ([`Loaded::Unchanged`]), except
//! the first, the first after a failure and the one a reload asks for.
//!
//! **Bursts.** The `notified` flag is lowered when a load begins, so
//! notifications that arrive during it cost one more load, not one each. A
//! notification that arrives within [`QUIET`] of the end of a load is taken
//! for part of a burst: the source waits until the channel has been quiet
//! for [`QUIET`] (at most [`MAX_COALESCE`]) and then loads once. A lone
//! change is loaded at once.
//!
//! **Status.** The connection's state goes to the [`SourceMonitor`]
//! (connecting, connected, reconnecting with why and when next), and the
//! revision is the generation: how many configurations the source
//! delivered that differed from the one before.

use std::collections::HashSet;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lrpm_core::backoff::Backoff;
use lrpm_core::keyed::KeyedJobs;
use lrpm_core::{Declaration, JobId};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::api::{ConfigSource, LoadError, Loaded, OpenError, SourceMonitor, SourceOptions};
use super::pg_target::{PgHost, PgTarget, SslMode};

/// The longest wait between two attempts to connect, or to load after a
/// failed query.
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a connection must have lasted for its loss to be retried at
/// once rather than after the next delay of the backoff.
pub(crate) const STABLE: Duration = Duration::from_secs(10);
/// A notification this close to the end of a load is part of a burst, and
/// a burst is over once the channel has been quiet this long.
pub(crate) const QUIET: Duration = Duration::from_millis(5);
/// The longest a burst delays its load.
pub(crate) const MAX_COALESCE: Duration = Duration::from_millis(100);
/// TCP keepalive: idle time before the first probe, the time between
/// probes, and how many unanswered probes end the connection (a vanished
/// server is noticed within about 30 s).
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(15), Duration::from_secs(5), 3);

/// A failed load of a PostgreSQL source.
#[derive(Debug, thiserror::Error)]
#[error("{uri}: {failure}")]
pub(crate) struct PgError {
    /// The URI, its password masked.
    pub(crate) uri: String,
    /// What went wrong.
    pub(crate) failure: String,
}

impl From<PgError> for LoadError {
    fn from(e: PgError) -> Self {
        LoadError::Kind(Box::new(e))
    }
}

/// What the connection's task tells the source.
#[derive(Debug, Default)]
struct Signals {
    /// A notification arrived since the last load began.
    notified: AtomicBool,
    /// Why the connection ended, once it has.
    closed: Mutex<Option<String>>,
    /// Woken on either.
    wake: Notify,
}

impl Signals {
    fn closed(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A live connection.
#[derive(Debug)]
struct Link {
    client: Client,
    signals: Arc<Signals>,
    /// The task driving the connection; aborted (which closes the socket)
    /// when the link is dropped.
    driver: JoinHandle<()>,
    /// When it was made.
    since: Instant,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A `postgres://` source.
pub(crate) struct PgSource {
    target: PgTarget,
    /// The statement of every load.
    select: String,
    /// `LISTEN "channel"`, when the source listens.
    listen: Option<String>,
    /// The bound of a connection attempt and of a load.
    timeout: Duration,
    /// The poll interval, without a channel.
    interval: Option<Duration>,
    monitor: SourceMonitor,
    tls: MakeRustlsConnect,
    link: Option<Link>,
    /// Every row's declaration and verdict.
    jobs: Arc<Mutex<KeyedJobs>>,
    /// Delays between attempts to connect.
    reconnect: Backoff,
    /// Delays between loads that failed on a live connection.
    retry: Backoff,
    /// When the next attempt is due, after a failure.
    retry_at: Option<Instant>,
    /// Whether the next load delivers even what the last one did.
    deliver: bool,
    /// How many different configurations were delivered.
    generation: u64,
    /// When the last load ended.
    loaded_at: Option<Instant>,
}

impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSource")
            .field("target", &self.target)
            .field("connected", &self.link.is_some())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl PgSource {
    /// Opens the source at `uri`; connects at the first load.
    pub(crate) fn open(uri: &str, options: &SourceOptions) -> Result<Self, OpenError> {
        let target = PgTarget::parse(uri)?;
        if target.channel.is_none() && options.interval.is_none() {
            return Err(OpenError::Usage(format!(
                "{}: --interval 0 needs a channel= to listen on (without one the table is polled every --interval)",
                target.shown
            )));
        }
        let tls =
            MakeRustlsConnect::new(tls_config().map_err(|e| {
                OpenError::Other(format!("{}: cannot set up TLS: {e}", target.shown))
            })?);
        options.monitor.connecting();
        Ok(Self {
            select: target.select_sql(),
            listen: target.listen_sql(),
            target,
            timeout: options.timeout,
            interval: options.interval,
            monitor: options.monitor.clone(),
            tls,
            link: None,
            jobs: Arc::default(),
            reconnect: Backoff::new(MAX_RETRY),
            retry: Backoff::new(MAX_RETRY),
            retry_at: None,
            deliver: true,
            generation: 0,
            loaded_at: None,
        })
    }

    fn error(&self, failure: impl Into<String>) -> LoadError {
        PgError {
            uri: self.target.shown.clone(),
            failure: failure.into(),
        }
        .into()
    }

    /// Connects, starts the connection's task, and LISTENs.
    async fn connect(&self) -> Result<Link, String> {
        let mut config = tokio_postgres::Config::new();
        config
            .user(&self.target.user)
            .dbname(&self.target.dbname)
            .port(self.target.port)
            .application_name("lrpm")
            .connect_timeout(self.timeout)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE.0)
            .keepalives_interval(KEEPALIVE.1)
            .keepalives_retries(KEEPALIVE.2)
            .ssl_mode(match self.target.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require => tokio_postgres::config::SslMode::Require,
            });
        match &self.target.host {
            PgHost::Tcp(host) => config.host(host),
            PgHost::Socket(dir) => config.host_path(dir),
        };
        if let Some(password) = self.target.find_password() {
            config.password(password.expose());
        }
        let (client, connection) = config
            .connect(self.tls.clone())
            .await
            .map_err(|e| describe(&e))?;
        let signals = Arc::new(Signals::default());
        let driver = tokio::spawn(drive(connection, signals.clone()));
        let link = Link {
            client,
            signals,
            driver,
            since: Instant::now(),
        };
        if let Some(listen) = &self.listen {
            link.client
                .batch_execute(listen)
                .await
                .map_err(|e| format!("{listen}: {}", describe(&e)))?;
        }
        Ok(link)
    }

    /// Connects if there is no connection, then loads.
    async fn attempt(&mut self) -> Result<Loaded, LoadError> {
        if self.link.is_none() {
            let connected = timeout(self.timeout, self.connect()).await;
            let link = match connected {
                Ok(Ok(link)) => link,
                Ok(Err(why)) => return Err(self.connect_failed(&why)),
                Err(_) => {
                    let why = format!("no connection within {:?}", self.timeout);
                    return Err(self.connect_failed(&why));
                }
            };
            match &self.target.channel {
                Some(channel) => tracing::info!(
                    "{}: connected; listening on channel {channel:?}",
                    self.target.shown
                ),
                None => tracing::info!("{}: connected", self.target.shown),
            }
            self.monitor.connected();
            self.link = Some(link);
            // Whatever was notified while no connection listened is in
            // this load.
            self.deliver = true;
        }
        let link = self.link.as_ref().expect("invariant: connected above");
        link.signals.notified.store(false, Ordering::SeqCst);
        let answer = timeout(self.timeout, link.client.simple_query(&self.select)).await;
        let messages = match answer {
            Ok(Ok(messages)) => messages,
            Ok(Err(e)) if link.client.is_closed() => {
                let why = link.signals.closed().unwrap_or_else(|| describe(&e));
                return Err(self.lost(&why));
            }
            Ok(Err(e)) => return Err(self.query_failed(&describe(&e))),
            Err(_) => {
                // The query may still run on the server: dropping the
                // connection ends it there.
                let why = format!("the query did not finish within {:?}", self.timeout);
                return Err(self.lost(&why));
            }
        };
        let rows = match rows_of(messages) {
            Ok(rows) => rows,
            Err(why) => return Err(self.query_failed(&why)),
        };
        let jobs = self.jobs.clone();
        let deliver = std::mem::take(&mut self.deliver);
        let parsed = tokio::task::spawn_blocking(move || {
            let mut jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
            let changed = jobs.replace_all(
                rows.pairs
                    .iter()
                    .map(|(id, declaration)| (id, declaration.as_bytes())),
            );
            let decl = (changed || deliver).then(|| rows.declaration(&jobs));
            (changed, decl)
        })
        .await;
        let (changed, decl) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                // A panic in the parse: start afresh, and deliver next time.
                self.jobs = Arc::default();
                return Err(self.query_failed(&format!("parsing the rows failed: {e}")));
            }
        };
        self.retry.reset();
        self.retry_at = None;
        Ok(match decl {
            Some(decl) => {
                if changed || self.generation == 0 {
                    self.generation += 1;
                }
                self.monitor.set_revision(self.generation);
                Loaded::Config(decl)
            }
            None => Loaded::Unchanged,
        })
    }

    /// An attempt to connect failed for `why`: the next is after the
    /// backoff's delay.
    fn connect_failed(&mut self, why: &str) -> LoadError {
        let delay = self.reconnect.fail();
        self.reconnecting(why, delay);
        self.error(format!(
            "cannot connect: {why}; retrying in {}",
            lrpm_core::human::duration(delay)
        ))
    }

    /// The connection was lost for `why` (found by a load).
    fn lost(&mut self, why: &str) -> LoadError {
        let delay = self.drop_link(why);
        self.error(format!(
            "the connection was lost: {why}; reconnecting in {}",
            lrpm_core::human::duration(delay)
        ))
    }

    /// A load failed on a live connection (the table is missing, a column
    /// is…): tried again after the backoff's delay, or at the next
    /// notification.
    fn query_failed(&mut self, why: &str) -> LoadError {
        let delay = self.retry.fail();
        self.retry_at = Some(Instant::now() + delay);
        self.deliver = true;
        self.error(format!(
            "{why}; trying again in {}",
            lrpm_core::human::duration(delay)
        ))
    }

    /// Forgets the connection, lost for `why`; returns the delay before
    /// the next attempt.
    fn drop_link(&mut self, why: &str) -> Duration {
        let Some(link) = self.link.take() else {
            return Duration::ZERO;
        };
        let delay = if link.since.elapsed() >= STABLE {
            self.reconnect.reset();
            Duration::ZERO
        } else {
            self.reconnect.fail()
        };
        tracing::warn!(
            "{}: the connection was lost: {why}; reconnecting in {}",
            self.target.shown,
            lrpm_core::human::duration(delay)
        );
        self.reconnecting(why, delay);
        delay
    }

    fn reconnecting(&mut self, why: &str, delay: Duration) {
        self.monitor.reconnecting(why, delay);
        self.retry_at = Some(Instant::now() + delay);
        self.deliver = true;
    }

    /// After a notification: when it is part of a burst, waits until the
    /// channel has been quiet for [`QUIET`] (at most [`MAX_COALESCE`]).
    async fn coalesce(&self, signals: &Signals) {
        let in_burst = self.loaded_at.is_some_and(|at| at.elapsed() < QUIET);
        if !in_burst {
            return;
        }
        let deadline = Instant::now() + MAX_COALESCE;
        loop {
            signals.notified.store(false, Ordering::SeqCst);
            sleep(QUIET.min(deadline.saturating_duration_since(Instant::now()))).await;
            let more = signals.notified.load(Ordering::SeqCst);
            if !more || Instant::now() >= deadline || signals.closed().is_some() {
                // The flag must stay up for the load's own check: it is
                // lowered when the load begins.
                signals.notified.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

impl ConfigSource for PgSource {
    async fn load(&mut self) -> Result<Loaded, LoadError> {
        let loaded = self.attempt().await;
        self.loaded_at = Some(Instant::now());
        loaded
    }

    async fn changed(&mut self) {
        let Some(link) = &self.link else {
            // Not connected: the next attempt is due at `retry_at`.
            if let Some(at) = self.retry_at {
                sleep_until(at).await;
            }
            return;
        };
        let signals = link.signals.clone();
        let event = async {
            loop {
                if signals.closed().is_some() || signals.notified.load(Ordering::SeqCst) {
                    return;
                }
                signals.wake.notified().await;
            }
        };
        let retry_at = self.retry_at;
        let poll = match (&self.listen, self.interval) {
            (None, Some(every)) => Some(every),
            _ => None,
        };
        tokio::select! {
            () = event => {}
            () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => return,
            () = sleep(poll.unwrap_or_default()), if poll.is_some() => return,
        }
        if let Some(why) = signals.closed() {
            let delay = self.drop_link(&why);
            sleep(delay).await;
            return;
        }
        self.coalesce(&signals).await;
    }

    fn reload_requested(&mut self) {
        self.deliver = true;
    }
}

/// Drives `connection` until it ends: every notification raises the
/// `notified` flag, and the end is recorded with its reason.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, signals: Arc<Signals>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let why = loop {
        match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => {
                signals.notified.store(true, Ordering::SeqCst);
                signals.wake.notify_one();
            }
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(
                    "postgres notice: {}: {}",
                    notice.severity(),
                    notice.message()
                );
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break describe(&e),
            None => break "the server closed the connection".to_owned(),
        }
    };
    *signals.closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    signals.wake.notify_one();
}

/// The rows of a load.
#[derive(Debug, Default)]
struct Rows {
    /// `(id, declaration)` of every row with an id; a NULL declaration is
    /// `null`.
    pairs: Vec<(String, String)>,
    /// The ids whose declaration is NULL.
    null_declarations: HashSet<String>,
    /// How many rows had a NULL id.
    null_ids: usize,
}

impl Rows {
    /// The configuration of `jobs` (the store these rows were put in),
    /// with what the rows themselves got wrong.
    fn declaration(&self, jobs: &KeyedJobs) -> Declaration {
        let mut decl = jobs.declaration();
        for id in &self.null_declarations {
            if let Some(reason) = decl.invalid.get_mut(&JobId::from(id.as_str())) {
                if !reason.starts_with("declared ") {
                    *reason = "declaration: is NULL".to_owned();
                }
            }
        }
        if self.null_ids > 0 {
            decl.warnings.push(format!(
                "{} row(s) with a NULL id left out (each row needs an id)",
                self.null_ids
            ));
        }
        decl
    }
}

/// The `(id, declaration)` pairs of a simple query's answer.
fn rows_of(messages: Vec<SimpleQueryMessage>) -> Result<Rows, String> {
    let mut rows = Rows::default();
    let mut columns: Option<(usize, usize)> = None;
    let mut described = false;
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(cols) => {
                described = true;
                let find = |name: &str| cols.iter().position(|c| c.name() == name);
                columns = match (find("id"), find("declaration")) {
                    (Some(id), Some(declaration)) => Some((id, declaration)),
                    _ => {
                        let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
                        return Err(format!(
                            "the rows must have the columns id and declaration; they have {}",
                            names.join(", ")
                        ));
                    }
                };
            }
            SimpleQueryMessage::Row(row) => {
                let (id_col, decl_col) = columns
                    .ok_or_else(|| "a row came without its columns' description".to_owned())?;
                let Some(id) = row.get(id_col) else {
                    rows.null_ids += 1;
                    continue;
                };
                let declaration = match row.get(decl_col) {
                    Some(text) => text.to_owned(),
                    None => {
                        rows.null_declarations.insert(id.to_owned());
                        "null".to_owned()
                    }
                };
                rows.pairs.push((id.to_owned(), declaration));
            }
            _ => {}
        }
    }
    if !described {
        return Err(
            "the statement returned no rows: it must be a SELECT of the columns id and declaration"
                .to_owned(),
        );
    }
    Ok(rows)
}

/// A tokio-postgres error as one line: the server's message with its
/// detail and hint, or the client's error with its causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// The TLS configuration: as libpq's `sslmode=prefer` and `require`
/// without a root certificate, the connection is encrypted but the
/// server's certificate is not checked (see [`AnyServer`]).
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyServer(provider.clone()));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A certificate verifier that accepts any certificate but still checks
/// the handshake's signatures: libpq's `sslmode=require`, which protects
/// against eavesdropping, not against an impostor.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_config_builds() {
        assert!(tls_config().is_ok());
    }
}
