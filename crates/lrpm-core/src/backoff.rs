//! Exponential restart backoff, as a small value type.

use std::time::Duration;

/// The first delay after a short run, as php-lrpm.
pub const INITIAL_DELAY: Duration = Duration::from_secs(1);
/// The default cap, as php-lrpm (6 hours).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(6 * 3600);

/// The delay before the next restart of a job whose runs keep ending early.
///
/// Each failure takes the current delay and doubles it for the next one, up
/// to the cap; a run that lasted long enough resets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// A fresh backoff that starts at [`INITIAL_DELAY`] (or at `max`, if that
    /// is smaller) and never exceeds `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: INITIAL_DELAY.min(max),
            max,
        }
    }

    /// The delay that the next failure will wait.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Takes the delay for a failure that just happened and doubles the next.
    pub fn fail(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        *self = Self::new(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_from_one_second_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(10));
        let delays: Vec<u64> = (0..6).map(|_| b.fail().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_secs(1));
    }

    #[test]
    fn default_cap_is_six_hours() {
        let mut b = Backoff::new(DEFAULT_MAX_DELAY);
        for _ in 0..100 {
            b.fail();
        }
        assert_eq!(b.peek(), Duration::from_secs(21_600));
    }

    #[test]
    fn a_cap_below_one_second_wins() {
        let mut b = Backoff::new(Duration::from_millis(300));
        assert_eq!(b.fail(), Duration::from_millis(300));
        assert_eq!(b.fail(), Duration::from_millis(300));
    }

    proptest! {
        #[test]
        fn never_exceeds_the_cap(max_ms in 0u64..100_000_000, fails in 0usize..200) {
            let max = Duration::from_millis(max_ms);
            let mut b = Backoff::new(max);
            let mut last = Duration::ZERO;
            for _ in 0..fails {
                let d = b.fail();
                prop_assert!(d <= max);
                prop_assert!(d >= last, "delays never shrink without a reset");
                last = d;
            }
        }
    }
}
