//! The queue's supervision decisions, as plain types over the control block: what a lost
//! worker's claim slot says it held, which chunks lost their claim altogether, and the
//! retries the parent queues again (with those that wait for room in the ring).
//!
//! The loop in `queue.rs` reads processes and moves on; what a death means for the
//! posting's chunks is decided here, so it can be tested on a real control block without
//! starting a worker (see the tests below).

use std::collections::{HashMap, VecDeque};

use crate::engine::control::{ChunkTable, ClaimState, Control, SlotView};

/// What a lost worker's claim slot says it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Claimed {
    /// The chunk's index in the posting.
    pub(super) index: u64,
    /// Its attempt number.
    pub(super) attempt: u32,
    /// It was running (or had panicked): the loss is blamed on it.
    pub(super) running: bool,
}

/// The chunk a lost worker held, as its claim slot (`view`, read after the process was
/// reaped) says: one of the posting's `chunks` not marked done, unless the worker was idle.
/// A worker that died between taking a chunk and naming it in its slot holds nothing here;
/// its chunk is found by [`missing`] and queued again by [`Retries::requeue_lost`].
pub(super) fn claimed(view: SlotView, chunks: u64, table: &ChunkTable<'_>) -> Option<Claimed> {
    let index = view
        .chunk
        .filter(|&k| k < chunks && !table.is_done(k))
        .filter(|_| view.state != ClaimState::Idle)?;
    Some(Claimed {
        index,
        attempt: view.attempt,
        running: matches!(view.state, ClaimState::Running | ClaimState::Panicked),
    })
}

/// The posting's chunks the parent queued again, and those waiting for room in the ring.
#[derive(Debug, Default)]
pub(super) struct Retries {
    /// Attempts of chunks queued again, by index in the posting.
    attempts: HashMap<u64, u32>,
    /// Retries waiting for room in the ring, in order.
    overflow: VecDeque<(u64, u32)>,
    /// Retries written into the ring in this posting (its `tail`).
    pub(super) pushed: u64,
    /// A worker was lost in this posting: look for chunks nobody holds.
    pub(super) lost: bool,
}

impl Retries {
    /// A new posting: nothing queued again yet.
    pub(super) fn clear(&mut self) {
        *self = Retries::default();
    }

    /// The attempt chunk `index` was last queued again with (0: never).
    pub(super) fn attempt(&self, index: u64) -> u32 {
        self.attempts.get(&index).copied().unwrap_or(0)
    }

    /// Queues chunk `index` again for any worker, before new chunks; when the ring is
    /// full, it waits here for room ([`Retries::push_overflow`]).
    pub(super) fn requeue(&mut self, control: &Control, index: u64, attempt: u32) {
        self.attempts.insert(index, attempt);
        if control.push_retry(index, attempt) {
            self.pushed += 1;
        } else {
            self.overflow.push_back((index, attempt));
        }
    }

    /// Moves the retries that waited for room into the ring, in order, as far as it has
    /// room; wakes the workers when any went in.
    pub(super) fn push_overflow(&mut self, control: &Control) {
        let mut pushed = false;
        while let Some(&(index, attempt)) = self.overflow.front() {
            if !control.push_retry(index, attempt) {
                break;
            }
            self.overflow.pop_front();
            self.pushed += 1;
            pushed = true;
        }
        if pushed {
            control.bump();
        }
    }

    /// Nobody claims or holds a chunk, and nothing waits to be claimed: the slots of the
    /// `live` workers are idle, every new chunk of the posting's `chunks` is claimed, and
    /// no retry waits, in the ring or here.
    pub(super) fn quiet(
        &self,
        control: &Control,
        chunks: u64,
        static_workers: usize,
        live: impl Iterator<Item = usize>,
    ) -> bool {
        self.overflow.is_empty()
            && control.retries_empty()
            && control.claims_exhausted(chunks, static_workers)
            && { live }.all(|w| control.view(w).state == ClaimState::Idle)
    }

    /// Queues again the chunks that lost their claim with a dead worker (it died between
    /// taking one and naming it in its slot): the posting's `missing` chunks, once nobody
    /// is claiming. Each keeps the attempt it had.
    pub(super) fn requeue_lost(&mut self, control: &Control, missing: &[u64]) {
        for &k in missing {
            let attempt = self.attempt(k);
            self.requeue(control, k, attempt);
        }
        if !missing.is_empty() {
            control.bump();
        }
    }
}

