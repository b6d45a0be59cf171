//! Large job parameters on real worker processes started through this test binary: a plain
//! `Vec<u8>` field of 512 KiB to 30.5 MiB with a new value every job, the same value again,
//! a `procpool::Param`, and a worker killed between jobs. Both dispatch paths.

use std::ops::Range;
use std::time::{Duration, Instant};

use procpool::{Dispatch, JobOptions, Param, Pool, Registry, Workload};
use serde::{Deserialize, Serialize};

/// Element `i`: `i` plus the length, first and last byte of `bytes` (each job is tiny
/// whatever the size, and its answer shows the worker decoded the value it was sent).
fn ends(bytes: &[u8], range: Range<u64>, out: &mut [u64]) {
    let ends = match bytes {
        [] => 0,
        [one] => 2 * u64::from(*one),
        [first, .., last] => u64::from(*first) + u64::from(*last),
    };
    for (slot, i) in out.iter_mut().zip(range) {
        *slot = i + bytes.len() as u64 + ends;
    }
}

/// A plain `Vec` parameter, as a newcomer writes one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plain {
    bytes: Vec<u8>,
}

impl Workload for Plain {
    const NAME: &'static str = "plain";
    type Output = u64;
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        ends(&self.bytes, range, out);
    }
}

/// The bytes in a `Param`, beside a field that changes every job. With `where_is`, each
/// element is instead the address of the worker's copy of the bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    round: u64,
    where_is: bool,
    bytes: Param<Vec<u8>>,
}

impl Workload for Held {
    const NAME: &'static str = "held";
    type Output = u64;
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        ends(&self.bytes, range, out);
        for slot in out.iter_mut() {
            *slot = match self.where_is {
                true => self.bytes.as_ptr() as u64,
                false => *slot + self.round,
            };
        }
    }
}

procpool::enable_test_support!(Registry::builtin().register::<Plain>().register::<Held>());

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .test_harness()
        .build()
        .expect("workers through this test binary")
}

fn options(dispatch: Dispatch) -> JobOptions {
    JobOptions {
        chunk_size: Some(2),
        dispatch,
        ..Default::default()
    }
}

fn expected(bytes: &[u8], n: u64) -> Vec<u64> {
    let mut out = vec![0; n as usize];
    ends(bytes, 0..n, &mut out);
    out
}

#[test]
fn new_large_parameters_travel_in_a_memfd_and_no_message_can_wait() {
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let mut pool = pool(2);
        let pids = pool.pids();
        for (size, round) in [(512 << 10, 1u8), (4 << 20, 2), (32_000_000, 3)] {
            let work = Plain {
                bytes: vec![round; size],
            };
            // Long enough for both workers to be asleep on the futex, not spinning.
            std::thread::sleep(Duration::from_millis(30));
            let run = pool
                .run_with(&work, 8, &options(dispatch))
                .expect("the job runs");
            let stats = run.stats();
            assert_eq!(
                run.results(),
                &expected(&work.bytes, 8)[..],
                "{dispatch} {size}"
            );
            // The bytes and their length, a varint.
            assert!(
                (size as u64 + 1..=size as u64 + 5).contains(&stats.param_bytes),
                "{dispatch} {size}: {}",
                stats.param_bytes
            );
            // The parameters crossed no channel: one memfd, its descriptor to each worker.
            assert_eq!(stats.input_sends, 2, "{dispatch} {size}");
            assert_eq!(stats.input_bytes, 0, "{dispatch} {size}: no Input");
            // Why no send can wait for a worker's sleep: every message is a few KiB at
            // most, far below a socket buffer (about 208 KiB), so it is queued whether or
            // not the worker reads. (Encoding megabytes takes seconds in a debug build, so
            // the time is left to `cargo bench`, which measures every size; the 768 KiB
            // test in `shared_input.rs` bounds a job's time.)
            let per_worker = stats.ipc_bytes / 2;
            assert!(
                per_worker < 16 << 10,
                "{dispatch} {size}: {per_worker} bytes of IPC per worker"
            );
        }
        assert_eq!(pool.pids(), pids, "{dispatch}: the same workers throughout");
    }
}

#[test]
fn an_unchanged_parameter_is_not_sent_again() {
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let mut pool = pool(2);
        let work = Plain {
            bytes: vec![9; 4 << 20],
        };
        let first = pool.run_with(&work, 8, &options(dispatch)).unwrap();
        assert_eq!(first.results(), &expected(&work.bytes, 8)[..]);
        assert_eq!(
            first.stats().input_sends,
            2,
            "{dispatch}: the memfd to each worker"
        );
        let first_ipc = first.stats().ipc_messages;
        drop(first);
        // An equal value (another vector): the spec is the same, nothing is sent.
        let again = Plain {
            bytes: vec![9; 4 << 20],
        };
        let second = pool.run_with(&again, 8, &options(dispatch)).unwrap();
        assert_eq!(second.results(), &expected(&again.bytes, 8)[..]);
        assert_eq!(second.stats().input_sends, 0, "{dispatch}");
        assert!(
            second.stats().ipc_messages + 4 <= first_ipc,
            "{dispatch}: no spec nor descriptors ({} messages, then {})",
            first_ipc,
            second.stats().ipc_messages
        );
    }
}

#[test]
fn a_param_is_sent_once_and_decoded_once_until_it_changes() {
    let mut pool = pool(1);
    let mut work = Held {
        round: 0,
        where_is: true,
        bytes: Param::new(vec![5; 2 << 20]),
    };
    let first = pool.run(&work, 2).unwrap();
    assert_eq!(first.stats().input_sends, 1, "its memfd, once");
    assert!(first.stats().param_bytes > 2 << 20);
    let address = first.results()[0];
    drop(first);
    for round in 1..4 {
        work.round = round;
        let run = pool.run(&work, 2).unwrap();
        assert_eq!(run.stats().input_sends, 0, "round {round}: not sent again");
        assert_eq!(
            run.results()[0],
            address,
            "round {round}: the worker's decoded value is the same"
        );
    }
    work.where_is = false;
    work.bytes[0] = 6;
    let changed = pool.run(&work, 2).unwrap();
    assert_eq!(changed.stats().input_sends, 1, "a change is sent");
    let mut want = expected(&work.bytes, 2);
    want.iter_mut().for_each(|x| *x += 3);
    assert_eq!(changed.results(), &want[..]);
}

#[test]
fn a_worker_killed_between_jobs_gets_the_large_spec_on_restart() {
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        // One worker: the next job can only run on its replacement.
        let mut pool = pool(1);
        let work = Plain {
            bytes: vec![7; 4 << 20],
        };
        let run = pool.run_with(&work, 8, &options(dispatch)).unwrap();
        assert_eq!(run.results(), &expected(&work.bytes, 8)[..]);
        drop(run);
        let victim = pool.pids()[0];
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{victim}/stat"))
            .is_ok_and(|s| !s.contains(") Z"))
        {
            assert!(
                Instant::now() < deadline,
                "{dispatch}: the worker did not die"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let again = pool.run_with(&work, 8, &options(dispatch)).unwrap();
        assert_eq!(again.results(), &expected(&work.bytes, 8)[..], "{dispatch}");
        assert_eq!(
            again.stats().input_sends,
            1,
            "{dispatch}: the parameters' memfd to the new worker"
        );
        drop(again);
        assert!(!pool.pids().contains(&victim), "{dispatch}: replaced");
    }
}
