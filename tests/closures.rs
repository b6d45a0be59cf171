//! Kernels as closures across real worker processes: every form (a map over a range, over
//! chunks, over items, a fold, a fallible map) under the fork server and spawn, on the
//! shared-memory queue and the channels, checked against the same closure run here; a
//! closure's error reaching the caller while the same workers serve on; items shared, not
//! sent; workers of another build refused; and the lab measuring a closure.
//!
//! Workers run this test binary through `enable_test_support!` (no workload of our own:
//! closures need no registry). `StartMethod::Fork` needs a single-threaded process, which
//! a test never is: `examples/closures.rs` runs a forked pool.

mod common;

use std::ops::Range;

use procpool::workload::Squares;
use procpool::{
    Closure, Dispatch, Error, Fold, JobOptions, Pool, Registry, RunOptions, StartMethod, Workload,
};

procpool::enable_test_support!(Registry::builtin());

/// A pool of `workers` started by `start`, in this test binary.
fn pool(workers: usize, start: StartMethod) -> Pool {
    let pool = Pool::builder()
        .workers(workers)
        .start(start)
        .test_harness()
        .build()
        .expect("start a pool");
    assert_eq!(pool.start_method(), start, "started as asked");
    pool
}

/// Job options for `dispatch`, with chunks short enough that every worker gets several.
fn on(dispatch: Dispatch) -> JobOptions {
    JobOptions {
        dispatch,
        chunk_size: Some(97),
        ..JobOptions::default()
    }
}

/// `job`'s kernel run here, in one process, on `0..n`.
fn here<W: Workload>(job: &W, n: u64) -> Vec<W::Output> {
    let mut out = vec![bytemuck_zeroed::<W::Output>(); n as usize];
    job.kernel(0..n, &mut out);
    out
}

fn bytemuck_zeroed<T: procpool::bytemuck::Zeroable>() -> T {
    T::zeroed()
}

/// A kernel worth checking: a float from the index and the parameters, with a branch.
fn wave(p: &(f64, u64), i: u64) -> f64 {
    let x = i as f64 * p.0;
    if i.is_multiple_of(p.1) {
        -x
    } else {
        x.sin() * x
    }
}

