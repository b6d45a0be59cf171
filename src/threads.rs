//! The same job on threads of this one process, for comparison with processes.
//!
//! Rust has no GIL: threads scale for CPU-bound work just as processes do. What processes
//! add is isolation (a crash in one worker does not take down the rest) and its cost:
//! starting processes, IPC, page faults in a shared mapping. Running the same kernel with
//! the same chunking on threads measures exactly that cost.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pool::WorkerStats;
use crate::schedule::ChunkPlan;
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
    /// Per thread: chunks done and kernel time (`pid` is this process's id).
    pub workers: Vec<WorkerStats>,
    /// The workload's per-chunk reductions added up, if it has one.
    pub reduction: Option<u64>,
}

/// Runs `workload` on `0..n` with `threads` threads taking chunks of `plan` dynamically
/// (the next chunk goes to whichever thread is free), all writing into one buffer.
pub fn run_threads<W: Workload>(
    workload: &W,
    plan: ChunkPlan,
    threads: usize,
) -> ThreadsRun<W::Output> {
    let len = usize::try_from(plan.n()).expect("n was checked against memory before");
    let mut output: Vec<W::Output> = bytemuck::zeroed_vec(len);
    let chunk_size = usize::try_from(plan.chunk_size()).unwrap_or(usize::MAX);
    let began = Instant::now();
    // Disjoint `&mut` slices, handed out one at a time: safe sharing of one buffer.
    let queue = Mutex::new(output.chunks_mut(chunk_size).enumerate());
    let pid = std::process::id();
    let (workers, started): (Vec<WorkerStats>, Vec<(Instant, Option<u64>)>) =
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|id| {
                    let queue = &queue;
                    scope.spawn(move || {
                        let started = Instant::now();
                        let (mut chunks, mut compute) = (0u64, Duration::ZERO);
                        let mut reduction: Option<u64> = None;
                        loop {
                            let next = queue.lock().expect("no thread panics holding it").next();
                            let Some((k, out)) = next else { break };
                            let start = k as u64 * plan.chunk_size();
                            let t = Instant::now();
                            workload.kernel(start..start + out.len() as u64, out);
                            if let Some(r) = workload.reduce(out) {
                                reduction = Some(reduction.unwrap_or(0).wrapping_add(r));
                            }
                            compute += t.elapsed();
                            chunks += 1;
                        }
                        let stats = WorkerStats {
                            id,
                            pid,
                            chunks,
                            compute_s: compute.as_secs_f64(),
                        };
                        (stats, (started, reduction))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("kernel panicked in a thread"))
                .unzip()
        });
    let wall = began.elapsed();
    let start = started
        .iter()
        .map(|(t, _)| t.duration_since(began))
        .max()
        .unwrap_or_default();
    let reduction = started
        .iter()
        .filter_map(|&(_, r)| r)
        .reduce(u64::wrapping_add);
    ThreadsRun {
        output,
        wall,
        start,
        workers,
        reduction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Squares;

    #[test]
    fn threads_compute_every_element_once() {
        for (n, cs, threads) in [
            (0u64, 1u64, 2usize),
            (1, 1, 3),
            (1001, 7, 3),
            (10_000, 2500, 2),
        ] {
            let run = run_threads(&Squares, ChunkPlan::new(n, cs), threads);
            assert_eq!(run.output.len() as u64, n);
            assert!(
                run.output
                    .iter()
                    .enumerate()
                    .all(|(i, &x)| x == (i * i) as u64)
            );
            let chunks: u64 = run.workers.iter().map(|w| w.chunks).sum();
            assert_eq!(chunks, ChunkPlan::new(n, cs).len());
            assert_eq!(run.workers.len(), threads);
        }
    }
}
