//! Queue dispatch: workers claim chunks from the control block in shared memory.
//!
//! The parent opens a *posting* (the job's chunk geometry) in the control block and then
//! mostly sleeps: workers claim chunk indices with one atomic add each, run them, and mark
//! them done in the chunk table beside the results. The parent wakes when the job is done
//! (the worker that finishes it sends one `Wake`), when a worker dies (its channel closes),
//! when a chunk may have run past `chunk_timeout`, when a streaming window is complete or
//! written, or to look at the interrupt flag. No message crosses a channel per chunk.
//!
//! This is the supervisor's other dispatcher (see `supervise.rs`); supervision keeps the
//! channel path's promises, reading the workers' claim slots (the decisions are in
//! `claims.rs`, tested on a real control block):
//! - a dead worker's slot names the chunk it held; unless its done byte is set, the chunk
//!   goes to the retry ring (blamed, if it was running), which workers drain before
//!   claiming new chunks, and a replacement takes the same slot;
//! - a chunk running past `chunk_timeout` (its slot's start time) gets its worker killed,
//!   then the same;
//! - a chunk nobody holds and nobody finished (its worker died between claiming and
//!   recording the claim) is found when nobody is claiming, by reading the done bytes, and
//!   queued again;
//! - `--chunk-size auto` runs in two postings: probe chunks first, timed by the workers,
//!   then the rest in the chosen length;
//! - every turn of the loop checks the control block against what the posting allows
//!   (workers, and any kernel they run, can write it) and fails the job on a value out of
//!   bounds, naming it;
//! - a queue with chunks left that stands still past the stall limit gets its stopped
//!   workers killed and replaced, and the chunks nobody holds queued again (see
//!   [`super::watchdog`]).

use std::time::{Duration, Instant};

use super::auto_chunk::AutoProbe;
use super::claims::{self, Retries};
use super::each::LogReader;
use super::ledger::{HeldChunk, Lost};
use super::observe::{self, Event};
use super::supervise::{Dispatcher, Gone, JobCore, Progress, Why};
use super::trace::{TraceAttempt, TraceEventKind, TracePhase};
use super::watchdog::{self, Watch};
use super::window::Ring;
use super::{Finished, JobOptions, Pool, Tally, WorkerStats, spawn};
use crate::engine::control::{
    Bounds, ChunkTable, ClaimState, Posting, SlotCounters, Snapshot, TableLayout, monotonic_ns,
};
use crate::engine::protocol::{Dispatch, FromWorker};
use crate::engine::schedule::{Chunk, Dispenser, Geometry, Schedule};
use crate::error::{Error, Result};

/// The longest the loop sleeps without looking at the interrupt flag. A SIGINT or SIGTERM
/// that lands on the loop's own thread (the main thread, in the `procpool` command, where
/// the kernel delivers it when that thread sleeps) cuts the sleep short at once: the wait
/// returns on EINTR. This bounds the wait when it lands on another thread, or when a
/// library caller calls [`crate::Interrupt::request`] from one.
const INTERRUPT_TICK: Duration = Duration::from_millis(100);
/// How often an observer hears of progress.
const PROGRESS_TICK: Duration = Duration::from_millis(50);
/// How long the loop checks for the end of the job before it sleeps: a short job ends
/// without a wake-up.
const SPIN: Duration = Duration::from_micros(30);
/// Probe chunks per worker with `--chunk-size auto`.
const PROBES_PER_WORKER: u64 = 4;

/// The chunks of a job without a measured chunk size.
pub(super) fn geometry(dispenser: &Dispenser, n: u64, workers: usize) -> Geometry {
    Geometry::new(
        dispenser.schedule(),
        0,
        n,
        dispenser.chunk_size(),
        workers as u64,
        dispenser.boundary(),
        0,
    )
}

/// `--chunk-size auto`: the probes' geometry (dynamic, `0..end`), its chunk count, and
/// `end`.
pub(super) fn probe_plan(n: u64, workers: usize, boundary: u64) -> (Geometry, u64, u64) {
    let probe = AutoProbe::new(n, workers as u64, PROBES_PER_WORKER);
    let end = n.min(probe.probe_size * workers as u64 * PROBES_PER_WORKER);
    let g = Geometry::new(
        Schedule::Dynamic,
        0,
        end,
        probe.probe_size,
        workers as u64,
        boundary,
        0,
    );
    let chunks = g.chunks();
    (g, chunks, end)
}

/// A worker's counters summed over the job's postings and the processes in its slot.
#[derive(Default)]
struct Acc {
    c: SlotCounters,
}

