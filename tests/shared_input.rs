//! `procpool::Input`: a read-only slice shared with every worker through one sealed memfd,
//! and large parameters (a plain `Vec` in a memfd of their own, `procpool::Param`), on real
//! worker processes started through this test binary.

use std::ops::Range;

use procpool::{Dispatch, Input, JobOptions, Param, Pool, Registry, RunOptions, Workload};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Row sums of a `cols`-wide matrix, times `scale`: one row per element.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RowSums {
    cols: usize,
    scale: u64,
    matrix: Input<u32>,
}

impl Workload for RowSums {
    const NAME: &'static str = "row-sums";
    type Output = u64;
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, r) in out.iter_mut().zip(range) {
            let r = r as usize;
            let row = &self.matrix[r * self.cols..(r + 1) * self.cols];
            *slot = self.scale * row.iter().map(|&x| u64::from(x)).sum::<u64>();
        }
    }
}

/// Two inputs of different types (and one of them twice): element `i` is
/// `a[i] + b[i % b.len()]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mix {
    a: Input<u16>,
    b: Input<u64>,
    a_again: Input<u16>,
}

impl Workload for Mix {
    const NAME: &'static str = "mix";
    type Output = u64;
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        assert_eq!(
            self.a.as_ptr(),
            self.a_again.as_ptr(),
            "one input, one mapping"
        );
        for (slot, i) in out.iter_mut().zip(range) {
            let i = i as usize;
            *slot = u64::from(self.a[i]) + self.b[i % self.b.len()];
        }
    }
}

/// Tries, inside the worker, to write its input in every way a process could; element `k`
/// is the errno of attempt `k` (0 if it succeeded): 0 `mprotect` of the input's pages to
/// read-write; 1 opening the memfd again through `/proc/self/fd` read-write; 2 mapping
/// that descriptor `PROT_WRITE, MAP_SHARED`; 3 `pwrite` on it; 4 `ftruncate` to shrink it;
/// 5 a writable shared mapping of the inherited descriptor itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Vandal {
    input: Input<u8>,
}

/// The descriptor (in this process) of the first shared input, found by its memfd name.
fn input_fd() -> Option<i32> {
    std::fs::read_dir("/proc/self/fd").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let target = std::fs::read_link(entry.path()).ok()?;
        target
            .to_string_lossy()
            .starts_with("/memfd:procpool-input")
            .then(|| entry.file_name().to_str()?.parse().ok())?
    })
}

fn errno_of(rc: i64) -> u64 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) as u64
    } else {
        0
    }
}

impl Workload for Vandal {
    const NAME: &'static str = "vandal";
    type Output = u64;
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        let page = self.input.as_ptr() as *mut libc::c_void;
        let len = self.input.len();
        let fd = input_fd().unwrap_or(-1);
        for (slot, attempt) in out.iter_mut().zip(range) {
            *slot = match attempt {
                // SAFETY: asks to make the input's own mapping writable; expected to
                // fail, and nothing writes through it either way.
                0 => errno_of(unsafe {
                    libc::mprotect(page, len, libc::PROT_READ | libc::PROT_WRITE)
                } as i64),
                1..=3 => {
                    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap();
                    // SAFETY: a plain open(2) of a NUL-terminated path.
                    let reopened = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
                    if attempt == 1 || reopened < 0 {
                        let e = errno_of(i64::from(reopened));
                        if reopened >= 0 {
                            // SAFETY: closes the descriptor just opened.
                            unsafe { libc::close(reopened) };
                        }
                        e
                    } else {
                        let e = if attempt == 2 {
                            // SAFETY: a new mapping chosen by the kernel; unmapped at once
                            // if it were made.
                            let p = unsafe {
                                libc::mmap(
                                    std::ptr::null_mut(),
                                    len,
                                    libc::PROT_READ | libc::PROT_WRITE,
                                    libc::MAP_SHARED,
                                    reopened,
                                    0,
                                )
                            };
                            if p == libc::MAP_FAILED {
                                errno_of(-1)
                            } else {
                                // SAFETY: the mapping just made.
                                unsafe { libc::munmap(p, len) };
                                0
                            }
                        } else {
                            // SAFETY: writes one byte from a local buffer.
                            errno_of(unsafe {
                                libc::pwrite(reopened, [0xffu8].as_ptr().cast(), 1, 0)
                            } as i64)
                        };
                        // SAFETY: closes the descriptor just opened.
                        unsafe { libc::close(reopened) };
                        e
                    }
                }
                // SAFETY: a plain ftruncate(2) on a descriptor of this process.
                4 => errno_of(i64::from(unsafe { libc::ftruncate(fd, 1) })),
                5 => {
                    // SAFETY: a new mapping chosen by the kernel; unmapped if it were made.
                    let p = unsafe {
                        libc::mmap(
                            std::ptr::null_mut(),
                            len,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_SHARED,
                            fd,
                            0,
                        )
                    };
                    if p == libc::MAP_FAILED {
                        errno_of(-1)
                    } else {
                        // SAFETY: the mapping just made.
                        unsafe { libc::munmap(p, len) };
                        0
                    }
                }
                _ => u64::MAX,
            };
        }
    }
}

