//! Bad input is refused before anything starts: exit code 2 and one line on stderr that
//! names the flag or the value.
//!
//! How we know no worker was started: every refused run gets a `TMPDIR` that does not
//! exist. Starting a worker begins with creating its handshake socket under `TMPDIR`, which
//! then fails, so a run that got as far as starting a worker could not end with exit code 2
//! and the validation message (`a_run_past_validation_cannot_start_workers_without_tmpdir`
//! checks that this tripwire works). The environment tag then shows nothing is running.

mod common;

use common::{EXIT_OK, EXIT_USAGE, Procpool, assert_no_tagged_process, procpool};

/// Runs procpool with `args`, expects a refusal, and returns its one-line message.
fn refused(args: &[&str]) -> String {
    refused_by(Procpool::new(args))
}

/// Runs `procpool` (e.g. with a resource limit), expects a refusal, and returns its
/// one-line message.
fn refused_by(procpool: Procpool) -> String {
    let scratch = tempfile::tempdir().expect("temp dir");
    let missing_tmpdir = scratch.path().join("does-not-exist");
    let out = procpool.env("TMPDIR", &missing_tmpdir).run();
    out.assert_code(EXIT_USAGE);
    let line = out.one_line_error().to_string();
    assert!(
        out.stdout.is_empty(),
        "{}: a refused run prints no report, got:\n{}",
        out.args,
        out.stdout
    );
    assert!(
        !missing_tmpdir.exists(),
        "{}: a refused run creates nothing",
        out.args
    );
    assert_no_tagged_process(&out.tag, &out.args);
    assert_flags_only(&line);
    line
}

/// The library names its options in backticks (`` `workers` ``); the command line must
/// show its flags instead, whichever layer refused.
fn assert_flags_only(line: &str) {
    let library_names = [
        "`workers`",
        "`inflight`",
        "`chunk_size`",
        "`chunk_timeout`",
        "`handshake_timeout`",
        "`faults`",
        "`repeat`",
        "`warmup`",
        "`mode`",
        "`start`",
        "`schedule`",
        "`transport`",
        "`output`",
        "`baseline`",
        "`max_restarts`",
    ];
    for name in library_names {
        assert!(
            !line.contains(name),
            "the command line shows flags, not the library's {name}: {line}"
        );
    }
}

fn assert_names(line: &str, words: &[&str]) {
    for word in words {
        assert!(line.contains(word), "message must name `{word}`: {line}");
    }
}

#[test]
fn worker_count_zero_is_refused_with_exit_2() {
    let line = refused(&["--workers", "0", "squares", "10"]);
    assert_names(&line, &["--workers", "0"]);
}

#[test]
fn worker_count_that_is_not_a_number_is_refused_with_exit_2() {
    let line = refused(&["--workers", "abc", "squares", "10"]);
    assert_names(&line, &["--workers", "abc"]);
}

#[test]
fn worker_count_zero_after_the_workload_is_refused_with_exit_2() {
    let line = refused(&["squares", "10", "--workers", "0"]);
    assert_names(&line, &["--workers", "0"]);
}

#[test]
fn negative_n_is_refused_with_exit_2() {
    let line = refused(&["--workers", "2", "squares", "-5"]);
    assert_names(&line, &["-5"]);
}

#[test]
fn fractional_n_is_refused_with_exit_2() {
    let line = refused(&["--workers", "2", "squares", "1.5"]);
    assert_names(&line, &["1.5"]);
}

#[test]
fn non_numeric_n_is_refused_with_exit_2() {
    let line = refused(&["--workers", "2", "squares", "abc"]);
    assert_names(&line, &["abc"]);
}