impl Acc {
    fn add(&mut self, c: SlotCounters) {
        self.c.chunks += c.chunks;
        self.c.elements += c.elements;
        self.c.compute_ns += c.compute_ns;
        self.c.gap_ns += c.gap_ns;
        self.c.waits += c.waits;
        self.c.wakes += c.wakes;
        self.c.claims += c.claims;
        self.c.last_done_ns = self.c.last_done_ns.max(c.last_done_ns);
        self.c.cpu_ns += c.cpu_ns;
        self.c.maxrss_kib = self.c.maxrss_kib.max(c.maxrss_kib);
        self.c.setup_ns += c.setup_ns;
        self.c.os = self.c.os.plus(c.os);
    }
}

/// The control block's counters as the loop last saw them intact: none may go back.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// The next new chunk to claim.
    next: u64,
    /// Elements done.
    done: u64,
    /// The retry ring's head.
    head: u64,
}

/// Which posting of a job is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `--chunk-size auto`: the probe chunks, timed by the workers.
    Probing,
    /// The job's chunks (after the probes, the rest in the chosen length).
    Main,
}

/// What one turn of the loop found.
enum Turn {
    /// Nothing ended: go on.
    Again,
    /// The probe posting is done: choose the chunk length and post the rest.
    Probed,
    /// The job is done (or the caller stopped it).
    Finished,
}

/// The state of one job on the queue.
struct QueueJob<'f> {
    core: JobCore<'f>,
    schedule: Schedule,
    stage: Stage,
    /// Chunk length of the main posting (before a measured one is chosen: the default).
    size: u64,
    workers: u64,
    boundary: u64,
    posting: Posting,
    geometry: Geometry,
    table: TableLayout,
    static_workers: usize,
    /// Chunks of earlier postings (all done).
    chunks_before: u64,
    acc: Vec<Acc>,
    /// The chunks queued again in this posting.
    retries: Retries,
    parent_sleeps: u64,
    /// Set for a streamed job (`--output`).
    ring: Option<Ring>,
    last_progress: Instant,
    /// The posting's completion log as read so far (for the caller's callback).
    log: LogReader,
    /// The control block's counters as last seen intact in this posting.
    seen: Seen,
    /// The workers running a chunk when the control block was last seen intact: (slot,
    /// chunk index). One of them may write over it next.
    running: Vec<(usize, u64)>,
    watch: Watch,
}

impl QueueJob<'_> {
    fn phase_len(&self) -> u64 {
        self.posting.n - self.posting.start
    }

    /// The schedule workers follow in the current posting: the probes are dynamic.
    fn posting_schedule(&self) -> Schedule {
        match self.stage {
            Stage::Probing => Schedule::Dynamic,
            Stage::Main => self.schedule,
        }
    }
}

impl<'f> Dispatcher<'f> for QueueJob<'f> {
    fn core(&mut self) -> &mut JobCore<'f> {
        &mut self.core
    }

    fn lose(&mut self, pool: &mut Pool, gone: Gone) -> Result<Lost> {
        let (w, id, pid, cause) = (gone.w, gone.id, gone.pid, gone.cause);
        // The process is reaped: its slot holds its last word.
        let view = pool.control.view(w);
        self.acc[w].add(pool.control.counters(w));
        let mapping = pool.mapping.as_ref().ok_or(Error::Broken)?;
        let table = ChunkTable::new(mapping, self.table).ok_or(Error::Broken)?;
        let held = claims::claimed(view, self.posting.chunks, &table);
        let running = matches!(view.state, ClaimState::Running | ClaimState::Panicked);
        let held_chunk = held.map(|c| HeldChunk {
            chunk: self.geometry.chunk(c.index),
            attempt: c.attempt,
        });
        let blamed = held
            .filter(|c| c.running)
            .map(|c| self.geometry.chunk(c.index));
        if let Some(chunk) = blamed.filter(|_| view.since_ns > 0) {
            // The attempt that never finished: from its start in the claim slot to now.
            self.core
                .trace_unfinished(chunk, id, view.attempt, view.since_ns);
        }
        let chunk = blamed.map(|c| c.id);
        self.core
            .trace_event(gone.why.trace_kind(), Some(id), chunk, || {
                format!("pid {pid}: {cause}")
            });
        let (lost, again) = self
            .core
            .ledger
            .lose_claim(id, pid, cause, held_chunk, running)?;
        if let (Some(c), Some(again)) = (held, again) {
            let chunk = self.geometry.chunk(c.index).id;
            self.core
                .trace_event(TraceEventKind::Retry, None, Some(chunk), || {
                    format!("attempt {}", again.attempt)
                });
            self.retries.requeue(&pool.control, c.index, again.attempt);
            if self.static_workers > 0 {
                pool.control.skip_static(w, c.index, self.workers);
            }
        }
        pool.control.reset_slot(w);
        pool.control.note_death();
        self.retries.lost = true;
        pool.control.bump();
        Ok(lost)
    }

    fn panicked_chunk(&self, pool: &Pool, w: usize, id: u64) -> Option<Chunk> {
        let index = id
            .checked_sub(self.posting.id_base)
            .filter(|&k| k < self.posting.chunks);
        if index.is_none() || pool.control.view(w).chunk != index {
            return None;
        }
        index.map(|k| self.geometry.chunk(k))
    }

    fn message(&mut self, _: &mut Pool, w: usize, msg: FromWorker) -> Result<()> {
        Err(Error::Ipc(format!("worker {w} sent an unexpected {msg:?}")))
    }

    fn retiring(&mut self, _: &mut Pool, _: usize) {}

    fn retired(&mut self, pool: &mut Pool, w: usize) {
        // It left the job holding nothing: keep its counts.
        self.acc[w].add(pool.control.counters(w));
    }

    fn joined(&mut self, _: &mut Pool, _: usize, _: u32) {
        // It finds the posting by itself.
    }

    fn progress(&self, pool: &Pool) -> Progress {
        let done: u64 = (0..pool.workers.len())
            .map(|w| pool.control.counters(w).chunks)
            .sum::<u64>()
            + self.acc.iter().map(|a| a.c.chunks).sum::<u64>();
        Progress {
            chunks_done: done,
            chunks: self.chunks_before + self.posting.chunks,
            elements_done: (self.posting.start + pool.control.done_elements()).min(self.core.n),
        }
    }
}

