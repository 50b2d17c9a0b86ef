//! The watch on children's exits: one epoll set of their pidfds.
//!
//! # Theory of operation
//!
//! Every live child's pidfd is added to one epoll instance, one-shot, with
//! its run id as the event's data; only that instance's descriptor is
//! registered with the runtime. [`ExitWatch::next`] waits for it to become
//! readable and takes every exit it reports at once, stamped with the time
//! it was taken (the time of the exit as closely as lrpm can tell, before
//! it waits behind others), then hands them out one by one. A child costs
//! lrpm the kernel's epoll item, rather than a task, a runtime registration
//! and a channel sender of its own. Closing a pidfd (at reaping) removes it
//! from the set; a pidfd reported while its child still runs is armed again
//! with [`ExitWatch::watch`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use lrpm_core::supervisor::RunId;
use rustix::event::epoll;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::fd::register;

/// The epoll set of every live child's pidfd, one-shot, with the run id as
/// the data of each; the only descriptor of it the runtime watches is the
/// epoll instance's own.
pub struct ExitWatch {
    epoll: AsyncFd<OwnedFd>,
    /// Exits taken from the set and not yet handed out, in the order taken.
    ready: VecDeque<ExitEvent>,
    /// `epoll_wait`'s buffer.
    events: Vec<epoll::Event>,
}

/// A child's pidfd became readable: the child has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitEvent {
    /// The process.
    pub run: RunId,
    /// When its pidfd became readable: the time of its end as closely as
    /// lrpm can tell, before the event waits behind others. The core
    /// measures the run's length and the backoff delay from it, so that a
    /// busy event loop does not make short runs look long.
    pub at: Instant,
}

/// How many exits one `epoll_wait` takes at most.
const EXITS_PER_WAIT: usize = 256;

impl std::fmt::Debug for ExitWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitWatch")
            .field("epoll", &self.epoll)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl ExitWatch {
    /// An empty watch, registered with the current runtime.
    pub fn new() -> io::Result<ExitWatch> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let epoll = register(epoll, Interest::READABLE).map_err(|(_, e)| e)?;
        Ok(ExitWatch {
            epoll,
            ready: VecDeque::new(),
            events: Vec::new(),
        })
    }

    /// Watches `pidfd` for the end of run `run` (again, with `rearm`).
    pub fn watch(&self, run: RunId, pidfd: BorrowedFd<'_>, rearm: bool) -> io::Result<()> {
        let data = epoll::EventData::new_u64(run.0);
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        if rearm {
            epoll::modify(self.epoll.get_ref(), pidfd, data, flags)?;
        } else {
            epoll::add(self.epoll.get_ref(), pidfd, data, flags)?;
        }
        Ok(())
    }

    /// An exit already reported, without waiting: one already taken, or
    /// those the set reports now. The event loop takes every exit ready in
    /// one turn, so that the last of a batch of 256 does not wait for 255
    /// turns of spawns before it is reaped.
    pub fn try_next(&mut self) -> Option<ExitEvent> {
        if self.ready.is_empty() {
            take(
                self.epoll.get_ref().as_fd(),
                &mut self.events,
                &mut self.ready,
            );
        }
        self.ready.pop_front()
    }

    /// Gives back the memory of a storm's queue of exits, at the
    /// allocator's trim (`epoll_wait`'s buffer has a fixed size).
    pub fn shrink(&mut self) {
        if self.ready.is_empty() {
            self.ready.shrink_to_fit();
        }
    }

    /// The next exit: one already taken, or the next the set reports.
    /// Cancel-safe: exits taken from the set wait in `ready`.
    pub async fn next(&mut self) -> ExitEvent {
        loop {
            if let Some(exit) = self.ready.pop_front() {
                return exit;
            }
            let Ok(mut guard) = self.epoll.readable().await else {
                // The runtime is shutting down; nothing more will come.
                return std::future::pending().await;
            };
            if take(guard.get_inner().as_fd(), &mut self.events, &mut self.ready) {
                guard.clear_ready();
            }
        }
    }
}

/// Takes what the epoll set `epoll` reports now into `ready`; returns whether it
/// reported nothing (so that readiness may be cleared).
fn take(
    epoll: BorrowedFd<'_>,
    events: &mut Vec<epoll::Event>,
    ready: &mut VecDeque<ExitEvent>,
) -> bool {
    events.clear();
    events.reserve(EXITS_PER_WAIT);
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let taken = epoll::wait(epoll, rustix::buffer::spare_capacity(events), Some(&zero));
    match taken {
        Ok(0) => true,
        Ok(_) => {
            let at = Instant::now();
            ready.extend(events.iter().map(|event| ExitEvent {
                run: RunId(event.data.u64()),
                at,
            }));
            false
        }
        Err(rustix::io::Errno::INTR) => false,
        Err(e) => {
            // None is expected (the descriptor and the buffer are
            // valid); do not spin on it.
            tracing::error!("cannot wait for children's exits: {e}");
            true
        }
    }
}