/// The posting's chunks (of `chunks`) not marked done in its table.
pub(super) fn missing(table: &ChunkTable<'_>, chunks: u64) -> Vec<u64> {
    (0..chunks).filter(|&k| !table.is_done(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::control::{Posting, RETRY_CAPACITY, TableLayout, control_len};
    use crate::engine::shm::SharedRegion;

    /// A real control block and chunk table for `workers` workers and `chunks` chunks: the
    /// parent's view, a worker's own mapping of the control block, and the region.
    fn queue(workers: usize, chunks: u64) -> (SharedRegion, Control, Control, TableLayout) {
        let mut region = SharedRegion::with_control(control_len(workers)).unwrap();
        let layout = TableLayout::after(0, chunks, 1, 0);
        region.reset(layout.end()).unwrap();
        let parent = region.control().unwrap();
        let worker = Control::map(region.fd(), None).unwrap();
        parent.open(&Posting::unit_chunks(1, chunks, workers as u64), 0);
        for w in 0..workers {
            assert!(worker.enter(w, 1));
        }
        (region, parent, worker, layout)
    }

    #[test]
    fn a_dead_claim_holders_chunk_is_blamed_and_goes_first_to_the_next_claimer() {
        let (region, parent, worker, layout) = queue(2, 4);
        let map = region.map().unwrap();
        let table = ChunkTable::new(&map, layout).unwrap();
        assert_eq!(worker.claim(0, 4, None), Some((0, 0)));
        worker.running(0);
        // Worker 0 dies running chunk 0: its slot, read after the reap, names it.
        let held = claimed(parent.view(0), 4, &table).unwrap();
        assert_eq!(
            held,
            Claimed {
                index: 0,
                attempt: 0,
                running: true
            }
        );
        let mut retries = Retries::default();
        retries.requeue(&parent, held.index, held.attempt + 1);
        parent.reset_slot(0);
        assert_eq!(retries.pushed, 1);
        assert_eq!(retries.attempt(0), 1);
        assert_eq!(
            worker.claim(1, 4, None),
            Some((0, 1)),
            "the retry goes before the next new chunk"
        );
        assert_eq!(worker.claim(1, 4, None), Some((1, 0)));
    }

    #[test]
    fn a_claim_not_running_yet_or_already_done_is_not_blamed() {
        let (region, parent, worker, layout) = queue(2, 4);
        let map = region.map().unwrap();
        let table = ChunkTable::new(&map, layout).unwrap();
        // Claimed, but waiting (streaming's limit, or not started): handed back unblamed.
        assert_eq!(worker.claim(0, 4, None), Some((0, 0)));
        let waiting = claimed(parent.view(0), 4, &table).unwrap();
        assert!(!waiting.running);
        // Done, then died before its slot said so: it held nothing.
        assert_eq!(worker.claim(1, 4, None), Some((1, 0)));
        worker.running(1);
        table.set_done(1, None);
        assert_eq!(claimed(parent.view(1), 4, &table), None);
        // An idle slot holds nothing, whatever chunk it last named.
        parent.reset_slot(1);
        assert_eq!(claimed(parent.view(1), 4, &table), None);
    }

    #[test]
    fn a_chunk_whose_holder_died_between_claim_and_slot_write_is_found_once_all_is_quiet() {
        let (region, parent, worker, layout) = queue(2, 3);
        let map = region.map().unwrap();
        let table = ChunkTable::new(&map, layout).unwrap();
        let mut retries = Retries::default();
        // Worker 0 takes chunk 0 and finishes it; worker 1 takes chunk 1, and worker 0
        // chunk 2 (the last new one).
        assert_eq!(worker.claim(0, 3, None), Some((0, 0)));
        table.set_done(0, None);
        assert_eq!(worker.claim(1, 3, None), Some((1, 0)));
        assert_eq!(worker.claim(0, 3, None), Some((2, 0)));
        // Worker 0 dies after its atomic add took chunk 2 but before its slot named it:
        // its reaped slot names nothing (the slot write undone here stands for that).
        parent.reset_slot(0);
        assert_eq!(claimed(parent.view(0), 3, &table), None);
        // While worker 1 still runs chunk 1, nothing is queued again: it may yet finish.
        worker.running(1);
        let live = || [0, 1].into_iter();
        assert!(!retries.quiet(&parent, 3, 0, live()));
        table.set_done(1, None);
        worker.finished(1, 1, 10, 1);
        parent.reset_slot(1);
        // Now nobody claims or holds a chunk: the lost one is found and queued again,
        // unblamed (it never ran).
        assert!(retries.quiet(&parent, 3, 0, live()));
        let missing = missing(&table, 3);
        assert_eq!(missing, vec![2]);
        retries.requeue_lost(&parent, &missing);
        assert!(!retries.quiet(&parent, 3, 0, live()), "a retry waits");
        assert_eq!(worker.claim(1, 3, None), Some((2, 0)));
        table.set_done(2, None);
        assert!(super::missing(&table, 3).is_empty());
    }

    #[test]
    fn retries_past_the_rings_capacity_wait_and_go_in_order_as_room_is_made() {
        let extra = 3;
        let chunks = RETRY_CAPACITY + extra;
        let (_region, parent, worker, _layout) = queue(1, chunks);
        let mut retries = Retries::default();
        for k in 0..chunks {
            retries.requeue(&parent, k, 1);
        }
        assert_eq!(retries.pushed, RETRY_CAPACITY);
        assert!(
            !retries.quiet(&parent, chunks, 0, std::iter::empty()),
            "retries wait beside the ring"
        );
        // No room yet: nothing moves.
        retries.push_overflow(&parent);
        assert_eq!(retries.pushed, RETRY_CAPACITY);
        // A worker takes two; two of those waiting go in, the third still waits.
        assert_eq!(worker.claim(0, chunks, None), Some((0, 1)));
        assert_eq!(worker.claim(0, chunks, None), Some((1, 1)));
        retries.push_overflow(&parent);
        assert_eq!(retries.pushed, RETRY_CAPACITY + 2);
        let mut order: Vec<u64> = (2..RETRY_CAPACITY + 2)
            .map(|_| worker.claim(0, chunks, None).unwrap().0)
            .collect();
        retries.push_overflow(&parent);
        assert_eq!(retries.pushed, chunks);
        order.push(worker.claim(0, chunks, None).unwrap().0);
        assert_eq!(
            order,
            (2..chunks).collect::<Vec<_>>(),
            "in the order queued"
        );
        // Then the new chunks, none of which is left: the queue is drained.
        assert_eq!(worker.claim(0, chunks, None), Some((0, 0)));
    }
}
