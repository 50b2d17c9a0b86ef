//! The human forms of durations, signal numbers and sizes, as the log,
//! `lrpmctl status` and error messages write them, and [`cut`], the one
//! bounded form of a long text in a log line.
//!
//! One formatter each, so that lrpm's log and its status table agree:
//! [`duration`] (`250ms`, `4s`, `1.5s`, `2m08s`, `3h05m`, `2d04h`) and
//! [`signal_name`] (`SIGKILL`, `SIGRTMIN+3`, `signal 99`). Both are
//! `Display` values, written without an intermediate string.
//!
//! The signal table is Linux's, kept here as plain data because this crate
//! must not depend on libc or nix; a test of the `lrpm` crate holds it equal
//! to nix's names for every signal nix knows.

use std::fmt;
use std::time::Duration;

/// A duration in its human form: see [`duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// The human form of `d`: milliseconds below a second (`250ms`), seconds
/// with at most one decimal below a minute (`4s`, `1.5s`), and above that
/// its two largest units, the second one on two digits (`2m08s`, `3h05m`,
/// `2d04h`). Every unit is truncated, never rounded up, so that a value
/// never shows as the next unit's `60` (`59.96s` is `59.9s`).
pub fn duration(d: Duration) -> HumanDuration {
    HumanDuration(d)
}

impl HumanDuration {
    /// The human form of a number of seconds, as the status document's
    /// times give them: a negative number (a clock that stepped back) or
    /// one that is not finite shows as zero.
    pub fn from_secs_f64(seconds: f64) -> Self {
        Self(Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or_default())
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        const DAY: u64 = 24 * HOUR;
        let s = self.0.as_secs();
        match s {
            0 => write!(f, "{}ms", self.0.subsec_millis()),
            1..MINUTE => match self.0.subsec_millis() / 100 {
                0 => write!(f, "{s}s"),
                tenths => write!(f, "{s}.{tenths}s"),
            },
            MINUTE..HOUR => write!(f, "{}m{:02}s", s / MINUTE, s % MINUTE),
            HOUR..DAY => write!(f, "{}h{:02}m", s / HOUR, s % HOUR / MINUTE),
            _ => write!(f, "{}d{:02}h", s / DAY, s % DAY / HOUR),
        }
    }
}

/// A signal number in its human form: see [`signal_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalName(pub i32);

/// The name of Linux signal number `n`: `SIGKILL` for the standard signals
/// 1 to 31, `SIGRTMIN`, `SIGRTMIN+k` and `SIGRTMAX` for the real-time ones,
/// `signal N` for any other number.
///
/// The real-time names count from glibc's `SIGRTMIN`, 34, as `kill -l` and
/// glibc's `strsignal` do: the kernel's first two real-time signals, 32 and
/// 33, are glibc's own (thread cancellation, `setxid`) and have no name.
/// The numbers are those of every Linux architecture but Alpha, MIPS,
/// PA-RISC and SPARC, which lrpm does not support.
pub fn signal_name(n: i32) -> SignalName {
    SignalName(n)
}

/// The standard signals' names, by number (1 at index 0).
const STANDARD: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// glibc's `SIGRTMIN`: the first real-time signal a program can use.
const RTMIN: i32 = 34;
/// The kernel's `SIGRTMAX`: the last signal number.
const RTMAX: i32 = 64;

impl SignalName {
    /// The name of a standard signal (1 to 31), if this is one.
    pub fn standard(self) -> Option<&'static str> {
        let index = usize::try_from(self.0).ok()?.checked_sub(1)?;
        STANDARD.get(index).copied()
    }
}

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.standard() {
            return f.write_str(name);
        }
        match self.0 {
            RTMIN => f.write_str("SIGRTMIN"),
            RTMAX => f.write_str("SIGRTMAX"),
            n @ RTMIN..RTMAX => write!(f, "SIGRTMIN+{}", n - RTMIN),
            n => write!(f, "signal {n}"),
        }
    }
}

/// How much of a command, a configuration or any outside text lrpm writes
/// in one log line: 256 bytes, then how large the whole is ([`cut`]).
pub const LOG_TEXT_MAX: usize = 256;

/// A value written at most [`LOG_TEXT_MAX`] bytes long: see [`cut`].
#[derive(Debug, Clone, Copy)]
pub struct Cut<T>(pub T);

