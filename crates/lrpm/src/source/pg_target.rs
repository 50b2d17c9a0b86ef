//! What a `postgres://` source argument names: the server, the role and
//! its password, the database, what to read (a table or a query), the
//! channel to LISTEN on, and the TLS mode.
//!
//! # Theory of operation
//!
//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DB?table=NAME` (or `?query=SQL`),
//! with `&channel=NAME` and `&sslmode=disable|prefer|require`; the scheme
//! may also be spelt `postgresql://`, as libpq allows. Every part is
//! percent-decoded (`%20`); a `+` stays a `+`, as in libpq (SQL has a `+`
//! operator). A `HOST` that decodes to an absolute path (`%2Frun%2Fpostgresql`)
//! is the directory of the server's Unix socket. Anything lrpm does not
//! understand is a usage error, so that a typo never silently reads the
//! wrong thing.
//!
//! The table's name is an SQL identifier, possibly qualified by its schema
//! (`jobs`, `lrpm.jobs`, `"Jobs"`), checked here and put in the query as it
//! was written, so that it means what it means in `psql`. The channel is a
//! name as `pg_notify` takes it, quoted whole in `LISTEN`.
//!
//! The password is looked for, at every connection, where libpq looks:
//! the URI, then `PGPASSWORD`, then the password file (`PGPASSFILE`, or
//! `~/.pgpass`), which is ignored, with a warning, when its group or others
//! may read it. It is kept in a [`Secret`], whose `Debug` does not show it;
//! what lrpm logs and shows is the URI as [`mask_password`] writes it.

use std::fmt;
use std::path::{Path, PathBuf};

use super::api::OpenError;
use crate::base::mask_password;

/// The environment variable of the password, as libpq reads it.
pub(crate) const PASSWORD_ENV: &str = "PGPASSWORD";
/// The environment variable naming the password file, as libpq reads it.
pub(crate) const PASSFILE_ENV: &str = "PGPASSFILE";
/// The default port of PostgreSQL.
pub(crate) const DEFAULT_PORT: u16 = 5432;
/// The longest name PostgreSQL keeps of an identifier (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PgHost {
    /// A host name or an IP address, over TCP.
    Tcp(String),
    /// The directory holding the server's Unix socket.
    Socket(PathBuf),
}

/// What the source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Select {
    /// Every row of a table (an SQL identifier, as written).
    Table(String),
    /// The rows of a query.
    Query(String),
}

/// Whether the connection uses TLS, as libpq's `sslmode` of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Never.
    Disable,
    /// When the server offers it (the default, as in libpq).
    Prefer,
    /// Always: a server without TLS is an error.
    Require,
}

/// A password; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// The password itself.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A parsed `postgres://` source argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgTarget {
    /// The URI as it may be logged and shown: without its password.
    pub(crate) shown: String,
    /// The role to log in as.
    pub(crate) user: String,
    /// The password written in the URI, if any.
    pub(crate) password: Option<Secret>,
    /// Where the server listens.
    pub(crate) host: PgHost,
    /// Its port (for a socket: the number in the socket's name).
    pub(crate) port: u16,
    /// The database.
    pub(crate) dbname: String,
    /// What to read.
    pub(crate) select: Select,
    /// The channel to LISTEN on; `None`: the source is polled.
    pub(crate) channel: Option<String>,
    /// Whether to use TLS.
    pub(crate) sslmode: SslMode,
}

