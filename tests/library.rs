//! The Rust API: `Pool`, `PoolBuilder` and `run`, with the real `procpool` binary as the
//! worker executable (this test binary does not call `procpool::init`).

mod common;

use std::time::{Duration, Instant};

use common::{TEARDOWN_DEADLINE, children_of_this_process, is_our_child, wait_until};
use procpool::workload::Squares;
use procpool::{Pool, RunOptions};

const EXE: &str = env!("CARGO_BIN_EXE_procpool");

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .worker_exe(EXE)
        .build()
        .expect("start a pool of procpool workers")
}

/// Job options with chunks of `chunk_size` and one injected `fault` (`"kill@3"`).
fn with_fault(chunk_size: u64, fault: &str) -> procpool::JobOptions {
    procpool::JobOptions {
        chunk_size: Some(chunk_size),
        faults: vec![fault.parse().expect("a fault")],
        ..Default::default()
    }
}

/// Asserts `results[i] == i * i` for every index, and the length.
fn assert_squares(results: &[u64], n: u64) {
    assert_eq!(results.len() as u64, n, "one result per element");
    if let Some(i) = (0..n).find(|&i| results[i as usize] != i.wrapping_mul(i)) {
        panic!(
            "n={n}: results[{i}] is {}, expected {}",
            results[i as usize],
            i.wrapping_mul(i)
        );
    }
}

/// Asserts every pid is neither running nor an unreaped zombie child of this process.
fn assert_reaped(pids: &[u32], what: &str) {
    let gone = wait_until(TEARDOWN_DEADLINE, || !pids.iter().any(|&p| is_our_child(p)));
    let left: Vec<u32> = pids.iter().copied().filter(|&p| is_our_child(p)).collect();
    for &pid in &left {
        common::kill(pid);
    }
    assert!(
        gone,
        "{what}: workers {left:?} are still our children (running or unreaped)"
    );
}

/// Asserts no child of this process named `comm` remains (zombies included).
fn assert_no_child_named(comm: &str, what: &str) {
    let named = || -> Vec<u32> {
        children_of_this_process()
            .into_iter()
            .filter(|(_, c)| c == comm)
            .map(|(pid, _)| pid)
            .collect()
    };
    let gone = wait_until(TEARDOWN_DEADLINE, || named().is_empty());
    let left = named();
    for &pid in &left {
        common::kill(pid);
    }
    assert!(gone, "{what}: children `{comm}` {left:?} remain");
}

#[test]
fn pool_results_are_the_square_of_each_index() {
    let mut pool = pool(3);
    assert_eq!(pool.workers(), 3);
    let n = 200_000;
    let run = pool.run(&Squares, n).expect("run squares");
    assert_squares(run.results(), n);
    let stats = run.stats();
    assert_eq!(stats.n, n);
    assert_eq!(stats.chunks, n.div_ceil(stats.chunk_size));
    assert_eq!(stats.shm_bytes, 8 * n);
}

#[test]
fn one_pool_runs_several_jobs_of_different_sizes_in_a_row() {
    let mut pool = pool(3);
    for n in [300_000, 1000, 0, 17, 1] {
        let run = pool.run(&Squares, n).expect("run squares");
        assert_squares(run.results(), n);
    }
}

#[test]
fn explicit_chunk_size_gives_the_same_results() {
    let mut pool = pool(2);
    let options = procpool::JobOptions {
        chunk_size: Some(7),
        ..Default::default()
    };
    let run = pool
        .run_with(&Squares, 1000, &options)
        .expect("run squares");
    assert_eq!(run.stats().chunk_size, 7);
    assert_eq!(run.stats().chunks, 143);
    assert_squares(run.results(), 1000);
}

#[test]
fn dropping_the_pool_stops_and_reaps_every_worker() {
    let mut pool = pool(3);
    let pids = pool.pids();
    assert_eq!(pids.len(), 3);
    for &pid in &pids {
        assert!(is_our_child(pid), "worker {pid} is running before the drop");
    }
    assert_squares(pool.run(&Squares, 1000).expect("run").results(), 1000);
    drop(pool);
    assert_reaped(&pids, "after drop");
}

