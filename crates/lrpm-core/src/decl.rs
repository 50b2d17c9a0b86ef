//! Job declarations: parsing JSON, TOML and YAML documents into a
//! [`Declaration`], with per-job validation.
//!
//! # Theory of operation
//!
//! A configuration source hands over one or more [`Document`]s (a file, or
//! each file of a directory). [`parse_documents`] reads them in two stages:
//!
//! 1. **Whole documents.** Each document is parsed into a list of
//!    `(key, job)` entries. A syntax error or a top level that is not a map
//!    makes the *whole source* unreadable ([`SourceError`]): the caller keeps
//!    running on its last good configuration. The parsers' recursion limits
//!    (JSON 128, YAML 128, TOML 80 levels) keep hostile nesting from
//!    overflowing the stack, and YAML's alias expansion is bounded too.
//! 2. **Job by job.** The entries of all documents are merged by job id
//!    (integer keys become strings, so `42` and `"42"` are one id). An id
//!    declared more than once, or a key that cannot be an id, is invalid;
//!    every other job goes through [`validate_job`], which collects every
//!    problem of the job as `field: reason` rather than stopping at the first.
//!    Invalid jobs land in [`Declaration::invalid`]; the valid ones are
//!    applied regardless, as php-lrpm's ConfigurationValidator does.
//!
//! A source parsing the same configuration again and again does it with a
//! [`Reparser`](crate::Reparser), which gives the same result and checks
//! only the jobs whose text changed.
//!
//! Keys are php-lrpm's camelCase names; the snake_case spellings of the
//! multi-word keys are accepted too, and messages name a field as the user
//! spelled it. Unknown keys are warnings, never errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::job::{Env, JobId, JobSpec, Program, Signal};

/// A document format, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.json`
    Json,
    /// `.toml`
    Toml,
    /// `.yaml` or `.yml`
    Yaml,
}

impl Format {
    /// The format of a file named `name`, from its extension (case-insensitive).
    pub fn from_file_name(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Format::Json),
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// One document of a configuration source (a file of a directory source).
#[derive(Debug, Clone, Copy)]
pub struct Document<'a> {
    /// Where it came from, for error messages (a file name).
    pub origin: &'a str,
    /// Its format.
    pub format: Format,
    /// Its text.
    pub text: &'a str,
}

/// A whole configuration, validated job by job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declaration {
    /// The valid jobs.
    pub jobs: BTreeMap<JobId, Arc<JobSpec>>,
    /// The invalid jobs, each with its reason(s): `field: reason`, several
    /// joined by `; `.
    pub invalid: BTreeMap<JobId, String>,
    /// Things worth a warning that invalidate nothing (unknown keys…), each
    /// naming its job.
    pub warnings: Vec<String>,
}

impl Declaration {
    /// Moves the jobs whose `workerClass` this binary cannot run to the
    /// invalid ones, as php-lrpm's validator rejects a class that does not
    /// exist. `classes` are the names of the workers the binary registered:
    /// `None` for the plain `lrpm` binary, which runs commands only.
    ///
    /// A job left out this way is treated as any invalid job: if it was
    /// running on an earlier declaration, it keeps running on it.
    pub fn leave_out_unknown_workers(&mut self, classes: Option<&BTreeSet<String>>) {
        let known = |class: &String| classes.is_some_and(|c| c.contains(class));
        let mut unknown: Vec<(JobId, String)> = Vec::new();
        self.jobs.retain(|id, spec| match &spec.program {
            // A worker host runs it: the host knows its classes, not lrpm.
            Program::WorkerClass(_) if spec.host.is_some() => true,
            Program::WorkerClass(class) if !known(class) => {
                unknown.push((id.clone(), class.clone()));
                false
            }
            _ => true,
        });
        if unknown.is_empty() {
            return;
        }
        let registered = classes.map(|c| {
            if c.is_empty() {
                "none".to_owned()
            } else {
                c.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        });
        for (id, class) in unknown {
            let reason = match &registered {
                None => "workerClass: this lrpm runs commands only; workerClass jobs need a \
                         binary built with the lrpm library (or use command)"
                    .to_owned(),
                Some(registered) => format!(
                    "workerClass: no worker is registered as {class:?} (registered: {registered})"
                ),
            };
            self.invalid.insert(id, reason);
        }
    }

    /// Moves the jobs with a `memoryMax` to the invalid ones when this lrpm
    /// cannot enforce it; `unavailable` says why (`None`: it can). The
    /// shell decides that at start, from the cgroups it found.
    ///
    /// A job left out this way is treated as any invalid job: if it was
    /// running on an earlier declaration, it keeps running on it.
    pub fn leave_out_memory_limits(&mut self, unavailable: Option<&str>) {
        let Some(why) = unavailable else {
            return;
        };
        let mut capped = Vec::new();
        self.jobs.retain(|id, spec| {
            let keep = spec.memory_max.is_none();
            if !keep {
                capped.push(id.clone());
            }
            keep
        });
        for id in capped {
            self.invalid
                .insert(id, format!("memoryMax: cannot be enforced: {why}"));
        }
    }
}

/// Why a whole source could not be read; the supervisor keeps its last good
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// A document is not valid JSON/TOML/YAML.
    #[error("{origin}: cannot parse {format:?}: {reason}")]
    Syntax {
        /// The document's origin.
        origin: String,
        /// Its format.
        format: Format,
        /// The parser's message.
        reason: String,
    },
    /// The top level of a document is not a map of jobs.
    #[error("{origin}: the top level must be a map of job id to job, found {found}")]
    NotAMap {
        /// The document's origin.
        origin: String,
        /// What was found instead (`null`, `a list`…).
        found: String,
    },
}

