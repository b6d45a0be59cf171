//! Queue dispatch: workers claim chunks from the control block in shared memory.
//!
//! The parent opens a *posting* (the job's chunk geometry) in the control block and then
//! mostly sleeps: workers claim chunk indices with one atomic add each, run them, and mark
//! them done in the chunk table beside the results. The parent wakes when the job is done
//! (the worker that finishes it sends one `Wake`), when a worker dies (its channel closes),
//! when a chunk may have run past `chunk_timeout`, when a streaming window is complete or
//! written, or to look at the interrupt flag. No message crosses a channel per chunk.
//!
//! Supervision keeps the channel path's promises, reading the workers' claim slots:
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

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipc_channel::TrySelectError;
use ipc_channel::ipc::IpcSelectionResult;

use super::auto_chunk::AutoProbe;
use super::dispatch::WindowJob;
use super::each::{Each, LogReader};
use super::ledger::{HeldChunk, Ledger};
use super::observe::{self, Event};
use super::trace::{Trace, TraceAttempt, TraceEventKind, TracePhase};
use super::watchdog::{self, Watch};
use super::{Death, JobOptions, JobStats, Pool, WindowSink, WorkerStats, spawn};
use crate::engine::control::{
    Bounds, ChunkTable, ClaimState, Posting, SlotCounters, Snapshot, TableLayout, monotonic_ns,
};
use crate::engine::protocol::{Dispatch, FromWorker, JobSpec, Layout};
use crate::engine::schedule::{Dispenser, Geometry, Schedule};
use crate::error::{Error, LossCause, Phase, Result};

/// The longest the loop sleeps without looking at the interrupt flag. A SIGINT or SIGTERM
/// that lands on the loop's own thread (the main thread, in the `procpool` command, where
/// the kernel delivers it when that thread sleeps) cuts the sleep short at once: the wait
/// returns on EINTR. This bounds the wait when it lands on another thread, or when a
/// library caller calls [`crate::Interrupt::request`] from one.
const INTERRUPT_TICK: Duration = Duration::from_millis(100);
/// How often an observer hears of progress.
const PROGRESS_TICK: Duration = Duration::from_millis(100);
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

/// The ring of windows of a streamed job.
struct Stream {
    layout: Layout,
    windows: u64,
    /// The first window not yet written (and freed).
    base: u64,
    /// Windows handed to the writer so far.
    handed: u64,
    to_writer: mpsc::Sender<WindowJob>,
    from_writer: mpsc::Receiver<std::result::Result<u64, String>>,
}

/// The state of one job on the queue.
struct QueueJob<'f> {
    spec: JobSpec,
    n: u64,
    schedule: Schedule,
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
    ledger: Ledger,
    /// Attempts of chunks queued again, by index in the current posting.
    attempts: HashMap<u64, u32>,
    /// Retries waiting for room in the ring.
    overflow: VecDeque<(u64, u32)>,
    /// A worker was lost in this posting: look for chunks nobody holds.
    lost_in_posting: bool,
    deaths: Vec<Death>,
    /// The chunks' encoded accumulators, when the job reduces.
    reduced: Vec<super::ReducedChunk>,
    messages: u64,
    bytes: u64,
    parent_sleeps: u64,
    /// Workers that retired after their recycling limit and were replaced.
    recycles: u64,
    /// Workers found gone while sending: (slot, pid).
    dead: Vec<(usize, u32)>,
    /// Probing for `--chunk-size auto`, and what it chose.
    auto: Option<AutoProbe>,
    probing: bool,
    stream: Option<Stream>,
    told_done: u64,
    last_progress: Instant,
    /// The caller's callback, for [`Pool::for_each_chunk`], and the posting's completion
    /// log as read so far.
    each: Option<Each<'f>>,
    log: LogReader,
    /// The job's timeline, when asked for.
    trace: Option<Trace>,
    /// Retries queued in the ring in this posting (its `tail`).
    pushed: u64,
    /// `next`, `done` and the ring's `head` as last seen intact in this posting.
    seen: (u64, u64, u64),
    /// The workers running a chunk when the control block was last seen intact: (slot,
    /// chunk index). One of them may write over it next.
    running: Vec<(usize, u64)>,
    watch: Watch,
}

