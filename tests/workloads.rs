//! Every built-in workload, verified against the single-process run across worker counts,
//! odd sizes, modes (processes, threads, single), start methods (forkserver, spawn, fork)
//! and dispatch paths (queue, channel).

mod common;

use common::{EXIT_OK, EXIT_USAGE, Sandbox, checksum_of, procpool};
use serde_json::Value;

/// Each workload with small, odd sizes and cheap parameters (tests run a debug build).
const WORKLOADS: &[&[&str]] = &[
    &["squares", "1001"],
    &["primes", "10007"],
    &["collatz", "9999"],
    &["mandelbrot", "33", "--max-iter", "64"],
    &["hash", "777", "--rounds", "3"],
    &["spin", "501", "--us", "1"],
    &["sleep", "31", "--ms", "0.3"],
];

/// Equal parameters must give equal checksums (spin calibrates per run, so its parameters,
/// and output, may differ between runs).
fn assert_same_output(workload: &[&str], runs: &[(Value, Value)]) {
    assert!(
        runs.windows(2)
            .all(|w| w[0].0 != w[1].0 || w[0].1 == w[1].1),
        "{workload:?}: {runs:?}"
    );
}

fn run_json(sandbox: &Sandbox, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let out = sandbox.run(&all);
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    out.json()
}

#[test]
fn every_workload_is_verified_with_one_two_and_three_workers() {
    for workload in WORKLOADS {
        let mut checksums = Vec::new();
        for workers in ["1", "2", "3"] {
            let sandbox = Sandbox::new();
            let mut args = vec!["--workers", workers];
            args.extend_from_slice(workload);
            let report = run_json(&sandbox, &args);
            assert_eq!(report["verified"], true, "{args:?}: {report}");
            assert_eq!(report["workload"], workload[0], "{report}");
            assert_eq!(report["mode"], "processes", "{report}");
            assert_eq!(report["start"], "forkserver", "{report}");
            checksums.push((report["params"].clone(), report["checksum"].clone()));
        }
        assert_same_output(workload, &checksums);
    }
}

#[test]
fn threads_single_fork_and_both_dispatches_give_the_same_verified_output() {
    for workload in WORKLOADS {
        let mut checksums = Vec::new();
        for how in [
            &["--mode", "processes"][..],
            &["--mode", "threads"],
            &["--mode", "single"],
            &["--start", "fork"],
            &["--dispatch", "channel"],
            &["--dispatch", "channel", "--start", "fork"],
            &["--dispatch", "queue", "--start", "fork"],
        ] {
            let sandbox = Sandbox::new();
            // A single process takes no worker count: `--workers` there is refused.
            let mut args = match how {
                ["--mode", "single"] => vec![],
                _ => vec!["--workers", "2"],
            };
            args.extend_from_slice(how);
            args.extend_from_slice(workload);
            let report = run_json(&sandbox, &args);
            assert_eq!(report["verified"], true, "{args:?}: {report}");
            match how {
                ["--mode", mode] => assert_eq!(report["mode"], *mode, "{report}"),
                ["--dispatch", dispatch, rest @ ..] => {
                    assert_eq!(report["dispatch"], *dispatch, "{report}");
                    let start = if rest.is_empty() {
                        "forkserver"
                    } else {
                        "fork"
                    };
                    assert_eq!(report["start"], start, "{report}");
                }
                _ => {
                    assert_eq!(report["mode"], "processes", "{report}");
                    assert_eq!(report["start"], "fork", "{report}");
                }
            }
            checksums.push((report["params"].clone(), report["checksum"].clone()));
        }
        assert_same_output(workload, &checksums);
    }
}

#[test]
fn every_workload_verifies_under_each_start_method() {
    // The fork server is the default now: spawn and fork must keep working beside it.
    for workload in WORKLOADS {
        let mut checksums = Vec::new();
        for start in ["spawn", "fork", "forkserver"] {
            let sandbox = Sandbox::new();
            let mut args = vec!["--workers", "2", "--start", start];
            args.extend_from_slice(workload);
            let report = run_json(&sandbox, &args);
            assert_eq!(report["verified"], true, "{args:?}: {report}");
            assert_eq!(report["start"], start, "{args:?}: {report}");
            assert_eq!(report["restarts"], 0, "{args:?}: {report}");
            checksums.push((report["params"].clone(), report["checksum"].clone()));
        }
        assert_same_output(workload, &checksums);
    }
}

