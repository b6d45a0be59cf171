//! Channel dispatch: every chunk is a message to a worker, and its `Done` one back.
//!
//! Each worker holds at most `inflight` chunks; whenever one replies `Done`, the next chunk
//! of the [`Dispenser`] (static, dynamic or guided) goes to that worker. Chunks are made on
//! demand (or taken from the retry queue first), never listed up front.
//!
//! This is one of the supervisor's two dispatchers (see `supervise.rs`): it keeps who
//! holds which chunk in the [`Ledger`](super::ledger::Ledger) (plain data, unit-tested
//! without processes), and the supervisor keeps its promises over it:
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
use std::time::{Duration, Instant};

use super::auto_chunk::AutoProbe;
use super::ledger::Lost;
use super::supervise::{Dispatcher, Gone, JobCore, Progress, Why};
use super::trace::{TraceAttempt, TraceEventKind};
use super::window::Ring;
use super::{Finished, JobOptions, Pool, Tally, spawn};
use crate::engine::protocol::{Dispatch, FromWorker, ToWorker, wire_size};
use crate::engine::schedule::{Chunk, Dispenser, Schedule};
use crate::error::{Error, Result};

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

/// The state of one job on the channels.
struct ChannelJob<'f> {
    core: JobCore<'f>,
    /// The posting its chunks belong to.
    posting: u64,
    dispenser: Dispenser,
    held: Vec<Held>,
    /// Chunks done.
    done: u64,
    /// Elements in the chunks done.
    elements_done: u64,
    channel_result_bytes: u64,
    rtt_total: Duration,
    compute_total: Duration,
    /// Chunks in flight per worker now.
    depth: usize,
    /// Measuring the first chunks to choose `depth` (with `inflight_auto`).
    depth_probe: Option<DepthProbe>,
    /// Set for a streamed job (`--output`).
    ring: Option<Ring>,
    /// Streaming: elements done in each window from the ring's base on (ring-many
    /// entries).
    window_done: VecDeque<u64>,
}

/// Where a job on the channels stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Handing out chunks and collecting their `Done`s (and, streaming, until the last
    /// window is written).
    Running,
    /// The caller stopped iterating: nothing more is handed out, and the chunks in flight
    /// are waited for, so that their `Done` does not reach the next job.
    Draining,
    /// Nothing is left to wait for.
    Finished,
}

impl ChannelJob<'_> {
    fn stage(&self) -> Stage {
        if self.core.stopped() {
            return match self.core.ledger.held() {
                0 => Stage::Finished,
                _ => Stage::Draining,
            };
        }
        if self.elements_done < self.core.n || self.ring.as_ref().is_some_and(|r| !r.complete()) {
            Stage::Running
        } else {
            Stage::Finished
        }
    }

    /// Counts a finished chunk and hands every complete window, in order, to the writer.
    fn window_chunk_done(&mut self, chunk: Chunk) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let index = chunk.start / ring.layout.window_elems;
        if let Some(d) = self.window_done.get_mut((index - ring.base) as usize) {
            *d += chunk.len();
        }
        while let Some(window) = ring.next(self.core.n) {
            if self.window_done[(window.index - ring.base) as usize] < window.len
                || !ring.hand(window)
            {
                break;
            }
        }
    }
}

