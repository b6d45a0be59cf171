//! General reductions (`Reduce`): typed accumulators reduced per chunk in real worker
//! processes and combined in chunk order, reduction-only jobs without an output buffer, and
//! the lab's check of the pool's reduction against the single-process run.

use std::ops::Range;

use procpool::{
    Dispatch, Error, JobOptions, Mode, Pool, Reduce, Registry, RunOptions, Schedule, Workload,
};
use serde::{Deserialize, Serialize};

/// `out[i] = 1 / (i + 1)`: a float sum whose value depends on the order of the additions.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Harmonic;

impl Workload for Harmonic {
    const NAME: &'static str = "harmonic";
    type Output = f64;

    fn kernel(&self, range: Range<u64>, out: &mut [f64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = 1.0 / (i + 1) as f64;
        }
    }
}

impl Reduce for Harmonic {
    type Acc = f64;

    fn identity(&self) -> f64 {
        0.0
    }

    fn reduce_chunk(&self, _range: Range<u64>, out: &[f64]) -> f64 {
        out.iter().sum()
    }

    fn combine(&self, left: f64, right: f64) -> f64 {
        left + right
    }
}

/// A struct accumulator: count, smallest and largest value, and where the largest is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Stats {
    count: u64,
    min: u64,
    max: u64,
    argmax: u64,
}

/// `out[i]` = a hash of `i`, reduced to its statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Scatter;

impl Workload for Scatter {
    const NAME: &'static str = "scatter";
    type Output = u64;

    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = splitmix64(i) >> 8;
        }
    }
}

impl Reduce for Scatter {
    type Acc = Stats;

    fn identity(&self) -> Stats {
        Stats {
            count: 0,
            min: u64::MAX,
            max: 0,
            argmax: 0,
        }
    }

    fn reduce_chunk(&self, range: Range<u64>, out: &[u64]) -> Stats {
        let mut s = self.identity();
        for (&x, i) in out.iter().zip(range) {
            s.count += 1;
            s.min = s.min.min(x);
            if x > s.max || s.count == 1 {
                (s.max, s.argmax) = (x, i);
            }
        }
        s
    }

    fn combine(&self, left: Stats, right: Stats) -> Stats {
        let (max, argmax) = if right.count > 0 && (left.count == 0 || right.max > left.max) {
            (right.max, right.argmax)
        } else {
            (left.max, left.argmax)
        };
        Stats {
            count: left.count + right.count,
            min: left.min.min(right.min),
            max,
            argmax,
        }
    }
}

/// An accumulator that outgrows its slot: the whole chunk as a vector.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hoarder;

impl Workload for Hoarder {
    const NAME: &'static str = "hoarder";
    type Output = u32;

    fn kernel(&self, range: Range<u64>, out: &mut [u32]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = i as u32;
        }
    }
}

impl Reduce for Hoarder {
    type Acc = Vec<u32>;
    const ACC_BYTES: usize = 16;

    fn identity(&self) -> Vec<u32> {
        Vec::new()
    }

    fn reduce_chunk(&self, _range: Range<u64>, out: &[u32]) -> Vec<u32> {
        out.to_vec()
    }

    fn combine(&self, mut left: Vec<u32>, right: Vec<u32>) -> Vec<u32> {
        left.extend(right);
        left
    }
}

/// Registered without its reduction: its kernel runs, its reductions are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlainOnly;

impl Workload for PlainOnly {
    const NAME: &'static str = "plain-only";
    type Output = u8;

    fn kernel(&self, _range: Range<u64>, out: &mut [u8]) {
        out.fill(1);
    }
}

impl Reduce for PlainOnly {
    type Acc = u64;

    fn identity(&self) -> u64 {
        0
    }

    fn reduce_chunk(&self, _range: Range<u64>, out: &[u8]) -> u64 {
        out.len() as u64
    }

