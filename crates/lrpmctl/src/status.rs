//! `lrpmctl status`: the status table.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use anstyle::{AnsiColor, Style};
use std::borrow::Cow;

use lrpm_core::escape::{Escaped, escape};
use lrpm_core::human::HumanDuration;
use lrpm_core::status::{
    ConnectionState, ExitInfo, Health, HostState, HostStatus, JobState, JobStatus, Status,
};
use unicode_width::UnicodeWidthStr;

use crate::client::Client;
use crate::common::Context;
use crate::error::CtlError;
use crate::procfs::{Feed, Sampler, Usage, Usages};
use lrpm_proto::codec::{Request, Response};

/// Runs `lrpmctl status [ID…]`.
pub fn run(ctx: &Context, ids: Vec<String>) -> Result<(), CtlError> {
    let mut client = Client::connect(ctx.socket())?;
    if ctx.json {
        // The raw document, as any client gets it: without `usage`.
        let request = if ids.is_empty() {
            Request::Status
        } else {
            Request::StatusOf { ids }
        };
        let answer = client.call(&request)?;
        let path = answer.path.clone();
        return match crate::common::check(ctx, answer)? {
            Response::Status(_) => Ok(()),
            _ => Err(CtlError::Invalid {
                path,
                reason: "an answer of the wrong kind".into(),
            }),
        };
    }
    // lrpm reads the workers' CPU time and memory (on every core, while it
    // encodes the rest of the answer, and keeps them for a second): for a
    // farm of thousands, reading /proc is most of the work.
    let request = Request::StatusUsage { ids };
    let answer = client.call(&request)?;
    let path = answer.path.clone();
    match crate::common::check(ctx, answer)? {
        Response::Status(status) => {
            let sampler;
            let usages = match &status.usage {
                Some(given) => Usages::given(&status.jobs, given),
                // An lrpm that does not read them (an older one): they are
                // read here, on every core.
                None => {
                    sampler = Sampler::now();
                    std::thread::scope(|scope| {
                        let mut feed = Feed::new(scope, &sampler);
                        for pid in status.jobs.iter().filter_map(|job| job.pid) {
                            feed.push(pid);
                        }
                        feed.finish()
                    })
                }
            };
            let stdout = std::io::stdout();
            let width = if stdout.is_terminal() {
                terminal_size::terminal_size_of(&stdout).map(|(w, _)| usize::from(w.0))
            } else {
                None
            };
            let view = View {
                now: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                color: ctx.color,
                // A terminal that says it has no columns gets no limit.
                width: width.filter(|&w| w > 0),
            };
            crate::common::print(&render(&status, &view, || usages))
        }
        _ => Err(CtlError::Invalid {
            path,
            reason: "an answer of the wrong kind".into(),
        }),
    }
}

/// How to render: the facts that do not come from the status document.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Now, in UTC seconds.
    pub now: f64,
    /// Whether to use colours.
    pub color: bool,
    /// The terminal's width, to cut the NAME column to; `None` for no limit.
    pub width: Option<usize>,
}

/// The table's columns: heading and whether the values are right-aligned.
const COLUMNS: [(&str, bool); 9] = [
    ("ID", false),
    ("PID", true),
    ("STATE", false),
    ("%CPU", true),
    ("RSS", true),
    ("UPTIME", true),
    ("RESTARTS", true),
    ("LAST EXIT", false),
    ("NAME", false),
];

/// The gap between two columns.
const GAP: &str = "  ";

/// The narrowest a NAME is cut to, however narrow the terminal.
const MIN_NAME_WIDTH: usize = 12;