impl<'f> Dispatcher<'f> for ChannelJob<'f> {
    fn core(&mut self) -> &mut JobCore<'f> {
        &mut self.core
    }

    fn lose(&mut self, _: &mut Pool, gone: Gone) -> Result<Lost> {
        let Gone {
            w,
            id,
            pid,
            why,
            cause,
        } = gone;
        if self.core.trace.is_some() {
            let (held, since) = self.core.ledger.held_chunks(w);
            if let (Some(front), Some(since)) = (held.first(), since) {
                let start_ns = super::trace::ns_of(since);
                self.core
                    .trace_unfinished(front.chunk, id, front.attempt, start_ns);
            }
            let chunk = held.first().map(|c| c.chunk.id);
            self.core
                .trace_event(why.trace_kind(), Some(id), chunk, || {
                    format!("pid {pid}: {cause}")
                });
            for (k, c) in held.iter().enumerate() {
                let attempt = c.attempt + u32::from(k == 0);
                self.core
                    .trace_event(TraceEventKind::Retry, None, Some(c.chunk.id), || {
                        format!("attempt {attempt}")
                    });
            }
        }
        self.core.ledger.lose(w, id, pid, cause)
    }

    fn panicked_chunk(&self, _: &Pool, w: usize, id: u64) -> Option<Chunk> {
        self.core.ledger.holding(w, id)
    }

    fn message(&mut self, pool: &mut Pool, w: usize, msg: FromWorker) -> Result<()> {
        match msg {
            FromWorker::Done {
                id,
                compute_ns,
                reduction,
                data,
            } => pool.done(w, id, compute_ns, reduction, data, self),
            other => Err(Error::Ipc(format!(
                "worker {w} sent an unexpected {other:?}"
            ))),
        }
    }

    fn retiring(&mut self, pool: &mut Pool, w: usize) {
        if self.core.ledger.held_by(w) == 0 {
            pool.let_go(w);
        }
    }

    fn retired(&mut self, _: &mut Pool, _: usize) {}

    fn joined(&mut self, pool: &mut Pool, w: usize, pid: u32) {
        self.held[w].cpu_at_start = crate::engine::sys::process_cpu(pid);
        self.held[w].os_at_start = crate::engine::sys::OsCounts::of_process(pid);
        let depth = self.depth;
        pool.top_up(w, depth, self);
    }

    fn progress(&self, _: &Pool) -> Progress {
        Progress {
            chunks_done: self.done,
            chunks: self.done + self.core.ledger.outstanding(),
            elements_done: self.elements_done,
        }
    }
}

impl Pool {
    /// Runs a job over the channels: every chunk is a message to a worker, and its `Done`
    /// a message back.
    pub(super) fn dispatch(
        &mut self,
        core: JobCore<'_>,
        dispenser: Dispenser,
        options: &JobOptions,
        ring: Option<Ring>,
    ) -> Result<Finished> {
        let mut job = self.channel_job(core, dispenser, options, ring);
        self.send_spec(&mut job.core);
        let posting = self.open_channel_posting(&job.core.spec);
        job.posting = posting;
        self.prime(&mut job);
        while job.stage() != Stage::Finished {
            self.channel_turn(&mut job)?;
        }
        for w in 0..self.workers.len() {
            self.send(w, ToWorker::EndJob { posting }, &mut job);
        }
        self.close_later(posting);
        job.core.check_faults_fired(job.done)?;
        self.channel_finish(job)
    }

