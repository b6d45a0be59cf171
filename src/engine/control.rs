//! The control block: the shared-memory queue that workers claim chunks from.
//!
//! With `--dispatch queue` (the default) no message crosses a channel per chunk. The parent
//! writes a *posting* (the job's chunk geometry, how many chunks, where the results go) into
//! a small control area at the start of the shared memfd; every worker maps it once and
//! claims chunks with one atomic add on `next`, runs them, and marks them done in a
//! per-chunk table beside the results. ipc-channel stays the control plane: handshake, a
//! job's spec when it changes, errors, shutdown, and death detection (a closed channel).
//!
//! # Layout
//! - page 0, the header: the hot words each on a cache line of their own (`next`, the retry
//!   list's head, `done`, the futex words), then the posting's fields;
//! - one 128-byte slot per worker (its claim: which chunk, which attempt, since when; its
//!   counters), written only by that worker, read by the parent;
//! - a ring of [`RETRY_CAPACITY`] re-queued chunks, written by the parent, drained by the
//!   workers before they claim new chunks.
//!
//! The per-chunk table ([`ChunkTable`]: a done byte and a reduction per chunk, a done
//! count per streaming window, and, when someone iterates over the chunks as they finish,
//! a completion log) lives in the results mapping, after the results.
//!
//! # Memory ordering
//! - **Claim** (`next.fetch_add`, retry `head` compare-exchange): `AcqRel`. The retry entry
//!   is written by the parent before it publishes `tail` with `Release`; a worker loads
//!   `tail` with `Acquire`, so the entry it reads is the one the parent wrote.
//! - **Done**: a worker writes a chunk's results with plain stores, then its done byte with
//!   `Release`; the parent loads it with `Acquire` before reading the results, so it sees
//!   every byte the worker wrote. `done` (elements) is a hint for when to look; the bytes
//!   are the truth.
//! - **Posting**: the parent writes the posting's fields while no worker is inside a posting
//!   (it waits for every slot's `posting` to leave the old one), then publishes
//!   `posting_state` with `Release`. A worker loads it with `Acquire`, announces itself in
//!   its slot and reads the state again, both `SeqCst`; the parent ends a posting by storing
//!   `posting_state` and then loading every slot, both `SeqCst`. Either the worker sees the
//!   end, or the parent sees the worker inside and waits for it (Dekker's argument), so a
//!   straggler never claims from the next posting's counters.
//! - **Sleeping**: a worker counts itself in `sleepers` and reads `epoch` again (`SeqCst`)
//!   before `FUTEX_WAIT` on `epoch`; the parent bumps `epoch` and then reads `sleepers`
//!   (`SeqCst`), and wakes only when someone sleeps. The same pattern, mirrored, decides
//!   whether a worker sends the parent a `Wake` message (`parent_waiting`).
//! - **Completion log** (only in a posting with `log` set): exactly one worker sets a
//!   chunk's done byte from 0 (a `swap` there, a plain store without a log), so even two
//!   copies of a chunk could not both think they finished it first (supervision never
//!   lets two run at once anyway: a chunk is queued again only once its holder is reaped,
//!   or when nobody holds or claims any). That worker takes a log position with one
//!   `fetch_add` and stores `index + 1` there, both `SeqCst`, after the done byte and
//!   before `done`. The parent loads the count and the entries `SeqCst`, so an entry it
//!   sees comes after the chunk's results (it reads them then). Waking the parent is the
//!   `parent_waiting` pattern above: the worker stores its entry and then swaps
//!   `parent_waiting`; the parent stores `parent_waiting` and then looks at the log; one
//!   of them sees the other. A position taken by a worker that died before storing its
//!   entry stays 0; the parent skips it, and at the end of the posting delivers every
//!   chunk whose done byte is set and that it has not seen in the log.
//! - A worker that dies between claiming and recording its claim leaves a chunk nobody
//!   holds; the parent finds it by reading the done bytes once nobody is claiming, and
//!   queues it again. Re-running a chunk is harmless: it writes the same bytes and the same
//!   reduction.
//!
//! This module holds the unsafe code of the queue: references to atomics in shared memory
//! and the futex system calls. Everything else uses its safe API.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::shm::{Mapping, SharedRegion};
use crate::engine::sys::OsCounts;

/// Bytes of the header page.
const HEADER: usize = 4096;
/// Bytes of one worker's slot (three cache lines: the claim, then the counters).
const SLOT: usize = 192;
/// Re-queued chunks the ring holds at once; more wait in the parent until there is room.
pub(crate) const RETRY_CAPACITY: u64 = 4096;
/// The posting word's low bit: set while the posting is open for claims.
const OPEN: u64 = 1;

/// Header offsets: the hot words one per cache line.
mod at {
    pub(super) const NEXT: usize = 0;
    pub(super) const RETRY_HEAD: usize = 64;
    pub(super) const RETRY_TAIL: usize = 72;
    pub(super) const DONE: usize = 128;
    /// `u32` futex word: bumped for anything a waiting worker should look at.
    pub(super) const EPOCH: usize = 192;
    pub(super) const SLEEPERS: usize = 196;
    pub(super) const PARENT_WAITING: usize = 200;
    pub(super) const POSTING: usize = 256;
    pub(super) const LIMIT: usize = 264;
    pub(super) const SHUTDOWN: usize = 272;
    pub(super) const DEATHS: usize = 280;
    // Written once per posting, read by workers after they joined it.
    pub(super) const CONTROL_LEN: usize = 512;
    pub(super) const SLOTS: usize = 520;
    pub(super) const JOB: usize = 528;
    pub(super) const SPEC_ID: usize = 536;
    pub(super) const CHANNEL: usize = 544;
    pub(super) const SCHEDULE: usize = 552;
    pub(super) const START: usize = 560;
    pub(super) const N: usize = 568;
    pub(super) const SIZE: usize = 576;
    pub(super) const WORKERS: usize = 584;
    pub(super) const BOUNDARY: usize = 592;
    pub(super) const ID_BASE: usize = 600;
    pub(super) const CHUNKS: usize = 608;
    pub(super) const REGION_LEN: usize = 616;
    pub(super) const TABLE_AT: usize = 624;
    pub(super) const RING: usize = 632;
    pub(super) const WINDOW_ELEMS: usize = 640;
    pub(super) const RECYCLE_CHUNKS: usize = 648;
    pub(super) const RECYCLE_RSS: usize = 656;
    pub(super) const LOG: usize = 664;
    /// 1 when workers should advise their results mapping `MADV_HUGEPAGE` (shared memory
    /// transparent huge pages for `huge_pages`), written once before any worker starts.
    pub(super) const HUGE_ADVISE: usize = 672;
    pub(super) const TRACE: usize = 680;
}

/// Slot offsets (from the slot's start).
mod slot {
    /// The claim: 0 none, else `chunk index + 1`.
    pub(super) const CLAIM: usize = 0;
    /// What the claim is: [`super::ClaimState`].
    pub(super) const STATE: usize = 8;
    pub(super) const ATTEMPT: usize = 16;
    /// CLOCK_MONOTONIC nanoseconds when the claimed chunk started running.
    pub(super) const SINCE: usize = 24;
    /// The posting the worker is inside, 0 when outside any.
    pub(super) const POSTING: usize = 32;
    /// Static schedule: the next chunk index of this worker.
    pub(super) const STATIC_NEXT: usize = 40;
    /// The id of the last job spec the parent announced for this worker (0: none yet): set
    /// before the spec is sent, so that a worker asleep between jobs wakes and reads it
    /// instead of leaving the parent blocked on a full socket until its sleep times out.
    pub(super) const MAIL: usize = 48;
    // Counters, written by the worker, read by the parent.
    pub(super) const CHUNKS: usize = 64;
    pub(super) const ELEMENTS: usize = 72;
    pub(super) const COMPUTE_NS: usize = 80;
    pub(super) const GAP_NS: usize = 88;
    pub(super) const WAITS: usize = 96;
    pub(super) const WAKES: usize = 104;
    pub(super) const CLAIMS: usize = 112;
    /// CLOCK_MONOTONIC nanoseconds when it last finished a chunk.
    pub(super) const LAST_DONE: usize = 120;
    /// CPU time the process used inside postings, in nanoseconds.
    pub(super) const CPU_NS: usize = 128;
    /// Its peak resident memory so far, in KiB.
    pub(super) const MAXRSS_KIB: usize = 136;
    /// Nanoseconds its workload's set-up took in this posting.
    pub(super) const SETUP_NS: usize = 144;
    /// Minor page faults of the process inside postings (`getrusage`).
    pub(super) const MINFLT: usize = 152;
    /// Major page faults of the process inside postings.
    pub(super) const MAJFLT: usize = 160;
    /// Voluntary context switches of the process inside postings.
    pub(super) const NVCSW: usize = 168;
    /// Involuntary context switches of the process inside postings.
    pub(super) const NIVCSW: usize = 176;
}

