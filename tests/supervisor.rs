//! The supervisor survives dead, hung and interrupted workers, with real processes and real
//! signals: workers killed from outside, injected panics, aborts and hangs, Ctrl-C and
//! SIGTERM to procpool, and procpool itself SIGKILLed.

mod common;

use std::time::{Duration, Instant};

use common::{EXIT_FAILED, EXIT_OK, Sandbox, signal, squares_checksum, wait_until};
use nix::sys::signal::Signal;

/// Worker processes of a tagged run (procpool itself excluded).
fn workers(tag: &str) -> Vec<u32> {
    common::tagged_workers(tag)
}

/// Waits until `count` workers of the run have started serving: each has mapped the shared
/// region (`memfd:procpool-results` in its memory map), which it does only after its
/// handshake.
fn wait_for_workers(tag: &str, count: usize) -> Vec<u32> {
    let serving = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .is_ok_and(|maps| maps.contains("procpool-results"))
    };
    let mut found = Vec::new();
    let ok = wait_until(Duration::from_secs(30), || {
        found = workers(tag);
        found.iter().filter(|p| serving(p)).count() >= count
    });
    assert!(ok, "only {} of {count} workers started", found.len());
    found
}

fn worker_sigkilled_from_outside_mid_run_is_replaced_and_the_run_verifies(dispatch: &'static str) {
    // A chunk that hangs once (no --timeout): the run cannot finish until someone kills the
    // hung worker. We kill every worker from outside; the retried chunk then runs normally.
    let sandbox = Sandbox::with_dispatch(dispatch);
    let out = sandbox
        .command(&[
            "--workers",
            "2",
            "squares",
            "1e5",
            "--inject",
            "hang@0",
            "--json",
        ])
        .run_while(|pid, tag| {
            // Kill every worker, again every 300 ms while the run lasts (at most 5 times): a
            // round that comes before any worker took chunk 0 (the queue hands out nothing
            // until workers claim) leaves it to the next.
            wait_for_workers(tag, 2);
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(300));
                if common::cmdline(pid).is_empty() {
                    return;
                }
                for worker in workers(tag) {
                    signal(worker, Signal::SIGKILL);
                }
            }
        });
    out.assert_code(EXIT_OK);
    let report = out.json();
    assert_eq!(report["verified"], true, "{report}");
    assert!(report["restarts"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["retried_chunks"].as_u64().unwrap() >= 1, "{report}");
    let causes = report["deaths"].to_string();
    assert!(causes.contains("killed by SIGKILL"), "{report}");
    assert!(out.stderr.contains("killed by SIGKILL"), "{}", out.stderr);
    sandbox.assert_nothing_left(&out);
}

fn injected_panic_abort_segv_and_hang_are_each_recovered(dispatch: &'static str) {
    for (fault, extra, cause) in [
        ("panic@1", Some("--retry-panics"), "panicked (replaced)"),
        ("abort@1", None, "killed by SIGABRT"),
        ("segv@1", None, "killed by SIGSEGV"),
        ("hang@1", Some("300ms"), "timed out after 300ms"),
    ] {
        let sandbox = Sandbox::with_dispatch(dispatch);
        let mut args = vec![
            "--workers",
            "2",
            "squares",
            "1e5",
            "--json",
            "--inject",
            fault,
        ];
        match extra {
            Some("--retry-panics") => args.push("--retry-panics"),
            Some(timeout) => args.extend(["--timeout", timeout]),
            None => {}
        }
        let out = sandbox.command(&args).env("RUST_BACKTRACE", "0").run();
        out.assert_code(EXIT_OK);
        let report = out.json();
        assert_eq!(report["verified"], true, "{fault}: {report}");
        assert_eq!(report["restarts"], 1, "{fault}: {report}");
        let death = &report["deaths"][0];
        assert!(
            death["cause"].as_str().unwrap().contains(cause),
            "{fault}: expected `{cause}` in {death}"
        );
        assert_eq!(death["chunk"], 1, "{fault}: {death}");
        assert_ne!(death["replaced_by"], serde_json::Value::Null, "{death}");
        sandbox.assert_nothing_left(&out);
    }
}

