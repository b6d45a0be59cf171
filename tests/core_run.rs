//! The pool's output equals the single-process baseline, and the report says so
//! consistently, for every awkward size and worker count.

mod common;

use std::time::Duration;

use common::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, Procpool, close, procpool, squares_checksum};
use serde_json::Value;

/// Every key the JSON report promises.
const KEYS: [&str; 17] = [
    "workload",
    "n",
    "workers",
    "chunk_size",
    "chunks",
    "cores_logical",
    "cores_physical",
    "baseline_wall_s",
    "pool_wall_s",
    "spawn_s",
    "speedup",
    "efficiency",
    "verified",
    "checksum",
    "ipc_messages",
    "ipc_bytes",
    "shm_bytes",
];

fn u64_of(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not an unsigned integer in {report}"))
}

fn f64_of(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {report}"))
}

/// Runs `squares n --workers w [--chunk-size c] --json` and returns the report.
fn json_run(n: u64, workers: usize, chunk_size: Option<u64>) -> Value {
    let (n, w) = (n.to_string(), workers.to_string());
    let mut args = vec!["squares", &n, "--workers", &w, "--json"];
    let c;
    if let Some(cs) = chunk_size {
        c = cs.to_string();
        args.extend(["--chunk-size", &c]);
    }
    let out = procpool(&args);
    out.assert_code(EXIT_OK);
    out.json()
}

/// Checks a verified report of `squares n` on `workers` workers, field by field.
fn check_verified_report(report: &Value, n: u64, workers: usize, chunk_size: Option<u64>) {
    let ctx = format!("n={n} workers={workers} chunk_size={chunk_size:?}: {report}");
    for key in KEYS {
        assert!(report.get(key).is_some(), "missing `{key}`; {ctx}");
    }
    assert_eq!(report["workload"], "squares", "{ctx}");
    assert_eq!(report["verified"], Value::Bool(true), "{ctx}");
    assert_eq!(report["mismatch"], Value::Null, "{ctx}");
    assert_eq!(u64_of(report, "n"), n, "{ctx}");
    assert_eq!(u64_of(report, "workers"), workers as u64, "{ctx}");
    assert_eq!(report["checksum"], squares_checksum(n), "{ctx}");

    let cs = u64_of(report, "chunk_size");
    assert!(cs >= 1, "{ctx}");
    if let Some(expected) = chunk_size {
        assert_eq!(cs, expected, "{ctx}");
    }
    let chunks = u64_of(report, "chunks");
    assert_eq!(
        chunks,
        n.div_ceil(cs),
        "chunks == ceil(n / chunk_size); {ctx}"
    );
    assert_eq!(u64_of(report, "shm_bytes"), 8 * n, "{ctx}");
    if report["dispatch"] == "channel" {
        assert!(
            u64_of(report, "ipc_messages") >= 2 * chunks,
            "a Chunk and a Done per chunk; {ctx}"
        );
    } else {
        // The queue: a handshake and a spec per worker, and at most one wake-up per worker
        // at the end; nothing per chunk.
        assert!(
            u64_of(report, "ipc_messages") <= 4 * workers as u64,
            "no message per chunk; {ctx}"
        );
        assert!(u64_of(report, "claims") >= chunks, "{ctx}");
    }
    assert!(u64_of(report, "ipc_bytes") > 0, "{ctx}");
    assert!(u64_of(report, "cores_logical") >= 1, "{ctx}");
    assert!(
        report["cores_physical"].is_null() || u64_of(report, "cores_physical") >= 1,
        "{ctx}"
    );

    let baseline = f64_of(report, "baseline_wall_s");
    let pool = f64_of(report, "pool_wall_s");
    let spawn = f64_of(report, "spawn_s");
    let speedup = f64_of(report, "speedup");
    let efficiency = f64_of(report, "efficiency");
    assert!(baseline >= 0.0 && pool > 0.0 && spawn >= 0.0, "{ctx}");
    assert!(spawn <= pool, "spawn_s <= pool_wall_s; {ctx}");
    assert!(
        close(speedup, baseline / pool),
        "speedup == baseline_wall_s / pool_wall_s; {ctx}"
    );
    assert!(
        close(efficiency, speedup / workers as f64),
        "efficiency == speedup / workers; {ctx}"
    );
}