/// What a worker's claim slot says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimState {
    /// Outside the claim loop.
    Idle = 0,
    /// Taking a chunk: the slot's chunk is not known yet.
    Claiming = 1,
    /// Running the slot's chunk since `since`.
    Running = 2,
    /// Holding the slot's chunk until the streaming limit lets it run.
    Waiting = 3,
    /// Its kernel panicked on the slot's chunk; waiting for the parent's decision.
    Panicked = 4,
}

impl ClaimState {
    fn from_u64(v: u64) -> Self {
        match v {
            1 => ClaimState::Claiming,
            2 => ClaimState::Running,
            3 => ClaimState::Waiting,
            4 => ClaimState::Panicked,
            _ => ClaimState::Idle,
        }
    }
}

/// What a worker's slot holds, as the parent reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotView {
    /// The chunk index claimed, if any.
    pub(crate) chunk: Option<u64>,
    pub(crate) state: ClaimState,
    pub(crate) attempt: u32,
    /// When the chunk started (CLOCK_MONOTONIC ns).
    pub(crate) since_ns: u64,
}

/// A worker's counters for the current posting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SlotCounters {
    pub(crate) chunks: u64,
    pub(crate) elements: u64,
    pub(crate) compute_ns: u64,
    /// Time between chunks: claiming, and waiting for work.
    pub(crate) gap_ns: u64,
    /// Futex waits (the worker went to sleep).
    pub(crate) waits: u64,
    /// `Wake` messages it sent the parent.
    pub(crate) wakes: u64,
    /// Claims it made (new and retried chunks).
    pub(crate) claims: u64,
    /// When it last finished a chunk (CLOCK_MONOTONIC ns, 0 never).
    pub(crate) last_done_ns: u64,
    /// CPU time the process used inside postings, in nanoseconds.
    pub(crate) cpu_ns: u64,
    /// Its peak resident memory so far, in KiB (0: never measured).
    pub(crate) maxrss_kib: u64,
    /// Nanoseconds its workload's set-up took.
    pub(crate) setup_ns: u64,
    /// Page faults and context switches of the process inside postings.
    pub(crate) os: OsCounts,
}

/// The words of the control block the parent checks, as read in one pass
/// ([`Control::snapshot`]): shared memory any worker (and any kernel in it) can write, so
/// none is trusted before [`Bounds::check`] passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The posting word: `id << 1 | OPEN` while open.
    pub(crate) posting_word: u64,
    /// The posting's fields as the workers read them.
    pub(crate) posting: Posting,
    pub(crate) control_len: u64,
    pub(crate) slots_word: u64,
    /// The claim counter.
    pub(crate) next: u64,
    /// Elements done.
    pub(crate) done: u64,
    pub(crate) retry_head: u64,
    pub(crate) retry_tail: u64,
    /// The live workers' slots, raw.
    pub(crate) slots: Vec<RawSlot>,
}

/// One worker's claim slot, raw (see [`Snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawSlot {
    /// 0, or `chunk index + 1`.
    pub(crate) claim: u64,
    pub(crate) state: u64,
    pub(crate) attempt: u64,
    pub(crate) since_ns: u64,
    pub(crate) posting: u64,
    pub(crate) static_next: u64,
}

/// What the parent knows the control block may hold while its posting is open: what it
/// wrote itself, and the bounds of what workers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// The open posting, as the parent wrote it (its `limit` moves and is not checked).
    pub(crate) posting: Posting,
    /// The area's length and slots, as the parent sized them.
    pub(crate) control_len: u64,
    pub(crate) slots: u64,
    /// Workers following the static schedule (the first ones).
    pub(crate) static_workers: usize,
    /// Retries the parent queued in this posting: the ring's `tail`.
    pub(crate) pushed: u64,
    /// Processes that may have joined the posting: each can push `next` one past the last
    /// chunk at most once.
    pub(crate) claimers: u64,
    /// `next`, `done` and the ring's `head` as last seen: none of them goes back.
    pub(crate) next: u64,
    pub(crate) done: u64,
    pub(crate) head: u64,
    /// CLOCK_MONOTONIC now (read after the snapshot): no chunk started later.
    pub(crate) now_ns: u64,
}