#[test]
fn known_answers_through_the_pool() {
    let sandbox = Sandbox::new();
    // The checksum is the SHA-256 of the output's bytes: computed here, independently.
    // π(10^5) = 9592 primes below 100000, by a sieve.
    let mut sieve = vec![1u8; 100_000];
    sieve[0] = 0;
    sieve[1] = 0;
    let mut p = 2;
    while p * p < sieve.len() {
        if sieve[p] == 1 {
            (p * p..sieve.len()).step_by(p).for_each(|m| sieve[m] = 0);
        }
        p += 1;
    }
    assert_eq!(sieve.iter().map(|&p| u64::from(p)).sum::<u64>(), 9592);
    let report = run_json(&sandbox, &["--workers", "2", "primes", "1e5"]);
    assert_eq!(report["checksum"], checksum_of(&sieve), "{report}");
    // Collatz steps over 0..10000 (0 and 1 take none), summing to 849637.
    let steps: Vec<u32> = (0..10_000u64)
        .map(|mut x| {
            let mut steps = 0;
            while x > 1 {
                x = if x.is_multiple_of(2) {
                    x / 2
                } else {
                    3 * x + 1
                };
                steps += 1;
            }
            steps
        })
        .collect();
    assert_eq!(steps.iter().map(|&s| u64::from(s)).sum::<u64>(), 849_637);
    let report = run_json(&sandbox, &["--workers", "3", "collatz", "10000"]);
    assert_eq!(report["checksum"], checksum_of(&steps), "{report}");
    // hash with 0 rounds is the identity: 0..100 as u64.
    let report = run_json(
        &sandbox,
        &["--workers", "2", "hash", "100", "--rounds", "0"],
    );
    let identity: Vec<u64> = (0..100).collect();
    assert_eq!(report["checksum"], checksum_of(&identity), "{report}");
    // sleep writes i: 0..20 as u64.
    let report = run_json(&sandbox, &["--workers", "2", "sleep", "20", "--ms", "0"]);
    let indices: Vec<u64> = (0..20).collect();
    assert_eq!(report["checksum"], checksum_of(&indices), "{report}");
    // mandelbrot N is an N×N image.
    let report = run_json(&sandbox, &["--workers", "2", "mandelbrot", "21"]);
    assert_eq!(report["n"], 441, "{report}");
    assert_eq!(report["params"]["size"], 21, "{report}");
}

#[test]
fn spin_sends_the_calibrated_iteration_count_to_workers() {
    let sandbox = Sandbox::new();
    let report = run_json(&sandbox, &["--workers", "2", "spin", "100", "--us", "20"]);
    assert!(report["params"]["iters"].as_u64().unwrap() > 0, "{report}");
    let report = run_json(&sandbox, &["--workers", "2", "spin", "100", "--us", "0"]);
    assert_eq!(report["params"]["iters"], 0, "{report}");
}

#[test]
fn mandelbrot_writes_a_png_of_the_image() {
    let sandbox = Sandbox::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.png");
    let out = sandbox.run(&[
        "--workers",
        "2",
        "mandelbrot",
        "40",
        "--image",
        path.to_str().unwrap(),
    ]);
    out.assert_code(EXIT_OK);
    let bytes = std::fs::read(&path).expect("the image was written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // Width and height sit in the IHDR chunk, right after the signature and chunk header.
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 40);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 40);
    sandbox.assert_nothing_left(&out);
}

#[test]
fn list_names_every_workload_and_its_bound() {
    let out = procpool(&["list"]);
    out.assert_code(EXIT_OK);
    for name in [
        "squares",
        "primes",
        "collatz",
        "mandelbrot",
        "hash",
        "spin",
        "sleep",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("memory-bound") && out.stdout.contains("I/O-bound"));
}

#[test]
fn workload_parameters_are_checked() {
    for args in [
        &["spin", "10"][..],
        &["sleep", "10", "--ms", "-1"],
        &["mandelbrot", "10", "--max-iter", "0"],
        &["--mode", "threads", "squares", "10", "--inject", "kill@0"],
        &["--mode", "nope", "squares", "10"],
        &["--start", "nope", "squares", "10"],
    ] {
        let out = procpool(args);
        out.assert_code(EXIT_USAGE);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
    }
}

#[test]
fn fork_is_refused_in_a_process_that_already_has_threads() {
    // The test harness runs this test on a thread of its own, so this process has several.
    let err = procpool::Pool::builder()
        .workers(2)
        .start(procpool::StartMethod::Fork)
        .build()
        .expect_err("fork from a multi-threaded process");
    assert!(err.is_invalid_input(), "{err}");
    assert!(err.to_string().contains("single-threaded"), "{err}");
}

#[test]
fn a_workload_the_worker_binary_does_not_know_is_a_clear_error() {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Unknown;
    impl procpool::Workload for Unknown {
        const NAME: &'static str = "not-in-procpool";
        type Output = u8;
        fn kernel(&self, _: std::ops::Range<u64>, out: &mut [u8]) {
            out.fill(1);
        }
    }
    let mut pool = procpool::Pool::builder()
        .workers(2)
        .worker_exe(common::EXE)
        .build()
        .unwrap();
    let pids = pool.pids();
    let err = pool.run(&Unknown, 10).err().expect("unregistered workload");
    let message = err.to_string();
    assert!(
        message.contains("not-in-procpool") && message.contains("not registered"),
        "{message}"
    );
    // Refused before any worker saw it: the same workers are there, and run the next job.
    assert!(err.is_invalid_input(), "{err}");
    assert_eq!(pool.pids(), pids);
    let run = pool
        .run(&procpool::workload::Squares, 1000)
        .expect("the pool still works");
    assert_eq!(run.results()[999], 999 * 999);
}