/// Parses and validates the documents of one source as a single configuration.
///
/// Any document that cannot be parsed, or whose top level is not a map, fails
/// the whole source. Otherwise the jobs of all documents are merged: a job id
/// declared twice (in two documents, or as `42` and `"42"` in one) is
/// invalid and neither copy is used; each other job is checked by
/// [`validate_job`].
pub fn parse_documents(docs: &[Document<'_>]) -> Result<Declaration, SourceError> {
    let mut declared = Vec::new();
    for doc in docs {
        for (id, verdict) in verdicts(doc)? {
            declared.push((id, doc.origin, verdict));
        }
    }
    Ok(merge(declared))
}

/// A job and its warnings, or why it is invalid.
pub(crate) type Verdict = Result<(Arc<JobSpec>, Vec<String>), String>;

/// The jobs of `doc`, in document order, each with its verdict.
pub(crate) fn verdicts(doc: &Document<'_>) -> Result<Vec<(JobId, Verdict)>, SourceError> {
    let entries = parse_document(doc)?;
    Ok(entries
        .into_iter()
        .map(|(key, body)| verdict(key, &body))
        .collect())
}

/// The job that top-level key `key` names, and the verdict on its
/// declaration `body` (invalid if the key cannot be an id).
pub(crate) fn verdict(key: Value, body: &Value) -> (JobId, Verdict) {
    match job_id(key) {
        Ok(id) => {
            let verdict =
                validate_job(&id, body).map(|(spec, warnings)| (Arc::new(spec), warnings));
            (id, verdict)
        }
        Err((id, reason)) => (id, Err(reason)),
    }
}

/// The declaration of the jobs of all documents, from each job's id, origin
/// and verdict, in the documents' order: a job declared more than once is
/// invalid.
pub(crate) fn merge(mut declared: Vec<(JobId, &str, Verdict)>) -> Declaration {
    // Stable: the copies of an id keep their order.
    declared.sort_by(|a, b| a.0.cmp(&b.0));
    let mut decl = Declaration::default();
    let mut jobs = Vec::with_capacity(declared.len());
    let mut invalid = Vec::new();
    let mut copies = declared.into_iter().peekable();
    while let Some((id, origin, verdict)) = copies.next() {
        if copies.peek().is_some_and(|(next, ..)| *next == id) {
            let mut origins = vec![origin];
            while let Some((_, origin, _)) = copies.next_if(|(next, ..)| *next == id) {
                origins.push(origin);
            }
            invalid.push((id, declared_twice(&origins)));
            continue;
        }
        match verdict {
            Ok((spec, warnings)) => {
                jobs.push((id, spec));
                decl.warnings.extend(warnings);
            }
            Err(reason) => invalid.push((id, reason)),
        }
    }
    // Sorted already: the maps are built in one pass.
    decl.jobs = jobs.into_iter().collect();
    decl.invalid = invalid.into_iter().collect();
    decl
}

/// Checks one job's declaration, as php-lrpm's ConfigurationValidator does.
///
/// Returns the job and its warnings (unknown keys, each naming job `id`), or
/// every problem found, each as `field: reason`, joined by `; `, for
/// example `name: is required; shortRunTimeSeconds: must be a number >= 0`.
pub fn validate_job(id: &JobId, value: &Value) -> Result<(JobSpec, Vec<String>), String> {
    let Some(map) = value.as_object() else {
        return Err("job: must be a map of fields".to_owned());
    };
    let mut job = Fields {
        map,
        errors: Vec::new(),
    };

    let name = match job.lookup("name") {
        Some((label, v)) => job.check(label, text(v)),
        None => {
            job.error("name", "is required");
            None
        }
    };
    let program = match (job.lookup("command"), job.lookup("workerClass")) {
        (Some((label, v)), None) => job.command(label, v),
        (None, Some((label, v))) => job.check(label, text(v)).map(Program::WorkerClass),
        (Some((command, cv)), Some((class, wv))) => {
            job.error(command, format_args!("cannot be combined with {class}"));
            job.command(command, cv);
            job.check(class, text(wv));
            None
        }
        (None, None) => {
            job.error("command", "one of command or workerClass is required");
            None
        }
    };
    let worker_config = job.optional("workerConfig", |v| Ok(v.clone()));
    let mtime = job.optional("mtime", mtime);
    let short_run = job.optional("shortRunTimeSeconds", seconds);
    let shutdown_timeout = job.optional("shutdownTimeoutSeconds", seconds);
    let env = job.lookup("env").and_then(|(label, v)| job.env(label, v));
    let cwd = job.optional("cwd", text);
    let user = job.optional("user", text);
    let group = job.optional("group", text);
    let stop_signal = job.optional("stopSignal", signal);
    let notify = job.optional("notify", boolean);
    let watchdog = job.optional("watchdogSeconds", positive_seconds);
    let instances = job.optional("instances", crate::instances::count);
    let memory_max = job.optional("memoryMax", memory_size);
    let health_check = match job.lookup("healthCheck") {
        Some((label, v)) => match crate::health::validate(label, v) {
            Ok(check) => Some(check),
            Err(errors) => {
                job.errors.extend(errors);
                None
            }
        },
        None => None,
    };
    let host = job.lookup("host").and_then(|(label, v)| job.host(label, v));
    if host.is_some() {
        if !matches!(program, Some(Program::WorkerClass(_)) | None) {
            job.error(
                "host",
                "needs workerClass (a host forks worker classes, not commands)",
            );
        }
        if memory_max.is_some() {
            job.error(
                "host",
                "cannot be combined with memoryMax (a hosted worker is in its host's memory)",
            );
        }
        for field in ["user", "group"] {
            if map.contains_key(field) {
                job.error(
                    "host",
                    format_args!(
                        "cannot be combined with {field} (a hosted worker runs as its host does)"
                    ),
                );
            }
        }
    }

    let unknown: Vec<&String> = map.keys().filter(|key| !is_known_key(key)).collect();
    match (name, program) {
        (Some(name), Some(program)) if job.errors.is_empty() => {
            let defaults = JobSpec::new(name, program);
            let spec = JobSpec {
                worker_config: worker_config.unwrap_or(defaults.worker_config),
                mtime,
                short_run: short_run.unwrap_or(defaults.short_run),
                shutdown_timeout: shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
                env: env.unwrap_or(defaults.env),
                cwd,
                user,
                group,
                stop_signal: stop_signal.unwrap_or(defaults.stop_signal),
                notify: notify.unwrap_or(defaults.notify),
                watchdog,
                health_check,
                instances,
                host,
                memory_max,
                ..defaults
            };
            let over = over_kernel_limits(&spec);
            if !over.is_empty() {
                return Err(over.join("; "));
            }
            let warnings = unknown
                .iter()
                .map(|key| format!("job {id}: unknown key '{}' (ignored)", key.escape_debug()))
                .collect();
            Ok((spec, warnings))
        }
        // An unknown key is often why a job is invalid (a misspelt
        // `command`): it is named with the errors, not left unsaid.
        _ => {
            let unknown = unknown
                .iter()
                .map(|key| format!("{}: unknown key (ignored)", key.escape_debug()));
            Err(job
                .errors
                .drain(..)
                .chain(unknown)
                .collect::<Vec<_>>()
                .join("; "))
        }
    }
}

/// The kernel's limit of one string of a program's arguments or
/// environment, its terminating NUL included: `MAX_ARG_STRLEN`, 32 pages
/// (128 KiB with Linux's 4 KiB pages). A longer one makes `execve` fail
/// with `E2BIG` ("Argument list too long") at every start, so a job that
/// would pass one is invalid.
pub const MAX_ARG_STRLEN: usize = 32 * 4096;

/// The bound lrpm puts on the total size of a job's own arguments and
/// environment (each string with its NUL and its pointer): 1 MiB. The
/// kernel allows a quarter of the stack limit (2 MiB with the usual 8 MiB)
/// for the arguments and the whole environment, which also holds what lrpm
/// itself inherited; half of it is left for that.
pub const MAX_ARG_TOTAL: usize = 1024 * 1024;

/// The size a string takes in `execve`'s arguments: its bytes, its NUL and
/// its pointer.
fn exec_size(len: usize) -> usize {
    len + 1 + std::mem::size_of::<u64>()
}

/// The human form of a size in bytes: `131072 bytes (128.0 KiB)`.
fn bytes(n: usize) -> String {
    format!("{n} bytes ({:.1} KiB)", n as f64 / 1024.0)
}

/// What of `spec` the kernel would refuse to `execve`: every argument,
/// `env` entry (`NAME=value`) or the `LRPM_WORKER_CONFIG=…` and
/// `LRPM_JOB_NAME=…` strings over [`MAX_ARG_STRLEN`], and a total over
/// [`MAX_ARG_TOTAL`]; each as `field: reason`.
fn over_kernel_limits(spec: &JobSpec) -> Vec<String> {
    let mut errors = Vec::new();
    let mut total = 0;
    let mut check = |field: String, what: &str, len: usize| {
        total += exec_size(len);
        if len + 1 > MAX_ARG_STRLEN {
            errors.push(format!(
                "{field}: {what} is {}, over the kernel's limit of {} for one argument or \
                 environment string (MAX_ARG_STRLEN): every start would fail with \
                 \"Argument list too long\"",
                bytes(len + 1),
                bytes(MAX_ARG_STRLEN)
            ));
        }
    };
    match &spec.program {
        Program::Argv(argv) => {
            for (i, arg) in argv.iter().enumerate() {
                check(format!("command[{i}]"), "the argument", arg.len());
            }
        }
        Program::Shell(line) => check("command".into(), "the command line", line.len()),
        Program::WorkerClass(class) => check("workerClass".into(), "the class", class.len()),
    }
    check(
        "name".into(),
        "LRPM_JOB_NAME=name",
        "LRPM_JOB_NAME=".len() + spec.name.len(),
    );
    let config = spec.worker_config.to_string();
    check(
        "workerConfig".into(),
        "LRPM_WORKER_CONFIG=workerConfig (compact JSON)",
        "LRPM_WORKER_CONFIG=".len() + config.len(),
    );
    for (name, value) in &spec.env {
        check(
            format!("env.{}", name.escape_debug()),
            "NAME=value",
            name.len() + 1 + value.len(),
        );
    }
    if errors.is_empty() && total > MAX_ARG_TOTAL {
        errors.push(format!(
            "job: its arguments and environment take {}, over lrpm's bound of {} \
             (the kernel allows a quarter of the stack limit for them and for \
             lrpm's own environment)",
            bytes(total),
            bytes(MAX_ARG_TOTAL)
        ));
    }
    errors
}

/// The keys that php-lrpm spells in camelCase, with their snake_case spelling.
const SNAKE_CASE: [(&str, &str); 8] = [
    ("workerClass", "worker_class"),
    ("workerConfig", "worker_config"),
    ("shortRunTimeSeconds", "short_run_time_seconds"),
    ("shutdownTimeoutSeconds", "shutdown_timeout_seconds"),
    ("stopSignal", "stop_signal"),
    ("watchdogSeconds", "watchdog_seconds"),
    ("healthCheck", "health_check"),
    ("memoryMax", "memory_max"),
];

/// The keys that have one spelling only.
const ONE_WORD_KEYS: [&str; 10] = [
    "name",
    "command",
    "mtime",
    "env",
    "cwd",
    "user",
    "group",
    "notify",
    "instances",
    "host",
];

/// Whether `key` is a job field, in either spelling.
fn is_known_key(key: &str) -> bool {
    ONE_WORD_KEYS.contains(&key) || SNAKE_CASE.iter().any(|&(c, s)| key == c || key == s)
}

/// The largest accepted number of seconds: 10 years, far beyond any sane
/// timeout, and well within what [`Duration::from_secs_f64`] takes.
const MAX_SECONDS: f64 = 10.0 * 365.25 * 86_400.0;

/// The fields of one job being validated, and the problems found so far.
struct Fields<'a> {
    map: &'a serde_json::Map<String, Value>,
    /// `field: reason`, in the order of the checks.
    errors: Vec<String>,
}

impl<'a> Fields<'a> {
    /// Records a problem with `field`.
    fn error(&mut self, field: impl fmt::Display, reason: impl fmt::Display) {
        self.errors.push(format!("{field}: {reason}"));
    }

    /// The value of field `camel` (given in camelCase), with the key as the
    /// user wrote it. Giving both spellings of a key is an error; the
    /// camelCase value is still checked then, to report its problems too.
    fn lookup(&mut self, camel: &'static str) -> Option<(&'a str, &'a Value)> {
        let map = self.map;
        let get = |key: &str| map.get_key_value(key).map(|(k, v)| (k.as_str(), v));
        let snake = SNAKE_CASE
            .iter()
            .find(|&&(c, _)| c == camel)
            .map(|&(_, s)| s);
        match (get(camel), snake.and_then(get)) {
            (Some(value), Some((snake, _))) => {
                self.error(camel, format_args!("given twice, as {camel} and {snake}"));
                Some(value)
            }
            (value, snake_value) => value.or(snake_value),
        }
    }