impl Bounds {
    /// Checks `s` against the bounds; on a value the posting cannot have, says which in
    /// words, and which slot (a worker's index) held it, if one did.
    pub(crate) fn check(&self, s: &Snapshot) -> Result<(), (String, Option<usize>)> {
        let p = &self.posting;
        let bad = |what: String| Err((what, None));
        if s.posting_word != p.id << 1 | OPEN {
            return bad(format!(
                "the posting word holds {:#x}, not posting {} open",
                s.posting_word, p.id
            ));
        }
        if (s.control_len, s.slots_word) != (self.control_len, self.slots) {
            return bad(format!(
                "the block's size words say {} bytes and {} slots, not {} and {}",
                s.control_len, s.slots_word, self.control_len, self.slots
            ));
        }
        let changed = s
            .posting
            .named()
            .into_iter()
            .zip(p.named())
            .find(|(a, b)| a != b);
        if let Some(((name, got), (_, wrote))) = changed {
            return bad(format!(
                "the posting's `{name}` word holds {got}, not the {wrote} procpool wrote"
            ));
        }
        let most = p.chunks.saturating_add(self.claimers);
        if s.next < self.next || s.next > most {
            return bad(format!(
                "the claim counter `next` holds {}, {}",
                s.next,
                if s.next < self.next {
                    format!("less than the {} it held before", self.next)
                } else {
                    format!("beyond the posting's {} chunks", p.chunks)
                }
            ));
        }
        let len = p.n.saturating_sub(p.start);
        if s.done < self.done || s.done > len {
            return bad(format!(
                "the done count holds {} elements, {}",
                s.done,
                if s.done < self.done {
                    format!("less than the {} it held before", self.done)
                } else {
                    format!("more than the posting's {len}")
                }
            ));
        }
        if s.retry_tail != self.pushed || s.retry_head > s.retry_tail || s.retry_head < self.head {
            return bad(format!(
                "the retry ring's head and tail hold {} and {}; procpool queued {} retries",
                s.retry_head, s.retry_tail, self.pushed
            ));
        }
        for (w, slot) in s.slots.iter().enumerate() {
            let statically = w < self.static_workers;
            let problem = if slot.claim > p.chunks {
                Some(format!(
                    "names chunk index {} of a posting of {} chunks",
                    slot.claim - 1,
                    p.chunks
                ))
            } else if slot.state > ClaimState::Panicked as u64 {
                Some(format!("holds claim state {}", slot.state))
            } else if slot.attempt > 0xffff {
                Some(format!("holds attempt {}", slot.attempt))
            } else if slot.since_ns > self.now_ns {
                Some(format!(
                    "says its chunk started {} ns from now",
                    slot.since_ns - self.now_ns
                ))
            } else if slot.posting > p.id {
                Some(format!(
                    "says it is inside posting {} (the open one is {})",
                    slot.posting, p.id
                ))
            } else if statically && slot.static_next >= p.chunks.saturating_add(p.workers) {
                Some(format!("holds static position {}", slot.static_next))
            } else if !statically && slot.static_next != u64::MAX {
                Some(format!(
                    "holds a static position ({}) outside the static schedule",
                    slot.static_next
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err((format!("worker {w}'s claim slot {problem}"), Some(w)));
            }
        }
        Ok(())
    }
}

/// The posting's fields: one job (or one phase of it) as the workers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Posting {
    /// Posting id (≥ 1, increasing).
    pub(crate) id: u64,
    /// The pool's job number.
    pub(crate) job: u64,
    /// Which `JobSpec` the workers run (sent over the channel when it changes).
    pub(crate) spec_id: u64,
    /// Chunks come over the channel, not from this queue.
    pub(crate) channel: bool,
    /// 0 static, 1 dynamic, 2 guided.
    pub(crate) schedule: u64,
    /// First element of the posting.
    pub(crate) start: u64,
    /// One past the last element.
    pub(crate) n: u64,
    /// Chunk length (minimum, for guided).
    pub(crate) size: u64,
    pub(crate) workers: u64,
    /// Chunks never cross a multiple of this (`u64::MAX`: no windows).
    pub(crate) boundary: u64,
    /// Id of the posting's first chunk (its index 0).
    pub(crate) id_base: u64,
    /// Chunks in the posting.
    pub(crate) chunks: u64,
    /// Bytes of the results mapping.
    pub(crate) region_len: u64,
    /// Where the chunk table starts in the results mapping.
    pub(crate) table_at: u64,
    /// Streaming ring: window slots, and elements per window (1 and `n` without).
    pub(crate) ring: u64,
    pub(crate) window_elems: u64,
    /// Streaming: chunks from this index on may not run yet (`u64::MAX`: no limit).
    pub(crate) limit: u64,
    /// A worker process retires after this many chunks (0: never).
    pub(crate) recycle_chunks: u64,
    /// A worker process retires once its resident memory passes this many bytes (0: never).
    pub(crate) recycle_rss: u64,
    /// Someone iterates over the chunks as they finish: the worker that marks a chunk
    /// done also appends it to the table's completion log, and wakes a sleeping parent.
    pub(crate) log: bool,
    /// Someone wants the job's timeline: the worker that finishes a chunk also writes its
    /// trace record (worker, attempt, start, end) in the table, before the done byte.
    pub(crate) trace: bool,
}

impl Posting {
    /// The fields workers read, named (all but the id, which the posting word holds, and
    /// the streaming limit, which moves).
    fn named(&self) -> [(&'static str, u64); 19] {
        [
            ("job", self.job),
            ("spec_id", self.spec_id),
            ("channel", u64::from(self.channel)),
            ("schedule", self.schedule),
            ("start", self.start),
            ("n", self.n),
            ("size", self.size),
            ("workers", self.workers),
            ("boundary", self.boundary),
            ("id_base", self.id_base),
            ("chunks", self.chunks),
            ("region_len", self.region_len),
            ("table_at", self.table_at),
            ("ring", self.ring),
            ("window_elems", self.window_elems),
            ("recycle_chunks", self.recycle_chunks),
            ("recycle_rss", self.recycle_rss),
            ("log", u64::from(self.log)),
            ("trace", u64::from(self.trace)),
        ]
    }

    /// Posting `id` of `chunks` one-element chunks, dynamic, for `workers` workers, with
    /// no chunk table (tests and `procpool ipc-bench`, which only claim).
    pub(crate) fn unit_chunks(id: u64, chunks: u64, workers: u64) -> Self {
        Posting {
            id,
            chunks,
            n: chunks,
            size: 1,
            workers,
            schedule: 1,
            boundary: u64::MAX,
            ring: 1,
            window_elems: chunks,
            limit: u64::MAX,
            ..Posting::default()
        }
    }
}

/// Bytes of the control area for `workers` slots, a whole number of pages.
pub(crate) fn control_len(workers: usize) -> u64 {
    let bytes = HEADER as u64 + workers as u64 * SLOT as u64 + RETRY_CAPACITY * 8;
    bytes.next_multiple_of(4096)
}

impl SharedRegion {
    /// Maps the region's control area (here, not in `shm.rs`: the region knows its bytes,
    /// the queue what they mean).
    pub(crate) fn control(&self) -> io::Result<Control> {
        Control::map(self.fd(), Some(self.control_bytes()))
    }
}

/// The control area of a pool, mapped in the parent or in a worker.
#[derive(Debug)]
pub(crate) struct Control {
    map: Mapping,
    slots: usize,
}

impl Control {
    /// Maps the control area at the start of the memfd `fd`. The parent passes the length
    /// it sized; a worker passes `None` and reads it from the header.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: Option<u64>) -> io::Result<Self> {
        let len = match len {
            Some(len) => len,
            None => {
                let first = Mapping::new(fd, HEADER as u64)?;
                let len = Control {
                    map: first,
                    slots: 0,
                }
                .word(at::CONTROL_LEN)
                .load(Ordering::Acquire);
                if len < HEADER as u64 || !len.is_multiple_of(4096) || len > 1 << 30 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the control area says it is {len} bytes long"),
                    ));
                }
                len
            }
        };
        let map = Mapping::new(fd, len)?;
        let slots = (len as usize - HEADER - RETRY_CAPACITY as usize * 8) / SLOT;
        let control = Control { map, slots };
        control.word(at::CONTROL_LEN).store(len, Ordering::Release);
        control
            .word(at::SLOTS)
            .store(slots as u64, Ordering::Relaxed);
        Ok(control)
    }

    /// The `u64` at byte `offset`.
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.map.len(),
            "word {offset}"
        );
        // SAFETY: in bounds and 8-aligned (checked above; the mapping starts on a page). The
        // control area is never handed out as a byte slice: every process touches it only
        // through atomics, so no non-atomic access races with this one. The mapping lives
        // as long as `self`, which the reference borrows.
        unsafe { AtomicU64::from_ptr(self.map.as_ptr().add(offset).cast()) }
    }

    /// The `u32` at byte `offset` (a futex word).
    fn word32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.map.len(),
            "word {offset}"
        );
        // SAFETY: as in `word`, for a 4-aligned u32.
        unsafe { AtomicU32::from_ptr(self.map.as_ptr().add(offset).cast()) }
    }

    fn slot_word(&self, w: usize, field: usize) -> &AtomicU64 {
        assert!(w < self.slots, "slot {w} of {}", self.slots);
        self.word(HEADER + w * SLOT + field)
    }

    fn retry_entry(&self, index: u64) -> &AtomicU64 {
        let at = HEADER + self.slots * SLOT + (index % RETRY_CAPACITY) as usize * 8;
        self.word(at)
    }

    /// Bytes of the area (the results start here in the memfd).
    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Worker slots in the area.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    // ----- the parent's side -----

    /// Writes `posting` and opens it. Only while no worker is inside a posting (see
    /// [`Control::close`]). Counters, claims, the retry ring and `next` start from zero.
    pub(crate) fn open(&self, p: &Posting, static_workers: usize) {
        for (offset, value) in [
            (at::JOB, p.job),
            (at::SPEC_ID, p.spec_id),
            (at::CHANNEL, u64::from(p.channel)),
            (at::SCHEDULE, p.schedule),
            (at::START, p.start),
            (at::N, p.n),
            (at::SIZE, p.size),
            (at::WORKERS, p.workers),
            (at::BOUNDARY, p.boundary),
            (at::ID_BASE, p.id_base),
            (at::CHUNKS, p.chunks),
            (at::REGION_LEN, p.region_len),
            (at::TABLE_AT, p.table_at),
            (at::RING, p.ring),
            (at::WINDOW_ELEMS, p.window_elems),
            (at::NEXT, 0),
            (at::RETRY_HEAD, 0),
            (at::RETRY_TAIL, 0),
            (at::DONE, 0),
            (at::DEATHS, 0),
            (at::LIMIT, p.limit),
            (at::RECYCLE_CHUNKS, p.recycle_chunks),
            (at::RECYCLE_RSS, p.recycle_rss),
            (at::LOG, u64::from(p.log)),
            (at::TRACE, u64::from(p.trace)),
        ] {
            self.word(offset).store(value, Ordering::Relaxed);
        }
        for w in 0..self.slots {
            self.reset_slot(w);
            let first = if w < static_workers {
                w as u64
            } else {
                u64::MAX
            };
            self.slot_word(w, slot::STATIC_NEXT)
                .store(first, Ordering::Relaxed);
        }
        self.word(at::POSTING)
            .store(p.id << 1 | OPEN, Ordering::Release);
        self.bump();
    }

    /// Clears slot `w`'s claim and counters (its worker is dead and reaped, or outside).
    pub(crate) fn reset_slot(&self, w: usize) {
        for field in [
            slot::CLAIM,
            slot::STATE,
            slot::ATTEMPT,
            slot::SINCE,
            slot::POSTING,
            slot::CHUNKS,
            slot::ELEMENTS,
            slot::COMPUTE_NS,
            slot::GAP_NS,
            slot::WAITS,
            slot::WAKES,
            slot::CLAIMS,
            slot::LAST_DONE,
            slot::CPU_NS,
            slot::MAXRSS_KIB,
            slot::SETUP_NS,
            slot::MINFLT,
            slot::MAJFLT,
            slot::NVCSW,
            slot::NIVCSW,
        ] {
            self.slot_word(w, field).store(0, Ordering::Relaxed);
        }
    }

    /// Closes the open posting: no worker joins it any more. The caller then waits until
    /// [`Control::inside`] is false for every live worker before opening the next.
    pub(crate) fn close(&self) {
        let word = self.word(at::POSTING);
        let p = word.load(Ordering::Relaxed);
        word.store(p & !OPEN, Ordering::SeqCst);
        self.bump();
    }

    /// Whether worker `w` is inside posting `id`.
    pub(crate) fn inside(&self, w: usize, id: u64) -> bool {
        self.slot_word(w, slot::POSTING).load(Ordering::SeqCst) == id
    }

    /// Undoes [`Control::shut_down`] for a fresh set of workers (the old ones are reaped):
    /// no posting open, every slot clear.
    pub(crate) fn restart(&self) {
        self.word(at::SHUTDOWN).store(0, Ordering::SeqCst);
        self.word(at::POSTING).store(0, Ordering::SeqCst);
        for w in 0..self.slots {
            self.reset_slot(w);
        }
    }

    /// Asks every worker to exit.
    pub(crate) fn shut_down(&self) {
        self.word(at::SHUTDOWN).store(1, Ordering::SeqCst);
        self.bump();
    }

    /// Tells waiting workers to look again (new retries, a moved limit, a new posting).
    /// Wakes them only if one sleeps. Returns whether it made a `FUTEX_WAKE` call.
    pub(crate) fn bump(&self) -> bool {
        self.word32(at::EPOCH).fetch_add(1, Ordering::SeqCst);
        if self.word32(at::SLEEPERS).load(Ordering::SeqCst) > 0 {
            futex_wake(self.word32(at::EPOCH));
            return true;
        }
        false
    }

    /// Announces that job spec `spec_id` is about to be sent to each of `workers`, then
    /// wakes the workers once: a sleeping worker then reads its channel at once. A spec
    /// larger than the channel's socket buffer can only be sent while the worker reads it.
    /// One wake for them all: a wake per worker would wake every sleeper each time, a
    /// thousand workers a million times.
    pub(crate) fn announce_spec(&self, workers: impl IntoIterator<Item = usize>, spec_id: u64) {
        for w in workers {
            self.slot_word(w, slot::MAIL)
                .store(spec_id, Ordering::SeqCst);
        }
        // The epoch moves after the announcements: a worker about to sleep sees it move
        // (its futex wait returns at once), so the wake cannot be lost.
        self.bump();
    }

    /// The last job spec announced for worker `w` (0: none).
    pub(crate) fn announced_spec(&self, w: usize) -> u64 {
        self.slot_word(w, slot::MAIL).load(Ordering::SeqCst)
    }

    /// Queues chunk `index` (attempt `attempt`) for any worker to take before new chunks.
    /// Returns false when the ring is full (the caller keeps it and tries later).
    pub(crate) fn push_retry(&self, index: u64, attempt: u32) -> bool {
        let head = self.word(at::RETRY_HEAD).load(Ordering::Acquire);
        let tail = self.word(at::RETRY_TAIL).load(Ordering::Relaxed);
        // (A head past the tail was written by someone else: the audit stops the job.)
        if tail < head || tail - head >= RETRY_CAPACITY {
            return false;
        }
        let entry = index << 16 | u64::from(attempt.min(0xffff));
        self.retry_entry(tail).store(entry, Ordering::Relaxed);
        self.word(at::RETRY_TAIL).store(tail + 1, Ordering::Release);
        true
    }

    /// Whether the retry ring is empty.
    pub(crate) fn retries_empty(&self) -> bool {
        self.word(at::RETRY_HEAD).load(Ordering::Acquire)
            >= self.word(at::RETRY_TAIL).load(Ordering::Acquire)
    }

    /// Elements reported done so far (a hint: see the module docs).
    pub(crate) fn done_elements(&self) -> u64 {
        self.word(at::DONE).load(Ordering::Acquire)
    }

    /// Whether every new chunk has been claimed (those of the static schedule included).
    pub(crate) fn claims_exhausted(&self, chunks: u64, static_workers: usize) -> bool {
        if static_workers > 0 {
            return (0..static_workers)
                .all(|w| self.slot_word(w, slot::STATIC_NEXT).load(Ordering::Acquire) >= chunks);
        }
        self.word(at::NEXT).load(Ordering::Acquire) >= chunks
    }

    /// Moves the static schedule of slot `w` past chunk `index` (its worker died holding it;
    /// the chunk itself goes to the retry ring).
    pub(crate) fn skip_static(&self, w: usize, index: u64, workers: u64) {
        let word = self.slot_word(w, slot::STATIC_NEXT);
        let next = word.load(Ordering::Relaxed);
        if next <= index {
            word.store(index + workers, Ordering::Relaxed);
        }
    }

    /// Lets chunks up to (not including) index `limit` run (streaming).
    pub(crate) fn set_limit(&self, limit: u64) {
        self.word(at::LIMIT).store(limit, Ordering::Release);
        self.bump();
    }

    /// Records that a worker was lost in this posting: idle workers then wake the parent,
    /// which looks for chunks nobody holds.
    pub(crate) fn note_death(&self) {
        self.word(at::DEATHS).store(1, Ordering::SeqCst);
    }

    /// Announces the parent is about to sleep; then check again before sleeping.
    pub(crate) fn parent_sleeps(&self) {
        self.word32(at::PARENT_WAITING).store(1, Ordering::SeqCst);
    }

    /// The parent is awake again.
    pub(crate) fn parent_awake(&self) {
        self.word32(at::PARENT_WAITING).store(0, Ordering::SeqCst);
    }

    /// Slot `w`'s claim.
    pub(crate) fn view(&self, w: usize) -> SlotView {
        let state = ClaimState::from_u64(self.slot_word(w, slot::STATE).load(Ordering::Acquire));
        let claim = self.slot_word(w, slot::CLAIM).load(Ordering::Acquire);
        SlotView {
            chunk: claim.checked_sub(1),
            state,
            attempt: self.slot_word(w, slot::ATTEMPT).load(Ordering::Acquire) as u32,
            since_ns: self.slot_word(w, slot::SINCE).load(Ordering::Acquire),
        }
    }

    /// Slot `w`'s counters.
    pub(crate) fn counters(&self, w: usize) -> SlotCounters {
        let get = |f| self.slot_word(w, f).load(Ordering::Acquire);
        SlotCounters {
            chunks: get(slot::CHUNKS),
            elements: get(slot::ELEMENTS),
            compute_ns: get(slot::COMPUTE_NS),
            gap_ns: get(slot::GAP_NS),
            waits: get(slot::WAITS),
            wakes: get(slot::WAKES),
            claims: get(slot::CLAIMS),
            last_done_ns: get(slot::LAST_DONE),
            cpu_ns: get(slot::CPU_NS),
            maxrss_kib: get(slot::MAXRSS_KIB),
            setup_ns: get(slot::SETUP_NS),
            os: OsCounts {
                minor_faults: get(slot::MINFLT),
                major_faults: get(slot::MAJFLT),
                voluntary_switches: get(slot::NVCSW),
                involuntary_switches: get(slot::NIVCSW),
            },
        }
    }

    /// Reads what [`Bounds::check`] needs of the block, for the first `live` slots.
    pub(crate) fn snapshot(&self, id: u64, live: usize) -> Snapshot {
        let get = |f| self.word(f).load(Ordering::Acquire);
        Snapshot {
            posting_word: get(at::POSTING),
            posting: self.posting(id),
            control_len: get(at::CONTROL_LEN),
            slots_word: get(at::SLOTS),
            next: get(at::NEXT),
            done: get(at::DONE),
            retry_head: get(at::RETRY_HEAD),
            retry_tail: get(at::RETRY_TAIL),
            slots: (0..live.min(self.slots))
                .map(|w| {
                    let get = |f| self.slot_word(w, f).load(Ordering::Acquire);
                    RawSlot {
                        claim: get(slot::CLAIM),
                        state: get(slot::STATE),
                        attempt: get(slot::ATTEMPT),
                        since_ns: get(slot::SINCE),
                        posting: get(slot::POSTING),
                        static_next: get(slot::STATIC_NEXT),
                    }
                })
                .collect(),
        }
    }

    // ----- the worker's side -----

    /// Overwrites the claim counter `next` with garbage (`--inject scribble`: what a kernel
    /// writing outside its chunk could do).
    pub(crate) fn scribble_next(&self) {
        self.word(at::NEXT)
            .store(0x5a5a_5a5a_5a5a_5a5a, Ordering::SeqCst);
    }

    /// Zeroes every word of the control block (`--inject wipe`).
    pub(crate) fn wipe(&self) {
        for offset in (0..self.map.len()).step_by(8) {
            self.word(offset).store(0, Ordering::SeqCst);
        }
    }

    /// Whether the parent asked every worker to exit.
    pub(crate) fn shutting_down(&self) -> bool {
        self.word(at::SHUTDOWN).load(Ordering::Acquire) != 0
    }

    /// The futex word's value now.
    pub(crate) fn epoch(&self) -> u32 {
        self.word32(at::EPOCH).load(Ordering::Acquire)
    }

    /// The open posting's id, or `None` while none is open.
    pub(crate) fn open_posting(&self) -> Option<u64> {
        let p = self.word(at::POSTING).load(Ordering::Acquire);
        (p & OPEN != 0).then_some(p >> 1)
    }

    /// Worker `w` enters posting `id`: true if it is still open (then its fields may be
    /// read and chunks claimed until [`Control::leave`]).
    pub(crate) fn enter(&self, w: usize, id: u64) -> bool {
        self.slot_word(w, slot::POSTING).store(id, Ordering::SeqCst);
        let p = self.word(at::POSTING).load(Ordering::SeqCst);
        if p == id << 1 | OPEN {
            return true;
        }
        self.slot_word(w, slot::POSTING).store(0, Ordering::SeqCst);
        false
    }

    /// Worker `w` adds the CPU time, page faults and context switches it used inside a
    /// posting, and its peak memory; read by the worker itself, so the parent never reads
    /// /proc per job.
    pub(crate) fn add_usage(&self, w: usize, cpu_ns: u64, os: OsCounts, maxrss_kib: u64) {
        let add = |field, v: u64| {
            let word = self.slot_word(w, field);
            word.store(word.load(Ordering::Relaxed) + v, Ordering::Release);
        };
        add(slot::CPU_NS, cpu_ns);
        add(slot::MINFLT, os.minor_faults);
        add(slot::MAJFLT, os.major_faults);
        add(slot::NVCSW, os.voluntary_switches);
        add(slot::NIVCSW, os.involuntary_switches);
        self.slot_word(w, slot::MAXRSS_KIB)
            .store(maxrss_kib, Ordering::Release);
    }

    /// Tells workers to advise their results mapping `MADV_HUGEPAGE` (before they start).
    pub(crate) fn set_huge_advise(&self) {
        self.word(at::HUGE_ADVISE).store(1, Ordering::Release);
    }

    /// Whether workers should advise their results mapping `MADV_HUGEPAGE`.
    pub(crate) fn huge_advise(&self) -> bool {
        self.word(at::HUGE_ADVISE).load(Ordering::Acquire) == 1
    }

    /// Worker `w` ran its workload's set-up for `ns` nanoseconds.
    pub(crate) fn add_setup(&self, w: usize, ns: u64) {
        let word = self.slot_word(w, slot::SETUP_NS);
        word.store(word.load(Ordering::Relaxed) + ns, Ordering::Release);
    }

    /// Worker `w` leaves its posting.
    pub(crate) fn leave(&self, w: usize) {
        self.set_state(w, ClaimState::Idle);
        self.slot_word(w, slot::POSTING).store(0, Ordering::SeqCst);
    }

    /// The open posting's fields (call between [`Control::enter`] and [`Control::leave`]).
    pub(crate) fn posting(&self, id: u64) -> Posting {
        let get = |f| self.word(f).load(Ordering::Relaxed);
        Posting {
            id,
            job: get(at::JOB),
            spec_id: get(at::SPEC_ID),
            channel: get(at::CHANNEL) != 0,
            schedule: get(at::SCHEDULE),
            start: get(at::START),
            n: get(at::N),
            size: get(at::SIZE),
            workers: get(at::WORKERS),
            boundary: get(at::BOUNDARY),
            id_base: get(at::ID_BASE),
            chunks: get(at::CHUNKS),
            region_len: get(at::REGION_LEN),
            table_at: get(at::TABLE_AT),
            ring: get(at::RING),
            window_elems: get(at::WINDOW_ELEMS),
            limit: get(at::LIMIT),
            recycle_chunks: get(at::RECYCLE_CHUNKS),
            recycle_rss: get(at::RECYCLE_RSS),
            log: get(at::LOG) != 0,
            trace: get(at::TRACE) != 0,
        }
    }

    fn set_state(&self, w: usize, state: ClaimState) {
        self.slot_word(w, slot::STATE)
            .store(state as u64, Ordering::Release);
    }

    /// Worker `w` takes its next chunk: a re-queued one first, then a new one (its own next
    /// block with the static schedule). Returns `(index, attempt)`, or `None` when there is
    /// nothing to claim.
    pub(crate) fn claim(
        &self,
        w: usize,
        chunks: u64,
        statically: Option<u64>,
    ) -> Option<(u64, u32)> {
        self.set_state(w, ClaimState::Claiming);
        let head = self.word(at::RETRY_HEAD);
        loop {
            let h = head.load(Ordering::Acquire);
            if h >= self.word(at::RETRY_TAIL).load(Ordering::Acquire) {
                break;
            }
            let entry = self.retry_entry(h).load(Ordering::Relaxed);
            if head
                .compare_exchange(h, h + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // An entry naming no chunk of the posting was written by someone else than
                // the parent: skip it (the parent notices the damage and stops the job).
                if entry >> 16 >= chunks {
                    continue;
                }
                return Some(self.record(w, entry >> 16, (entry & 0xffff) as u32));
            }
        }
        let index = match statically {
            Some(workers) => {
                let word = self.slot_word(w, slot::STATIC_NEXT);
                let k = word.load(Ordering::Relaxed);
                if k >= chunks {
                    return None;
                }
                // Record first: a death after this store leaves the claim named in the slot,
                // and the parent moves this slot's schedule past it.
                self.record(w, k, 0);
                word.store(k + workers, Ordering::Release);
                return Some((k, 0));
            }
            None => {
                let next = self.word(at::NEXT);
                // A look first, so a finished job's counter does not grow without bound.
                if next.load(Ordering::Relaxed) >= chunks {
                    return None;
                }
                next.fetch_add(1, Ordering::AcqRel)
            }
        };
        if index >= chunks {
            return None;
        }
        Some(self.record(w, index, 0))
    }

    fn record(&self, w: usize, index: u64, attempt: u32) -> (u64, u32) {
        self.slot_word(w, slot::ATTEMPT)
            .store(u64::from(attempt), Ordering::Relaxed);
        self.slot_word(w, slot::CLAIM)
            .store(index + 1, Ordering::Release);
        self.slot_word(w, slot::CLAIMS)
            .fetch_add(1, Ordering::Relaxed);
        self.set_state(w, ClaimState::Waiting);
        (index, attempt)
    }

    /// Whether chunk `index` may run (streaming: its window's slot is free).
    pub(crate) fn may_run(&self, index: u64) -> bool {
        index < self.word(at::LIMIT).load(Ordering::Acquire)
    }

    /// Worker `w` starts running its claimed chunk now; returns when (CLOCK_MONOTONIC ns).
    pub(crate) fn running(&self, w: usize) -> u64 {
        let now = monotonic_ns();
        self.slot_word(w, slot::SINCE).store(now, Ordering::Relaxed);
        self.set_state(w, ClaimState::Running);
        now
    }

    /// Worker `w`'s kernel panicked on its claimed chunk.
    pub(crate) fn panicked(&self, w: usize) {
        self.set_state(w, ClaimState::Panicked);
    }

    /// Worker `w` finished a chunk of `elements` at `now_ns` (CLOCK_MONOTONIC; its done
    /// byte is already set): counts it. Returns the elements done in the whole posting,
    /// this chunk included.
    pub(crate) fn finished(&self, w: usize, elements: u64, compute_ns: u64, now_ns: u64) -> u64 {
        let add = |f, v| {
            let word = self.slot_word(w, f);
            word.store(word.load(Ordering::Relaxed) + v, Ordering::Release);
        };
        add(slot::CHUNKS, 1);
        add(slot::ELEMENTS, elements);
        add(slot::COMPUTE_NS, compute_ns);
        self.slot_word(w, slot::LAST_DONE)
            .store(now_ns, Ordering::Relaxed);
        self.slot_word(w, slot::CLAIM).store(0, Ordering::Release);
        self.word(at::DONE).fetch_add(elements, Ordering::SeqCst) + elements
    }

    /// Adds time worker `w` spent between chunks.
    pub(crate) fn add_gap(&self, w: usize, ns: u64) {
        let word = self.slot_word(w, slot::GAP_NS);
        word.store(word.load(Ordering::Relaxed) + ns, Ordering::Relaxed);
    }

    /// Whether a worker should wake the parent now, and if so marks it awake (exactly one
    /// worker sends the `Wake`). Counts the wake in slot `w`.
    pub(crate) fn take_parent_waiting(&self, w: usize) -> bool {
        let woke = self.word32(at::PARENT_WAITING).swap(0, Ordering::SeqCst) == 1;
        if woke {
            self.slot_word(w, slot::WAKES)
                .fetch_add(1, Ordering::Relaxed);
        }
        woke
    }

    /// Whether a worker was lost in this posting (idle workers then wake the parent).
    pub(crate) fn deaths_noted(&self) -> bool {
        self.word(at::DEATHS).load(Ordering::SeqCst) != 0
    }

    /// Worker `w` waits until the epoch moves from `seen`: spins for `spin` checks, then
    /// sleeps on the futex for at most `timeout`. Returns whether it slept.
    pub(crate) fn wait(&self, w: usize, seen: u32, spin: u32, timeout: Duration) -> bool {
        let epoch = self.word32(at::EPOCH);
        for i in 0..spin {
            if epoch.load(Ordering::Acquire) != seen {
                return false;
            }
            if i % 64 == 63 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let sleepers = self.word32(at::SLEEPERS);
        sleepers.fetch_add(1, Ordering::SeqCst);
        let slept = epoch.load(Ordering::SeqCst) == seen;
        if slept {
            self.slot_word(w, slot::WAITS)
                .fetch_add(1, Ordering::Relaxed);
            let _ = futex_wait(epoch, seen, timeout);
        }
        sleepers.fetch_sub(1, Ordering::SeqCst);
        slept
    }
}