#[test]
fn shutdown_stops_and_reaps_every_worker() {
    let pool = pool(2);
    let pids = pool.pids();
    pool.shutdown();
    assert_reaped(&pids, "after shutdown");
}

#[test]
fn chunk_killing_every_worker_is_an_error_naming_the_chunk_and_nothing_is_left() {
    let mut pool = pool(2);
    let pids = pool.pids();
    let options = with_fault(100, "kill@0:always");
    let err = match pool.run_with(&Squares, 10_000, &options) {
        Ok(_) => panic!("a worker killed at every attempt cannot finish the job"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert_eq!(err.chunk(), Some(0), "{message}");
    assert!(message.contains("failed 4 times"), "{message}");
    assert!(message.contains("killed by SIGKILL"), "{message}");
    assert_eq!(err.loss().map(|l| l.worker), err.worker());
    // The failed job stopped every worker; the next one starts a fresh set.
    let run = pool
        .run(&Squares, 1000)
        .expect("the pool runs the next job");
    assert_squares(run.results(), 1000);
    drop(run);
    let fresh = pool.pids();
    assert!(
        fresh.iter().all(|p| !pids.contains(p)),
        "fresh workers: {fresh:?}"
    );
    drop(pool);
    assert_reaped(&pids, "after a worker death");
    assert_reaped(&fresh, "after drop");
}

#[test]
fn a_worker_killed_between_jobs_is_replaced_and_blamed_for_nothing() {
    let mut pool = pool(2);
    let run = pool.run(&Squares, 1000).expect("a first job");
    drop(run);
    let pids = pool.pids();
    common::kill(pids[0]);
    std::thread::sleep(Duration::from_millis(100));
    let run = pool.run(&Squares, 10_000).expect("the next job");
    assert_squares(run.results(), 10_000);
    let stats = run.stats().clone();
    assert_eq!(
        stats.retried_chunks, 0,
        "no chunk was blamed: {:?}",
        stats.deaths
    );
    assert_eq!(stats.deaths.len(), 1, "{:?}", stats.deaths);
    let death = &stats.deaths[0];
    assert_eq!((death.pid, death.chunk), (pids[0], None));
    assert_eq!(death.cause, "killed by SIGKILL between jobs");
    drop(run);
    let now = pool.pids();
    drop(pool);
    assert_reaped(&pids, "the killed worker");
    assert_reaped(&now, "after drop");
}

#[test]
fn worker_death_during_a_job_is_survived_and_the_pool_stays_usable() {
    let mut pool = pool(2);
    let options = with_fault(100, "kill@3");
    let run = pool
        .run_with(&Squares, 10_000, &options)
        .expect("recovered");
    assert_eq!(run.stats().restarts, 1);
    assert!(
        run.results()
            .iter()
            .enumerate()
            .all(|(i, &x)| x == (i * i) as u64)
    );
    drop(run);
    let pids = pool.pids();
    let run = pool.run(&Squares, 5000).expect("the pool still works");
    assert_eq!(run.results()[4999], 4999 * 4999);
    drop(run);
    drop(pool);
    assert_reaped(&pids, "after drop");
}

/// Every event a pool reports, as text.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl procpool::Observer for Recorder {
    fn event(&self, event: &procpool::Event<'_>) {
        let line = match event {
            procpool::Event::JobStarted { n } => format!("started {n}"),
            procpool::Event::Progress { done, n } => format!("progress {done}/{n}"),
            procpool::Event::WorkerLost { worker, what, .. } => format!("lost {worker}: {what}"),
            procpool::Event::JobEnded { completed } => format!("ended {completed}"),
            other => format!("{other:?}"),
        };
        self.0.lock().expect("not poisoned").push(line);
    }
}

#[test]
fn an_observer_hears_the_start_the_progress_the_lost_worker_and_the_end() {
    let recorder = std::sync::Arc::new(Recorder::default());
    let mut pool = Pool::builder()
        .workers(2)
        .worker_exe(EXE)
        .observer(recorder.clone())
        .build()
        .expect("start a pool");
    let options = with_fault(100, "kill@3");
    let run = pool
        .run_with(&Squares, 10_000, &options)
        .expect("recovered");
    assert_eq!(run.stats().restarts, 1);
    drop(run);
    let pids = pool.pids();
    drop(pool);
    assert_reaped(&pids, "after drop");
    let events = recorder.0.lock().expect("not poisoned").clone();
    assert_eq!(events.first().map(String::as_str), Some("started 10000"));
    assert_eq!(events.last().map(String::as_str), Some("ended true"));
    let lost: Vec<&String> = events.iter().filter(|e| e.starts_with("lost ")).collect();
    assert_eq!(lost.len(), 1, "{events:?}");
    assert!(
        lost[0].contains("killed by SIGKILL while running chunk 3"),
        "{lost:?}"
    );
    let done: Vec<u64> = events
        .iter()
        .filter_map(|e| {
            e.strip_prefix("progress ")?
                .strip_suffix("/10000")?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        done.windows(2).all(|w| w[0] < w[1]),
        "progress only grows: {done:?}"
    );
    assert_eq!(done.last(), Some(&10_000), "{events:?}");
}

#[test]
fn the_longest_durations_a_caller_can_pass_run_a_job_and_stop_cleanly() {
    let supervision = procpool::Supervision {
        chunk_timeout: Some(Duration::MAX),
        grace: Duration::MAX,
        ..Default::default()
    };
    let mut pool = Pool::builder()
        .workers(2)
        .worker_exe(EXE)
        .handshake_timeout(Duration::MAX)
        .supervision(supervision)
        .build()
        .expect("a pool with Duration::MAX everywhere starts");
    let pids = pool.pids();
    let run = pool.run(&Squares, 1000).expect("and runs a job");
    assert_squares(run.results(), 1000);
    drop(run);
    pool.shutdown();
    assert_reaped(&pids, "Duration::MAX pool");
}

#[test]
fn a_zero_chunk_timeout_is_invalid_input() {
    let err = Pool::builder()
        .workers(1)
        .worker_exe(EXE)
        .chunk_timeout(Duration::ZERO)
        .build()
        .expect_err("a zero chunk timeout is refused");
    assert!(err.is_invalid_input(), "{err}");
    assert_eq!(err.option(), Some("chunk_timeout"));
    assert!(err.to_string().starts_with("`chunk_timeout` 0s"), "{err}");
}

#[test]
fn a_fault_beyond_the_last_chunk_is_invalid_input_and_the_pool_stays_usable() {
    let mut pool = pool(2);
    let options = procpool::JobOptions {
        chunk_size: Some(10),
        faults: vec!["kill@10".parse().unwrap()],
        ..Default::default()
    };
    let err = pool
        .run_with(&Squares, 100, &options)
        .err()
        .expect("kill@10 of 10 chunks is refused");
    assert!(err.is_invalid_input(), "{err}");
    assert!(err.to_string().contains("only 10 chunks"), "{err}");
    let run = pool.run(&Squares, 100).expect("the pool still runs jobs");
    assert_squares(run.results(), 100);
}

#[test]
fn zero_workers_is_invalid_input() {
    let err = Pool::builder()
        .workers(0)
        .worker_exe(EXE)
        .build()
        .expect_err("zero workers");
    assert!(err.is_invalid_input(), "{err}");
    // The library names its own option, not a flag of the command line.
    assert_eq!(err.option(), Some("workers"));
    assert_eq!(err.to_string(), "`workers` must be at least 1 (got 0)");
    let mut options = RunOptions::new(0);
    options.pool.worker_exe = Some(EXE.into());
    let err = procpool::run(&Squares, 10, &options).expect_err("zero workers");
    assert!(err.is_invalid_input(), "{err}");
}

#[test]
fn missing_worker_executable_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-procpool");
    let err = Pool::builder()
        .workers(2)
        .worker_exe(&missing)
        .build()
        .expect_err("the executable does not exist");
    let message = err.to_string();
    assert!(
        message.contains(&*missing.to_string_lossy()),
        "names the path: {message}"
    );
    assert!(!err.is_invalid_input(), "{message}");
}

#[test]
fn worker_that_exits_at_once_is_an_error_with_its_exit_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = common::write_script(dir.path(), "ppexit7", "#!/bin/sh\nexit 7\n");
    let err = Pool::builder()
        .workers(2)
        .worker_exe(&script)
        .build()
        .expect_err("the worker exits before connecting");
    let message = err.to_string();
    assert!(message.contains("exited with status 7"), "{message}");
    assert!(err.worker().is_some(), "{message}");
    assert_no_child_named("ppexit7", "after a worker exited at once");
}

