//! Handing out chunks, collecting replies, and surviving workers that die or hang.
//!
//! Dynamic scheduling with a bounded window: each worker holds at most `inflight` chunks;
//! whenever one replies `Done`, the next chunk goes to that worker. Chunks come from the plan
//! on demand (or from the retry queue first), never from a list built up front.
//!
//! Supervision lives in the same loop, so there is one place that decides who holds what:
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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ipc_channel::TrySelectError;
use ipc_channel::ipc::IpcSelectionResult;

use super::{Death, JobStats, Pool, WorkerStats, spawn};
use crate::error::{Error, Result};
use crate::protocol::{FromWorker, JobSpec, ToWorker, wire_size};
use crate::schedule::ChunkPlan;

/// How often the loop looks at the clock and the interrupt flag when no message arrives.
const TICK: Duration = Duration::from_millis(20);

/// Per-worker bookkeeping during one job.
#[derive(Default)]
struct Held {
    /// Chunks sent and not yet done, oldest (the running one) first.
    chunks: VecDeque<(u64, u32)>,
    /// When the front chunk started running (roughly: when it became the front).
    front_since: Option<Instant>,
    done: u64,
    compute_ns: u64,
}

/// The state of one job.
struct Job<'a> {
    spec: JobSpec,
    plan: &'a ChunkPlan,
    held: Vec<Held>,
    /// Next never-sent chunk.
    next: u64,
    /// Chunks to hand out again, before any new one.
    retry: VecDeque<(u64, u32)>,
    done: u64,
    /// Elements in the chunks done.
    elements_done: u64,
    /// Sum of the chunks' reductions.
    reduction: Option<u64>,
    messages: u64,
    bytes: u64,
    restarts: u64,
    retried_chunks: u64,
    deaths: Vec<Death>,
    /// Workers found dead while sending: (slot, pid), handled by the loop.
    dead: Vec<(usize, u32)>,
}

impl Job<'_> {
    fn next_chunk(&mut self) -> Option<(u64, u32)> {
        if let Some(c) = self.retry.pop_front() {
            return Some(c);
        }
        (self.next < self.plan.len()).then(|| {
            self.next += 1;
            (self.next - 1, 0)
        })
    }
}

/// Why a worker is being replaced.
enum Loss {
    /// Its channel closed: read the exit status.
    Died,
    /// Its chunk ran past the limit: we killed it.
    TimedOut(Duration),
}

