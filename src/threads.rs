//! The same job on threads of this one process, for comparison with processes.
//!
//! Rust has no GIL: threads scale for CPU-bound work just as processes do. What processes
//! add is isolation (a crash in one worker does not take down the rest) and its cost:
//! starting processes, IPC, page faults in a shared mapping. Running the same kernel with
//! the same chunking on threads measures exactly that cost.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pool::WorkerStats;
use crate::schedule::{Chunk, Dispenser, Schedule};
use crate::workload::Workload;

/// What a threaded run measured.
#[derive(Debug, Clone)]
pub struct ThreadsRun<T> {
    /// The output.
    pub output: Vec<T>,
    /// From the first thread start to the last chunk done.
    pub wall: Duration,
    /// The part of `wall` until the last thread started.
    pub start: Duration,
    /// Chunks computed.
    pub chunks: u64,
    /// Per thread: chunks done and kernel time (`pid` is this process's id).
    pub workers: Vec<WorkerStats>,
    /// The workload's per-chunk reductions added up, if it has one.
    pub reduction: Option<u64>,
}

/// The output, handed out chunk by chunk as disjoint `&mut` slices: safe sharing of one
/// buffer. Dynamic and guided chunks come in order, so each is cut from the front of what
/// is left; static chunks are fixed blocks, cut up in advance.
struct Slices<'a, T> {
    dispenser: Dispenser,
    tail: &'a mut [T],
    tail_start: u64,
    blocks: Vec<Option<&'a mut [T]>>,
}

impl<'a, T> Slices<'a, T> {
    fn next_for(&mut self, worker: usize) -> Option<(Chunk, &'a mut [T])> {
        let chunk = self.dispenser.next_for(worker)?;
        if self.dispenser.schedule() == Schedule::Static {
            let block = self.blocks.get_mut(chunk.id as usize)?.take()?;
            return Some((chunk, block));
        }
        assert_eq!(chunk.start, self.tail_start, "dynamic chunks come in order");
        let (head, rest) = std::mem::take(&mut self.tail).split_at_mut(chunk.len() as usize);
        self.tail = rest;
        self.tail_start = chunk.end;
        Some((chunk, head))
    }
}

/// Runs `workload` on `0..n` with `threads` threads taking chunks from `dispenser` (the
/// next chunk goes to whichever thread asks), all writing into one buffer.
pub fn run_threads<W: Workload>(
    workload: &W,
    dispenser: Dispenser,
    threads: usize,
) -> ThreadsRun<W::Output> {
    let n = dispenser.remaining();
    let len = usize::try_from(n).expect("n was checked against memory before");
    let mut output: Vec<W::Output> = bytemuck::zeroed_vec(len);
    let chunk_size = usize::try_from(dispenser.chunk_size()).unwrap_or(usize::MAX);
    let began = Instant::now();
    let (blocks, tail): (Vec<_>, &mut [W::Output]) = if dispenser.schedule() == Schedule::Static {
        (output.chunks_mut(chunk_size).map(Some).collect(), &mut [])
    } else {
        (Vec::new(), &mut output[..])
    };
    let slices = Mutex::new(Slices {
        dispenser,
        tail,
        tail_start: 0,
        blocks,
    });
    let pid = std::process::id();
    let results: Vec<(WorkerStats, Instant, Option<Instant>, Option<u64>)> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|id| {
                    let slices = &slices;
                    scope.spawn(move || {
                        let started = Instant::now();
                        let (mut chunks, mut compute) = (0u64, Duration::ZERO);
                        let mut reduction: Option<u64> = None;
                        let mut last_done = None;
                        loop {
                            let next = slices.lock().expect("no panic while held").next_for(id);
                            let Some((chunk, out)) = next else { break };
                            let t = Instant::now();
                            workload.kernel(chunk.range(), out);
                            if let Some(r) = workload.reduce(out) {
                                reduction = Some(reduction.unwrap_or(0).wrapping_add(r));
                            }
                            let now = Instant::now();
                            compute += now - t;
                            last_done = Some(now);
                            chunks += 1;
                        }
                        let stats = WorkerStats {
                            id,
                            pid,
                            chunks,
                            compute_s: compute.as_secs_f64(),
                            cpu_s: None,
                            peak_rss_bytes: None,
                            idle_end_s: 0.0,
                            cpu: None,
                        };
                        (stats, started, last_done, reduction)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("kernel panicked in a thread"))
                .collect()
        });
    let end = Instant::now();
    let wall = end - began;
    let start = results
        .iter()
        .map(|(_, t, _, _)| t.duration_since(began))
        .max()
        .unwrap_or_default();
    let reduction = results
        .iter()
        .filter_map(|&(_, _, _, r)| r)
        .reduce(u64::wrapping_add);
    let workers: Vec<WorkerStats> = results
        .into_iter()
        .map(|(mut stats, _, last_done, _)| {
            stats.idle_end_s = last_done.map_or(wall, |t| end - t).as_secs_f64();
            stats
        })
        .collect();
    ThreadsRun {
        output,
        wall,
        start,
        chunks: workers.iter().map(|w| w.chunks).sum(),
        workers,
        reduction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Squares;

    #[test]
    fn threads_compute_every_element_once_under_every_schedule() {
        for schedule in [Schedule::Static, Schedule::Dynamic, Schedule::Guided] {
            for (n, cs, threads) in [
                (0u64, Some(1u64), 2usize),
                (1, Some(1), 3),
                (1001, Some(7), 3),
                (10_000, None, 2),
            ] {
                let run = run_threads(&Squares, Dispenser::new(schedule, n, threads, cs), threads);
                assert_eq!(run.output.len() as u64, n);
                assert!(
                    run.output
                        .iter()
                        .enumerate()
                        .all(|(i, &x)| x == (i * i) as u64)
                );
                assert_eq!(run.workers.len(), threads);
                let chunks: u64 = run.workers.iter().map(|w| w.chunks).sum();
                assert_eq!(chunks, run.chunks);
            }
        }
    }
}