impl Pool {
    /// Runs a job on the shared-memory queue: the workers claim its chunks themselves.
    pub(super) fn dispatch_queue(
        &mut self,
        mut core: JobCore<'_>,
        dispenser: Dispenser,
        options: &JobOptions,
        ring: Option<Ring>,
    ) -> Result<Finished> {
        let (n, workers) = (core.n, self.workers.len());
        let schedule = dispenser.schedule();
        let measured = options.auto_chunk && schedule != Schedule::Static && n > 0;
        let (geometry, first_end) = if measured {
            let mut probe = AutoProbe::new(n, workers as u64, PROBES_PER_WORKER);
            probe.floor = (4096 / u64::from(core.spec.elem_size.max(1))).max(1);
            probe.overhead_name = "dispatch";
            core.auto = Some(probe);
            let (g, _, end) = probe_plan(n, workers, dispenser.boundary());
            (g, end)
        } else {
            (geometry(&dispenser, n, workers), n)
        };
        self.send_spec(&mut core);
        let mut job = QueueJob {
            core,
            schedule,
            stage: if measured {
                Stage::Probing
            } else {
                Stage::Main
            },
            size: dispenser.chunk_size(),
            workers: workers as u64,
            boundary: dispenser.boundary(),
            posting: Posting::default(),
            table: TableLayout::after(0, 0, 1, 0),
            static_workers: if schedule == Schedule::Static {
                workers
            } else {
                0
            },
            chunks_before: 0,
            acc: (0..workers).map(|_| Acc::default()).collect(),
            retries: Retries::default(),
            parent_sleeps: 0,
            ring,
            last_progress: Instant::now(),
            log: LogReader::default(),
            seen: Seen::default(),
            running: Vec::new(),
            watch: Watch::new(),
            geometry: geometry.clone(),
        };
        self.post(&mut job, geometry, 0, first_end)?;

        // On an error the caller stops every worker, or closes the posting and the next job
        // waits for its workers (`quiesce.rs`); otherwise none stays inside.
        self.run_postings(&mut job)?;
        // The last look: a block written over at the end fails the job too.
        self.audit(&mut job)?;
        self.close_posting(job.posting.id);
        self.collect_posting(&mut job)?;
        // A worker that retired with the job's last chunks said so before it left its slot,
        // so its `Retiring` is waiting by now: read it, so that the worker is counted as
        // recycled, not found dead before the next job.
        self.take_waiting(&mut job)?;
        if !job.core.stopped() {
            job.core.tell_progress(self, n);
        }
        job.core.check_faults_fired(job.chunks_before)?;
        self.queue_finish(job)
    }

