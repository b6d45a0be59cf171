//! Handing out chunks, collecting replies, and surviving workers that die or hang.
//!
//! Each worker holds at most `inflight` chunks; whenever one replies `Done`, the next chunk
//! of the [`Dispenser`] (static, dynamic or guided) goes to that worker. Chunks are made on
//! demand (or taken from the retry queue first), never listed up front.
//!
//! Supervision lives in the same loop; who holds what, blame and the limits are decided in
//! one place, the [`Ledger`] (plain data, unit-tested without processes):
//! - a worker whose channel closes (it died: killed, aborted, panicked, segfaulted) is
//!   reaped at once and its exit status recorded; the chunk it was running is blamed (one
//!   more attempt), the chunks queued behind it are handed out again unblamed, and a
//!   replacement with the same id is started;
//! - a chunk running past `chunk_timeout` gets its worker killed, then the same;
//! - a chunk blamed more than `retries` times, or more than `max_restarts` restarts, fails
//!   the job with a precise error instead of looping;
//! - an interrupt (SIGINT/SIGTERM) stops the hand-out and returns at once; the caller
//!   stops and reaps the workers.
//!
//! A dead worker's chunks are handed out again only after it has been reaped, so no two
//! processes can ever write the same range of the shared region.
//!
//! The loop also measures: per chunk, the time from when it started at its worker to its
//! `Done` here (its round trip), beside its compute time; per worker, when it finished its
//! last chunk (so the idle time at the end shows imbalance).

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipc_channel::TrySelectError;
use ipc_channel::ipc::IpcSelectionResult;

use super::auto_chunk::AutoProbe;
use super::each::Each;
use super::ledger::Ledger;
use super::observe::{self, Event};
use super::trace::{Trace, TraceAttempt, TraceEventKind};
use super::{Death, JobOptions, JobStats, Pool, WindowSink, WorkerStats, spawn};
use crate::engine::protocol::{FromWorker, JobSpec, Layout, ToWorker, Transport, wire_size};
use crate::engine::schedule::{Chunk, Dispenser, Schedule};
use crate::error::{Error, LossCause, Phase, Result};

/// Workers of a pool started in the background spawned per turn of a dispatch loop: the
/// loop polls handshakes in between, so each worker joins as soon as it is ready.
pub(super) const SPAWN_BATCH: usize = 8;
/// How often the loop looks at the clock and the interrupt flag when no message arrives.
const TICK: Duration = Duration::from_millis(20);
/// With streaming, how often the loop checks for windows the writer has freed.
const STREAM_TICK: Duration = Duration::from_millis(1);

/// Per-worker measurements during one job (what it holds is in the [`Ledger`]).
#[derive(Default)]
struct Held {
    done: u64,
    compute_ns: u64,
    /// When its last chunk's `Done` arrived.
    last_done: Option<Instant>,
    /// CPU time of the process when the job started.
    cpu_at_start: Option<Duration>,
    /// Its page faults and context switches then, read from `/proc`.
    os_at_start: Option<crate::engine::sys::OsCounts>,
}

/// The first chunks of a job, timed to choose how many chunks to keep in flight per worker.
///
/// A worker idles between chunks unless its next chunk is already queued when it finishes
/// one: with a round trip of `r` and a compute of `c` per chunk, about `r / c + 1` queued
/// chunks keep it busy. Measured once, on `4 × workers` chunks at the starting depth, with
/// medians: a chunk whose worker was descheduled mid-way would skew a mean.
struct DepthProbe {
    needed: usize,
    /// Per chunk: compute, and the rest of its round trip.
    samples: Vec<(Duration, Duration)>,
}

impl DepthProbe {
    fn new(workers: usize) -> Self {
        let needed = 4 * workers.max(1);
        DepthProbe {
            needed,
            samples: Vec::with_capacity(needed),
        }
    }

    /// Records one chunk; once enough are in, the depth they call for (at least 2).
    fn record(&mut self, compute: Duration, rtt: Duration) -> Option<usize> {
        self.samples.push((compute, rtt.saturating_sub(compute)));
        if self.samples.len() < self.needed {
            return None;
        }
        let median = |mut xs: Vec<Duration>| {
            xs.sort_unstable();
            xs[xs.len() / 2].as_secs_f64()
        };
        let compute = median(self.samples.iter().map(|s| s.0).collect());
        let overhead = median(self.samples.iter().map(|s| s.1).collect());
        let depth = if compute > 0.0 {
            (overhead / compute).ceil() + 1.0
        } else {
            f64::MAX
        };
        Some(depth.clamp(2.0, 1e6) as usize)
    }
}