#[test]
fn worker_that_never_connects_times_out_and_is_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = common::write_script(dir.path(), "ppsleep", "#!/bin/sh\nexec sleep 30\n");
    let began = Instant::now();
    let result = Pool::builder()
        .workers(2)
        .worker_exe(&script)
        .handshake_timeout(Duration::from_millis(500))
        .build();
    let took = began.elapsed();
    let err = result.expect_err("the worker never connects");
    let message = err.to_string();
    assert!(message.contains("did not connect"), "{message}");
    assert!(
        took < Duration::from_secs(10),
        "a 500 ms handshake deadline returned after {took:?}"
    );
    if let procpool::Error::HandshakeTimeout { pid, .. } = err {
        assert_reaped(&[pid], "the worker that timed out");
    }
    // Only this test starts `sleep`; `exec` gave the worker that name.
    assert_no_child_named("sleep", "after the handshake timeout");
    assert_no_child_named("ppsleep", "after the handshake timeout");
}

#[test]
fn run_returns_a_verified_report() {
    let mut options = RunOptions::new(2);
    options.pool.worker_exe = Some(EXE.into());
    let n = 100_000;
    let report = procpool::run(&Squares, n, &options).expect("run");
    assert_eq!(report.verified, Some(true), "{report:?}");
    assert_eq!(report.mismatch, None);
    assert_eq!(report.n, n);
    assert_eq!(report.workers, 2);
    assert_eq!(report.checksum, common::squares_checksum(n));
    assert_eq!(report.per_worker.len(), 2);
    assert_reaped(
        &report.per_worker.iter().map(|w| w.pid).collect::<Vec<_>>(),
        "after run",
    );
}

