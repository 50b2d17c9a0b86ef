//! The in-memory ring of each job's recent output, for `lrpmctl logs`.
//!
//! # Theory of operation
//!
//! The output forwarding (the `output` module) hands every line of a
//! worker that it reads in lrpm's own process to [`LogRings::push`], with
//! or without `--log-dir`. Each job has one ring of at most `capacity`
//! bytes (`--log-buffer`, 64 KiB by default), counting each line's bytes
//! plus [`LINE_OVERHEAD`]: pushing a line first drops the oldest ones until
//! it fits, so a worker that prints far more than the ring holds keeps only
//! its newest lines and lrpm's memory stays bounded. A line longer than the
//! ring is kept cut to it. The control request `logs` takes a copy of a
//! job's newest lines ([`LogRings::last`]) under the same short lock; no
//! lock is held across an await or a write. A job's ring is kept until
//! lrpm exits, also after the job is removed.
//!
//! Following (`lrpmctl logs -f`): [`LogRings::follow`] takes the newest
//! lines and subscribes to the job's new ones under one lock, so that no
//! line is missed or sent twice. New lines go to the followers through a
//! broadcast channel of [`FOLLOW_QUEUE`] lines, created at the first
//! follower and dropped with the last: [`LogRings::push`] never waits for
//! a follower; one that falls more than [`FOLLOW_QUEUE`] lines behind
//! loses the oldest of them and is told how many
//! (`broadcast::error::RecvError::Lagged`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// What a kept line costs besides its bytes, so that a flood of empty
/// lines is bounded too.
pub(crate) const LINE_OVERHEAD: usize = 32;

/// How many new lines may wait for the slowest follower of a job before it
/// loses the oldest of them.
pub(crate) const FOLLOW_QUEUE: usize = 256;

/// The default size of a job's ring (`--log-buffer`).
pub(crate) const DEFAULT_CAPACITY: usize = 64 * 1024;

/// One job's recent lines.
#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<Box<[u8]>>,
    /// The lines' cost: their bytes plus [`LINE_OVERHEAD`] each.
    bytes: usize,
    /// Where new lines go while someone follows the job.
    followers: Option<broadcast::Sender<Arc<str>>>,
}

/// Every job's ring; clones share them.
#[derive(Debug, Clone)]
pub(crate) struct LogRings {
    rings: Arc<Mutex<HashMap<Arc<str>, Ring>>>,
    capacity: usize,
}

impl LogRings {
    /// Rings of `capacity` bytes each; 0 keeps nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        LogRings {
            rings: Arc::default(),
            capacity,
        }
    }

    /// Keeps `line` (without its newline) as `job`'s newest, dropping its
    /// oldest lines until the ring fits its capacity.
    pub(crate) fn push(&self, job: &Arc<str>, line: &[u8]) {
        let Some(room) = self.capacity.checked_sub(LINE_OVERHEAD) else {
            return;
        };
        let line = &line[..line.len().min(room)];
        let cost = line.len() + LINE_OVERHEAD;
        let Ok(mut rings) = self.rings.lock() else {
            return;
        };
        let ring = match rings.get_mut(job) {
            Some(ring) => ring,
            None => rings.entry(job.clone()).or_default(),
        };
        while ring.bytes + cost > self.capacity {
            match ring.lines.pop_front() {
                Some(old) => ring.bytes -= old.len() + LINE_OVERHEAD,
                None => break,
            }
        }
        if let Some(followers) = &ring.followers {
            if followers.receiver_count() == 0 {
                ring.followers = None;
            } else {
                let _ = followers.send(String::from_utf8_lossy(line).into());
            }
        }
        ring.lines.push_back(line.into());
        ring.bytes += cost;
    }

    /// As [`LogRings::last`] (an empty list for a job that has no ring
    /// yet), and the job's lines pushed from now on.
    pub(crate) fn follow(
        &self,
        job: &str,
        n: Option<u64>,
    ) -> Option<(Vec<String>, broadcast::Receiver<Arc<str>>)> {
        let mut rings = self.rings.lock().ok()?;
        let ring = match rings.get_mut(job) {
            Some(ring) => ring,
            None => rings.entry(job.into()).or_default(),
        };
        let rx = match &ring.followers {
            Some(followers) => followers.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(FOLLOW_QUEUE);
                ring.followers = Some(tx);
                rx
            }
        };
        Some((newest(ring, n), rx))
    }

    /// `job`'s newest `n` lines (every line kept when `None`), oldest
    /// first, bytes that are not UTF-8 replaced by U+FFFD; `None` when
    /// `job` has no ring (it never printed a line).
    pub(crate) fn last(&self, job: &str, n: Option<u64>) -> Option<Vec<String>> {
        let rings = self.rings.lock().ok()?;
        Some(newest(rings.get(job)?, n))
    }

    /// Forgets the rings of the jobs `keep` says no to (jobs removed and
    /// stopped): a farm whose job ids keep changing must not keep a ring
    /// for every id it ever ran. Their followers' streams end.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut rings) = self.rings.lock() {
            rings.retain(|job, _| keep(job));
        }
    }

    /// The bytes `job`'s ring holds, overhead included.
    #[cfg(test)]
    fn bytes(&self, job: &str) -> usize {
        self.rings
            .lock()
            .expect("not poisoned")
            .get(job)
            .map_or(0, |ring| ring.bytes)
    }
}

