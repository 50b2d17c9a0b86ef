//! Idle pipes: where a worker's output pipe waits, without a task of its
//! own, until there is something to read in it.
//!
//! # Theory of operation
//!
//! A farm's workers write little or nothing: of 20,000 output pipes (stdout
//! and stderr of 10,000 workers) almost all are empty almost all the time.
//! A task per pipe, waiting on it, costs the task (its header and future),
//! a registration with the runtime and the forwarding state, about 1 KiB
//! each, for nothing. So an empty pipe is *parked* here instead: its
//! descriptor goes into one epoll set of this process's idle pipes,
//! one-shot, with its slot as the event's data, and what its forwarding
//! needs (its payload: the job, the prefix, the stream) waits in that slot.
//! Only the epoll instance's descriptor is registered with the runtime
//! (as `lrpm_process::exits` does for pidfds).
//!
//! One task, the *driver* (started by the owner when [`IdlePipes::park`]
//! says so, and ending once nothing is parked), waits for the set to become
//! readable and hands every pipe it reports, with its payload, back to the
//! owner ([`IdlePipes::wait`]), which starts a task that reads it as before
//! and parks it again once it is empty. A pipe is reported when it has
//! bytes or has been closed by its writers (hang-up), so its end is never
//! missed. Arming a pipe again (`EPOLL_CTL_MOD`) reports it at once if
//! bytes came in between, so no wake-up is lost either. A pipe that cannot
//! be parked (the epoll set cannot be made or takes no more) is read by a
//! task of its own for its whole life, as before.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use lrpm_process::fd::register;
use rustix::event::epoll;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How many pipes one `epoll_wait` takes at most.
const WAKES_PER_WAIT: usize = 256;

/// The idle pipes of a process, each with its payload `T`.
#[derive(Debug)]
pub(crate) struct IdlePipes<T> {
    /// The epoll set, made and registered with the runtime at the first
    /// park; `None` if that failed (pipes are then never parked).
    epoll: OnceLock<Option<AsyncFd<OwnedFd>>>,
    slots: Mutex<Slots<T>>,
}

/// The parked pipes, by the slot their epoll item's data names.
#[derive(Debug)]
struct Slots<T> {
    parked: Vec<Option<(OwnedFd, T)>>,
    /// Empty slots of `parked`.
    free: Vec<usize>,
    /// How many pipes are parked.
    len: usize,
    /// Whether a driver runs ([`IdlePipes::wait`]).
    driven: bool,
}

/// Why a pipe was not parked; it comes back with its payload.
#[derive(Debug)]
pub(crate) struct NotParked<T> {
    pub(crate) fd: OwnedFd,
    pub(crate) payload: T,
    pub(crate) error: io::Error,
}

impl<T> Default for IdlePipes<T> {
    fn default() -> Self {
        Self {
            epoll: OnceLock::new(),
            slots: Mutex::new(Slots {
                parked: Vec::new(),
                free: Vec::new(),
                len: 0,
                driven: false,
            }),
        }
    }
}