/// Renders the whole status output: the supervisor and source lines, the
/// job table and the invalid jobs.
pub fn render<'a>(status: &Status, view: &View, usages: impl FnOnce() -> Usages<'a>) -> String {
    let paint = |style: Style, text: &str| -> String {
        if view.color {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_owned()
        }
    };
    let bold = Style::new().bold();
    let red = Style::new().fg_color(Some(AnsiColor::Red.into()));
    let yellow = Style::new().fg_color(Some(AnsiColor::Yellow.into()));

    let mut out = String::with_capacity(512 + status.jobs.len() * 120);
    let sup = &status.supervisor;
    let _ = write!(
        out,
        "lrpm {}, pid {}, up {}",
        Escaped(&sup.version),
        sup.pid,
        duration(view.now - sup.started_at)
    );
    if sup.shutting_down {
        let _ = write!(out, ", {}", paint(yellow, "shutting down"));
    }
    if let Some(held) = &sup.held_back {
        let _ = write!(out, "\n{} {held}", paint(red, "held back:"));
    }
    let source = &sup.source;
    let _ = write!(out, "\nsource {}", Escaped(&source.uri));
    match source.last_load_at {
        Some(at) => {
            let _ = write!(out, ", loaded {} ago", duration(view.now - at));
        }
        None => out.push_str(", not loaded yet"),
    }
    if let Some(revision) = source.revision {
        let _ = write!(out, ", revision {revision}");
    }
    if let Some(conn) = &source.connection {
        match conn.state {
            ConnectionState::Connected => {}
            ConnectionState::Connecting => {
                let _ = write!(out, ", {}", paint(yellow, "connecting"));
            }
            ConnectionState::Reconnecting => {
                let _ = write!(
                    out,
                    "\n{} for {}: {}",
                    paint(red, "disconnected"),
                    duration(view.now - conn.since),
                    Escaped(conn.error.as_deref().unwrap_or("unknown error"))
                );
                if let Some(at) = conn.retry_at {
                    let _ = write!(out, " (next attempt in {})", duration(at - view.now));
                }
            }
        }
    }
    if let Some(error) = &source.last_error {
        let _ = write!(out, "\n{} {}", paint(red, "source error:"), Escaped(error));
    }
    for host in &sup.hosts {
        host_lines(&mut out, host, view, &paint);
    }
    let count = |state| status.jobs.iter().filter(|j| j.state == state).count();
    let _ = write!(
        out,
        "\n{}: {} running, {} backoff, {} stopping",
        lrpm_core::human::count(status.jobs.len(), "job"),
        count(JobState::Running),
        count(JobState::Backoff),
        count(JobState::Stopping)
    );
    let paused = count(JobState::Paused);
    if paused > 0 {
        let _ = write!(out, ", {paused} paused");
    }
    out.push_str("\n\n");

    if status.jobs.is_empty() {
        out.push_str("no jobs\n");
    } else {
        // The cells that do not come from /proc first.
        let mut rows: Vec<[String; 9]> = status.jobs.iter().map(|job| row(job, view.now)).collect();
        let usages = usages();
        for (cells, job) in rows.iter_mut().zip(&status.jobs) {
            usage_cells(cells, job.pid.and_then(|pid| usages.of(pid)));
        }
        table(&mut out, &rows, &status.jobs, view);
    }

    if !source.invalid_jobs.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            paint(
                red,
                "invalid jobs (left out or kept on their last valid declaration):"
            )
        );
        for (id, reason) in &source.invalid_jobs {
            let _ = writeln!(out, "  {}: {}", paint(bold, &escape(id)), Escaped(reason));
        }
    }
    if !source.warnings.is_empty() {
        let _ = writeln!(out, "\n{}", paint(yellow, "warnings:"));
        for warning in &source.warnings {
            let _ = writeln!(out, "  {}", Escaped(warning));
        }
    }
    out
}

