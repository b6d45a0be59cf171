//! The supervisor both dispatchers share: what a job keeps whatever hands its chunks out
//! ([`JobCore`]), and supervision written once over a small [`Dispatcher`] interface.
//!
//! A dispatcher (per-chunk channel messages in `dispatch.rs`, claim slots in shared memory
//! in `queue.rs`) knows who holds which chunk; the supervisor does the rest:
//! - a worker whose process ended is reaped, its exit recorded, what it held handed back
//!   through the dispatcher, and a replacement started in its slot ([`Pool::replace`]);
//! - a replacement's handshake is moved on while the others compute, and a start that
//!   fails is one more restart ([`Pool::poll_starting`]);
//! - the messages every worker may send (`Failed`, `Retiring`, `Wake`, `Panicked`, a
//!   closed channel) mean the same on both paths ([`Pool::event`]);
//! - an interrupt stops the job with what it had done ([`JobCore::interrupted`]);
//! - the job's measurements are assembled in one place ([`JobCore::finish`]).

use std::time::{Duration, Instant};

use ipc_channel::TrySelectError;
use ipc_channel::ipc::IpcSelectionResult;

use super::auto_chunk::AutoProbe;
use super::each::Each;
use super::ledger::{Ledger, Lost};
use super::observe::{self, Event};
use super::stats::{Supervised, Tally};
use super::trace::{Trace, TraceAttempt, TraceEventKind};
use super::workers::{DEATH_SCAN, SPAWN_BATCH, WorkerSlot};
use super::{
    Charges, Death, Finished, Ipc, JobInputs, JobOptions, JobStats, Pool, ReducedChunk,
    WorkerStats, spawn,
};
use crate::engine::protocol::{FromWorker, JobSpec, Transport};
use crate::engine::schedule::Chunk;
use crate::engine::sys::{ExitCause, Process};
use crate::error::{Error, Loss, LossCause, Phase, Result};

/// Why a worker is being replaced.
#[derive(Debug, Clone, Copy)]
pub(super) enum Why {
    /// Its process ended: read the exit status.
    Died,
    /// Its chunk ran past the limit: we killed it.
    TimedOut(Duration),
    /// Its kernel panicked and panics are retried: we killed it.
    Panicked,
    /// Stopped by a signal while the queue stood still this long: we killed it.
    Stopped(Duration),
}

impl Why {
    /// The loss, given how the reaped process ended.
    fn cause(self, exit: ExitCause) -> LossCause {
        match self {
            Why::Died => LossCause::Ended(exit),
            Why::TimedOut(limit) => LossCause::TimedOut(limit),
            Why::Panicked => LossCause::Panicked,
            Why::Stopped(limit) => LossCause::Stopped(limit),
        }
    }

    /// How the job's timeline names it.
    pub(super) fn trace_kind(self) -> TraceEventKind {
        match self {
            Why::TimedOut(_) | Why::Stopped(_) => TraceEventKind::Timeout,
            Why::Died | Why::Panicked => TraceEventKind::Death,
        }
    }
}

/// A worker being replaced, as the dispatcher hears of it: its process is reaped.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gone {
    /// Its slot.
    pub(super) w: usize,
    /// Its id.
    pub(super) id: usize,
    /// The process that ended.
    pub(super) pid: u32,
    pub(super) why: Why,
    /// How it ended.
    pub(super) cause: LossCause,
}

/// How far a job got, for the error of an interrupted one.
pub(super) struct Progress {
    /// Chunks done.
    pub(super) chunks_done: u64,
    /// Chunks handed out so far (done, running or queued).
    pub(super) chunks: u64,
    /// Elements done.
    pub(super) elements_done: u64,
}