    /// A job on the channels about to start: the probe of `--chunk-size auto` (which sets
    /// the dispenser's chunk length) and of the depth, and each worker's counters now.
    fn channel_job<'f>(
        &mut self,
        mut core: JobCore<'f>,
        mut dispenser: Dispenser,
        options: &JobOptions,
        ring: Option<Ring>,
    ) -> ChannelJob<'f> {
        let n = core.n;
        let workers = self.workers.len() as u64;
        core.auto =
            (options.auto_chunk && dispenser.schedule() != Schedule::Static && n > 0).then(|| {
                let probe = AutoProbe::new(n, workers, self.inflight as u64);
                dispenser.set_chunk_size(probe.probe_size);
                probe
            });
        let held = (0..self.workers.len())
            .map(|w| Held {
                cpu_at_start: crate::engine::sys::process_cpu(self.workers[w].pid),
                os_at_start: crate::engine::sys::OsCounts::of_process(self.workers[w].pid),
                ..Held::default()
            })
            .collect();
        let window_done = match &ring {
            Some(r) => (0..r.layout.ring).map(|_| 0).collect(),
            None => VecDeque::new(),
        };
        ChannelJob {
            core,
            posting: 0,
            dispenser,
            held,
            done: 0,
            elements_done: 0,
            channel_result_bytes: 0,
            rtt_total: Duration::ZERO,
            compute_total: Duration::ZERO,
            depth: self.inflight,
            depth_probe: self
                .inflight_auto
                .then(|| DepthProbe::new(self.workers.len())),
            ring,
            window_done,
        }
    }

    /// Primes round-robin (first chunk to every worker, then the second, …) so that a job
    /// with few chunks still spreads over all workers.
    fn prime(&mut self, job: &mut ChannelJob) {
        for _ in 0..job.depth {
            for w in 0..self.workers.len() {
                self.top_up(w, 1, job);
            }
            if job.core.ledger.retry_is_empty() && job.dispenser.remaining() == 0 {
                break;
            }
        }
    }

    /// One turn of the loop: supervision, then the messages that arrived (or the wait for
    /// them), late chunks, the windows written and progress.
    fn channel_turn(&mut self, job: &mut ChannelJob) -> Result<()> {
        self.supervise(job)?;
        // Streaming: a window freed by the writer does not wake the select below, so look
        // at the writer often; and a replacement's handshake moves on only when polled.
        let tick = if self.any_starting() {
            spawn::START_TICK
        } else if job.ring.is_some() {
            STREAM_TICK
        } else {
            TICK
        };
        let wait = job.core.ledger.next_deadline().map_or(tick, |d| {
            d.saturating_duration_since(Instant::now()).min(tick)
        });
        self.select(wait, job)?;
        if let Some(limit) = self.supervision.chunk_timeout {
            for w in job.core.ledger.late(Instant::now()) {
                crate::engine::sys::kill_hard(self.workers[w].pid);
                self.replace(w, Why::TimedOut(limit), job)?;
            }
        }
        self.windows_written(job)?;
        let done = job.elements_done;
        job.core.tell_progress(self, done);
        Ok(())
    }

    /// The job's measurements, once its last chunk is in.
    fn channel_finish(&mut self, job: ChannelJob) -> Result<Finished> {
        let end = Instant::now();
        let wall = end - job.core.began;
        let workers = (0..self.workers.len())
            .map(|w| {
                let (slot, h) = (&self.workers[w], &job.held[w]);
                let usage = crate::engine::sys::process_usage(slot.pid);
                let os = crate::engine::sys::OsCounts::of_process(slot.pid)
                    .zip(h.os_at_start)
                    .map(|(now, then)| now.since(then));
                let mut stats = self.worker_stats(w).with_os(os);
                stats.chunks = h.done;
                stats.compute_s = h.compute_ns as f64 / 1e9;
                stats.cpu_s = usage
                    .zip(h.cpu_at_start)
                    .map(|((now, _), then)| now.saturating_sub(then).as_secs_f64());
                stats.peak_rss_bytes = usage.map(|(_, rss)| rss);
                stats.idle_end_s = h.last_done.map_or(wall, |t| end - t).as_secs_f64();
                stats.setup_s = self.control.counters(w).setup_ns as f64 / 1e9;
                stats
            })
            .collect();
        let per_chunk = |total: Duration| {
            if job.done == 0 {
                0.0
            } else {
                total.as_secs_f64() / job.done as f64
            }
        };
        let tally = Tally {
            n: job.core.n,
            wall,
            workers,
            inflight: job.depth,
            chunk_size: job.dispenser.chunk_size(),
            chunks: job.done,
            schedule: job.dispenser.schedule(),
            transport: job.core.spec.transport,
            dispatch: Dispatch::Channel,
            chunk_rtt_mean_s: per_chunk(job.rtt_total),
            chunk_compute_mean_s: per_chunk(job.compute_total),
            dispatch_per_chunk_s: per_chunk(job.rtt_total.saturating_sub(job.compute_total)),
            channel_result_bytes: job.channel_result_bytes,
            ..Tally::default()
        };
        job.core.finish(self, tally)
    }

    /// Takes the windows the writer has finished: their slots are free, so the hand-out
    /// limit moves on and idle workers get chunks of the next windows.
    fn windows_written(&mut self, job: &mut ChannelJob) -> Result<()> {
        let Some(ring) = job.ring.as_mut() else {
            return Ok(());
        };
        let before = ring.base;
        let (core, window_done) = (&mut job.core, &mut job.window_done);
        ring.written(|index| {
            core.trace_event(TraceEventKind::WindowWritten, None, None, || {
                format!("window {index}")
            });
            window_done.pop_front();
            window_done.push_back(0);
        })?;
        if ring.base != before {
            job.dispenser.set_limit(ring.limit());
            for w in 0..self.workers.len() {
                self.top_up(w, job.depth, job);
            }
        }
        Ok(())
    }

    /// Worker `w` finished chunk `id`.
    fn done(
        &mut self,
        w: usize,
        id: u64,
        compute_ns: u64,
        reduction: Option<serde_bytes::ByteBuf>,
        data: Option<serde_bytes::ByteBuf>,
        job: &mut ChannelJob,
    ) -> Result<()> {
        let now = Instant::now();
        let attempt = match job.core.trace.is_some() {
            true => job.core.ledger.attempt_of(w, id),
            false => None,
        };
        let Some((chunk, rtt)) = job.core.ledger.done(w, id, now) else {
            return Err(Error::Ipc(format!(
                "worker {w} reported chunk {id}, which it did not hold"
            )));
        };
        if job.core.spec.reduce_slot > 0 && reduction.is_none() {
            return Err(Error::Ipc(format!(
                "worker {} (pid {}) reported chunk {} (elements {}..{}) done without its \
                 accumulator, though the job reduces",
                self.workers[w].id, self.workers[w].pid, chunk.id, chunk.start, chunk.end
            )));
        }
        if let Some(trace) = job.core.trace.as_mut() {
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
        job.window_chunk_done(chunk);
        job.rtt_total += rtt;
        job.compute_total += compute;
        self.results_in(chunk, reduction, data, job)?;
        self.measured(chunk, compute, rtt, job)?;
        if self.workers[w].retiring && job.core.ledger.held_by(w) == 0 {
            self.let_go(w);
        }
        self.top_up(w, 1, job);
        Ok(())
    }

    /// A finished chunk's results: its accumulator kept, its data (channel transport)
    /// copied into place, and the chunk handed to the caller's callback.
    fn results_in(
        &mut self,
        chunk: Chunk,
        reduction: Option<serde_bytes::ByteBuf>,
        data: Option<serde_bytes::ByteBuf>,
        job: &mut ChannelJob,
    ) -> Result<()> {
        let acc = reduction.map(serde_bytes::ByteBuf::into_vec);
        if let Some(acc) = &acc {
            job.core.reduced.push(super::ReducedChunk {
                range: chunk.start..chunk.end,
                acc: acc.clone(),
            });
        }
        let elem_size = u64::from(job.core.spec.elem_size);
        if let Some(data) = data {
            self.place(chunk, &data, elem_size)?;
            job.channel_result_bytes += data.len() as u64;
        }
        // Its results are in place (written by the worker, or just copied): hand it on.
        if let Some(each) = job.core.each.as_mut() {
            let mapping = self.mapping.as_ref().ok_or(Error::Broken)?;
            each.done(chunk.id, chunk.start..chunk.end, acc, mapping, elem_size);
        }
        Ok(())
    }

    /// A finished chunk's timing: the measured chunk length, once the probes are in, and
    /// the depth, once the first chunks are.
    fn measured(
        &mut self,
        chunk: Chunk,
        compute: Duration,
        rtt: Duration,
        job: &mut ChannelJob,
    ) -> Result<()> {
        if let Some(auto) = job.core.auto.as_mut()
            && auto.awaits(chunk.len())
            && auto.record(chunk.len(), compute, rtt, job.dispenser.remaining() == 0)
        {
            let (remaining, boundary) = (job.dispenser.remaining(), job.dispenser.boundary());
            let chosen = auto.choose(remaining, boundary, self.workers.len()).chosen;
            job.dispenser.set_chunk_size(chosen);
            // Only now is the job's chunk count known.
            if let Some(last) = job.core.spec.faults.iter().map(|f| f.chunk).max() {
                let chunks = job.dispenser.chunks_up_to(last);
                crate::engine::fault::check_faults(&job.core.spec.faults, chunks)?;
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
    fn top_up(&mut self, w: usize, count: usize, job: &mut ChannelJob) {
        if job.core.stopped() {
            return;
        }
        for _ in 0..count {
            // A process with a chunk limit gets exactly that many, then retires.
            let spent = self.recycle.chunks > 0
                && self.workers[w].ran_chunks + job.core.ledger.held_by(w) as u64
                    >= self.recycle.chunks;
            if job.core.ledger.held_by(w) >= job.depth
                || self.workers[w].tx.is_none()
                || self.workers[w].retiring
                || spent
            {
                return;
            }
            let Some(held) = job
                .core
                .ledger
                .hand_out(w, &mut job.dispenser, Instant::now())
            else {
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

    /// Sends `msg` to worker `w`. A worker that is gone is queued in the job's `dead` for
    /// the loop to replace (its channel-closed event may come later or not at all).
    fn send(&mut self, w: usize, msg: ToWorker, job: &mut ChannelJob) {
        let size = wire_size(&msg);
        let Some(tx) = self.workers[w].tx.as_ref() else {
            return;
        };
        match tx.send(msg) {
            Ok(()) => job.core.ipc.one(size),
            Err(_) => job.core.dead.push((w, self.workers[w].pid)),
        }
    }

    /// Lets a retiring worker (channel dispatch) go: it holds no chunk, so `Shutdown` ends
    /// it; its closed channel then brings [`Pool::recycle`].
    fn let_go(&mut self, w: usize) {
        if let Some(tx) = self.workers[w].tx.as_ref() {
            let _ = tx.send(ToWorker::Shutdown);
        }
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