/// `ring`'s newest `n` lines (all when `None`), oldest first.
fn newest(ring: &Ring, n: Option<u64>) -> Vec<String> {
    let n = n.map_or(ring.lines.len(), |n| {
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(ring.lines.len())
    });
    ring.lines
        .iter()
        .skip(ring.lines.len() - n)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retain_forgets_only_the_rings_it_is_told_to() {
        let rings = LogRings::new(DEFAULT_CAPACITY);
        for job in ["a", "b"] {
            rings.push(&job.into(), b"line");
        }
        rings.retain(|job| job == "b");
        assert_eq!(rings.last("a", None), None);
        assert_eq!(rings.last("b", None), Some(vec!["line".to_owned()]));
    }

    #[test]
    fn the_last_n_lines_come_oldest_first() {
        let rings = LogRings::new(DEFAULT_CAPACITY);
        let job: Arc<str> = "a".into();
        for i in 0..5 {
            rings.push(&job, format!("line {i}").as_bytes());
        }
        assert_eq!(
            rings.last("a", Some(2)),
            Some(vec!["line 3".to_owned(), "line 4".to_owned()])
        );
        assert_eq!(rings.last("a", None).map(|l| l.len()), Some(5));
        assert_eq!(rings.last("a", Some(99)).map(|l| l.len()), Some(5));
        assert_eq!(rings.last("b", Some(2)), None);
    }

    #[test]
    fn a_follower_gets_every_new_line_or_how_many_it_missed() {
        let rings = LogRings::new(DEFAULT_CAPACITY);
        let job: Arc<str> = "a".into();
        rings.push(&job, b"old");
        let (lines, mut rx) = rings.follow("a", Some(5)).expect("a ring");
        assert_eq!(lines, vec!["old".to_owned()]);
        rings.push(&job, b"new");
        assert_eq!(rx.try_recv().as_deref().ok(), Some("new"));
        for i in 0..FOLLOW_QUEUE + 3 {
            rings.push(&job, format!("{i}").as_bytes());
        }
        assert_eq!(
            rx.try_recv().err(),
            Some(broadcast::error::TryRecvError::Lagged(3))
        );
        assert_eq!(rx.try_recv().as_deref().ok(), Some("3"));
        drop(rx);
        rings.push(&job, b"nobody follows");
        assert!(rings.rings.lock().expect("lock")["a"].followers.is_none());
    }

    proptest! {
        #[test]
        fn a_ring_stays_within_its_capacity_and_keeps_the_newest_line(
            capacity in 0usize..512,
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..50),
        ) {
            let rings = LogRings::new(capacity);
            let job: Arc<str> = "j".into();
            for line in &lines {
                rings.push(&job, line);
                prop_assert!(rings.bytes("j") <= capacity);
            }
            if capacity > LINE_OVERHEAD {
                let newest = lines.last().expect("one line at least");
                let kept = rings.last("j", Some(1)).expect("a ring");
                let cut = &newest[..newest.len().min(capacity - LINE_OVERHEAD)];
                prop_assert_eq!(kept, vec![String::from_utf8_lossy(cut).into_owned()]);
            }
        }
    }
}
