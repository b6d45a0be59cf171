//! Results as they finish: [`Pool::for_each_chunk`](super::Pool::for_each_chunk) hands
//! each chunk to the caller as soon as it is done, in completion or in index order.
//!
//! Two plain parts the dispatch loops drive:
//! - [`Each`] holds the caller's callback (over bytes; the typed wrapper is on `Pool`),
//!   keeps the order (index order buffers chunk *indices*, never data: the results stay in
//!   the shared region, where nothing writes a done chunk again), and remembers a `Break`;
//! - [`LogReader`] follows a posting's completion log in the chunk table (queue dispatch):
//!   new entries, positions whose entry was not written yet, and, at the end of the
//!   posting, the done chunks the log never showed (their worker died in between).
//!
//! The channel dispatch needs no log: each `Done` message is the completion.

use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};

use crate::engine::control::ChunkTable;
use crate::engine::shm::Mapping;

/// In which order [`Pool::for_each_chunk`](super::Pool::for_each_chunk) hands out chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkOrder {
    /// Each chunk as soon as it is done (`imap_unordered`, `as_completed`).
    #[default]
    Completion,
    /// Chunk `k` as soon as chunks `0..=k` are all done (`imap`): increasing, contiguous.
    Index,
}

/// One finished chunk of a job, as [`Pool::for_each_chunk`](super::Pool::for_each_chunk)
/// hands it out: its index, its range of the job's indices, and its results, a view into
/// the shared region (no copy); with
/// [`Pool::for_each_reduced_chunk`](super::Pool::for_each_reduced_chunk), also its
/// accumulator (`A` is the [`Reduce::Acc`](crate::Reduce::Acc); `()` otherwise).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Chunk<'a, T, A = ()> {
    /// The chunk's index in the job: chunks are numbered from 0 in the order of their
    /// ranges (with [`JobOptions::auto_chunk`](super::JobOptions::auto_chunk), the probe
    /// chunks first).
    pub index: u64,
    /// The job indices the chunk covers: `output[i]` is the result for `range.start + i`.
    pub range: Range<u64>,
    /// The chunk's results.
    pub output: &'a [T],
    /// The chunk's accumulator, as its worker reduced it.
    pub acc: A,
}

/// The callback over raw chunks: index, range, the results' bytes, and the encoded
/// accumulator when the job reduces.
pub(crate) type RawVisit<'f> =
    dyn FnMut(u64, Range<u64>, &[u8], Option<&[u8]>) -> ControlFlow<()> + 'f;

/// The caller's callback and the order it wants, during one job.
pub(crate) struct Each<'f> {
    f: &'f mut RawVisit<'f>,
    order: ChunkOrder,
    /// Index order: the next index to hand out, and the done chunks after it.
    next: u64,
    waiting: BTreeMap<u64, (Range<u64>, Option<Vec<u8>>)>,
    /// Chunks handed to the callback.
    pub(crate) delivered: u64,
    /// The callback said `Break`: hand out nothing more, stop the job.
    pub(crate) stopped: bool,
}

impl<'f> Each<'f> {
    pub(crate) fn new(order: ChunkOrder, f: &'f mut RawVisit<'f>) -> Self {
        Each {
            f,
            order,
            next: 0,
            waiting: BTreeMap::new(),
            delivered: 0,
            stopped: false,
        }
    }

    /// Chunk `index` (job indices `range`) is done and its results are in `mapping`, at
    /// `range` times `elem_size` bytes (a flat layout). Hands it, and in index order every
    /// chunk it completes the prefix of, to the callback, until a `Break`.
    pub(crate) fn done(
        &mut self,
        index: u64,
        range: Range<u64>,
        acc: Option<Vec<u8>>,
        mapping: &Mapping,
        elem_size: u64,
    ) {
        if self.stopped {
            return;
        }
        match self.order {
            ChunkOrder::Completion => self.call(index, range, acc.as_deref(), mapping, elem_size),
            ChunkOrder::Index => {
                self.waiting.insert(index, (range, acc));
                while !self.stopped {
                    let Some((range, acc)) = self.waiting.remove(&self.next) else {
                        break;
                    };
                    self.next += 1;
                    self.call(self.next - 1, range, acc.as_deref(), mapping, elem_size);
                }
            }
        }
    }

    fn call(
        &mut self,
        index: u64,
        range: Range<u64>,
        acc: Option<&[u8]>,
        mapping: &Mapping,
        elem_size: u64,
    ) {
        let bytes = |i: u64| {
            i.checked_mul(elem_size)
                .and_then(|b| usize::try_from(b).ok())
        };
        let (Some(lo), Some(hi)) = (bytes(range.start), bytes(range.end)) else {
            return;
        };
        // SAFETY: the chunk is done: its worker wrote these bytes before it marked the
        // chunk done (the parent saw that with Acquire, or received its `Done` after the
        // write), and nothing writes a done chunk again during the job. On the queue a
        // chunk goes back to the retry ring only when its done byte is not set, and only
        // after the process that held it was reaped (a death, a timeout, a retried panic),
        // or when nobody holds or claims any chunk; a worker recycled after its limit
        // holds nothing. On the channels a chunk is handed out again only if it was held by
        // a worker reaped before its `Done` arrived. The next job, which reuses the region,
        // needs `&mut Pool`, and the slice lives only during this call. Chunks are disjoint,
        // so the workers writing other chunks meanwhile never touch these bytes.
        let output = unsafe { mapping.slice(lo..hi) };
        self.delivered += 1;
        if (self.f)(index, range, output, acc).is_break() {
            self.stopped = true;
        }
    }
}