impl Pool {
    pub(super) fn dispatch(&mut self, spec: JobSpec, plan: ChunkPlan) -> Result<JobStats> {
        let began = Instant::now();
        let elem_size = u64::from(spec.elem_size);
        let total = plan.len();
        let (messages, bytes) = std::mem::take(&mut self.handshake_ipc);
        let mut job = Job {
            spec,
            plan: &plan,
            held: self.workers.iter().map(|_| Held::default()).collect(),
            next: 0,
            retry: VecDeque::new(),
            done: 0,
            elements_done: 0,
            reduction: None,
            messages,
            bytes,
            restarts: 0,
            retried_chunks: 0,
            deaths: Vec::new(),
            dead: Vec::new(),
        };

        for w in 0..self.workers.len() {
            let msg = ToWorker::Job(job.spec.clone());
            self.send(w, msg, &mut job);
        }
        // Prime round-robin (first chunk to every worker, then the second, …) so that a job
        // with few chunks still spreads over all workers.
        for _ in 0..self.inflight {
            if job.retry.is_empty() && job.next >= total {
                break;
            }
            for w in 0..self.workers.len() {
                self.top_up(w, 1, &mut job);
            }
        }

        while job.done < total {
            if let Some(signal) = self.supervision.interrupt.requested() {
                return Err(interrupted(signal, &job, &plan, self.workers.len()));
            }
            while let Some((w, pid)) = job.dead.pop() {
                if self.workers[w].pid == pid {
                    self.replace(w, Loss::Died, &mut job)?;
                }
            }
            let wait = self.next_deadline(&job).map_or(TICK, |d| {
                d.saturating_duration_since(Instant::now()).min(TICK)
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
                let now = Instant::now();
                for w in 0..self.workers.len() {
                    let late = job.held[w]
                        .front_since
                        .is_some_and(|t| now.duration_since(t) >= limit);
                    if late && !job.held[w].chunks.is_empty() {
                        crate::sys::kill_hard(self.workers[w].pid);
                        self.replace(w, Loss::TimedOut(limit), &mut job)?;
                    }
                }
            }
        }

        let wall = began.elapsed();
        let workers = self
            .workers
            .iter()
            .zip(&job.held)
            .map(|(slot, h)| WorkerStats {
                id: slot.id,
                pid: slot.pid,
                chunks: h.done,
                compute_s: h.compute_ns as f64 / 1e9,
            })
            .collect();
        Ok(JobStats {
            n: plan.n(),
            chunk_size: plan.chunk_size(),
            chunks: total,
            wall,
            ipc_messages: job.messages,
            ipc_bytes: job.bytes,
            shm_bytes: plan.n() * elem_size,
            workers,
            restarts: job.restarts,
            retried_chunks: job.retried_chunks,
            deaths: job.deaths,
            reduction: job.reduction,
        })
    }

    /// The earliest moment a running chunk times out, if a limit is set.
    fn next_deadline(&self, job: &Job<'_>) -> Option<Instant> {
        let limit = self.supervision.chunk_timeout?;
        job.held
            .iter()
            .filter(|h| !h.chunks.is_empty())
            .filter_map(|h| h.front_since)
            .min()
            .map(|t| t + limit)
    }

    fn handle(&mut self, event: IpcSelectionResult, job: &mut Job<'_>) -> Result<()> {
        match event {
            IpcSelectionResult::MessageReceived(rid, message) => {
                // A message from a worker already replaced is stale: ignore it.
                let Some(w) = self.by_receiver.get(&rid).copied() else {
                    return Ok(());
                };
                let msg: FromWorker = message
                    .to()
                    .map_err(|e| Error::Ipc(format!("worker {w} sent a bad message: {e}")))?;
                job.messages += 1;
                job.bytes += wire_size(&msg);
                match msg {
                    FromWorker::Done {
                        id,
                        compute_ns,
                        reduction,
                    } => {
                        let h = &mut job.held[w];
                        let Some(pos) = h.chunks.iter().position(|&(c, _)| c == id) else {
                            return Err(Error::Ipc(format!(
                                "worker {w} reported chunk {id}, which it did not hold"
                            )));
                        };
                        h.chunks.remove(pos);
                        h.front_since = Some(Instant::now());
                        h.done += 1;
                        h.compute_ns += compute_ns;
                        job.done += 1;
                        if let Some(r) = reduction {
                            job.reduction = Some(job.reduction.unwrap_or(0).wrapping_add(r));
                        }
                        let range = job.plan.range(id);
                        job.elements_done += range.end - range.start;
                        self.top_up(w, 1, job);
                        Ok(())
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
                Some(w) => self.replace(w, Loss::Died, job),
                None => Ok(()),
            },
        }
    }

    /// Sends worker `w` up to `count` more chunks, never more than `inflight` in all.
    fn top_up(&mut self, w: usize, count: usize, job: &mut Job<'_>) {
        for _ in 0..count {
            if job.held[w].chunks.len() >= self.inflight || self.workers[w].tx.is_none() {
                return;
            }
            let Some((id, attempt)) = job.next_chunk() else {
                return;
            };
            let range = job.plan.range(id);
            if job.held[w].chunks.is_empty() {
                job.held[w].front_since = Some(Instant::now());
            }
            job.held[w].chunks.push_back((id, attempt));
            let msg = ToWorker::Chunk {
                id,
                start: range.start,
                end: range.end,
                attempt,
            };
            self.send(w, msg, job);
        }
    }

    /// Sends `msg` to worker `w`. A worker that is gone is queued in `job.dead` for the loop
    /// to replace (its channel-closed event may come later or not at all).
    fn send(&mut self, w: usize, msg: ToWorker, job: &mut Job<'_>) {
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
    fn replace(&mut self, w: usize, loss: Loss, job: &mut Job<'_>) -> Result<()> {
        let slot = &mut self.workers[w];
        if let Some(rid) = slot.rid.take() {
            self.by_receiver.remove(&rid);
        }
        let pid = slot.pid;
        let exit = slot.reap(Duration::from_secs(1));
        let cause = match loss {
            Loss::Died => exit.to_string(),
            Loss::TimedOut(limit) => format!("timed out after {limit:?} (killed)"),
        };
        let held = std::mem::take(&mut job.held[w].chunks);
        job.held[w].front_since = None;
        let running = held.front().map(|&(c, _)| c);
        let death_text = match running {
            Some(c) => format!("worker {w} (pid {pid}) {cause} while running chunk {c}"),
            None => format!("worker {w} (pid {pid}) {cause} while idle"),
        };
        // Requeue in order, the blamed chunk first so it is retried soonest.
        for (k, &(chunk, attempt)) in held.iter().enumerate().rev() {
            let attempt = if k == 0 { attempt + 1 } else { attempt };
            if k == 0 && attempt > self.supervision.retries {
                let range = job.plan.range(chunk);
                return Err(Error::ChunkFailed {
                    chunk,
                    start: range.start,
                    end: range.end,
                    attempts: attempt,
                    last_cause: death_text,
                });
            }
            job.retry.push_front((chunk, attempt));
            job.retried_chunks += 1;
        }
        job.restarts += 1;
        if job.restarts > self.max_restarts {
            return Err(Error::TooManyRestarts {
                restarts: job.restarts,
                limit: self.max_restarts,
                last_cause: death_text,
            });
        }
        eprintln!("procpool: {death_text}; starting a replacement");
        let id = self.workers[w].id;
        let mut started = spawn::start_workers(
            &self.exe,
            self.region.raw_fd(),
            id..id + 1,
            self.handshake_timeout,
        )?;
        let new = started.pop().expect("one worker started");
        let new_pid = new.pid;
        self.install(new)?;
        job.messages += std::mem::take(&mut self.handshake_ipc).0;
        job.deaths.push(Death {
            id,
            pid,
            cause,
            chunk: running,
            replaced_by: Some(new_pid),
        });
        self.send(w, ToWorker::Job(job.spec.clone()), job);
        let inflight = self.inflight;
        self.top_up(w, inflight, job);
        Ok(())
    }
}

fn interrupted(signal: i32, job: &Job<'_>, plan: &ChunkPlan, workers: usize) -> Error {
    Error::Interrupted {
        signal,
        chunks_done: job.done,
        chunks: plan.len(),
        elements_done: job.elements_done,
        n: plan.n(),
        workers,
        needed_term: 0,
        needed_kill: 0,
    }
}
