//! lrpm's etcd client layer: what the etcd configuration source uses, and
//! what the cluster mode does (leases and transactions go through the same
//! [`Etcd`] handle).
//!
//! # Theory of operation
//!
//! An [`EtcdUri`] (`etcd://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT…]/PATH`)
//! names the cluster's endpoints, the credentials and a key path.
//! [`Etcd::connect`] tries the endpoints in turn, from the one given (the
//! last that worked, say), and keeps the first that answers a status
//! request within the connect timeout: etcd-client's own channel connects
//! lazily and balances over every endpoint, which would hide a dead one
//! behind a request that hangs. The error of a failed connect names every
//! endpoint with its reason.
//!
//! A prefix is read whole by [`Etcd::snapshot`]: ranged gets of
//! [`PAGE`] keys, all at the revision of the first, so that the snapshot is
//! one consistent state of the store however large it is. It is followed by
//! [`Etcd::watch`] from the snapshot's revision + 1, whose
//! [`PrefixWatch::next`] gives each batch of changes (the events of one
//! revision or more) or why the watch ended: compacted past its revision,
//! cancelled by the server, or broken (the connection lost). Keys are given
//! relative to the prefix.
//!
//! HTTP/2 keep-alive pings find a server that vanished without closing the
//! connection (a host down, a partition) within [`KEEP_ALIVE`] +
//! [`KEEP_ALIVE_TIMEOUT`]; a server that stopped or restarted closes it,
//! and the watch ends at once.

use std::fmt;
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KvClient, WatchClient, WatchOptions,
    WatchResponse, WatchStream,
};

/// How many keys one ranged get of a snapshot asks for.
pub(crate) const PAGE: i64 = 500;
/// The largest answer (a page of a snapshot, the events of one revision)
/// accepted: 64 MiB, as the other sources' documents (gRPC's default is
/// 4 MiB).
pub(crate) const MAX_MESSAGE: usize = 64 << 20;
/// How long connecting to one endpoint may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle connection is pinged.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How long a ping's answer may take before the connection is dropped.
pub(crate) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed `etcd://` URI.
#[derive(Clone, PartialEq)]
pub(crate) struct EtcdUri {
    /// The endpoints, as `HOST:PORT`, in the order given.
    pub(crate) endpoints: Vec<String>,
    /// The user and password, for a cluster with authentication.
    pub(crate) user: Option<(String, String)>,
    /// The path after the endpoints, without its leading `/`,
    /// percent-decoded (the source's key prefix).
    pub(crate) path: String,
}

impl fmt::Debug for EtcdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdUri")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(user, _)| user))
            .field("path", &self.path)
            .finish()
    }
}

impl EtcdUri {
    /// Parses `etcd://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT…]/PATH`. The
    /// error does not quote the password.
    pub(crate) fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("etcd://")
            .ok_or("an etcd URI starts with etcd://")?;
        if rest.contains(['?', '#']) {
            return Err("an etcd URI has no query or fragment (?, #)".to_owned());
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((decode(user)?, decode(password)?)), hosts)
            }
            None => (None, authority),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let port = host
                .rsplit_once(':')
                .map(|(h, p)| (h, p.parse::<u16>()))
                .filter(|(h, p)| !h.is_empty() && p.is_ok());
            if port.is_none() {
                return Err(format!(
                    "endpoint {host:?}: expected HOST:PORT (etcd's client port is usually 2379)"
                ));
            }
            endpoints.push(host.to_owned());
        }
        Ok(Self {
            endpoints,
            user,
            path: decode(path)?,
        })
    }
}

/// Decodes the `%XX` escapes of a part of a URI.
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a % in the URI must start an escape %XX")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URI's escapes are not UTF-8".to_owned())
}

/// A failed request to etcd, with its endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EtcdError {
    /// No endpoint answered; each with why.
    #[error("no endpoint answered: {}", .0.iter().map(|(e, why)| format!("{e}: {why}")).collect::<Vec<_>>().join("; "))]
    NoEndpoint(Vec<(String, String)>),
    /// A request failed.
    #[error("{endpoint}: {what}: {why}")]
    Request {
        /// The endpoint it went to.
        endpoint: String,
        /// What was asked (`get`, `watch`…).
        what: &'static str,
        /// Why it failed, with its causes.
        why: String,
    },
}

