//! Cutting `0..n` into chunks.
//!
//! A [`Dispenser`] is lazy: it makes each chunk when a worker asks for one, so a job of
//! 10^12 elements never holds a list of its chunks. Chunks are disjoint by construction
//! (each starts where the previous one ended, or is a fixed block of a static schedule),
//! which is the invariant that makes workers' writes into shared memory sound.

use std::ops::Range;

use serde::Serialize;

/// Chunks per worker aimed for by default: like Python's `Pool.map`, about four, so a slow
/// worker can be balanced by the others without paying a round trip per element.
pub(crate) const DEFAULT_CHUNKS_PER_WORKER: u64 = 4;

/// `ceil(n / (DEFAULT_CHUNKS_PER_WORKER * workers))`, at least 1.
pub(crate) fn default_chunk_size(n: u64, workers: usize) -> u64 {
    let parts = DEFAULT_CHUNKS_PER_WORKER.saturating_mul(workers.max(1) as u64);
    n.div_ceil(parts).max(1)
}

/// The default chunk length for workloads that wait rather than compute: about 64 chunks
/// per worker. Waiting costs no CPU but balance matters, so no worker should be left with a
/// long tail of waits while the others are done.
pub(crate) fn waiting_chunk_size(n: u64, workers: usize) -> u64 {
    n.div_ceil(64 * workers.max(1) as u64).max(1)
}

/// How chunks are handed to workers (OpenMP's meanings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Schedule {
    /// Chunks dealt round-robin in advance: chunk k belongs to worker k mod W. Without
    /// `--chunk-size`, one contiguous block per worker. No balancing at all.
    Static,
    /// The next chunk goes to whichever worker is free (the default).
    #[default]
    Dynamic,
    /// Like dynamic, with chunks shrinking as the work runs out: each is the remaining work
    /// divided by the number of workers, but at least the chunk size.
    Guided,
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schedule::Static => "static",
            Schedule::Dynamic => "dynamic",
            Schedule::Guided => "guided",
        })
    }
}

/// One chunk: an id and a range of indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Chunk id within the job, in the order chunks were first handed out.
    pub id: u64,
    /// First index.
    pub start: u64,
    /// One past the last index.
    pub end: u64,
}

impl Chunk {
    /// Number of elements.
    pub(crate) fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True for an empty chunk (never handed out).
    pub(crate) fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// The index range.
    pub(crate) fn range(&self) -> Range<u64> {
        self.start..self.end
    }
}

/// Hands out the chunks of `0..n` lazily, one at a time, following a [`Schedule`]. Its state
/// is a few counters per worker, whatever `n` is; every chunk is disjoint from every other.
#[derive(Debug, Clone)]
pub(crate) struct Dispenser {
    schedule: Schedule,
    n: u64,
    workers: u64,
    /// The chunk length (static, dynamic) or the minimum chunk length (guided).
    size: u64,
    /// Dynamic and guided: where the next chunk starts, and its id.
    next_start: u64,
    next_id: u64,
    /// Static: the next block index of each worker (k ≡ w mod workers).
    next_block: Vec<u64>,
    /// Dynamic and guided: chunks never cross a multiple of this (a streaming window).
    boundary: u64,
    /// Dynamic and guided: nothing at or past this index is handed out (yet).
    limit: u64,
}

impl Dispenser {
    /// A dispenser for `workers` workers. `chunk_size` defaults to: one block per worker
    /// (static), about four chunks per worker (dynamic), a minimum of n / (64 × workers)
    /// (guided).
    pub(crate) fn new(schedule: Schedule, n: u64, workers: usize, chunk_size: Option<u64>) -> Self {
        let w = workers.max(1) as u64;
        let size = chunk_size.unwrap_or(match schedule {
            Schedule::Static => n.div_ceil(w),
            Schedule::Dynamic => default_chunk_size(n, workers),
            Schedule::Guided => n.div_ceil(64 * w),
        });
        Dispenser {
            schedule,
            n,
            workers: w,
            size: size.max(1),
            next_start: 0,
            next_id: 0,
            next_block: (0..w).collect(),
            boundary: u64::MAX,
            limit: n,
        }
    }