#[test]
fn pool_output_equals_baseline_for_awkward_sizes_and_worker_counts() {
    let cases: &[(u64, usize, Option<u64>)] = &[
        (0, 1, None),
        (0, 3, None),
        (1, 1, None),
        (1, 8, None),
        (2, 2, None),
        (3, 8, None), // fewer elements than workers
        (7, 3, None),
        (1001, 3, None),   // odd n
        (99_999, 2, None), // odd n, not a multiple of the default chunk size
        (100_000, 8, None),
        (1_000_000, 2, None),
    ];
    for &(n, w, cs) in cases {
        let report = json_run(n, w, cs);
        check_verified_report(&report, n, w, cs);
    }
}

#[test]
fn explicit_chunk_sizes_are_used_and_the_output_still_matches() {
    let cases: &[(u64, usize, Option<u64>)] = &[
        (999, 3, Some(1)), // one element per chunk
        (1, 2, Some(1)),
        (1000, 2, Some(7)), // 1000 = 142 × 7 + 6: a short last chunk
        (7, 1, Some(7)),    // exactly one chunk
        (6, 2, Some(7)),    // chunk larger than n
        (12_345, 8, Some(1000)),
        (0, 2, Some(7)),
    ];
    for &(n, w, cs) in cases {
        let report = json_run(n, w, cs);
        check_verified_report(&report, n, w, cs);
    }
}

#[test]
fn ten_million_squares_on_two_workers_have_the_known_checksum() {
    let report = json_run(10_000_000, 2, None);
    check_verified_report(&report, 10_000_000, 2, None);
    // Python: hashlib.sha256(b''.join(struct.pack('<Q', i * i) for i in
    // range(10_000_000))).hexdigest()[:16]
    assert_eq!(report["checksum"], "44c76fefa99bcfe5");
    assert_eq!(squares_checksum(10_000_000), "44c76fefa99bcfe5");
}

#[test]
fn json_report_has_every_documented_key() {
    let report = json_run(10_000, 2, None);
    let object = report.as_object().expect("an object");
    for key in KEYS {
        assert!(object.contains_key(key), "missing `{key}` in {report}");
    }
}

#[test]
fn no_baseline_reports_null_speedup_efficiency_verified_and_baseline_time() {
    let out = procpool(&[
        "squares",
        "100000",
        "--workers",
        "2",
        "--json",
        "--no-baseline",
    ]);
    out.assert_code(EXIT_OK);
    let report = out.json();
    for key in ["speedup", "efficiency", "verified", "baseline_wall_s"] {
        assert!(
            report.get(key).is_some_and(Value::is_null),
            "`{key}` must be present and null with --no-baseline: {report}"
        );
    }
    assert_eq!(u64_of(&report, "n"), 100_000);
    assert_eq!(report["checksum"], squares_checksum(100_000));
    assert!(f64_of(&report, "pool_wall_s") > 0.0);
}

#[test]
fn options_are_accepted_after_and_before_the_workload() {
    for args in [
        &["squares", "1e5", "--workers", "2", "--json"][..],
        &["--workers", "2", "--json", "squares", "1e5"][..],
        &["--workers", "2", "squares", "1e5", "--json"][..],
    ] {
        let out = procpool(args);
        out.assert_code(EXIT_OK);
        let report = out.json();
        assert_eq!(u64_of(&report, "workers"), 2, "{args:?}: {report}");
        check_verified_report(&report, 100_000, 2, None);
    }
}

#[test]
fn n_spelled_with_underscores_or_an_exponent_means_the_same_number() {
    for spelling in ["100000", "100_000", "1e5"] {
        let out = procpool(&["squares", spelling, "--workers", "2", "--json"]);
        out.assert_code(EXIT_OK);
        let report = out.json();
        assert_eq!(u64_of(&report, "n"), 100_000, "`{spelling}`: {report}");
        assert_eq!(report["verified"], Value::Bool(true), "`{spelling}`");
    }
}