#[test]
fn n_too_large_for_memory_is_refused_saying_what_is_needed_and_what_there_is() {
    // 10^13 squares need 80 TB of results (and as much again for the baseline).
    for args in [
        &["--workers", "2", "squares", "1e13"][..],
        &["--workers", "2", "squares", "1e13", "--no-baseline"][..],
    ] {
        let line = refused(args);
        assert!(
            line.contains("1e13") || line.contains("10000000000000"),
            "names n: {line}"
        );
        assert!(
            line.contains("TiB"),
            "says how much is needed (tens of TiB): {line}"
        );
        assert!(
            line.contains("machine has"),
            "says how much there is: {line}"
        );
    }
}

#[test]
fn unknown_workload_is_refused_with_exit_2() {
    let line = refused(&["--workers", "2", "cubes", "10"]);
    assert_names(&line, &["cubes"]);
}

#[test]
fn chunk_size_zero_is_refused_with_exit_2() {
    let line = refused(&["--workers", "2", "--chunk-size", "0", "squares", "10"]);
    assert_names(&line, &["--chunk-size", "0"]);
}

#[test]
fn inflight_zero_is_refused_with_exit_2() {
    let line = refused(&["--workers", "2", "--inflight", "0", "squares", "10"]);
    assert_names(&line, &["--inflight", "0"]);
}

#[test]
fn results_through_the_channel_with_the_queue_are_refused_naming_both_flags() {
    let line = refused(&[
        "--dispatch",
        "queue",
        "--transport",
        "channel",
        "squares",
        "10",
    ]);
    assert_names(&line, &["--transport channel", "--dispatch channel"]);
}

#[test]
fn a_fixed_inflight_without_channel_dispatch_is_refused() {
    let line = refused(&["--inflight", "4", "squares", "10"]);
    assert_names(&line, &["--inflight 4", "--dispatch channel"]);
}

#[test]
fn recycling_limits_of_zero_are_refused_naming_the_flag() {
    let line = refused(&["--max-chunks-per-worker", "0", "squares", "10"]);
    assert_names(&line, &["--max-chunks-per-worker", "0"]);
    let line = refused(&["--max-worker-rss", "0", "squares", "10"]);
    assert_names(&line, &["--max-worker-rss", "0"]);
}

#[test]
fn unknown_fault_action_is_refused_with_exit_2() {
    let line = refused(&["--workers", "2", "squares", "10", "--inject", "boom@1"]);
    assert_names(&line, &["--inject", "boom"]);
}

#[test]
fn handshake_timeout_without_a_unit_is_refused_with_exit_2() {
    let line = refused(&[
        "--workers",
        "2",
        "squares",
        "10",
        "--handshake-timeout",
        "5",
    ]);
    assert_names(&line, &["--handshake-timeout", "5"]);
}

#[test]
fn unexpected_extra_argument_is_refused_with_exit_2() {
    let line = refused(&["--workers", "2", "squares", "10", "extra"]);
    assert_names(&line, &["extra"]);
}

#[test]
fn missing_n_is_refused_naming_the_missing_argument() {
    let line = refused(&["--workers", "2", "squares"]);
    assert_names(&line, &["<N>"]);
}

#[test]
fn no_arguments_at_all_say_a_workload_is_needed() {
    let line = refused(&[]);
    assert!(
        line.contains("squares") || line.contains("workload") || line.contains("subcommand"),
        "says a workload is missing: {line}"
    );
}

/// The tripwire behind every test above: a run that gets past validation does try to
/// create a handshake socket under `TMPDIR`, and fails without one.
#[test]
fn a_run_past_validation_cannot_start_workers_without_tmpdir() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let out = Procpool::new(&["--workers", "1", "squares", "10"])
        .env("TMPDIR", scratch.path().join("does-not-exist"))
        .env("RUST_BACKTRACE", "0")
        .run();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert_ne!(out.code, Some(EXIT_USAGE), "{out:?}");
    assert_no_tagged_process(&out.tag, &out.args);
}

