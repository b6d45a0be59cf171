//! `--trace FILE.json` and `--timeline FILE.svg`: the run's timeline as a Chrome trace and
//! as a picture, checked against the run's own report on both ways of handing out chunks,
//! with a worker killed in the middle; and the library's `JobOptions::trace`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{EXIT_USAGE, Procpool, Sandbox, assert_no_tagged_process};
use serde_json::Value;

/// A run with `--trace` and `--timeline` into a scratch directory (not the sandbox's
/// working directory, which must stay empty): the report and both files' text.
struct Traced {
    report: Value,
    trace: Value,
    svg: String,
}

fn traced(dispatch: &'static str, extra: &[&str]) -> Traced {
    let sandbox = Sandbox::with_dispatch(dispatch);
    let scratch = tempfile::tempdir().expect("scratch dir");
    let trace_path = scratch.path().join("run.json");
    let svg_path = scratch.path().join("run.svg");
    let mut args = vec!["--workers", "2", "--json", "--chunk-size", "500"];
    args.extend_from_slice(extra);
    let (t, s) = (path_str(&trace_path), path_str(&svg_path));
    args.extend(["--trace", &t, "--timeline", &s]);
    let out = sandbox.run(&args);
    out.assert_code(0);
    sandbox.assert_nothing_left(&out);
    let text = std::fs::read_to_string(&trace_path).expect("the trace file");
    let trace: Value = serde_json::from_str(&text).expect("the trace parses as JSON");
    let svg = std::fs::read_to_string(&svg_path).expect("the timeline file");
    let names: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only the two files, no temporary one: {names:?}"
    );
    Traced {
        report: out.json(),
        trace,
        svg,
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temp path").to_string()
}

fn events(trace: &Value) -> &Vec<Value> {
    trace["traceEvents"].as_array().expect("traceEvents")
}

/// The chunk slices: `(chunk, attempt) -> (finished, tid)`, failing on a duplicate.
fn attempts(trace: &Value) -> BTreeMap<(u64, u64), (bool, u64)> {
    let mut seen = BTreeMap::new();
    for e in events(trace)
        .iter()
        .filter(|e| e["ph"] == "X" && e["args"]["chunk"].is_u64())
    {
        let key = (
            e["args"]["chunk"].as_u64().unwrap(),
            e["args"]["attempt"].as_u64().unwrap(),
        );
        let value = (e["args"]["finished"] == true, e["tid"].as_u64().unwrap());
        assert!(
            seen.insert(key, value).is_none(),
            "chunk {key:?} appears twice"
        );
    }
    seen
}

/// The `job` phase's slice: `(ts, ts + dur)` in µs.
fn job_span(trace: &Value) -> (f64, f64) {
    let job = events(trace)
        .iter()
        .find(|e| e["ph"] == "X" && e["name"] == "job" && e["tid"] == 0)
        .expect("a job phase on the parent's track");
    let ts = job["ts"].as_f64().unwrap();
    (ts, ts + job["dur"].as_f64().unwrap())
}

/// Every slice and instant on a worker's track lies inside the job, and the job inside
/// the run's pool wall time.
fn assert_within_the_run(t: &Traced) {
    let (lo, hi) = job_span(&t.trace);
    let wall_us = t.report["pool_wall_s"].as_f64().unwrap() * 1e6;
    assert!(
        hi - lo <= wall_us + 1.0,
        "job {lo}..{hi} µs, wall {wall_us} µs"
    );
    for e in events(&t.trace) {
        if e["ph"] == "M" || e["tid"] == 0 {
            continue;
        }
        let ts = e["ts"].as_f64().unwrap();
        let end = ts + e["dur"].as_f64().unwrap_or(0.0);
        // A microsecond of slack for the rounding to µs.
        assert!(
            ts >= lo - 1.0 && end <= hi + 1.0,
            "{e} outside the job {lo}..{hi}"
        );
    }
}

fn every_chunk_appears_once(dispatch: &'static str) {
    let t = traced(dispatch, &["squares", "10000"]);
    let chunks = t.report["chunks"].as_u64().unwrap();
    assert_eq!(chunks, 20);
    assert_eq!(t.report["retried_chunks"], 0);
    let seen = attempts(&t.trace);
    let want: Vec<(u64, u64)> = (0..chunks).map(|c| (c, 0)).collect();
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), want);
    assert!(
        seen.values()
            .all(|&(finished, tid)| finished && (1..=2).contains(&tid))
    );
    let threads: Vec<&str> = events(&t.trace)
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(threads, ["parent", "worker 0", "worker 1"]);
    let phases: Vec<&str> = events(&t.trace)
        .iter()
        .filter(|e| e["ph"] == "X" && e["tid"] == 0)
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for phase in ["start workers", "job", "baseline", "verify"] {
        assert!(phases.contains(&phase), "{phase} in {phases:?}");
    }
    assert_within_the_run(&t);
    assert_one_row_per_worker(&t.svg, 2);
}