    /// Keeps a parsed value, or records why it could not be parsed.
    fn check<T>(&mut self, label: &str, parsed: Result<T, String>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(reason) => {
                self.error(label, reason);
                None
            }
        }
    }

    /// Field `camel` parsed by `parse`, if it is given and valid.
    fn optional<T>(
        &mut self,
        camel: &'static str,
        parse: impl FnOnce(&'a Value) -> Result<T, String>,
    ) -> Option<T> {
        let (label, value) = self.lookup(camel)?;
        self.check(label, parse(value))
    }

    /// `command`: an argv (array) or a shell command line (string).
    fn command(&mut self, label: &str, value: &Value) -> Option<Program> {
        match value {
            Value::String(_) => self.check(label, text(value)).map(Program::Shell),
            Value::Array(items) if !items.is_empty() => self.argv(label, items).map(Program::Argv),
            _ => {
                let reason = "must be a non-empty array of strings or a non-empty string";
                self.error(label, reason);
                None
            }
        }
    }

    /// A non-empty array as an argv: strings, the first (the program) not
    /// empty; every bad item is reported.
    fn argv(&mut self, label: &str, items: &[Value]) -> Option<Vec<String>> {
        let argv: Vec<Option<String>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                // The program itself cannot be empty; its arguments can.
                let parsed = if i == 0 { text(item) } else { string(item) };
                self.check(&format!("{label}[{i}]"), parsed)
            })
            .collect();
        argv.into_iter().collect()
    }

    /// `host`: a worker host's argv, a non-empty array of strings whose
    /// first (the program) is not empty.
    fn host(&mut self, label: &str, value: &Value) -> Option<Vec<String>> {
        match value {
            Value::Array(items) if !items.is_empty() => self.argv(label, items),
            _ => {
                self.error(
                    label,
                    "must be a non-empty array of strings (the host's argv)",
                );
                None
            }
        }
    }

    /// `env`: a map of variable names to string values.
    fn env(&mut self, label: &str, value: &Value) -> Option<Env> {
        let Some(vars) = value.as_object() else {
            self.error(label, "must be a map of strings to strings");
            return None;
        };
        let mut env = Env::default();
        let mut valid = true;
        for (name, value) in vars {
            if name.is_empty() || name.contains(['=', '\0']) {
                let reason = "must be non-empty, without '=' or NUL";
                self.error(
                    label,
                    format_args!("invalid variable name {name:?}: {reason}"),
                );
                valid = false;
            }
            let value = match value {
                Value::Number(_) | Value::Bool(_) => {
                    Err("must be a string (quote numbers and booleans)".to_owned())
                }
                _ => string(value),
            };
            match self.check(&format!("{label}.{}", name.escape_debug()), value) {
                Some(value) => {
                    env.insert(name.clone(), value);
                }
                None => valid = false,
            }
        }
        valid.then(|| env.shrunk())
    }
}

/// A string without NUL, which no argv, environment or path can hold.
fn string(value: &Value) -> Result<String, String> {
    let s = value.as_str().ok_or("must be a string")?;
    if s.contains('\0') {
        return Err("must not contain NUL".to_owned());
    }
    Ok(s.to_owned())
}

/// A non-empty string without NUL.
fn text(value: &Value) -> Result<String, String> {
    match value.as_str() {
        Some("") | None => Err("must be a non-empty string".to_owned()),
        Some(_) => string(value),
    }
}

/// `mtime`: UTC seconds, an integer >= 0 (a float without fraction will do).
fn mtime(value: &Value) -> Result<u64, String> {
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    value
        .as_u64()
        .or_else(|| {
            let f = value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..TWO_POW_64).contains(f));
            // Exact: a whole number within u64's range.
            f.map(|f| f as u64)
        })
        .ok_or_else(|| "must be an integer >= 0".to_owned())
}

/// A number of seconds >= 0 (integer or not), at most [`MAX_SECONDS`].
fn seconds(value: &Value) -> Result<Duration, String> {
    match value.as_f64() {
        Some(s) if (0.0..=MAX_SECONDS).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Some(s) if s > MAX_SECONDS => Err(format!("must be at most {MAX_SECONDS} (10 years)")),
        _ => Err("must be a number >= 0".to_owned()),
    }
}

/// A boolean (`notify`).
fn boolean(value: &Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| "must be true or false".to_owned())
}

/// A number of seconds > 0 (`watchdogSeconds`), at most [`MAX_SECONDS`].
fn positive_seconds(value: &Value) -> Result<Duration, String> {
    match value.as_f64() {
        Some(s) if s > 0.0 && s <= MAX_SECONDS => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("must be a number > 0 (at most {MAX_SECONDS})")),
    }
}

/// The smallest `memoryMax`: 1 MiB. Under it not even the dynamic loader
/// of a program fits, so every start would end in an OOM kill.
pub const MIN_MEMORY_MAX: u64 = 1024 * 1024;

/// `memoryMax`: a number of bytes, or a string of digits with an optional
/// `K`, `M` or `G` (powers of 1024, either case), at least
/// [`MIN_MEMORY_MAX`].
fn memory_size(value: &Value) -> Result<u64, String> {
    const FORM: &str = "must be a number of bytes or a string like \"512M\" (K, M or G)";
    let bytes = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(text) => {
            let (digits, unit) = match text.char_indices().last() {
                Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], Some(c)),
                _ => (text.as_str(), None),
            };
            let shift = match unit.map(|c| c.to_ascii_uppercase()) {
                None => Some(0),
                Some('K') => Some(10),
                Some('M') => Some(20),
                Some('G') => Some(30),
                Some(_) => None,
            };
            let number = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<u64>().ok())
                .flatten();
            match (number, shift) {
                (Some(n), Some(shift)) => Some(
                    n.checked_mul(1 << shift)
                        .ok_or_else(|| format!("{text:?} is too large"))?,
                ),
                _ => None,
            }
        }
        _ => None,
    };
    match bytes {
        Some(n) if n > i64::MAX as u64 => Err(format!("{n} bytes is too large")),
        Some(n) if n >= MIN_MEMORY_MAX => Ok(n),
        Some(n) => Err(format!(
            "{n} bytes is under the smallest cap, {MIN_MEMORY_MAX} bytes (1M): \
             no program starts in less"
        )),
        None => Err(FORM.to_owned()),
    }
}

/// `stopSignal`: a signal name, with or without `SIG`, in any case.
fn signal(value: &Value) -> Result<Signal, String> {
    value.as_str().and_then(Signal::from_name).ok_or_else(|| {
        let names: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
        format!("must be one of {} (SIG prefix optional)", names.join(", "))
    })
}

/// The reason for an id declared more than once.
fn declared_twice(origins: &[&str]) -> String {
    let times = match origins.len() {
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    };
    let (last, rest) = origins.split_last().unwrap_or((&"", &[]));
    format!("declared {times}: in {} and {last}", rest.join(", "))
}

/// The job id a top-level key names; or the key as text and why it cannot
/// be an id.
fn job_id(key: Value) -> Result<JobId, (JobId, String)> {
    match key {
        Value::String(s) if s.is_empty() || s.contains(char::is_control) => Err((
            JobId::new(s),
            "job id: must be non-empty, without control characters".to_owned(),
        )),
        Value::String(s) => Ok(JobId::new(s)),
        Value::Number(n) if !n.is_f64() => Ok(JobId::new(n.to_string())),
        other => Err((
            JobId::new(other.to_string()),
            format!(
                "job id: must be a string or an integer, found {}",
                kind(&other)
            ),
        )),
    }
}

/// What kind of value `value` is, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// The `(key, job)` entries of one document, in order, duplicates kept.
pub(crate) fn parse_document(doc: &Document<'_>) -> Result<Vec<(Value, Value)>, SourceError> {
    let syntax = |reason: String| SourceError::Syntax {
        origin: doc.origin.to_owned(),
        format: doc.format,
        reason,
    };
    let top = match doc.format {
        Format::Json => serde_json::from_str(doc.text).map_err(|e| syntax(e.to_string()))?,
        Format::Yaml if yaml_flow_too_deep(doc.text) => {
            let reason =
                format!("flow collections ([…], {{…}}) nested over {MAX_YAML_FLOW_DEPTH} deep");
            return Err(syntax(reason));
        }
        Format::Yaml => serde_yaml_ng::from_str(doc.text).map_err(|e| syntax(e.to_string()))?,
        // TOML cannot repeat a key nor have a non-table top level, and its
        // keys are strings: a table says it all.
        Format::Toml => {
            let table: toml::Table =
                toml::from_str(doc.text).map_err(|e| syntax(toml_reason(doc.text, &e)))?;
            let entries = table.into_iter();
            TopLevel::Map(
                entries
                    .map(|(k, v)| (Value::String(k), toml_to_json(v)))
                    .collect(),
            )
        }
    };
    match top {
        TopLevel::Map(entries) => Ok(entries),
        TopLevel::Other(sample) => Err(SourceError::NotAMap {
            origin: doc.origin.to_owned(),
            found: kind(&sample).to_owned(),
        }),
    }
}

/// How deep YAML flow collections may nest before [`serde_yaml_ng`] sees
/// them. Its scanner takes time quadratic in that depth (100,000 levels of
/// `[`, a 200 kB file, take minutes), while anything deeper than its
/// recursion limit of 128 fails anyway; 1,000 levels parse in milliseconds.
const MAX_YAML_FLOW_DEPTH: usize = 1000;

/// Whether brackets nest deeper than [`MAX_YAML_FLOW_DEPTH`] in `text`.
/// Brackets inside strings and comments count too: a YAML text would need
/// a thousand unbalanced ones there for this to reject it wrongly.
fn yaml_flow_too_deep(text: &str) -> bool {
    let mut depth = 0usize;
    text.bytes().any(|b| {
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        depth > MAX_YAML_FLOW_DEPTH
    })
}

/// A TOML error on one line (the parser's own message quotes the offending
/// line, which may be huge, over several lines).
fn toml_reason(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span().and_then(|span| text.get(..span.start)) {
        Some(before) => {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("{message} at line {line} column {column}")
        }
        None => message.to_owned(),
    }
}