/// The lines of a worker host: its argv, state, pid and last error.
fn host_lines(
    out: &mut String,
    host: &HostStatus,
    view: &View,
    paint: &dyn Fn(Style, &str) -> String,
) {
    let red = Style::new().fg_color(Some(AnsiColor::Red.into()));
    let yellow = Style::new().fg_color(Some(AnsiColor::Yellow.into()));
    let state = match host.state {
        HostState::Ready => host.state.as_str().to_owned(),
        HostState::Starting => paint(yellow, host.state.as_str()),
        HostState::Backoff => paint(red, host.state.as_str()),
    };
    let _ = write!(out, "\nhost {}: {state}", Escaped(&host.argv.join(" ")));
    match (host.pid, host.restart_at) {
        (Some(pid), _) => {
            let _ = write!(out, ", pid {pid}, up {}", duration(view.now - host.since));
        }
        (None, Some(at)) => {
            let _ = write!(out, " (next start in {})", duration(at - view.now));
        }
        (None, None) => {}
    }
    if host.restarts > 0 {
        let _ = write!(
            out,
            ", {}",
            lrpm_core::human::count(host.restarts as usize, "restart")
        );
    }
    if host.waiting > 0 {
        let _ = write!(out, ", {} waiting", host.waiting);
    }
    if let (Some(error), Some(at)) = (&host.last_error, host.last_error_at) {
        let _ = write!(
            out,
            "\n  {} {} ({} ago)",
            paint(red, "host error:"),
            Escaped(error),
            duration(view.now - at)
        );
    }
}

/// Lays out the rows under the headings.
fn table(out: &mut String, rows: &[[String; 9]], jobs: &[JobStatus], view: &View) {
    let mut widths = COLUMNS.map(|(heading, _)| heading.len());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(width_of(cell));
        }
    }
    let before_name: usize = widths[..8].iter().map(|w| w + GAP.len()).sum();
    let name_limit = view
        .width
        .map(|w| w.saturating_sub(before_name).max(MIN_NAME_WIDTH));

    let headings = COLUMNS.map(|(heading, _)| heading.to_owned());
    let mut line = String::new();
    layout(&mut line, &headings, &widths, name_limit, None);
    if view.color {
        let bold = Style::new().bold();
        let _ = write!(out, "{}{line}{}", bold.render(), bold.render_reset());
    } else {
        out.push_str(&line);
    }
    out.push('\n');
    for (row, job) in rows.iter().zip(jobs) {
        let state = view.color.then(|| state_style(job.state));
        layout(out, row, &widths, name_limit, state);
        out.push('\n');
    }
}

/// Appends one line of cells padded to `widths` (without its trailing
/// blanks), the STATE cell in `state`'s colour when given; the last column
/// is not padded, and is cut to `name_limit`.
fn layout(
    line: &mut String,
    cells: &[String; 9],
    widths: &[usize; 9],
    name_limit: Option<usize>,
    state: Option<Style>,
) {
    let start = line.len();
    for (column, (cell, (&width, (_, right)))) in
        cells.iter().zip(widths.iter().zip(COLUMNS)).enumerate()
    {
        if column == 8 {
            match name_limit {
                Some(limit) => line.push_str(&cut(cell, limit)),
                None => line.push_str(cell),
            }
            break;
        }
        let pad = width.saturating_sub(width_of(cell));
        let paint = |line: &mut String| match state.filter(|_| column == 2) {
            Some(style) => {
                let _ = write!(line, "{}{cell}{}", style.render(), style.render_reset());
            }
            None => line.push_str(cell),
        };
        if right {
            line.extend(std::iter::repeat_n(' ', pad));
            paint(line);
        } else {
            paint(line);
            line.extend(std::iter::repeat_n(' ', pad));
        }
        line.push_str(GAP);
    }
    let trimmed = line[start..].trim_end().len();
    line.truncate(start + trimmed);
}

/// The columns `cell` takes: its length when it is printable ASCII (the
/// common case, and every escaped cell of an ASCII declaration).
fn width_of(cell: &str) -> usize {
    if cell.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        cell.len()
    } else {
        cell.width()
    }
}