/// A parameter that is a plain `Vec`, as a newcomer writes one: element `i` is the sum of
/// its bytes plus `i`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Weighted {
    bytes: Vec<u8>,
}

impl Workload for Weighted {
    const NAME: &'static str = "weighted";
    type Output = u64;
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        let sum: u64 = self.bytes.iter().map(|&b| u64::from(b)).sum();
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = sum + i;
        }
    }
}

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

procpool::enable_test_support!(
    Registry::builtin()
        .register::<Weighted>()
        .register::<RowSums>()
        .register::<Mix>()
        .register::<Vandal>()
        .register::<Plain>()
        .register::<Held>()
);

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .test_harness()
        .build()
        .expect("workers through this test binary")
}

fn options(dispatch: Dispatch) -> JobOptions {
    JobOptions {
        chunk_size: Some(7),
        dispatch,
        ..Default::default()
    }
}

fn matrix(rows: usize, cols: usize, seed: u32) -> Vec<u32> {
    (0..rows * cols)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8)
        .collect()
}

fn expected(m: &[u32], cols: usize, scale: u64) -> Vec<u64> {
    m.chunks(cols)
        .map(|row| scale * row.iter().map(|&x| u64::from(x)).sum::<u64>())
        .collect()
}

#[test]
fn workers_read_a_shared_input_on_both_dispatch_paths() {
    let (rows, cols) = (300, 50);
    let m = matrix(rows, cols, 1);
    let work = RowSums {
        cols,
        scale: 1,
        matrix: Input::new(&m).unwrap(),
    };
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let mut pool = pool(2);
        let run = pool
            .run_with(&work, rows as u64, &options(dispatch))
            .expect("run");
        assert_eq!(run.results(), &expected(&m, cols, 1)[..], "{dispatch}");
        let stats = run.stats();
        assert_eq!(stats.input_bytes, (rows * cols * 4) as u64, "{dispatch}");
        assert_eq!(stats.input_sends, 2, "{dispatch}: one batch per worker");
    }
}

#[test]
fn back_to_back_jobs_send_each_input_once_per_worker() {
    let (rows, cols) = (200, 20);
    let (m1, m2) = (matrix(rows, cols, 1), matrix(rows, cols, 2));
    let first = Input::new(&m1).unwrap();
    let second = Input::new(&m2).unwrap();
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let mut pool = pool(2);
        let opts = options(dispatch);
        let mut job = |input: &Input<u32>, scale: u64, want: &[u32], sends: u64| {
            let work = RowSums {
                cols,
                scale,
                matrix: input.clone(),
            };
            let run = pool.run_with(&work, rows as u64, &opts).expect("run");
            assert_eq!(
                run.results(),
                &expected(want, cols, scale)[..],
                "{dispatch}"
            );
            assert_eq!(run.stats().input_sends, sends, "{dispatch}, scale {scale}");
            run.stats().ipc_bytes
        };
        job(&first, 1, &m1, 2);
        // The same input again, other parameters: a new spec, no descriptor.
        job(&first, 3, &m1, 0);
        // Another input: sent once to each worker.
        job(&second, 3, &m2, 2);
        // Back to the first: the workers dropped it with the last spec, so it is sent again.
        job(&first, 3, &m1, 2);
        // The very same job: no spec, no descriptor.
        job(&first, 3, &m1, 0);
    }
}