/// A TOML value as JSON; a datetime becomes its RFC 3339 text, and a
/// non-finite float `null` (which no numeric field accepts).
fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => items.into_iter().map(toml_to_json).collect(),
        toml::Value::Table(table) => {
            let entries = table.into_iter();
            Value::Object(entries.map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// A document's top level, read by [`TopLevelVisitor`].
enum TopLevel {
    /// A map: its entries in document order, duplicate keys kept (a JSON or
    /// YAML map would silently keep the last one) and keys of any type.
    Map(Vec<(Value, Value)>),
    /// Anything else: an empty sample of its kind, for the message.
    Other(Value),
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

/// Reads a [`TopLevel`] from JSON or YAML.
struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of job id to job")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(TopLevel::Map(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other(Value::Array(Vec::new())))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Other(Value::Null))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<TopLevel, E> {
        self.visit_unit()
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other(Value::Bool(false)))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other(Value::from(0)))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<TopLevel, E> {
        self.visit_i64(0)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<TopLevel, E> {
        self.visit_i64(0)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other(Value::String(String::new())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(format: Format, text: &str) -> Result<Declaration, SourceError> {
        parse_documents(&[Document {
            origin: "jobs",
            format,
            text,
        }])
    }

    fn id() -> JobId {
        JobId::from("j")
    }

    /// The cost of a configuration push's parse, by format: 1,000 jobs as
    /// the benchmark suite declares them. Prints the best of 20 parses of
    /// each format, of the format's own parser alone, and of a
    /// [`Reparser`](crate::Reparser)'s first parse and its parse after one
    /// job changed; checks that the three formats give the same
    /// declaration.
    ///
    /// `cargo test --release -p lrpm-core --lib -- --ignored --nocapture parse_cost`
    #[test]
    #[ignore = "a measurement: run it in release mode, by hand"]
    fn parse_cost_of_a_thousand_jobs_by_format() {
        use std::fmt::Write as _;
        use std::time::{Duration, Instant};
        let mut toml = String::new();
        let mut jobs = serde_json::Map::new();
        for i in 0..1000 {
            let argv = ["/usr/local/bin/worker", &i.to_string(), "/run/bench.sock"];
            let _ = write!(
                toml,
                "[{i}]\nname = \"bench {i}\"\ncommand = {argv:?}\nshortRunTimeSeconds = 0\n\
                 shutdownTimeoutSeconds = 10\nenv = {{ BENCH_GENERATION = \"0\" }}\n\n"
            );
            jobs.insert(
                i.to_string(),
                json!({"name": format!("bench {i}"), "command": argv,
                       "shortRunTimeSeconds": 0, "shutdownTimeoutSeconds": 10,
                       "env": {"BENCH_GENERATION": "0"}}),
            );
        }
        let json_text = Value::Object(jobs).to_string();
        let yaml_text =
            serde_yaml_ng::to_string(&serde_json::from_str::<Value>(&json_text).unwrap()).unwrap();
        let best = |f: &dyn Fn()| {
            (0..20)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                })
                .min()
                .unwrap_or(Duration::ZERO)
        };
        let reference = parse(Format::Json, &json_text).unwrap();
        for (format, text) in [
            (Format::Toml, toml.as_str()),
            (Format::Json, json_text.as_str()),
            (Format::Yaml, yaml_text.as_str()),
        ] {
            assert_eq!(parse(format, text).unwrap(), reference, "{format:?}");
            let whole = best(&|| {
                parse(format, text).unwrap();
            });
            let parser = best(&|| match format {
                Format::Toml => drop(toml::from_str::<toml::Table>(text).unwrap()),
                Format::Json => drop(serde_json::from_str::<Value>(text).unwrap()),
                Format::Yaml => drop(serde_yaml_ng::from_str::<Value>(text).unwrap()),
            });
            // A reparse after one job's change, and the first parse of a
            // reparser, which knows nothing yet.
            let doc = |text| Document {
                origin: "jobs",
                format,
                text,
            };
            let changed = text.replacen("bench 500", "bench 500b", 1);
            let mut reparser = crate::Reparser::new();
            let push = best(&|| {
                let mut reparser = crate::Reparser::new();
                reparser.parse(&[doc(text)]).unwrap();
            });
            reparser.parse(&[doc(text)]).unwrap();
            let reparse = {
                let reparser = std::cell::RefCell::new(reparser);
                best(&|| {
                    let mut reparser = reparser.borrow_mut();
                    reparser.parse(&[doc(&changed)]).unwrap();
                    reparser.parse(&[doc(text)]).unwrap();
                }) / 2
            };
            eprintln!(
                "{format:?}: {} KiB, parse_documents {whole:?} (of which the parser {parser:?}); \
                 Reparser: first parse {push:?}, after a change of one job {reparse:?}",
                text.len() / 1024
            );
        }
    }

    /// A valid job body with `extra` fields added (or replaced).
    fn job(extra: Value) -> Value {
        let mut body = json!({"name": "Job", "command": ["sleep", "1"]});
        let (Value::Object(body_map), Value::Object(extra)) = (&mut body, extra) else {
            unreachable!("both are maps");
        };
        body_map.extend(extra);
        body
    }

    fn valid(body: Value) -> JobSpec {
        let (spec, warnings) = validate_job(&id(), &body).unwrap();
        assert_eq!(warnings, Vec::<String>::new());
        spec
    }

    fn invalid(body: Value) -> String {
        validate_job(&id(), &body).unwrap_err()
    }

    #[test]
    fn minimal_job_gets_the_defaults() {
        let spec = valid(json!({"name": "Job", "command": ["sleep", "1"]}));
        let program = Program::Argv(vec!["sleep".into(), "1".into()]);
        assert_eq!(spec, JobSpec::new("Job", program));
        assert_eq!(spec.worker_config, json!({}));
        assert_eq!(spec.short_run, Duration::from_secs(5));
        assert_eq!(spec.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(spec.stop_signal, Signal::Term);
    }

    #[test]
    fn every_field_is_read() {
        let spec = valid(job(json!({
            "workerConfig": {"queue": "q", "n": [1, 2]},
            "mtime": 1629121362,
            "shortRunTimeSeconds": 2.5,
            "shutdownTimeoutSeconds": 0,
            "env": {"A": "1", "EMPTY": ""},
            "cwd": "/srv",
            "user": "www-data",
            "group": "nogroup",
            "stopSignal": "sigint",
        })));
        assert_eq!(spec.worker_config, json!({"queue": "q", "n": [1, 2]}));
        assert_eq!(spec.mtime, Some(1629121362));
        assert_eq!(spec.short_run, Duration::from_millis(2500));
        assert_eq!(spec.shutdown_timeout, Duration::ZERO);
        let env: Vec<_> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "1"), ("EMPTY", "")]);
        assert_eq!(spec.cwd.as_deref(), Some("/srv"));
        assert_eq!(spec.user.as_deref(), Some("www-data"));
        assert_eq!(spec.group.as_deref(), Some("nogroup"));
        assert_eq!(spec.stop_signal, Signal::Int);
    }

    #[test]
    fn host_runs_a_worker_class() {
        let host = json!(["python3", "lrpm_host.py", ""]);
        let spec = valid(json!({"name": "n", "workerClass": "W", "host": host}));
        assert_eq!(
            spec.host,
            Some(vec!["python3".into(), "lrpm_host.py".into(), String::new()])
        );
        assert_eq!(
            invalid(json!({"name": "n", "command": "x", "host": ["h"]})),
            "host: needs workerClass (a host forks worker classes, not commands)"
        );
        assert_eq!(
            invalid(json!({"name": "n", "workerClass": "W", "host": []})),
            "host: must be a non-empty array of strings (the host's argv)"
        );
        assert_eq!(
            invalid(json!({"name": "n", "workerClass": "W", "host": ["", 1]})),
            "host[0]: must be a non-empty string; host[1]: must be a string"
        );
        assert_eq!(
            invalid(json!({"name": "n", "workerClass": "W", "host": ["h"], "user": "u"})),
            "host: cannot be combined with user (a hosted worker runs as its host does)"
        );
        // A plain lrpm runs hosted worker classes: the host knows them.
        let mut d = Declaration::default();
        d.jobs.insert(id(), Arc::new(spec));
        d.leave_out_unknown_workers(None);
        assert_eq!(d.jobs.len(), 1);
        assert!(d.invalid.is_empty());
    }

    #[test]
    fn memory_max_takes_bytes_and_k_m_g() {
        let max = |v: Value| valid(job(json!({"memoryMax": v}))).memory_max;
        assert_eq!(max(json!(2_000_000)), Some(2_000_000));
        assert_eq!(max(json!("2000000")), Some(2_000_000));
        assert_eq!(max(json!("1024K")), Some(1024 * 1024));
        assert_eq!(max(json!("512M")), Some(512 << 20));
        assert_eq!(max(json!("512m")), Some(512 << 20));
        assert_eq!(max(json!("1G")), Some(1 << 30));
        let snake = valid(job(json!({"memory_max": "50M"})));
        assert_eq!(snake.memory_max, Some(50 << 20));
        assert_eq!(valid(job(json!({}))).memory_max, None);
        let form = "memoryMax: must be a number of bytes or a string like \"512M\" (K, M or G)";
        for bad in [
            json!("1T"),
            json!("M"),
            json!(""),
            json!("1.5G"),
            json!(" 1G"),
            json!("-1M"),
            json!(-1),
            json!(1.5),
            json!(true),
            json!(["1G"]),
        ] {
            assert_eq!(invalid(job(json!({"memoryMax": bad}))), form, "{bad}");
        }
        assert_eq!(
            invalid(job(json!({"memoryMax": "1000K"}))),
            "memoryMax: 1024000 bytes is under the smallest cap, 1048576 bytes (1M): \
             no program starts in less"
        );
        assert_eq!(
            invalid(job(json!({"memoryMax": "99999999999G"}))),
            r#"memoryMax: "99999999999G" is too large"#
        );
        assert_eq!(
            invalid(job(json!({"memoryMax": u64::MAX}))),
            format!("memoryMax: {} bytes is too large", u64::MAX)
        );
    }

    #[test]
    fn memory_max_is_not_for_hosted_workers() {
        assert_eq!(
            invalid(json!({"name": "n", "workerClass": "W", "host": ["h"], "memoryMax": "1G"})),
            "host: cannot be combined with memoryMax (a hosted worker is in its host's memory)"
        );
    }

    #[test]
    fn memory_limits_are_left_out_where_they_cannot_be_enforced() {
        let mut d = Declaration::default();
        let capped = JobId::from("capped");
        let plain = JobId::from("plain");
        d.jobs.insert(
            capped.clone(),
            Arc::new(valid(job(json!({"memoryMax": "50M"})))),
        );
        d.jobs
            .insert(plain.clone(), Arc::new(valid(job(json!({})))));
        let kept = d.clone();
        d.leave_out_memory_limits(None);
        assert_eq!(d, kept);
        d.leave_out_memory_limits(Some("no cgroup tree (--cgroup off)"));
        assert_eq!(ids(&d.jobs), ["plain"]);
        assert_eq!(
            d.invalid[&capped],
            "memoryMax: cannot be enforced: no cgroup tree (--cgroup off)"
        );
    }

    #[test]
    fn notify_watchdog_and_health_check() {
        let spec = valid(job(json!({
            "notify": true,
            "watchdogSeconds": 1.5,
            "healthCheck": {"http": "http://127.0.0.1:8080/health", "retries": 2},
        })));
        assert!(spec.notify);
        assert_eq!(spec.watchdog, Some(Duration::from_millis(1500)));
        let check = spec.health_check.expect("a health check");
        assert_eq!(check.retries, 2);
        let snake = valid(job(
            json!({"watchdog_seconds": 2, "health_check": {"tcp": "h:1"}}),
        ));
        assert_eq!(snake.watchdog, Some(Duration::from_secs(2)));
        assert!(snake.health_check.is_some());
        let defaults = valid(job(json!({})));
        assert!(!defaults.notify && defaults.watchdog.is_none() && defaults.health_check.is_none());
        assert_eq!(
            invalid(job(json!({"notify": "yes"}))),
            "notify: must be true or false"
        );
        assert!(
            invalid(job(json!({"watchdogSeconds": 0})))
                .starts_with("watchdogSeconds: must be a number > 0")
        );
        assert_eq!(
            invalid(job(json!({"healthCheck": {"tcp": "nope"}}))),
            "healthCheck.tcp: must be HOST:PORT"
        );
        assert!(invalid(job(json!({"health_check": {}}))).starts_with("health_check.probe"));
    }

    #[test]
    fn programs() {
        let shell = valid(json!({"name": "n", "command": "echo hi | cat"}));
        assert_eq!(shell.program, Program::Shell("echo hi | cat".into()));
        let argv = valid(json!({"name": "n", "command": ["/bin/true", ""]}));
        assert_eq!(
            argv.program,
            Program::Argv(vec!["/bin/true".into(), String::new()])
        );
        let class = valid(json!({"name": "n", "workerClass": "\\App\\Worker"}));
        assert_eq!(class.program, Program::WorkerClass("\\App\\Worker".into()));
    }

    #[test]
    fn program_errors() {
        let cases = [
            (
                json!({"name": "n"}),
                "command: one of command or workerClass is required",
            ),
            (
                json!({"name": "n", "command": "x", "workerClass": "W"}),
                "command: cannot be combined with workerClass",
            ),
            (
                json!({"name": "n", "command": [], "worker_class": ""}),
                "command: cannot be combined with worker_class; \
                 command: must be a non-empty array of strings or a non-empty string; \
                 worker_class: must be a non-empty string",
            ),
            (
                json!({"name": "n", "command": []}),
                "command: must be a non-empty array of strings or a non-empty string",
            ),
            (
                json!({"name": "n", "command": 7}),
                "command: must be a non-empty array of strings or a non-empty string",
            ),
            (
                json!({"name": "n", "command": ""}),
                "command: must be a non-empty string",
            ),
            (
                json!({"name": "n", "command": "a\0b"}),
                "command: must not contain NUL",
            ),
            (
                json!({"name": "n", "command": ["", 1, "x\0", null]}),
                "command[0]: must be a non-empty string; command[1]: must be a string; \
                 command[2]: must not contain NUL; command[3]: must be a string",
            ),
            (
                json!({"name": "n", "workerClass": 1}),
                "workerClass: must be a non-empty string",
            ),
        ];
        for (body, reason) in cases {
            assert_eq!(invalid(body), reason);
        }
    }

    #[test]
    fn name_errors() {
        let cases = [
            (json!({"command": "x"}), "name: is required"),
            (
                json!({"name": "", "command": "x"}),
                "name: must be a non-empty string",
            ),
            (
                json!({"name": 42, "command": "x"}),
                "name: must be a non-empty string",
            ),
            (
                json!({"name": null, "command": "x"}),
                "name: must be a non-empty string",
            ),
            (
                json!({"name": "a\0", "command": "x"}),
                "name: must not contain NUL",
            ),
        ];
        for (body, reason) in cases {
            assert_eq!(invalid(body), reason);
        }
    }

    #[test]
    fn a_job_must_be_a_map() {
        for body in [json!(null), json!([]), json!("x"), json!(1)] {
            assert_eq!(invalid(body), "job: must be a map of fields");
        }
    }

    #[test]
    fn strings_over_the_kernels_limit_are_invalid() {
        let big = |n: usize| "x".repeat(n);
        // The largest string execve takes: MAX_ARG_STRLEN with its NUL.
        let fits = MAX_ARG_STRLEN - 1 - "LRPM_WORKER_CONFIG=".len() - 2;
        valid(job(json!({"workerConfig": big(fits)})));
        let reason = invalid(job(json!({"workerConfig": big(fits + 1)})));
        assert!(
            reason.starts_with("workerConfig: LRPM_WORKER_CONFIG=workerConfig"),
            "{reason}"
        );
        assert!(reason.contains("MAX_ARG_STRLEN"), "{reason}");
        assert!(reason.contains("Argument list too long"), "{reason}");

        let fits = MAX_ARG_STRLEN - 1 - "V=".len();
        valid(job(json!({"env": {"V": big(fits)}})));
        let reason = invalid(job(json!({"env": {"V": big(fits + 1)}})));
        assert!(
            reason.starts_with("env.V: NAME=value is 131073 bytes"),
            "{reason}"
        );

        let fits = MAX_ARG_STRLEN - 1;
        valid(json!({"name": "n", "command": ["/bin/true", big(fits)]}));
        let reason = invalid(json!({"name": "n", "command": ["/bin/true", big(fits + 1)]}));
        assert!(
            reason.starts_with("command[1]: the argument is"),
            "{reason}"
        );
        let reason = invalid(json!({"name": "n", "command": big(fits + 1)}));
        assert!(
            reason.starts_with("command: the command line is"),
            "{reason}"
        );
        let reason = invalid(json!({"name": big(fits), "command": "true"}));
        assert!(
            reason.starts_with("name: LRPM_JOB_NAME=name is"),
            "{reason}"
        );
    }

    #[test]
    fn arguments_and_environment_over_the_total_bound_are_invalid() {
        let value = "x".repeat(100 * 1024);
        let env = |n: usize| -> serde_json::Map<String, Value> {
            (0..n).map(|i| (format!("V{i}"), json!(value))).collect()
        };
        // Nine strings of 100 KiB fit in 1 MiB; eleven do not.
        valid(job(json!({"env": env(9)})));
        let reason = invalid(job(json!({"env": env(11)})));
        assert!(
            reason.starts_with("job: its arguments and environment take"),
            "{reason}"
        );
        assert!(reason.contains("1024.0 KiB"), "{reason}");
    }

    #[test]
    fn worker_config_is_any_value() {
        for config in [json!(null), json!([1]), json!("s"), json!({"a": {"b": []}})] {
            let spec = valid(job(json!({"workerConfig": config.clone()})));
            assert_eq!(spec.worker_config, config);
        }
        let spec = valid(job(json!({"worker_config": [true]})));
        assert_eq!(spec.worker_config, json!([true]));
    }

    #[test]
    fn mtime() {
        assert_eq!(valid(job(json!({"mtime": 0}))).mtime, Some(0));
        assert_eq!(valid(job(json!({"mtime": u64::MAX}))).mtime, Some(u64::MAX));
        assert_eq!(
            valid(job(json!({"mtime": 1629121362.0}))).mtime,
            Some(1629121362)
        );
        for bad in [
            json!(-1),
            json!(1.5),
            json!("1629121362"),
            json!(null),
            json!(1e30),
        ] {
            assert_eq!(
                invalid(job(json!({"mtime": bad}))),
                "mtime: must be an integer >= 0"
            );
        }
    }

    #[test]
    fn durations() {
        for (camel, snake) in [
            ("shortRunTimeSeconds", "short_run_time_seconds"),
            ("shutdownTimeoutSeconds", "shutdown_timeout_seconds"),
        ] {
            let read = |key: &str, value: Value| {
                let spec = valid(job(json!({key: value})));
                if camel.starts_with("short") {
                    spec.short_run
                } else {
                    spec.shutdown_timeout
                }
            };
            assert_eq!(read(camel, json!(0)), Duration::ZERO);
            assert_eq!(read(camel, json!(-0.0)), Duration::ZERO);
            assert_eq!(read(camel, json!(30)), Duration::from_secs(30));
            assert_eq!(read(camel, json!(0.25)), Duration::from_millis(250));
            assert_eq!(read(snake, json!(7)), Duration::from_secs(7));
            assert_eq!(
                read(camel, json!(MAX_SECONDS)),
                Duration::from_secs(315_576_000)
            );
            for bad in [json!(-1), json!(-0.5), json!("5"), json!(null), json!([5])] {
                let reason = format!("{camel}: must be a number >= 0");
                assert_eq!(invalid(job(json!({camel: bad}))), reason);
            }
            let reason = format!("{snake}: must be a number >= 0");
            assert_eq!(invalid(job(json!({snake: true}))), reason);
            for huge in [json!(MAX_SECONDS + 1.0), json!(u64::MAX), json!(1e300)] {
                let reason = format!("{camel}: must be at most 315576000 (10 years)");
                assert_eq!(invalid(job(json!({camel: huge}))), reason);
            }
            let reason = format!("{camel}: given twice, as {camel} and {snake}");
            assert_eq!(invalid(job(json!({camel: 1, snake: 1}))), reason);
        }
    }

    #[test]
    fn env() {
        let ok = valid(job(json!({"env": {"PATH": "/bin", "X": "a=b"}})));
        assert_eq!(ok.env.get("X").map(String::as_str), Some("a=b"));
        let cases = [
            (json!("A=1"), "env: must be a map of strings to strings"),
            (json!(null), "env: must be a map of strings to strings"),
            (
                json!({"N": 1}),
                "env.N: must be a string (quote numbers and booleans)",
            ),
            (
                json!({"B": true}),
                "env.B: must be a string (quote numbers and booleans)",
            ),
            (json!({"L": []}), "env.L: must be a string"),
            (json!({"V": "a\0"}), "env.V: must not contain NUL"),
            (
                json!({"": "x"}),
                "env: invalid variable name \"\": must be non-empty, without '=' or NUL",
            ),
            (
                json!({"A=B": "x", "C\0": 1}),
                "env: invalid variable name \"A=B\": must be non-empty, without '=' or NUL; \
                 env: invalid variable name \"C\\0\": must be non-empty, without '=' or NUL; \
                 env.C\\0: must be a string (quote numbers and booleans)",
            ),
        ];
        for (env, reason) in cases {
            assert_eq!(invalid(job(json!({"env": env}))), reason);
        }
    }

    #[test]
    fn cwd_user_group() {
        for key in ["cwd", "user", "group"] {
            let spec = valid(job(json!({key: "x"})));
            let got = match key {
                "cwd" => spec.cwd,
                "user" => spec.user,
                _ => spec.group,
            };
            assert_eq!(got.as_deref(), Some("x"));
            for (bad, reason) in [
                (json!(""), "must be a non-empty string"),
                (json!(0), "must be a non-empty string"),
                (json!("a\0b"), "must not contain NUL"),
            ] {
                assert_eq!(invalid(job(json!({key: bad}))), format!("{key}: {reason}"));
            }
        }
    }

    #[test]
    fn stop_signal() {
        for (name, signal) in [
            ("TERM", Signal::Term),
            ("SIGQUIT", Signal::Quit),
            ("usr1", Signal::Usr1),
        ] {
            assert_eq!(valid(job(json!({"stopSignal": name}))).stop_signal, signal);
        }
        assert_eq!(
            valid(job(json!({"stop_signal": "HUP"}))).stop_signal,
            Signal::Hup
        );
        let names = "HUP, INT, QUIT, KILL, USR1, USR2, ALRM, TERM, CONT, STOP, TTIN, TTOU, WINCH";
        for bad in [json!("SIGBOGUS"), json!(15), json!("")] {
            let reason = format!("stopSignal: must be one of {names} (SIG prefix optional)");
            assert_eq!(invalid(job(json!({"stopSignal": bad}))), reason);
        }
    }

    #[test]
    fn snake_case_spellings() {
        let spec = valid(json!({
            "name": "n",
            "worker_class": "W",
            "worker_config": {"a": 1},
            "short_run_time_seconds": 1,
            "shutdown_timeout_seconds": 2,
            "stop_signal": "INT",
        }));
        assert_eq!(spec.program, Program::WorkerClass("W".into()));
        assert_eq!(spec.worker_config, json!({"a": 1}));
        assert_eq!(spec.short_run, Duration::from_secs(1));
        assert_eq!(spec.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(spec.stop_signal, Signal::Int);
    }

    #[test]
    fn both_spellings_are_an_error() {
        for (camel, snake, value) in [
            ("workerClass", "worker_class", json!("W")),
            ("workerConfig", "worker_config", json!({})),
            ("stopSignal", "stop_signal", json!("TERM")),
        ] {
            let mut body = json!({"name": "n", camel: value, snake: value});
            if camel != "workerClass" {
                body["command"] = json!("x");
            }
            let reason = format!("{camel}: given twice, as {camel} and {snake}");
            assert_eq!(invalid(body), reason);
        }
    }

    #[test]
    fn every_error_is_collected() {
        let body = json!({
            "command": ["ok"],
            "workerClass": "W",
            "mtime": "yesterday",
            "shortRunTimeSeconds": -1,
            "env": {"X": 1},
            "stopSignal": "NOPE",
            "typo": 1,
        });
        let reasons: Vec<String> = invalid(body).split("; ").map(str::to_owned).collect();
        assert_eq!(
            reasons,
            [
                "name: is required",
                "command: cannot be combined with workerClass",
                "mtime: must be an integer >= 0",
                "shortRunTimeSeconds: must be a number >= 0",
                "env.X: must be a string (quote numbers and booleans)",
                "stopSignal: must be one of HUP, INT, QUIT, KILL, USR1, USR2, ALRM, TERM, CONT, \
                 STOP, TTIN, TTOU, WINCH (SIG prefix optional)",
                "typo: unknown key (ignored)",
            ]
        );
    }

    #[test]
    fn an_invalid_job_names_its_unknown_keys_too() {
        let body = json!({"name": "n", "comand": "x", "shortRunTimeSeconds": -1});
        let reason = validate_job(&JobId::from("42"), &body).unwrap_err();
        assert_eq!(
            reason,
            "command: one of command or workerClass is required; \
             shortRunTimeSeconds: must be a number >= 0; comand: unknown key (ignored)"
        );
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let (_, warnings) = validate_job(&JobId::from("42"), &job(json!({"foo": 1}))).unwrap();
        assert_eq!(warnings, ["job 42: unknown key 'foo' (ignored)"]);
        let decl = parse(
            Format::Json,
            r#"{"42": {"name": "n", "command": "x", "foo": 1}}"#,
        );
        let decl = decl.unwrap();
        assert_eq!(decl.warnings, ["job 42: unknown key 'foo' (ignored)"]);
        assert!(decl.jobs.contains_key(&JobId::from("42")));
    }

    /// php-lrpm's README example, with a `command` instead of the class.
    const PHP_LRPM_JSON: &str = r#"{
        "42": {
            "name": "Job 42",
            "command": ["php", "worker.php"],
            "mtime": 1629121362,
            "workerConfig": [],
            "shortRunTimeSeconds": 5,
            "shutdownTimeoutSeconds": 10
        },
        "43": {"name": "Job 43", "workerClass": "\\PHPLRPM\\Test\\MockWorker",
               "mtime": 1629121363, "workerConfig": {"a": 1}}
    }"#;

    const PHP_LRPM_YAML: &str = "