#[test]
fn every_closure_form_matches_one_process_on_both_paths_under_each_start_method() {
    let n = 1000;
    let params = (0.25_f64, 7_u64);
    let items: Vec<[u32; 2]> = (0..n as u32)
        .map(|i| [i, i.wrapping_mul(2_654_435_761)])
        .collect();
    let map = Closure::map(params, wave); // a function item works as a closure
    let chunks = Closure::chunks(
        params,
        |p: &(f64, u64), range: Range<u64>, out: &mut [f64]| {
            for (slot, i) in out.iter_mut().zip(range) {
                *slot = wave(p, i) * 2.0;
            }
        },
    );
    let by_item = Closure::items(&items, 3u32, |k, item: &[u32; 2]| {
        item[0] ^ item[1].rotate_left(*k)
    })
    .expect("share the items");
    let fallible = Closure::try_map(10u64, |k, i| i.checked_mul(*k).ok_or("overflow"));
    let fold = Fold::new(
        params,
        (0.0_f64, 0_u64),
        |p, (sum, count), i| (sum + wave(p, i), count + 1),
        |a, b| (a.0 + b.0, a.1 + b.1),
    );
    let fold_chunks = Fold::chunks(
        5u64,
        0u64,
        |k, acc, range: Range<u64>| acc + range.map(|i| i % k).sum::<u64>(),
        |a, b| a + b,
    );

    for start in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut pool = pool(2, start);
        for dispatch in [Dispatch::Queue, Dispatch::Channel] {
            let options = on(dispatch);
            let what = format!("{start:?} on {dispatch:?}");
            let bits = |xs: &[f64]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let run = pool.run_with(&map, n, &options).expect(&what);
            assert_eq!(bits(&run), bits(&here(&map, n)), "map, {what}");
            drop(run);
            let run = pool.run_with(&chunks, n, &options).expect(&what);
            assert_eq!(bits(&run), bits(&here(&chunks, n)), "chunks, {what}");
            drop(run);
            let run = pool.run_with(&by_item, n, &options).expect(&what);
            assert_eq!(run.to_vec(), here(&by_item, n), "items, {what}");
            assert_eq!(run[5], 5 ^ 5u32.wrapping_mul(2_654_435_761).rotate_left(3));
            drop(run);
            let run = pool.run_with(&fallible, n, &options).expect(&what);
            assert_eq!(
                run.to_vec(),
                (0..n).map(|i| i * 10).collect::<Vec<_>>(),
                "try_map, {what}"
            );
            drop(run);
            // The fold, in chunk order: bit for bit what the same chunks give here.
            let reduced = pool.reduce_with(&fold, n, &options).expect(&what).value;
            let chunked = (0..n).step_by(97).map(|s| {
                (s..(s + 97).min(n)).fold((0.0, 0), |(sum, count), i| {
                    (sum + wave(&params, i), count + 1)
                })
            });
            let expected = chunked.fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            assert_eq!(
                (reduced.0.to_bits(), reduced.1),
                (expected.0.to_bits(), expected.1),
                "fold, {what}"
            );
            let reduced = pool
                .reduce_with(&fold_chunks, n, &options)
                .expect(&what)
                .value;
            assert_eq!(
                reduced,
                (0..n).map(|i| i % 5).sum::<u64>(),
                "fold chunks, {what}"
            );
        }
        // The one-call forms.
        let squares = pool
            .map_range(n, &1u64, |one, i| i * i + one)
            .expect("map_range");
        assert_eq!(squares[30], 901);
        drop(squares);
        let filled = pool
            .map_chunks(n, &(), |_, range: Range<u64>, out: &mut [u32]| {
                for (slot, i) in out.iter_mut().zip(range) {
                    *slot = i as u32 * 3;
                }
            })
            .expect("map_chunks");
        assert_eq!(filled[333], 999);
        drop(filled);
        let lengths = pool
            .map_items(&items, &(), |_, item: &[u32; 2]| item[0].count_ones() as u8)
            .expect("map_items");
        assert_eq!(lengths[7], 3);
        drop(lengths);
        let total = pool
            .fold_range(n, &(), 0u64, |_, acc, i| acc + i, |a, b| a + b)
            .expect("fold_range");
        assert_eq!(total, n * (n - 1) / 2);
        let owned = pool
            .try_map_range(4, &(), |_, i| Ok::<_, String>(i as i16 - 2))
            .expect("try_map_range")
            .to_vec();
        assert_eq!(owned, [-2, -1, 0, 1]);
        assert_eq!(pool.stats_restarts(), 0);
    }
}

/// A worker's restarts so far, through a tiny job's stats.
trait Restarts {
    fn stats_restarts(&mut self) -> u64;
}

impl Restarts for Pool {
    fn stats_restarts(&mut self) -> u64 {
        self.run(&Squares, 4).expect("a tiny job").stats().restarts
    }
}

#[test]
fn a_closures_error_fails_the_job_naming_chunk_range_and_worker_and_the_workers_stay() {
    for start in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut pool = pool(2, start);
        let pids = pool.pids();
        for dispatch in [Dispatch::Queue, Dispatch::Channel] {
            let job = Closure::try_map(600u64, |limit, i| {
                if i < *limit {
                    Ok(i as f32)
                } else {
                    Err(format!("{i} is past the limit {limit}"))
                }
            });
            let error = match pool.run_with(&job, 1000, &on(dispatch)) {
                Err(error) => error,
                Ok(run) => panic!("expected an error, got {} results", run.len()),
            };
            let text = error.to_string();
            let Error::KernelFailed {
                chunk,
                start,
                end,
                worker,
                pid,
                ref message,
            } = error
            else {
                panic!("expected KernelFailed, got {error:?}");
            };
            // The first index past the limit lies in the chunk named (chunks of 97).
            assert!((start..end).contains(&600) || start >= 600, "{text}");
            assert_eq!(start, chunk * 97, "{text}");
            assert!(worker < 2 && pids.contains(&pid), "{text}");
            assert!(message.contains("is past the limit 600"), "{text}");
            assert!(text.starts_with("the kernel failed on chunk"), "{text}");
            assert!(!text.contains("panicked"), "an error, not a panic: {text}");
            // The same processes run the next job.
            let run = pool
                .run_with(&job, 600, &on(dispatch))
                .expect("the next job");
            assert_eq!(run[599], 599.0);
            drop(run);
            assert_eq!(
                pool.pids(),
                pids,
                "{start:?}, {dispatch:?}: the workers stayed"
            );
        }
    }
}