impl QueueJob<'_> {
    fn phase_len(&self) -> u64 {
        self.posting.n - self.posting.start
    }

    /// The caller stopped iterating: stop the job.
    fn stopped(&self) -> bool {
        self.each.as_ref().is_some_and(|e| e.stopped)
    }
}

/// Why a worker is being replaced.
enum Why {
    Died,
    TimedOut(Duration),
    Panicked,
    /// Stopped by a signal while the queue stood still this long.
    Stopped(Duration),
}

impl Pool {
    pub(super) fn dispatch_queue(
        &mut self,
        spec: JobSpec,
        n: u64,
        dispenser: Dispenser,
        options: &JobOptions,
        stream: Option<(Layout, &mut (dyn WindowSink + Send))>,
        each: Option<Each<'_>>,
    ) -> Result<JobStats> {
        let Some((layout, sink)) = stream else {
            return self.queue_loop(spec, n, dispenser, options, None, each);
        };
        let elem_size = u64::from(spec.elem_size);
        self.with_writer(layout, elem_size, sink, |pool, to_writer, from_writer| {
            let stream = Stream {
                layout,
                windows: n.div_ceil(layout.window_elems),
                base: 0,
                handed: 0,
                to_writer,
                from_writer,
            };
            pool.queue_loop(spec, n, dispenser, options, Some(stream), None)
        })
    }