fn a_kernel_panic_is_one_error_naming_the_chunk_the_message_and_where(dispatch: &'static str) {
    let sandbox = Sandbox::with_dispatch(dispatch);
    let out = sandbox
        .command(&["--workers", "2", "squares", "1e4", "--inject", "panic@0"])
        .env("RUST_BACKTRACE", "1")
        .run();
    // Not retried: the same input would panic again.
    out.assert_code(EXIT_FAILED);
    let line = out.one_line_error();
    assert!(
        line.contains("the kernel panicked on chunk 0 (elements 0..")
            && line.contains("injected panic at chunk 0")
            && line.contains("(at src/engine/fault.rs:"),
        "{line}"
    );
    // Said once, with no backtrace: the worker's own panic output is kept quiet.
    assert_eq!(
        out.stderr.matches("injected panic").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("stack backtrace"), "{}", out.stderr);
    sandbox.assert_nothing_left(&out);
}

fn retries_and_restarts_are_bounded(dispatch: &'static str) {
    // --retries 0: the first death of the chunk fails the run.
    let sandbox = Sandbox::with_dispatch(dispatch);
    let out = sandbox.run(&[
        "--workers",
        "2",
        "squares",
        "1e4",
        "--inject",
        "exit@2:always",
        "--retries",
        "0",
    ]);
    out.assert_code(EXIT_FAILED);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("chunk 2 ") && last.contains("failed 1 time,"),
        "{}",
        out.stderr
    );
    sandbox.assert_nothing_left(&out);

    // --max-restarts 2 stops a run whose chunks keep killing workers, before the retries do.
    let sandbox = Sandbox::with_dispatch(dispatch);
    let out = sandbox.run(&[
        "--workers",
        "2",
        "squares",
        "1e4",
        "--inject",
        "kill@2:always",
        "--retries",
        "100",
        "--max-restarts",
        "2",
    ]);
    out.assert_code(EXIT_FAILED);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("--max-restarts 2"), "{}", out.stderr);
    sandbox.assert_nothing_left(&out);
}

/// The worker whose chunk hangs: the one sleeping in the kernel's nanosleep, while the
/// others, with nothing left to do, wait on the queue's futex (or their channel).
fn hung_worker(tag: &str) -> Option<u32> {
    workers(tag).into_iter().find(|&pid| {
        std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("nanosleep"))
    })
}

fn a_worker_killed_holding_a_claimed_chunk_is_replaced_and_its_chunk_retried(
    dispatch: &'static str,
) {
    // Chunk 3 hangs once: its worker holds the claim while it sleeps. Kill that worker (no
    // --timeout): the chunk must go back to the queue, run again and verify.
    let sandbox = Sandbox::with_dispatch(dispatch);
    let out = sandbox
        .command(&[
            "--workers",
            "2",
            "--chunk-size",
            "1000",
            "squares",
            "1e5",
            "--inject",
            "hang@3",
            "--json",
        ])
        .run_while(|_, tag| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Some(pid) = hung_worker(tag) {
                    signal(pid, Signal::SIGKILL);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("no worker ever held chunk 3 hanging");
        });
    out.assert_code(EXIT_OK);
    let report = out.json();
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["checksum"], squares_checksum(100_000), "{report}");
    assert_eq!(report["restarts"], 1, "{report}");
    assert!(report["retried_chunks"].as_u64() >= Some(1), "{report}");
    let death = &report["deaths"][0];
    assert_eq!(death["chunk"], 3, "{death}");
    assert!(
        death["cause"]
            .as_str()
            .unwrap()
            .contains("killed by SIGKILL"),
        "{death}"
    );
    sandbox.assert_nothing_left(&out);
}