/// `value` as `Display` writes it, cut after [`LOG_TEXT_MAX`] bytes (on a
/// character boundary) and followed by its whole size when it was cut:
/// `php worker.php aaaa… (1.0 MB)`. The one form in which lrpm logs a
/// command, a configuration or any text from outside, so that a 1 MB
/// command line costs a log line of 270 bytes and not 1 MB at every start.
/// Writing it formats `value` once, without an intermediate string.
pub fn cut<T: fmt::Display>(value: T) -> Cut<T> {
    Cut(value)
}

impl<T: fmt::Display> fmt::Display for Cut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Passes the first LOG_TEXT_MAX bytes on and counts the rest.
        struct Bounded<'a, 'b> {
            out: &'a mut fmt::Formatter<'b>,
            total: usize,
        }
        impl fmt::Write for Bounded<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let room = LOG_TEXT_MAX.saturating_sub(self.total);
                self.total += s.len();
                if room == 0 {
                    return Ok(());
                }
                let mut end = room.min(s.len());
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                self.out.write_str(&s[..end])
            }
        }
        let mut bounded = Bounded { out: f, total: 0 };
        fmt::write(&mut bounded, format_args!("{}", self.0))?;
        let total = bounded.total;
        if total > LOG_TEXT_MAX {
            write!(f, "… ({})", size(total))?;
        }
        Ok(())
    }
}

/// A moment as RFC 3339 text in UTC with microseconds:
/// `2026-12-06T20:01:02.123456Z` (the form of the JSON log's timestamps):
/// see [`timestamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub Duration);

/// The moment `since_epoch` after the Unix epoch, as RFC 3339 text: see
/// [`Timestamp`]. The caller reads the clock (this crate never does).
pub fn timestamp(since_epoch: Duration) -> Timestamp {
    Timestamp(since_epoch)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let (days, of_day) = (secs / 86_400, secs % 86_400);
        // Howard Hinnant's days_from_civil, inverted (civil_from_days),
        // on unsigned days since 1970-01-01 shifted to an era of 400
        // years that begins on 0000-03-01.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60,
            self.0.subsec_micros()
        )
    }
}

/// `n` followed by `noun`, in the plural unless `n` is 1: `1 job`,
/// `3 jobs`, `0 jobs` (for nouns whose plural takes an `s`).
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A size in bytes, in its human form: `812 B`, `4.0 kB`, `1.0 MB`,
/// `2.5 GB` (powers of 1000, one decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub usize);