    /// The job's measurements, once its last posting is closed: the workers' own counts,
    /// summed over the postings.
    fn queue_finish(&mut self, mut job: QueueJob) -> Result<Finished> {
        let end = Instant::now();
        let wall = end - job.core.began;
        let end_ns = monotonic_ns();
        if job.core.trace.is_some() {
            self.collect_trace(&mut job);
        }
        // Stopped early: the chunks that were done, not those the postings had.
        let chunks = if job.core.stopped() {
            job.acc.iter().map(|a| a.c.chunks).sum()
        } else {
            job.chunks_before
        };
        let workers: Vec<WorkerStats> = (0..self.workers.len())
            .map(|w| {
                let a = &job.acc[w];
                // Counted by the worker itself around each posting, like its CPU time.
                let mut stats = self.worker_stats(w).with_os(Some(a.c.os));
                stats.chunks = a.c.chunks;
                stats.compute_s = a.c.compute_ns as f64 / 1e9;
                // Measured by the workers themselves, inside the job: the parent reads no
                // /proc file per job.
                stats.cpu_s = Some(a.c.cpu_ns as f64 / 1e9);
                // A worker that ran nothing this job has not said; /proc tells.
                stats.peak_rss_bytes = if a.c.maxrss_kib > 0 {
                    Some(a.c.maxrss_kib * 1024)
                } else {
                    crate::engine::sys::process_usage(stats.pid).map(|(_, rss)| rss)
                };
                stats.idle_end_s = if a.c.last_done_ns == 0 {
                    wall.as_secs_f64()
                } else {
                    (end_ns.saturating_sub(a.c.last_done_ns) as f64 / 1e9).min(wall.as_secs_f64())
                };
                stats.claims = a.c.claims;
                stats.dispatch_s = a.c.gap_ns as f64 / 1e9;
                stats.sleeps = a.c.waits;
                stats.setup_s = a.c.setup_ns as f64 / 1e9;
                stats
            })
            .collect();
        let sum = |f: fn(&Acc) -> u64| job.acc.iter().map(f).sum::<u64>();
        let done_chunks = sum(|a| a.c.chunks).max(1) as f64;
        let compute_ns = sum(|a| a.c.compute_ns) as f64;
        // Gaps are measured between a worker's chunks: one fewer than its chunks.
        let gaps = sum(|a| a.c.chunks.saturating_sub(1)).max(1) as f64;
        let dispatch_per_chunk_s = sum(|a| a.c.gap_ns) as f64 / gaps / 1e9;
        let tally = Tally {
            n: job.core.n,
            wall,
            workers,
            inflight: 1,
            chunk_size: job
                .core
                .auto
                .as_ref()
                .and_then(|a| a.result.as_ref())
                .map_or(job.size, |r| r.chosen),
            chunks,
            schedule: job.schedule,
            transport: job.core.spec.transport,
            dispatch: Dispatch::Queue,
            chunk_rtt_mean_s: compute_ns / done_chunks / 1e9 + dispatch_per_chunk_s,
            chunk_compute_mean_s: compute_ns / done_chunks / 1e9,
            dispatch_per_chunk_s,
            claims: sum(|a| a.c.claims),
            worker_sleeps: sum(|a| a.c.waits),
            parent_sleeps: job.parent_sleeps,
            wake_messages: sum(|a| a.c.wakes),
            ..Tally::default()
        };
        job.core.finish(self, tally)
    }

    /// Opens a posting for elements `start..end` cut by `geometry`, numbering its chunks on
    /// from the earlier postings'.
    fn post(&mut self, job: &mut QueueJob, geometry: Geometry, start: u64, end: u64) -> Result<()> {
        let elem_size = u64::from(job.core.spec.elem_size);
        let layout = job.core.spec.layout;
        let results = if job.core.spec.output {
            layout.region_elems(job.core.n) * elem_size
        } else {
            0
        };
        let chunks = geometry.chunks();
        let table = TableLayout::after(results, chunks, layout.ring, job.core.spec.reduce_slot)
            .with_log(job.core.each.is_some())
            .with_trace(job.core.trace.is_some());
        if table.end() > self.region.len() {
            // A measured chunk length needs a longer table than the probes had: grow the
            // region, keeping what the probes wrote.
            self.mapping = None;
            self.region.grow(table.end())?;
            self.mapping = Some(self.region.map()?);
        }
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let t = ChunkTable::new(mapping, table).ok_or(Error::Broken)?;
        t.clear();
        // Streaming: the window this posting starts in may be partly done already.
        if let Some(stream) = &job.ring {
            let we = stream.layout.window_elems;
            if !start.is_multiple_of(we) {
                t.window_done(start / we, start % we);
            }
        }
        let limit = match &job.ring {
            Some(s) => geometry
                .first_chunk_at((s.base + s.layout.ring).saturating_mul(s.layout.window_elems)),
            None => u64::MAX,
        };
        let id = self.next_posting;
        self.next_posting += 1;
        let posting = Posting {
            id,
            job: job.core.spec.job,
            spec_id: job.core.spec.spec_id,
            channel: false,
            schedule: match job.posting_schedule() {
                Schedule::Static => 0,
                Schedule::Dynamic => 1,
                Schedule::Guided => 2,
            },
            start,
            n: end,
            size: match job.stage {
                Stage::Probing => job.core.auto.as_ref().map_or(job.size, |a| a.probe_size),
                Stage::Main => job.size,
            },
            workers: job.workers,
            boundary: job.boundary,
            id_base: job.chunks_before,
            chunks,
            region_len: self.region.len(),
            table_at: table.at,
            ring: layout.ring,
            window_elems: layout.window_elems,
            limit,
            recycle_chunks: self.recycle.chunks,
            recycle_rss: self.recycle.rss,
            log: job.core.each.is_some(),
            trace: job.core.trace.is_some(),
        };
        job.posting = posting;
        if job.core.each.is_some() {
            job.log = LogReader::new(chunks);
        }
        job.geometry = geometry;
        job.table = table;
        job.retries.clear();
        job.seen = Seen::default();
        job.running.clear();
        job.watch.restart(Instant::now());
        self.control.open(&posting, job.static_workers);
        Ok(())
    }

