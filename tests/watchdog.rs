//! The queue never waits forever and never trusts a control block written over: a kernel
//! that writes the shared claim counter or zeroes the control block fails the job naming
//! the damage; a kernel overrunning its last chunk faults at the guard page and its chunk
//! fails under the retry limit; workers all stopped by SIGSTOP between two jobs of a
//! library pool are killed and replaced, and the next job finishes; a chunk whose done byte
//! a kernel wrote over is named, with its worker, when the reduction lacks it.
//!
//! Workers run this test binary through `enable_test_support!` (for the kernels that write
//! past their chunk) or the `procpool` binary.

mod common;

use std::ops::Range;
use std::time::Duration;

use common::{
    EXIT_FAILED, POOL_JOB_DEADLINE, Procpool, TEARDOWN_DEADLINE, is_our_child, wait_until, within,
};
use procpool::workload::Squares;
use procpool::{Error, JobOptions, Pool, Reduce, Registry, Workload};
use serde::{Deserialize, Serialize};

/// `i` for each index, summed; the chunk that ends at `n` then writes `bytes` bytes of
/// `fill` past its end, as an off-by-some loop or `memset` would: the bytes of procpool's
/// chunk table (the done byte of chunk 0 first), then whatever the next page holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PastEnd {
    n: u64,
    bytes: usize,
    fill: u8,
}

impl Workload for PastEnd {
    const NAME: &'static str = "past-end";
    type Output = u64;

    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, i) in out.iter_mut().zip(range.clone()) {
            *slot = i;
        }
        if range.end == self.n {
            let end = out.as_mut_ptr_range().end.cast::<u8>();
            for k in 0..self.bytes {
                // SAFETY: none, on purpose: this kernel misbehaves to show what a bug in a
                // user's kernel does. The bytes past its chunk belong to procpool's chunk
                // table, then to the guard page, where the worker faults.
                unsafe { end.wrapping_add(k).write_volatile(self.fill) };
            }
        }
    }
}

impl Reduce for PastEnd {
    type Acc = u64;

    fn identity(&self) -> u64 {
        0
    }

    fn reduce_chunk(&self, _range: Range<u64>, out: &[u64]) -> u64 {
        out.iter().sum()
    }

    fn combine(&self, left: u64, right: u64) -> u64 {
        left + right
    }
}

procpool::enable_test_support!(Registry::builtin().register_reduce::<PastEnd>());

/// Asserts every pid is neither running nor an unreaped zombie child of this process.
fn assert_reaped(pids: &[u32], what: &str) {
    let gone = wait_until(TEARDOWN_DEADLINE, || !pids.iter().any(|&p| is_our_child(p)));
    let left: Vec<u32> = pids.iter().copied().filter(|&p| is_our_child(p)).collect();
    for &pid in &left {
        common::kill(pid);
    }
    assert!(gone, "{what}: workers {left:?} are still our children");
}

/// Whether process `pid` is stopped (state `T` in /proc/PID/stat).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat[stat.rfind(')').unwrap_or(0) + 1..]
            .trim_start()
            .starts_with('T')
    })
}

#[test]
fn a_kernel_writing_the_claim_counter_fails_the_job_naming_the_damage() {
    for timeout in [None, Some("1s")] {
        let mut args = vec![
            "--workers",
            "2",
            "squares",
            "100000",
            "--chunk-size",
            "1000",
        ];
        args.extend(["--inject", "scribble@2"]);
        args.extend(timeout.iter().flat_map(|t| ["--timeout", t]));
        let out = Procpool::new(&args).deadline(POOL_JOB_DEADLINE).run();
        out.assert_code(EXIT_FAILED);
        let line = out.one_line_error();
        assert!(
            line.contains("control block in shared memory was overwritten")
                && line
                    .contains("`next` holds 6510615555426900570, beyond the posting's 100 chunks"),
            "{line}"
        );
        common::assert_no_tagged_process(&out.tag, "after the failed job");
    }
}

#[test]
fn a_kernel_zeroing_the_control_block_fails_the_job_naming_the_damage() {
    let out = Procpool::new(&[
        "--workers",
        "2",
        "squares",
        "100000",
        "--chunk-size",
        "1000",
        "--inject",
        "wipe@3",
    ])
    .deadline(POOL_JOB_DEADLINE)
    .run();
    out.assert_code(EXIT_FAILED);
    // A worker still on its way when the block was zeroed cannot map it and is replaced
    // (a notice, and its own line saying why); the error is the last line.
    let line = out.stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains("control block in shared memory was overwritten: the posting word holds 0x0"),
        "{}",
        out.stderr
    );
    common::assert_no_tagged_process(&out.tag, "after the failed job");
}