/// A connection to one endpoint of an etcd cluster.
#[derive(Clone)]
pub(crate) struct Etcd {
    client: Client,
    /// The client's key-value and watch services, with [`MAX_MESSAGE`].
    kv: KvClient,
    watcher: WatchClient,
    endpoint: String,
    /// Which of the URI's endpoints it is.
    index: usize,
    /// How long a request may take.
    timeout: Duration,
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A whole prefix at one revision.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The store's revision the snapshot shows.
    pub(crate) revision: i64,
    /// Every key under the prefix (relative to it) with its value, in key
    /// order.
    pub(crate) kvs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A change to one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyChange {
    /// The key, relative to the prefix.
    pub(crate) key: Vec<u8>,
    /// Its new value; `None` when it was deleted.
    pub(crate) value: Option<Vec<u8>>,
    /// The revision that created it (0 once deleted): a cluster owner
    /// key's fencing token.
    pub(crate) create_revision: i64,
    /// The lease it is bound to (0 for none).
    pub(crate) lease: i64,
}

/// Why a watch ended; the watcher must read the prefix whole again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchEnd {
    /// The revision to watch from was compacted away.
    #[error("revision {wanted} was compacted (the oldest kept is {compacted})")]
    Compacted {
        /// The revision the watch was at.
        wanted: i64,
        /// The compaction's revision.
        compacted: i64,
    },
    /// The server cancelled the watch.
    #[error("the server cancelled the watch: {0}")]
    Cancelled(String),
    /// The connection was lost or the stream failed.
    #[error("{0}")]
    Broken(EtcdError),
}

/// A watch on every key under a prefix.
#[derive(Debug)]
pub(crate) struct PrefixWatch {
    stream: WatchStream,
    prefix: Vec<u8>,
    endpoint: String,
    /// The next revision expected.
    next: i64,
}

impl Etcd {
    /// Connects to the first of `uri`'s endpoints, starting from the
    /// `first`-th (wrapping around), that answers within
    /// [`CONNECT_TIMEOUT`]. Requests then may take `timeout` each.
    pub(crate) async fn connect(
        uri: &EtcdUri,
        first: usize,
        timeout: Duration,
    ) -> Result<Self, EtcdError> {
        let mut failures = Vec::new();
        let n = uri.endpoints.len();
        for index in (0..n).map(|i| (first + i) % n) {
            let endpoint = &uri.endpoints[index];
            match Self::connect_one(uri, endpoint, timeout).await {
                Ok(client) => {
                    return Ok(Self {
                        kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
                        watcher: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
                        client,
                        endpoint: endpoint.clone(),
                        index,
                        timeout,
                    });
                }
                Err(why) => failures.push((endpoint.clone(), why)),
            }
        }
        Err(EtcdError::NoEndpoint(failures))
    }

    async fn connect_one(
        uri: &EtcdUri,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Client, String> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE_TIMEOUT);
        if let Some((user, password)) = &uri.user {
            options = options.with_user(user, password);
        }
        let url = format!("http://{endpoint}");
        let limit = CONNECT_TIMEOUT.min(timeout);
        let connect = async {
            let mut client = Client::connect([url], Some(options)).await?;
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        };
        match tokio::time::timeout(limit, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// The endpoint connected to, as `HOST:PORT`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Which of the URI's endpoints it is (to start the next connect
    /// from).
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The etcd-client handle, for what this layer does not wrap
    /// (leases, puts; the cluster membership uses them).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    fn error(&self, what: &'static str, why: String) -> EtcdError {
        EtcdError::Request {
            endpoint: self.endpoint.clone(),
            what,
            why,
        }
    }

    /// Reads every key under `prefix` at one revision, in pages of
    /// [`PAGE`] keys.
    pub(crate) async fn snapshot(&mut self, prefix: &[u8]) -> Result<Snapshot, EtcdError> {
        let end = prefix_end(prefix);
        let mut kvs = Vec::new();
        let mut from = prefix.to_vec();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let get = self.kv.get(from.clone(), Some(options));
            let mut page = match tokio::time::timeout(self.timeout, get).await {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => return Err(self.error("get", describe(&e))),
                Err(_) => {
                    return Err(self.error("get", format!("no answer within {:?}", self.timeout)));
                }
            };
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let taken = page.take_kvs();
            let Some(last) = taken.last() else { break };
            // The next page starts just after the last key.
            from = last.key().to_vec();
            from.push(0);
            for kv in taken {
                let (key, value) = kv.into_key_value();
                kvs.push((key[prefix.len()..].to_vec(), value));
            }
            if !more {
                break;
            }
        }
        Ok(Snapshot { revision, kvs })
    }

    /// Watches every key under `prefix` from revision `from`; returns once
    /// the server has created the watch.
    pub(crate) async fn watch(
        &mut self,
        prefix: &[u8],
        from: i64,
    ) -> Result<PrefixWatch, WatchEnd> {
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(from);
        let created = async {
            let mut stream = self.watcher.watch(prefix.to_vec(), Some(options)).await?;
            let first = stream.message().await?;
            Ok::<_, etcd_client::Error>((stream, first))
        };
        let (stream, first) = match tokio::time::timeout(self.timeout, created).await {
            Ok(Ok(created)) => created,
            Ok(Err(e)) => return Err(WatchEnd::Broken(self.error("watch", describe(&e)))),
            Err(_) => {
                let why = format!("no answer within {:?}", self.timeout);
                return Err(WatchEnd::Broken(self.error("watch", why)));
            }
        };
        let watch = PrefixWatch {
            stream,
            prefix: prefix.to_vec(),
            endpoint: self.endpoint.clone(),
            next: from,
        };
        match first {
            Some(response) => {
                watch.ended(&response)?;
            }
            None => {
                let why = "the server closed the watch".to_owned();
                return Err(WatchEnd::Broken(self.error("watch", why)));
            }
        }
        Ok(watch)
    }
}