fn workers_are_recycled_after_n_chunks_and_past_a_memory_cap_without_a_death(
    dispatch: &'static str,
) {
    // 100 chunks, a fresh process every 7 chunks: about 100 / 7 recycles.
    let sandbox = Sandbox::with_dispatch(dispatch);
    let mut base = vec![
        "--workers",
        "2",
        "--chunk-size",
        "1000",
        "squares",
        "1e5",
        "--json",
    ];
    if dispatch == "channel" {
        // A retiring worker finishes the chunks already sent to it: with the automatic
        // depth (up to 16 on a loaded machine) a process could do 7 + 16 chunks. One in
        // flight keeps it to the limit and one more.
        base.extend(["--inflight", "1"]);
    }
    let mut args = base.clone();
    args.extend(["--max-chunks-per-worker", "7"]);
    let out = sandbox.run(&args);
    out.assert_code(EXIT_OK);
    let r = out.json();
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["checksum"], squares_checksum(100_000), "{r}");
    assert_eq!(r["restarts"], 0, "a recycle is not a death: {r}");
    assert_eq!(r["deaths"].as_array().map(Vec::len), Some(0), "{r}");
    let recycles = r["recycles"].as_u64().unwrap();
    assert!((6..=100).contains(&recycles), "{recycles} recycles: {r}");
    sandbox.assert_nothing_left(&out);

    // A cap of one byte of resident memory: every process retires after one chunk.
    let mut args = base.clone();
    args.extend(["--max-worker-rss", "1"]);
    let out = sandbox.run(&args);
    out.assert_code(EXIT_OK);
    let r = out.json();
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["restarts"], 0, "{r}");
    assert!(r["recycles"].as_u64().unwrap() >= 10, "{r}");
    sandbox.assert_nothing_left(&out);
}

/// SIGINT or SIGTERM mid-run: exit code 128 + signal, a line saying what was done, and every
/// worker (even a hung one that ignores the stop message) stopped and reaped.
fn stop_mid_run(sig: Signal, code: i32, dispatch: &'static str) {
    let sandbox = Sandbox::with_dispatch(dispatch);
    let out = sandbox
        .command(&[
            "--workers",
            "2",
            "squares",
            "1e5",
            "--inject",
            "hang@0:always",
            "--grace",
            "200ms",
        ])
        .deadline(Duration::from_secs(30))
        .run_while(|pid, tag| {
            wait_for_workers(tag, 2);
            // Mid-run: a worker is inside the hanging chunk 0.
            assert!(wait_until(Duration::from_secs(20), || hung_worker(tag).is_some()));
            signal(pid, sig);
        });
    out.assert_code(code);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("interrupted by {}", sig.as_str())) && last.contains(" done ("),
        "{}",
        out.stderr
    );
    // The hung worker ignored the stop message and needed SIGTERM.
    assert!(last.contains("needed SIGTERM"), "{last}");
    sandbox.assert_nothing_left(&out);
}

fn sigint_mid_run_exits_130_and_stops_every_worker(dispatch: &'static str) {
    stop_mid_run(Signal::SIGINT, 130, dispatch);
}

fn sigterm_mid_run_exits_143_and_stops_every_worker(dispatch: &'static str) {
    stop_mid_run(Signal::SIGTERM, 143, dispatch);
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    // A grace period far longer than the test's patience: only the second SIGINT can end it.
    let sandbox = Sandbox::new();
    let mut ended_after = Duration::ZERO;
    let out = sandbox
        .command(&[
            "--workers",
            "2",
            "squares",
            "1e5",
            "--inject",
            "hang@0:always",
            "--grace",
            "60s",
        ])
        .deadline(Duration::from_secs(30))
        .run_while(|pid, tag| {
            wait_for_workers(tag, 2);
            signal(pid, Signal::SIGINT);
            std::thread::sleep(Duration::from_millis(200));
            let sent = Instant::now();
            signal(pid, Signal::SIGINT);
            wait_until(Duration::from_secs(10), || {
                !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
                    || common::cmdline(pid).is_empty()
            });
            ended_after = sent.elapsed();
        });
    out.assert_code(130);
    assert!(ended_after < Duration::from_secs(10), "{ended_after:?}");
    sandbox.assert_swept_after_sudden_death(&out.tag, &out.args);
}