#[test]
fn a_kernel_overrunning_its_last_chunk_faults_at_the_guard_page() {
    let pool = Pool::builder()
        .workers(2)
        .test_harness()
        .retries(1)
        .build()
        .expect("workers through this test binary");
    let pids = pool.pids();
    // Results large enough that the kernel places their mapping below every other one,
    // where the next mapping up is the control block.
    let n = 2_000_000;
    let options = JobOptions {
        chunk_size: Some(100_000),
        ..JobOptions::default()
    };
    let overrun = PastEnd {
        n,
        bytes: 8192,
        fill: 0,
    };
    let (pool, result) = within(pool, move |pool| {
        pool.run_with(&overrun, n, &options)
            .map(|run| run.stats().clone())
    });
    let err = result.expect_err("the overrunning chunk fails every attempt");
    match &err {
        Error::ChunkFailed {
            chunk, attempts, ..
        } => assert_eq!((*chunk, *attempts), (19, 2)),
        other => panic!("expected the last chunk to fail, got: {other}"),
    }
    assert!(err.to_string().contains("SIGSEGV"), "{err}");
    let now = pool.pids();
    drop(pool);
    assert_reaped(&pids, "the first workers");
    assert_reaped(&now, "after drop");
}

#[test]
fn workers_all_stopped_between_jobs_are_replaced_and_the_next_job_finishes() {
    let pool = Pool::builder()
        .workers(2)
        .test_harness()
        .chunk_timeout(Duration::from_secs(1))
        .build()
        .expect("workers through this test binary");
    let stopped = pool.pids();
    let (pool, first) = within(pool, |pool| {
        pool.run(&Squares, 10_000).map(|run| run.results()[9_999])
    });
    assert_eq!(first.expect("the first job"), 9_999 * 9_999);
    for &pid in &stopped {
        common::signal(pid, nix::sys::signal::Signal::SIGSTOP);
    }
    // The stop takes effect when the kernel next schedules each worker.
    let all_stopped = wait_until(TEARDOWN_DEADLINE, || stopped.iter().all(|&p| is_stopped(p)));
    assert!(all_stopped, "workers {stopped:?} did not stop");
    let (pool, second) = within(pool, |pool| {
        pool.run(&Squares, 10_000).map(|run| {
            let ok = run
                .results()
                .iter()
                .enumerate()
                .all(|(i, &x)| x == (i * i) as u64);
            (ok, run.stats().deaths.clone())
        })
    });
    let (ok, deaths) = second.expect("the second job, on fresh workers");
    assert!(ok, "the second job's results are the squares");
    let lost: Vec<u32> = deaths.iter().map(|d| d.pid).collect();
    assert_eq!(lost.len(), 2, "both stopped workers replaced: {deaths:?}");
    assert!(stopped.iter().all(|p| lost.contains(p)), "{deaths:?}");
    assert!(
        deaths.iter().all(|d| d.cause.contains("was stopped")),
        "{deaths:?}"
    );
    let now = pool.pids();
    drop(pool);
    assert_reaped(&stopped, "the stopped workers");
    assert_reaped(&now, "after drop");
}

#[test]
fn a_chunk_done_without_its_accumulator_is_named_with_its_worker() {
    // One worker: chunk 0 is done before the last chunk writes over its done byte.
    let pool = Pool::builder()
        .workers(1)
        .test_harness()
        .build()
        .expect("workers through this test binary");
    let pids = pool.pids();
    // 1000 elements of 8 bytes end on a cache line: the table starts right after them.
    let n = 1000;
    let options = JobOptions {
        chunk_size: Some(100),
        ..JobOptions::default()
    };
    let (pool, result) = within(pool, move |pool| {
        pool.run_and_reduce_with(
            &PastEnd {
                n,
                bytes: 1,
                fill: 1,
            },
            n,
            &options,
        )
        .map(|(_, value)| value)
    });
    let err = result.expect_err("chunk 0 lost its accumulator");
    let text = err.to_string();
    assert!(
        text.contains("the reduction lacks chunk 0 (elements 0..100)")
            && text.contains(&format!("worker 0 (pid {}) marked it done", pids[0])),
        "{text}"
    );
    let now = pool.pids();
    drop(pool);
    assert_reaped(&pids, "the first worker");
    assert_reaped(&now, "after drop");
}
