//! The first SIGINT or SIGTERM stops every phase of every mode and exits 130 or 143: the
//! threads run, the single-process run, the single-process baseline after the pool, and a
//! streamed `--output` (where even a second signal, which exits at once, leaves no partial
//! file). Also a write past `ulimit -f`, which would otherwise kill procpool silently.
//!
//! The jobs here would take tens of seconds if nothing stopped them; each test waits for
//! the phase it wants (watching procpool's threads in `/proc`), signals, and expects the
//! exit well before the job could have finished. The phase is read from the message, not
//! from timing.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{EXE, EXIT_FAILED, Outcome, Sandbox, TAG_VAR, signal, unique_tag, wait_until};
use nix::sys::signal::Signal;

/// Well under the jobs' own length (tens of seconds): an exit before it is a stop.
const STOPPED_WITHIN: Duration = Duration::from_secs(15);

/// Threads of process `pid` (1 for a single-threaded process, 0 once it is gone).
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// The last stderr line, which holds the error.
fn last_line(out: &Outcome) -> &str {
    out.stderr.lines().last().unwrap_or_default()
}

/// Asserts an interrupted run: `code`, a message naming the signal and `phase`, and fewer
/// than all `n` elements done.
fn assert_interrupted(out: &Outcome, code: i32, sig: Signal, phase: &str, n: &str) {
    out.assert_code(code);
    let line = last_line(out);
    assert!(
        line.contains(&format!("interrupted by {}", sig.as_str())) && line.contains(phase),
        "{}: expected an interruption {phase}, got:\n{}",
        out.args,
        out.stderr
    );
    assert!(
        !line.contains(&format!("{n} of {n} elements")),
        "stopped before the end: {line}"
    );
    assert!(out.stdout.is_empty(), "no report after an interruption");
}

/// Runs procpool with `args` in a sandbox, calls `until(pid, tag)` to wait for the phase,
/// sends `sig`, and asserts the interruption of `phase` (exit 128 + `sig`) with nothing
/// left behind.
fn interrupt_when(args: &[&str], until: impl FnOnce(u32, &str), sig: Signal, phase: &str) {
    let sandbox = Sandbox::new();
    let n = args
        .iter()
        .find(|a| a.chars().all(|c| c.is_ascii_digit()) && a.len() > 3)
        .copied()
        .unwrap_or_default();
    let out = sandbox
        .command(args)
        .deadline(STOPPED_WITHIN)
        .run_while(|pid, tag| {
            until(pid, tag);
            signal(pid, sig);
        });
    assert_interrupted(&out, 128 + sig as i32, sig, phase, n);
    sandbox.assert_nothing_left(&out);
}

/// Waits until procpool runs more than one thread (the threads run has begun).
fn threads_started(pid: u32) {
    let running = wait_until(Duration::from_secs(10), || threads_of(pid) >= 3);
    assert!(running, "the two threads never started");
}

#[test]
fn sigint_during_the_threads_run_exits_130() {
    // 10^6 elements of 50 µs: 25 s of work on two threads.
    let args = [
        "--mode",
        "threads",
        "--workers",
        "2",
        "spin",
        "1000000",
        "--us",
        "50",
    ];
    let until = |pid, _: &str| threads_started(pid);
    interrupt_when(&args, until, Signal::SIGINT, "during the threads run");
}

#[test]
fn sigterm_during_the_baseline_after_a_threads_run_exits_143() {
    // The threads run takes about 1 s (2 threads), then the single-process baseline 2 s; the
    // signal goes when the threads are gone, so it lands in the baseline.
    let args = [
        "--mode",
        "threads",
        "--workers",
        "2",
        "spin",
        "40000",
        "--us",
        "50",
    ];
    let until = |pid, _: &str| {
        threads_started(pid);
        // About 1 s of work; a machine loaded by other builds may take many times that.
        let finished = wait_until(Duration::from_secs(60), || threads_of(pid) == 1);
        assert!(finished, "the threads run never finished");
    };
    interrupt_when(
        &args,
        until,
        Signal::SIGTERM,
        "during the single-process run",
    );
}

#[test]
fn sigint_during_the_single_process_mode_exits_130() {
    let args = ["--mode", "single", "spin", "1000000", "--us", "50"];
    let until = |_, _: &str| std::thread::sleep(Duration::from_millis(500));
    interrupt_when(
        &args,
        until,
        Signal::SIGINT,
        "during the single-process job",
    );
}