fn a_killed_attempt_and_its_retry_both_appear(dispatch: &'static str) {
    let t = traced(dispatch, &["squares", "10000", "--inject", "kill@3"]);
    assert_eq!(t.report["verified"], true);
    let chunks = t.report["chunks"].as_u64().unwrap();
    let retried = t.report["retried_chunks"].as_u64().unwrap();
    assert!(retried >= 1, "{}", t.report);
    let seen = attempts(&t.trace);
    // Every chunk finished exactly once; the lost attempts are the retried ones that had
    // started (chunk 3 among them: it was running when its worker died).
    let finished: Vec<u64> = seen.iter().filter(|(_, v)| v.0).map(|(k, _)| k.0).collect();
    assert_eq!(finished, (0..chunks).collect::<Vec<_>>());
    let lost: Vec<(u64, u64)> = seen.iter().filter(|(_, v)| !v.0).map(|(k, _)| *k).collect();
    assert!(
        lost.contains(&(3, 0)),
        "the killed attempt of chunk 3: {lost:?}"
    );
    assert!(
        lost.len() as u64 <= retried,
        "{lost:?} against {retried} retried"
    );
    assert_eq!(
        seen.get(&(3, 1)).map(|v| v.0),
        Some(true),
        "its retry finished"
    );
    let instants: Vec<&str> = events(&t.trace)
        .iter()
        .filter(|e| e["ph"] == "i")
        .map(|e| e["cat"].as_str().unwrap())
        .collect();
    for kind in ["death", "restart", "retry"] {
        assert!(instants.contains(&kind), "a {kind} event in {instants:?}");
    }
    assert_within_the_run(&t);
    assert_one_row_per_worker(&t.svg, 2);
}

on_both_dispatches!(
    every_chunk_appears_once,
    a_killed_attempt_and_its_retry_both_appear
);

/// The SVG parses as XML and names each worker's row once.
fn assert_one_row_per_worker(svg: &str, workers: usize) {
    let doc = roxmltree::Document::parse(svg).expect("the timeline parses as XML");
    let rows: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .filter(|t| t.starts_with("worker "))
        .map(str::to_string)
        .collect();
    let want: Vec<String> = (0..workers).map(|w| format!("worker {w}")).collect();
    assert_eq!(rows, want);
}

#[test]
fn streamed_windows_show_as_events() {
    let sandbox = Sandbox::new();
    let scratch = tempfile::tempdir().expect("scratch dir");
    let trace_path = path_str(&scratch.path().join("t.json"));
    let output = path_str(&scratch.path().join("out.bin"));
    let out = sandbox.run(&[
        "--workers",
        "2",
        "--json",
        "squares",
        "100000",
        "--output",
        &output,
        "--window-size",
        "64KiB",
        "--trace",
        &trace_path,
    ]);
    out.assert_code(0);
    let windows = out.json()["output"]["windows"].as_u64().unwrap();
    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(&trace_path).unwrap()).unwrap();
    let written = events(&trace)
        .iter()
        .filter(|e| e["cat"] == "window written")
        .count() as u64;
    assert_eq!(written, windows);
    sandbox.assert_nothing_left(&out);
}

/// Runs procpool with `args` (no worker can start: `TMPDIR` does not exist), expects a
/// refusal, and returns its one line.
fn refused(args: &[&str]) -> String {
    let scratch = tempfile::tempdir().expect("temp dir");
    let missing = scratch.path().join("does-not-exist");
    let out = Procpool::new(args).env("TMPDIR", &missing).run();
    out.assert_code(EXIT_USAGE);
    assert!(out.stdout.is_empty());
    assert_no_tagged_process(&out.tag, &out.args);
    out.one_line_error().to_string()
}

#[test]
fn paths_that_cannot_be_written_are_refused_naming_the_flag() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = path_str(scratch.path());
    let nowhere: PathBuf = scratch.path().join("no-such-dir").join("t.json");
    let nowhere = path_str(&nowhere);
    for (flag, path) in [
        ("--trace", &nowhere),
        ("--trace", &dir),
        ("--timeline", &nowhere),
        ("--timeline", &dir),
    ] {
        let line = refused(&["--workers", "1", "squares", "10", flag, path]);
        assert!(
            line.contains(flag) && line.contains(path.as_str()),
            "{line}"
        );
    }
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "a refused run leaves no file"
    );
    let line = refused(&["--mode", "threads", "squares", "10", "--trace", "t.json"]);
    assert!(line.contains("--trace"), "{line}");
    let line = refused(&[
        "sweep",
        "--workers",
        "1,2",
        "squares",
        "10",
        "--timeline",
        "t.svg",
    ]);
    assert!(line.contains("--timeline"), "{line}");
}

/// The library: `JobOptions { trace: true, .. }` gives a `Trace` with every chunk once,
/// inside the job; without it, none.
#[test]
fn the_library_traces_every_chunk_when_asked() {
    use procpool::workload::Squares;
    use procpool::{Dispatch, JobOptions, Pool};
    let mut pool = Pool::builder()
        .workers(2)
        .worker_exe(common::EXE)
        .build()
        .expect("a pool of procpool workers");
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let options = JobOptions {
            chunk_size: Some(100),
            dispatch,
            trace: true,
            ..JobOptions::default()
        };
        let run = pool.run_with(&Squares, 1000, &options).expect("the job");
        let stats = run.stats();
        let trace = stats.trace.as_ref().expect("a trace when asked");
        let mut chunks: Vec<u64> = trace.attempts.iter().map(|a| a.chunk).collect();
        chunks.sort_unstable();
        assert_eq!(
            chunks,
            (0..stats.chunks).collect::<Vec<_>>(),
            "{dispatch:?}"
        );
        for a in &trace.attempts {
            assert!(a.finished && a.attempt == 0 && a.worker < 2, "{a:?}");
            assert_eq!(a.range, a.chunk * 100..a.chunk * 100 + 100);
            assert!(trace.start_ns <= a.start_ns && a.start_ns <= a.end_ns);
            assert!(a.end_ns <= trace.end_ns, "{a:?} after {}", trace.end_ns);
        }
        assert_eq!(trace.phases.iter().filter(|p| p.name == "job").count(), 1);
        assert!(trace.events.is_empty(), "{:?}", trace.events);
        drop(run);
        let plain = JobOptions {
            dispatch,
            ..JobOptions::default()
        };
        let run = pool.run_with(&Squares, 1000, &plain).expect("the job");
        assert!(run.stats().trace.is_none());
    }
}