/// The state of one job.
struct Job<'f> {
    spec: JobSpec,
    /// The posting its chunks belong to.
    posting: u64,
    n: u64,
    dispenser: Dispenser,
    held: Vec<Held>,
    /// Who holds which chunk, retries, blame and limits.
    ledger: Ledger,
    done: u64,
    /// Elements in the chunks done.
    elements_done: u64,
    /// The chunks' encoded accumulators, when the job reduces.
    reduced: Vec<super::ReducedChunk>,
    messages: u64,
    bytes: u64,
    channel_result_bytes: u64,
    rtt_total: Duration,
    compute_total: Duration,
    deaths: Vec<Death>,
    /// Workers found dead while sending: (slot, pid), handled by the loop.
    dead: Vec<(usize, u32)>,
    auto: Option<AutoProbe>,
    /// `elements_done` as last told to the observer.
    told_done: u64,
    /// Chunks in flight per worker now.
    depth: usize,
    /// Measuring the first chunks to choose `depth` (with `inflight_auto`).
    depth_probe: Option<DepthProbe>,
    /// Set for a streamed job (`--output`).
    streaming: Option<Streaming>,
    /// Workers that retired after their recycling limit and were replaced.
    recycles: u64,
    /// The caller's callback, for [`Pool::for_each_chunk`].
    each: Option<Each<'f>>,
    /// The job's timeline, when asked for.
    trace: Option<Trace>,
}

impl Job<'_> {
    /// The caller stopped iterating: hand out nothing more.
    fn stopped(&self) -> bool {
        self.each.as_ref().is_some_and(|e| e.stopped)
    }
}

/// A window handed to the writer: its index, first element, length and ring slot.
pub(super) struct WindowJob {
    pub(super) index: u64,
    pub(super) start: u64,
    pub(super) len: u64,
    pub(super) slot: u64,
}

/// The ring of windows of a streamed job, as the dispatch loop sees it.
struct Streaming {
    layout: Layout,
    /// Windows in the job.
    windows: u64,
    /// The first window not yet written (and freed).
    base: u64,
    /// Windows handed to the writer so far.
    handed: u64,
    /// Elements done in each window from `base` on (ring-many entries).
    done: VecDeque<u64>,
    to_writer: mpsc::Sender<WindowJob>,
    from_writer: mpsc::Receiver<std::result::Result<u64, String>>,
}

impl Streaming {
    fn window_len(&self, index: u64, n: u64) -> u64 {
        let start = index * self.layout.window_elems;
        (start + self.layout.window_elems).min(n) - start
    }

    /// Counts a finished chunk and hands every complete window, in order, to the writer.
    fn chunk_done(&mut self, chunk: Chunk, n: u64) {
        let index = chunk.start / self.layout.window_elems;
        if let Some(d) = self.done.get_mut((index - self.base) as usize) {
            *d += chunk.len();
        }
        while self.handed < self.windows && self.handed < self.base + self.layout.ring {
            let k = self.handed;
            if self.done[(k - self.base) as usize] < self.window_len(k, n) {
                break;
            }
            let job = WindowJob {
                index: k,
                start: k * self.layout.window_elems,
                len: self.window_len(k, n),
                slot: k % self.layout.ring,
            };
            if self.to_writer.send(job).is_err() {
                break;
            }
            self.handed += 1;
        }
    }
}

/// The writer thread: each complete window goes to the sink, then its slot is announced
/// free for the window `ring` places later, and `waker` wakes the dispatch loop.
/// Stops at the first error, or when the loop hangs up.
fn write_windows(
    windows: mpsc::Receiver<WindowJob>,
    freed: mpsc::Sender<std::result::Result<u64, String>>,
    sink: &mut (dyn WindowSink + Send),
    mapping: &crate::engine::shm::Mapping,
    layout: Layout,
    elem_size: u64,
    waker: &ipc_channel::ipc::IpcSender<()>,
) {
    let slot_bytes = layout.window_elems * elem_size;
    for w in windows {
        let lo = w.slot * slot_bytes;
        let hi = lo + w.len * elem_size;
        // SAFETY: every chunk of this window is done (its workers replied) and the loop
        // hands out no chunk of the slot's next window until we report it freed below, so
        // no process writes these bytes while we read them.
        let bytes = unsafe { mapping.slice(lo as usize..hi as usize) };
        // The slot's pages stay: the ring is bounded already, and the next window in this
        // slot reuses them without a page fault anywhere.
        let result = sink.window(w.start, bytes);
        let failed = result.is_err();
        if freed.send(result.map(|()| w.index)).is_err() {
            return;
        }
        let _ = waker.send(());
        if failed {
            return;
        }
    }
}

/// Why a worker is being replaced.
enum Why {
    /// Its channel closed: read the exit status.
    Died,
    /// Its chunk ran past the limit: we killed it.
    TimedOut(Duration),
    /// Its kernel panicked and panics are retried: we killed it.
    Panicked,
}

