//! `Pool::for_each_chunk`: results as they finish, on real worker processes started through
//! this test binary. Every chunk exactly once with the kernel's values, on both dispatch
//! paths and every schedule; index order; an early `Break`; a worker killed or timed out
//! mid-iteration; a panicking callback.

mod common;

use std::ops::{ControlFlow, Range};
use std::time::{Duration, Instant};

use common::{POOL_JOB_DEADLINE, TEARDOWN_DEADLINE, is_our_child, wait_until, within};
use procpool::{ChunkOrder, Dispatch, JobOptions, JobStats, Pool, Registry, Schedule, Workload};
use serde::{Deserialize, Serialize};

/// `i * 3 + 1` for each index, after sleeping `sleep_us` per chunk (so that a job lasts
/// long enough to be stopped or to lose a worker on the way).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Paced {
    sleep_us: u64,
}

impl Workload for Paced {
    const NAME: &'static str = "paced";
    type Output = u64;

    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        if self.sleep_us > 0 {
            std::thread::sleep(Duration::from_micros(self.sleep_us));
        }
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = value(i);
        }
    }
}

fn value(i: u64) -> u64 {
    i.wrapping_mul(3).wrapping_add(1)
}

procpool::enable_test_support!(Registry::builtin().register::<Paced>());

const FAST: Paced = Paced { sleep_us: 0 };

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .test_harness()
        .build()
        .expect("workers through this test binary")
}

/// What an iteration saw: each chunk's index and range, in the order handed out.
#[derive(Debug, Default)]
struct Seen {
    chunks: Vec<(u64, Range<u64>)>,
}

impl Seen {
    /// Records one chunk after checking its values against the kernel's.
    fn record(&mut self, index: u64, range: Range<u64>, output: &[u64], what: &str) {
        assert_eq!(
            output.len() as u64,
            range.end - range.start,
            "{what}: chunk {index}"
        );
        for (i, &v) in range.clone().zip(output) {
            assert_eq!(v, value(i), "{what}: chunk {index}, index {i}");
        }
        self.chunks.push((index, range));
    }

    /// Asserts every chunk of `0..n` came exactly once: indices `0..chunks` once each, and
    /// their ranges tile `0..n` in index order.
    fn assert_every_chunk_once(&self, n: u64, stats: &JobStats, what: &str) {
        let mut sorted = self.chunks.clone();
        sorted.sort_by_key(|(k, _)| *k);
        let indices: Vec<u64> = sorted.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            indices,
            (0..stats.chunks).collect::<Vec<_>>(),
            "{what}: each chunk index exactly once"
        );
        let mut end = 0;
        for (k, r) in &sorted {
            assert_eq!(
                r.start,
                end,
                "{what}: chunk {k} starts where chunk {} ended",
                k.wrapping_sub(1)
            );
            assert!(r.end > r.start, "{what}: chunk {k} is empty");
            end = r.end;
        }
        assert_eq!(end, n, "{what}: the chunks cover 0..n");
        assert_eq!(stats.chunks_delivered, stats.chunks, "{what}");
        assert!(!stats.stopped_early, "{what}");
    }
}