impl PgTarget {
    /// Parses the source argument `uri`; every error is a usage error, and
    /// none quotes the password.
    pub(crate) fn parse(uri: &str) -> Result<Self, OpenError> {
        let shown = mask_password(uri);
        let usage = |why: String| OpenError::Usage(format!("{shown}: {why}"));
        let rest = uri
            .strip_prefix("postgres://")
            .or_else(|| uri.strip_prefix("postgresql://"))
            .ok_or_else(|| usage("expected postgres://USER@HOST[:PORT]/DB?table=NAME".into()))?;
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before, Some(query)),
            None => (rest, None),
        };
        if before_query.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(usage("a postgres URI has no #fragment".into()));
        }
        let (authority, path) = match before_query.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (before_query, ""),
        };
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| usage("the URI names no user (postgres://USER@HOST/DB)".into()))?;
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        let user = decode(user).map_err(|e| usage(format!("the user name {e}")))?;
        if user.is_empty() {
            return Err(usage(
                "the URI names no user (postgres://USER@HOST/DB)".into(),
            ));
        }
        let password = password
            .map(|p| decode(p).map(Secret))
            // The password itself is never quoted.
            .transpose()
            .map_err(|_| usage("the password is not valid percent-encoded UTF-8".into()))?;
        let (host, port) = split_host_port(hostport).map_err(usage)?;
        let host = decode(host).map_err(|e| usage(format!("the host {e}")))?;
        let host = if host.starts_with('/') {
            PgHost::Socket(PathBuf::from(host))
        } else if host.is_empty() {
            return Err(usage(
                "the URI names no host (postgres://USER@HOST/DB)".into(),
            ));
        } else {
            PgHost::Tcp(host)
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| usage(format!("the port {port:?} is not a port number")))?,
        };
        let dbname = decode(path).map_err(|e| usage(format!("the database name {e}")))?;
        // libpq's default: the database named as the user.
        let dbname = if dbname.is_empty() {
            user.clone()
        } else {
            dbname
        };
        let mut table = None;
        let mut sql = None;
        let mut channel = None;
        let mut sslmode = SslMode::Prefer;
        for param in query.into_iter().flat_map(|q| q.split('&')) {
            if param.is_empty() {
                continue;
            }
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let value = decode(value).map_err(|e| usage(format!("the value of {key}= {e}")))?;
            match key {
                "table" => table = Some(value),
                "query" => sql = Some(value),
                "channel" => channel = Some(value),
                "sslmode" => {
                    sslmode = match value.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        other => {
                            return Err(usage(format!(
                                "sslmode={other} is not supported (expected disable, prefer or require)"
                            )));
                        }
                    }
                }
                other => {
                    return Err(usage(format!(
                        "unknown parameter {other:?} (expected table, query, channel or sslmode)"
                    )));
                }
            }
        }
        let select = match (table, sql) {
            (Some(table), None) => {
                check_table_name(&table).map_err(|e| usage(format!("table={table}: {e}")))?;
                Select::Table(table)
            }
            (None, Some(sql)) if sql.trim().is_empty() => {
                return Err(usage("query= is empty".into()));
            }
            (None, Some(sql)) => Select::Query(sql),
            (Some(_), Some(_)) => {
                return Err(usage("give either table= or query=, not both".into()));
            }
            (None, None) => {
                return Err(usage(
                    "say what to read: ?table=NAME or ?query=SQL (URL-encoded)".into(),
                ));
            }
        };
        if let Some(channel) = &channel {
            check_channel(channel).map_err(|e| usage(format!("channel={channel}: {e}")))?;
        }
        Ok(Self {
            shown,
            user,
            password,
            host,
            port,
            dbname,
            select,
            channel,
            sslmode,
        })
    }

    /// The statement that reads every job: `id` and `declaration` of each
    /// row, as text, whatever their types.
    pub(crate) fn select_sql(&self) -> String {
        match &self.select {
            Select::Table(table) => format!("SELECT id::text, declaration::text FROM {table}"),
            Select::Query(sql) => sql.clone(),
        }
    }

    /// The statement that listens on the channel, if there is one.
    pub(crate) fn listen_sql(&self) -> Option<String> {
        self.channel
            .as_ref()
            .map(|channel| format!("LISTEN {}", quote_identifier(channel)))
    }

    /// The password to log in with, looked for where libpq looks: the URI,
    /// then `PGPASSWORD`, then the password file. Read again at every
    /// connection, so that a changed password file is used without a
    /// restart.
    pub(crate) fn find_password(&self) -> Option<Secret> {
        if let Some(password) = &self.password {
            return Some(password.clone());
        }
        if let Some(password) = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()) {
            return Some(Secret(password));
        }
        let file = match std::env::var_os(PASSFILE_ENV) {
            Some(file) if !file.is_empty() => PathBuf::from(file),
            _ => std::env::home_dir()?.join(".pgpass"),
        };
        let text = read_password_file(&file)?;
        let host = match &self.host {
            PgHost::Tcp(host) => host.as_str(),
            // libpq matches a socket connection with "localhost".
            PgHost::Socket(_) => "localhost",
        };
        password_in_file(&text, host, self.port, &self.dbname, &self.user).map(Secret)
    }
}

/// Splits `HOST[:PORT]` (the host may be `[IPv6]`).
fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address in [ ] lacks its ]".to_owned())?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("unexpected {after:?} after the host")),
            },
        };
    }
    if hostport.contains(',') {
        return Err("lrpm connects to one host (several were given)".to_owned());
    }
    Ok(match hostport.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    })
}