#[test]
fn several_inputs_of_different_types_and_an_empty_one() {
    let a: Vec<u16> = (0..1000).map(|i| i * 3).collect();
    let b: Vec<u64> = (0..17).map(|i| i << 40).collect();
    let a = Input::new(&a).unwrap();
    let mix = Mix {
        a: a.clone(),
        b: Input::try_from(b.clone()).unwrap(),
        a_again: a.clone(),
    };
    let mut pool = pool(2);
    let run = pool
        .run_with(&mix, 1000, &options(Dispatch::Queue))
        .unwrap();
    let want: Vec<u64> = (0..1000).map(|i| u64::from(a[i]) + b[i % 17]).collect();
    assert_eq!(run.results(), &want[..]);
    assert_eq!(run.stats().input_bytes, 2000 + 17 * 8, "each input once");
    drop(run);
    let empty = RowSums {
        cols: 0,
        scale: 1,
        matrix: Input::new(&[]).unwrap(),
    };
    let run = pool.run(&empty, 10).unwrap();
    assert_eq!(run.results(), &[0; 10]);
    assert_eq!(run.stats().input_bytes, 0);
}

#[test]
fn a_32_mib_input_costs_a_few_hundred_bytes_of_ipc_per_worker() {
    let (rows, cols) = (1024, 8192);
    let m = matrix(rows, cols, 5);
    let work = RowSums {
        cols,
        scale: 1,
        matrix: Input::new(&m).unwrap(),
    };
    let mut pool = pool(2);
    // Warm up (the first job also pays for the handshakes).
    let _ = pool.run(&Squares8, 10);
    let before = std::time::Instant::now();
    let run = pool.run(&work, rows as u64).expect("run");
    let elapsed = before.elapsed();
    assert_eq!(run.results(), &expected(&m, cols, 1)[..]);
    let stats = run.stats();
    assert_eq!(stats.input_bytes, 32 << 20);
    eprintln!(
        "32 MiB input: {} messages, {} IPC bytes, {elapsed:?}",
        stats.ipc_messages, stats.ipc_bytes
    );
    assert!(
        stats.ipc_bytes < 2 * 500,
        "{} bytes of IPC for a 32 MiB input",
        stats.ipc_bytes
    );
    // The lab verifies against one process reading the same pages, and reports the size.
    drop(run);
    let mut options = RunOptions::new(2);
    options.pool.test_harness = true;
    let report = procpool::run(&work, rows as u64, &options).expect("a lab run");
    assert_eq!(report.verified, Some(true));
    assert_eq!(report.input_bytes, 32 << 20);
    assert!(report.ipc_bytes < 4096, "{}", report.ipc_bytes);
    assert_eq!(report.params["matrix"]["input_bytes"], 32 << 20);
    let text = procpool::report::render_text(&report);
    assert!(
        text.contains("input        32 MiB shared read-only (sealed memfd), 0 B copied per worker"),
        "{text}"
    );
}

/// A tiny built-in job to take the handshakes out of the measured one.
use procpool::workload::Squares as Squares8;

