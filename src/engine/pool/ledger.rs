//! Who holds which chunk, and what a death costs: the dispatch loop's decisions, as plain
//! data with no process in sight.
//!
//! The loop in `dispatch.rs` moves messages; every decision about chunks goes through
//! here, so it can be tested without starting a worker:
//! - each worker holds a queue of chunks, the front one running (since when: for
//!   `chunk_timeout`);
//! - chunks to hand out again wait in a retry queue that goes before any new chunk;
//! - when a worker is lost, the chunk it was running is *blamed* (one more attempt) and the
//!   chunks queued behind it go back unblamed, in order, first in line;
//! - a chunk blamed more than `retries` times fails the job ([`Error::ChunkFailed`]); more
//!   than `max_restarts` restarts fail it too ([`Error::TooManyRestarts`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::engine::schedule::{Chunk, Dispenser};
use crate::error::{Doing, Error, Loss, LossCause, Result};

/// A chunk a worker holds, with its attempt number (0 the first time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldChunk {
    pub(crate) chunk: Chunk,
    pub(crate) attempt: u32,
}

/// What one worker holds.
#[derive(Debug, Default)]
struct Holding {
    /// Chunks sent and not yet done, the running one first.
    chunks: VecDeque<HeldChunk>,
    /// When the front chunk started running (roughly: when it became the front).
    front_since: Option<Instant>,
}

/// What losing a worker did to its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lost {
    /// The chunk it was running, now blamed.
    pub(crate) running: Option<u64>,
    /// Who, how, and what it was doing: "worker 2 (pid 812) killed by SIGKILL while
    /// running chunk 7".
    pub(crate) loss: Loss,
}

/// The ledger of one job.
#[derive(Debug)]
pub(crate) struct Ledger {
    holding: Vec<Holding>,
    retry: VecDeque<HeldChunk>,
    retries: u32,
    max_restarts: u64,
    chunk_timeout: Option<Duration>,
    restarts: u64,
    retried_chunks: u64,
}

impl Ledger {
    /// An empty ledger for `workers` workers, with the job's limits. `restarts` counts the
    /// restarts already spent (workers that died while the pool started).
    pub(crate) fn new(
        workers: usize,
        retries: u32,
        max_restarts: u64,
        chunk_timeout: Option<Duration>,
        restarts: u64,
    ) -> Self {
        Ledger {
            holding: (0..workers).map(|_| Holding::default()).collect(),
            retry: VecDeque::new(),
            retries,
            max_restarts,
            chunk_timeout,
            restarts,
            retried_chunks: 0,
        }
    }

    /// Chunks worker `w` holds.
    pub(crate) fn held_by(&self, w: usize) -> usize {
        self.holding[w].chunks.len()
    }

    /// Chunks handed out and not done, plus those waiting to be handed out again.
    pub(crate) fn outstanding(&self) -> u64 {
        self.retry.len() as u64
            + self
                .holding
                .iter()
                .map(|h| h.chunks.len() as u64)
                .sum::<u64>()
    }

    /// Chunks handed out and not done (those waiting to be handed out again not counted).
    pub(crate) fn held(&self) -> u64 {
        self.holding.iter().map(|h| h.chunks.len() as u64).sum()
    }

    /// Whether no chunk waits to be handed out again.
    pub(crate) fn retry_is_empty(&self) -> bool {
        self.retry.is_empty()
    }

    /// Restarts so far in this job.
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Chunks handed out again after their worker was lost.
    pub(crate) fn retried_chunks(&self) -> u64 {
        self.retried_chunks
    }

    /// Gives worker `w` its next chunk: one waiting to be retried first, else a new one from
    /// `dispenser`. `None` when there is nothing to give.
    pub(crate) fn hand_out(
        &mut self,
        w: usize,
        dispenser: &mut Dispenser,
        now: Instant,
    ) -> Option<HeldChunk> {
        let next = match self.retry.pop_front() {
            Some(c) => c,
            None => HeldChunk {
                chunk: dispenser.next_for(w)?,
                attempt: 0,
            },
        };
        let h = &mut self.holding[w];
        if h.chunks.is_empty() {
            h.front_since = Some(now);
        }
        h.chunks.push_back(next);
        Some(next)
    }

    /// What worker `w` holds, the running chunk first, and since when that one runs
    /// (roughly: since it became the front chunk). For the trace.
    pub(crate) fn held_chunks(&self, w: usize) -> (Vec<HeldChunk>, Option<Instant>) {
        let h = &self.holding[w];
        (h.chunks.iter().copied().collect(), h.front_since)
    }

    /// The attempt number of chunk `id`, which worker `w` holds.
    pub(crate) fn attempt_of(&self, w: usize, id: u64) -> Option<u32> {
        self.holding[w]
            .chunks
            .iter()
            .find(|c| c.chunk.id == id)
            .map(|c| c.attempt)
    }

