//! cargo run --release --example streaming_results
//!
//! Results as they finish: `Pool::for_each_chunk` hands each chunk to a callback as soon
//! as a worker is done with it (Python's `imap_unordered` / `as_completed`), a view of its
//! results in the shared region, while the workers compute the next chunks.
//!
//! 1. Collatz step counts for 0..2,000,000 in completion order: a running total and the
//!    longest chain so far are printed while the job runs, and checked against `run_with`.
//! 2. The first number whose chain takes more than 400 steps, in index order (chunk k
//!    arrives once chunks 0..=k are done, so the first hit is the answer): the callback
//!    returns `Break` as soon as it sees it, and the rest of the job is never computed.

use std::ops::ControlFlow;
use std::time::Instant;

use procpool::workload::Collatz;
use procpool::{ChunkOrder, JobOptions, Pool};

fn main() -> Result<(), procpool::Error> {
    // First thing in main: a re-executed worker serves here and never returns.
    procpool::init();
    let mut pool = Pool::builder().workers(2).build()?;

    // 1. Consume chunks as they finish.
    let n = 2_000_000;
    let options = JobOptions {
        chunk_size: Some(50_000),
        ..JobOptions::default()
    };
    let began = Instant::now();
    let (mut steps, mut longest) = (0u64, (0u32, 0u64));
    let stats = pool.for_each_chunk(&Collatz, n, &options, ChunkOrder::Completion, |chunk| {
        steps += chunk.output.iter().map(|&s| u64::from(s)).sum::<u64>();
        for (&s, i) in chunk.output.iter().zip(chunk.range.clone()) {
            if s > longest.0 {
                longest = (s, i);
            }
        }
        if chunk.index < 3 || chunk.index % 10 == 0 {
            println!(
                "{:>7.1} ms  chunk {:>2} ({:>7}..{:>7}) done: {steps} steps so far, \
                 longest chain {} steps (from {})",
                began.elapsed().as_secs_f64() * 1e3,
                chunk.index,
                chunk.range.start,
                chunk.range.end,
                longest.0,
                longest.1
            );
        }
        ControlFlow::Continue(())
    })?;
    println!(
        "all {} chunks seen in {:.1} ms: {steps} steps, longest chain {} steps from {}",
        stats.chunks_delivered,
        stats.wall.as_secs_f64() * 1e3,
        longest.0,
        longest.1
    );
    // The same answer from the whole output at the end.
    let run = pool.run_with(&Collatz, n, &options)?;
    let total: u64 = run.results().iter().map(|&s| u64::from(s)).sum();
    assert_eq!(
        total, steps,
        "the chunks as they came add up to the whole output"
    );
    let max = run.results().iter().copied().max().unwrap_or(0);
    assert_eq!(max, longest.0, "the longest chain is the same");
    drop(run);

    // 2. Stop early: in index order, the first hit is the smallest such number.
    let limit = 400;
    let options = JobOptions {
        chunk_size: Some(10_000),
        ..JobOptions::default()
    };
    let n = 100_000_000;
    let mut found = None;
    let stats = pool.for_each_chunk(&Collatz, n, &options, ChunkOrder::Index, |chunk| {
        let hit = chunk.output.iter().position(|&s| s > limit);
        match hit {
            Some(at) => {
                found = Some(chunk.range.start + at as u64);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    })?;
    let found = found.expect("a chain that long exists below 10^8");
    println!(
        "first number whose chain takes more than {limit} steps: {found} (stopped early: {}, \
         {} of {} chunks computed, {:.1} ms)",
        stats.stopped_early,
        stats.chunks,
        n / 10_000,
        stats.wall.as_secs_f64() * 1e3
    );
    assert!(stats.stopped_early);
    // Check it in this process: no smaller number takes that long.
    let steps_of = |mut x: u64| {
        let mut s = 0u32;
        while x > 1 {
            x = if x.is_multiple_of(2) {
                x / 2
            } else {
                3 * x + 1
            };
            s += 1;
        }
        s
    };
    assert!(steps_of(found) > limit && (1..found).all(|i| steps_of(i) <= limit));

    // The pool is ready for the next job, with the same workers.
    let run = pool.run(&Collatz, 28)?;
    assert_eq!(run.results()[27], 111);
    Ok(())
}