    /// Ends a posting: adds up its workers' counters and its chunks' reductions.
    fn collect_posting(&mut self, job: &mut QueueJob) -> Result<()> {
        for w in 0..self.workers.len() {
            job.acc[w].add(self.control.counters(w));
            self.control.reset_slot(w);
        }
        self.collect_reductions(job)?;
        job.chunks_before += job.posting.chunks;
        Ok(())
    }

    /// Reads the posting's trace records into the job's trace (the finished attempts).
    /// Until the next posting clears the table: the last posting's are read after the
    /// job's wall time is taken, as the caller's share of the work.
    fn collect_trace(&self, job: &mut QueueJob) {
        if let Some(trace) = job.core.trace.as_mut()
            && let Some(t) = self
                .mapping
                .as_ref()
                .and_then(|m| ChunkTable::new(m, job.table))
        {
            trace
                .attempts
                .reserve(usize::try_from(job.posting.chunks).unwrap_or(0));
            for k in 0..job.posting.chunks {
                let Some(r) = t.trace_entry(k) else { continue };
                let chunk = job.geometry.chunk(k);
                trace.attempts.push(TraceAttempt {
                    chunk: chunk.id,
                    range: chunk.start..chunk.end,
                    worker: self.workers.get(r.slot).map_or(r.slot, |w| w.id),
                    attempt: r.attempt,
                    start_ns: r.start_ns,
                    end_ns: r.end_ns.max(r.start_ns),
                    finished: true,
                    compute_ns: Some(r.end_ns.saturating_sub(r.start_ns)),
                });
            }
        }
    }

    /// Reads the posting's chunk accumulators, when the job reduces. A chunk done without
    /// one (its slot in the chunk table written over) fails the job, naming the chunk and
    /// the worker that marked it done.
    fn collect_reductions(&mut self, job: &mut QueueJob) -> Result<()> {
        if job.core.spec.reduce_slot == 0 || job.core.stopped() {
            return Ok(());
        }
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let t = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let mut lacking = Vec::new();
        for k in 0..job.posting.chunks {
            let chunk = job.geometry.chunk(k);
            match t.reduction(k) {
                Some(acc) => job.core.reduced.push(super::ReducedChunk {
                    range: chunk.start..chunk.end,
                    acc,
                }),
                None => lacking.push((k, chunk)),
            }
        }
        let Some(&(k, ref chunk)) = lacking.first() else {
            return Ok(());
        };
        let who = match t.finisher(k).and_then(|w| self.workers.get(w)) {
            Some(slot) => format!("worker {} (pid {}) marked it done", slot.id, slot.pid),
            None => "no worker recorded finishing it".into(),
        };
        let more = match lacking.len() - 1 {
            0 => String::new(),
            others => format!(" and {} more", crate::units::count(others as u64, "chunk")),
        };
        Err(Error::QueueDamaged {
            what: format!(
                "the reduction lacks chunk {} (elements {}..{}){more}: its accumulator in the \
                 chunk table in shared memory is missing or damaged ({who})",
                chunk.id, chunk.start, chunk.end
            ),
            running: Vec::new(),
        })
    }

    /// Supervises the postings of a job until its last chunk is done.
    fn run_postings(&mut self, job: &mut QueueJob) -> Result<()> {
        loop {
            match self.queue_turn(job)? {
                Turn::Again => {}
                Turn::Probed => self.choose_and_repost(job)?,
                Turn::Finished => return Ok(()),
            }
        }
    }

