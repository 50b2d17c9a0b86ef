//! The connection slots: who holds them, what each holder is doing, and
//! which one gives way to a newcomer.
//!
//! Every admitted connection holds a [`Slot`] for its lifetime. A peer uid
//! holds at most [`SHARE`] slots. Over its share, a new connection of that
//! uid takes the place of the uid's connection that has waited longest
//! without sending a request (an idle one first, then one in the middle of
//! a request line, then one whose answer its client does not read); a
//! connection whose request is with the event loop is never evicted. Only
//! when all of the uid's connections are there is the newcomer refused. So a client that floods the socket, even as root,
//! only ever evicts its own connections, and a fresh `lrpmctl status`, the
//! newest connection there is, gets its slot and keeps it long enough to be
//! answered.
//!
//! Answers waiting for a client to read them are bounded too: a uid's
//! connections hold at most [`ANSWER_BUDGET`] bytes of unread answers; a
//! new answer over it evicts the uid's oldest unread ones. Without this, a
//! client asking for `status` on each of its connections and reading none
//! held [`SHARE`] status documents (5 MB each at 10,000 jobs) in lrpm.
//!
//! Only root and lrpm's own uid are admitted (the accept loop checks that
//! first), so the two shares are the whole of [`MAX_CONNECTIONS`], and the
//! other uid can never take root's half.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::msg::MAX_CONNECTIONS;

/// How many connections one peer uid may hold at once.
pub(crate) const SHARE: usize = MAX_CONNECTIONS / 2;

/// How many bytes of written-but-unread answers one uid's connections may
/// hold at once.
pub(super) const ANSWER_BUDGET: usize = 16 * 1024 * 1024;

/// What a connection is doing, for the choice of whom to evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Waiting for a request; nothing of one has arrived. Evicted first.
    Idle,
    /// Part of a request line has arrived. Evicted after the idle ones.
    Partial,
    /// An answer is being written, and the client may not be reading it.
    /// Evicted last.
    Writing,
    /// A complete request is with the event loop, which answers at once.
    /// Never evicted.
    Busy,
}

/// One admitted connection, as the table knows it.
#[derive(Debug)]
struct Entry {
    /// The peer's uid.
    uid: u32,
    /// What it is doing.
    phase: Phase,
    /// When it entered `phase`.
    since: Instant,
    /// The size of the answer it is writing, in [`Phase::Writing`].
    held: usize,
    /// Woken when the connection is evicted.
    evicted: Arc<Notify>,
}

/// The table of admitted connections.
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// The connections by id, and the next id.
    inner: Mutex<(u64, HashMap<u64, Entry>)>,
}

/// A connection's place in [`Slots`], given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    /// The table.
    slots: Arc<Slots>,
    /// This connection's id in it.
    id: u64,
    /// Woken when this connection is evicted to admit a newer one.
    pub(super) evicted: Arc<Notify>,
}

impl Slots {
    /// Admits a connection from `uid` at `now`, evicting the uid's
    /// longest-waiting connection when it holds its whole share; `None`
    /// when every connection of the uid is being answered.
    pub(super) fn admit(self: &Arc<Self>, uid: u32, now: Instant) -> Option<Slot> {
        let mut guard = self.lock();
        let (next, entries) = &mut *guard;
        if entries.values().filter(|e| e.uid == uid).count() >= SHARE {
            let id = victim(
                entries.iter().map(|(id, e)| (*id, e.uid, e.phase, e.since)),
                uid,
            )?;
            if let Some(entry) = entries.remove(&id) {
                entry.evicted.notify_one();
            }
        }
        let id = *next;
        *next += 1;
        let evicted = Arc::new(Notify::new());
        entries.insert(
            id,
            Entry {
                uid,
                phase: Phase::Idle,
                since: now,
                held: 0,
                evicted: Arc::clone(&evicted),
            },
        );
        Some(Slot {
            slots: Arc::clone(self),
            id,
            evicted,
        })
    }

    /// How many connections hold a slot.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().1.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Entry>)> {
        // A panic while holding this lock leaves the table consistent: every
        // change is a single insert, remove or field write.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Slot {
    /// Records that the connection entered `phase` at `now`, unless it is
    /// in it already.
    pub(super) fn set(&self, phase: Phase, now: Instant) {
        if let Some(entry) = self.slots.lock().1.get_mut(&self.id) {
            if entry.phase != phase {
                entry.phase = phase;
                entry.since = now;
                entry.held = 0;
            }
        }
    }