/// The per-chunk table of a posting, in the results mapping after the results: one done
/// byte per chunk (0 not done, 1 done, 2 done with a reduction), one accumulator slot per
/// chunk when the job reduces (`acc_slot` bytes: a length word, then the encoded
/// accumulator in words), one done count per streaming window slot, and, with `log`, the
/// completion log (a count on a cache line of its own, then one entry per chunk:
/// `index + 1` in the order chunks finished, 0 while not written), and, with `trace`, one
/// trace record per chunk (two words: the start, and the duration, worker slot and attempt
/// packed; see `TRACE_RECORD`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableLayout {
    /// Offset of the table in the results mapping (8-aligned).
    pub(crate) at: u64,
    pub(crate) chunks: u64,
    pub(crate) ring: u64,
    /// Bytes of one chunk's accumulator slot, a multiple of 8 (0: the job does not reduce).
    pub(crate) acc_slot: u64,
    /// Whether the table ends with a completion log.
    pub(crate) log: bool,
    /// Whether the table ends with the chunks' trace records.
    pub(crate) trace: bool,
}

impl TableLayout {
    /// A table after `results` bytes of results.
    pub(crate) fn after(results: u64, chunks: u64, ring: u64, acc_slot: u64) -> Self {
        TableLayout {
            at: results.next_multiple_of(64),
            chunks,
            ring,
            acc_slot,
            log: false,
            trace: false,
        }
    }