#[test]
fn run_without_baseline_reports_no_verification() {
    let mut options = RunOptions::new(2);
    options.pool.worker_exe = Some(EXE.into());
    options.baseline = false;
    let report = procpool::run(&Squares, 1000, &options).expect("run");
    assert_eq!(report.verified, None);
    assert_eq!(report.speedup, None);
    assert_eq!(report.baseline_wall_s, None);
    assert_eq!(report.checksum, common::squares_checksum(1000));
}

#[test]
fn a_pool_built_on_a_thread_that_ends_keeps_its_workers() {
    // Linux sends the death signal when the thread that started a worker ends; the pool
    // starts its workers from a thread of its own, so they outlive the thread that built it.
    let mut pool = std::thread::spawn(|| pool(2))
        .join()
        .expect("the building thread ends");
    let pids = pool.pids();
    std::thread::sleep(Duration::from_millis(100));
    let run = pool
        .run(&Squares, 10_000)
        .expect("the workers are still there");
    assert_squares(run.results(), 10_000);
    assert_eq!(run.stats().restarts, 0, "{:?}", run.stats().deaths);
    drop(run);
    assert_eq!(pool.pids(), pids, "the same workers");
    drop(pool);
    assert_reaped(&pids, "after drop");
}

#[test]
fn a_panicking_kernel_is_an_error_and_the_same_pool_runs_the_next_job() {
    let mut pool = pool(2);
    let options = with_fault(100, "panic@3");
    let err = pool
        .run_with(&Squares, 1000, &options)
        .err()
        .expect("a panic fails the job");
    match &err {
        procpool::Error::KernelPanicked {
            chunk,
            start,
            end,
            message,
            location,
            ..
        } => {
            assert_eq!((*chunk, *start, *end), (3, 300, 400));
            assert_eq!(message, "injected panic at chunk 3");
            assert!(
                location.as_deref().is_some_and(|l| l.contains("fault.rs")),
                "{err}"
            );
        }
        other => panic!("expected KernelPanicked, got {other}"),
    }
    let run = pool
        .run(&Squares, 5000)
        .expect("the pool runs the next job");
    assert_squares(run.results(), 5000);
    drop(run);
    let pids = pool.pids();
    drop(pool);
    assert_reaped(&pids, "after drop");
}