#[test]
fn text_report_names_speedup_efficiency_verified_and_the_worker_count() {
    let out = procpool(&["--workers", "3", "squares", "100000"]);
    out.assert_code(EXIT_OK);
    for word in ["speedup", "efficiency", "verified", "3 workers"] {
        assert!(
            out.stdout.contains(word),
            "text report lacks `{word}`:\n{}",
            out.stdout
        );
    }
    assert!(
        serde_json::from_str::<Value>(&out.stdout).is_err(),
        "without --json the report is text"
    );
}

#[test]
fn more_workers_than_cores_prints_a_warning() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = procpool(&["--workers", "8", "squares", "100000"]);
    out.assert_code(EXIT_OK);
    let warned = out.stdout.lines().any(|l| l.starts_with("warning:"))
        || out.stderr.lines().any(|l| l.starts_with("warning:"));
    if cores < 8 {
        assert!(
            warned,
            "8 workers on {cores} cores: expected a `warning:` line\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
    } else {
        assert!(!warned, "8 workers on {cores} cores needs no warning");
    }

    let json = procpool(&["--workers", "8", "squares", "100000", "--json"]);
    json.assert_code(EXIT_OK);
    let report = json.json();
    let warnings = report["warnings"].as_array().expect("warnings is a list");
    assert_eq!(!warnings.is_empty(), cores < 8, "{report}");
}

#[test]
fn corrupted_first_element_fails_verification_with_exit_1() {
    let out = procpool(&[
        "--workers",
        "2",
        "squares",
        "1000",
        "--inject",
        "corrupt@0",
        "--json",
    ]);
    out.assert_code(EXIT_FAILED);
    let report = out.json();
    assert_eq!(report["verified"], Value::Bool(false), "{report}");
    let mismatch = &report["mismatch"];
    assert_eq!(mismatch["index"], 0, "{report}");
    let pool = mismatch["pool"].as_str().expect("pool value as a string");
    let baseline = mismatch["baseline"]
        .as_str()
        .expect("baseline value as a string");
    assert_eq!(baseline, "0", "0 * 0; {report}");
    assert_ne!(pool, baseline, "{report}");

    let line = out.one_line_error();
    assert!(line.contains("element 0"), "{line}");
    assert!(
        line.contains(&format!("is {pool} in the pool output")),
        "{line}"
    );
    assert!(
        line.contains(&format!("but {baseline} in the single-process")),
        "{line}"
    );
}

#[test]
fn corrupted_later_chunk_is_reported_at_its_first_index() {
    let out = procpool(&[
        "--workers",
        "3",
        "--chunk-size",
        "100",
        "squares",
        "1000",
        "--inject",
        "corrupt@3",
    ]);
    out.assert_code(EXIT_FAILED);
    let line = out.one_line_error();
    assert!(line.contains("element 300"), "{line}");
    assert!(
        line.contains("90000"),
        "the single-process value 300²: {line}"
    );
    let verified_line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("verified"))
        .unwrap_or_else(|| panic!("no `verified` line in:\n{}", out.stdout));
    assert!(
        !verified_line.contains("yes") && verified_line.contains("300"),
        "the text report says the run is not verified, and where: {verified_line}"
    );

    let json = procpool(&[
        "--workers",
        "3",
        "--chunk-size",
        "100",
        "squares",
        "1000",
        "--inject",
        "corrupt@3",
        "--json",
    ]);
    json.assert_code(EXIT_FAILED);
    let report = json.json();
    assert_eq!(report["verified"], Value::Bool(false), "{report}");
    assert_eq!(report["mismatch"]["index"], 300, "{report}");
    assert_eq!(report["mismatch"]["baseline"], "90000", "{report}");
    assert_ne!(report["mismatch"]["pool"], "90000", "{report}");
}

#[test]
fn huge_inflight_finishes_or_is_refused_instead_of_spinning() {
    let out = Procpool::new(&[
        "--workers",
        "1",
        "--dispatch",
        "channel",
        "--inflight",
        "1e12",
        "squares",
        "10",
        "--json",
    ])
    .deadline(Duration::from_secs(30))
    .run();
    match out.code {
        Some(EXIT_OK) => check_verified_report(&out.json(), 10, 1, None),
        Some(EXIT_USAGE) => assert!(out.one_line_error().contains("--inflight"), "{out:?}"),
        _ => panic!("unexpected outcome: {out:?}"),
    }
}