    /// Worker `w` reported chunk `id` done. Returns the chunk and its round trip (from when
    /// it became the front chunk), or `None` if `w` did not hold it.
    /// The chunk `id` that worker `w` holds, if it does.
    pub(crate) fn holding(&self, w: usize, id: u64) -> Option<Chunk> {
        self.holding[w]
            .chunks
            .iter()
            .find(|c| c.chunk.id == id)
            .map(|c| c.chunk)
    }

    pub(crate) fn done(&mut self, w: usize, id: u64, now: Instant) -> Option<(Chunk, Duration)> {
        let h = &mut self.holding[w];
        let pos = h.chunks.iter().position(|c| c.chunk.id == id)?;
        let held = h.chunks.remove(pos)?;
        let rtt = h
            .front_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        h.front_since = Some(now);
        Some((held.chunk, rtt))
    }

    /// Worker `w` (process `pid`, id `id`) is lost because of `cause` ("killed by SIGKILL",
    /// "timed out after 1s (killed)"). Its running chunk is blamed and everything it held
    /// goes back, first in line; one restart is counted. Fails the job when the blamed chunk
    /// is out of retries or the restarts are out of the limit.
    pub(crate) fn lose(&mut self, w: usize, id: usize, pid: u32, cause: LossCause) -> Result<Lost> {
        let held = std::mem::take(&mut self.holding[w].chunks);
        self.holding[w].front_since = None;
        let running = held.front().map(|c| c.chunk.id);
        let loss = Loss {
            worker: id,
            pid,
            cause,
            doing: running.map_or(Doing::Idle, Doing::Running),
        };
        // Requeue in order, the blamed chunk first so it is retried soonest.
        for (k, &c) in held.iter().enumerate().rev() {
            let attempt = if k == 0 { c.attempt + 1 } else { c.attempt };
            if k == 0 && attempt > self.retries {
                return Err(Error::ChunkFailed {
                    chunk: c.chunk.id,
                    start: c.chunk.start,
                    end: c.chunk.end,
                    attempts: attempt,
                    last: loss,
                });
            }
            self.retry.push_front(HeldChunk { attempt, ..c });
            self.retried_chunks += 1;
        }
        self.restart(loss)?;
        Ok(Lost { running, loss })
    }

    /// Queue dispatch: worker `id` (process `pid`) is lost because of `cause`, holding
    /// `held` (its claim slot's chunk, not done), which it was `running` or only waiting to
    /// run. A running chunk is blamed (one more attempt; past `retries` the job fails). One
    /// restart is counted. Returns the loss and the chunk to queue again.
    pub(crate) fn lose_claim(
        &mut self,
        id: usize,
        pid: u32,
        cause: LossCause,
        held: Option<HeldChunk>,
        running: bool,
    ) -> Result<(Lost, Option<HeldChunk>)> {
        let blamed = held.filter(|_| running);
        let loss = Loss {
            worker: id,
            pid,
            cause,
            doing: blamed.map_or(Doing::Idle, |c| Doing::Running(c.chunk.id)),
        };
        let again = held.map(|c| HeldChunk {
            attempt: if running { c.attempt + 1 } else { c.attempt },
            ..c
        });
        if let Some(c) = again.filter(|c| running && c.attempt > self.retries) {
            return Err(Error::ChunkFailed {
                chunk: c.chunk.id,
                start: c.chunk.start,
                end: c.chunk.end,
                attempts: c.attempt,
                last: loss,
            });
        }
        if again.is_some() {
            self.retried_chunks += 1;
        }
        self.restart(loss)?;
        let lost = Lost {
            running: blamed.map(|c| c.chunk.id),
            loss,
        };
        Ok((lost, again))
    }

    /// Counts one restart (a worker lost, or a start that failed); fails the job past the
    /// limit, naming `last`.
    pub(crate) fn restart(&mut self, last: Loss) -> Result<()> {
        self.restarts += 1;
        if self.restarts > self.max_restarts {
            return Err(Error::TooManyRestarts {
                restarts: self.restarts,
                limit: self.max_restarts,
                last,
            });
        }
        Ok(())
    }