#[test]
fn unusable_tmpdir_is_a_one_line_error_with_exit_1() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let missing = scratch.path().join("does-not-exist");
    let out = Procpool::new(&["--workers", "1", "squares", "10"])
        .env("TMPDIR", &missing)
        .env("RUST_BACKTRACE", "0")
        .run();
    out.assert_code(common::EXIT_FAILED);
    let line = out.one_line_error();
    assert!(
        line.contains(&*missing.to_string_lossy()) || line.contains("TMPDIR"),
        "names the directory: {line}"
    );
    assert_no_tagged_process(&out.tag, &out.args);
}

#[test]
fn durations_longer_than_a_year_are_refused_naming_the_flag_and_the_limit() {
    for flag in ["--timeout", "--grace", "--handshake-timeout"] {
        let line = refused(&[
            "--workers",
            "2",
            "squares",
            "10",
            flag,
            "10000000000000000000s",
        ]);
        assert_names(&line, &[flag, "10000000000000000000s", "at most 365 days"]);
    }
}

#[test]
fn a_zero_timeout_is_refused_saying_how_to_have_none() {
    let line = refused(&["--workers", "2", "squares", "10", "--timeout", "0s"]);
    assert_names(
        &line,
        &["--timeout", "0s", "at least 1ms", "omit --timeout"],
    );
    let line = refused(&[
        "--workers",
        "2",
        "squares",
        "10",
        "--handshake-timeout",
        "0ms",
    ]);
    assert_names(&line, &["--handshake-timeout", "0ms", "at least 1ms"]);
}

#[test]
fn round_counts_that_would_overflow_are_refused_naming_the_flag() {
    let line = refused(&[
        "--workers",
        "2",
        "squares",
        "10",
        "--warmup",
        "18446744073709551615",
        "--repeat",
        "2",
    ]);
    assert_names(
        &line,
        &["--warmup", "18446744073709551615", "at most 10000"],
    );
    let line = refused(&["--workers", "2", "squares", "10", "--repeat", "1e6"]);
    assert_names(&line, &["--repeat", "1000000", "at most 10000"]);
    let line = refused(&[
        "--workers",
        "2",
        "squares",
        "10",
        "--warmup",
        "6000",
        "--repeat",
        "6000",
    ]);
    assert_names(&line, &["--warmup 6000", "--repeat 6000", "at most 10000"]);
}

#[test]
fn negative_counts_are_refused_naming_the_flag() {
    for flag in [
        "--workers",
        "--chunk-size",
        "--inflight",
        "--repeat",
        "--warmup",
        "--retries",
        "--max-restarts",
    ] {
        for args in [
            &[flag, "-1", "squares", "10"][..],
            &["squares", "10", flag, "-1"][..],
        ] {
            let line = refused(args);
            assert_names(&line, &[flag, "-1", "negative"]);
        }
    }
    let line = refused(&["spin", "10", "--us", "-1"]);
    assert_names(&line, &["--us", "-1"]);
}

#[test]
fn negative_rank_counts_and_node_sizes_are_value_errors_naming_the_flag() {
    // Parsed in every build, with the mpi feature or without: a value error, not an
    // "unexpected argument".
    for flag in ["--ranks", "--mpi-node-size"] {
        for args in [
            &["--backend", "mpi", flag, "-1", "squares", "10"][..],
            &["squares", "10", "--backend", "mpi", flag, "-1"][..],
        ] {
            let line = refused(args);
            assert_names(&line, &[flag, "`-1` is negative", "≥ 1"]);
        }
    }
    let line = refused(&["--backend", "mpi", "--ranks", "1", "squares", "10"]);
    assert_names(&line, &["--ranks", "at least 2", "rank 0 and a worker"]);
    let line = refused(&["--backend", "mpi", "--ranks", "5000", "squares", "10"]);
    assert_names(&line, &["--ranks", "at most 4096"]);
}

#[test]
fn work_per_element_beyond_an_hour_is_refused_naming_the_flag_and_the_limit() {
    let line = refused(&["--workers", "1", "spin", "2", "--us", "1e300"]);
    assert_names(&line, &["--us", "1e300", "1 hour"]);
    let line = refused(&["--workers", "1", "sleep", "2", "--ms", "1e300"]);
    assert_names(&line, &["--ms", "1e300", "1 hour"]);
    let line = refused(&["--workers", "1", "sleep", "2", "--ms", "inf"]);
    assert_names(&line, &["--ms", "inf"]);
}