impl PrefixWatch {
    /// Waits for the next batch of changes: the revision they bring the
    /// prefix to, and the changes in order. Cancel-safe: a dropped call
    /// loses nothing.
    pub(crate) async fn next(&mut self) -> Result<(i64, Vec<KeyChange>), WatchEnd> {
        loop {
            let response = match self.stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Err(self.broken("the server closed the watch".to_owned())),
                Err(e) => return Err(self.broken(describe(&e))),
            };
            self.ended(&response)?;
            let events = response.events();
            if events.is_empty() {
                // A progress notification or the answer to a creation.
                continue;
            }
            let mut revision = 0;
            let mut changes = Vec::with_capacity(events.len());
            for event in events {
                let Some(kv) = event.kv() else { continue };
                revision = revision.max(kv.mod_revision());
                let Some(key) = kv.key().strip_prefix(&self.prefix[..]) else {
                    continue;
                };
                let (value, create_revision) = match event.event_type() {
                    EventType::Put => (Some(kv.value().to_vec()), kv.create_revision()),
                    EventType::Delete => (None, 0),
                };
                changes.push(KeyChange {
                    key: key.to_vec(),
                    value,
                    create_revision,
                    lease: kv.lease(),
                });
            }
            let header = response.header().map_or(0, |h| h.revision());
            let revision = revision.max(header);
            self.next = revision + 1;
            return Ok((revision, changes));
        }
    }

    /// Why `response` ends the watch, if it does.
    fn ended(&self, response: &WatchResponse) -> Result<(), WatchEnd> {
        if response.compact_revision() > 0 {
            return Err(WatchEnd::Compacted {
                wanted: self.next,
                compacted: response.compact_revision(),
            });
        }
        if response.canceled() {
            return Err(WatchEnd::Cancelled(response.cancel_reason().to_owned()));
        }
        Ok(())
    }

    fn broken(&self, why: String) -> WatchEnd {
        WatchEnd::Broken(EtcdError::Request {
            endpoint: self.endpoint.clone(),
            what: "watch",
            why,
        })
    }
}

/// The end of the range of keys that start with `prefix` (etcd's rule:
/// the prefix with its last byte below 0xff incremented, and what follows
/// it cut; `\0` for all keys).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An error with its causes, each once: for a gRPC status, its message
/// and what caused it (`tcp connect error: Connection refused (os error
/// 111)`), without tonic's debug forms.
fn describe(error: &etcd_client::Error) -> String {
    let (mut message, mut cause): (String, Option<&dyn std::error::Error>) = match error {
        etcd_client::Error::GRpcStatus(status) => {
            let text = if status.message().is_empty() {
                format!("{:?}", status.code())
            } else {
                status.message().to_owned()
            };
            (text, std::error::Error::source(status))
        }
        other => (String::new(), Some(other)),
    };
    while let Some(e) = cause {
        let text = e.to_string();
        if text != "transport error" && !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        cause = e.source();
    }
    message
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        let uri = EtcdUri::parse("etcd://127.0.0.1:2379,10.0.0.2:2379/lrpm/jobs").unwrap();
        assert_eq!(uri.endpoints, ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(uri.path, "lrpm/jobs");
        assert_eq!(uri.user, None);
        let uri = EtcdUri::parse("etcd://root:p%40ss@h:1//abs%20x").unwrap();
        assert_eq!(uri.user, Some(("root".to_owned(), "p@ss".to_owned())));
        assert_eq!(uri.path, "/abs x");
        assert_eq!(EtcdUri::parse("etcd://h:1").unwrap().path, "");
        assert!(!format!("{uri:?}").contains("p@ss"));
        for bad in [
            "etcd://h/x",
            "etcd://h:x/p",
            "etcd://:1/p",
            "etcd://h:1,/p",
            "etcd://h:1/p?x=1",
            "etcd://h:1/%zz",
            "http://h:1/p",
        ] {
            assert!(EtcdUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"lrpm/"), b"lrpm0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