/// Iterates `workload` on `0..n`, checking each chunk's values; returns what it saw.
fn iterate(
    pool: &mut Pool,
    workload: &Paced,
    n: u64,
    options: &JobOptions,
    order: ChunkOrder,
    what: &str,
) -> (Seen, JobStats) {
    let mut seen = Seen::default();
    let stats = pool
        .for_each_chunk(workload, n, options, order, |chunk| {
            seen.record(chunk.index, chunk.range, chunk.output, what);
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    (seen, stats)
}

#[test]
fn completion_order_covers_every_chunk_once_with_the_kernels_values() {
    let (_pool, ()) = within(pool(2), |pool| {
        for dispatch in [Dispatch::Queue, Dispatch::Channel] {
            for schedule in [Schedule::Static, Schedule::Dynamic, Schedule::Guided] {
                for (n, chunk_size, auto_chunk) in [
                    (100_003, Some(1000), false),
                    (3_000, Some(1), false),
                    (0, None, false),
                    (200_000, None, true),
                ] {
                    let what = format!(
                        "{dispatch} {schedule} n={n} chunk={chunk_size:?} auto={auto_chunk}"
                    );
                    let options = JobOptions {
                        chunk_size,
                        auto_chunk,
                        schedule,
                        dispatch,
                        ..JobOptions::default()
                    };
                    let (seen, stats) =
                        iterate(pool, &FAST, n, &options, ChunkOrder::Completion, &what);
                    seen.assert_every_chunk_once(n, &stats, &what);
                }
            }
        }
    });
}

#[test]
fn results_that_travel_over_the_channels_are_in_place_when_handed_out() {
    let (_pool, ()) = within(pool(2), |pool| {
        for order in [ChunkOrder::Completion, ChunkOrder::Index] {
            let what = format!("channel transport {order:?}");
            let options = JobOptions {
                chunk_size: Some(700),
                dispatch: Dispatch::Channel,
                transport: procpool::Transport::Channel,
                ..JobOptions::default()
            };
            let n = 50_000;
            let (seen, stats) = iterate(pool, &FAST, n, &options, order, &what);
            seen.assert_every_chunk_once(n, &stats, &what);
            assert!(stats.channel_result_bytes > 0, "{what}");
        }
    });
}

#[test]
fn index_order_is_increasing_and_contiguous() {
    let (_pool, ()) = within(pool(2), |pool| {
        for dispatch in [Dispatch::Queue, Dispatch::Channel] {
            for (schedule, auto_chunk) in [
                (Schedule::Static, false),
                (Schedule::Dynamic, false),
                (Schedule::Guided, false),
                (Schedule::Dynamic, true),
            ] {
                let what = format!("{dispatch} {schedule} auto={auto_chunk}");
                let options = JobOptions {
                    chunk_size: (!auto_chunk).then_some(500),
                    auto_chunk,
                    schedule,
                    dispatch,
                    ..JobOptions::default()
                };
                let n = 100_000;
                let (seen, stats) = iterate(pool, &FAST, n, &options, ChunkOrder::Index, &what);
                let order: Vec<u64> = seen.chunks.iter().map(|(k, _)| *k).collect();
                assert_eq!(order, (0..stats.chunks).collect::<Vec<_>>(), "{what}");
                seen.assert_every_chunk_once(n, &stats, &what);
            }
        }
    });
}

#[test]
fn a_break_stops_the_job_and_the_same_workers_run_the_next() {
    let mut pool = pool(2);
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let pids = pool.pids();
        // 400 chunks of 5 ms: two seconds of work on two workers, stopped after 3 chunks.
        let slow = Paced { sleep_us: 5_000 };
        let options = JobOptions {
            chunk_size: Some(100),
            dispatch,
            ..JobOptions::default()
        };
        let chunks = 400;
        let (back, stats) = within(pool, move |pool| {
            let mut got = 0;
            pool.for_each_chunk(
                &slow,
                chunks * 100,
                &options,
                ChunkOrder::Completion,
                |chunk| {
                    assert!(
                        chunk
                            .output
                            .iter()
                            .zip(chunk.range.clone())
                            .all(|(&v, i)| v == value(i))
                    );
                    got += 1;
                    if got == 3 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )
            .expect("a stopped job is Ok")
        });
        pool = back;
        assert!(stats.stopped_early, "{dispatch}: {stats:?}");
        assert_eq!(stats.chunks_delivered, 3, "{dispatch}");
        assert!(
            stats.chunks < chunks / 2,
            "{dispatch}: the workers stopped taking chunks, yet {} of {chunks} ran",
            stats.chunks
        );
        assert!(stats.deaths.is_empty(), "{dispatch}: {:?}", stats.deaths);
        // The next job, on the same workers, runs whole and verifies.
        let n = 50_000;
        let (back, ()) = within(pool, move |pool| {
            let run = pool
                .run_with(
                    &FAST,
                    n,
                    &JobOptions {
                        dispatch,
                        ..JobOptions::default()
                    },
                )
                .expect("the next job");
            assert!(
                (0..n).all(|i| run.results()[i as usize] == value(i)),
                "{dispatch}"
            );
            let (seen, stats) = iterate(
                pool,
                &FAST,
                n,
                &JobOptions {
                    dispatch,
                    ..JobOptions::default()
                },
                ChunkOrder::Index,
                "after a break",
            );
            seen.assert_every_chunk_once(n, &stats, "after a break");
        });
        pool = back;
        assert_eq!(pool.pids(), pids, "{dispatch}: no worker was replaced");
    }
}

#[test]
fn a_worker_killed_during_the_iteration_still_yields_every_chunk_once() {
    let mut pool = pool(2);
    for (dispatch, schedule, order) in [
        (Dispatch::Queue, Schedule::Dynamic, ChunkOrder::Completion),
        (Dispatch::Queue, Schedule::Static, ChunkOrder::Completion),
        (Dispatch::Queue, Schedule::Guided, ChunkOrder::Index),
        (Dispatch::Channel, Schedule::Dynamic, ChunkOrder::Completion),
        (Dispatch::Channel, Schedule::Static, ChunkOrder::Index),
    ] {
        let victim = pool.pids()[0];
        let what = format!("{dispatch} {schedule} {order:?}");
        // 200 chunks of 2 ms: the kill lands while most are still to run.
        let slow = Paced { sleep_us: 2_000 };
        let options = JobOptions {
            chunk_size: Some(50),
            dispatch,
            schedule,
            ..JobOptions::default()
        };
        let n = 10_000;
        let w = what.clone();
        let (back, (seen, stats)) = within(pool, move |pool| {
            let mut seen = Seen::default();
            let stats = pool
                .for_each_chunk(&slow, n, &options, order, |chunk| {
                    if seen.chunks.is_empty() {
                        common::kill(victim);
                    }
                    seen.record(chunk.index, chunk.range, chunk.output, &w);
                    ControlFlow::Continue(())
                })
                .unwrap_or_else(|e| panic!("{w}: {e:#}"));
            (seen, stats)
        });
        pool = back;
        seen.assert_every_chunk_once(n, &stats, &what);
        assert!(
            stats.deaths.iter().any(|d| d.pid == victim),
            "{what}: the killed worker is reported: {:?}",
            stats.deaths
        );
        assert!(!pool.pids().contains(&victim), "{what}: it was replaced");
    }
}

#[test]
fn a_timed_out_chunk_is_retried_and_delivered_once() {
    let mut pool = Pool::builder()
        .workers(2)
        .test_harness()
        .chunk_timeout(Duration::from_millis(300))
        .build()
        .expect("workers through this test binary");
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let what = format!("{dispatch}");
        let options = JobOptions {
            chunk_size: Some(100),
            dispatch,
            faults: vec!["hang@5".parse().expect("a fault")],
            ..JobOptions::default()
        };
        let n = 20_000;
        let w = what.clone();
        let (back, (seen, stats)) = within(pool, move |pool| {
            iterate(
                pool,
                &Paced { sleep_us: 500 },
                n,
                &options,
                ChunkOrder::Completion,
                &w,
            )
        });
        pool = back;
        seen.assert_every_chunk_once(n, &stats, &what);
        // The channels also hand out again the chunks queued behind the hung one.
        assert!(stats.retried_chunks >= 1, "{what}: {stats:?}");
        assert!(
            stats.deaths.len() == 1 && stats.deaths[0].cause.contains("timed out"),
            "{what}: {:?}",
            stats.deaths
        );
    }
}

#[test]
fn a_panicking_callback_leaves_no_worker_running() {
    let pool = pool(2);
    let pids = pool.pids();
    let (pool, caught) = within(pool, |pool| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let options = JobOptions {
                chunk_size: Some(10),
                ..JobOptions::default()
            };
            let _ = pool.for_each_chunk(
                &Paced { sleep_us: 1_000 },
                10_000,
                &options,
                ChunkOrder::Completion,
                |chunk| {
                    assert!(chunk.index > 1_000_000, "the callback's own panic");
                    ControlFlow::Continue(())
                },
            );
        }))
    });
    assert!(caught.is_err(), "the callback's panic reaches the caller");
    let gone = wait_until(TEARDOWN_DEADLINE, || !pids.iter().any(|&p| is_our_child(p)));
    assert!(gone, "workers {pids:?} outlived the panic");
    // The pool starts fresh workers for its next job.
    let began = Instant::now();
    let (_pool, ()) = within(pool, |pool| {
        let n = 10_000;
        let (seen, stats) = iterate(
            pool,
            &FAST,
            n,
            &JobOptions::default(),
            ChunkOrder::Completion,
            "after a panic",
        );
        seen.assert_every_chunk_once(n, &stats, "after a panic");
    });
    assert!(began.elapsed() < POOL_JOB_DEADLINE);
}

#[test]
fn a_sleeping_parent_is_woken_for_each_chunk() {
    // One worker, chunks of 20 ms: the parent sleeps between chunks, and only a worker's
    // `Wake` (not the end of the job) brings it back for each one.
    let (_pool, ()) = within(pool(1), |pool| {
        let slow = Paced { sleep_us: 20_000 };
        let options = JobOptions {
            chunk_size: Some(10),
            ..JobOptions::default()
        };
        let n = 100;
        let (seen, stats) = iterate(pool, &slow, n, &options, ChunkOrder::Completion, "woken");
        seen.assert_every_chunk_once(n, &stats, "woken");
        assert!(stats.parent_sleeps >= 5, "{stats:?}");
        assert!(
            stats.wake_messages >= stats.chunks / 2,
            "a Wake per chunk, not one at the end: {stats:?}"
        );
        // `run_with` is not woken per chunk: no log, no Wake until the end.
        let run = pool.run_with(&slow, n, &options).expect("run_with");
        assert!(run.stats().wake_messages <= 1, "{:?}", run.stats());
    });
}