#[test]
fn results_larger_than_the_address_space_limit_are_refused_naming_ulimit_v() {
    // 4e7 squares need 2 × 305 MiB (results and baseline): well within this machine's memory,
    // not within 512 MiB of address space, which procpool itself needs little of.
    let line = refused_by(
        Procpool::new(&["--workers", "2", "squares", "4e7"])
            .rlimit(nix::sys::resource::Resource::RLIMIT_AS, 512 << 20),
    );
    assert_names(
        &line,
        &[
            "40000000",
            "610.4 MiB",
            "ulimit -v",
            "512 MiB",
            "--no-baseline",
        ],
    );
}

#[test]
fn threads_beyond_the_process_limit_are_refused_naming_ulimit_u() {
    let line = refused_by(
        Procpool::new(&["--mode", "threads", "--workers", "1000", "squares", "10"])
            .rlimit(nix::sys::resource::Resource::RLIMIT_NPROC, 100),
    );
    assert_names(&line, &["--workers 1000", "ulimit -u", "100"]);
}

#[test]
fn a_million_threads_are_refused_naming_the_most_allowed() {
    let line = refused(&["--mode", "threads", "--workers", "1e6", "squares", "10"]);
    assert_names(
        &line,
        &["--workers 1000000", "at most 4096", "--mode processes"],
    );
}

#[test]
fn a_fault_at_a_chunk_the_job_does_not_have_is_refused_naming_the_count() {
    // 100 elements on 2 workers: 8 chunks of 13 by default, 10 of 10.
    let line = refused(&["--workers", "2", "squares", "100", "--inject", "kill@999"]);
    assert_names(&line, &["--inject", "kill@999", "only 8 chunks"]);
    let line = refused(&[
        "--workers",
        "2",
        "--chunk-size",
        "10",
        "--schedule",
        "static",
        "squares",
        "100",
        "--inject",
        "kill@10:always",
    ]);
    assert_names(&line, &["--inject", "kill@10:always", "only 10 chunks"]);
}

