//! A job stopped early costs the job, not the workers: a cancel from another thread, a
//! deadline, a kernel panic. After each, the next job runs on the same worker processes
//! (same pids, no `setup` again) and its results are right, on both dispatch paths; the
//! command's `--deadline` fails the run in one line and leaves nothing behind. Real worker
//! processes started through this test binary.

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{EXIT_FAILED, EXIT_USAGE, Sandbox, setups, within};
use procpool::{Cancel, Dispatch, Error, JobOptions, Pool, Registry, Workload};
use serde::{Deserialize, Serialize};

/// `i * 3 + 1` for each index. While the file `slow` exists each chunk first sleeps
/// `sleep_us`; while `panic` exists the chunk holding index [`PANIC_AT`] panics. Its set-up
/// appends the process id to `log`, so that a test can count set-ups. (The files, not the
/// value, change its behaviour: a new value is a new job spec, which every worker sets up
/// again; the same value is not.)
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Counted {
    sleep_us: u64,
    log: PathBuf,
    slow: PathBuf,
    panic: PathBuf,
}

const PANIC_AT: u64 = 300;

impl Counted {
    fn in_dir(dir: &Path, sleep_us: u64) -> Self {
        Counted {
            sleep_us,
            log: dir.join("setups"),
            slow: dir.join("slow"),
            panic: dir.join("panic"),
        }
    }
}

impl Workload for Counted {
    const NAME: &'static str = "counted";
    type Output = u64;

    fn setup(&mut self) {
        common::log_setup(&self.log);
    }

    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        if self.slow.exists() {
            std::thread::sleep(Duration::from_micros(self.sleep_us));
        }
        if range.contains(&PANIC_AT) && self.panic.exists() {
            panic!("the panic file is there");
        }
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = value(i);
        }
    }
}

fn value(i: u64) -> u64 {
    i.wrapping_mul(3).wrapping_add(1)
}

procpool::enable_test_support!(Registry::builtin().register::<Counted>());

/// Two workers through this test binary; `inflight` chunk messages per worker on the
/// channels (so that a stopped job leaves chunks queued in their sockets).
fn pool(inflight: usize) -> Pool {
    Pool::builder()
        .workers(2)
        .inflight(inflight)
        .test_harness()
        .build()
        .expect("two workers through this test binary")
}

fn sorted(mut pids: Vec<u32>) -> Vec<u32> {
    pids.sort_unstable();
    pids
}

const N: u64 = 20_000;

/// Runs a job of one workload value on `pool`, then, with the file `flag` of the value
/// there, a job with `stopped` options that must fail as `expect` says (`before_stop` runs
/// right before it), then the same job again without the file: it must run on the same
/// processes, set up nothing again, and give the kernel's values.
fn stopped_then_same_workers(
    dispatch: Dispatch,
    inflight: usize,
    flag: fn(&Counted) -> &Path,
    stopped: JobOptions,
    before_stop: impl FnOnce() + Send + 'static,
    expect: fn(&Error) -> bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let workload = Counted::in_dir(dir.path(), 2_000);
    let plain = JobOptions {
        dispatch,
        chunk_size: Some(10),
        ..JobOptions::default()
    };
    let stopped = JobOptions {
        dispatch,
        chunk_size: Some(10),
        ..stopped
    };
    let (pool, ()) = within(pool(inflight), move |pool| {
        let pids = sorted(pool.pids());
        let check = |run: &procpool::PoolRun<'_, u64>, what: &str| {
            assert!(
                (0..N).all(|i| run.results()[i as usize] == value(i)),
                "{dispatch}: {what}: the results"
            );
        };
        let run = pool.run_with(&workload, N, &plain).expect("the first job");
        check(&run, "the first job");
        drop(run);
        let set_up = sorted(setups(&workload.log));
        assert_eq!(set_up, pids, "{dispatch}: one set-up per worker");

        std::fs::write(flag(&workload), b"").unwrap();
        before_stop();
        let began = Instant::now();
        let err = pool
            .run_with(&workload, N, &stopped)
            .err()
            .expect("the job is stopped");
        let took = began.elapsed();
        std::fs::remove_file(flag(&workload)).unwrap();
        assert!(expect(&err), "{dispatch}: {err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        // 2000 chunks of 2 ms each on two workers would take 2 s at the very least.
        assert!(took < Duration::from_secs(2), "{dispatch}: took {took:?}");

        for next in ["the next job", "the job after"] {
            let run = pool.run_with(&workload, N, &plain).expect(next);
            check(&run, next);
            let deaths = run.stats().deaths.clone();
            drop(run);
            assert_eq!(
                deaths,
                Vec::new(),
                "{dispatch}: {next}: nobody was replaced"
            );
            assert_eq!(
                sorted(pool.pids()),
                pids,
                "{dispatch}: {next}: same processes"
            );
            assert_eq!(
                sorted(setups(&workload.log)),
                pids,
                "{dispatch}: {next}: a set-up ran again"
            );
        }
    });
    drop(pool);
}