    /// Records that the connection starts writing an answer of `bytes` at
    /// `now`; when its uid's answers then hold more than [`ANSWER_BUDGET`],
    /// evicts the uid's other writing connections, oldest first, until
    /// they fit (this one is never evicted for its own answer).
    pub(super) fn writing(&self, bytes: usize, now: Instant) {
        let mut guard = self.slots.lock();
        let entries = &mut guard.1;
        let Some(entry) = entries.get_mut(&self.id) else {
            return;
        };
        entry.phase = Phase::Writing;
        entry.since = now;
        entry.held = bytes;
        let uid = entry.uid;
        let mut held: usize = entries
            .values()
            .filter(|e| e.uid == uid)
            .map(|e| e.held)
            .sum();
        while held > ANSWER_BUDGET {
            let Some((&id, _)) = entries
                .iter()
                .filter(|(id, e)| **id != self.id && e.uid == uid && e.phase == Phase::Writing)
                .min_by_key(|(id, e)| (e.since, **id))
            else {
                break;
            };
            if let Some(gone) = entries.remove(&id) {
                held -= gone.held;
                gone.evicted.notify_one();
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().1.remove(&self.id);
    }
}

/// Of `entries` (id, uid, phase, since), the connection of `uid` to evict:
/// the idle one that has waited longest, else the partial one, else the
/// writing one that has waited longest; never a busy one.
fn victim(entries: impl Iterator<Item = (u64, u32, Phase, Instant)>, uid: u32) -> Option<u64> {
    entries
        .filter(|&(_, u, phase, _)| u == uid && phase != Phase::Busy)
        .min_by_key(|&(id, _, phase, since)| (phase, since, id))
        .map(|(id, ..)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_victim_is_the_longest_idle_of_the_same_uid() {
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        let entries = [
            (1, 0, Phase::Busy, at(0)),
            (2, 0, Phase::Partial, at(1)),
            (6, 0, Phase::Writing, at(0)),
            (3, 1000, Phase::Idle, at(2)),
            (4, 0, Phase::Idle, at(5)),
            (5, 0, Phase::Idle, at(3)),
        ];
        assert_eq!(victim(entries.into_iter(), 0), Some(5));
        assert_eq!(victim(entries.into_iter(), 1000), Some(3));
        assert_eq!(victim(entries.into_iter(), 7), None);
        // With no idle one, the oldest partial request goes, then an answer
        // being written; busy ones never.
        assert_eq!(victim(entries[..3].iter().copied(), 0), Some(2));
        assert_eq!(victim([entries[0], entries[2]].into_iter(), 0), Some(6));
        assert_eq!(victim(entries[..1].iter().copied(), 0), None);
    }

    #[test]
    fn a_uid_over_its_share_evicts_its_own_oldest_idle_connection() {
        let slots = Arc::new(Slots::default());
        let t = Instant::now();
        let mut root: Vec<Slot> = (0..SHARE)
            .map(|i| {
                slots
                    .admit(0, t + Duration::from_millis(i as u64))
                    .expect("within the share")
            })
            .collect();
        let other = slots.admit(1000, t).expect("the other uid's share is free");
        // The first root connection is mid-request, the second idle: the
        // second gives way.
        root[0].set(Phase::Partial, t);
        let newcomer = slots
            .admit(0, t + Duration::from_secs(1))
            .expect("admitted");
        assert_eq!(slots.len(), SHARE + 1);
        let evicted = root.remove(1);
        assert!(
            !slots.lock().1.contains_key(&evicted.id),
            "the oldest idle connection was evicted"
        );
        // Its permit was stored: the task sees it even if it was not waiting.
        {
            let woken = evicted.evicted.notified();
            tokio::pin!(woken);
            assert!(is_ready(woken));
        }
        drop(evicted);
        assert_eq!(slots.len(), SHARE + 1);
        // When all are busy, a newcomer is refused.
        for slot in root.iter().chain([&newcomer]) {
            slot.set(Phase::Busy, t);
        }
        assert!(slots.admit(0, t + Duration::from_secs(2)).is_none());
        drop(other);
        assert_eq!(slots.len(), SHARE);
    }

    #[test]
    fn unread_answers_over_the_budget_evict_the_oldest_writers_of_the_uid() {
        let slots = Arc::new(Slots::default());
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        let third = ANSWER_BUDGET / 3 + 1;
        let root: Vec<Slot> = (0..4)
            .map(|_| slots.admit(0, t).expect("admitted"))
            .collect();
        let other = slots.admit(1000, t).expect("admitted");
        other.writing(ANSWER_BUDGET, at(0));
        root[0].writing(third, at(1));
        root[1].writing(third, at(2));
        assert_eq!(slots.len(), 5, "two thirds fit");
        // The third answer is over the budget: the oldest writer goes, and
        // only root's: the other uid's full budget is its own.
        root[2].writing(third, at(3));
        assert_eq!(slots.len(), 4);
        assert!(!slots.lock().1.contains_key(&root[0].id));
        {
            let woken = root[0].evicted.notified();
            tokio::pin!(woken);
            assert!(is_ready(woken));
        }
        // An answer that was read gives its bytes back.
        root[1].set(Phase::Idle, at(4));
        root[3].writing(third, at(5));
        assert_eq!(slots.len(), 4);
        // One answer larger than the whole budget evicts every other writer
        // of the uid, never itself.
        root[1].writing(ANSWER_BUDGET * 2, at(6));
        assert_eq!(slots.len(), 2);
        assert!(slots.lock().1.contains_key(&root[1].id));
        assert!(slots.lock().1.contains_key(&other.id));
    }

    /// Whether a pinned `Notified` is ready, polled once without a runtime.
    fn is_ready(mut notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        std::future::Future::poll(notified.as_mut(), &mut cx).is_ready()
    }
}