/// With `--chunk-size auto` the chunk count is known only once the probes are measured, so
/// the workers have started; they are stopped and reaped, and the exit code is still 2.
#[test]
fn a_fault_beyond_a_measured_chunk_count_is_refused_and_nothing_is_left() {
    let sandbox = common::Sandbox::new();
    let out = sandbox.run(&[
        "--workers",
        "2",
        "--chunk-size",
        "auto",
        "squares",
        "1000",
        "--inject",
        "kill@99999",
    ]);
    out.assert_code(EXIT_USAGE);
    assert_names(
        out.one_line_error(),
        &["--inject", "kill@99999", "chunks (0 to"],
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    sandbox.assert_nothing_left(&out);
}

#[test]
fn a_misspelt_flag_is_named_with_its_correction_before_or_after_n() {
    for args in [
        &["squares", "--wrkers", "2", "1e6"][..],
        &["squares", "1e6", "--wrkers", "2"][..],
        &["--wrkers", "2", "squares", "1e6"][..],
    ] {
        let line = refused(args);
        assert_names(&line, &["--wrkers", "--workers"]);
    }
}

#[test]
fn an_option_a_tool_does_not_use_is_refused_naming_it_and_the_tool() {
    for (args, flag, tool) in [
        (
            &["ipc-bench", "--workers", "8"][..],
            "--workers",
            "ipc-bench",
        ),
        (
            &["ipc-bench", "--inject", "kill@3"][..],
            "--inject",
            "ipc-bench",
        ),
        (
            &["ipc-bench", "--output", "/tmp/x"][..],
            "--output",
            "ipc-bench",
        ),
        (
            &["--workers", "8", "ipc-bench"][..],
            "--workers",
            "ipc-bench",
        ),
        (&["list", "--repeat", "3"][..], "--repeat", "list"),
        (&["--pin", "list"][..], "--pin", "list"),
        (&["generate", "man", "--json"][..], "--json", "generate man"),
        (
            &["generate", "completions", "bash", "--workers", "2"][..],
            "--workers",
            "generate completions",
        ),
        (
            &["sweep", "mandelbrot", "10", "--image", "x.png"][..],
            "--image",
            "sweep mandelbrot",
        ),
    ] {
        let line = refused(args);
        assert_names(&line, &[flag, &format!("`procpool {tool}` does not use")]);
    }
}

#[test]
fn a_tool_refusing_an_option_lists_the_ones_it_takes() {
    let line = refused(&["ipc-bench", "--workers", "8"]);
    assert_names(&line, &["--round-trips", "--no-pin", "--sizes", "--json"]);
    let line = refused(&["generate", "man", "--json"]);
    assert_names(&line, &["no options"]);
}

#[test]
fn a_window_size_without_output_is_refused_naming_both_flags() {
    let line = refused(&["--workers", "1", "squares", "10", "--window-size", "1MiB"]);
    assert_names(&line, &["--window-size", "--output"]);
}

#[test]
fn process_options_with_threads_or_a_single_process_are_refused_naming_the_mode() {
    for (args, flag) in [
        (
            &["--mode", "threads", "--start", "fork", "squares", "10"][..],
            "--start",
        ),
        (
            &[
                "--mode",
                "threads",
                "--dispatch",
                "channel",
                "squares",
                "10",
            ],
            "--dispatch",
        ),
        (
            &["--mode", "threads", "--timeout", "1s", "squares", "10"],
            "--timeout",
        ),
        (
            &[
                "squares",
                "10",
                "--mode",
                "threads",
                "--max-chunks-per-worker",
                "3",
            ],
            "--max-chunks-per-worker",
        ),
        (
            &["--mode", "single", "--workers", "4", "squares", "10"],
            "--workers",
        ),
        (
            &["--mode", "single", "--schedule", "static", "squares", "10"],
            "--schedule",
        ),
    ] {
        let line = refused(args);
        assert!(
            line.contains(flag) && line.contains("--mode processes"),
            "{args:?}: {line}"
        );
    }
    // What threads do use stays accepted.
    procpool(&[
        "--mode",
        "threads",
        "--workers",
        "2",
        "--schedule",
        "static",
        "squares",
        "10",
    ])
    .assert_code(EXIT_OK);
}

#[test]
fn process_options_with_the_mpi_backend_are_refused_naming_it() {
    // Refused while parsing, in every build: nothing starts, mpirun or not.
    for (args, flag) in [
        (
            &["--backend", "mpi", "--timeout", "1s", "hash", "10"][..],
            "--timeout",
        ),
        (
            &["--backend", "mpi", "--retries", "0", "hash", "10"],
            "--retries",
        ),
        (
            &["--backend", "mpi", "--mode", "threads", "hash", "10"],
            "--mode",
        ),
        (
            &["hash", "10", "--backend", "mpi", "--grace", "1s"],
            "--grace",
        ),
        (
            &["--backend", "mpi", "--workers", "4", "hash", "10"],
            "--workers",
        ),
    ] {
        let line = refused(args);
        assert!(
            line.contains(flag) && line.contains("--backend mpi") && line.contains("mpirun -np K"),
            "{args:?}: {line}"
        );
    }
    // And the MPI backend's own options on the process backend.
    for flag in [
        &["--mpi-node-size", "1"][..],
        &["--mpi-route", "send"],
        &["--ranks", "3"],
    ] {
        let line = refused(&[flag, &["hash", "10"][..]].concat());
        assert!(
            line.contains(flag[0]) && line.contains("--backend mpi"),
            "{flag:?}: {line}"
        );
    }
}
