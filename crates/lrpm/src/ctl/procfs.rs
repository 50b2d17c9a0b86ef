//! CPU and memory of a process, read from `/proc` (as `ps` does, without
//! running it).

use std::io::Read;

/// What the status table shows of a running process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU time over the time since the process started, in percent of one
    /// core (so above 100 for a busy multi-threaded process), as `ps` shows.
    pub cpu_percent: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
}

/// The fields of `/proc/PID/stat` the table needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R`, `S`, `Z`…).
    pub state: u8,
    /// User CPU time, in clock ticks.
    pub utime: u64,
    /// System CPU time, in clock ticks.
    pub stime: u64,
    /// When the process started, in clock ticks after boot.
    pub starttime: u64,
    /// Resident set size, in pages (the same count as `statm`'s second
    /// field).
    pub rss_pages: u64,
}

/// Parses the contents of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may itself hold spaces,
/// parentheses and bytes that are not UTF-8, so the fields are counted from
/// its last `)`.
pub fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let name_end = bytes.iter().rposition(|&b| b == b')')?;
    let after_name = std::str::from_utf8(&bytes[name_end + 1..]).ok()?;
    let fields: Vec<&str> = after_name.split_ascii_whitespace().collect();
    // `fields[0]` is field 3 of proc(5).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        state: *fields.first()?.as_bytes().first()?,
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        rss_pages: field(24)?,
    })
}

/// Reads `/proc/PID/stat`.
fn read_stat(pid: u32) -> Option<Stat> {
    // The file is one line of a few hundred bytes; a stack buffer saves an
    // allocation per process, which counts for a table of thousands.
    let mut buf = [0u8; 2048];
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    parse_stat(&buf[..len])
}

/// Reads process usage; set up once per table, so that every row is
/// measured against the same clock.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    ticks: f64,
    /// The page size in bytes.
    page: u64,
    /// Seconds since boot, from `/proc/uptime`.
    uptime: Option<f64>,
}

impl Sampler {
    /// A sampler for now.
    pub fn now() -> Sampler {
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|text| text.split_ascii_whitespace().next()?.parse().ok());
        Sampler {
            ticks: rustix::param::clock_ticks_per_second() as f64,
            page: rustix::param::page_size() as u64,
            uptime,
        }
    }

    /// The usage of process `pid`, if it can be read.
    pub fn usage(&self, pid: u32) -> Option<Usage> {
        let stat = read_stat(pid)?;
        let elapsed = self.uptime? - stat.starttime as f64 / self.ticks;
        let cpu = (stat.utime + stat.stime) as f64 / self.ticks;
        Some(Usage {
            cpu_percent: if elapsed > 0.0 {
                100.0 * cpu / elapsed
            } else {
                0.0
            },
            rss_bytes: stat.rss_pages * self.page,
        })
    }

    /// The usage of each process of `pids`, in order. Reading `/proc` costs
    /// some 20 µs a process, mostly in the kernel, so a large table is read
    /// on every core at once.
    pub fn usages(&self, pids: &[Option<u32>]) -> Vec<Option<Usage>> {
        const MIN_PER_THREAD: usize = 500;
        let one = |pid: &Option<u32>| pid.and_then(|pid| self.usage(pid));
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(pids.len() / MIN_PER_THREAD)
            .min(8);
        if threads <= 1 {
            return pids.iter().map(one).collect();
        }
        let chunk = pids.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = pids
                .chunks(chunk)
                .map(|part| {
                    (
                        part.len(),
                        scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()),
                    )
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|(len, handle)| handle.join().unwrap_or_else(|_| vec![None; len]))
                .collect()
        })
    }
}

/// Whether process `pid` exists and is not a zombie (a zombie has exited; it
/// only waits for its parent to collect its status).
pub fn pid_alive(pid: u32) -> bool {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(raw) {
        Ok(()) | Err(rustix::io::Errno::PERM) => {}
        Err(_) => return false,
    }
    // It exists (the signal test said so); unless /proc says it is a
    // zombie, it is alive.
    read_stat(pid).is_none_or(|stat| stat.state != b'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                        250 50 0 0 20 0 1 0 5000 12345678 300 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn parses_stat_past_an_odd_name() {
        assert_eq!(
            parse_stat(STAT.as_bytes()),
            Some(Stat {
                state: b'S',
                utime: 250,
                stime: 50,
                starttime: 5000,
                rss_pages: 300,
            })
        );
        assert_eq!(parse_stat(b"1 (x) S 1 2"), None);
        assert_eq!(parse_stat(b""), None);
        let odd = STAT
            .replace("my (odd) name", "\u{fffd}")
            .replace('\u{fffd}', "\u{ff}");
        let mut bytes = odd.into_bytes();
        bytes[6] = 0xff;
        assert_eq!(parse_stat(&bytes).map(|s| s.utime), Some(250));
    }

    #[test]
    fn measures_this_process() {
        let sampler = Sampler::now();
        let usage = sampler.usage(std::process::id()).expect("readable");
        assert!(usage.rss_bytes > 0);
        assert!(usage.cpu_percent >= 0.0);
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        let pids = vec![Some(std::process::id()); 2000];
        let usages = sampler.usages(&pids);
        assert_eq!(usages.len(), 2000);
        assert!(usages.iter().all(Option::is_some));
    }
}
