//! lrpm's standing with the kernel's OOM killer: its own `oom_score_adj`,
//! set low at start so that a farm that runs out of memory loses workers
//! (which lrpm restarts) and not the supervisor of all of them, and the
//! value every child is put back to before it runs its program.
//!
//! A child inherits its parent's `oom_score_adj` (and the floor an
//! unprivileged process may lower it to, `oom_score_adj_min`), so without
//! more every worker would share lrpm's protection. The spawn's child
//! writes the workers' value to `/proc/self/oom_score_adj` before it
//! switches identity (the `spawn` module's `OomScoreAdj` step), with a
//! value formatted by the parent: while it is still lrpm's user, so a
//! privileged lrpm also resets the child's floor, and a worker cannot lower
//! itself back to lrpm's value.

use std::sync::atomic::{AtomicI32, Ordering};

/// lrpm's own `oom_score_adj` unless told otherwise: -900, as systemd's
/// own daemons commonly run (`OOMScoreAdjust=-900` for journald, udevd):
/// the kernel then picks lrpm only when nothing but lrpm and other such
/// daemons is left, while -1000 (never) is kept for what must not be
/// killed at all.
pub const DEFAULT_SUPERVISOR: i32 = -900;

/// The lowest value the kernel accepts (never killed).
pub const MIN: i32 = -1000;
/// The highest value the kernel accepts (killed first).
pub const MAX: i32 = 1000;

const PATH: &str = "/proc/self/oom_score_adj";

/// No value for the workers: they keep what they inherit.
const UNSET: i32 = i32::MIN;

/// The value each child writes before its program runs ([`UNSET`]: none).
static WORKER: AtomicI32 = AtomicI32::new(UNSET);

/// This process's `oom_score_adj`.
pub fn read_own() -> std::io::Result<i32> {
    let text = std::fs::read_to_string(PATH)?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Sets this process's `oom_score_adj` (lowering it needs
/// `CAP_SYS_RESOURCE`, raising it does not).
pub fn write_own(value: i32) -> std::io::Result<()> {
    std::fs::write(PATH, value.to_string())
}

/// Makes every later spawn's child set its `oom_score_adj` to `value`
/// before it runs its program (`None`: it keeps lrpm's).
pub fn set_worker_value(value: Option<i32>) {
    WORKER.store(value.unwrap_or(UNSET), Ordering::Relaxed);
}

/// The value a child must write, formatted into `buf`: the bytes to
/// write, or `None` if it keeps what it inherits.
pub(crate) fn worker_value(buf: &mut [u8; 12]) -> Option<&[u8]> {
    let value = WORKER.load(Ordering::Relaxed);
    if value == UNSET {
        return None;
    }
    let text = value.to_string();
    let len = text.len().min(buf.len());
    buf[..len].copy_from_slice(&text.as_bytes()[..len]);
    Some(&buf[..len])
}

/// What [`setup`] did, for lrpm's log.
#[derive(Debug)]
pub struct Setup {
    /// lrpm's value when it started.
    pub before: i32,
    /// lrpm's value now.
    pub now: i32,
    /// Why lrpm could not set its own value, if it could not (a lack of
    /// privilege, most often).
    pub refused: Option<std::io::Error>,
    /// The value every worker starts with.
    pub workers: i32,
}

/// Sets lrpm's own `oom_score_adj` to `own` (`None`: leaves it), and the
/// workers' to `workers` (`None`: the value lrpm started with). Refused
/// privilege is not an error: it is reported in [`Setup::refused`] and
/// lrpm goes on with what it has; the workers' value is then, unless
/// `workers` says otherwise, raised by what lrpm could not lower its own
/// (from 0, -900 refused: 900), since the kernel picks by comparing them:
/// the largest of memory use plus `oom_score_adj` thousandths of the
/// memory available.
pub fn setup(own: Option<i32>, workers: Option<i32>) -> std::io::Result<Setup> {
    let before = read_own()?;
    let refused = match own {
        Some(value) if value != before => write_own(value).err(),
        _ => None,
    };
    let now = read_own()?;
    // The OOM killer compares values: where lrpm could not go down, its
    // workers go up by as much, so that one of them is still picked first.
    let raised = match own {
        Some(own) if refused.is_some() && own < now => (now + (now - own)).min(MAX),
        _ => before,
    };
    let workers = workers.unwrap_or(raised);
    set_worker_value((workers != now).then_some(workers));
    Ok(Setup {
        before,
        now,
        refused,
        workers,
    })
}

/// Parses an `oom_score_adj` value: an integer from [`MIN`] to [`MAX`].
pub fn parse(text: &str) -> Result<i32, String> {
    let value: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("not an integer: {text:?}"))?;
    if !(MIN..=MAX).contains(&value) {
        return Err(format!("must be from {MIN} to {MAX}, got {value}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_the_kernels_range() {
        assert_eq!(parse("-900"), Ok(-900));
        assert_eq!(parse("1000"), Ok(1000));
        assert_eq!(parse("-1000"), Ok(-1000));
        assert!(parse("-1001").is_err());
        assert!(parse("1001").is_err());
        assert!(parse("keep").is_err());
    }

    #[test]
    fn own_value_is_readable() {
        let value = read_own().expect("read");
        assert!((MIN..=MAX).contains(&value));
        // Raising needs no privilege; writing the same value back is a
        // no-op either way.
        write_own(value).expect("write back");
    }
}