/// Percent-decodes `text` (`%XX`; a `+` stays a `+`).
fn decode(text: &str) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("has a % that is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| "is not UTF-8 once decoded")?;
    if text.contains('\0') {
        return Err("holds a NUL character");
    }
    Ok(text)
}

/// Checks that `name` is an SQL name of a table: one to three identifiers
/// joined by dots, each plain (`jobs`, folded to lower case by the server)
/// or double-quoted (`"Jobs"`, with `""` for a quote).
fn check_table_name(name: &str) -> Result<(), String> {
    let mut rest = name;
    let mut parts = 0;
    loop {
        parts += 1;
        let len = if let Some(quoted) = rest.strip_prefix('"') {
            let mut end = None;
            let mut chars = quoted.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().is_some_and(|(_, c)| *c == '"') {
                        chars.next();
                    } else {
                        end = Some(i);
                        break;
                    }
                }
            }
            let end = end.ok_or("a quoted name lacks its closing \"")?;
            if end == 0 {
                return Err("a quoted name is empty".into());
            }
            end + 2
        } else {
            let len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(rest.len());
            let ident = &rest[..len];
            match ident.chars().next() {
                None => return Err("expected a name (letters, digits, _), or one in \"\"".into()),
                Some(c) if c.is_ascii_digit() || c == '$' => {
                    return Err(format!("{ident:?} does not start with a letter or _"));
                }
                Some(_) => {}
            }
            len
        };
        if len > MAX_IDENTIFIER + 2 {
            return Err(format!("a name is longer than {MAX_IDENTIFIER} bytes"));
        }
        rest = &rest[len..];
        match rest.strip_prefix('.') {
            Some(next) if parts < 3 => rest = next,
            Some(_) => return Err("too many dots (at most database.schema.table)".into()),
            None if rest.is_empty() => return Ok(()),
            None => return Err(format!("unexpected {rest:?}")),
        }
    }
}

/// Checks a channel name: what `pg_notify` accepts, within PostgreSQL's
/// length of a name.
fn check_channel(channel: &str) -> Result<(), String> {
    if channel.is_empty() {
        return Err("the channel name is empty".into());
    }
    if channel.len() > MAX_IDENTIFIER {
        return Err(format!(
            "the channel name is longer than {MAX_IDENTIFIER} bytes"
        ));
    }
    Ok(())
}

/// `name` as a double-quoted SQL identifier.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The password file's text, unless it is missing, not a regular file, or
/// readable by the group or others (then libpq ignores it too, with this
/// warning).
fn read_password_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "the password file {} has group or world access and is ignored; its permissions should be u=rw (0600) or less",
            path.display()
        );
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// The password of the first line of a password file (libpq's
/// `hostname:port:database:username:password`, `*` matching anything,
/// `\` escaping `:` and `\`) that matches the connection.
fn password_in_file(text: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), dbname, user];
    text.lines().find_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let fields = split_password_line(line)?;
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|(field, want)| field == "*" || field == want);
        matches.then(|| fields[4].clone())
    })
}