    /// Cuts chunks at every multiple of `boundary` and hands out nothing at or past `limit`
    /// until [`Dispenser::set_limit`] moves it: streaming output fills a ring of windows of
    /// `boundary` elements, and a window is reused only after it was written out.
    pub(crate) fn with_windows(mut self, boundary: u64, limit: u64) -> Self {
        self.boundary = boundary.max(1);
        self.limit = limit.min(self.n);
        self
    }

    /// The window length chunks are cut at (`u64::MAX` without windows).
    pub(crate) fn boundary(&self) -> u64 {
        self.boundary
    }

    /// Moves the hand-out limit (see [`Dispenser::with_windows`]).
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit.min(self.n);
    }

    /// The schedule.
    pub(crate) fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// The chunk length (static, dynamic) or minimum chunk length (guided).
    pub(crate) fn chunk_size(&self) -> u64 {
        self.size
    }

    /// Changes the chunk length of the chunks not yet handed out (dynamic and guided only;
    /// static chunks are dealt in advance).
    pub(crate) fn set_chunk_size(&mut self, size: u64) {
        if self.schedule != Schedule::Static {
            self.size = size.max(1);
        }
    }

    /// Elements not yet handed out.
    pub(crate) fn remaining(&self) -> u64 {
        match self.schedule {
            Schedule::Static => self
                .next_block
                .iter()
                .map(|&k| {
                    let blocks = self.n.div_ceil(self.size);
                    (k..blocks)
                        .step_by(self.workers as usize)
                        .map(|b| self.block(b).len())
                        .sum::<u64>()
                })
                .sum(),
            _ => self.n - self.next_start,
        }
    }

    fn block(&self, k: u64) -> Chunk {
        let start = k.saturating_mul(self.size).min(self.n);
        Chunk {
            id: k,
            start,
            end: start.saturating_add(self.size).min(self.n),
        }
    }

    /// How many chunks the job has in all, those already handed out included, if the chunk
    /// length does not change from now on; counting stops past `cap` (the answer is then
    /// `cap + 1`), so asking costs at most `cap` steps, whatever `n` is.
    pub(crate) fn chunks_up_to(&self, cap: u64) -> u64 {
        match self.schedule {
            Schedule::Static => self.n.div_ceil(self.size).min(cap.saturating_add(1)),
            Schedule::Dynamic if self.boundary == u64::MAX => (self.next_id)
                .saturating_add((self.n - self.next_start).div_ceil(self.size))
                .min(cap.saturating_add(1)),
            // Guided lengths shrink and windows cut chunks: hand them out on a copy.
            _ => {
                let mut copy = self.clone();
                copy.limit = copy.n;
                while copy.next_id <= cap && copy.next_for(0).is_some() {}
                copy.next_id
            }
        }
    }

    /// The next chunk for worker `worker`, or `None` when it has nothing more to do.
    pub(crate) fn next_for(&mut self, worker: usize) -> Option<Chunk> {
        match self.schedule {
            Schedule::Static => {
                let slot = worker % self.workers as usize;
                let k = self.next_block[slot];
                let chunk = self.block(k);
                if chunk.is_empty() {
                    return None;
                }
                self.next_block[slot] = k + self.workers;
                Some(chunk)
            }
            Schedule::Dynamic | Schedule::Guided => {
                let remaining = self.n - self.next_start;
                if remaining == 0 || self.next_start >= self.limit {
                    return None;
                }
                let to_boundary = self.boundary - self.next_start % self.boundary;
                let len = match self.schedule {
                    Schedule::Guided => remaining.div_ceil(self.workers).max(self.size),
                    _ => self.size,
                }
                .min(remaining)
                .min(to_boundary)
                .min(self.limit - self.next_start);
                let chunk = Chunk {
                    id: self.next_id,
                    start: self.next_start,
                    end: self.next_start + len,
                };
                self.next_id += 1;
                self.next_start += len;
                Some(chunk)
            }
        }
    }
}

/// One run of chunks inside one window (or the whole job): dynamic chunks of `size`, or
/// guided ones that shrink to `size`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    len: u64,
    /// Guided: where each shrinking chunk starts (before the chunks reach `size`).
    shrinking: Vec<u64>,
    /// Where the chunks of `size` start.
    tail: u64,
    size: u64,
}