/// `--dispatch` as the library names it.
fn dispatch_of(name: &str) -> Dispatch {
    match name {
        "channel" => Dispatch::Channel,
        _ => Dispatch::Queue,
    }
}

/// A cancel from another thread mid-job. Eight chunk messages are queued per worker on the
/// channels: those of the stopped job must not run, nor reach the next job.
fn cancel_from_another_thread_keeps_the_workers(dispatch: &'static str) {
    let cancel = Cancel::new();
    let from_there = cancel.clone();
    stopped_then_same_workers(
        dispatch_of(dispatch),
        8,
        |w| &w.slow,
        JobOptions {
            cancel: Some(cancel),
            ..JobOptions::default()
        },
        move || {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                from_there.cancel();
            });
        },
        |e| matches!(e, Error::Cancelled { chunks_done, n: N, .. } if *chunks_done < 2000),
    );
}

fn deadline_keeps_the_workers(dispatch: &'static str) {
    stopped_then_same_workers(
        dispatch_of(dispatch),
        4,
        |w| &w.slow,
        JobOptions {
            deadline: Some(Duration::from_millis(150)),
            ..JobOptions::default()
        },
        || {},
        |e| {
            matches!(e, Error::DeadlineExceeded { deadline, .. } if *deadline == Duration::from_millis(150))
                && e.to_string().contains("deadline of 150ms")
        },
    );
}

fn kernel_panic_keeps_the_workers(dispatch: &'static str) {
    stopped_then_same_workers(
        dispatch_of(dispatch),
        4,
        |w| &w.panic,
        JobOptions::default(),
        || {},
        |e| matches!(e, Error::KernelPanicked { start, end, .. } if (*start..*end).contains(&PANIC_AT)),
    );
}

on_both_dispatches!(
    cancel_from_another_thread_keeps_the_workers,
    deadline_keeps_the_workers,
    kernel_panic_keeps_the_workers,
);

/// A cancel returns while a long chunk still runs; the next job waits for that chunk (it
/// ends well within the grace period) and runs on the same processes.
#[test]
fn a_cancel_returns_before_a_long_chunk_ends_and_the_next_job_waits_for_it() {
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let dir = tempfile::tempdir().unwrap();
        let long = Counted::in_dir(dir.path(), 300_000);
        std::fs::write(&long.slow, b"").unwrap();
        let (pool, ()) = within(pool(1), move |pool| {
            let pids = sorted(pool.pids());
            let cancel = Cancel::new();
            let options = JobOptions {
                dispatch,
                chunk_size: Some(10),
                cancel: Some(cancel.clone()),
                ..JobOptions::default()
            };
            let stopper = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                cancel.cancel();
                Instant::now()
            });
            let err = pool
                .run_with(&long, 100, &options)
                .err()
                .expect("cancelled");
            let returned = Instant::now();
            let cancelled = stopper.join().unwrap();
            assert!(matches!(err, Error::Cancelled { .. }), "{dispatch}: {err}");
            // The running chunks still had most of their 300 ms to go.
            assert!(
                returned.duration_since(cancelled) < Duration::from_millis(250),
                "{dispatch}: returned {:?} after the cancel",
                returned.duration_since(cancelled)
            );
            let plain = JobOptions {
                dispatch,
                chunk_size: Some(10),
                ..JobOptions::default()
            };
            std::fs::remove_file(&long.slow).unwrap();
            let run = pool.run_with(&long, 100, &plain).expect("the next job");
            assert!((0..100).all(|i| run.results()[i as usize] == value(i)));
            let deaths = run.stats().deaths.clone();
            drop(run);
            assert_eq!(deaths, Vec::new(), "{dispatch}: nobody was killed");
            assert_eq!(
                sorted(pool.pids()),
                pids,
                "{dispatch}: same worker processes"
            );
        });
        drop(pool);
    }
}

/// A cancelled token stops a job before it starts; a zero deadline is refused.
#[test]
fn a_cancelled_token_or_a_zero_deadline_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = Counted::in_dir(dir.path(), 0);
    let (pool, ()) = within(pool(1), move |pool| {
        let pids = sorted(pool.pids());
        let cancel = Cancel::new();
        cancel.cancel();
        let options = JobOptions {
            cancel: Some(cancel),
            ..JobOptions::default()
        };
        let err = pool.run_with(&w, 1000, &options).err().expect("cancelled");
        assert!(
            matches!(err, Error::Cancelled { chunks_done: 0, .. }),
            "{err}"
        );
        let zero = JobOptions {
            deadline: Some(Duration::ZERO),
            ..JobOptions::default()
        };
        let err = pool.run_with(&w, 1000, &zero).err().expect("refused");
        assert!(
            err.is_invalid_input() && err.option() == Some("deadline"),
            "{err}"
        );
        assert!(setups(&w.log).is_empty(), "no worker saw either job");
        pool.run_with(&w, 1000, &JobOptions::default())
            .expect("runs");
        assert_eq!(sorted(pool.pids()), pids);
    });
    drop(pool);
}