    /// The same table, with a completion log after it when `log`.
    pub(crate) fn with_log(self, log: bool) -> Self {
        TableLayout { log, ..self }
    }

    /// The same table, with the chunks' trace records at its end when `trace`.
    pub(crate) fn with_trace(self, trace: bool) -> Self {
        TableLayout { trace, ..self }
    }

    fn flags_at(&self) -> u64 {
        self.at
    }
    fn reductions_at(&self) -> u64 {
        self.at + self.chunks.next_multiple_of(8)
    }
    fn windows_at(&self) -> u64 {
        self.reductions_at() + self.chunks * self.acc_slot
    }

    fn log_at(&self) -> u64 {
        (self.windows_at() + self.ring * 8).next_multiple_of(64)
    }
    fn log_entries_at(&self) -> u64 {
        self.log_at() + 64
    }

    /// One past the log (or the window counts without one).
    fn log_end(&self) -> u64 {
        if self.log {
            self.log_entries_at() + self.chunks * 8
        } else {
            self.windows_at() + self.ring * 8
        }
    }

    fn trace_at(&self) -> u64 {
        self.log_end().next_multiple_of(64)
    }

    /// One past the table's last byte: the results mapping's length.
    pub(crate) fn end(&self) -> u64 {
        if self.trace {
            self.trace_at() + self.chunks * TRACE_RECORD
        } else {
            self.log_end()
        }
    }
}