/// The five fields of a password file's line; `None` for a line with
/// fewer. The last field takes the rest of the line.
fn split_password_line(line: &str) -> Option<[String; 5]> {
    let mut fields: Vec<String> = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == ':' && fields.len() < 5 {
            fields.push(String::new());
            continue;
        }
        let c = match c {
            '\\' => match chars.next() {
                Some(next) => next,
                None => continue,
            },
            c => c,
        };
        fields
            .last_mut()
            .expect("invariant: fields is never empty")
            .push(c);
    }
    fields.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> PgTarget {
        PgTarget::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    fn usage(uri: &str) -> String {
        match PgTarget::parse(uri) {
            Err(OpenError::Usage(message)) => message,
            other => panic!("{uri}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn a_full_uri() {
        let t = parse(
            "postgres://lrpm:s3cr%40t@db.example:6432/app?table=lrpm.jobs&channel=lrpm_jobs&sslmode=require",
        );
        assert_eq!(t.user, "lrpm");
        assert_eq!(t.password.as_ref().map(Secret::expose), Some("s3cr@t"));
        assert_eq!(t.host, PgHost::Tcp("db.example".into()));
        assert_eq!(t.port, 6432);
        assert_eq!(t.dbname, "app");
        assert_eq!(t.select, Select::Table("lrpm.jobs".into()));
        assert_eq!(t.channel.as_deref(), Some("lrpm_jobs"));
        assert_eq!(t.sslmode, SslMode::Require);
        assert_eq!(
            t.shown,
            "postgres://lrpm:***@db.example:6432/app?table=lrpm.jobs&channel=lrpm_jobs&sslmode=require"
        );
        assert!(!format!("{t:?}").contains("s3cr"), "{t:?}");
        assert_eq!(
            t.select_sql(),
            "SELECT id::text, declaration::text FROM lrpm.jobs"
        );
        assert_eq!(t.listen_sql().as_deref(), Some("LISTEN \"lrpm_jobs\""));
    }

    #[test]
    fn defaults_sockets_and_queries() {
        let t = parse(
            "postgresql://app@[::1]/?query=SELECT%20id%2C%20d%20AS%20declaration%20FROM%20t%20WHERE%20x+1%3E2",
        );
        assert_eq!(t.host, PgHost::Tcp("::1".into()));
        assert_eq!(t.port, DEFAULT_PORT);
        assert_eq!(t.dbname, "app", "the user's name, as libpq");
        assert_eq!(t.password, None);
        assert_eq!(t.sslmode, SslMode::Prefer);
        assert_eq!(t.channel, None);
        assert_eq!(
            t.select,
            Select::Query("SELECT id, d AS declaration FROM t WHERE x+1>2".into())
        );
        let t = parse("postgres://u@%2Frun%2Fpostgresql:5433/db?table=%22My%20Jobs%22");
        assert_eq!(t.host, PgHost::Socket("/run/postgresql".into()));
        assert_eq!(t.port, 5433);
        assert_eq!(t.select, Select::Table("\"My Jobs\"".into()));
    }

    #[test]
    fn usage_errors_say_what_is_wrong_without_the_password() {
        for (uri, says) in [
            ("postgres://u:pw@h/db", "?table=NAME or ?query=SQL"),
            ("postgres://u:pw@h/db?table=a&query=b", "not both"),
            ("postgres://h/db?table=t", "names no user"),
            ("postgres://u:pw@/db?table=t", "names no host"),
            ("postgres://u:pw@h:99999/db?table=t", "not a port number"),
            (
                "postgres://u:pw@h/db?table=t&sslmode=verify-full",
                "sslmode=verify-full",
            ),
            (
                "postgres://u:pw@h/db?table=t&user=x",
                "unknown parameter \"user\"",
            ),
            (
                "postgres://u:pw@h/db?table=t%3B%20DROP%20TABLE%20x",
                "unexpected",
            ),
            ("postgres://u:pw@h/db?table=1jobs", "does not start"),
            ("postgres://u:pw@h/db?table=a.b.c.d", "too many dots"),
            ("postgres://u:pw@h/db?table=%22x", "closing"),
            ("postgres://u:pw@h/db?table=t&channel=", "empty"),
            ("postgres://u:pw@h/db?query=%20", "query= is empty"),
            ("postgres://u:pw@h/db?table=t%zz", "hex digits"),
            ("postgres://u:pw@a,b/db?table=t", "one host"),
        ] {
            let message = usage(uri);
            assert!(message.contains(says), "{uri}: {message}");
            assert!(!message.contains(":pw@"), "{message}");
        }
        let message = usage("postgres://u:p%zz@h/db?table=t");
        assert!(message.contains("password"), "{message}");
        assert!(!message.contains("%zz"), "{message}");
    }

    #[test]
    fn table_names_are_sql_identifiers() {
        for ok in [
            "jobs",
            "lrpm.jobs",
            "\"Jobs\"",
            "\"a\"\"b\".t",
            "db.s.t",
            "_x$1",
            "été",
        ] {
            assert!(check_table_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a.", ".a", "a b", "a;b", "\"\"", "a.\"b", "1a", "a-b", "a.b.c.d",
        ] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_file_lines() {
        let text = "# comment\n\
                    other:5432:*:*:no\n\
                    db:*:app:lrpm:s\\:e\\\\cret:x\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            password_in_file(text, "db", 5432, "app", "lrpm").as_deref(),
            Some("s:e\\cret:x")
        );
        assert_eq!(
            password_in_file(text, "db", 5432, "other", "lrpm").as_deref(),
            Some("fallback")
        );
        assert_eq!(password_in_file("a:1:b\n", "a", 1, "b", "c"), None);
        assert_eq!(
            password_in_file("h:1:d:u:pw\r\n", "h", 1, "d", "u").as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn a_group_readable_password_file_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:pw\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(read_password_file(&file), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_password_file(&file).as_deref(), Some("*:*:*:*:pw\n"));
    }
}
