//! The same job on threads of this one process, for comparison with processes.
//!
//! Rust has no GIL: threads scale for CPU-bound work just as processes do. What processes
//! add is isolation (a crash in one worker does not take down the rest) and its cost:
//! starting processes, IPC, page faults in a shared mapping. Running the same kernel with
//! the same chunking on threads measures exactly that cost.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::interrupt::Interrupt;
use crate::engine::pool::{ReducedChunk, WorkerStats};
use crate::engine::schedule::{Chunk, Dispenser, Schedule};
use crate::engine::sys::{OsCounts, thread_cpu_ns};
use crate::error::{Error, Phase, Result};
use crate::lab::baseline::{in_pieces, zeroed};
use crate::workload::{ChunkReducer, Workload};

/// What a threaded run measured.
#[derive(Debug, Clone)]
pub(crate) struct ThreadsRun<T> {
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
    /// Each chunk's encoded accumulator, when the run reduces (in no particular order).
    pub reduced: Vec<ReducedChunk>,
}

/// The output, handed out chunk by chunk as disjoint `&mut` slices: safe sharing of one
/// buffer. Dynamic and guided chunks come in order, so each is cut from the front of what
/// is left; static chunks are fixed blocks, cut up in advance.
struct Slices<'a, T> {
    dispenser: Dispenser,
    tail: &'a mut [T],
    tail_start: u64,
    blocks: Vec<Option<&'a mut [T]>>,
    /// No more chunks are handed out (a thread could not be started).
    closed: bool,
}

impl<'a, T> Slices<'a, T> {
    fn next_for(&mut self, worker: usize) -> Option<(Chunk, &'a mut [T])> {
        if self.closed {
            return None;
        }
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

/// What one thread did.
struct ThreadResult {
    stats: WorkerStats,
    started: Instant,
    last_done: Option<Instant>,
    reduced: Vec<ReducedChunk>,
    elements: u64,
    stopped_by: Option<i32>,
}

/// Runs `workload` on `0..n` with `threads` threads taking chunks from `dispenser` (the
/// next chunk goes to whichever thread asks), all writing into one buffer.
///
/// Each chunk's kernel runs in short pieces with a look at `interrupt` between them, so
/// SIGINT or SIGTERM stops every thread within a fraction of a second
/// ([`Error::Interrupted`]). A thread the system refuses to start is an error naming the
/// limit on threads (`ulimit -u`); the threads already running finish their chunk first.
pub(crate) fn run_threads<W: Workload>(
    workload: &W,
    dispenser: Dispenser,
    threads: usize,
    interrupt: &Interrupt,
    reducer: Option<&dyn ChunkReducer<W::Output>>,
) -> Result<ThreadsRun<W::Output>> {
    let n = dispenser.remaining();
    let mut output: Vec<W::Output> = zeroed(n, "the threads' shared output")?;
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
        closed: false,
    });
    let pid = std::process::id();
    let (mut results, refused) = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads);
        let mut refused = None;
        for id in 0..threads {
            let slices = &slices;
            let spawned = std::thread::Builder::new()
                .name(format!("procpool-thread-{id}"))
                .spawn_scoped(scope, move || {
                    work(workload, slices, id, pid, interrupt, reducer)
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    slices.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
                    refused = Some((id, e));
                    break;
                }
            }
        }
        let results: Vec<ThreadResult> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (results, refused)
    });
    if let Some((id, e)) = refused {
        let limit = match crate::engine::sys::process_limit() {
            Some(limit) => format!("the limit on processes and threads (ulimit -u) is {limit}"),
            None => "a system limit on threads was reached (ulimit -u, the cgroup's pids.max \
                     or /proc/sys/kernel/threads-max)"
                .to_string(),
        };
        return Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot start thread {id} of {threads} ({e}): {limit}; use fewer `workers`"),
        )));
    }
    if let Some(signal) = results.iter().find_map(|r| r.stopped_by) {
        return Err(Error::Interrupted {
            signal,
            phase: Phase::Threads,
            chunks_done: results.iter().map(|r| r.stats.chunks).sum(),
            chunks: results.iter().map(|r| r.stats.chunks).sum(),
            elements_done: results.iter().map(|r| r.elements).sum(),
            n,
            workers: threads,
            needed_term: 0,
            needed_kill: 0,
        });
    }
    let end = Instant::now();
    let wall = end - began;
    let start = results
        .iter()
        .map(|r| r.started.duration_since(began))
        .max()
        .unwrap_or_default();
    let reduced = results
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.reduced))
        .collect();
    let workers: Vec<WorkerStats> = results
        .into_iter()
        .map(|r| {
            let mut stats = r.stats;
            stats.idle_end_s = r.last_done.map_or(wall, |t| end - t).as_secs_f64();
            stats
        })
        .collect();
    Ok(ThreadsRun {
        output,
        wall,
        start,
        chunks: workers.iter().map(|w| w.chunks).sum(),
        workers,
        reduced,
    })
}

/// One thread's loop: take the next chunk, compute it in pieces, until none is left or
/// a stop is requested.
fn work<W: Workload>(
    workload: &W,
    slices: &Mutex<Slices<'_, W::Output>>,
    id: usize,
    pid: u32,
    interrupt: &Interrupt,
    reducer: Option<&dyn ChunkReducer<W::Output>>,
) -> ThreadResult {
    let started = Instant::now();
    let os_before = OsCounts::this_thread();
    let cpu_before = thread_cpu_ns();
    let (mut chunks, mut compute, mut elements) = (0u64, Duration::ZERO, 0u64);
    let mut reduced = Vec::new();
    let mut last_done = None;
    let mut stopped_by = None;
    loop {
        // A poisoned lock means another thread panicked; its panic is re-raised at join.
        let next = match slices.lock() {
            Ok(mut slices) => slices.next_for(id),
            Err(_) => None,
        };
        let Some((chunk, out)) = next else { break };
        let t = Instant::now();
        if let Err(stopped) = in_pieces(chunk.range(), out, interrupt, |r, o| workload.kernel(r, o))
        {
            elements += stopped.done;
            stopped_by = Some(stopped.signal);
            break;
        }
        if let Some(reducer) = reducer {
            reduced.push(ReducedChunk {
                range: chunk.range(),
                acc: reducer.reduce_chunk(chunk.range(), out),
            });
        }
        let now = Instant::now();
        compute += now - t;
        last_done = Some(now);
        chunks += 1;
        elements += chunk.len();
    }
    let stats = WorkerStats {
        chunks,
        compute_s: compute.as_secs_f64(),
        // This thread's own CPU time and counters (RUSAGE_THREAD), like a worker process's.
        cpu_s: Some(thread_cpu_ns().saturating_sub(cpu_before) as f64 / 1e9),
        ..WorkerStats::idle(id, pid)
    }
    .with_os(
        OsCounts::this_thread()
            .zip(os_before)
            .map(|(now, then)| now.since(then)),
    );
    ThreadResult {
        stats,
        started,
        last_done,
        reduced,
        elements,
        stopped_by,
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
                let dispenser = Dispenser::new(schedule, n, threads, cs);
                let run =
                    run_threads(&Squares, dispenser, threads, &Interrupt::new(), None).unwrap();
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