/// The low half of an accumulator slot's length word when the chunk has no accumulator.
const NO_ACC: u64 = 0xffff_ffff;

/// Bytes of one chunk's trace record: two words, the start, and the duration (40 bits, up
/// to about 18 minutes), the worker slot (16 bits) and the attempt (8 bits) packed: the
/// parent reads every record, so they are kept small (on `spin --us 0 --chunk-size 1`,
/// 64-byte records, one per cache line, cost as much as 32-byte ones: false sharing was
/// not the cost).
const TRACE_RECORD: u64 = 16;
/// The longest duration a record holds, in ns; longer ones are cut to it.
const TRACE_MAX_NS: u64 = (1 << 40) - 1;

/// A chunk's trace record as the parent reads it: worker slot, attempt, start and end
/// (CLOCK_MONOTONIC ns). Slots above 65535 and attempts above 255 are stored as those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceRecord {
    pub(crate) slot: usize,
    pub(crate) attempt: u32,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

/// A view of a posting's chunk table (see [`TableLayout`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkTable<'m> {
    map: &'m Mapping,
    layout: TableLayout,
    /// The worker slot marking chunks done through this view (`by`), recorded beside each
    /// accumulator so a damaged one can be traced to who finished the chunk.
    by: Option<usize>,
}

impl<'m> ChunkTable<'m> {
    /// The table `layout` in `map`. Fails when it does not fit in the mapping.
    pub(crate) fn new(map: &'m Mapping, layout: TableLayout) -> Option<Self> {
        (layout.at.is_multiple_of(8) && layout.end() <= map.len() as u64).then_some(ChunkTable {
            map,
            layout,
            by: None,
        })
    }

    /// The same view, for worker slot `slot` marking chunks done.
    pub(crate) fn by(self, slot: usize) -> Self {
        ChunkTable {
            by: Some(slot),
            ..self
        }
    }

    fn flag(&self, index: u64) -> &AtomicU8 {
        assert!(index < self.layout.chunks, "chunk {index}");
        let at = (self.layout.flags_at() + index) as usize;
        // SAFETY: in bounds (checked above and in `new`). The table is never handed out as
        // a byte slice: the result slices end before `layout.at`, and every process touches
        // the table through atomics only. The reference borrows the mapping.
        unsafe { AtomicU8::from_ptr(self.map.as_ptr().add(at)) }
    }

    fn u64_at(&self, at: u64) -> &AtomicU64 {
        assert!(
            at.is_multiple_of(8) && at + 8 <= self.layout.end(),
            "table word {at}"
        );
        // SAFETY: as in `flag`, for an 8-aligned u64 inside the table.
        unsafe { AtomicU64::from_ptr(self.map.as_ptr().add(at as usize).cast()) }
    }

    /// Zeroes the table (the parent, before opening a posting nobody is inside). The trace
    /// records are left as they are: one is read only once its chunk is done, and the
    /// worker that marks it done writes the whole record first.
    pub(crate) fn clear(&self) {
        let words = (self.layout.log_end() - self.layout.at) / 8;
        for i in 0..words {
            self.u64_at(self.layout.at + i * 8)
                .store(0, Ordering::Relaxed);
        }
    }

    /// Marks chunk `index` done, with its encoded accumulator (after its results are
    /// written). An accumulator longer than the slot is not stored (the worker checked
    /// it against the same size first).
    pub(crate) fn set_done(&self, index: u64, reduction: Option<&[u8]>) {
        let flag = self.store_acc(index, reduction);
        self.flag(index).store(flag, Ordering::Release);
    }

    /// Writes chunk `index`'s accumulator into its slot, if it has one that fits; returns
    /// the done byte that goes with it (2 with an accumulator, else 1). The slot's length
    /// word holds the length in its low half ([`NO_ACC`] without one) and the finishing
    /// worker's slot + 1 above it.
    fn store_acc(&self, index: u64, reduction: Option<&[u8]>) -> u8 {
        let slot = self.layout.acc_slot;
        let by = self.by.map_or(0, |w| (w as u64 + 1).min(0xffff_ffff)) << 32;
        let base = self.layout.reductions_at() + index * slot;
        match reduction {
            Some(acc) if slot >= 8 && acc.len() as u64 <= slot - 8 => {
                self.u64_at(base)
                    .store(acc.len() as u64 | by, Ordering::Relaxed);
                for (k, word) in acc.chunks(8).enumerate() {
                    let mut bytes = [0u8; 8];
                    bytes[..word.len()].copy_from_slice(word);
                    self.u64_at(base + 8 + k as u64 * 8)
                        .store(u64::from_le_bytes(bytes), Ordering::Relaxed);
                }
                2
            }
            _ => {
                if slot >= 8 {
                    self.u64_at(base).store(NO_ACC | by, Ordering::Relaxed);
                }
                1
            }
        }
    }

    /// The worker slot that marked chunk `index` done, when the job reduces and the
    /// table says (read after the done byte).
    pub(crate) fn finisher(&self, index: u64) -> Option<usize> {
        let slot = self.layout.acc_slot;
        if slot < 8 || !self.is_done(index) {
            return None;
        }
        let word = self
            .u64_at(self.layout.reductions_at() + index * slot)
            .load(Ordering::Relaxed);
        usize::try_from((word >> 32).checked_sub(1)?).ok()
    }

    /// Marks chunk `index` done like [`ChunkTable::set_done`], in a
    /// posting with a completion log: the done byte is swapped rather than stored, and the
    /// caller that marked it first (exactly one does) appends it to the log. Returns
    /// whether this call was first. (`set_done` stays a plain store: a locked swap on a
    /// line both workers write costs tiny chunks more than nobody iterating should pay.)
    pub(crate) fn set_done_and_log(&self, index: u64, reduction: Option<&[u8]>) -> bool {
        let flag = self.store_acc(index, reduction);
        let first = self.flag(index).swap(flag, Ordering::AcqRel) == 0;
        if first {
            self.log_push(index);
        }
        first
    }

