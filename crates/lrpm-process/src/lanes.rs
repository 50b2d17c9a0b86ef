//! A second spawning thread, so that a mass start uses both CPUs.
//!
//! # Theory of operation
//!
//! A spawn keeps its thread waiting while the child runs up to its
//! `execve` ([`crate::spawn`]: `CLONE_VFORK`), and the kernel's half of the
//! clone (copying the task, placing it in its cgroup) runs on the spawning
//! thread before that: one thread spawning alone leaves a CPU idle much of
//! the time. [`map`] spreads a batch over the calling thread and one
//! helper thread, which take the batch's items in turn from a shared
//! counter, and returns the results in the batch's order once all are
//! done. A batch of one item runs on the caller alone (a crash's restart
//! pays no hand-off).
//!
//! The helper is started once and lives as long as the process: a child's
//! parent-death signal fires when the *thread* that cloned it ends, not
//! the process, so a helper that ended would take every worker it spawned
//! with it. For the same reason a caller only ever runs items of its own
//! batch (a test's runtime thread that ends must not take another test's
//! workers with it); the helper takes batches in the order they come.
//! An item that panics does not end the helper: the panic is carried to
//! the caller and resumed there.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};

/// How many threads spawn at once: the caller and the helper.
pub const THREADS: usize = 2;

/// Runs `f` on every item of `inputs`, on the calling thread and the
/// helper thread at once, and returns the results in the order of
/// `inputs`. If the helper cannot be started, the caller does it all.
pub fn map<I, T, F>(inputs: Vec<I>, f: F) -> Vec<T>
where
    I: Send + Sync + 'static,
    T: Send + 'static,
    F: Fn(&I) -> T + Send + Sync + 'static,
{
    let batch = Arc::new(Batch {
        results: Mutex::new(inputs.iter().map(|_| None).collect()),
        inputs,
        f,
        next: AtomicUsize::new(0),
        done: Condvar::new(),
    });
    if batch.inputs.len() > 1 {
        if let Some(helper) = helper() {
            // A helper that is gone leaves the whole batch to the caller.
            let _ = helper.send(batch.clone());
        }
    }
    batch.work();
    let mut results = batch.results.lock().unwrap_or_else(PoisonError::into_inner);
    while results.iter().any(Option::is_none) {
        results = batch
            .done
            .wait(results)
            .unwrap_or_else(PoisonError::into_inner);
    }
    std::mem::take(&mut *results)
        .into_iter()
        .map(|result| match result {
            Some(Ok(value)) => value,
            Some(Err(panic)) => resume_unwind(panic),
            None => unreachable!("the caller waited for every item"),
        })
        .collect()
}

/// The items of one [`map`] call and their results.
struct Batch<I, T, F> {
    inputs: Vec<I>,
    f: F,
    /// The next item to take.
    next: AtomicUsize,
    /// Each item's result, once it is done.
    results: Mutex<Vec<Option<std::thread::Result<T>>>>,
    /// Notified when the last item is done.
    done: Condvar,
}

/// A batch, as the helper sees it.
trait Work: Send + Sync {
    /// Takes the batch's items until none is left.
    fn work(&self);
}

impl<I, T, F> Work for Batch<I, T, F>
where
    I: Send + Sync,
    T: Send,
    F: Fn(&I) -> T + Send + Sync,
{
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(input) = self.inputs.get(i) else {
                return;
            };
            let result = catch_unwind(AssertUnwindSafe(|| (self.f)(input)));
            let mut results = self.results.lock().unwrap_or_else(PoisonError::into_inner);
            results[i] = Some(result);
            if results.iter().all(Option::is_some) {
                self.done.notify_all();
            }
        }
    }
}

/// The helper thread's queue of batches, started on first use; `None` if
/// the thread could not be started.
fn helper() -> Option<&'static Sender<Arc<dyn Work>>> {
    static HELPER: OnceLock<Option<Sender<Arc<dyn Work>>>> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let (tx, rx) = channel::<Arc<dyn Work>>();
            let started = std::thread::Builder::new()
                .name("lrpm-spawn".into())
                .spawn(move || {
                    // The sender is in a static: this never ends.
                    for batch in rx {
                        batch.work();
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!("cannot start a second spawning thread ({e}): spawning on one");
                    None
                }
            }
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps 64 slow items; returns how many ran on the helper, after
    /// checking the order of the results.
    fn items_on_the_helper() -> usize {
        let caller = std::thread::current().id();
        let out = map((0..64).collect::<Vec<u64>>(), move |&i| {
            // Long enough that the helper wakes up before the caller is done.
            std::thread::sleep(std::time::Duration::from_millis(5));
            (i * i, std::thread::current().id() != caller)
        });
        let squares: Vec<u64> = out.iter().map(|(sq, _)| *sq).collect();
        assert_eq!(squares, (0..64).map(|i| i * i).collect::<Vec<_>>());
        out.iter().filter(|(_, helper)| *helper).count()
    }

    #[test]
    fn results_come_in_the_order_of_the_inputs_and_both_threads_work() {
        let helped = items_on_the_helper();
        assert!(
            helped > 0 && helped < 64,
            "the helper took {helped} of 64 items: both threads should take some"
        );
    }

    #[test]
    fn one_item_runs_on_the_caller_and_none_is_fine() {
        let caller = std::thread::current().id();
        assert_eq!(
            map(vec![()], move |_| std::thread::current().id() == caller),
            [true]
        );
        assert!(map(Vec::<u8>::new(), |_| ()).is_empty());
    }

    #[test]
    fn a_panic_reaches_the_caller_and_the_helper_lives_on() {
        for _ in 0..3 {
            let caught = catch_unwind(|| {
                map((0..8).collect::<Vec<u32>>(), |&i| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    assert!(i != 5, "item 5 fails");
                    i
                })
            });
            assert!(caught.is_err());
        }
        assert!(items_on_the_helper() > 0, "the helper is gone");
    }
}