    /// One turn of the loop: supervision, the control block's audit, the posting's end
    /// (and the chunks that lost their claim), the caller's chunks, the windows, late
    /// chunks, the watchdog, progress, and a sleep until something needs the loop.
    fn queue_turn(&mut self, job: &mut QueueJob) -> Result<Turn> {
        self.supervise(job)?;
        job.retries.push_overflow(&self.control);
        let snapshot = self.audit(job)?;
        let complete = self.posting_complete(job)?;
        self.deliver(job, complete)?;
        if job.core.stopped() {
            return Ok(Turn::Finished);
        }
        if complete && job.stage == Stage::Probing {
            return Ok(Turn::Probed);
        }
        self.windows(job)?;
        if complete && job.ring.as_ref().is_none_or(Ring::complete) {
            return Ok(Turn::Finished);
        }
        let deadline = self.timeouts(job)?;
        self.watchdog(job, &snapshot)?;
        self.progress(job);
        self.sleep(job, deadline, complete)?;
        Ok(Turn::Again)
    }

    /// Iteration: hands the chunks done since the last look to the caller, from the
    /// completion log (and, once the posting is `complete`, those it does not show).
    fn deliver(&mut self, job: &mut QueueJob, complete: bool) -> Result<()> {
        let Some(each) = job.core.each.as_mut() else {
            return Ok(());
        };
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let table = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let elem_size = u64::from(job.core.spec.elem_size);
        for k in job.log.poll(&table, complete) {
            let chunk = job.geometry.chunk(k);
            let acc = if job.core.spec.reduce_slot > 0 {
                table.reduction(k)
            } else {
                None
            };
            each.done(chunk.id, chunk.start..chunk.end, acc, mapping, elem_size);
            if each.stopped {
                break;
            }
        }
        Ok(())
    }

    /// Whether the loop has something to do: the posting's elements are all done, or,
    /// when iterating, the completion log shows a chunk not handed on yet.
    fn ready(&self, job: &QueueJob, len: u64) -> bool {
        if self.control.done_elements() >= len {
            return true;
        }
        job.core.each.is_some()
            && self
                .mapping
                .as_ref()
                .and_then(|m| ChunkTable::new(m, job.table))
                .is_some_and(|t| job.log.news(&t))
    }

    /// Sleeps until something needs the loop: a worker's `Wake`, a death, a message, the
    /// writer, a deadline, or the interrupt tick. Checks for the end first for a moment, so
    /// that a short job ends without anyone waking anyone.
    /// With `complete`, only the writer is awaited: no spinning on the done count.
    fn sleep(
        &mut self,
        job: &mut QueueJob,
        deadline: Option<Instant>,
        complete: bool,
    ) -> Result<()> {
        let len = if complete { u64::MAX } else { job.phase_len() };
        let spin_until = Instant::now() + if complete { Duration::ZERO } else { SPIN };
        while Instant::now() < spin_until {
            if self.ready(job, len) {
                return Ok(());
            }
            std::thread::yield_now();
        }
        let mut wait = INTERRUPT_TICK;
        if self.any_starting() {
            wait = wait.min(spawn::START_TICK);
        }
        if self.observer.is_some() {
            wait = wait.min(PROGRESS_TICK);
        }
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        self.control.parent_sleeps();
        let result = if self.ready(job, len) {
            Ok(Vec::new())
        } else {
            job.parent_sleeps += 1;
            self.wait_events(wait)
        };
        self.control.parent_awake();
        for event in result? {
            self.event(event, job)?;
        }
        Ok(())
    }

    /// Whether every chunk of the posting is done. When nobody is claiming and some are
    /// not, those chunks lost their claim with a dead worker: they are queued again.
    fn posting_complete(&mut self, job: &mut QueueJob) -> Result<bool> {
        let hinted = self.control.done_elements() >= job.phase_len();
        if !(hinted || (job.retries.lost && self.quiet(job))) {
            return Ok(false);
        }
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let table = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let missing = claims::missing(&table, job.posting.chunks);
        if missing.is_empty() {
            return Ok(true);
        }
        if self.quiet(job) {
            job.retries.requeue_lost(&self.control, &missing);
            for k in missing {
                let (id, attempt) = (job.geometry.chunk(k).id, job.retries.attempt(k));
                job.core
                    .trace_event(TraceEventKind::Retry, None, Some(id), || {
                        format!("attempt {attempt} (its claim was lost)")
                    });
            }
        }
        Ok(false)
    }

    /// Nobody claims or holds a chunk, and nothing waits to be claimed.
    fn quiet(&self, job: &QueueJob) -> bool {
        let live = (0..self.workers.len()).filter(|&w| self.workers[w].child.is_some());
        job.retries
            .quiet(&self.control, job.posting.chunks, job.static_workers, live)
    }

