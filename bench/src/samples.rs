//! Durations and their percentiles, shared by the standalone harnesses
//! (`lrpm-bench-etcd`, `lrpm-bench-cluster`).

/// Durations in nanoseconds.
pub struct Samples(pub Vec<u64>);

impl Samples {
    /// The `q`-th percentile (nearest rank).
    pub fn p(&self, q: usize) -> u64 {
        let mut v = self.0.clone();
        v.sort_unstable();
        let rank = (q * v.len()).div_ceil(100).max(1);
        v.get(rank - 1).copied().unwrap_or(0)
    }
}