42:
  name: Job 42
  command: [php, worker.php]
  mtime: 1629121362
  workerConfig: []
  shortRunTimeSeconds: 5
  shutdownTimeoutSeconds: 10
43:
  name: Job 43
  workerClass: \\PHPLRPM\\Test\\MockWorker
  mtime: 1629121363
  workerConfig: {a: 1}
";

    const PHP_LRPM_TOML: &str = r#"
[42]
name = "Job 42"
command = ["php", "worker.php"]
mtime = 1629121362
workerConfig = []
shortRunTimeSeconds = 5
shutdownTimeoutSeconds = 10

[43]
name = "Job 43"
workerClass = '\PHPLRPM\Test\MockWorker'
mtime = 1629121363
workerConfig = {a = 1}
"#;

    #[test]
    fn php_lrpm_configurations_load_unchanged() {
        let mut job42 = JobSpec::new(
            "Job 42",
            Program::Argv(vec!["php".into(), "worker.php".into()]),
        );
        job42.mtime = Some(1629121362);
        job42.worker_config = json!([]);
        let mut job43 = JobSpec::new(
            "Job 43",
            Program::WorkerClass("\\PHPLRPM\\Test\\MockWorker".into()),
        );
        job43.mtime = Some(1629121363);
        job43.worker_config = json!({"a": 1});
        let expected = Declaration {
            jobs: [
                (JobId::from("42"), Arc::new(job42)),
                (JobId::from("43"), Arc::new(job43)),
            ]
            .into(),
            ..Declaration::default()
        };
        for (format, text) in [
            (Format::Json, PHP_LRPM_JSON),
            (Format::Yaml, PHP_LRPM_YAML),
            (Format::Toml, PHP_LRPM_TOML),
        ] {
            assert_eq!(parse(format, text).unwrap(), expected, "{format:?}");
        }
    }

    fn workers_and_commands() -> Declaration {
        parse(
            Format::Json,
            r#"{"w": {"name": "w", "workerClass": "Mail"},
                "x": {"name": "x", "workerClass": "Unknown"},
                "c": {"name": "c", "command": "sleep 1"},
                "bad": {"command": "sleep 1"}}"#,
        )
        .expect("parses")
    }

    fn ids<V>(map: &BTreeMap<JobId, V>) -> Vec<&str> {
        map.keys().map(JobId::as_str).collect()
    }

    #[test]
    fn registered_worker_classes_run() {
        let classes = BTreeSet::from(["Mail".to_owned(), "Report".to_owned()]);
        let mut d = workers_and_commands();
        d.leave_out_unknown_workers(Some(&classes));
        assert_eq!(ids(&d.jobs), ["c", "w"]);
        assert_eq!(ids(&d.invalid), ["bad", "x"]);
        assert_eq!(
            d.invalid[&JobId::from("x")],
            r#"workerClass: no worker is registered as "Unknown" (registered: Mail, Report)"#
        );
        assert!(d.invalid[&JobId::from("bad")].starts_with("name: "));
    }

    #[test]
    fn a_binary_without_workers_runs_commands_only() {
        let mut d = workers_and_commands();
        d.leave_out_unknown_workers(None);
        assert_eq!(ids(&d.jobs), ["c"]);
        assert_eq!(ids(&d.invalid), ["bad", "w", "x"]);
        assert!(
            d.invalid[&JobId::from("w")].starts_with("workerClass: this lrpm runs commands only"),
            "{}",
            d.invalid[&JobId::from("w")]
        );
        // A library binary that registered no worker runs commands too.
        let mut d = workers_and_commands();
        d.leave_out_unknown_workers(Some(&BTreeSet::new()));
        assert_eq!(ids(&d.jobs), ["c"]);
        assert_eq!(
            d.invalid[&JobId::from("w")],
            r#"workerClass: no worker is registered as "Mail" (registered: none)"#
        );
    }

    #[test]
    fn integer_ids_are_strings() {
        for (format, text) in [
            (Format::Json, r#"{"7": {"name": "n", "command": "x"}}"#),
            (Format::Yaml, "7: {name: n, command: x}"),
            (Format::Yaml, "'7': {name: n, command: x}"),
            (Format::Toml, "[7]\nname = 'n'\ncommand = 'x'"),
        ] {
            let decl = parse(format, text).unwrap();
            assert_eq!(
                decl.jobs.keys().collect::<Vec<_>>(),
                [&JobId::from("7")],
                "{text}"
            );
        }
        let decl = parse(Format::Yaml, "-3: {name: n, command: x}").unwrap();
        assert!(decl.jobs.contains_key(&JobId::from("-3")));
    }

    #[test]
    fn yaml_keys_that_cannot_be_ids() {
        let text = "true: {}\n~: {}\n1.5: {}\n[1]: {}\n{a: 1}: {}\n'': {}\n\"a\\nb\": {}\n";
        let decl = parse(Format::Yaml, text).unwrap();
        let invalid: Vec<(&str, &str)> = decl
            .invalid
            .iter()
            .map(|(id, reason)| (id.as_str(), reason.as_str()))
            .collect();
        let found = |kind| format!("job id: must be a string or an integer, found {kind}");
        let control = "job id: must be non-empty, without control characters";
        assert_eq!(
            invalid,
            [
                ("", control),
                ("1.5", &*found("a number")),
                ("[1]", &*found("a list")),
                ("a\nb", control),
                ("null", &*found("null")),
                ("true", &*found("a boolean")),
                ("{\"a\":1}", &*found("a map")),
            ]
        );
        assert!(decl.jobs.is_empty());
    }

    #[test]
    fn duplicate_ids() {
        let a = r#"{"1": {"name": "a", "command": "x"}, "2": {"name": "two", "command": "x"}}"#;
        let b = "[1]\nname = 'b'\ncommand = 'x'";
        let c = "1: {name: c, command: x}\n3: {name: three, command: x}";
        let doc = |origin, format, text| Document {
            origin,
            format,
            text,
        };
        let decl = parse_documents(&[
            doc("a.json", Format::Json, a),
            doc("b.toml", Format::Toml, b),
        ])
        .unwrap();
        assert_eq!(
            decl.invalid.get(&JobId::from("1")).unwrap(),
            "declared twice: in a.json and b.toml"
        );
        assert_eq!(decl.jobs.keys().collect::<Vec<_>>(), [&JobId::from("2")]);

        let decl = parse_documents(&[
            doc("a.json", Format::Json, a),
            doc("b.toml", Format::Toml, b),
            doc("c.yaml", Format::Yaml, c),
        ])
        .unwrap();
        let reason = "declared 3 times: in a.json, b.toml and c.yaml";
        assert_eq!(decl.invalid.get(&JobId::from("1")).unwrap(), reason);
        assert_eq!(decl.jobs.len(), 2);

        // Within one document, too: "1" and 1 in YAML, or a repeated JSON key.
        let decl = parse(
            Format::Yaml,
            "1: {name: a, command: x}\n'1': {name: b, command: x}",
        );
        let reason = "declared twice: in jobs and jobs";
        assert_eq!(
            decl.unwrap().invalid.get(&JobId::from("1")).unwrap(),
            reason
        );
        let decl = parse(
            Format::Json,
            r#"{"1": {}, "1": {"name": "b", "command": "x"}}"#,
        );
        assert_eq!(
            decl.unwrap().invalid.get(&JobId::from("1")).unwrap(),
            reason
        );
    }

    #[test]
    fn invalid_jobs_do_not_spoil_valid_ones() {
        let text = r#"{"ok": {"name": "n", "command": "x"}, "bad": {"name": "n", "command": "x", "shortRunTimeSeconds": -1}}"#;
        let decl = parse(Format::Json, text).unwrap();
        assert_eq!(decl.jobs.keys().collect::<Vec<_>>(), [&JobId::from("ok")]);
        let reason = decl.invalid.get(&JobId::from("bad")).unwrap();
        assert_eq!(reason, "shortRunTimeSeconds: must be a number >= 0");
    }

    #[test]
    fn empty_configurations() {
        for (format, text) in [
            (Format::Json, "{}"),
            (Format::Yaml, "{}"),
            (Format::Toml, ""),
            (Format::Toml, "# no jobs\n"),
        ] {
            assert_eq!(
                parse(format, text).unwrap(),
                Declaration::default(),
                "{text:?}"
            );
        }
        assert_eq!(parse_documents(&[]).unwrap(), Declaration::default());
    }

    #[test]
    fn top_level_not_a_map() {
        for (format, text, found) in [
            (Format::Json, "null", "null"),
            (Format::Json, "[{\"name\": 1}]", "a list"),
            (Format::Json, "42", "a number"),
            (Format::Json, "\"x\"", "a string"),
            (Format::Json, "true", "a boolean"),
            (Format::Yaml, "", "null"),
            (Format::Yaml, "~", "null"),
            (Format::Yaml, "# just a comment", "null"),
            (Format::Yaml, "- a\n- b", "a list"),
            (Format::Yaml, "hello", "a string"),
            (Format::Yaml, "1.5", "a number"),
        ] {
            let err = parse(format, text).unwrap_err();
            let expected = SourceError::NotAMap {
                origin: "jobs".into(),
                found: found.into(),
            };
            assert_eq!(err, expected, "{format:?} {text:?}");
        }
    }

    #[test]
    fn garbage_is_a_syntax_error() {
        for (format, text) in [
            (Format::Json, "{\"a\": "),
            (Format::Json, "{} {}"),
            (Format::Yaml, "a: [1"),
            (Format::Yaml, "a: 1\n---\nb: 2"),
            (Format::Yaml, "a: !tag 1"),
            (Format::Toml, "[a"),
            (Format::Toml, "a = 1\na = 2"),
            (Format::Toml, "[1]\n[\"1\"]"),
        ] {
            let err = parse(format, text).unwrap_err();
            assert!(
                matches!(err, SourceError::Syntax { format: f, .. } if f == format),
                "{text:?}: {err}"
            );
        }
        // One bad document fails the whole source.
        let good = Document {
            origin: "a.json",
            format: Format::Json,
            text: "{}",
        };
        let bad = Document {
            origin: "b.toml",
            format: Format::Toml,
            text: "x =",
        };
        let err = parse_documents(&[good, bad]).unwrap_err();
        assert!(matches!(err, SourceError::Syntax { ref origin, .. } if origin == "b.toml"));
    }

    #[test]
    fn toml_errors_fit_on_one_line() {
        let err = parse(Format::Toml, "[1]\nname = 'n'\nname = 'm'").unwrap_err();
        assert_eq!(
            err.to_string(),
            "jobs: cannot parse Toml: duplicate key at line 3 column 1"
        );
    }

    #[test]
    fn toml_datetimes_are_text() {
        let text = "[1]\nname = 'n'\ncommand = 'x'\nworkerConfig = {since = 1979-05-27T07:32:00Z}";
        let decl = parse(Format::Toml, text).unwrap();
        let spec = decl.jobs.get(&JobId::from("1")).unwrap();
        assert_eq!(spec.worker_config, json!({"since": "1979-05-27T07:32:00Z"}));
        let text = "[1]\nname = 'n'\ncommand = 'x'\nshortRunTimeSeconds = nan";
        let decl = parse(Format::Toml, text).unwrap();
        let reason = decl.invalid.get(&JobId::from("1")).unwrap();
        assert_eq!(reason, "shortRunTimeSeconds: must be a number >= 0");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        const DEPTH: usize = 100_000;
        let arrays = || "[".repeat(DEPTH) + &"]".repeat(DEPTH);
        for (format, text) in [
            (Format::Json, arrays()),
            (
                Format::Json,
                format!("{{\"1\": {{\"workerConfig\": {}}}}}", arrays()),
            ),
            (Format::Yaml, arrays()),
            (Format::Yaml, format!("1: {{workerConfig: {}}}", arrays())),
            (Format::Yaml, "- ".repeat(DEPTH) + "x"),
            (Format::Toml, format!("a = {}", arrays())),
            (
                Format::Toml,
                format!("a = {}1{}", "{b=".repeat(DEPTH), "}".repeat(DEPTH)),
            ),
            (Format::Toml, format!("[{}b]", "a.".repeat(DEPTH))),
        ] {
            // A syntax error (too deep); or, for JSON's top level, which
            // serde_json skips without recursing, not a map.
            assert!(parse(format, &text).is_err(), "{format:?}");
        }
    }

    #[test]
    fn deep_yaml_flow_nesting_is_refused_before_parsing() {
        let text = format!("1: {{workerConfig: {}}}", "[".repeat(1001));
        let err = parse(Format::Yaml, &text).unwrap_err();
        let reason = "flow collections ([…], {…}) nested over 1000 deep";
        assert_eq!(
            err.to_string(),
            format!("jobs: cannot parse Yaml: {reason}")
        );
        // Balanced brackets in strings are harmless.
        let text = format!("1: {{name: '{}', command: x}}", "[]".repeat(2000));
        assert!(
            parse(Format::Yaml, &text)
                .unwrap()
                .jobs
                .contains_key(&JobId::from("1"))
        );
    }

    #[test]
    fn yaml_alias_bombs_are_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            text += &format!("{name}: &{name} [{refs}]\n");
        }
        let err = parse(Format::Yaml, &text).unwrap_err();
        assert!(matches!(err, SourceError::Syntax { .. }), "{err}");
    }

    #[test]
    fn formats_from_file_names() {
        assert_eq!(Format::from_file_name("a.JSON"), Some(Format::Json));
        assert_eq!(Format::from_file_name("a.b.toml"), Some(Format::Toml));
        assert_eq!(Format::from_file_name("x.yml"), Some(Format::Yaml));
        assert_eq!(Format::from_file_name("x.yaml"), Some(Format::Yaml));
        assert_eq!(Format::from_file_name("yaml"), None);
        assert_eq!(Format::from_file_name("x.txt"), None);
    }

    /// Any JSON value, its leaves drawn from `leaf`; map keys are often job
    /// fields, so that validation goes deep.
    fn arb_json(leaf: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            prop::sample::select(
                ONE_WORD_KEYS
                    .iter()
                    .chain(SNAKE_CASE.iter().flat_map(|(c, s)| [c, s]))
                    .copied()
                    .collect::<Vec<_>>()
            )
            .prop_map(str::to_owned),
            "[a-zA-Z_=\0]{0,6}",
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_leaf() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec!["TERM", "sigkill", "", "x\0", "ls", "-1"])
                .prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ]
        .boxed()
    }

    /// A JSON value without floats, which JSON text may not round-trip exactly.
    fn arb_config() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        arb_json(leaf.boxed())
    }

    fn arb_spec() -> impl Strategy<Value = JobSpec> {
        let text = || "[^\0]{1,12}";
        let program = prop_oneof![
            (text(), prop::collection::vec("[^\0]{0,6}", 0..4)).prop_map(|(program, args)| {
                Program::Argv(std::iter::once(program).chain(args).collect())
            }),
            text().prop_map(Program::Shell),
            text().prop_map(Program::WorkerClass),
        ];
        // Milliseconds up to 10^6 s, which an f64 holds to the nanosecond.
        let duration = (0..1_000_000_000u64).prop_map(Duration::from_millis);
        (
            (
                text(),
                program,
                arb_config(),
                prop::option::of(any::<u64>()),
            ),
            (duration.clone(), duration),
            prop::collection::btree_map("[^\0=]{1,8}", "[^\0]{0,8}", 0..4),
            (
                prop::option::of(text()),
                prop::option::of(text()),
                prop::option::of(text()),
            ),
            prop::sample::select(Signal::ALL.to_vec()),
        )
            .prop_map(
                |(
                    (name, program, worker_config, mtime),
                    (short_run, shutdown_timeout),
                    env,
                    (cwd, user, group),
                    stop_signal,
                )| {
                    JobSpec {
                        name,
                        program,
                        worker_config,
                        mtime,
                        short_run,
                        shutdown_timeout,
                        env: env.into_iter().collect(),
                        cwd,
                        user,
                        group,
                        stop_signal,
                        notify: false,
                        watchdog: None,
                        health_check: None,
                        instances: None,
                        instance: None,
                        host: None,
                        memory_max: None,
                    }
                },
            )
    }

    /// How a user would write `spec`.
    fn render(spec: &JobSpec) -> Value {
        let mut body = json!({
            "name": spec.name,
            "workerConfig": spec.worker_config,
            "shortRunTimeSeconds": spec.short_run.as_secs_f64(),
            "shutdownTimeoutSeconds": spec.shutdown_timeout.as_secs_f64(),
            "env": spec.env.iter().collect::<BTreeMap<_, _>>(),
            "stopSignal": spec.stop_signal.name(),
        });
        match &spec.program {
            Program::Argv(argv) => body["command"] = json!(argv),
            Program::Shell(line) => body["command"] = json!(line),
            Program::WorkerClass(class) => body["workerClass"] = json!(class),
        }
        for (key, value) in [
            ("cwd", &spec.cwd),
            ("user", &spec.user),
            ("group", &spec.group),
        ] {
            if let Some(value) = value {
                body[key] = json!(value);
            }
        }
        if let Some(mtime) = spec.mtime {
            body["mtime"] = json!(mtime);
        }
        body
    }

    /// What any parse must give: a clean error with a message, or a
    /// declaration in which no job is both valid and invalid.
    fn check_consistent(result: &Result<Declaration, SourceError>) -> Result<(), TestCaseError> {
        match result {
            Ok(decl) => {
                for id in decl.jobs.keys() {
                    prop_assert!(
                        !decl.invalid.contains_key(id),
                        "{id} both valid and invalid"
                    );
                }
                for reason in decl.invalid.values() {
                    prop_assert!(!reason.is_empty());
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_cleanly(
            text in prop_oneof![".{0,200}", "[\\[\\]{}:,\"'\\- a-z0-9\n#=.&*!~|>]{0,200}"]
        ) {
            for format in [Format::Json, Format::Toml, Format::Yaml] {
                let _ = parse(format, &text);
            }
        }

        #[test]
        fn any_job_body_validates_or_fails_cleanly(body in arb_json(arb_leaf())) {
            match validate_job(&id(), &body) {
                Ok(_) => {}
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
        }

        /// What a file source reads: any bytes, as UTF-8 where they are
        /// (the file source refuses the rest before parsing), in any
        /// format, alone or as one file of a directory.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            split in any::<prop::sample::Index>(),
        ) {
            let text = String::from_utf8_lossy(&bytes);
            let cut = text.char_indices().nth(split.index(text.chars().count() + 1));
            let (a, b) = text.split_at(cut.map_or(text.len(), |(i, _)| i));
            for format in [Format::Json, Format::Toml, Format::Yaml] {
                check_consistent(&parse(format, &text))?;
                let docs = [
                    Document { origin: "a", format, text: a },
                    Document { origin: "b", format: Format::Json, text: b },
                ];
                check_consistent(&parse_documents(&docs))?;
            }
        }

        /// Valid configurations with a few bytes changed, inserted or
        /// removed: the near misses a fuzzer finds first.
        #[test]
        fn mutated_configurations_parse_or_fail_cleanly(
            specs in prop::collection::vec(arb_spec(), 1..4),
            format in prop::sample::select(vec![Format::Json, Format::Toml, Format::Yaml]),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let map: serde_json::Map<String, Value> = specs
                .iter()
                .enumerate()
                .map(|(i, spec)| (format!("job{i}"), render(spec)))
                .collect();
            let map = Value::Object(map);
            let text = match format {
                Format::Json => map.to_string(),
                // TOML has no null: such a configuration cannot be written.
                Format::Toml => match toml::to_string(&map) {
                    Ok(text) => text,
                    Err(_) => return Ok(()),
                },
                Format::Yaml => serde_yaml_ng::to_string(&map).expect("YAML holds any JSON"),
            };
            let mut bytes = text.into_bytes();
            for (at, byte, kind) in edits {
                let i = at.index(bytes.len() + 1);
                match kind {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            check_consistent(&parse(format, &String::from_utf8_lossy(&bytes)))?;
        }

        /// Nesting of any depth, in any of the ways each format nests,
        /// is a clean error or a valid value: never a stack overflow. (The
        /// parsers stop at 80 to 128 levels; deeper only costs text.)
        #[test]
        fn nesting_of_any_depth_is_bounded(depth in 1usize..4_096, kind in 0usize..6) {
            let (format, text) = match kind {
                0 => (Format::Json, format!(r#"{{"a":{{"name":"a","command":"x","workerConfig":{}{}}}}}"#, "[".repeat(depth), "]".repeat(depth))),
                1 => (Format::Json, format!(r#"{{"a":{{"name":"a","command":"x","workerConfig":{}1{}}}}}"#, "{\"k\":".repeat(depth), "}".repeat(depth))),
                2 => (Format::Yaml, format!("a:\n  name: a\n  command: x\n  workerConfig: {}{}\n", "[".repeat(depth), "]".repeat(depth))),
                3 => (Format::Yaml, {
                    let mut t = String::from("a:\n  name: a\n  command: x\n  workerConfig:\n");
                    for level in 0..depth.min(300) {
                        t.push_str(&" ".repeat(4 + level));
                        t.push_str("- \n");
                    }
                    t
                }),
                4 => (Format::Toml, format!("[a]\nname = \"a\"\ncommand = \"x\"\nworkerConfig = {}{}\n", "[".repeat(depth), "]".repeat(depth))),
                _ => (Format::Toml, format!("[a]\nname = \"a\"\ncommand = \"x\"\nworkerConfig = {}1{}\n", "{ k = ".repeat(depth), " }".repeat(depth))),
            };
            check_consistent(&parse(format, &text))?;
        }

        #[test]
        fn valid_specs_round_trip_through_json(spec in arb_spec()) {
            let text = json!({"job": render(&spec)}).to_string();
            let decl = parse(Format::Json, &text).unwrap();
            prop_assert_eq!(decl.invalid, BTreeMap::new());
            prop_assert_eq!(decl.warnings, Vec::<String>::new());
            prop_assert_eq!(decl.jobs.get(&JobId::from("job")).map(|s| &**s), Some(&spec));
        }
    }
}