/// The human form of `bytes`: see [`HumanSize`].
pub fn size(bytes: usize) -> HumanSize {
    HumanSize(bytes)
}

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0 as f64;
        match self.0 {
            0..1_000 => write!(f, "{} B", self.0),
            1_000..1_000_000 => write!(f, "{:.1} kB", n / 1e3),
            1_000_000..1_000_000_000 => write!(f, "{:.1} MB", n / 1e6),
            _ => write!(f, "{:.1} GB", n / 1e9),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn timestamps_are_rfc_3339_in_utc() {
        let at = |secs: u64, micros: u32| timestamp(Duration::new(secs, micros * 1000)).to_string();
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(1_796_587_262, 123_456), "2026-12-06T20:01:02.123456Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
    }

    proptest::proptest! {
        /// Day by day, the calendar advances as it should: the day after
        /// the last of a month is the first of the next one.
        #[test]
        fn consecutive_days_are_consecutive_dates(day in 0u64..2_932_800) {
            let date = |d: u64| -> (u64, u64, u64) {
                let text = timestamp(Duration::from_secs(d * 86_400)).to_string();
                let mut parts = text[..10].split('-').map(|p| p.parse::<u64>().expect("digits"));
                let mut next = || parts.next().expect("a part");
                (next(), next(), next())
            };
            let (y, m, d) = date(day);
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let last = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let expected = if d < last {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            proptest::prop_assert_eq!(date(day + 1), expected);
        }
    }

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(count(1, "job"), "1 job");
        assert_eq!(count(0, "job"), "0 jobs");
        assert_eq!(count(2, "worker"), "2 workers");
    }

    #[test]
    fn long_text_is_cut_with_its_size() {
        let short = "php worker.php --queue=a";
        assert_eq!(super::cut(short).to_string(), short);
        let exact = "x".repeat(super::LOG_TEXT_MAX);
        assert_eq!(super::cut(&exact).to_string(), exact);
        let long = format!("sh -c {}", "y".repeat(1_000_000));
        let shown = super::cut(&long).to_string();
        assert_eq!(shown.len(), super::LOG_TEXT_MAX + "… (1.0 MB)".len());
        assert!(shown.starts_with("sh -c yyy"), "{shown}");
        assert!(shown.ends_with("y… (1.0 MB)"), "{shown}");
        // A cut never splits a character.
        let wide = "é".repeat(200);
        let shown = super::cut(&wide).to_string();
        assert!(shown.starts_with(&"é".repeat(128)), "{shown}");
        assert!(shown.ends_with("é… (400 B)"), "{shown}");
        assert_eq!(super::size(999).to_string(), "999 B");
        assert_eq!(super::size(131_072).to_string(), "131.1 kB");
        assert_eq!(super::size(2_500_000_000).to_string(), "2.5 GB");
    }

    use super::*;

    fn human(d: Duration) -> String {
        duration(d).to_string()
    }

    #[test]
    fn durations_below_a_second_are_milliseconds() {
        assert_eq!(human(Duration::ZERO), "0ms");
        assert_eq!(human(Duration::from_micros(1500)), "1ms");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(999)), "999ms");
    }

    #[test]
    fn durations_below_a_minute_are_seconds_with_one_decimal_at_most() {
        assert_eq!(human(Duration::from_secs(1)), "1s");
        assert_eq!(human(Duration::from_secs(4)), "4s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_millis(4050)), "4s");
        assert_eq!(human(Duration::from_millis(42_900)), "42.9s");
        assert_eq!(human(Duration::from_millis(59_999)), "59.9s");
    }

    #[test]
    fn longer_durations_are_their_two_largest_units() {
        assert_eq!(human(Duration::from_secs(60)), "1m00s");
        assert_eq!(human(Duration::from_millis(128_900)), "2m08s");
        assert_eq!(human(Duration::from_secs(3599)), "59m59s");
        assert_eq!(human(Duration::from_secs(3600)), "1h00m");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 5 * 60 + 59)), "3h05m");
        assert_eq!(human(Duration::from_secs(6 * 3600)), "6h00m");
        assert_eq!(human(Duration::from_secs(86_399)), "23h59m");
        assert_eq!(human(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d04h");
        assert_eq!(human(Duration::from_secs(400 * 86_400)), "400d00h");
        assert_eq!(human(Duration::MAX), "213503982334601d07h");
    }

    #[test]
    fn seconds_from_the_status_document() {
        let human = |s: f64| HumanDuration::from_secs_f64(s).to_string();
        assert_eq!(human(42.9), "42.9s");
        assert_eq!(human(187.0), "3m07s");
        assert_eq!(human(0.25), "250ms");
        assert_eq!(human(-5.0), "0ms");
        assert_eq!(human(f64::NAN), "0ms");
        assert_eq!(human(f64::INFINITY), "0ms");
    }

    #[test]
    fn standard_signals_have_their_names() {
        let name = |n| signal_name(n).to_string();
        assert_eq!(name(1), "SIGHUP");
        assert_eq!(name(9), "SIGKILL");
        assert_eq!(name(15), "SIGTERM");
        assert_eq!(name(17), "SIGCHLD");
        assert_eq!(name(18), "SIGCONT");
        assert_eq!(name(20), "SIGTSTP");
        assert_eq!(name(21), "SIGTTIN");
        assert_eq!(name(22), "SIGTTOU");
        assert_eq!(name(31), "SIGSYS");
        for n in 1..=31 {
            let standard = signal_name(n).standard().expect("a standard signal");
            assert_eq!(name(n), standard);
            assert!(standard.starts_with("SIG"), "{standard}");
        }
    }

    #[test]
    fn real_time_signals_count_from_sigrtmin() {
        let name = |n| signal_name(n).to_string();
        assert_eq!(name(34), "SIGRTMIN");
        assert_eq!(name(35), "SIGRTMIN+1");
        assert_eq!(name(63), "SIGRTMIN+29");
        assert_eq!(name(64), "SIGRTMAX");
        assert_eq!(signal_name(35).standard(), None);
    }

    #[test]
    fn other_numbers_are_numbers() {
        let name = |n| signal_name(n).to_string();
        assert_eq!(name(0), "signal 0");
        assert_eq!(name(-1), "signal -1");
        assert_eq!(name(32), "signal 32");
        assert_eq!(name(33), "signal 33");
        assert_eq!(name(65), "signal 65");
        assert_eq!(name(i32::MIN), format!("signal {}", i32::MIN));
    }
}