/// `Interrupt::request` from another thread stops the job like a signal (every worker
/// stopped); `Interrupt::clear` lets the pool run again, on a fresh set.
#[test]
fn a_cleared_interrupt_request_no_longer_fails_later_jobs() {
    let interrupt = procpool::Interrupt::new();
    let pool = Pool::builder()
        .workers(2)
        .test_harness()
        .interrupt(interrupt.clone())
        .build()
        .expect("two workers");
    let dir = tempfile::tempdir().unwrap();
    let slow = Counted::in_dir(dir.path(), 2_000);
    std::fs::write(&slow.slow, b"").unwrap();
    let (pool, ()) = within(pool, move |pool| {
        let options = JobOptions {
            chunk_size: Some(10),
            ..JobOptions::default()
        };
        let from_there = interrupt.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            from_there.request(15);
        });
        let err = pool
            .run_with(&slow, 20_000, &options)
            .err()
            .expect("stopped");
        assert_eq!(err.interrupted_by(), Some(15), "{err}");
        let err = pool.run(&slow, 10).err().expect("still requested");
        assert_eq!(err.interrupted_by(), Some(15), "{err}");
        interrupt.clear();
        std::fs::remove_file(&slow.slow).unwrap();
        let run = pool.run(&slow, 1000).expect("runs once cleared");
        assert!((0..1000).all(|i| run.results()[i as usize] == value(i)));
    });
    drop(pool);
}

/// `--deadline`: a run stopped by it exits 1 with one line naming the deadline and leaves
/// nothing behind, on both dispatch paths.
#[test]
fn the_command_stops_at_its_deadline() {
    for dispatch in ["queue", "channel"] {
        let sandbox = Sandbox::with_dispatch(dispatch);
        let args = [
            "--workers",
            "2",
            "spin",
            "100000",
            "--us",
            "1000",
            "--chunk-size",
            "10",
            "--deadline",
            "200ms",
        ];
        let began = Instant::now();
        let out = sandbox.run(&args);
        out.assert_code(EXIT_FAILED);
        let line = out.one_line_error();
        assert!(
            line.contains("deadline of 200ms passed") && line.contains("of 100000 elements"),
            "{dispatch}: {line}"
        );
        // 100 s of spinning on two workers: the deadline ended it.
        assert!(began.elapsed() < Duration::from_secs(30), "{dispatch}");
        sandbox.assert_nothing_left(&out);
    }
}

/// A run that ends before its deadline is not affected by it.
#[test]
fn the_command_within_its_deadline_succeeds() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["--workers", "2", "squares", "1000", "--deadline", "60s"]);
    out.assert_code(0);
    sandbox.assert_nothing_left(&out);
}

#[test]
fn bad_deadlines_are_refused_naming_the_flag() {
    let sandbox = Sandbox::new();
    for bad in [
        "0", "0s", "0ms", "-1s", "soon", "5", "366d", "1e30s", "9999999m",
    ] {
        let out = sandbox.run(&["--workers", "2", "squares", "100", "--deadline", bad]);
        out.assert_code(EXIT_USAGE);
        let line = out.one_line_error();
        assert!(line.contains("--deadline"), "{bad}: {line}");
        sandbox.assert_nothing_left(&out);
    }
    // Where it would do nothing, it is refused.
    for (args, why) in [
        (
            &["--mode", "threads", "squares", "100", "--deadline", "1s"][..],
            "threads",
        ),
        (
            &["--mode", "single", "squares", "100", "--deadline", "1s"][..],
            "single",
        ),
        (
            &[
                "sweep",
                "squares",
                "100",
                "--workers",
                "1,2",
                "--deadline",
                "1s",
            ][..],
            "sweep",
        ),
    ] {
        let out = sandbox.run(args);
        out.assert_code(EXIT_USAGE);
        let line = out.one_line_error();
        assert!(line.contains("--deadline"), "{why}: {line}");
    }
}

/// In-process modes have no worker processes' job to stop: a deadline or a cancel there
/// is refused, not ignored.
#[test]
fn the_in_process_modes_refuse_a_deadline_or_a_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let w = Counted::in_dir(dir.path(), 0);
    for mode in [procpool::Mode::Threads, procpool::Mode::Single] {
        for (job, option) in [
            (
                JobOptions {
                    deadline: Some(Duration::from_secs(1)),
                    ..JobOptions::default()
                },
                "deadline",
            ),
            (
                JobOptions {
                    cancel: Some(Cancel::new()),
                    ..JobOptions::default()
                },
                "cancel",
            ),
        ] {
            let mut options = procpool::RunOptions::new(2);
            options.mode = mode;
            options.job = job;
            let err = procpool::run(&w, 100, &options).expect_err("refused");
            assert_eq!(err.option(), Some(option), "{mode:?}: {err}");
        }
    }
}