#[test]
fn workers_started_in_the_background_join_the_first_job_on_both_dispatches() {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    for dispatch in [procpool::Dispatch::Queue, procpool::Dispatch::Channel] {
        let workers = cpus + 3;
        let mut pool = Pool::builder()
            .workers(workers)
            .worker_exe(EXE)
            .start_in_background(true)
            .build()
            .expect("pool");
        let pids = pool.pids();
        assert_eq!(pids.iter().filter(|&&p| p == 0).count(), 3, "{pids:?}");
        // Long enough for the last three to start and connect: 400 waits of 1 ms.
        let options = procpool::JobOptions {
            chunk_size: Some(1),
            dispatch,
            ..Default::default()
        };
        let run = pool
            .run_with(&procpool::workload::Sleep { ms: 1.0 }, 400, &options)
            .expect("run");
        let waited: Vec<u64> = run.results().to_vec();
        assert_eq!(waited, (0..400).collect::<Vec<u64>>(), "{dispatch}");
        drop(run);
        let pids = pool.pids();
        assert!(pids.iter().all(|&p| p != 0), "{dispatch}: {pids:?}");
        let run = pool.run(&Squares, 1000).expect("a second job");
        assert_squares(run.results(), 1000);
    }
}

#[test]
fn a_pool_with_a_chunk_limit_recycles_its_workers_between_chunks_and_jobs() {
    for dispatch in [procpool::Dispatch::Queue, procpool::Dispatch::Channel] {
        let mut pool = Pool::builder()
            .workers(2)
            .worker_exe(EXE)
            .max_chunks_per_worker(3)
            .build()
            .expect("pool");
        let before = pool.pids();
        let options = procpool::JobOptions {
            chunk_size: Some(100),
            dispatch,
            ..Default::default()
        };
        for _ in 0..2 {
            let run = pool.run_with(&Squares, 5000, &options).expect("run");
            assert_squares(run.results(), 5000);
            let stats = run.stats();
            assert!(stats.recycles >= 10, "{dispatch}: {stats:?}");
            assert_eq!(stats.restarts, 0, "{dispatch}");
            assert!(stats.deaths.is_empty(), "{dispatch}");
        }
        let after = pool.pids();
        assert!(
            after.iter().all(|p| !before.contains(p)),
            "{before:?} → {after:?}"
        );
    }
}

#[test]
fn compare_modes_refuses_what_threads_cannot_take_before_any_run() {
    for (what, options) in [
        (
            "faults",
            RunOptions {
                job: with_fault(10, "kill@1"),
                ..RunOptions::default()
            },
        ),
        ("transport", {
            let mut options = RunOptions::default();
            options.job.transport = procpool::Transport::Channel;
            options.job.dispatch = procpool::Dispatch::Channel;
            options
        }),
    ] {
        let mut runs = 0;
        let e = procpool::lab::compare::compare_modes(&Squares, 100, &options, 1, |_| runs += 1)
            .expect_err(what);
        assert!(
            e.is_invalid_input() && e.option() == Some(what),
            "{what}: {e}"
        );
        assert_eq!(runs, 0, "{what}: refused after a run");
        assert!(e.to_string().contains("compare-modes"), "{e}");
    }
}