    /// Workers whose running chunk has passed the time limit at `now`.
    pub(crate) fn late(&self, now: Instant) -> Vec<usize> {
        let Some(limit) = self.chunk_timeout else {
            return Vec::new();
        };
        self.holding
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.chunks.is_empty())
            .filter(|(_, h)| {
                h.front_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= limit)
            })
            .map(|(w, _)| w)
            .collect()
    }

    /// The earliest moment a running chunk passes the time limit, if a limit is set.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let limit = self.chunk_timeout?;
        self.holding
            .iter()
            .filter(|h| !h.chunks.is_empty())
            .filter_map(|h| h.front_since)
            .min()
            .and_then(|t| t.checked_add(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCause;

    const SIGKILL: LossCause = LossCause::Ended(ExitCause::Signaled {
        signal: 9,
        core_dumped: false,
    });
    const SIGSEGV: LossCause = LossCause::Ended(ExitCause::Signaled {
        signal: 11,
        core_dumped: false,
    });
    use crate::engine::schedule::Schedule;

    /// 10 chunks of 10 elements, dynamic.
    fn dispenser() -> Dispenser {
        Dispenser::new(Schedule::Dynamic, 100, 2, Some(10))
    }

    #[test]
    fn retries_go_before_new_chunks_and_done_frees_the_holder() {
        let mut d = dispenser();
        let mut l = Ledger::new(2, 3, 10, None, 0);
        let t = Instant::now();
        let a = l.hand_out(0, &mut d, t).unwrap();
        let b = l.hand_out(0, &mut d, t).unwrap();
        assert_eq!((a.chunk.id, b.chunk.id), (0, 1));
        assert_eq!(l.held_by(0), 2);
        assert_eq!(l.done(1, 0, t), None, "worker 1 never held chunk 0");
        let (chunk, _) = l.done(0, 0, t).unwrap();
        assert_eq!(chunk.id, 0);
        assert_eq!(l.held_by(0), 1);
        l.lose(0, 0, 100, SIGKILL).unwrap();
        let again = l.hand_out(1, &mut d, t).unwrap();
        assert_eq!((again.chunk.id, again.attempt), (1, 1));
        assert_eq!(l.hand_out(1, &mut d, t).unwrap().chunk.id, 2);
    }

    #[test]
    fn a_loss_blames_the_running_chunk_only_and_requeues_in_order() {
        let mut d = dispenser();
        let mut l = Ledger::new(2, 3, 10, None, 0);
        let t = Instant::now();
        for _ in 0..3 {
            l.hand_out(0, &mut d, t);
        }
        let lost = l.lose(0, 0, 42, SIGKILL).unwrap();
        assert_eq!(lost.running, Some(0));
        assert_eq!(
            lost.loss.to_string(),
            "worker 0 (pid 42) killed by SIGKILL while running chunk 0"
        );
        assert_eq!(l.retried_chunks(), 3);
        assert_eq!(l.restarts(), 1);
        let order: Vec<(u64, u32)> = (0..3)
            .map(|_| l.hand_out(1, &mut d, t).unwrap())
            .map(|c| (c.chunk.id, c.attempt))
            .collect();
        assert_eq!(order, vec![(0, 1), (1, 0), (2, 0)]);
        let idle = l
            .lose(0, 0, 43, LossCause::Ended(ExitCause::Exited(3)))
            .unwrap();
        assert_eq!(idle.running, None);
        assert_eq!(idle.loss.doing, Doing::Idle);
    }

    #[test]
    fn a_chunk_blamed_past_its_retries_fails_the_job() {
        let mut d = dispenser();
        let mut l = Ledger::new(1, 2, 100, None, 0);
        let t = Instant::now();
        for attempt in 0..3 {
            let c = l.hand_out(0, &mut d, t).unwrap();
            assert_eq!((c.chunk.id, c.attempt), (0, attempt));
            if attempt < 2 {
                l.lose(0, 0, 1, SIGSEGV).unwrap();
            }
        }
        let err = l.lose(0, 0, 1, SIGSEGV).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ChunkFailed {
                    chunk: 0,
                    attempts: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn restarts_past_the_limit_fail_the_job_counting_those_spent_at_start() {
        let mut l = Ledger::new(1, 100, 3, None, 2);
        let at_start = Loss {
            worker: 0,
            pid: 1,
            cause: SIGKILL,
            doing: Doing::Starting,
        };
        l.restart(at_start).unwrap();
        let err = l.lose(0, 0, 2, SIGKILL).unwrap_err();
        match err {
            Error::TooManyRestarts {
                restarts,
                limit,
                last,
            } => {
                assert_eq!((restarts, limit), (4, 3));
                assert_eq!(
                    last.to_string(),
                    "worker 0 (pid 2) killed by SIGKILL while idle"
                );
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn timeouts_name_the_late_workers_and_the_next_deadline() {
        let mut d = dispenser();
        let limit = Duration::from_millis(500);
        let mut l = Ledger::new(3, 3, 10, Some(limit), 0);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(300);
        l.hand_out(0, &mut d, t0);
        l.hand_out(1, &mut d, t1);
        assert_eq!(l.next_deadline(), Some(t0 + limit));
        assert!(l.late(t0 + Duration::from_millis(499)).is_empty());
        assert_eq!(l.late(t0 + limit), vec![0]);
        assert_eq!(l.late(t1 + limit), vec![0, 1]);
        // A finished chunk restarts the clock for the next one in the queue.
        l.done(0, 0, t1).unwrap();
        assert!(l.late(t0 + limit).is_empty(), "worker 0 holds nothing");
        let none = Ledger::new(1, 3, 10, None, 0);
        assert_eq!(none.next_deadline(), None);
        assert!(none.late(t1 + limit).is_empty());
    }
}