    fn combine(&self, left: u64, right: u64) -> u64 {
        left + right
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn registry() -> Registry {
    Registry::builtin()
        .register_reduce::<Harmonic>()
        .register_reduce::<Scatter>()
        .register_reduce::<Hoarder>()
        .register::<PlainOnly>()
}

procpool::enable_test_support!(registry());

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .test_harness()
        .registry(registry())
        .build()
        .expect("start workers through this test binary")
}

fn options(dispatch: Dispatch, schedule: Schedule, chunk_size: u64) -> JobOptions {
    JobOptions {
        chunk_size: Some(chunk_size),
        schedule,
        dispatch,
        ..JobOptions::default()
    }
}

/// The harmonic sum of `0..n` cut into chunks of `size`, summed in chunk order: what the
/// pool must give bit for bit, whichever worker ran which chunk.
fn harmonic_in_chunks(n: u64, size: u64) -> f64 {
    let mut total = 0.0;
    let mut start = 0;
    while start < n {
        let end = (start + size).min(n);
        let mut out = vec![0.0; (end - start) as usize];
        Harmonic.kernel(start..end, &mut out);
        total += out.iter().sum::<f64>();
        start = end;
    }
    total
}

#[test]
fn an_f64_sum_is_reduced_reproducibly_without_an_output_buffer() {
    let n = 300_000;
    let size = 1_000;
    let expected = harmonic_in_chunks(n, size);
    // The order matters for floats: one sum over everything differs from the chunked one.
    let mut everything = vec![0.0; n as usize];
    Harmonic.kernel(0..n, &mut everything);
    let flat: f64 = everything.iter().sum();
    assert_ne!(flat.to_bits(), expected.to_bits(), "a test that could fail");
    let mut pool = pool(2);
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        for schedule in [Schedule::Dynamic, Schedule::Static] {
            let options = options(dispatch, schedule, size);
            for round in 0..3 {
                let reduced = pool
                    .reduce_with(&Harmonic, n, &options)
                    .unwrap_or_else(|e| panic!("{dispatch}, {schedule:?}: {e}"));
                assert_eq!(
                    reduced.value.to_bits(),
                    expected.to_bits(),
                    "{dispatch}, {schedule:?}, round {round}: {} against {expected}",
                    reduced.value
                );
                assert_eq!(reduced.stats.shm_bytes, 0, "no output went through memory");
                assert_eq!(
                    reduced.stats.channel_result_bytes, 0,
                    "nor over the channels"
                );
                assert_eq!(reduced.stats.chunks, n / size);
                assert_eq!(
                    reduced.stats.reduction,
                    Some(serde_json::json!(reduced.value))
                );
            }
        }
    }
}

#[test]
fn guided_and_measured_chunks_combine_in_chunk_order() {
    let n = 200_000;
    let mut pool = pool(2);
    for (schedule, auto) in [(Schedule::Guided, false), (Schedule::Dynamic, true)] {
        let options = JobOptions {
            schedule,
            auto_chunk: auto,
            ..JobOptions::default()
        };
        let (run, value) = pool
            .run_and_reduce_with(&Harmonic, n, &options)
            .expect("run and reduce");
        // Whatever the chunks were, the output is all there and the sum is close to the
        // plain one (their exact bits depend on the chunks, checked by the lab test below).
        assert_eq!(run.results().len() as u64, n);
        assert_eq!(run.results()[9], 0.1);
        let plain: f64 = run.results().iter().sum();
        assert!((value - plain).abs() < 1e-9, "{value} against {plain}");
    }
}

#[test]
fn a_struct_accumulator_survives_a_killed_worker() {
    let n = 100_000;
    let mut out = vec![0; n as usize];
    Scatter.kernel(0..n, &mut out);
    let expected = Scatter.reduce_chunk(0..n, &out);
    let mut pool = pool(2);
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let options = JobOptions {
            chunk_size: Some(2_500),
            dispatch,
            faults: vec!["kill@5".parse().expect("a fault")],
            ..JobOptions::default()
        };
        let reduced = pool
            .reduce_with(&Scatter, n, &options)
            .unwrap_or_else(|e| panic!("{dispatch}: {e}"));
        assert_eq!(reduced.value, expected, "{dispatch}");
        assert!(
            reduced.stats.restarts >= 1,
            "{dispatch}: the worker was killed"
        );
        // Reduced to nothing: the identity.
        let empty = pool.reduce(&Scatter, 0).expect("n = 0");
        assert_eq!(empty.value, Scatter.identity());
    }
}