    fn queue_loop(
        &mut self,
        spec: JobSpec,
        n: u64,
        dispenser: Dispenser,
        options: &JobOptions,
        stream: Option<Stream>,
        each: Option<Each<'_>>,
    ) -> Result<JobStats> {
        let began = Instant::now();
        let workers = self.workers.len();
        let schedule = dispenser.schedule();
        let measured = options.auto_chunk && schedule != Schedule::Static && n > 0;
        let (geometry, auto, first_end) = if measured {
            let mut probe = AutoProbe::new(n, workers as u64, PROBES_PER_WORKER);
            probe.floor = (4096 / u64::from(spec.elem_size.max(1))).max(1);
            probe.overhead_name = "dispatch";
            let (g, _, end) = probe_plan(n, workers, dispenser.boundary());
            (g, Some(probe), end)
        } else {
            (geometry(&dispenser, n, workers), None, n)
        };
        let (mut messages, mut bytes) = std::mem::take(&mut self.handshake_ipc);
        let sent = self.send_spec(&spec);
        messages += sent.0;
        bytes += sent.1;
        let deaths = std::mem::take(&mut self.start_deaths);
        let ledger = Ledger::new(
            workers,
            self.supervision.retries,
            self.max_restarts,
            self.supervision.chunk_timeout,
            deaths.len() as u64,
        );
        let mut job = QueueJob {
            n,
            schedule,
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
            ledger,
            attempts: HashMap::new(),
            overflow: VecDeque::new(),
            lost_in_posting: false,
            deaths,
            reduced: Vec::new(),
            messages,
            bytes,
            parent_sleeps: 0,
            recycles: 0,
            dead: Vec::new(),
            probing: auto.is_some(),
            auto,
            stream,
            told_done: 0,
            last_progress: Instant::now(),
            each,
            log: LogReader::default(),
            trace: options.trace.then(Trace::begin),
            pushed: 0,
            seen: (0, 0, 0),
            running: Vec::new(),
            watch: Watch::new(),
            geometry: geometry.clone(),
            spec,
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
        match self.set.try_select() {
            Ok(events) => {
                for event in events {
                    self.event(event, &mut job)?;
                }
            }
            Err(TrySelectError::Empty) => {}
            Err(TrySelectError::IoError(e)) => {
                return Err(Error::Ipc(format!(
                    "reading the workers' last messages: {e}"
                )));
            }
        }
        let retired = self.settle_retired()?;
        let stopped = job.stopped();
        if job.told_done != n && !stopped {
            observe::tell(&self.observer, Event::Progress { done: n, n });
        }
        if !stopped {
            crate::engine::fault::check_faults(&job.spec.faults, job.chunks_before)?;
        }

        let end = Instant::now();
        let wall = end - began;
        let end_ns = monotonic_ns();
        if job.trace.is_some() {
            self.collect_trace(&mut job);
        }
        if let Some(trace) = job.trace.as_mut() {
            trace.finish();
        }
        // Stopped early: the chunks that were done, not those the postings had.
        let chunks = if stopped {
            job.acc.iter().map(|a| a.c.chunks).sum()
        } else {
            job.chunks_before
        };
        let workers: Vec<WorkerStats> = self
            .workers
            .iter()
            .zip(&job.acc)
            .map(|(slot, a)| {
                WorkerStats {
                    id: slot.id,
                    pid: slot.pid,
                    chunks: a.c.chunks,
                    compute_s: a.c.compute_ns as f64 / 1e9,
                    // Measured by the workers themselves, inside the job: the parent reads
                    // no /proc file per job.
                    cpu_s: Some(a.c.cpu_ns as f64 / 1e9),
                    // A worker that ran nothing this job has not said; /proc tells.
                    peak_rss_bytes: if a.c.maxrss_kib > 0 {
                        Some(a.c.maxrss_kib * 1024)
                    } else {
                        crate::engine::sys::process_usage(slot.pid).map(|(_, rss)| rss)
                    },
                    idle_end_s: if a.c.last_done_ns == 0 {
                        wall.as_secs_f64()
                    } else {
                        (end_ns.saturating_sub(a.c.last_done_ns) as f64 / 1e9)
                            .min(wall.as_secs_f64())
                    },
                    cpu: spawn::cpu_for(slot.id, &self.pin),
                    claims: a.c.claims,
                    dispatch_s: a.c.gap_ns as f64 / 1e9,
                    sleeps: a.c.waits,
                    setup_s: a.c.setup_ns as f64 / 1e9,
                    minor_faults: None,
                    major_faults: None,
                    voluntary_switches: None,
                    involuntary_switches: None,
                }
                // Counted by the worker itself around each posting, like its CPU time.
                .with_os(Some(a.c.os))
            })
            .collect();
        let sum = |f: fn(&Acc) -> u64| job.acc.iter().map(f).sum::<u64>();
        let done_chunks = sum(|a| a.c.chunks).max(1) as f64;
        let compute_ns = sum(|a| a.c.compute_ns) as f64;
        // Gaps are measured between a worker's chunks: one fewer than its chunks.
        let gaps = sum(|a| a.c.chunks.saturating_sub(1)).max(1) as f64;
        let dispatch_per_chunk_s = sum(|a| a.c.gap_ns) as f64 / gaps / 1e9;
        self.reduced = std::mem::take(&mut job.reduced);
        Ok(JobStats {
            n,
            inflight: 1,
            chunk_size: job
                .auto
                .as_ref()
                .and_then(|a| a.result.as_ref())
                .map_or(job.size, |r| r.chosen),
            chunks,
            wall,
            ipc_messages: job.messages,
            ipc_bytes: job.bytes,
            // Filled in by `Pool::job`.
            input_bytes: 0,
            input_sends: 0,
            param_bytes: 0,
            shm_bytes: if job.spec.output {
                n * u64::from(job.spec.elem_size)
            } else {
                0
            },
            workers,
            restarts: job.ledger.restarts(),
            retried_chunks: job.ledger.retried_chunks(),
            deaths: job.deaths,
            reduction: None,
            schedule: job.schedule,
            transport: job.spec.transport,
            auto_chunk: job.auto.and_then(|a| a.result),
            chunk_rtt_mean_s: compute_ns / done_chunks / 1e9 + dispatch_per_chunk_s,
            chunk_compute_mean_s: compute_ns / done_chunks / 1e9,
            channel_result_bytes: 0,
            dispatch: Dispatch::Queue,
            claims: sum(|a| a.c.claims),
            worker_sleeps: sum(|a| a.c.waits),
            parent_sleeps: job.parent_sleeps,
            wake_messages: sum(|a| a.c.wakes),
            dispatch_per_chunk_s,
            recycles: job.recycles + retired,
            chunks_delivered: job.each.as_ref().map_or(0, |e| e.delivered),
            stopped_early: stopped,
            trace: job.trace,
        })
    }

    /// Opens a posting for elements `start..end` cut by `geometry`, numbering its chunks on
    /// from the earlier postings'.
    fn post(&mut self, job: &mut QueueJob, geometry: Geometry, start: u64, end: u64) -> Result<()> {
        let elem_size = u64::from(job.spec.elem_size);
        let layout = job.spec.layout;
        let results = if job.spec.output {
            layout.region_elems(job.n) * elem_size
        } else {
            0
        };
        let chunks = geometry.chunks();
        let table = TableLayout::after(results, chunks, layout.ring, job.spec.reduce_slot)
            .with_log(job.each.is_some())
            .with_trace(job.trace.is_some());
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
        if let Some(stream) = &job.stream {
            let we = stream.layout.window_elems;
            if !start.is_multiple_of(we) {
                t.window_done(start / we, start % we);
            }
        }
        let limit = match &job.stream {
            Some(s) => geometry
                .first_chunk_at((s.base + s.layout.ring).saturating_mul(s.layout.window_elems)),
            None => u64::MAX,
        };
        let id = self.next_posting;
        self.next_posting += 1;
        let posting = Posting {
            id,
            job: job.spec.job,
            spec_id: job.spec.spec_id,
            channel: false,
            schedule: match geometry_schedule(job) {
                Schedule::Static => 0,
                Schedule::Dynamic => 1,
                Schedule::Guided => 2,
            },
            start,
            n: end,
            size: if job.probing {
                job.auto.as_ref().map_or(job.size, |a| a.probe_size)
            } else {
                job.size
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
            recycle_chunks: self.recycle.0,
            recycle_rss: self.recycle.1,
            log: job.each.is_some(),
            trace: job.trace.is_some(),
        };
        job.posting = posting;
        if job.each.is_some() {
            job.log = LogReader::new(chunks);
        }
        job.geometry = geometry;
        job.table = table;
        job.attempts.clear();
        job.overflow.clear();
        job.lost_in_posting = false;
        job.pushed = 0;
        job.seen = (0, 0, 0);
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
        if let Some(trace) = job.trace.as_mut()
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
        if job.spec.reduce_slot == 0 || job.stopped() {
            return Ok(());
        }
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let t = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let mut lacking = Vec::new();
        for k in 0..job.posting.chunks {
            let chunk = job.geometry.chunk(k);
            match t.reduction(k) {
                Some(acc) => job.reduced.push(super::ReducedChunk {
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
            if let Some(signal) = self.supervision.interrupt.requested() {
                return Err(interrupted(signal, job, self.workers.len(), self));
            }
            if let Some(stop) = self.job_stop.due() {
                return Err(stop.error_like(interrupted(0, job, self.workers.len(), self)));
            }
            let ended = self.ended_workers(job, Pool::event)?;
            job.dead.extend(ended);
            while let Some((w, pid)) = job.dead.pop() {
                if self.workers[w].pid == pid && self.workers[w].starting.is_none() {
                    self.replace_claim(w, Why::Died, job)?;
                }
            }
            self.poll_starting_queue(job)?;
            self.push_overflow(job);
            let snapshot = self.audit(job)?;
            let complete = self.posting_complete(job)?;
            self.deliver(job, complete)?;
            if job.stopped() {
                return Ok(());
            }
            if complete && job.probing {
                self.choose_and_repost(job)?;
                continue;
            }
            self.windows(job)?;
            if complete && job.stream.as_ref().is_none_or(|s| s.base >= s.windows) {
                return Ok(());
            }
            let deadline = self.timeouts(job)?;
            self.watchdog(job, &snapshot)?;
            self.progress(job);
            self.sleep(job, deadline, complete)?;
        }
    }

    /// Iteration: hands the chunks done since the last look to the caller, from the
    /// completion log (and, once the posting is `complete`, those it does not show).
    fn deliver(&mut self, job: &mut QueueJob, complete: bool) -> Result<()> {
        let Some(each) = job.each.as_mut() else {
            return Ok(());
        };
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let table = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let elem_size = u64::from(job.spec.elem_size);
        for k in job.log.poll(&table, complete) {
            let chunk = job.geometry.chunk(k);
            let acc = if job.spec.reduce_slot > 0 {
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
        job.each.is_some()
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
            match self.set.try_select_timeout(wait) {
                Ok(events) => Ok(events),
                Err(TrySelectError::Empty) => Ok(Vec::new()),
                Err(TrySelectError::IoError(e)) => {
                    Err(Error::Ipc(format!("waiting for workers: {e}")))
                }
            }
        };
        self.control.parent_awake();
        for event in result? {
            self.event(event, job)?;
        }
        Ok(())
    }

    fn event(&mut self, event: IpcSelectionResult, job: &mut QueueJob) -> Result<()> {
        match event {
            IpcSelectionResult::MessageReceived(rid, message) => {
                let Some((w, msg, size)) = self.decode(rid, message)? else {
                    return Ok(());
                };
                job.messages += 1;
                job.bytes += size;
                match msg {
                    FromWorker::Wake => Ok(()),
                    FromWorker::Retiring => {
                        self.workers[w].retiring = true;
                        Ok(())
                    }
                    FromWorker::Panicked {
                        id,
                        message,
                        location,
                    } => {
                        let index = id
                            .checked_sub(job.posting.id_base)
                            .filter(|&k| k < job.posting.chunks);
                        if index.is_none() || self.control.view(w).chunk != index {
                            return Err(Error::Ipc(format!(
                                "worker {w} reported a panic on chunk {id}, which it did not hold"
                            )));
                        }
                        if self.supervision.retry_panics {
                            crate::engine::sys::kill_hard(self.workers[w].pid);
                            return self.replace_claim(w, Why::Panicked, job);
                        }
                        let chunk = job.geometry.chunk(id - job.posting.id_base);
                        Err(Error::KernelPanicked {
                            chunk: id,
                            start: chunk.start,
                            end: chunk.end,
                            worker: self.workers[w].id,
                            pid: self.workers[w].pid,
                            message,
                            location,
                        })
                    }
                    FromWorker::Failed { message } => Err(Error::WorkerFailed {
                        id: self.workers[w].id,
                        pid: self.workers[w].pid,
                        message,
                    }),
                    other => Err(Error::Ipc(format!(
                        "worker {w} sent an unexpected {other:?}"
                    ))),
                }
            }
            IpcSelectionResult::ChannelClosed(rid) => match self.by_receiver.get(&rid).copied() {
                Some(w) if self.workers[w].retiring => {
                    // It left the job holding nothing: keep its counts, start a successor.
                    job.acc[w].add(self.control.counters(w));
                    job.recycles += 1;
                    self.recycle(w)
                }
                Some(w) => self.replace_claim(w, Why::Died, job),
                None => Ok(()),
            },
        }
    }

    /// Whether every chunk of the posting is done. When nobody is claiming and some are
    /// not, those chunks lost their claim with a dead worker: they are queued again.
    fn posting_complete(&mut self, job: &mut QueueJob) -> Result<bool> {
        let hinted = self.control.done_elements() >= job.phase_len();
        if !(hinted || (job.lost_in_posting && self.quiet(job))) {
            return Ok(false);
        }
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let table = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let missing: Vec<u64> = (0..job.posting.chunks)
            .filter(|&k| !table.is_done(k))
            .collect();
        if missing.is_empty() {
            return Ok(true);
        }
        if self.quiet(job) {
            for k in missing {
                let attempt = job.attempts.get(&k).copied().unwrap_or(0);
                if let Some(trace) = job.trace.as_mut() {
                    let id = job.geometry.chunk(k).id;
                    let detail = format!("attempt {attempt} (its claim was lost)");
                    trace.event(TraceEventKind::Retry, None, Some(id), detail);
                }
                self.requeue(job, k, attempt);
            }
            self.control.bump();
        }
        Ok(false)
    }

    /// Nobody claims or holds a chunk, and nothing waits to be claimed.
    fn quiet(&self, job: &QueueJob) -> bool {
        job.overflow.is_empty()
            && self.control.retries_empty()
            && self
                .control
                .claims_exhausted(job.posting.chunks, job.static_workers)
            && (0..self.workers.len()).all(|w| {
                self.workers[w].child.is_none() || self.control.view(w).state == ClaimState::Idle
            })
    }

    fn requeue(&mut self, job: &mut QueueJob, index: u64, attempt: u32) {
        job.attempts.insert(index, attempt);
        if self.control.push_retry(index, attempt) {
            job.pushed += 1;
        } else {
            job.overflow.push_back((index, attempt));
        }
    }

    fn push_overflow(&mut self, job: &mut QueueJob) {
        let mut pushed = false;
        while let Some(&(index, attempt)) = job.overflow.front() {
            if !self.control.push_retry(index, attempt) {
                break;
            }
            job.overflow.pop_front();
            job.pushed += 1;
            pushed = true;
        }
        if pushed {
            self.control.bump();
        }
    }

    /// The probes are done: choose the chunk length from the workers' timings and post the
    /// rest of the job.
    fn choose_and_repost(&mut self, job: &mut QueueJob) -> Result<()> {
        self.close_posting(job.posting.id);
        if let Some(trace) = job.trace.as_mut() {
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
        let remaining = job.n - start;
        let Some(auto) = job.auto.as_mut() else {
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
        job.probing = false;
        let geometry = Geometry::new(
            job.schedule,
            start,
            job.n,
            chosen,
            job.workers,
            job.boundary,
            job.chunks_before,
        );
        if let Some(last) = job.spec.faults.iter().map(|f| f.chunk).max() {
            let _ = last;
            crate::engine::fault::check_faults(
                &job.spec.faults,
                job.chunks_before + geometry.chunks(),
            )?;
        }
        self.post(job, geometry, start, job.n)
    }

    /// Streaming: hands complete windows to the writer in order, and lets workers run the
    /// chunks of windows whose slots the writer has freed.
    fn windows(&mut self, job: &mut QueueJob) -> Result<()> {
        let Some(stream) = job.stream.as_mut() else {
            return Ok(());
        };
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let table = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let we = stream.layout.window_elems;
        while stream.handed < stream.windows && stream.handed < stream.base + stream.layout.ring {
            let k = stream.handed;
            let start = k * we;
            let end = (start + we).min(job.n);
            // Parts of the window in earlier postings are done; this posting's part must be.
            if end > job.posting.n {
                break;
            }
            if end > job.posting.start {
                let first = job.geometry.first_chunk_at(start.max(job.posting.start));
                let last = job.geometry.first_chunk_at(end);
                if !(first..last).all(|c| table.is_done(c)) {
                    break;
                }
            }
            let window = WindowJob {
                index: k,
                start,
                len: end - start,
                slot: k % stream.layout.ring,
            };
            if stream.to_writer.send(window).is_err() {
                break;
            }
            stream.handed += 1;
        }
        let mut moved = false;
        loop {
            match stream.from_writer.try_recv() {
                Ok(Ok(index)) => {
                    table.window_reset(index);
                    stream.base += 1;
                    moved = true;
                    if let Some(trace) = job.trace.as_mut() {
                        let detail = format!("window {}", stream.base - 1);
                        trace.event(TraceEventKind::WindowWritten, None, None, detail);
                    }
                }
                Ok(Err(message)) => return Err(Error::Output(message)),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    if stream.base < stream.windows {
                        return Err(Error::Output("the window writer stopped early".into()));
                    }
                    break;
                }
            }
        }
        if moved {
            let limit = (stream.base + stream.layout.ring).saturating_mul(we);
            self.control
                .set_limit(job.geometry.first_chunk_at(limit.max(job.posting.start)));
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
                self.replace_claim(w, Why::TimedOut(limit), job)?;
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
            pushed: job.pushed,
            claimers: (live as u64)
                .saturating_add(job.ledger.restarts())
                .saturating_add(job.recycles)
                .saturating_add(1),
            next: job.seen.0,
            done: job.seen.1,
            head: job.seen.2,
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
        job.seen = (snapshot.next, snapshot.done, snapshot.retry_head);
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
            job.ledger.restarts(),
            job.recycles,
            job.stream.as_ref().map_or(0, |s| s.base + s.handed),
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
                self.replace_claim(w, Why::Stopped(limit), job)?;
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
            job.lost_in_posting = true;
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
        let done = (job.posting.start + self.control.done_elements()).min(job.n);
        if done != job.told_done {
            job.told_done = done;
            observe::tell(&self.observer, Event::Progress { done, n: job.n });
        }
    }

    /// Reaps worker `w`, queues the chunk its slot names again (blamed if it was running),
    /// and starts a replacement in the same slot.
    fn replace_claim(&mut self, w: usize, why: Why, job: &mut QueueJob) -> Result<()> {
        let slot = &mut self.workers[w];
        if let Some(rid) = slot.rid.take() {
            self.by_receiver.remove(&rid);
        }
        let (pid, slot_id) = (slot.pid, slot.id);
        let exit = slot.reap(Duration::from_secs(1));
        let cause = match why {
            Why::Died => LossCause::Ended(exit),
            Why::TimedOut(limit) => LossCause::TimedOut(limit),
            Why::Panicked => LossCause::Panicked,
            Why::Stopped(limit) => LossCause::Stopped(limit),
        };
        // The process is reaped: its slot holds its last word.
        let view = self.control.view(w);
        job.acc[w].add(self.control.counters(w));
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        let table = ChunkTable::new(mapping, job.table).ok_or(Error::Broken)?;
        let held = view
            .chunk
            .filter(|&k| k < job.posting.chunks && !table.is_done(k))
            .filter(|_| view.state != ClaimState::Idle);
        let running = matches!(view.state, ClaimState::Running | ClaimState::Panicked);
        let held_chunk = held.map(|k| HeldChunk {
            chunk: job.geometry.chunk(k),
            attempt: view.attempt,
        });
        if let Some(trace) = job.trace.as_mut() {
            // The attempt that never finished: from its start in the claim slot to now.
            if let Some(k) = held.filter(|_| running && view.since_ns > 0) {
                let chunk = job.geometry.chunk(k);
                trace.attempts.push(TraceAttempt {
                    chunk: chunk.id,
                    range: chunk.start..chunk.end,
                    worker: slot_id,
                    attempt: view.attempt,
                    start_ns: view.since_ns,
                    end_ns: monotonic_ns().max(view.since_ns),
                    finished: false,
                    compute_ns: None,
                });
            }
            let kind = match why {
                Why::TimedOut(_) | Why::Stopped(_) => TraceEventKind::Timeout,
                Why::Died | Why::Panicked => TraceEventKind::Death,
            };
            let chunk = held.filter(|_| running).map(|k| job.geometry.chunk(k).id);
            trace.event(kind, Some(slot_id), chunk, format!("pid {pid}: {cause}"));
        }
        let (lost, again) = job
            .ledger
            .lose_claim(slot_id, pid, cause, held_chunk, running)?;
        if let (Some(k), Some(again)) = (held, again) {
            if let Some(trace) = job.trace.as_mut() {
                let id = job.geometry.chunk(k).id;
                let detail = format!("attempt {}", again.attempt);
                trace.event(TraceEventKind::Retry, None, Some(id), detail);
            }
            self.requeue(job, k, again.attempt);
            if job.static_workers > 0 {
                self.control.skip_static(w, k, job.workers);
            }
        }
        self.control.reset_slot(w);
        self.control.note_death();
        job.lost_in_posting = true;
        self.control.bump();
        let (running, text) = (lost.running, lost.loss.to_string());
        let (worker, what) = (slot_id, text.as_str());
        observe::tell(&self.observer, Event::WorkerLost { worker, pid, what });
        let new_pid = self.begin_start(w)?;
        if let Some(trace) = job.trace.as_mut() {
            let detail = format!("pid {new_pid} replaces pid {pid}");
            trace.event(TraceEventKind::Restart, Some(slot_id), None, detail);
        }
        job.deaths.push(Death {
            id: slot_id,
            pid,
            cause: lost.loss.cause_text(),
            chunk: running,
            replaced_by: Some(new_pid),
        });
        Ok(())
    }

    /// Moves replacements' handshakes on: a ready one gets the spec and finds the posting
    /// by itself; one lost on the way is one more restart.
    fn poll_starting_queue(&mut self, job: &mut QueueJob) -> Result<()> {
        self.spawn_pending(super::dispatch::SPAWN_BATCH)?;
        for w in 0..self.workers.len() {
            let dir = &self.dir;
            let Some(starting) = self.workers[w].starting.as_mut() else {
                continue;
            };
            match starting.poll(dir) {
                spawn::Progress::Pending => {}
                spawn::Progress::Ready(started) => {
                    self.workers[w].starting = None;
                    let pid = started.pid;
                    self.install(started)?;
                    let (messages, bytes) = std::mem::take(&mut self.handshake_ipc);
                    let sent = self.send_spec(&job.spec);
                    job.messages += messages + sent.0;
                    job.bytes += bytes + sent.1;
                    if self.workers[w].spec_sent != job.spec.spec_id {
                        job.dead.push((w, pid));
                    }
                }
                spawn::Progress::Failed(failure) => {
                    self.start_again(w, failure, &mut job.ledger, &mut job.deaths)?;
                }
            }
        }
        Ok(())
    }
}

/// The schedule workers follow in the current posting: the probes are dynamic.
fn geometry_schedule(job: &QueueJob) -> Schedule {
    if job.probing {
        Schedule::Dynamic
    } else {
        job.schedule
    }
}

fn interrupted(signal: i32, job: &QueueJob, workers: usize, pool: &Pool) -> Error {
    let done: u64 = (0..pool.workers.len())
        .map(|w| pool.control.counters(w).chunks)
        .sum::<u64>()
        + job.acc.iter().map(|a| a.c.chunks).sum::<u64>();
    Error::Interrupted {
        signal,
        phase: Phase::Pool,
        chunks_done: done,
        chunks: job.chunks_before + job.posting.chunks,
        elements_done: (job.posting.start + pool.control.done_elements()).min(job.n),
        n: job.n,
        workers,
        needed_term: 0,
        needed_kill: 0,
    }
}