/// `text` cut to at most `limit` columns, with an ellipsis when cut.
fn cut(text: &str, limit: usize) -> String {
    if text.width() <= limit {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > limit {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

fn state_style(state: JobState) -> Style {
    let color = match state {
        JobState::Running => AnsiColor::Green,
        JobState::Starting => AnsiColor::Cyan,
        JobState::Backoff => AnsiColor::Yellow,
        JobState::Stopping => AnsiColor::Magenta,
        JobState::Paused => AnsiColor::Blue,
        JobState::Waiting => AnsiColor::BrightBlack,
    };
    Style::new().fg_color(Some(color.into()))
}

/// One job's cells, every one with its control characters escaped (the id
/// and the name come from the declaration, an exit's words from lrpm);
/// %CPU and RSS are `-` until [`usage_cells`] fills them in.
fn row(job: &JobStatus, now: f64) -> [String; 9] {
    let dash = || "-".to_owned();
    let state = match (job.state, job.restart_at) {
        (JobState::Backoff, Some(at)) => format!("backoff ({})", duration(at - now)),
        (state, _) => match job.health {
            // What the health check says, unless the job is just healthy.
            Some(health @ (Health::Starting | Health::Unhealthy)) => {
                format!("{} ({})", state.as_str(), health.as_str())
            }
            _ => state.as_str().to_owned(),
        },
    };
    [
        job.id.clone(),
        job.pid.map_or_else(dash, |pid| pid.to_string()),
        state,
        dash(),
        dash(),
        job.started_at
            .filter(|_| job.pid.is_some())
            .map_or_else(dash, |at| duration(now - at).to_string()),
        job.restarts.to_string(),
        job.last_exit
            .as_ref()
            .map_or_else(dash, |exit| last_exit(exit, now)),
        job.name.clone(),
    ]
    .map(|cell| match escape(&cell) {
        Cow::Borrowed(_) => cell,
        Cow::Owned(escaped) => escaped,
    })
}

/// Fills in the %CPU and RSS cells of a row from its process's usage.
fn usage_cells(cells: &mut [String; 9], usage: Option<Usage>) {
    if let Some(usage) = usage {
        cells[3] = format!("{:.1}", usage.cpu_percent);
        cells[4] = bytes(usage.rss_bytes);
    }
}

/// How a process ended (the short form: `exit 1`, `SIGKILL`), and how long
/// ago.
fn last_exit(exit: &ExitInfo, now: f64) -> String {
    format!("{:#}, {} ago", exit.status, duration(now - exit.at))
}

/// A number of seconds in lrpm's one human form ([`lrpm_core::human`]).
fn duration(seconds: f64) -> HumanDuration {
    HumanDuration::from_secs_f64(seconds)
}

/// A size in bytes, in binary units: `812K`, `12.3M`, `1.2G`.
pub fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let n = n as f64;
    if n < KIB * KIB {
        format!("{:.0}K", n / KIB)
    } else if n < KIB * KIB * KIB {
        format!("{:.1}M", n / (KIB * KIB))
    } else {
        format!("{:.1}G", n / (KIB * KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lrpm_core::status::{ConnectionStatus, ExitStatus, SourceStatus, SupervisorStatus};

    fn job(id: &str, state: JobState) -> JobStatus {
        JobStatus {
            id: id.into(),
            name: format!("Job {id}"),
            command: "sleep 1000".into(),
            state,
            pid: (state != JobState::Backoff).then_some(u32::MAX),
            started_at: Some(1000.0),
            restarts: 2,
            crashes: 2,
            oom_kills: 0,
            last_exit: Some(ExitInfo {
                status: ExitStatus::signal(9),
                at: 990.0,
            }),
            backoff_seconds: 4.0,
            restart_at: (state == JobState::Backoff).then_some(1003.0),
            mtime: None,
            declared: true,
            invalid: None,
            health: None,
            status_text: None,
        }
    }

    fn status() -> Status {
        let mut source = SourceStatus {
            uri: "jobs.toml".into(),
            last_load_at: Some(995.0),
            last_error: Some("jobs.toml: expected a table".into()),
            ..SourceStatus::default()
        };
        source
            .invalid_jobs
            .insert("bad".into(), "name: missing".into());
        Status {
            supervisor: SupervisorStatus {
                pid: 7,
                version: "0.1.0".into(),
                started_at: 900.0,
                shutting_down: false,
                source,
                output: Default::default(),
                held_back: None,
                cluster: None,
                hosts: Vec::new(),
            },
            jobs: vec![
                job("1", JobState::Running),
                job("long-id", JobState::Backoff),
                job("3", JobState::Stopping),
            ],
            usage: None,
        }
    }

    /// The output for `status`, each process read when its row is made.
    fn rendered(status: &Status, view: &View) -> String {
        let sampler = Sampler::now();
        render(status, view, || Usages::new(&sampler))
    }

    const VIEW: View = View {
        now: 1000.0,
        color: false,
        width: None,
    };

    #[test]
    fn control_characters_are_escaped_everywhere() {
        let mut status = status();
        status.jobs[0].id = "evil\u{1b}[2J\nid".into();
        status.jobs[0].name = "name\u{9b}31m".into();
        status.supervisor.source.uri = "jobs\u{7}.toml".into();
        status.supervisor.source.last_error = Some("bad\u{1b}]0;title\u{7}".into());
        status
            .supervisor
            .source
            .invalid_jobs
            .insert("x\u{1b}c".into(), "r\u{8}".into());
        status.supervisor.source.warnings.push("w\r".into());
        let text = rendered(&status, &VIEW);
        assert!(
            !text.chars().any(|c| c != '\n' && c.is_control()),
            "{text:?}"
        );
        for shown in [
            "evil\\x1b[2J\\nid",
            "name\\u{9b}31m",
            "jobs\\x07.toml",
            "bad\\x1b]0;title\\x07",
            "x\\x1bc: r\\x08",
            "w\\r",
        ] {
            assert!(text.contains(shown), "{shown} not in {text}");
        }
        // The escaped id sets its column's width.
        assert!(text.contains("evil\\x1b[2J\\nid  4294967295"), "{text}");
    }

    #[test]
    fn worker_hosts_show_their_state_pid_and_last_error() {
        let mut status = status();
        let host = |argv: &str, state, pid| lrpm_core::status::HostStatus {
            argv: argv.split(' ').map(str::to_owned).collect(),
            state,
            pid,
            since: 990.0,
            restarts: 0,
            waiting: 0,
            last_error: None,
            last_error_at: None,
            restart_at: None,
        };
        let mut failing = host("php lrpm-host.php bad.php", HostState::Backoff, None);
        failing.restarts = 3;
        failing.waiting = 2;
        failing.last_error = Some("it ended (exit status: 255)".into());
        failing.last_error_at = Some(998.0);
        failing.restart_at = Some(1004.0);
        status.supervisor.hosts = vec![
            failing,
            host("python3 lrpm_host.py app", HostState::Ready, Some(42)),
        ];
        let text = rendered(&status, &VIEW);
        assert!(
            text.contains(
                "\nhost php lrpm-host.php bad.php: backoff (next start in 4s), 3 restarts, \
                 2 waiting\n  host error: it ended (exit status: 255) (2s ago)\n\
                 host python3 lrpm_host.py app: ready, pid 42, up 10s\n3 jobs"
            ),
            "{text}"
        );
    }

    #[test]
    fn renders_a_plain_table() {
        let text = rendered(&status(), &VIEW);
        let expected = "\
lrpm 0.1.0, pid 7, up 1m40s
source jobs.toml, loaded 5s ago
source error: jobs.toml: expected a table
3 jobs: 1 running, 1 backoff, 1 stopping

ID              PID  STATE         %CPU  RSS  UPTIME  RESTARTS  LAST EXIT         NAME
1        4294967295  running          -    -     0ms         2  SIGKILL, 10s ago  Job 1
long-id           -  backoff (3s)     -    -       -         2  SIGKILL, 10s ago  Job long-id
3        4294967295  stopping         -    -     0ms         2  SIGKILL, 10s ago  Job 3

invalid jobs (left out or kept on their last valid declaration):
  bad: name: missing
";
        assert_eq!(text, expected);
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn shows_the_usage_lrpm_gave() {
        let mut status = status();
        status.jobs[0].pid = Some(41);
        status.jobs[2].pid = Some(43);
        // Job 1's process, started at 1000, used 0.5 s of CPU until 1010.
        let given = std::collections::HashMap::from([(
            41,
            lrpm_core::status::ProcessUsage {
                cpu_seconds: 0.5,
                rss_bytes: 3 * 1024 * 1024,
                at: 1010.0,
            },
        )]);
        let text = render(&status, &VIEW, || Usages::given(&status.jobs, &given));
        let row = |id: &str| -> Vec<String> {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{id} ")) && l.ends_with(&format!("Job {id}")))
                .unwrap_or_else(|| panic!("no row {id} in {text}"));
            line.split_whitespace().map(str::to_owned).collect()
        };
        assert_eq!(row("1")[3..5], ["5.0", "3.0M"], "{text}");
        // No figure from lrpm (its process had ended): none, and /proc is
        // not read for it.
        assert_eq!(row("3")[3..5], ["-", "-"], "{text}");
    }

    #[test]
    fn says_what_holds_jobs_back() {
        let mut held = status();
        held.supervisor.held_back =
            Some("lrpm's descriptor limit (RLIMIT_NOFILE 64) holds 3 jobs back".into());
        let text = rendered(&held, &VIEW);
        assert!(
            text.contains(
                "\nheld back: lrpm's descriptor limit (RLIMIT_NOFILE 64) holds 3 jobs back\n"
            ),
            "{text}"
        );
        assert!(!rendered(&status(), &VIEW).contains("held back"));
    }

    #[test]
    fn a_source_connection_is_shown_when_lost() {
        let mut lost = status();
        lost.supervisor.source.revision = Some(42);
        lost.supervisor.source.connection = Some(ConnectionStatus {
            state: ConnectionState::Reconnecting,
            since: 990.0,
            error: Some("connection refused".into()),
            retry_at: Some(1004.0),
        });
        let text = rendered(&lost, &VIEW);
        assert!(text.contains(", revision 42"), "{text}");
        assert!(
            text.contains("\ndisconnected for 10s: connection refused (next attempt in 4s)\n"),
            "{text}"
        );
        if let Some(conn) = lost.supervisor.source.connection.as_mut() {
            conn.state = ConnectionState::Connected;
            conn.error = None;
        }
        let text = rendered(&lost, &VIEW);
        assert!(!text.contains("disconnected"), "{text}");
    }

    #[test]
    fn colours_only_when_asked() {
        let view = View {
            color: true,
            ..VIEW
        };
        let text = rendered(&status(), &view);
        assert!(text.contains("\x1b["));
        let plain = anstream::adapter::strip_str(&text).to_string();
        assert_eq!(plain, rendered(&status(), &VIEW));
    }

    #[test]
    fn names_are_cut_to_the_terminal() {
        let mut status = status();
        status.jobs[0].name = "x".repeat(500);
        let view = View {
            width: Some(120),
            ..VIEW
        };
        let text = rendered(&status, &view);
        let longest = text.lines().map(UnicodeWidthStr::width).max().unwrap_or(0);
        assert!(longest <= 120, "{longest}");
        assert!(text.contains('…'));
    }

    #[test]
    fn an_empty_farm_says_so() {
        let mut status = status();
        status.jobs.clear();
        assert!(rendered(&status, &VIEW).contains("\nno jobs\n"));
    }

    #[test]
    fn every_kind_of_exit_fits_a_cell() {
        let mut status = status();
        status.jobs[0].last_exit = Some(ExitInfo {
            status: ExitStatus::code(1),
            at: 998.5,
        });
        status.jobs[1].last_exit = Some(ExitInfo {
            status: ExitStatus::spawn_failed("cwd /nowhere: No such file or directory"),
            at: 1000.0 - 187.0,
        });
        status.jobs[2].last_exit = Some(ExitInfo {
            status: ExitStatus::signal(18),
            at: 1000.0 - 7500.0,
        });
        let text = rendered(&status, &VIEW);
        let cells: Vec<&str> = text
            .lines()
            .filter_map(|l| Some(l.split_once("  2  ")?.1.split("  Job").next()?.trim()))
            .collect();
        assert_eq!(
            cells,
            [
                "exit 1, 1.5s ago",
                "spawn-failed, 3m07s ago",
                "SIGCONT, 2h05m ago"
            ]
        );
    }

    #[test]
    fn units() {
        assert_eq!(bytes(812 * 1024), "812K");
        assert_eq!(bytes(12 * 1024 * 1024 + 300 * 1024), "12.3M");
        assert_eq!(bytes(1288490188), "1.2G");
    }
}