impl<T> IdlePipes<T> {
    fn slots(&self) -> MutexGuard<'_, Slots<T>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The epoll set, made at the first call (within the runtime).
    fn epoll(&self) -> Option<&AsyncFd<OwnedFd>> {
        self.epoll
            .get_or_init(|| {
                let made = epoll::create(epoll::CreateFlags::CLOEXEC)
                    .map_err(io::Error::from)
                    .and_then(|fd| register(fd, Interest::READABLE).map_err(|(_, e)| e));
                match made {
                    Ok(epoll) => Some(epoll),
                    Err(e) => {
                        tracing::warn!("cannot watch idle output pipes together: {e}");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// How many pipes are parked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots().len
    }

    /// Parks `fd`, a non-blocking pipe, with `payload` until it is
    /// readable or hung up; `again` if it was parked here before (its
    /// epoll item is then armed anew rather than added). Returns whether
    /// the caller must start a driver, a task that calls
    /// [`IdlePipes::wait`] until it returns `false`.
    pub(crate) fn park(&self, fd: OwnedFd, payload: T, again: bool) -> Result<bool, NotParked<T>> {
        let Some(epoll) = self.epoll() else {
            return Err(NotParked {
                fd,
                payload,
                error: io::Error::other("no epoll set"),
            });
        };
        let mut slots = self.slots();
        let slot = slots.free.pop().unwrap_or(slots.parked.len());
        let data = epoll::EventData::new_u64(slot as u64);
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        let armed = if again {
            epoll::modify(epoll.get_ref(), &fd, data, flags)
                .or_else(|_| epoll::add(epoll.get_ref(), &fd, data, flags))
        } else {
            epoll::add(epoll.get_ref(), &fd, data, flags)
        };
        if let Err(e) = armed {
            if slot < slots.parked.len() {
                slots.free.push(slot);
            }
            return Err(NotParked {
                fd,
                payload,
                error: e.into(),
            });
        }
        if slot == slots.parked.len() {
            slots.parked.push(Some((fd, payload)));
        } else {
            slots.parked[slot] = Some((fd, payload));
        }
        slots.len += 1;
        Ok(!std::mem::replace(&mut slots.driven, true))
    }

    /// Waits until parked pipes are readable (or hung up) and moves them,
    /// with their payloads, into `woken`; their epoll items stay, disarmed
    /// until [parked again](IdlePipes::park). Returns `false`, at once,
    /// once nothing is parked: the driver ends (a later park starts
    /// another).
    pub(crate) async fn wait(&self, woken: &mut Vec<(OwnedFd, T)>) -> bool {
        let Some(epoll) = self.epoll() else {
            return false;
        };
        loop {
            {
                let mut slots = self.slots();
                if slots.len == 0 {
                    slots.driven = false;
                    if slots.parked.capacity() > WAKES_PER_WAIT {
                        slots.parked = Vec::new();
                        slots.free = Vec::new();
                    } else {
                        slots.parked.clear();
                        slots.free.clear();
                    }
                    return false;
                }
            }
            let Ok(mut guard) = epoll.readable().await else {
                // The runtime is shutting down; nothing more will come.
                return std::future::pending().await;
            };
            // Made after the wait: an event holds a pointer, which a
            // future sent between threads may not keep across an await.
            let mut events: Vec<epoll::Event> = Vec::with_capacity(WAKES_PER_WAIT);
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match epoll::wait(
                guard.get_inner().as_fd(),
                rustix::buffer::spare_capacity(&mut events),
                Some(&zero),
            ) {
                Ok(0) => {
                    guard.clear_ready();
                    continue;
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    // None is expected (the descriptor and the buffer are
                    // valid); do not spin on it.
                    tracing::error!("cannot wait for idle output pipes: {e}");
                    guard.clear_ready();
                    continue;
                }
            }
            let mut slots = self.slots();
            for event in &events {
                let slot = event.data.u64() as usize;
                if let Some(pipe) = slots.parked.get_mut(slot).and_then(Option::take) {
                    slots.free.push(slot);
                    slots.len -= 1;
                    woken.push(pipe);
                }
            }
            if !woken.is_empty() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn nonblocking_pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        rustix::io::ioctl_fionbio(&r, true).expect("non-blocking");
        (r, std::fs::File::from(w))
    }

    #[tokio::test]
    async fn a_parked_pipe_comes_back_when_written_to_or_hung_up() {
        let idle = IdlePipes::<&'static str>::default();
        let (quiet, quiet_w) = nonblocking_pipe();
        let (talker, mut talker_w) = nonblocking_pipe();
        assert!(idle.park(quiet, "quiet", false).expect("parked"));
        assert!(!idle.park(talker, "talker", false).expect("parked"));
        assert_eq!(idle.len(), 2);
        talker_w.write_all(b"line\n").expect("write");
        let mut woken = Vec::new();
        let wait = tokio::time::timeout(std::time::Duration::from_secs(60), idle.wait(&mut woken));
        assert!(wait.await.expect("woken"));
        assert_eq!(woken.len(), 1);
        let (talker, payload) = woken.pop().expect("woken");
        assert_eq!(payload, "talker");
        assert_eq!(idle.len(), 1);
        // Parked again with its line unread, it is reported again at once.
        assert!(!idle.park(talker, "talker", true).expect("parked again"));
        let wait = tokio::time::timeout(std::time::Duration::from_secs(60), idle.wait(&mut woken));
        assert!(wait.await.expect("woken"));
        assert_eq!(woken.pop().map(|(_, p)| p), Some("talker"));
        // A hang-up is reported too.
        drop(quiet_w);
        let wait = tokio::time::timeout(std::time::Duration::from_secs(60), idle.wait(&mut woken));
        assert!(wait.await.expect("woken"));
        assert_eq!(woken.pop().map(|(_, p)| p), Some("quiet"));
        // Nothing parked: the driver ends, and the next park starts one.
        assert!(!idle.wait(&mut woken).await);
        let (again, _w) = nonblocking_pipe();
        assert!(idle.park(again, "again", false).expect("parked"));
    }
}
