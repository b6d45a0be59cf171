//! Handing out chunks and collecting replies.
//!
//! Dynamic scheduling with a bounded window: each worker holds at most `inflight` chunks;
//! whenever one replies `Done`, the next chunk of the plan goes to that worker. Chunks are
//! produced from the plan on demand, never listed up front.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ipc_channel::ipc::IpcSelectionResult;

use super::{JobStats, Pool, WorkerStats};
use crate::error::{Error, Result};
use crate::protocol::{FromWorker, JobSpec, ToWorker, wire_size};
use crate::schedule::ChunkPlan;

/// Per-worker bookkeeping during one job.
#[derive(Default)]
struct Held {
    /// Chunks sent and not yet done, oldest first.
    chunks: VecDeque<u64>,
    done: u64,
    compute_ns: u64,
}

struct Counters {
    messages: u64,
    bytes: u64,
}

impl Pool {
    pub(super) fn dispatch(&mut self, spec: JobSpec, plan: ChunkPlan) -> Result<JobStats> {
        let began = Instant::now();
        let elem_size = u64::from(spec.elem_size);
        let total = plan.len();
        let (hs_messages, hs_bytes) = std::mem::take(&mut self.handshake_ipc);
        let mut ipc = Counters {
            messages: hs_messages,
            bytes: hs_bytes,
        };
        let mut held: Vec<Held> = self.workers.iter().map(|_| Held::default()).collect();

        let job = ToWorker::Job(spec);
        for w in 0..self.workers.len() {
            self.send(w, job.clone(), &mut ipc, &held)?;
        }

        // Prime round-robin (first chunk to every worker, then the second, …) so that a job
        // with few chunks still spreads over all workers.
        let mut next: u64 = 0;
        for _ in 0..self.inflight {
            for w in 0..self.workers.len() {
                if next < total {
                    self.send_chunk(w, next, &plan, &mut ipc, &mut held)?;
                    next += 1;
                }
            }
        }

        let mut done: u64 = 0;
        while done < total {
            let events = self
                .set
                .select()
                .map_err(|e| Error::Ipc(format!("waiting for workers: {e}")))?;
            for event in events {
                match event {
                    IpcSelectionResult::MessageReceived(rid, message) => {
                        let w = self.worker_of(rid)?;
                        let msg: FromWorker = message.to().map_err(|e| {
                            Error::Ipc(format!("worker {} sent a bad message: {e}", w))
                        })?;
                        ipc.messages += 1;
                        ipc.bytes += wire_size(&msg);
                        match msg {
                            FromWorker::Done { id, compute_ns } => {
                                let h = &mut held[w];
                                let Some(pos) = h.chunks.iter().position(|&c| c == id) else {
                                    return Err(Error::Ipc(format!(
                                        "worker {w} reported chunk {id}, which it did not hold"
                                    )));
                                };
                                h.chunks.remove(pos);
                                h.done += 1;
                                h.compute_ns += compute_ns;
                                done += 1;
                                if next < total {
                                    self.send_chunk(w, next, &plan, &mut ipc, &mut held)?;
                                    next += 1;
                                }
                            }
                            FromWorker::Failed { message } => {
                                return Err(Error::WorkerFailed {
                                    id: self.workers[w].id,
                                    pid: self.workers[w].pid,
                                    message,
                                });
                            }
                            other => {
                                return Err(Error::Ipc(format!(
                                    "worker {w} sent an unexpected {other:?}"
                                )));
                            }
                        }
                    }
                    IpcSelectionResult::ChannelClosed(rid) => {
                        let w = self.worker_of(rid)?;
                        return Err(self.died(w, &held[w]));
                    }
                }
            }
        }

        let wall = began.elapsed();
        let workers = self
            .workers
            .iter()
            .zip(&held)
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
            ipc_messages: ipc.messages,
            ipc_bytes: ipc.bytes,
            shm_bytes: plan.n() * elem_size,
            workers,
        })
    }

    fn worker_of(&self, rid: u64) -> Result<usize> {
        self.by_receiver
            .get(&rid)
            .copied()
            .ok_or_else(|| Error::Ipc(format!("message from unknown channel {rid}")))
    }

    fn send_chunk(
        &mut self,
        w: usize,
        id: u64,
        plan: &ChunkPlan,
        ipc: &mut Counters,
        held: &mut [Held],
    ) -> Result<()> {
        let range = plan.range(id);
        let msg = ToWorker::Chunk {
            id,
            start: range.start,
            end: range.end,
            attempt: 0,
        };
        held[w].chunks.push_back(id);
        self.send(w, msg, ipc, held)
    }

    fn send(&mut self, w: usize, msg: ToWorker, ipc: &mut Counters, held: &[Held]) -> Result<()> {
        let size = wire_size(&msg);
        let tx = self.workers[w].tx.as_ref().ok_or(Error::Broken)?;
        let sent = tx.send(msg);
        match sent {
            Ok(()) => {
                ipc.messages += 1;
                ipc.bytes += size;
                Ok(())
            }
            // The worker is gone; its exit status says why.
            Err(_) => Err(self.died(w, &held[w])),
        }
    }

    /// Reaps worker `w`, which closed its channel, and describes its death.
    fn died(&mut self, w: usize, held: &Held) -> Error {
        let slot = &mut self.workers[w];
        slot.tx = None;
        let cause = match slot.child.take() {
            Some(mut child) => super::spawn::reap_within(&mut child, Duration::from_secs(1)),
            None => crate::sys::ExitCause::Unknown,
        };
        Error::WorkerDied {
            id: slot.id,
            pid: slot.pid,
            cause,
            chunks: held.chunks.iter().copied().collect(),
        }
    }
}