    /// Writes chunk `index`'s trace record (the worker that finished it, before its done
    /// byte, whose `Release` publishes it). Nothing without a trace area.
    pub(crate) fn trace_record(&self, index: u64, r: TraceRecord) {
        if !self.layout.trace || index >= self.layout.chunks {
            return;
        }
        let base = self.layout.trace_at() + index * TRACE_RECORD;
        let dur = r.end_ns.saturating_sub(r.start_ns).min(TRACE_MAX_NS);
        let who = (r.slot as u64).min(0xffff) << 8 | u64::from(r.attempt.min(0xff));
        self.u64_at(base).store(r.start_ns, Ordering::Relaxed);
        self.u64_at(base + 8)
            .store(dur << 24 | who, Ordering::Relaxed);
    }

    /// Chunk `index`'s trace record, once the chunk is done (read after its done byte).
    pub(crate) fn trace_entry(&self, index: u64) -> Option<TraceRecord> {
        if !self.layout.trace || !self.is_done(index) {
            return None;
        }
        let base = self.layout.trace_at() + index * TRACE_RECORD;
        let start_ns = self.u64_at(base).load(Ordering::Relaxed);
        let packed = self.u64_at(base + 8).load(Ordering::Relaxed);
        Some(TraceRecord {
            slot: (packed >> 8 & 0xffff) as usize,
            attempt: (packed & 0xff) as u32,
            start_ns,
            end_ns: start_ns.saturating_add(packed >> 24),
        })
    }

    /// Whether chunk `index` is done.
    pub(crate) fn is_done(&self, index: u64) -> bool {
        self.flag(index).load(Ordering::Acquire) != 0
    }

    /// Chunk `index`'s encoded accumulator, if done with one. The length word is checked
    /// against the slot: the table is shared with the workers.
    pub(crate) fn reduction(&self, index: u64) -> Option<Vec<u8>> {
        if self.flag(index).load(Ordering::Acquire) != 2 {
            return None;
        }
        let slot = self.layout.acc_slot;
        let base = self.layout.reductions_at() + index * slot;
        let len = self.u64_at(base).load(Ordering::Relaxed) & NO_ACC;
        if slot < 8 || len > slot - 8 {
            return None;
        }
        let mut acc = Vec::with_capacity(len as usize);
        for k in 0..len.div_ceil(8) {
            let word = self.u64_at(base + 8 + k * 8).load(Ordering::Relaxed);
            acc.extend_from_slice(&word.to_le_bytes());
        }
        acc.truncate(len as usize);
        Some(acc)
    }

    /// Appends chunk `index` to the completion log (the worker that marked it done first).
    pub(crate) fn log_push(&self, index: u64) {
        if !self.layout.log {
            return;
        }
        let position = self
            .u64_at(self.layout.log_at())
            .fetch_add(1, Ordering::SeqCst);
        // Each chunk is logged once, so a position past the last entry cannot happen; a
        // table that says otherwise is not written outside its entries.
        if position < self.layout.chunks {
            self.u64_at(self.layout.log_entries_at() + position * 8)
                .store(index + 1, Ordering::SeqCst);
        }
    }

    /// Log positions taken so far (some entries may not be written yet).
    pub(crate) fn log_len(&self) -> u64 {
        if !self.layout.log {
            return 0;
        }
        self.u64_at(self.layout.log_at())
            .load(Ordering::SeqCst)
            .min(self.layout.chunks)
    }

    /// The chunk at log position `position`, once its entry is written.
    pub(crate) fn log_entry(&self, position: u64) -> Option<u64> {
        if !self.layout.log || position >= self.layout.chunks {
            return None;
        }
        self.u64_at(self.layout.log_entries_at() + position * 8)
            .load(Ordering::SeqCst)
            .checked_sub(1)
    }

    /// Adds `elements` to window slot `slot`'s done count; returns the new count.
    pub(crate) fn window_done(&self, slot: u64, elements: u64) -> u64 {
        self.u64_at(self.layout.windows_at() + (slot % self.layout.ring) * 8)
            .fetch_add(elements, Ordering::AcqRel)
            + elements
    }

    /// Resets window slot `slot`'s count (the parent, once its window is written).
    pub(crate) fn window_reset(&self, slot: u64) {
        self.u64_at(self.layout.windows_at() + (slot % self.layout.ring) * 8)
            .store(0, Ordering::Release);
    }
}

/// CPU time this process has used, in nanoseconds (CLOCK_PROCESS_CPUTIME_ID).
pub(crate) fn process_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine.
pub(crate) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The `u32` at byte `offset` of `map`, as an atomic (a futex word), for a mapping whose
/// page at `offset` every process touches only through atomics (`procpool ipc-bench`).
pub(crate) fn futex_word(map: &Mapping, offset: usize) -> &AtomicU32 {
    assert!(
        offset.is_multiple_of(4) && offset + 4 <= map.len(),
        "futex word {offset}"
    );
    // SAFETY: in bounds and 4-aligned (checked above; the mapping starts on a page). This
    // page is never handed out as a byte slice: both processes touch it only through these
    // atomics, so no non-atomic access races with them. The reference borrows the mapping,
    // which stays mapped as long as it lives.
    unsafe { AtomicU32::from_ptr(map.as_ptr().add(offset).cast()) }
}

/// How a [`futex_wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// It slept and was woken (or woke spuriously).
    Slept,
    /// The word no longer held the expected value: it did not sleep.
    Changed,
    /// It slept for the whole timeout.
    TimedOut,
}

/// Sleeps in `FUTEX_WAIT` while `word` holds `expected`, for at most `timeout`.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Woke {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: FUTEX_WAIT reads the u32 at `word` (a live, aligned atomic in a shared mapping;
    // not FUTEX_PRIVATE, since the other process wakes it) and sleeps only while it equals
    // `expected`; `ts` outlives the call. It writes no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == 0 {
        return Woke::Slept;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ETIMEDOUT) => Woke::TimedOut,
        // EAGAIN: the word had changed; EINTR: a signal. Either way the caller looks again.
        _ => Woke::Changed,
    }
}