#[test]
fn items_are_shared_once_not_sent_with_the_chunks() {
    let mut pool = pool(2, StartMethod::ForkServer);
    // 4 MiB of items in 1024 chunks.
    let items: Vec<u64> = (0..1u64 << 19)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let job = Closure::items(&items, (), |_, x: &u64| x.count_ones() as u16).expect("share");
    let options = JobOptions {
        chunk_size: Some(512),
        ..JobOptions::default()
    };
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let run = pool
            .run_with(
                &job,
                items.len() as u64,
                &JobOptions {
                    dispatch,
                    ..options.clone()
                },
            )
            .expect("run");
        assert_eq!(run.to_vec(), here(&job, items.len() as u64));
        let stats = run.stats();
        assert_eq!(
            stats.input_bytes,
            4 << 20,
            "{dispatch:?}: the items are the job's input"
        );
        // The channels carry a message per chunk (ranges, a few dozen bytes each), never
        // items: 1024 chunks × 8 bytes of items would be 4 MiB.
        let limit = if dispatch == Dispatch::Queue {
            16 << 10
        } else {
            256 << 10
        };
        assert!(
            stats.ipc_bytes < limit,
            "{dispatch:?}: {} bytes of IPC",
            stats.ipc_bytes
        );
    }
}

#[test]
fn a_closure_is_refused_by_workers_of_another_build_in_one_line() {
    // The `procpool` command is another binary: its workers cannot have this closure.
    let mut pool = Pool::builder()
        .workers(1)
        .worker_exe(env!("CARGO_BIN_EXE_procpool"))
        .build()
        .expect("start a pool of procpool workers");
    let error = match pool.map_range(10, &(), |_, i| i) {
        Err(error) => error,
        Ok(run) => panic!("ran in another build: {:?}", &run[..]),
    };
    let text = error.to_string();
    assert!(error.is_invalid_input(), "{error:?}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("a closure runs only in workers of the same build"),
        "{text}"
    );
    assert!(text.contains("build-id "), "names both builds: {text}");
    assert!(text.contains("worker_exe"), "says what to change: {text}");
    // Refused before any worker saw it: the same worker runs a registered workload.
    let pids = pool.pids();
    assert_eq!(pool.run(&Squares, 10).expect("squares")[3], 9);
    assert_eq!(pool.pids(), pids);
}

#[test]
fn the_lab_measures_and_verifies_a_closure() {
    let mut options = RunOptions::new(2);
    options.pool.test_harness = true;
    let job = Closure::map(3u64, |k, i| i.wrapping_mul(*k) ^ (i >> 3));
    let report = procpool::run(&job, 100_000, &options).expect("a measured run");
    assert_eq!(report.verified, Some(true));
    assert!(report.speedup.is_some());
    let fold = Fold::new(
        (),
        0u64,
        |_, acc, i| acc.wrapping_add(i * i),
        |a, b| a.wrapping_add(b),
    );
    let report = procpool::run_reduce(&fold, 100_000, &options).expect("a measured reduction");
    assert_eq!(report.verified, Some(true));
}