#[test]
fn a_worker_cannot_write_its_sealed_input() {
    let data: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
    let vandal = Vandal {
        input: Input::new(&data).unwrap(),
    };
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let mut pool = pool(1);
        let run = pool.run_with(&vandal, 6, &options(dispatch)).unwrap();
        let errnos = run.results().to_vec();
        let name = |e: u64| std::io::Error::from_raw_os_error(e as i32).to_string();
        // The descriptor can be reopened read-write (seals do not stop an open) ...
        assert_eq!(errnos[1], 0, "{dispatch}: reopen: {}", name(errnos[1]));
        // ... but nothing can be written through anything.
        for (attempt, &e) in errnos.iter().enumerate() {
            if attempt == 1 {
                continue;
            }
            assert!(
                e == libc::EPERM as u64 || e == libc::EACCES as u64,
                "{dispatch}: attempt {attempt} gave errno {e} ({}); all: {errnos:?}",
                name(e)
            );
        }
        assert_eq!(&vandal.input[..], &data[..], "{dispatch}: unchanged");
    }
}

#[test]
fn threads_and_single_modes_read_the_same_pages_and_report_the_input() {
    let (rows, cols) = (100, 30);
    let m = matrix(rows, cols, 9);
    let work = RowSums {
        cols,
        scale: 2,
        matrix: Input::new(&m).unwrap(),
    };
    for mode in [procpool::Mode::Threads, procpool::Mode::Single] {
        let mut options = RunOptions::new(2);
        options.mode = mode;
        let mut seen = Vec::new();
        let report = procpool::run_inspect(&work, rows as u64, &options, |out| {
            seen = out.to_vec();
        })
        .expect("a lab run");
        assert_eq!(seen, expected(&m, cols, 2), "{mode:?}");
        assert_eq!(report.verified, Some(true), "{mode:?}");
        assert_eq!(report.input_bytes, (rows * cols * 4) as u64, "{mode:?}");
        assert_eq!(report.ipc_bytes, 0, "{mode:?}");
    }
}

#[test]
fn a_large_parameter_never_waits_for_a_sleeping_worker() {
    // 768 KiB is more than a channel's socket buffer holds: the spec can only be sent while
    // the worker reads it. Workers asleep between jobs are woken to read it; a worker left
    // to its timed sleep (1 s) makes every such job take at least a second per worker. The
    // bound is that one second: far above what the job needs, even in a debug build.
    const BOUND: std::time::Duration = std::time::Duration::from_secs(1);
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let mut pool = pool(2);
        let pids = pool.pids();
        for round in 0..3u8 {
            let work = Weighted {
                bytes: vec![round; 768 << 10],
            };
            // Long enough for both workers to be asleep on the futex, not spinning.
            std::thread::sleep(std::time::Duration::from_millis(30));
            let began = std::time::Instant::now();
            let run = pool
                .run_with(&work, 8, &options(dispatch))
                .expect("the job runs");
            let took = began.elapsed();
            let sum = u64::from(round) * (768 << 10);
            let expected: Vec<u64> = (0..8).map(|i| sum + i).collect();
            assert_eq!(run.results(), &expected[..], "{dispatch} round {round}");
            assert!(
                took < BOUND,
                "{dispatch} round {round}: a job with a new 768 KiB parameter took {took:?}, \
                 as if it waited for a sleeping worker"
            );
        }
        assert_eq!(pool.pids(), pids, "{dispatch}: the same workers throughout");
    }
}

// Large parameters: a plain `Vec<u8>` field of 512 KiB to 30.5 MiB with a new value every
// job, the same value again, a `procpool::Param`, and a worker killed between jobs.

fn expected_ends(bytes: &[u8], n: u64) -> Vec<u64> {
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
                &expected_ends(&work.bytes, 8)[..],
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
        assert_eq!(first.results(), &expected_ends(&work.bytes, 8)[..]);
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
        assert_eq!(second.results(), &expected_ends(&again.bytes, 8)[..]);
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
    let mut want = expected_ends(&work.bytes, 2);
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
        assert_eq!(run.results(), &expected_ends(&work.bytes, 8)[..]);
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
        assert_eq!(
            again.results(),
            &expected_ends(&work.bytes, 8)[..],
            "{dispatch}"
        );
        assert_eq!(
            again.stats().input_sends,
            1,
            "{dispatch}: the parameters' memfd to the new worker"
        );
        drop(again);
        assert!(!pool.pids().contains(&victim), "{dispatch}: replaced");
    }
}