/// What a job keeps whichever dispatcher hands its chunks out.
pub(super) struct JobCore<'f> {
    pub(super) spec: JobSpec,
    /// What the job shares through memfds. (The workers keep their mappings after the
    /// job; the caller's own `Input` values keep theirs.)
    pub(super) inputs: JobInputs,
    /// Batches of input descriptors sent during the job.
    pub(super) input_sends: u64,
    pub(super) n: u64,
    /// When the job began (its wall time is measured from here).
    pub(super) began: Instant,
    /// Retries, blame and the limits (and, on the channels, who holds which chunk).
    pub(super) ledger: Ledger,
    pub(super) deaths: Vec<Death>,
    /// Messages and bytes that crossed the channels for this job.
    pub(super) ipc: Ipc,
    /// Workers found gone while sending to them: (slot, pid), replaced by the loop.
    pub(super) dead: Vec<(usize, u32)>,
    /// Workers that retired after their recycling limit and were replaced.
    pub(super) recycles: u64,
    /// The chunks' encoded accumulators, when the job reduces.
    pub(super) reduced: Vec<ReducedChunk>,
    /// Elements done as last told to the observer.
    pub(super) told_done: u64,
    /// `--chunk-size auto`: the probe, and what it chose.
    pub(super) auto: Option<AutoProbe>,
    /// The caller's callback, for [`Pool::for_each_chunk`].
    pub(super) each: Option<Each<'f>>,
    /// The job's timeline, when asked for.
    pub(super) trace: Option<Trace>,
}

impl<'f> JobCore<'f> {
    /// A job about to start: charges it the handshakes and the deaths of workers started
    /// since the last job, and sets its limits.
    pub(super) fn new(
        pool: &mut Pool,
        spec: JobSpec,
        n: u64,
        inputs: JobInputs,
        options: &JobOptions,
        each: Option<Each<'f>>,
    ) -> Self {
        let began = Instant::now();
        // Workers that died starting since the last job count as this job's restarts, and
        // its traffic includes their handshakes.
        let Charges { handshakes, deaths } = std::mem::take(&mut pool.charges);
        let ledger = Ledger::new(
            pool.workers.len(),
            pool.supervision.retries,
            pool.max_restarts,
            pool.supervision.chunk_timeout,
            deaths.len() as u64,
        );
        JobCore {
            spec,
            inputs,
            input_sends: 0,
            n,
            began,
            ledger,
            deaths,
            ipc: handshakes,
            dead: Vec::new(),
            recycles: 0,
            reduced: Vec::new(),
            told_done: 0,
            auto: None,
            each,
            trace: options.trace.then(Trace::begin),
        }
    }

    /// The caller stopped iterating: hand out nothing more.
    pub(super) fn stopped(&self) -> bool {
        self.each.as_ref().is_some_and(|e| e.stopped)
    }

    /// Tells the observer how many elements are done, when that changed.
    pub(super) fn tell_progress(&mut self, pool: &Pool, done: u64) {
        if done != self.told_done {
            self.told_done = done;
            observe::tell(&pool.observer, Event::Progress { done, n: self.n });
        }
    }

    /// A fault at a chunk the job never had did not fire (a job with a measured chunk size
    /// that ended before the measurement): the job fails, naming it.
    pub(super) fn check_faults_fired(&self, chunks: u64) -> Result<()> {
        if self.stopped() {
            return Ok(());
        }
        crate::engine::fault::check_faults(&self.spec.faults, chunks)
    }

    /// The error of a job stopped by `signal`.
    pub(super) fn interrupted(&self, signal: i32, progress: Progress, workers: usize) -> Error {
        Error::Interrupted {
            signal,
            phase: Phase::Pool,
            chunks_done: progress.chunks_done,
            chunks: progress.chunks,
            elements_done: progress.elements_done,
            n: self.n,
            workers,
            needed_term: 0,
            needed_kill: 0,
        }
    }

    /// Records the attempt worker `worker` never finished, from `start_ns` to now.
    pub(super) fn trace_unfinished(
        &mut self,
        chunk: Chunk,
        worker: usize,
        attempt: u32,
        start_ns: u64,
    ) {
        if let Some(trace) = self.trace.as_mut() {
            let now_ns = crate::engine::control::monotonic_ns();
            trace.attempts.push(TraceAttempt {
                chunk: chunk.id,
                range: chunk.start..chunk.end,
                worker,
                attempt,
                start_ns: start_ns.min(now_ns),
                end_ns: now_ns,
                finished: false,
                compute_ns: None,
            });
        }
    }

    /// Records an event in the job's timeline, when it keeps one.
    pub(super) fn trace_event(
        &mut self,
        kind: TraceEventKind,
        worker: Option<usize>,
        chunk: Option<u64>,
        detail: impl FnOnce() -> String,
    ) {
        if let Some(trace) = self.trace.as_mut() {
            trace.event(kind, worker, chunk, detail());
        }
    }

