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
