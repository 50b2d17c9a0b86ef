//! What the report says about the machine and the software measured.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// The machine and the versions a run measured.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `nproc`: the CPUs this process may run on.
    pub nproc: usize,
    /// The CPU model, from /proc/cpuinfo.
    pub cpu: String,
    /// Total memory, in GiB.
    pub memory_gib: f64,
    /// The kernel release.
    pub kernel: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `lrpm --version`, and the commit the workspace is at.
    pub lrpm: String,
}

impl Machine {
    /// Looks everything up; `lrpm` is the binary measured, `workspace` the
    /// checkout it was built from.
    pub fn probe(lrpm: &Path, workspace: &Path) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, model)| model.trim().to_owned());
        let memory_gib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            })
            .map_or(f64::NAN, |kib| kib / 1024.0 / 1024.0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
        let mut lrpm_version = output(Command::new(lrpm).arg("--version"))
            .unwrap_or_else(|| "lrpm (version unknown)".into());
        if let Some(commit) = output(Command::new("git").arg("-C").arg(workspace).args([
            "rev-parse",
            "--short",
            "HEAD",
        ])) {
            let dirty = output(Command::new("git").arg("-C").arg(workspace).args([
                "status",
                "--porcelain",
                "--",
                "crates",
                "Cargo.toml",
            ]))
            .is_some_and(|s| !s.is_empty());
            lrpm_version.push_str(&format!(
                ", built from commit {commit}{}",
                if dirty {
                    " with uncommitted changes"
                } else {
                    ""
                }
            ));
        }
        Self {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            memory_gib,
            kernel,
            rustc: output(Command::new("rustc").arg("--version"))
                .unwrap_or_else(|| "unknown".into()),
            lrpm: lrpm_version,
        }
    }
}

/// The trimmed stdout of a command that succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_day_numbers() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