impl Segment {
    fn new(len: u64, size: u64, guided_workers: Option<u64>) -> Self {
        let mut shrinking = Vec::new();
        let mut at = 0;
        if let Some(w) = guided_workers {
            while at < len {
                let want = (len - at).div_ceil(w);
                if want <= size {
                    break;
                }
                shrinking.push(at);
                at += want;
            }
        }
        Segment {
            len,
            shrinking,
            tail: at,
            size,
        }
    }

    fn chunks(&self) -> u64 {
        self.shrinking.len() as u64 + (self.len - self.tail).div_ceil(self.size)
    }

    /// Chunk `i` of the segment, as offsets within it.
    fn chunk(&self, i: u64) -> (u64, u64) {
        let k = self.shrinking.len() as u64;
        if i < k {
            let start = self.shrinking[i as usize];
            let end = self
                .shrinking
                .get(i as usize + 1)
                .copied()
                .unwrap_or(self.tail);
            return (start, end);
        }
        let start = self.tail + (i - k) * self.size;
        (start, (start + self.size).min(self.len))
    }
}

/// The chunks of `start..n` as a function of their index, for the shared-memory queue:
/// a worker that claims index `k` (one atomic add) knows its range without asking anyone.
///
/// The same cutting as the [`Dispenser`]: chunks of `size` (dynamic, static), or, guided,
/// chunks of the remaining work divided by the workers down to `size`; with windows, no
/// chunk crosses a multiple of `boundary`, and guided chunks shrink again in each window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    start: u64,
    n: u64,
    boundary: u64,
    id_base: u64,
    /// The first window's part (from `start` to the first boundary), the full windows after
    /// it, and the last window's part.
    first: Segment,
    full: Option<Segment>,
    full_windows: u64,
    last: Option<Segment>,
}

impl Geometry {
    /// The chunks of `start..n` with the given schedule; ids start at `id_base`.
    pub(crate) fn new(
        schedule: Schedule,
        start: u64,
        n: u64,
        size: u64,
        workers: u64,
        boundary: u64,
        id_base: u64,
    ) -> Self {
        let size = size.max(1);
        let boundary = boundary.max(1);
        let guided = (schedule == Schedule::Guided).then_some(workers.max(1));
        let start = start.min(n);
        let first_end = if boundary == u64::MAX {
            n
        } else {
            (start / boundary + 1).saturating_mul(boundary).min(n)
        };
        let first = Segment::new(first_end - start, size, guided);
        let (full, full_windows, last) = if first_end >= n {
            (None, 0, None)
        } else {
            let windows = (n - first_end) / boundary;
            let rest = (n - first_end) % boundary;
            (
                (windows > 0).then(|| Segment::new(boundary, size, guided)),
                windows,
                (rest > 0).then(|| Segment::new(rest, size, guided)),
            )
        };
        Geometry {
            start,
            n,
            boundary,
            id_base,
            first,
            full,
            full_windows,
            last,
        }
    }

    /// Chunks in all.
    pub(crate) fn chunks(&self) -> u64 {
        self.first.chunks()
            + self
                .full
                .as_ref()
                .map_or(0, |s| s.chunks() * self.full_windows)
            + self.last.as_ref().map_or(0, Segment::chunks)
    }

    /// Chunk `k` (`k < chunks()`).
    pub(crate) fn chunk(&self, k: u64) -> Chunk {
        let id = self.id_base + k;
        let make = |base: u64, (s, e): (u64, u64)| Chunk {
            id,
            start: base + s,
            end: base + e,
        };
        let c0 = self.first.chunks();
        if k < c0 {
            return make(self.start, self.first.chunk(k));
        }
        let mut k = k - c0;
        let mut base = self.start + self.first.len;
        if let Some(full) = &self.full {
            let per = full.chunks();
            if k < per * self.full_windows {
                let window = k / per;
                return make(base + window * self.boundary, full.chunk(k % per));
            }
            k -= per * self.full_windows;
            base += self.full_windows * self.boundary;
        }
        match &self.last {
            Some(last) => make(base, last.chunk(k)),
            None => make(self.n, (0, 0)),
        }
    }