#[test]
fn an_accumulator_larger_than_its_slot_fails_the_job_and_says_why() {
    let mut pool = pool(1);
    let err = pool
        .reduce_with(
            &Hoarder,
            1_000,
            &options(Dispatch::Queue, Schedule::Dynamic, 100),
        )
        .expect_err("100 elements do not fit in 16 bytes");
    let text = err.to_string();
    assert!(
        matches!(err, Error::KernelPanicked { .. }) && text.contains("ACC_BYTES"),
        "{text}"
    );
    // The pool is ready for the next job, and 3 elements (13 bytes encoded) fit.
    let small = pool
        .reduce_with(&Hoarder, 9, &options(Dispatch::Queue, Schedule::Dynamic, 3))
        .expect("small chunks fit");
    assert_eq!(small.value, (0..9).collect::<Vec<u32>>());
}

#[test]
fn a_workload_registered_without_its_reduction_is_refused_up_front() {
    let mut pool = pool(1);
    let err = pool
        .reduce(&PlainOnly, 10)
        .expect_err("not registered to reduce");
    let text = err.to_string();
    assert!(text.contains("register_reduce"), "{text}");
    // Its kernel still runs.
    let run = pool.run(&PlainOnly, 10).expect("the kernel alone");
    assert_eq!(run.results(), &[1; 10]);
}

#[test]
fn the_lab_checks_the_reduction_against_one_process_in_every_mode() {
    for mode in [Mode::Processes, Mode::Threads, Mode::Single] {
        let mut options = RunOptions::new(2);
        options.mode = mode;
        options.pool.test_harness = true;
        options.pool.registry = registry();
        options.job.schedule = Schedule::Guided;
        let report = procpool::run_reduce(&Harmonic, 123_457, &options)
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(report.verified, Some(true), "{mode:?}");
        let (pool, single) = (report.reduction, report.baseline_reduction);
        assert!(
            pool.as_ref().is_some_and(|v| v.is_f64()),
            "{mode:?}: {pool:?}"
        );
        assert_eq!(pool, single, "{mode:?}");
    }
}

#[test]
fn chunks_as_they_finish_carry_their_accumulators() {
    let (n, size) = (50_000, 2_500);
    let expected = harmonic_in_chunks(n, size);
    let mut pool = pool(2);
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        for order in [
            procpool::ChunkOrder::Completion,
            procpool::ChunkOrder::Index,
        ] {
            let mut seen = Vec::new();
            let (stats, total) = pool
                .for_each_reduced_chunk(
                    &Harmonic,
                    n,
                    &options(dispatch, Schedule::Dynamic, size),
                    order,
                    |chunk| {
                        let sum: f64 = chunk.output.iter().sum();
                        assert_eq!(chunk.acc.to_bits(), sum.to_bits(), "{:?}", chunk.range);
                        seen.push(chunk.index);
                        std::ops::ControlFlow::Continue(())
                    },
                )
                .unwrap_or_else(|e| panic!("{dispatch}, {order:?}: {e}"));
            seen.sort_unstable();
            assert_eq!(seen, (0..n / size).collect::<Vec<_>>(), "each chunk once");
            assert_eq!(stats.chunks_delivered, n / size);
            let total = total.expect("the whole job ran");
            assert_eq!(total.to_bits(), expected.to_bits(), "{dispatch}, {order:?}");
        }
        // Stopped early: no total, and the pool runs the next job.
        let (stats, total) = pool
            .for_each_reduced_chunk(
                &Harmonic,
                n,
                &options(dispatch, Schedule::Dynamic, size),
                procpool::ChunkOrder::Index,
                |_| std::ops::ControlFlow::Break(()),
            )
            .expect("a job stopped early");
        assert!(stats.stopped_early && total.is_none(), "{dispatch}");
        let again = pool.reduce(&Harmonic, 10).expect("the next job");
        assert!((again.value - harmonic_in_chunks(10, 10)).abs() < 1e-12);
    }
}