    /// The job's measurements, from what the dispatcher counted (`tally`) and what the
    /// supervisor kept, with its chunks' accumulators. The workers that retired at the end
    /// are replaced first (before the next job, not during it).
    pub(super) fn finish(mut self, pool: &mut Pool, tally: Tally) -> Result<Finished> {
        if let Some(trace) = self.trace.as_mut() {
            trace.finish();
        }
        let retired = pool.settle_retired()?;
        let elem_size = u64::from(self.spec.elem_size);
        let kept = Supervised {
            ipc: self.ipc,
            input_bytes: self.inputs.input_bytes,
            param_bytes: self.inputs.param_bytes,
            input_sends: self.input_sends,
            shm_bytes: match self.spec.transport {
                Transport::Shm if self.spec.output => self.n * elem_size,
                _ => 0,
            },
            restarts: self.ledger.restarts(),
            recycles: self.recycles + retired,
            retried_chunks: self.ledger.retried_chunks(),
            deaths: self.deaths,
            auto_chunk: self.auto.and_then(|a| a.result),
            chunks_delivered: self.each.as_ref().map_or(0, |e| e.delivered),
            stopped_early: self.each.as_ref().is_some_and(|e| e.stopped),
            trace: self.trace,
        };
        Ok(Finished {
            stats: JobStats::new(tally, kept),
            reduced: self.reduced,
        })
    }
}

/// What only a dispatcher knows: who holds which chunk, and what its own messages mean.
/// The supervisor ([`Pool::replace`], [`Pool::poll_starting`], [`Pool::event`]) does the
/// rest through it.
pub(super) trait Dispatcher<'f> {
    /// What the job keeps whatever the dispatcher.
    fn core(&mut self) -> &mut JobCore<'f>;

    /// A worker is lost (its process is reaped): takes back what it held (blaming the
    /// chunk it was running) and returns the loss.
    fn lose(&mut self, pool: &mut Pool, gone: Gone) -> Result<Lost>;

    /// The chunk `id` worker `w` reported a panic on, if it held it.
    fn panicked_chunk(&self, pool: &Pool, w: usize, id: u64) -> Option<Chunk>;

    /// A message only this dispatcher expects (a chunk's `Done`).
    fn message(&mut self, pool: &mut Pool, w: usize, msg: FromWorker) -> Result<()>;

    /// Worker `w` said it reached its recycling limit.
    fn retiring(&mut self, pool: &mut Pool, w: usize);

    /// Retiring worker `w` left; its slot is recycled next.
    fn retired(&mut self, pool: &mut Pool, w: usize);

    /// A replacement in slot `w` (process `pid`) connected and was sent the job.
    fn joined(&mut self, pool: &mut Pool, w: usize, pid: u32);

    /// How far the job got.
    fn progress(&self, pool: &Pool) -> Progress;
}

impl Pool {
    /// The supervision every turn of a dispatch loop starts with: an interrupt stops the
    /// job; workers whose process ended are replaced; replacements' handshakes move on.
    pub(super) fn supervise<'f, D: Dispatcher<'f>>(&mut self, job: &mut D) -> Result<()> {
        if let Some(signal) = self.supervision.interrupt.requested() {
            let progress = job.progress(self);
            return Err(job.core().interrupted(signal, progress, self.workers.len()));
        }
        if let Some(stop) = self.job_stop.due() {
            let progress = job.progress(self);
            let n = job.core().n;
            return Err(stop.error(progress.chunks_done, progress.elements_done, n));
        }
        let ended = self.ended_workers(job)?;
        job.core().dead.extend(ended);
        while let Some((w, pid)) = job.core().dead.pop() {
            // A worker still starting is the handshake's business (`poll_starting`).
            if self.workers[w].pid == pid && self.workers[w].starting.is_none() {
                self.replace(w, Why::Died, job)?;
            }
        }
        self.poll_starting(job)
    }

