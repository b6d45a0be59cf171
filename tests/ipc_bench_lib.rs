//! `procpool::lab::ipc_bench` as a library user sees it: the refusal to fork from a threaded
//! process, and the JSON and text shapes of a report. (The real measurement runs through the
//! binary, `procpool ipc-bench`, which can call it while still single-threaded; a test
//! harness never is: the queue's numbers are checked on a run of the binary.)

mod common;

use common::{EXIT_OK, Sandbox};
use procpool::StartMethod;
use procpool::lab::ipc_bench::{
    FutexLatency, IpcBenchOptions, IpcBenchReport, Latency, QueueBench, StartCost, Throughput,
    percentile, run,
};
use procpool::report::ipc_bench::render_text;
use serde_json::Value;

#[test]
fn ipc_bench_refuses_to_fork_from_a_threaded_process() {
    // A second thread that lives through the call, whatever the harness does.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || {
        let _ = stop_rx.recv();
    });
    let result = run(&IpcBenchOptions {
        round_trips: 10,
        sizes: vec![64],
        bytes_per_size: 1024,
        pin: false,
        claims: 1000,
        starts: 1,
    });
    drop(stop_tx);
    helper.join().unwrap();
    let err = result.expect_err("run must refuse to fork with two threads");
    assert!(err.is_invalid_input(), "{err}");
    assert!(err.to_string().contains("threads"), "{err}");
}

fn latency(placement: &str) -> Latency {
    Latency {
        placement: placement.into(),
        samples: 3,
        p50_us: 10.0,
        p90_us: 12.0,
        p99_us: 12.8,
        max_us: 13.0,
        mean_us: 11.0,
    }
}

fn report() -> IpcBenchReport {
    IpcBenchReport {
        meta: procpool::lab::Meta::sample(),
        cores_logical: 4,
        latency: vec![latency("unpinned")],
        queue: QueueBench {
            claims: 1000,
            solo_claims_per_s: 50e6,
            contended_claims_per_s: 20e6,
            peer_share: 0.5,
            futex: vec![FutexLatency {
                round_trip: latency("unpinned"),
                slept_share: 1.0,
            }],
        },
        throughput: vec![Throughput {
            placement: "unpinned".into(),
            size_bytes: 1 << 20,
            channel_mb_s: 1000.0,
            shm_mb_s: 4000.0,
            messages: 16,
        }],
        worker_start: vec![
            StartCost {
                method: StartMethod::ForkServer,
                samples: 3,
                build_p50_us: Some(700.0),
                build_p90_us: Some(800.0),
                start_p50_us: Some(400.0),
                skipped: None,
            },
            StartCost {
                method: StartMethod::Fork,
                samples: 0,
                build_p50_us: None,
                build_p90_us: None,
                start_p50_us: None,
                skipped: Some("made up".into()),
            },
        ],
        note: "made up".into(),
    }
}

#[test]
fn ipc_bench_report_serializes_with_units_in_the_names() {
    let json = serde_json::to_value(report()).unwrap();
    assert_eq!(json["cores_logical"], 4);
    let l = &json["latency"][0];
    assert_eq!(l["placement"], "unpinned");
    for key in ["samples", "p50_us", "p90_us", "p99_us", "max_us", "mean_us"] {
        assert!(l[key].is_number(), "latency.{key} in {l}");
    }
    let t = &json["throughput"][0];
    for key in ["size_bytes", "channel_mb_s", "shm_mb_s", "messages"] {
        assert!(t[key].is_number(), "throughput.{key} in {t}");
    }
    let q = &json["queue"];
    for key in QUEUE_KEYS {
        assert!(q[key].is_number(), "queue.{key} in {q}");
    }
    // A futex round trip has a message round trip's keys, flat, and how often it slept.
    let f = &q["futex"][0];
    assert_eq!(f["placement"], "unpinned");
    for key in FUTEX_KEYS {
        assert!(f[key].is_number(), "queue.futex.{key} in {f}");
    }
    let w = &json["worker_start"][0];
    assert_eq!(w["method"], "forkserver");
    for key in ["samples", "build_p50_us", "build_p90_us", "start_p50_us"] {
        assert!(w[key].is_number(), "worker_start.{key} in {w}");
    }
    assert!(w["skipped"].is_null(), "{w}");
    // A method not measured says why, and has no figures.
    let w = &json["worker_start"][1];
    assert_eq!(w["method"], "fork");
    assert_eq!(w["skipped"], "made up");
    assert!(
        w["build_p50_us"].is_null() && w["start_p50_us"].is_null(),
        "{w}"
    );
    assert_eq!(json["note"], "made up");
}