impl Pool {
    pub(super) fn dispatch(
        &mut self,
        spec: JobSpec,
        n: u64,
        dispenser: Dispenser,
        options: &JobOptions,
        stream: Option<(Layout, &mut (dyn WindowSink + Send))>,
        each: Option<Each<'_>>,
    ) -> Result<JobStats> {
        let Some((layout, sink)) = stream else {
            return self.dispatch_loop(spec, n, dispenser, options, None, each);
        };
        let elem_size = u64::from(spec.elem_size);
        self.with_writer(layout, elem_size, sink, |pool, to_writer, from_writer| {
            let streaming = Streaming {
                layout,
                windows: n.div_ceil(layout.window_elems),
                base: 0,
                handed: 0,
                done: (0..layout.ring).map(|_| 0).collect(),
                to_writer,
                from_writer,
            };
            pool.dispatch_loop(spec, n, dispenser, options, Some(streaming), None)
        })
    }

    /// Runs `body` beside a thread that writes complete windows to `sink`: `body` gets the
    /// sender of windows to write and the receiver of freed ones. The writer has its own
    /// mapping of the region, so it borrows nothing from the pool while `body` changes it,
    /// and it wakes the dispatch loop (the pool's waker) after each window.
    pub(super) fn with_writer(
        &mut self,
        layout: Layout,
        elem_size: u64,
        sink: &mut (dyn WindowSink + Send),
        body: impl FnOnce(
            &mut Pool,
            mpsc::Sender<WindowJob>,
            mpsc::Receiver<std::result::Result<u64, String>>,
        ) -> Result<JobStats>,
    ) -> Result<JobStats> {
        let mapping = self.region.map()?;
        let (to_writer, windows) = mpsc::channel::<WindowJob>();
        let (freed, from_writer) = mpsc::channel::<std::result::Result<u64, String>>();
        let waker = self.waker.clone();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                write_windows(windows, freed, sink, &mapping, layout, elem_size, &waker)
            });
            // `body` drops its sender before the scope ends, which ends the writer's loop;
            // then the scope joins the writer.
            body(self, to_writer, from_writer)
        })
    }

    fn dispatch_loop(
        &mut self,
        spec: JobSpec,
        n: u64,
        mut dispenser: Dispenser,
        options: &JobOptions,
        streaming: Option<Streaming>,
        each: Option<Each<'_>>,
    ) -> Result<JobStats> {
        let began = Instant::now();
        let elem_size = u64::from(spec.elem_size);
        let workers = self.workers.len() as u64;
        let auto =
            (options.auto_chunk && dispenser.schedule() != Schedule::Static && n > 0).then(|| {
                let probe = AutoProbe::new(n, workers, self.inflight as u64);
                dispenser.set_chunk_size(probe.probe_size);
                probe
            });
        let (messages, bytes) = std::mem::take(&mut self.handshake_ipc);
        // Workers that died while the pool started count as this job's restarts.
        let deaths = std::mem::take(&mut self.start_deaths);
        let ledger = Ledger::new(
            self.workers.len(),
            self.supervision.retries,
            self.max_restarts,
            self.supervision.chunk_timeout,
            deaths.len() as u64,
        );
        let mut job = Job {
            spec,
            posting: 0,
            n,
            dispenser,
            held: self.workers.iter().map(|_| Held::default()).collect(),
            ledger,
            done: 0,
            elements_done: 0,
            reduced: Vec::new(),
            messages,
            bytes,
            channel_result_bytes: 0,
            rtt_total: Duration::ZERO,
            compute_total: Duration::ZERO,
            deaths,
            dead: Vec::new(),
            auto,
            told_done: 0,
            depth: self.inflight,
            depth_probe: self
                .inflight_auto
                .then(|| DepthProbe::new(self.workers.len())),
            streaming,
            recycles: 0,
            each,
            trace: options.trace.then(Trace::begin),
        };
        for (w, slot) in self.workers.iter().enumerate() {
            job.held[w].cpu_at_start = crate::engine::sys::process_cpu(slot.pid);
            job.held[w].os_at_start = crate::engine::sys::OsCounts::of_process(slot.pid);
        }

        let sent = self.send_spec(&job.spec);
        job.messages += sent.0;
        job.bytes += sent.1;
        // Workers wait on the control block between jobs: this posting tells them to take
        // their chunks from the channel until `EndJob`.
        let posting = self.open_channel_posting(&job.spec);
        job.posting = posting;
        // Prime round-robin (first chunk to every worker, then the second, …) so that a job
        // with few chunks still spreads over all workers.
        for _ in 0..job.depth {
            for w in 0..self.workers.len() {
                self.top_up(w, 1, &mut job);
            }
            if job.ledger.retry_is_empty() && job.dispenser.remaining() == 0 {
                break;
            }
        }

        // A stopped iteration still waits for the chunks in flight: their `Done` must not
        // reach the next job.
        while if job.stopped() {
            job.ledger.held() > 0
        } else {
            job.elements_done < n || job.streaming.as_ref().is_some_and(|s| s.base < s.windows)
        } {
            if let Some(signal) = self.supervision.interrupt.requested() {
                return Err(interrupted(signal, &job, self.workers.len()));
            }
            if let Some(stop) = self.job_stop.due() {
                return Err(stop.error(job.done, job.elements_done, n));
            }
            let ended = self.ended_workers(&mut job, Pool::handle)?;
            job.dead.extend(ended);
            while let Some((w, pid)) = job.dead.pop() {
                if self.workers[w].pid == pid {
                    self.replace(w, Why::Died, &mut job)?;
                }
            }
            self.poll_starting(&mut job)?;
            // Streaming: a window freed by the writer does not wake the select below, so
            // look at the writer often; and a replacement's handshake moves on only when
            // polled.
            let tick = if self.any_starting() {
                spawn::START_TICK
            } else if job.streaming.is_some() {
                STREAM_TICK
            } else {
                TICK
            };
            let wait = job.ledger.next_deadline().map_or(tick, |d| {
                d.saturating_duration_since(Instant::now()).min(tick)
            });
            match self.set.try_select_timeout(wait) {
                Ok(events) => {
                    for event in events {
                        self.handle(event, &mut job)?;
                    }
                }
                Err(TrySelectError::Empty) => {}
                Err(TrySelectError::IoError(e)) => {
                    return Err(Error::Ipc(format!("waiting for workers: {e}")));
                }
            }
            if let Some(limit) = self.supervision.chunk_timeout {
                for w in job.ledger.late(Instant::now()) {
                    crate::engine::sys::kill_hard(self.workers[w].pid);
                    self.replace(w, Why::TimedOut(limit), &mut job)?;
                }
            }
            self.windows_written(&mut job)?;
            if job.elements_done != job.told_done {
                job.told_done = job.elements_done;
                let (done, n) = (job.elements_done, job.n);
                observe::tell(&self.observer, Event::Progress { done, n });
            }
        }
        for w in 0..self.workers.len() {
            self.send(w, ToWorker::EndJob { posting }, &mut job);
        }
        self.close_later(posting);
        // A fault at a chunk the job never had did not fire (a job with a measured chunk size
        // that ended before the measurement).
        if !job.stopped() {
            crate::engine::fault::check_faults(&job.spec.faults, job.done)?;
        }

        let end = Instant::now();
        let wall = end - began;
        if let Some(trace) = job.trace.as_mut() {
            trace.finish();
        }
        let workers = self
            .workers
            .iter()
            .zip(&job.held)
            .enumerate()
            .map(|(w, (slot, h))| {
                let usage = crate::engine::sys::process_usage(slot.pid);
                let os = crate::engine::sys::OsCounts::of_process(slot.pid)
                    .zip(h.os_at_start)
                    .map(|(now, then)| now.since(then));
                WorkerStats {
                    id: slot.id,
                    pid: slot.pid,
                    chunks: h.done,
                    compute_s: h.compute_ns as f64 / 1e9,
                    cpu_s: usage
                        .zip(h.cpu_at_start)
                        .map(|((now, _), then)| now.saturating_sub(then).as_secs_f64()),
                    peak_rss_bytes: usage.map(|(_, rss)| rss),
                    idle_end_s: h.last_done.map_or(wall, |t| end - t).as_secs_f64(),
                    cpu: spawn::cpu_for(slot.id, &self.pin),
                    claims: 0,
                    dispatch_s: 0.0,
                    sleeps: 0,
                    setup_s: self.control.counters(w).setup_ns as f64 / 1e9,
                    minor_faults: os.map(|o| o.minor_faults),
                    major_faults: os.map(|o| o.major_faults),
                    voluntary_switches: os.map(|o| o.voluntary_switches),
                    involuntary_switches: os.map(|o| o.involuntary_switches),
                }
            })
            .collect();
        let per_chunk = |total: Duration| {
            if job.done == 0 {
                0.0
            } else {
                total.as_secs_f64() / job.done as f64
            }
        };
        self.reduced = std::mem::take(&mut job.reduced);
        let stopped_early = job.stopped();
        Ok(JobStats {
            n,
            inflight: job.depth,
            chunk_size: job.dispenser.chunk_size(),
            chunks: job.done,
            wall,
            ipc_messages: job.messages,
            ipc_bytes: job.bytes,
            // Filled in by `Pool::job`.
            input_bytes: 0,
            input_sends: 0,
            param_bytes: 0,
            shm_bytes: match job.spec.transport {
                Transport::Shm if job.spec.output => n * elem_size,
                _ => 0,
            },
            workers,
            restarts: job.ledger.restarts(),
            retried_chunks: job.ledger.retried_chunks(),
            deaths: job.deaths,
            reduction: None,
            schedule: job.dispenser.schedule(),
            transport: job.spec.transport,
            auto_chunk: job.auto.and_then(|a| a.result),
            chunk_rtt_mean_s: per_chunk(job.rtt_total),
            chunk_compute_mean_s: per_chunk(job.compute_total),
            channel_result_bytes: job.channel_result_bytes,
            dispatch: crate::engine::protocol::Dispatch::Channel,
            claims: 0,
            worker_sleeps: 0,
            parent_sleeps: 0,
            wake_messages: 0,
            dispatch_per_chunk_s: per_chunk(job.rtt_total.saturating_sub(job.compute_total)),
            recycles: job.recycles + self.settle_retired()?,
            chunks_delivered: job.each.as_ref().map_or(0, |e| e.delivered),
            stopped_early,
            trace: job.trace,
        })
    }

    /// Takes the windows the writer has finished: their slots are free, so the hand-out
    /// limit moves on and idle workers get chunks of the next windows.
    fn windows_written(&mut self, job: &mut Job) -> Result<()> {
        let Some(streaming) = job.streaming.as_mut() else {
            return Ok(());
        };
        let mut moved = false;
        loop {
            match streaming.from_writer.try_recv() {
                Ok(Ok(_)) => {
                    if let Some(trace) = job.trace.as_mut() {
                        let detail = format!("window {}", streaming.base);
                        trace.event(TraceEventKind::WindowWritten, None, None, detail);
                    }
                    streaming.base += 1;
                    streaming.done.pop_front();
                    streaming.done.push_back(0);
                    moved = true;
                }
                Ok(Err(message)) => return Err(Error::Output(message)),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    if streaming.base < streaming.windows {
                        return Err(Error::Output("the window writer stopped early".into()));
                    }
                    break;
                }
            }
        }
        if moved {
            let limit = (streaming.base + streaming.layout.ring) * streaming.layout.window_elems;
            job.dispenser.set_limit(limit);
            for w in 0..self.workers.len() {
                self.top_up(w, job.depth, job);
            }
        }
        Ok(())
    }

    fn handle(&mut self, event: IpcSelectionResult, job: &mut Job) -> Result<()> {
        match event {
            IpcSelectionResult::MessageReceived(rid, message) => {
                let Some((w, msg, size)) = self.decode(rid, message)? else {
                    return Ok(());
                };
                job.messages += 1;
                job.bytes += size;
                match msg {
                    FromWorker::Done {
                        id,
                        compute_ns,
                        reduction,
                        data,
                    } => self.done(w, id, compute_ns, reduction, data, job),
                    FromWorker::Panicked {
                        id,
                        message,
                        location,
                    } => self.panicked(w, id, message, location, job),
                    FromWorker::Failed { message } => Err(Error::WorkerFailed {
                        id: self.workers[w].id,
                        pid: self.workers[w].pid,
                        message,
                    }),
                    FromWorker::Retiring => {
                        // No more chunks for it; once it holds none, it may go.
                        self.workers[w].retiring = true;
                        if job.ledger.held_by(w) == 0 {
                            self.let_go(w);
                        }
                        Ok(())
                    }
                    // A wake-up meant for an earlier job on the queue, sent just as that
                    // job ended: it carries nothing, and nobody here sleeps on it.
                    FromWorker::Wake => Ok(()),
                    other => Err(Error::Ipc(format!(
                        "worker {w} sent an unexpected {other:?}"
                    ))),
                }
            }
            IpcSelectionResult::ChannelClosed(rid) => match self.by_receiver.get(&rid).copied() {
                Some(w) if self.workers[w].retiring => {
                    job.recycles += 1;
                    self.recycle(w)
                }
                Some(w) => self.replace(w, Why::Died, job),
                None => Ok(()),
            },
        }
    }

    /// The kernel panicked on chunk `id` in worker `w`, which caught it. By default the
    /// job fails naming the chunk and the panic; with `retry_panics` the worker is replaced
    /// and the chunk retried, like a crash.
    fn panicked(
        &mut self,
        w: usize,
        id: u64,
        message: String,
        location: Option<String>,
        job: &mut Job,
    ) -> Result<()> {
        let Some(chunk) = job.ledger.holding(w, id) else {
            return Err(Error::Ipc(format!(
                "worker {w} reported a panic on chunk {id}, which it did not hold"
            )));
        };
        if self.supervision.retry_panics {
            crate::engine::sys::kill_hard(self.workers[w].pid);
            return self.replace(w, Why::Panicked, job);
        }
        Err(Error::KernelPanicked {
            chunk: chunk.id,
            start: chunk.start,
            end: chunk.end,
            worker: self.workers[w].id,
            pid: self.workers[w].pid,
            message,
            location,
        })
    }

    /// Worker `w` finished chunk `id`.
    fn done(
        &mut self,
        w: usize,
        id: u64,
        compute_ns: u64,
        reduction: Option<serde_bytes::ByteBuf>,
        data: Option<serde_bytes::ByteBuf>,
        job: &mut Job,
    ) -> Result<()> {
        let now = Instant::now();
        let attempt = match job.trace.is_some() {
            true => job.ledger.attempt_of(w, id),
            false => None,
        };
        let Some((chunk, rtt)) = job.ledger.done(w, id, now) else {
            return Err(Error::Ipc(format!(
                "worker {w} reported chunk {id}, which it did not hold"
            )));
        };
        if job.spec.reduce_slot > 0 && reduction.is_none() {
            return Err(Error::Ipc(format!(
                "worker {} (pid {}) reported chunk {} (elements {}..{}) done without its \
                 accumulator, though the job reduces",
                self.workers[w].id, self.workers[w].pid, chunk.id, chunk.start, chunk.end
            )));
        }
        if let Some(trace) = job.trace.as_mut() {
            // The parent's clock: the `Done` arrived now, after `compute_ns` of kernel.
            let end_ns = crate::engine::control::monotonic_ns();
            trace.attempts.push(TraceAttempt {
                chunk: chunk.id,
                range: chunk.start..chunk.end,
                worker: self.workers[w].id,
                attempt: attempt.unwrap_or(0),
                start_ns: end_ns.saturating_sub(compute_ns),
                end_ns,
                finished: true,
                compute_ns: Some(compute_ns),
            });
        }
        self.workers[w].ran_chunks += 1;
        let h = &mut job.held[w];
        h.last_done = Some(now);
        h.done += 1;
        h.compute_ns += compute_ns;
        let compute = Duration::from_nanos(compute_ns);
        job.done += 1;
        job.elements_done += chunk.len();
        if let Some(streaming) = job.streaming.as_mut() {
            streaming.chunk_done(chunk, job.n);
        }
        job.rtt_total += rtt;
        job.compute_total += compute;
        let acc = reduction.map(serde_bytes::ByteBuf::into_vec);
        if let Some(acc) = &acc {
            job.reduced.push(super::ReducedChunk {
                range: chunk.start..chunk.end,
                acc: acc.clone(),
            });
        }
        if let Some(data) = data {
            self.place(chunk, &data, u64::from(job.spec.elem_size))?;
            job.channel_result_bytes += data.len() as u64;
        }
        // Its results are in place (written by the worker, or just copied): hand it on.
        if let Some(each) = job.each.as_mut() {
            let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
            each.done(
                chunk.id,
                chunk.start..chunk.end,
                acc,
                mapping,
                u64::from(job.spec.elem_size),
            );
        }
        if let Some(auto) = job.auto.as_mut()
            && auto.awaits(chunk.len())
            && auto.record(chunk.len(), compute, rtt, job.dispenser.remaining() == 0)
        {
            let (remaining, boundary) = (job.dispenser.remaining(), job.dispenser.boundary());
            let chosen = auto.choose(remaining, boundary, self.workers.len()).chosen;
            job.dispenser.set_chunk_size(chosen);
            // Only now is the job's chunk count known.
            if let Some(last) = job.spec.faults.iter().map(|f| f.chunk).max() {
                let chunks = job.dispenser.chunks_up_to(last);
                crate::engine::fault::check_faults(&job.spec.faults, chunks)?;
            }
        }
        if let Some(probe) = job.depth_probe.as_mut()
            && let Some(depth) = probe.record(compute, rtt)
        {
            job.depth_probe = None;
            let most = super::max_inflight().min(super::PoolBuilder::AUTO_MAX_INFLIGHT);
            if depth.min(most) > job.depth {
                job.depth = depth.min(most);
                for other in 0..self.workers.len() {
                    let depth = job.depth;
                    self.top_up(other, depth, job);
                }
            }
        }
        if self.workers[w].retiring && job.ledger.held_by(w) == 0 {
            self.let_go(w);
        }
        self.top_up(w, 1, job);
        Ok(())
    }

    /// Copies a chunk's results that came over the channel into the shared region.
    fn place(&self, chunk: Chunk, data: &[u8], elem_size: u64) -> Result<()> {
        let (lo, hi) = (chunk.start * elem_size, chunk.end * elem_size);
        let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
        if data.len() as u64 != hi - lo || hi as usize > mapping.len() {
            return Err(Error::Ipc(format!(
                "chunk {} came back with {} bytes, expected {}",
                chunk.id,
                data.len(),
                hi - lo
            )));
        }
        // SAFETY: the chunk is finished (its Done just arrived) and with the channel
        // transport no worker maps the region, so nothing else touches these bytes; the
        // region is read only after the job.
        unsafe { mapping.slice_mut(lo as usize..hi as usize) }.copy_from_slice(data);
        Ok(())
    }

    /// Sends worker `w` up to `count` more chunks, never more than `inflight` in all.
    fn top_up(&mut self, w: usize, count: usize, job: &mut Job) {
        if job.stopped() {
            return;
        }
        for _ in 0..count {
            // A process with a chunk limit gets exactly that many, then retires.
            let spent = self.recycle.0 > 0
                && self.workers[w].ran_chunks + job.ledger.held_by(w) as u64 >= self.recycle.0;
            if job.ledger.held_by(w) >= job.depth
                || self.workers[w].tx.is_none()
                || self.workers[w].retiring
                || spent
            {
                return;
            }
            let Some(held) = job.ledger.hand_out(w, &mut job.dispenser, Instant::now()) else {
                return;
            };
            let msg = ToWorker::Chunk {
                posting: job.posting,
                id: held.chunk.id,
                start: held.chunk.start,
                end: held.chunk.end,
                attempt: held.attempt,
            };
            self.send(w, msg, job);
        }
    }

    /// Sends `msg` to worker `w`. A worker that is gone is queued in `job.dead` for the loop
    /// to replace (its channel-closed event may come later or not at all).
    fn send(&mut self, w: usize, msg: ToWorker, job: &mut Job) {
        let size = wire_size(&msg);
        let Some(tx) = self.workers[w].tx.as_ref() else {
            return;
        };
        match tx.send(msg) {
            Ok(()) => {
                job.messages += 1;
                job.bytes += size;
            }
            Err(_) => job.dead.push((w, self.workers[w].pid)),
        }
    }

    /// Reaps worker `w`, hands its chunks out again (blaming the one it was running), and
    /// starts a replacement with the same id.
    fn replace(&mut self, w: usize, why: Why, job: &mut Job) -> Result<()> {
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
        };
        if let Some(trace) = job.trace.as_mut() {
            let (held, since) = job.ledger.held_chunks(w);
            let now_ns = crate::engine::control::monotonic_ns();
            if let (Some(front), Some(since)) = (held.first(), since) {
                trace.attempts.push(TraceAttempt {
                    chunk: front.chunk.id,
                    range: front.chunk.start..front.chunk.end,
                    worker: slot_id,
                    attempt: front.attempt,
                    start_ns: super::trace::ns_of(since).min(now_ns),
                    end_ns: now_ns,
                    finished: false,
                    compute_ns: None,
                });
            }
            let kind = match why {
                Why::TimedOut(_) => TraceEventKind::Timeout,
                _ => TraceEventKind::Death,
            };
            let chunk = held.first().map(|c| c.chunk.id);
            trace.event(kind, Some(slot_id), chunk, format!("pid {pid}: {cause}"));
            for (k, c) in held.iter().enumerate() {
                let attempt = c.attempt + u32::from(k == 0);
                let detail = format!("attempt {attempt}");
                trace.event(TraceEventKind::Retry, None, Some(c.chunk.id), detail);
            }
        }
        let lost = job.ledger.lose(w, slot_id, pid, cause)?;
        let (running, text) = (lost.running, lost.loss.to_string());
        let (worker, what) = (slot_id, text.as_str());
        observe::tell(&self.observer, Event::WorkerLost { worker, pid, what });
        let id = self.workers[w].id;
        // Replacements are always spawned: by now this process has threads, so it may not
        // fork. The handshake goes on in `poll_starting` while the others compute.
        let new_pid = self.begin_start(w)?;
        if let Some(trace) = job.trace.as_mut() {
            let detail = format!("pid {new_pid} replaces pid {pid}");
            trace.event(TraceEventKind::Restart, Some(id), None, detail);
        }
        job.deaths.push(Death {
            id,
            pid,
            cause: lost.loss.cause_text(),
            chunk: running,
            replaced_by: Some(new_pid),
        });
        Ok(())
    }

    /// Lets a retiring worker (channel dispatch) go: it holds no chunk, so `Shutdown` ends
    /// it; its closed channel then brings [`Pool::recycle`].
    fn let_go(&mut self, w: usize) {
        if let Some(tx) = self.workers[w].tx.as_ref() {
            let _ = tx.send(ToWorker::Shutdown);
        }
    }

    /// Worker `w` retired after its recycling limit and has exited (or is exiting): reap it
    /// and start a fresh process in its slot. Not a death: nothing is blamed or retried.
    pub(super) fn recycle(&mut self, w: usize) -> Result<()> {
        self.retire(w);
        self.begin_start(w)?;
        Ok(())
    }

    /// Reaps retired worker `w` (within the grace period) and clears its slot.
    pub(super) fn retire(&mut self, w: usize) {
        let slot = &mut self.workers[w];
        if let Some(rid) = slot.rid.take() {
            self.by_receiver.remove(&rid);
        }
        slot.retiring = false;
        slot.reap(self.supervision.grace);
        self.control.reset_slot(w);
    }

    /// The worker a message came from, the message, and its size on the wire; `None` for a
    /// message from a worker already replaced (stale), or from the waker.
    pub(super) fn decode(
        &self,
        rid: u64,
        message: ipc_channel::ipc::IpcMessage,
    ) -> Result<Option<(usize, FromWorker, u64)>> {
        let Some(w) = self.by_receiver.get(&rid).copied() else {
            return Ok(None);
        };
        let msg: FromWorker = message
            .to()
            .map_err(|e| Error::Ipc(format!("worker {w} sent a bad message: {e}")))?;
        let size = wire_size(&msg);
        Ok(Some((w, msg, size)))
    }

    /// A replacement's start failed: one more restart, within the limit, and another start;
    /// a failure no retry can mend fails the job.
    pub(super) fn start_again(
        &mut self,
        w: usize,
        failure: spawn::StartFailure,
        ledger: &mut Ledger,
        deaths: &mut Vec<Death>,
    ) -> Result<()> {
        self.workers[w].starting = None;
        let (id, pid) = (self.workers[w].id, self.workers[w].pid);
        if !failure.retryable() {
            return Err(failure.into_error());
        }
        let loss = failure.loss(id, pid);
        ledger.restart(loss)?;
        let text = loss.to_string();
        let what = text.as_str();
        observe::tell(
            &self.observer,
            Event::WorkerLost {
                worker: id,
                pid,
                what,
            },
        );
        let new_pid = self.begin_start(w)?;
        deaths.push(Death {
            id,
            pid,
            cause: loss.cause_text(),
            chunk: None,
            replaced_by: Some(new_pid),
        });
        Ok(())
    }

    /// Starts up to `most` of the workers a pool started in the background has not started
    /// yet; their handshakes are polled by the loop like replacements'.
    pub(super) fn spawn_pending(&mut self, most: usize) -> Result<()> {
        let pending: Vec<usize> = (0..self.workers.len())
            .filter(|&w| self.workers[w].unspawned)
            .take(most)
            .collect();
        for w in pending {
            self.workers[w].unspawned = false;
            self.begin_start(w)?;
        }
        Ok(())
    }

    /// Whether a worker is on its way: not started yet, or in its handshake.
    pub(super) fn any_starting(&self) -> bool {
        self.workers
            .iter()
            .any(|w| w.unspawned || w.starting.is_some())
    }

    /// Spawns a replacement for slot `w`; its handshake is polled by the loop.
    pub(super) fn begin_start(&mut self, w: usize) -> Result<u32> {
        // What the old process left in its claim slot (a channel posting it was inside)
        // is not the new one's.
        self.control.reset_slot(w);
        let mut starting = spawn::spawn_worker(
            &self.exe,
            &self.dir,
            self.region.raw_fd(),
            self.workers[w].id,
            self.handshake_timeout,
            &self.pin,
        )?;
        starting.forward_output();
        let pid = starting.pid();
        self.workers[w].pid = pid;
        self.workers[w].starting = Some(starting);
        Ok(pid)
    }

    /// Moves every replacement's handshake on: a ready one gets the job and its chunks; one
    /// killed or hung on the way is one more restart, and is replaced within the limits.
    fn poll_starting(&mut self, job: &mut Job) -> Result<()> {
        self.spawn_pending(SPAWN_BATCH)?;
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
                    job.messages += messages;
                    job.bytes += bytes;
                    job.held[w].cpu_at_start = crate::engine::sys::process_cpu(pid);
                    job.held[w].os_at_start = crate::engine::sys::OsCounts::of_process(pid);
                    let sent = self.send_spec(&job.spec);
                    job.messages += sent.0;
                    job.bytes += sent.1;
                    if self.workers[w].spec_sent != job.spec.spec_id {
                        job.dead.push((w, pid));
                    }
                    let depth = job.depth;
                    self.top_up(w, depth, job);
                }
                spawn::Progress::Failed(failure) => {
                    self.start_again(w, failure, &mut job.ledger, &mut job.deaths)?;
                }
            }
        }
        Ok(())
    }
}