    /// The probes are done: choose the chunk length from the workers' timings and post the
    /// rest of the job.
    fn choose_and_repost(&mut self, job: &mut QueueJob) -> Result<()> {
        self.close_posting(job.posting.id);
        if let Some(trace) = job.core.trace.as_mut() {
            trace.phases.push(TracePhase {
                name: "probe chunks (chunk size auto)".into(),
                start_ns: trace.start_ns,
                end_ns: monotonic_ns(),
            });
        }
        let mut probe = SlotCounters::default();
        for w in 0..self.workers.len() {
            let c = self.control.counters(w);
            probe.chunks += c.chunks;
            probe.elements += c.elements;
            probe.compute_ns += c.compute_ns;
            probe.gap_ns += c.gap_ns;
            probe.last_done_ns += c.chunks.saturating_sub(1);
        }
        // `last_done_ns` above counted the gaps: one fewer than each worker's chunks.
        let gaps = probe.last_done_ns.max(1);
        let start = job.posting.n;
        self.collect_trace(job);
        self.collect_posting(job)?;
        let remaining = job.core.n - start;
        let Some(auto) = job.core.auto.as_mut() else {
            return Err(Error::Broken);
        };
        auto.record_totals(
            probe.chunks,
            probe.elements,
            Duration::from_nanos(probe.compute_ns),
            Duration::from_nanos(probe.gap_ns / gaps * probe.chunks),
        );
        let chosen = auto
            .choose(remaining, job.boundary, self.workers.len())
            .chosen;
        job.size = chosen;
        job.stage = Stage::Main;
        let geometry = Geometry::new(
            job.schedule,
            start,
            job.core.n,
            chosen,
            job.workers,
            job.boundary,
            job.chunks_before,
        );
        if let Some(last) = job.core.spec.faults.iter().map(|f| f.chunk).max() {
            let _ = last;
            crate::engine::fault::check_faults(
                &job.core.spec.faults,
                job.chunks_before + geometry.chunks(),
            )?;
        }
        self.post(job, geometry, start, job.core.n)
    }

    /// Streaming: hands complete windows to the writer in order, and lets workers run the
    /// chunks of windows whose slots the writer has freed.
    fn windows(&mut self, job: &mut QueueJob) -> Result<()> {
        let Some(ring) = job.ring.as_mut() else {
            return Ok(());
        };
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let table = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let (posting, geometry) = (&job.posting, &job.geometry);
        while let Some(window) = ring.next(job.core.n) {
            let (start, end) = (window.start, window.start + window.len);
            // Parts of the window in earlier postings are done; this posting's part must be.
            if end > posting.n {
                break;
            }
            if end > posting.start {
                let first = geometry.first_chunk_at(start.max(posting.start));
                let last = geometry.first_chunk_at(end);
                if !(first..last).all(|c| table.is_done(c)) {
                    break;
                }
            }
            if !ring.hand(window) {
                break;
            }
        }
        let before = ring.base;
        let core = &mut job.core;
        ring.written(|index| {
            table.window_reset(index);
            core.trace_event(TraceEventKind::WindowWritten, None, None, || {
                format!("window {index}")
            });
        })?;
        if ring.base != before {
            let limit = ring.limit().max(posting.start);
            self.control.set_limit(geometry.first_chunk_at(limit));
        }
        Ok(())
    }

    /// Kills the workers whose chunk has run past the limit; returns when the next chunk
    /// could, at the earliest.
    fn timeouts(&mut self, job: &mut QueueJob) -> Result<Option<Instant>> {
        let Some(limit) = self.supervision.chunk_timeout else {
            return Ok(None);
        };
        let limit_ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
        let now = monotonic_ns();
        // A chunk that starts now is late at now + limit at the earliest.
        let mut next = now.saturating_add(limit_ns);
        for w in 0..self.workers.len() {
            if self.workers[w].child.is_none() || self.workers[w].starting.is_some() {
                continue;
            }
            let view = self.control.view(w);
            if view.state != ClaimState::Running || view.chunk.is_none() {
                continue;
            }
            let due = view.since_ns.saturating_add(limit_ns);
            if due <= now {
                crate::engine::sys::kill_hard(self.workers[w].pid);
                self.replace(w, Why::TimedOut(limit), job)?;
            } else {
                next = next.min(due);
            }
        }
        Ok(Instant::now().checked_add(Duration::from_nanos(next.saturating_sub(now))))
    }