    /// The first chunk index of the window holding element `i` at or after the geometry's
    /// start (the streaming limit: chunks before it may run).
    pub(crate) fn first_chunk_at(&self, i: u64) -> u64 {
        if i >= self.n {
            return self.chunks();
        }
        let first_end = self.start + self.first.len;
        if i < first_end {
            return 0;
        }
        let c0 = self.first.chunks();
        let Some(full) = &self.full else {
            return c0;
        };
        let window = (i - first_end) / self.boundary;
        c0 + full.chunks() * window.min(self.full_windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_geometry_cuts_chunks_as_the_dispenser_does() {
        for schedule in [Schedule::Static, Schedule::Dynamic, Schedule::Guided] {
            for (n, size, workers, boundary) in [
                (0u64, 1u64, 2u64, u64::MAX),
                (1, 1, 1, u64::MAX),
                (100, 7, 3, u64::MAX),
                (1000, 10, 2, u64::MAX),
                (1001, 1, 8, u64::MAX),
                (100, 15, 2, 40),
                (1000, 3, 4, 64),
            ] {
                if schedule == Schedule::Static && boundary != u64::MAX {
                    continue;
                }
                let g = Geometry::new(schedule, 0, n, size, workers, boundary, 0);
                let chunks: Vec<Chunk> = (0..g.chunks()).map(|k| g.chunk(k)).collect();
                let mut next = 0;
                for c in &chunks {
                    assert_eq!(c.start, next, "{schedule} n={n} {chunks:?}");
                    assert!(c.end > c.start);
                    assert!(boundary == u64::MAX || c.start / boundary == (c.end - 1) / boundary);
                    next = c.end;
                }
                assert_eq!(next, n);
                if boundary == u64::MAX && schedule != Schedule::Guided {
                    let d = Dispenser::new(schedule, n, workers as usize, Some(size));
                    assert_eq!(d.chunks_up_to(u64::MAX), g.chunks(), "{schedule} n={n}");
                }
            }
        }
        let guided = Geometry::new(Schedule::Guided, 0, 1000, 10, 2, u64::MAX, 0);
        let sizes: Vec<u64> = (0..guided.chunks())
            .map(|k| guided.chunk(k).len())
            .collect();
        assert_eq!(&sizes[..3], [500, 250, 125]);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    }

    #[test]
    fn a_later_phase_starts_mid_window_and_numbers_on() {
        let g = Geometry::new(Schedule::Dynamic, 25, 100, 10, 2, 40, 5);
        let chunks: Vec<(u64, u64, u64)> = (0..g.chunks())
            .map(|k| g.chunk(k))
            .map(|c| (c.id, c.start, c.end))
            .collect();
        assert_eq!(
            chunks,
            [
                (5, 25, 35),
                (6, 35, 40),
                (7, 40, 50),
                (8, 50, 60),
                (9, 60, 70),
                (10, 70, 80),
                (11, 80, 90),
                (12, 90, 100)
            ]
        );
        assert_eq!(g.first_chunk_at(30), 0);
        assert_eq!(g.first_chunk_at(45), 2);
        assert_eq!(g.first_chunk_at(80), 6);
        assert_eq!(g.first_chunk_at(100), 8);
    }

    #[test]
    fn default_size_gives_about_four_chunks_per_worker() {
        assert_eq!(default_chunk_size(10_000_000, 8), 312_500);
        assert_eq!(default_chunk_size(100, 3), 9);
        assert_eq!(default_chunk_size(3, 8), 1);
        assert_eq!(default_chunk_size(0, 8), 1);
    }

    #[test]
    fn chunk_counts_are_known_before_any_is_handed_out() {
        for schedule in [Schedule::Static, Schedule::Dynamic, Schedule::Guided] {
            for (n, size) in [(0u64, None), (100, Some(7)), (1000, None), (12345, Some(1))] {
                let d = Dispenser::new(schedule, n, 3, size);
                let all = drain(d.clone(), 3).len() as u64;
                assert_eq!(d.chunks_up_to(u64::MAX), all, "{schedule} n={n}");
                assert_eq!(d.chunks_up_to(all), all, "{schedule} n={n}");
                if all > 2 {
                    assert_eq!(d.chunks_up_to(1), 2, "{schedule} n={n} stops counting");
                }
            }
        }
        let windows = Dispenser::new(Schedule::Dynamic, 100, 2, Some(7)).with_windows(10, 20);
        // Every window of 10 is cut into chunks of 7 and 3.
        assert_eq!(windows.chunks_up_to(u64::MAX), 20);
    }

    /// Drains a dispenser, asking workers in turn, and checks the chunks tile 0..n.
    fn drain(mut d: Dispenser, workers: usize) -> Vec<(usize, Chunk)> {
        let mut out = Vec::new();
        let mut idle = 0;
        let mut w = 0;
        while idle < workers {
            match d.next_for(w) {
                Some(c) => {
                    out.push((w, c));
                    idle = 0;
                }
                None => idle += 1,
            }
            w = (w + 1) % workers;
        }
        out
    }

    fn assert_tiles(chunks: &[(usize, Chunk)], n: u64) {
        let mut ranges: Vec<_> = chunks.iter().map(|(_, c)| (c.start, c.end)).collect();
        ranges.sort_unstable();
        let mut next = 0;
        for (s, e) in ranges {
            assert_eq!(s, next);
            assert!(e > s);
            next = e;
        }
        assert_eq!(next, n);
        let mut ids: Vec<_> = chunks.iter().map(|(_, c)| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), chunks.len(), "ids are unique");
    }

    #[test]
    fn every_schedule_tiles_the_range() {
        for schedule in [Schedule::Static, Schedule::Dynamic, Schedule::Guided] {
            for n in [0u64, 1, 7, 100, 1001] {
                for workers in [1usize, 2, 3, 8] {
                    for cs in [None, Some(1), Some(10)] {
                        let chunks = drain(Dispenser::new(schedule, n, workers, cs), workers);
                        assert_tiles(&chunks, n);
                    }
                }
            }
        }
    }

    #[test]
    fn static_deals_round_robin_and_defaults_to_one_block_per_worker() {
        let chunks = drain(Dispenser::new(Schedule::Static, 100, 3, Some(10)), 3);
        for (w, c) in &chunks {
            assert_eq!(c.id % 3, *w as u64, "chunk {} went to worker {w}", c.id);
        }
        let d = Dispenser::new(Schedule::Static, 100, 4, None);
        assert_eq!(d.chunk_size(), 25);
        assert_eq!(d.remaining(), 100);
    }

    #[test]
    fn guided_chunks_shrink_to_the_minimum() {
        let chunks = drain(Dispenser::new(Schedule::Guided, 1000, 2, Some(10)), 2);
        let sizes: Vec<u64> = chunks.iter().map(|(_, c)| c.len()).collect();
        assert_eq!(sizes[0], 500);
        assert_eq!(sizes[1], 250);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert!(sizes[..sizes.len() - 1].iter().all(|&s| s >= 10));
    }

    #[test]
    fn dynamic_chunk_size_can_change_mid_way() {
        let mut d = Dispenser::new(Schedule::Dynamic, 100, 2, Some(5));
        let first = d.next_for(0).unwrap();
        d.set_chunk_size(20);
        let second = d.next_for(1).unwrap();
        assert_eq!(
            (first.start, first.end, second.start, second.end),
            (0, 5, 5, 25)
        );
        assert_eq!(d.remaining(), 75);
    }

    #[test]
    fn windows_cut_chunks_and_the_limit_holds_them_back() {
        let mut d = Dispenser::new(Schedule::Dynamic, 100, 2, Some(15)).with_windows(40, 40);
        let mut got = Vec::new();
        while let Some(c) = d.next_for(0) {
            got.push((c.start, c.end));
        }
        assert_eq!(got, [(0, 15), (15, 30), (30, 40)]);
        d.set_limit(80);
        while let Some(c) = d.next_for(1) {
            got.push((c.start, c.end));
        }
        d.set_limit(100);
        while let Some(c) = d.next_for(1) {
            got.push((c.start, c.end));
        }
        assert_eq!(
            got,
            [
                (0, 15),
                (15, 30),
                (30, 40),
                (40, 55),
                (55, 70),
                (70, 80),
                (80, 95),
                (95, 100)
            ]
        );
    }
}