#[test]
fn a_fallible_closure_run_here_panics_with_its_error_and_items_past_the_end_are_named() {
    // In the caller's own process (the lab's single-process run), an error is a panic
    // with the error's text, as any kernel's failure, never a silent unwinding.
    let job = Closure::try_map((), |_, i| if i < 3 { Ok(i) } else { Err("three") });
    let caught = std::panic::catch_unwind(|| here(&job, 5)).expect_err("the error panics");
    let text = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert_eq!(text, "at index 3: three");
    // A job over items run on more elements than there are items.
    let mut pool = pool(1, StartMethod::ForkServer);
    let job = Closure::items(&[1u32, 2, 3], (), |_, x: &u32| x * 2).expect("share");
    match pool.run(&job, 4) {
        Err(Error::KernelPanicked { message, .. }) => {
            assert!(
                message.contains("a job over 3 items has no item 3"),
                "{message}"
            );
        }
        Err(other) => panic!("expected a panic report, got {other:?}"),
        Ok(run) => panic!("ran past the items: {:?}", &run[..]),
    }
    assert_eq!(pool.run(&job, 3).expect("the same pool")[2], 6);
}

/// Closure jobs back to back, every form on both paths, while another thread SIGKILLs a
/// random worker every 20 ms: replacements (forked by the server, or spawned) find the
/// closures as the first workers did, and every job verifies.
#[test]
fn closure_jobs_verify_while_workers_are_killed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    for start in [StartMethod::ForkServer, StartMethod::Spawn] {
        let mut pool = Pool::builder()
            .workers(3)
            .start(start)
            .test_harness()
            .supervision(procpool::Supervision {
                retries: 1000,
                max_restarts: Some(100_000),
                ..procpool::Supervision::default()
            })
            .build()
            .expect("a pool");
        let pids = Arc::new(Mutex::new(pool.pids()));
        let done = Arc::new(AtomicBool::new(false));
        let killer = {
            let (pids, done) = (Arc::clone(&pids), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut kills = 0u64;
                let mut turn = 0usize;
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    let current = pids.lock().unwrap().clone();
                    turn = turn.wrapping_mul(31).wrapping_add(7);
                    let pid = current[turn % current.len()];
                    // Only a worker of ours: a pid the system gave to another process
                    // since is left alone.
                    if common::is_our_child(pid) {
                        common::kill(pid);
                        kills += 1;
                    }
                }
                kills
            })
        };
        let items: Vec<u64> = (0..20_000).collect();
        let by_item = Closure::items(&items, 3u64, |k, x: &u64| x * k).expect("share");
        let map = Closure::map(7u64, |k, i| i.wrapping_mul(*k) ^ (i >> 2));
        let fold = Fold::new(
            (),
            0u64,
            |_, acc, i| acc.wrapping_add(i * i),
            u64::wrapping_add,
        );
        let expected_map = here(&map, 20_000);
        let expected_sum = (0..20_000u64).fold(0u64, |acc, i| acc.wrapping_add(i * i));
        let began = Instant::now();
        let mut jobs = 0;
        while began.elapsed() < Duration::from_millis(1500) || jobs < 6 {
            let dispatch = [Dispatch::Queue, Dispatch::Channel][jobs % 2];
            let options = JobOptions {
                dispatch,
                chunk_size: Some(500),
                ..JobOptions::default()
            };
            let what = format!("{start:?}, {dispatch:?}, job {jobs}");
            match jobs % 3 {
                0 => {
                    let run = pool.run_with(&map, 20_000, &options).expect(&what);
                    assert!(run[..] == expected_map[..], "{what}");
                }
                1 => {
                    let run = pool.run_with(&by_item, 20_000, &options).expect(&what);
                    assert!(
                        run.iter().enumerate().all(|(i, &x)| x == 3 * i as u64),
                        "{what}"
                    );
                }
                _ => {
                    let sum = pool
                        .reduce_with(&fold, 20_000, &options)
                        .expect(&what)
                        .value;
                    assert_eq!(sum, expected_sum, "{what}");
                }
            }
            *pids.lock().unwrap() = pool.pids();
            jobs += 1;
        }
        done.store(true, Ordering::Relaxed);
        let kills = killer.join().expect("the killer thread");
        assert!(kills > 0, "{start:?}: no worker was killed in {jobs} jobs");
        drop(pool);
    }
}