#[test]
fn sigkilled_procpool_takes_every_worker_with_it_within_a_second() {
    let sandbox = Sandbox::new();
    let mut gone_after = None;
    let out = sandbox
        .command(&[
            "--workers",
            "3",
            "squares",
            "1e5",
            "--inject",
            "hang@0:always",
        ])
        .deadline(Duration::from_secs(30))
        .run_while(|pid, tag| {
            let pids = wait_for_workers(tag, 3);
            signal(pid, Signal::SIGKILL);
            let killed = Instant::now();
            // A dead worker may linger as a zombie until init reaps it; its command line
            // is then empty. Alive means a command line.
            let all_dead = wait_until(Duration::from_secs(5), || {
                pids.iter().all(|p| common::cmdline(*p).is_empty())
            });
            assert!(
                all_dead,
                "workers still alive 5 s after procpool was SIGKILLed"
            );
            gone_after = Some(killed.elapsed());
        });
    assert_eq!(out.code, None, "procpool was killed by a signal");
    let gone_after = gone_after.expect("measured");
    assert!(
        gone_after <= Duration::from_secs(1),
        "workers took {gone_after:?} to die"
    );
    sandbox.assert_swept_after_sudden_death(&out.tag, &out.args);
}

/// `squares 1e5` in chunks of 10000 on `workers` workers with `faults` injected; it must
/// verify within 30 s and leave nothing behind. Its JSON report.
fn verified_despite(dispatch: &'static str, workers: &str, faults: &[&str]) -> serde_json::Value {
    let sandbox = Sandbox::with_dispatch(dispatch);
    let mut args = vec![
        "--workers",
        workers,
        "--chunk-size",
        "10000",
        "squares",
        "1e5",
    ];
    for fault in faults {
        args.extend(["--inject", fault]);
    }
    args.push("--json");
    let out = sandbox
        .command(&args)
        .deadline(Duration::from_secs(30))
        .run();
    out.assert_code(EXIT_OK);
    let report = out.json();
    assert_eq!(report["verified"], true, "{report}");
    sandbox.assert_nothing_left(&out);
    report
}

fn children_a_kernel_leaves_behind_end_with_their_worker(dispatch: &'static str) {
    // Each `fork@K` leaves a child that sleeps holding its worker's output pipe and channel
    // (as a kernel's stray helper would): neither may keep the run from ending, and none
    // may outlive it.
    verified_despite(dispatch, "2", &["fork@1", "fork@6"]);
}

fn a_worker_whose_child_holds_its_channel_is_still_seen_to_die(dispatch: &'static str) {
    // One worker: it forks a child at chunk 0 (the child holds the worker's end of the
    // channel, so the channel never closes), then SIGKILLs itself at chunk 1. The death is
    // seen from the process, the chunk retried, the run verified.
    let report = verified_despite(dispatch, "1", &["fork@0", "kill@1"]);
    assert_eq!(report["restarts"], 1, "{report}");
    assert!(
        report["deaths"].to_string().contains("killed by SIGKILL"),
        "{report}"
    );
}

on_both_dispatches!(
    workers_are_recycled_after_n_chunks_and_past_a_memory_cap_without_a_death,
    a_worker_killed_holding_a_claimed_chunk_is_replaced_and_its_chunk_retried,
    worker_sigkilled_from_outside_mid_run_is_replaced_and_the_run_verifies,
    injected_panic_abort_segv_and_hang_are_each_recovered,
    a_kernel_panic_is_one_error_naming_the_chunk_the_message_and_where,
    retries_and_restarts_are_bounded,
    sigint_mid_run_exits_130_and_stops_every_worker,
    sigterm_mid_run_exits_143_and_stops_every_worker,
    children_a_kernel_leaves_behind_end_with_their_worker,
    a_worker_whose_child_holds_its_channel_is_still_seen_to_die,
);
