//! Huge jobs streamed to a file in bounded memory, and hundreds of workers.

mod common;

use common::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, Sandbox, squares_checksum};
use serde_json::Value;

fn streamed(sandbox: &Sandbox, args: &[&str]) -> Value {
    let out = sandbox.run(args);
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    out.json()
}

fn streamed_file_equals_the_single_process_output_when_n_is_not_a_multiple_of_the_window(
    dispatch: &'static str,
) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("squares.bin");
    let file_arg = file.to_str().unwrap();
    for workers in ["1", "3"] {
        let sandbox = Sandbox::with_dispatch(dispatch);
        // 64 KiB windows hold 8192 squares: 100003 is 12 whole windows and a partial one.
        let r = streamed(
            &sandbox,
            &[
                "--workers",
                workers,
                "squares",
                "100003",
                "--output",
                file_arg,
                "--window-size",
                "64KiB",
                "--json",
            ],
        );
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["checksum"], squares_checksum(100_003), "{r}");
        assert_eq!(r["output"]["windows"], 13, "{r}");
        assert_eq!(r["output"]["bytes"], 800_024, "{r}");
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes.len(), 800_024);
        for (i, word) in bytes.chunks_exact(8).enumerate() {
            let i = i as u64;
            assert_eq!(
                u64::from_le_bytes(word.try_into().unwrap()),
                i.wrapping_mul(i),
                "index {i}"
            );
        }
    }
}

fn every_element_type_streams_and_verifies(dispatch: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    for (workload, n, elem) in [
        (&["primes", "30011"][..], 30_011u64, 1u64),
        (&["collatz", "20011"], 20_011, 4),
        (&["mandelbrot", "41", "--max-iter", "64"], 41 * 41, 4),
    ] {
        let file = dir.path().join(format!("{}.bin", workload[0]));
        let sandbox = Sandbox::with_dispatch(dispatch);
        let mut args = vec![
            "--workers",
            "2",
            "--window-size",
            "4KiB",
            "--json",
            "--output",
        ];
        args.push(file.to_str().unwrap());
        args.extend_from_slice(workload);
        let r = streamed(&sandbox, &args);
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), n * elem, "{r}");
        // The file's bytes hash to the checksum, the same as without streaming.
        let plain = streamed(
            &Sandbox::with_dispatch(dispatch),
            &[&["--workers", "2", "--json"], workload].concat(),
        );
        assert_eq!(r["checksum"], plain["checksum"], "{workload:?}");
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(r["checksum"], common::checksum_of(&bytes), "{workload:?}");
    }
}

fn a_full_disk_fails_naming_the_file_and_stops_every_worker(dispatch: &'static str) {
    let sandbox = Sandbox::with_dispatch(dispatch);
    let out = sandbox.run(&["--workers", "2", "squares", "1e6", "--output", "/dev/full"]);
    out.assert_code(EXIT_FAILED);
    let line = out.one_line_error();
    assert!(
        line.contains("/dev/full") && line.contains("No space left"),
        "{line}"
    );
    sandbox.assert_nothing_left(&out);
}

#[test]
fn an_unwritable_output_is_refused_before_anything_starts() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["squares", "100", "--output", "/nonexistent-dir/out.bin"]);
    out.assert_code(EXIT_USAGE);
    assert!(out.one_line_error().contains("/nonexistent-dir/out.bin"));
    sandbox.assert_nothing_left(&out);
    let out = sandbox.run(&[
        "--mode",
        "threads",
        "squares",
        "100",
        "--output",
        "/dev/null",
    ]);
    out.assert_code(EXIT_USAGE);
    let out = sandbox.run(&[
        "--schedule",
        "static",
        "squares",
        "100",
        "--output",
        "/dev/null",
    ]);
    out.assert_code(EXIT_USAGE);
}

#[test]
fn two_hundred_workers_start_run_and_stop_cleanly() {
    let sandbox = Sandbox::new();
    let r = streamed(
        &sandbox,
        &["--workers", "200", "sleep", "1000", "--ms", "5", "--json"],
    );
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["workers"], 200);
    assert_eq!(r["per_worker"].as_array().unwrap().len(), 200);
    // sleep's baseline is known without sleeping: n × ms.
    assert_eq!(r["baseline_estimated"], true, "{r}");
    assert!(
        (r["baseline_wall_s"].as_f64().unwrap() - 5.0).abs() < 1e-9,
        "{r}"
    );
}

/// Runs procpool under `sh -c "ulimit ...; exec procpool ..."`.
fn with_ulimit(limit: &str, args: &str) -> std::process::Output {
    let script = format!("{limit} && exec {} {args}", common::EXE);
    std::process::Command::new("timeout")
        .args(["120", "sh", "-c", &script])
        .output()
        .expect("sh runs")
}

#[test]
fn the_open_file_limit_is_checked_before_starting() {
    // Hard and soft limit both too low: refused, naming the limit.
    let out = with_ulimit("ulimit -n 64", "--workers 100 squares 1000");
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open-file limit (ulimit -n) is 64"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Only the soft limit low: procpool raises it to the hard limit and runs.
    let out = with_ulimit(
        "ulimit -Sn 64 && ulimit -Hn 4096",
        "--workers 40 squares 1000 --json",
    );
    assert_eq!(out.status.code(), Some(EXIT_OK), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], true);
}

/// The bytes procpool has written so far to a file in `dir` it holds open, named or not
/// (the output has no name until the run succeeds).
fn bytes_written_in(pid: u32, dir: &std::path::Path) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

fn an_interrupted_stream_exits_130_and_leaves_no_partial_file(dispatch: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("partial.bin");
    let sandbox = Sandbox::with_dispatch(dispatch);
    // A chunk that hangs keeps the job from ever finishing; SIGINT must end it.
    let out = sandbox
        .command(&[
            "--workers",
            "2",
            "squares",
            "1e6",
            "--window-size",
            "64KiB",
            "--grace",
            "100ms",
            "--inject",
            "hang@20:always",
            "--output",
            file.to_str().unwrap(),
        ])
        .deadline(std::time::Duration::from_secs(30))
        .run_while(|pid, _| {
            let written = common::wait_until(std::time::Duration::from_secs(20), || {
                bytes_written_in(pid, dir.path()) > 0
            });
            assert!(written, "the first windows were never written");
            common::signal(pid, nix::sys::signal::Signal::SIGINT);
        });
    out.assert_code(130);
    assert!(!file.exists(), "no partial file");
    assert!(
        common::dir_entries(dir.path()).is_empty(),
        "nothing left beside it: {:?}",
        common::dir_entries(dir.path())
    );
    sandbox.assert_nothing_left(&out);
}

on_both_dispatches!(
    streamed_file_equals_the_single_process_output_when_n_is_not_a_multiple_of_the_window,
    every_element_type_streams_and_verifies,
    a_full_disk_fails_naming_the_file_and_stops_every_worker,
    an_interrupted_stream_exits_130_and_leaves_no_partial_file,
);