/// Follows one posting's completion log (queue dispatch).
#[derive(Debug, Default)]
pub(crate) struct LogReader {
    /// Log positions below this were looked at.
    scanned: u64,
    /// Positions looked at before their entry was written.
    holes: Vec<u64>,
    /// Per chunk of the posting: already handed on.
    seen: Vec<bool>,
    unseen: u64,
}

impl LogReader {
    /// A reader for a posting of `chunks` chunks.
    pub(crate) fn new(chunks: u64) -> Self {
        LogReader {
            scanned: 0,
            holes: Vec::new(),
            seen: vec![false; usize::try_from(chunks).unwrap_or(0)],
            unseen: chunks,
        }
    }

    /// Whether the log shows something not handed on yet (the parent's look before it
    /// sleeps).
    pub(crate) fn news(&self, table: &ChunkTable<'_>) -> bool {
        table.log_len() > self.scanned || self.holes.iter().any(|&p| table.log_entry(p).is_some())
    }

    /// The chunks (posting indices) done since the last look, each once, in the order
    /// they finished. With `complete` (every done byte of the posting is set), also those
    /// the log does not show.
    pub(crate) fn poll(&mut self, table: &ChunkTable<'_>, complete: bool) -> Vec<u64> {
        let mut fresh = Vec::new();
        let mut take = |k: u64, seen: &mut Vec<bool>, unseen: &mut u64| {
            if let Some(s) = seen.get_mut(k as usize)
                && !*s
            {
                *s = true;
                *unseen -= 1;
                fresh.push(k);
            }
        };
        let (seen, unseen) = (&mut self.seen, &mut self.unseen);
        self.holes.retain(|&p| match table.log_entry(p) {
            Some(k) => {
                take(k, seen, unseen);
                false
            }
            None => true,
        });
        let len = table.log_len();
        for p in self.scanned..len {
            match table.log_entry(p) {
                Some(k) => take(k, seen, unseen),
                None => self.holes.push(p),
            }
        }
        self.scanned = self.scanned.max(len);
        if complete && *unseen > 0 {
            for k in 0..seen.len() as u64 {
                if !seen[k as usize] && table.is_done(k) {
                    take(k, seen, unseen);
                }
            }
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::control::{TableLayout, control_len};
    use crate::engine::shm::SharedRegion;

    fn table_in(region: &mut SharedRegion, chunks: u64) -> (Mapping, TableLayout) {
        let layout = TableLayout::after(64, chunks, 1, 0).with_log(true);
        region.reset(layout.end()).unwrap();
        (region.map().unwrap(), layout)
    }

    #[test]
    fn the_log_shows_each_chunk_once_in_completion_order() {
        let mut region = SharedRegion::with_control(control_len(1)).unwrap();
        let (map, layout) = table_in(&mut region, 5);
        let table = ChunkTable::new(&map, layout).unwrap();
        let mut reader = LogReader::new(5);
        assert!(!reader.news(&table));
        for k in [3, 0] {
            assert!(table.set_done_and_log(k, None));
        }
        assert!(
            !table.set_done_and_log(3, None),
            "a second copy is not first"
        );
        assert!(reader.news(&table));
        assert_eq!(reader.poll(&table, false), [3, 0]);
        assert!(!reader.news(&table));
        // A worker that died after marking chunk 1 done and before logging it: the end of
        // the posting finds it.
        table.set_done(1, None);
        for k in [4, 2] {
            table.set_done_and_log(k, None);
        }
        assert_eq!(reader.poll(&table, false), [4, 2]);
        assert_eq!(reader.poll(&table, true), [1]);
        assert_eq!(reader.poll(&table, true), Vec::<u64>::new());
    }

    #[test]
    fn a_position_taken_but_not_written_is_read_once_written() {
        let mut region = SharedRegion::with_control(control_len(1)).unwrap();
        let (map, layout) = table_in(&mut region, 3);
        let table = ChunkTable::new(&map, layout).unwrap();
        let mut reader = LogReader::new(3);
        table.log_push(2);
        // Position 1 taken, its entry not written yet: look at the count only.
        table.log_push(0);
        assert_eq!(reader.poll(&table, false), [2, 0]);
        table.log_push(1);
        assert!(reader.news(&table));
        assert_eq!(reader.poll(&table, false), [1]);
    }

    #[test]
    fn index_order_waits_for_the_prefix_and_break_stops() {
        let mut region = SharedRegion::with_control(control_len(1)).unwrap();
        region.reset(4096).unwrap();
        let map = region.map().unwrap();
        let mut got = Vec::new();
        let mut visit = |k: u64, r: Range<u64>, bytes: &[u8], _: Option<&[u8]>| {
            got.push((k, r, bytes.len()));
            if k == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let mut each = Each::new(ChunkOrder::Index, &mut visit);
        each.done(1, 10..20, None, &map, 8);
        assert_eq!(each.delivered, 0);
        each.done(0, 0..10, None, &map, 8);
        assert_eq!(each.delivered, 2);
        each.done(3, 30..40, None, &map, 8);
        each.done(2, 20..30, None, &map, 8);
        assert!(each.stopped);
        each.done(4, 40..50, None, &map, 8);
        assert_eq!(each.delivered, 3);
        drop(each);
        assert_eq!(got, [(0, 0..10, 80), (1, 10..20, 80), (2, 20..30, 80)]);
    }
}
