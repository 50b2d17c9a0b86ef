//! `/proc/PID/stat`, read as `ps` does: the one parser of it in lrpm.

use std::io::Read;

/// The fields of `/proc/PID/stat` that lrpm and `lrpmctl` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R`, `S`, `Z`…).
    pub state: u8,
    /// The parent's pid.
    pub ppid: u32,
    /// The process group.
    pub pgrp: u32,
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
        ppid: u32::try_from(field(4)?).ok()?,
        pgrp: u32::try_from(field(5)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        rss_pages: field(24)?,
    })
}

/// Reads `/proc/PID/stat`; `None` if the process is gone or the file
/// makes no sense.
pub fn read_stat(pid: u32) -> Option<Stat> {
    // The file is one line of a few hundred bytes; a stack buffer saves an
    // allocation per process, which counts for a table of thousands.
    let mut buf = [0u8; 2048];
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            // procfs hands the whole line to the first read that has room
            // for it (a seq_file): a short read is the end, and the read
            // that would say so is saved (a system call per process).
            Ok(n) if len + n < buf.len() => {
                len += n;
                break;
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    parse_stat(&buf[..len])
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
                ppid: 1,
                pgrp: 1234,
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
    fn a_live_process_is_alive_and_no_pid_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn reads_this_process() {
        let stat = read_stat(std::process::id()).expect("readable");
        assert!(matches!(stat.state, b'R' | b'S'), "{}", stat.state as char);
        assert_eq!(stat.ppid, std::os::unix::process::parent_id());
        assert!(stat.rss_pages > 0);
    }
}