fn interrupted(signal: i32, job: &Job, workers: usize) -> Error {
    Error::Interrupted {
        signal,
        phase: Phase::Pool,
        chunks_done: job.done,
        chunks: job.done + job.ledger.outstanding(),
        elements_done: job.elements_done,
        n: job.n,
        workers,
        needed_term: 0,
        needed_kill: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn the_depth_covers_a_round_trip_with_queued_chunks() {
        // 2 workers: eight chunks are measured first.
        let mut probe = DepthProbe::new(2);
        for _ in 0..7 {
            assert_eq!(probe.record(5 * US, 25 * US), None);
        }
        // 20 µs of messaging over 5 µs of compute: four more queued, five in all.
        assert_eq!(probe.record(5 * US, 25 * US), Some(5));
        // Chunks longer than their round trip keep the starting depth.
        let mut slow = DepthProbe::new(1);
        let depths: Vec<_> = (0..4).map(|_| slow.record(900 * US, 1000 * US)).collect();
        assert_eq!(depths.last(), Some(&Some(2)));
        // Chunks that compute for nothing ask for as many as allowed.
        let mut free = DepthProbe::new(1);
        let depths: Vec<_> = (0..4)
            .map(|_| free.record(Duration::ZERO, 30 * US))
            .collect();
        assert!(depths.last().is_some_and(|d| d.is_some_and(|d| d > 16)));
    }
}
