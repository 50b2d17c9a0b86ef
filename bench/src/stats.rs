//! Samples of a duration, and the order statistics the report shows.

use std::fmt;
use std::time::Duration;

/// Samples of one measurement, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// The values in the order they were taken.
    values: Vec<f64>,
}

impl Samples {
    /// Adds a sample given in nanoseconds.
    pub fn push_ns(&mut self, ns: u64) {
        self.values.push(ns as f64 / 1e6);
    }

    /// Adds a sample given as a `Duration`.
    pub fn push(&mut self, d: Duration) {
        self.values.push(d.as_secs_f64() * 1e3);
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value below which a fraction `q` (0 to 1) of the samples lie,
    /// by the nearest-rank method: with few samples, high quantiles are
    /// the maximum. `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let sorted = self.sorted();
        let rank = (q * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    /// The samples, sorted (for a distribution's plot).
    pub fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    /// The median (nearest rank, so always one of the samples).
    pub fn median(&self) -> Option<f64> {
        self.quantile(0.5)
    }

    /// The 95th percentile.
    pub fn p95(&self) -> Option<f64> {
        self.quantile(0.95)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Option<f64> {
        self.quantile(0.99)
    }

    /// The arithmetic mean.
    pub fn mean(&self) -> Option<f64> {
        (!self.values.is_empty())
            .then(|| self.values.iter().sum::<f64>() / self.values.len() as f64)
    }

    /// A one-line summary for progress messages.
    pub fn summary(&self) -> String {
        format!(
            "n={} median {} p95 {} p99 {}",
            self.len(),
            Ms(self.median()),
            Ms(self.p95()),
            Ms(self.p99())
        )
    }
}

/// Formats milliseconds with a precision that suits their size, or `—`.
#[derive(Debug, Clone, Copy)]
pub struct Ms(pub Option<f64>);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("—"),
            Some(ms) if ms >= 10_000.0 => write!(f, "{:.1} s", ms / 1e3),
            Some(ms) if ms >= 1_000.0 => write!(f, "{:.2} s", ms / 1e3),
            Some(ms) if ms >= 100.0 => write!(f, "{ms:.0} ms"),
            Some(ms) if ms >= 10.0 => write!(f, "{ms:.1} ms"),
            Some(ms) if ms >= 1.0 => write!(f, "{ms:.2} ms"),
            Some(ms) => write!(f, "{ms:.3} ms"),
        }
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), so that a
/// rerun kills the same sequence of jobs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut s = Samples::default();
        for v in 1..=100 {
            s.push_ns(v * 1_000_000);
        }
        assert_eq!(s.median(), Some(50.0));
        assert_eq!(s.p95(), Some(95.0));
        assert_eq!(s.p99(), Some(99.0));
        assert_eq!(s.quantile(1.0), Some(100.0));
    }

    #[test]
    fn few_samples_give_the_maximum_as_high_quantile() {
        let mut s = Samples::default();
        s.push_ns(3_000_000);
        s.push_ns(1_000_000);
        assert_eq!(s.median(), Some(1.0));
        assert_eq!(s.p99(), Some(3.0));
        assert!(Samples::default().median().is_none());
    }

    #[test]
    fn formatting_adapts_precision() {
        assert_eq!(Ms(Some(0.1234)).to_string(), "0.123 ms");
        assert_eq!(Ms(Some(12.34)).to_string(), "12.3 ms");
        assert_eq!(Ms(Some(1234.0)).to_string(), "1.23 s");
        assert_eq!(Ms(None).to_string(), "—");
    }

    #[test]
    fn rng_stays_in_range() {
        let mut rng = Rng::new(7);
        assert!((0..1000).all(|_| rng.below(10) < 10));
    }
}