#[test]
fn sigint_during_the_baseline_after_the_pool_exits_130_and_stops_the_workers() {
    // The pool (one worker) computes 2 s of spin, then the baseline another 2 s: the
    // worker idles (its CPU time stops growing) while procpool runs the baseline.
    let args = ["--workers", "1", "spin", "40000", "--us", "50"];
    let until = |_, tag: &str| {
        let worker = || common::tagged_workers(tag).first().copied();
        let started = wait_until(Duration::from_secs(10), || worker().is_some());
        assert!(started, "the worker never started");
        let worker = worker().unwrap_or_default();
        // The pool's run is over when the worker has computed and gone idle while
        // procpool keeps computing: its CPU time stands still for 300 ms.
        let cpu = |p: u32| -> u64 {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
                })
                .unwrap_or(0)
        };
        let idle = wait_until(Duration::from_secs(40), || {
            let before = cpu(worker);
            std::thread::sleep(Duration::from_millis(300));
            before > 0 && cpu(worker) == before
        });
        assert!(idle, "the worker never finished the pool's run");
    };
    interrupt_when(
        &args,
        until,
        Signal::SIGINT,
        "during the single-process run",
    );
}

#[test]
fn a_second_signal_during_output_exits_at_once_and_leaves_no_partial_file() {
    let sandbox = Sandbox::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("out.bin");
    std::fs::write(&file, b"an older file").expect("write the older file");
    let path = file.to_str().expect("UTF-8 path").to_string();
    let args = [
        "--workers",
        "2",
        "spin",
        "1000000",
        "--us",
        "20",
        "--window-size",
        "64KiB",
        "--grace",
        "10s",
        "--output",
        &path,
    ];
    let out = sandbox
        .command(&args)
        .deadline(STOPPED_WITHIN)
        .run_while(|pid, tag| {
            // Windows are being written: the workers are serving the job.
            let serving = wait_until(Duration::from_secs(20), || {
                common::tagged_workers(tag).len() == 2
            });
            assert!(serving, "the workers never started");
            std::thread::sleep(Duration::from_millis(500));
            // The first asks to stop; the workers are busy and get a 10 s grace; the
            // second exits at once.
            signal(pid, Signal::SIGINT);
            std::thread::sleep(Duration::from_millis(100));
            signal(pid, Signal::SIGINT);
        });
    out.assert_code(130);
    assert_eq!(
        std::fs::read(&file).expect("the older file is still there"),
        b"an older file",
        "the older file is left as it was, and no partial output replaced it"
    );
    let others: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list the output directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|name| name != "out.bin")
        .collect();
    assert!(others.is_empty(), "left beside the output: {others:?}");
    sandbox.assert_swept_after_sudden_death(&out.tag, &out.args);
}

#[test]
fn a_write_past_the_file_size_limit_is_an_error_and_leaves_no_file() {
    // `ulimit -f 256`: 256 KiB in bash, 128 KiB in a POSIX sh's 512-byte blocks. The ring
    // of 3 × 4 KiB windows fits; the 800 kB output does not.
    let dir = tempfile::tempdir().expect("temp dir");
    let tmpdir = tempfile::tempdir().expect("temp dir for TMPDIR");
    let file = dir.path().join("out.bin");
    let tag = unique_tag();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"ulimit -f 256 && exec "$0" "$@""#)
        .arg(EXE)
        .args([
            "--workers",
            "2",
            "squares",
            "1e5",
            "--window-size",
            "4KiB",
            "--output",
        ])
        .arg(&file)
        .env(TAG_VAR, &tag)
        .env("TMPDIR", tmpdir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run procpool under ulimit -f");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let status = common::wait_child(&mut child, Duration::from_secs(60));
    let stderr = reader.join().unwrap_or_default();
    common::kill_tagged(&tag);
    let status = status.expect("procpool under ulimit -f finished");
    // Not killed by SIGXFSZ: a clean exit 1 with a message.
    assert_eq!(status.code(), Some(EXIT_FAILED), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("File too large") && stderr.contains("ulimit -f"),
        "{stderr}"
    );
    assert!(!file.exists(), "no partial file");
    common::assert_no_tagged_process(&tag, "procpool under ulimit -f");
    assert!(
        common::dir_entries(tmpdir.path()).is_empty(),
        "left in TMPDIR: {:?}",
        common::dir_entries(tmpdir.path())
    );
}