    /// Reaps worker `w`, hands what it held back through the dispatcher (blaming the chunk
    /// it was running), and starts a replacement with the same id.
    pub(super) fn replace<'f, D: Dispatcher<'f>>(
        &mut self,
        w: usize,
        why: Why,
        job: &mut D,
    ) -> Result<()> {
        let slot = &mut self.workers[w];
        if let Some(rid) = slot.rid.take() {
            self.by_receiver.remove(&rid);
        }
        let (pid, id) = (slot.pid, slot.id);
        let exit = slot.reap(Duration::from_secs(1));
        let cause = why.cause(exit);
        let gone = Gone {
            w,
            id,
            pid,
            why,
            cause,
        };
        let lost = job.lose(self, gone)?;
        let core = job.core();
        // Replacements are always spawned: by now this process has threads, so it may not
        // fork. The handshake goes on in `poll_starting` while the others compute.
        let new_pid = self.restart_after(w, pid, &lost.loss, lost.running, &mut core.deaths)?;
        core.trace_event(TraceEventKind::Restart, Some(id), None, || {
            format!("pid {new_pid} replaces pid {pid}")
        });
        Ok(())
    }

    /// Worker `w` (process `pid`) is lost: tells the observer, starts a replacement in its
    /// slot and records the death (`chunk`: the one it was running). Returns the new pid.
    fn restart_after(
        &mut self,
        w: usize,
        pid: u32,
        loss: &Loss,
        chunk: Option<u64>,
        deaths: &mut Vec<Death>,
    ) -> Result<u32> {
        let id = self.workers[w].id;
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
            chunk,
            replaced_by: Some(new_pid),
        });
        Ok(new_pid)
    }

    /// A replacement's start failed: one more restart, within the limit, and another start;
    /// a failure no retry can mend fails the job.
    fn start_again(
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
        self.restart_after(w, pid, &loss, None, deaths)?;
        Ok(())
    }

    /// Moves every replacement's handshake on: a ready one gets the job (and, from the
    /// dispatcher, its chunks); one killed or hung on the way is one more restart, and is
    /// replaced within the limits.
    pub(super) fn poll_starting<'f, D: Dispatcher<'f>>(&mut self, job: &mut D) -> Result<()> {
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
                    let core = job.core();
                    core.ipc += std::mem::take(&mut self.charges.handshakes);
                    self.send_spec(core);
                    if self.workers[w].spec_sent != core.spec.spec_id {
                        core.dead.push((w, pid));
                    }
                    job.joined(self, w, pid);
                }
                spawn::Progress::Failed(failure) => {
                    let core = job.core();
                    self.start_again(w, failure, &mut core.ledger, &mut core.deaths)?;
                }
            }
        }
        Ok(())
    }

    /// Waits up to `wait` for the workers' messages and handles them.
    pub(super) fn select<'f, D: Dispatcher<'f>>(
        &mut self,
        wait: Duration,
        job: &mut D,
    ) -> Result<()> {
        for event in self.wait_events(wait)? {
            self.event(event, job)?;
        }
        Ok(())
    }

    /// Waits up to `wait` for the workers' messages (or the writer's waker), and returns
    /// them unhandled.
    pub(super) fn wait_events(&mut self, wait: Duration) -> Result<Vec<IpcSelectionResult>> {
        match self.set.try_select_timeout(wait) {
            Ok(events) => Ok(events),
            Err(TrySelectError::Empty) => Ok(Vec::new()),
            Err(TrySelectError::IoError(e)) => Err(Error::Ipc(format!("waiting for workers: {e}"))),
        }
    }

    /// Handles the messages already waiting, without waiting.
    pub(super) fn take_waiting<'f, D: Dispatcher<'f>>(&mut self, job: &mut D) -> Result<()> {
        match self.set.try_select() {
            Ok(events) => {
                for event in events {
                    self.event(event, job)?;
                }
                Ok(())
            }
            Err(TrySelectError::Empty) => Ok(()),
            Err(TrySelectError::IoError(e)) => {
                Err(Error::Ipc(format!("reading the workers' messages: {e}")))
            }
        }
    }

    /// One message from a worker, or one closed channel. What a worker may send on either
    /// path is handled here; a chunk's `Done` goes to the dispatcher.
    pub(super) fn event<'f, D: Dispatcher<'f>>(
        &mut self,
        event: IpcSelectionResult,
        job: &mut D,
    ) -> Result<()> {
        match event {
            IpcSelectionResult::MessageReceived(rid, message) => {
                let Some((w, msg, size)) = self.decode(rid, message)? else {
                    return Ok(());
                };
                job.core().ipc.one(size);
                match msg {
                    FromWorker::Failed { message } => Err(Error::WorkerFailed {
                        id: self.workers[w].id,
                        pid: self.workers[w].pid,
                        message,
                    }),
                    FromWorker::Retiring => {
                        // No more chunks for it; once it holds none, it may go.
                        self.workers[w].retiring = true;
                        job.retiring(self, w);
                        Ok(())
                    }
                    // A wake-up for a loop that slept on the queue: it carries nothing (on
                    // the channels, one meant for an earlier job, sent just as it ended).
                    FromWorker::Wake => Ok(()),
                    FromWorker::Panicked {
                        id,
                        message,
                        location,
                        failed,
                    } => self.panicked(w, id, message, location, failed, job),
                    other => job.message(self, w, other),
                }
            }
            IpcSelectionResult::ChannelClosed(rid) => match self.by_receiver.get(&rid).copied() {
                Some(w) if self.workers[w].retiring => {
                    job.retired(self, w);
                    job.core().recycles += 1;
                    self.recycle(w)
                }
                Some(w) => self.replace(w, Why::Died, job),
                None => Ok(()),
            },
        }
    }

    /// The kernel panicked on chunk `id` in worker `w`, which caught it. By default the
    /// job fails naming the chunk and the panic; with `retry_panics` the worker is replaced
    /// and the chunk retried, like a crash. A kernel that returned an error (`failed`: a
    /// fallible closure) fails the job naming the chunk and the error, never retried: the
    /// same input gives the same error.
    fn panicked<'f, D: Dispatcher<'f>>(
        &mut self,
        w: usize,
        id: u64,
        message: String,
        location: Option<String>,
        failed: bool,
        job: &mut D,
    ) -> Result<()> {
        let Some(chunk) = job.panicked_chunk(self, w, id) else {
            return Err(Error::Ipc(format!(
                "worker {w} reported a panic on chunk {id}, which it did not hold"
            )));
        };
        if failed {
            return Err(Error::KernelFailed {
                chunk: chunk.id,
                start: chunk.start,
                end: chunk.end,
                worker: self.workers[w].id,
                pid: self.workers[w].pid,
                message,
            });
        }
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

    /// The workers whose process ended, as (slot, pid), for a dispatch loop to replace.
    ///
    /// Asked of each process itself (`waitid` without reaping it, so that its process group
    /// is still its own when the replacement ends it), not only of its channel: a process
    /// a kernel forked inherits the worker's channel and keeps it open after the worker
    /// died, so no closed channel ever tells. Looks at most once per [`DEATH_SCAN`]. A
    /// worker's last messages arrive before its exit: those waiting are handled first, so
    /// that a worker leaving after its recycling limit (it said `Retiring`) is not counted,
    /// nor one whose closed channel was just handled.
    fn ended_workers<'f, D: Dispatcher<'f>>(&mut self, job: &mut D) -> Result<Vec<(usize, u32)>> {
        let now = Instant::now();
        if now < self.death_scan {
            return Ok(Vec::new());
        }
        self.death_scan = now + DEATH_SCAN;
        let counted = |w: &WorkerSlot| w.starting.is_none() && !w.retiring && w.child.is_some();
        let ended: Vec<(usize, u32)> = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| counted(w))
            .filter(|(_, w)| w.child.as_ref().is_some_and(Process::has_exited))
            .map(|(i, w)| (i, w.pid))
            .collect();
        if ended.is_empty() {
            return Ok(ended);
        }
        self.take_waiting(job)?;
        Ok(ended
            .into_iter()
            .filter(|&(w, pid)| self.workers[w].pid == pid && counted(&self.workers[w]))
            .collect())
    }

    /// Worker `w`'s measurements before the dispatcher fills in what it counted: its id,
    /// pid and CPU.
    pub(super) fn worker_stats(&self, w: usize) -> WorkerStats {
        let slot = &self.workers[w];
        let mut stats = WorkerStats::idle(slot.id, slot.pid);
        stats.cpu = spawn::cpu_for(slot.id, &self.pin);
        stats
    }
}