    /// Checks the control block against what the open posting allows; a value out of
    /// bounds fails the job, naming it and the workers that were running chunks.
    fn audit(&self, job: &mut QueueJob) -> Result<Snapshot> {
        let live = self.workers.len();
        let snapshot = self.control.snapshot(job.posting.id, live);
        let bounds = Bounds {
            posting: job.posting,
            control_len: self.control.len(),
            slots: self.control.slots() as u64,
            static_workers: job.static_workers,
            pushed: job.retries.pushed,
            claimers: (live as u64)
                .saturating_add(job.core.ledger.restarts())
                .saturating_add(job.core.recycles)
                .saturating_add(1),
            next: job.seen.next,
            done: job.seen.done,
            head: job.seen.head,
            now_ns: monotonic_ns(),
        };
        let running_in = |s: &Snapshot| -> Vec<(usize, u64)> {
            s.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state == ClaimState::Running as u64)
                .filter(|(_, s)| s.claim > 0 && s.claim <= job.posting.chunks)
                .map(|(w, s)| (w, s.claim - 1))
                .collect()
        };
        if let Err((what, _)) = bounds.check(&snapshot) {
            // Those running then, and those running when it was last seen intact.
            let mut suspects = running_in(&snapshot);
            suspects.extend(job.running.iter().copied());
            suspects.sort_unstable();
            suspects.dedup();
            let running = suspects
                .iter()
                .map(|&(w, k)| {
                    let slot = &self.workers[w];
                    (slot.id, slot.pid, job.posting.id_base + k)
                })
                .collect();
            return Err(Error::QueueDamaged {
                what: format!("the queue's control block in shared memory was overwritten: {what}"),
                running,
            });
        }
        job.seen = Seen {
            next: snapshot.next,
            done: snapshot.done,
            head: snapshot.retry_head,
        };
        job.running = running_in(&snapshot);
        Ok(snapshot)
    }

    /// The progress watchdog (see [`super::watchdog`]): once the queue has stood still
    /// with chunks left past the stall limit, kills and replaces the workers a signal
    /// stopped, or queues again the chunks nobody holds, or, when that was done already
    /// and still nothing moves, fails the job.
    fn watchdog(&mut self, job: &mut QueueJob, snapshot: &Snapshot) -> Result<()> {
        let mut fingerprint = vec![
            snapshot.next,
            snapshot.done,
            snapshot.retry_head,
            snapshot.retry_tail,
            job.core.ledger.restarts(),
            job.core.recycles,
            job.ring.as_ref().map_or(0, |s| s.base + s.handed),
        ];
        for (w, s) in snapshot.slots.iter().enumerate() {
            let pid = self.workers[w].pid;
            fingerprint.extend([u64::from(pid), s.claim, s.state, s.attempt, s.since_ns]);
        }
        let now = Instant::now();
        let still = job.watch.still_for(fingerprint, now);
        let starting = self.any_starting();
        let slowest = (0..self.workers.len())
            .map(|w| {
                let c = self.control.counters(w);
                Duration::from_nanos(c.compute_ns / c.chunks.max(1))
            })
            .max()
            .unwrap_or_default();
        let limit = watchdog::stall_limit(
            self.supervision.chunk_timeout,
            slowest,
            starting,
            self.handshake_timeout,
        );
        if still < limit {
            return Ok(());
        }
        let mut killed = false;
        for w in 0..self.workers.len() {
            if self.workers[w].child.is_none() || self.workers[w].starting.is_some() {
                continue;
            }
            let pid = self.workers[w].pid;
            if job
                .watch
                .confirm_stopped(pid, watchdog::is_stopped(pid), now)
            {
                crate::engine::sys::kill_hard(pid);
                self.replace(w, Why::Stopped(limit), job)?;
                killed = true;
            }
        }
        if killed {
            job.watch.restart(now);
            return Ok(());
        }
        if starting || !self.quiet(job) {
            // Someone holds a chunk (the chunk timeout's business) or is on the way.
            return Ok(());
        }
        if !job.watch.reclaimed {
            // Chunks left that nobody holds: look for them and queue them again.
            job.watch.reclaimed = true;
            job.retries.lost = true;
            return Ok(());
        }
        if still < limit.saturating_mul(2) {
            return Ok(());
        }
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let table = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let left: Vec<u64> = (0..job.posting.chunks)
            .filter(|&k| !table.is_done(k))
            .collect();
        let Some(&first) = left.first() else {
            return Ok(());
        };
        Err(Error::QueueDamaged {
            what: format!(
                "the queue made no progress for {still:.1?} with {} left (the first: chunk \
                 {}), though they were queued again and every worker is idle",
                crate::units::count(left.len() as u64, "chunk"),
                job.posting.id_base + first
            ),
            running: Vec::new(),
        })
    }

    fn progress(&mut self, job: &mut QueueJob) {
        if self.observer.is_none() || job.last_progress.elapsed() < PROGRESS_TICK / 2 {
            return;
        }
        job.last_progress = Instant::now();
        let done = (job.posting.start + self.control.done_elements()).min(job.core.n);
        if done != job.core.told_done {
            job.core.told_done = done;
            observe::tell(
                &self.observer,
                Event::Progress {
                    done,
                    n: job.core.n,
                },
            );
        }
    }
}
