//! Cutting `0..n` into chunks.
//!
//! A [`ChunkPlan`] is lazy: chunk `k` is computed from `k` on demand, so a job of 10^12
//! elements never holds a list of its chunks. Chunks are disjoint by construction, which is
//! the invariant that makes workers' writes into shared memory sound.

use std::ops::Range;

/// Chunks per worker aimed for by default: like Python's `Pool.map`, about four, so a slow
/// worker can be balanced by the others without paying a round trip per element.
pub const DEFAULT_CHUNKS_PER_WORKER: u64 = 4;

/// `0..n` cut into consecutive, disjoint ranges of `chunk_size` (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    n: u64,
    chunk_size: u64,
}

impl ChunkPlan {
    /// A plan for `n` elements in chunks of `chunk_size` (at least 1).
    pub fn new(n: u64, chunk_size: u64) -> Self {
        ChunkPlan {
            n,
            chunk_size: chunk_size.max(1),
        }
    }

    /// The default plan for `workers` workers: about [`DEFAULT_CHUNKS_PER_WORKER`] chunks
    /// each, computed as Python's `Pool.map` does (`ceil(n / (4 * workers))`).
    pub fn for_workers(n: u64, workers: usize) -> Self {
        Self::new(n, default_chunk_size(n, workers))
    }

    /// Number of elements.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Length of every chunk but possibly the last.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Number of chunks.
    pub fn len(&self) -> u64 {
        self.n.div_ceil(self.chunk_size)
    }

    /// True when there is nothing to do (`n == 0`).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The index range of chunk `id`.
    ///
    /// # Panics
    /// If `id >= self.len()`.
    pub fn range(&self, id: u64) -> Range<u64> {
        assert!(id < self.len(), "chunk {id} out of {}", self.len());
        let start = id * self.chunk_size;
        start..(start + self.chunk_size).min(self.n)
    }
}

/// `ceil(n / (DEFAULT_CHUNKS_PER_WORKER * workers))`, at least 1.
pub fn default_chunk_size(n: u64, workers: usize) -> u64 {
    let parts = DEFAULT_CHUNKS_PER_WORKER.saturating_mul(workers.max(1) as u64);
    n.div_ceil(parts).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range_exactly_once() {
        for n in [0u64, 1, 2, 7, 10, 99, 100, 101, 1000] {
            for cs in [1u64, 2, 3, 10, 64, 1000, 5000] {
                let plan = ChunkPlan::new(n, cs);
                let mut next = 0;
                for id in 0..plan.len() {
                    let r = plan.range(id);
                    assert_eq!(r.start, next, "n={n} cs={cs} id={id}");
                    assert!(r.end > r.start && r.end - r.start <= cs);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn default_size_gives_about_four_chunks_per_worker() {
        assert_eq!(default_chunk_size(10_000_000, 8), 312_500);
        assert_eq!(ChunkPlan::for_workers(10_000_000, 8).len(), 32);
        assert_eq!(ChunkPlan::for_workers(100, 3).chunk_size(), 9);
        assert_eq!(ChunkPlan::for_workers(100, 3).len(), 12);
        assert_eq!(ChunkPlan::for_workers(3, 8).len(), 3);
        assert_eq!(ChunkPlan::for_workers(0, 8).len(), 0);
    }

    #[test]
    #[should_panic(expected = "out of")]
    fn range_past_the_end_panics() {
        ChunkPlan::new(10, 5).range(2);
    }
}