/// The numbers of `queue` in an ipc-bench report.
const QUEUE_KEYS: [&str; 4] = [
    "claims",
    "solo_claims_per_s",
    "contended_claims_per_s",
    "peer_share",
];
/// The numbers of each `queue.futex` entry.
const FUTEX_KEYS: [&str; 7] = [
    "samples",
    "p50_us",
    "p90_us",
    "p99_us",
    "max_us",
    "mean_us",
    "slept_share",
];

fn positive(v: &Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "`{key}` is not positive: {v}");
    x
}

fn share(v: &Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number: {v}"));
    assert!((0.0..=1.0).contains(&x), "`{key}` is not a share: {v}");
    x
}

/// `procpool ipc-bench --round-trips ROUND_TRIPS --no-pin --sizes 64 --json`, checked to
/// exit 0 and leave nothing behind: its report.
fn ipc_bench_json(round_trips: &str) -> Value {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&[
        "ipc-bench",
        "--round-trips",
        round_trips,
        "--no-pin",
        "--sizes",
        "64",
        "--json",
    ]);
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    out.json()
}

#[test]
fn ipc_bench_measures_the_queue_claims_and_futex_wake_ups() {
    let r = ipc_bench_json("200");
    let q = &r["queue"];
    assert_eq!(
        q["claims"].as_u64(),
        Some(IpcBenchOptions::default().claims as u64),
        "{q}"
    );
    positive(q, "solo_claims_per_s");
    positive(q, "contended_claims_per_s");
    share(q, "peer_share");
    let futex = q["futex"].as_array().expect("queue.futex is a list");
    // Unpinned only, with --no-pin; a quarter of the message round trips.
    assert_eq!(futex.len(), 1, "{q}");
    let f = &futex[0];
    assert_eq!(f["placement"], "unpinned");
    assert_eq!(f["samples"], 50, "{f}");
    let (p50, p90, p99, max) = (
        positive(f, "p50_us"),
        positive(f, "p90_us"),
        positive(f, "p99_us"),
        positive(f, "max_us"),
    );
    assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{f}");
    positive(f, "mean_us");
    share(f, "slept_share");
    assert!(
        r["note"].as_str().unwrap().contains("queue:"),
        "the note says how the queue was measured: {}",
        r["note"]
    );
}

#[test]
fn ipc_bench_measures_the_start_of_a_worker_by_each_method() {
    let r = ipc_bench_json("20");
    let starts = r["worker_start"]
        .as_array()
        .expect("worker_start is a list");
    let methods: Vec<&str> = starts
        .iter()
        .map(|s| s["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["spawn", "fork", "forkserver"], "{r}");
    // procpool calls init() first and runs ipc-bench single-threaded: all three measured.
    for s in starts {
        assert!(s["skipped"].is_null(), "{s}");
        assert_eq!(
            s["samples"].as_u64(),
            Some(IpcBenchOptions::default().starts as u64),
            "{s}"
        );
        let (build, p90, start) = (
            positive(s, "build_p50_us"),
            positive(s, "build_p90_us"),
            positive(s, "start_p50_us"),
        );
        // The worker's start is part of each build, so its median is at most theirs.
        assert!(build <= p90 && start <= build, "{s}");
    }
    assert!(
        r["note"].as_str().unwrap().contains("worker start:"),
        "the note says how starts were measured: {}",
        r["note"]
    );
}

#[test]
fn ipc_bench_text_ends_with_the_comparison() {
    let text = render_text(&report());
    let last = text.lines().last().unwrap();
    assert_eq!(
        last,
        "a chunk message costs ~10 µs round trip, a claim from the queue ~100 ns with 2 \
         processes claiming; 1 MiB through the channel takes 1.05 ms, through shared memory \
         262.1 µs: send ranges, not data"
    );
    assert!(
        text.contains("chunks claimed from the shared-memory queue (--dispatch queue)"),
        "{text}"
    );
    assert!(text.contains("futex wake-up round trip"), "{text}");
    // The samples behind the made-up latency: 10, 12, 13 µs.
    let sorted = [10.0, 12.0, 13.0];
    assert_eq!(percentile(&sorted, 50.0), 12.0);
    assert!((percentile(&sorted, 90.0) - 12.8).abs() < 1e-9);
}