/// Wakes every process waiting on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only wakes waiters on the address; it reads and writes no memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::shm::SharedRegion;

    fn control(workers: usize) -> (SharedRegion, Control, Control) {
        let region = SharedRegion::with_control(control_len(workers)).unwrap();
        let parent = region.control().unwrap();
        let worker = Control::map(region.fd(), None).unwrap();
        (region, parent, worker)
    }

    fn posting(id: u64, chunks: u64) -> Posting {
        Posting::unit_chunks(id, chunks, 2)
    }

    #[test]
    fn claims_are_unique_and_retries_go_first() {
        let (_region, parent, worker) = control(2);
        assert_eq!(worker.slots(), parent.slots());
        parent.open(&posting(1, 3), 0);
        assert_eq!(worker.open_posting(), Some(1));
        assert!(worker.enter(0, 1));
        assert_eq!(worker.claim(0, 3, None), Some((0, 0)));
        assert_eq!(parent.view(0).chunk, Some(0));
        assert!(parent.push_retry(7, 1));
        assert!(parent.push_retry(2, 2));
        assert_eq!(
            worker.claim(1, 3, None),
            Some((2, 2)),
            "retries first, and one naming no chunk is skipped"
        );
        assert_eq!(worker.claim(1, 3, None), Some((1, 0)));
        assert_eq!(worker.claim(0, 3, None), Some((2, 0)));
        assert_eq!(worker.claim(0, 3, None), None);
        assert!(parent.claims_exhausted(3, 0));
        parent.close();
        assert!(parent.inside(0, 1));
        worker.leave(0);
        assert!(!parent.inside(0, 1));
        assert!(!worker.enter(1, 1), "a closed posting cannot be entered");
    }

    fn bounds(control: &Control, p: Posting, pushed: u64) -> Bounds {
        Bounds {
            posting: p,
            control_len: control.len(),
            slots: control.slots() as u64,
            static_workers: 0,
            pushed,
            claimers: 2,
            next: 0,
            done: 0,
            head: 0,
            now_ns: monotonic_ns(),
        }
    }

    fn check(control: &Control, b: &Bounds) -> Result<(), (String, Option<usize>)> {
        let snap = control.snapshot(b.posting.id, 2);
        Bounds {
            now_ns: monotonic_ns(),
            ..*b
        }
        .check(&snap)
    }

    #[test]
    fn a_sound_block_passes_its_bounds_through_claims_retries_and_overshoot() {
        let (_region, parent, worker) = control(2);
        let p = posting(1, 3);
        parent.open(&p, 0);
        assert!(worker.enter(0, 1) && worker.enter(1, 1));
        let mut b = bounds(&parent, p, 0);
        assert_eq!(check(&parent, &b), Ok(()));
        assert_eq!(worker.claim(0, 3, None), Some((0, 0)));
        worker.running(0);
        worker.finished(0, 1, 5, monotonic_ns());
        assert!(parent.push_retry(0, 1));
        b.pushed = 1;
        assert_eq!(check(&parent, &b), Ok(()));
        // Both workers run off the end at once: `next` passes the chunks by one each.
        while worker.claim(0, 3, None).is_some() {}
        let next = parent.word(at::NEXT);
        next.fetch_add(2, Ordering::SeqCst);
        assert_eq!(check(&parent, &b), Ok(()));
        b.next = next.load(Ordering::SeqCst);
        b.done = 1;
        assert_eq!(check(&parent, &b), Ok(()));
    }

    #[test]
    fn values_no_posting_can_have_are_named() {
        let (_region, parent, worker) = control(2);
        let p = posting(1, 40);
        parent.open(&p, 0);
        let b = bounds(&parent, p, 0);
        let why = |c: &Control| check(c, &b).unwrap_err();

        worker.scribble_next();
        let (what, slot) = why(&parent);
        assert!(
            what.contains("`next` holds 6510615555426900570, beyond the posting's 40 chunks"),
            "{what}"
        );
        assert_eq!(slot, None);
        parent.word(at::NEXT).store(5, Ordering::SeqCst);
        let earlier = Bounds { next: 9, ..b };
        assert!(
            check(&parent, &earlier)
                .unwrap_err()
                .0
                .contains("less than the 9")
        );
        parent.word(at::NEXT).store(0, Ordering::SeqCst);

        parent.word(at::DONE).store(41, Ordering::SeqCst);
        assert!(why(&parent).0.contains("more than the posting's 40"));
        parent.word(at::DONE).store(0, Ordering::SeqCst);

        parent.word(at::RETRY_TAIL).store(7, Ordering::SeqCst);
        assert!(why(&parent).0.contains("procpool queued 0 retries"));
        parent.word(at::RETRY_TAIL).store(0, Ordering::SeqCst);

        parent.word(at::CHUNKS).store(4000, Ordering::SeqCst);
        assert_eq!(
            why(&parent).0,
            "the posting's `chunks` word holds 4000, not the 40 procpool wrote"
        );
        parent.word(at::CHUNKS).store(40, Ordering::SeqCst);

        parent.slot_word(1, slot::CLAIM).store(41, Ordering::SeqCst);
        let (what, slot) = why(&parent);
        assert_eq!(
            what,
            "worker 1's claim slot names chunk index 40 of a posting of 40 chunks"
        );
        assert_eq!(slot, Some(1));
        parent.slot_word(1, slot::CLAIM).store(40, Ordering::SeqCst);
        assert_eq!(check(&parent, &b), Ok(()), "the last chunk is a chunk");
        parent.slot_word(1, slot::STATE).store(9, Ordering::SeqCst);
        assert!(why(&parent).0.contains("claim state 9"));
        parent.slot_word(1, slot::STATE).store(0, Ordering::SeqCst);
        parent
            .slot_word(0, slot::SINCE)
            .store(u64::MAX, Ordering::SeqCst);
        assert!(why(&parent).0.contains("from now"));
        parent.slot_word(0, slot::SINCE).store(0, Ordering::SeqCst);
        assert_eq!(check(&parent, &b), Ok(()));

        worker.wipe();
        assert_eq!(
            why(&parent).0,
            "the posting word holds 0x0, not posting 1 open"
        );
    }

    #[test]
    fn static_claims_follow_the_slot_and_skip_what_a_dead_worker_held() {
        let (_region, parent, worker) = control(2);
        parent.open(&posting(1, 5), 2);
        let mine: Vec<_> = std::iter::from_fn(|| worker.claim(1, 5, Some(2))).collect();
        assert_eq!(mine, [(1, 0), (3, 0)]);
        assert_eq!(worker.claim(0, 5, Some(2)), Some((0, 0)));
        parent.skip_static(0, 0, 2);
        assert_eq!(worker.claim(0, 5, Some(2)), Some((2, 0)));
    }

    #[test]
    fn a_futex_wait_ends_when_the_parent_bumps_the_epoch() {
        let (region, parent, _) = control(1);
        let seen = parent.epoch();
        let fd = region.fd().try_clone_to_owned().unwrap();
        let waiter = std::thread::spawn(move || {
            let control = Control::map(std::os::fd::AsFd::as_fd(&fd), None).unwrap();
            control.wait(0, seen, 0, Duration::from_secs(20))
        });
        // Bump until the waiter is gone; it slept or saw the change.
        while !waiter.is_finished() {
            parent.bump();
            std::thread::sleep(Duration::from_millis(1));
        }
        waiter.join().unwrap();
        assert_ne!(parent.epoch(), seen);
    }

    #[test]
    fn the_table_marks_chunks_done_with_their_reductions() {
        let mut region = SharedRegion::with_control(control_len(1)).unwrap();
        let layout = TableLayout::after(100, 4, 2, 24);
        region.reset(layout.end()).unwrap();
        let map = region.map().unwrap();
        let table = ChunkTable::new(&map, layout).unwrap();
        let acc: Vec<u8> = (1..=13).collect();
        table.set_done(1, Some(&acc));
        table.set_done(2, None);
        // Longer than the slot's 16 bytes: done, without an accumulator.
        table.set_done(3, Some(&[7; 17]));
        assert!(!table.is_done(0) && table.is_done(1) && table.is_done(2));
        assert_eq!(
            (table.reduction(1), table.reduction(2)),
            (Some(acc.clone()), None)
        );
        assert_eq!(table.reduction(3), None);
        table.set_done(0, Some(&[]));
        assert_eq!(table.reduction(0), Some(vec![]));
        assert_eq!(table.finisher(1), None, "marked by no worker's view");
        let by = table.by(3);
        by.set_done(1, Some(&acc));
        by.set_done(2, None);
        assert_eq!((by.finisher(1), by.finisher(2)), (Some(3), Some(3)));
        assert_eq!(
            (by.reduction(1), by.reduction(2)),
            (Some(acc.clone()), None)
        );
        assert_eq!(table.window_done(3, 5), 5);
        assert_eq!(
            table.window_done(1, 5),
            10,
            "slot 3 of a ring of 2 is slot 1"
        );
        table.clear();
        assert!(!table.is_done(1));
        assert!(ChunkTable::new(&map, TableLayout::after(100, 1000, 2, 24)).is_none());
        // No log unless someone iterates: the table is as long as it always was.
        assert_eq!(table.log_len(), 0);
        table.log_push(1);
        assert_eq!((table.log_len(), table.log_entry(0)), (0, None));
    }

    #[test]
    fn trace_records_are_written_only_with_a_trace_area_and_read_once_done() {
        let mut region = SharedRegion::with_control(control_len(1)).unwrap();
        let plain = TableLayout::after(100, 4, 1, 0).with_log(true);
        let traced = plain.with_trace(true);
        assert_eq!(
            traced.end(),
            plain.end().next_multiple_of(64) + 4 * TRACE_RECORD
        );
        region.reset(traced.end()).unwrap();
        let map = region.map().unwrap();
        let record = TraceRecord {
            slot: 1,
            attempt: 2,
            start_ns: 10,
            end_ns: 30,
        };
        let table = ChunkTable::new(&map, plain).unwrap();
        table.trace_record(3, record);
        table.set_done(3, None);
        assert_eq!(table.trace_entry(3), None, "no trace area, nothing written");
        let table = ChunkTable::new(&map, traced).unwrap();
        table.clear();
        table.trace_record(2, record);
        assert_eq!(table.trace_entry(2), None, "not done yet");
        table.set_done(2, None);
        assert_eq!(table.trace_entry(2), Some(record));
        table.trace_record(9, record);
    }

    #[test]
    fn the_completion_log_follows_the_table_only_when_asked_for() {
        let plain = TableLayout::after(100, 3, 2, 8);
        let logged = plain.with_log(true);
        assert_eq!(plain.end(), 128 + 8 + 3 * 8 + 2 * 8);
        // The count on a cache line of its own, then one entry per chunk.
        assert_eq!(
            logged.end(),
            (plain.end().next_multiple_of(64)) + 64 + 3 * 8
        );
        let mut region = SharedRegion::with_control(control_len(1)).unwrap();
        region.reset(logged.end()).unwrap();
        let map = region.map().unwrap();
        let table = ChunkTable::new(&map, logged).unwrap();
        assert!(table.set_done_and_log(2, None));
        assert!(
            !table.set_done_and_log(2, None),
            "a second copy is not first"
        );
        assert_eq!((table.log_len(), table.log_entry(0)), (1, Some(2)));
        assert_eq!(table.log_entry(1), None, "not written yet");
        table.clear();
        assert_eq!((table.log_len(), table.log_entry(0)), (0, None));
    }
}
