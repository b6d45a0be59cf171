//! `procpool::lab::ipc_bench` as a library user sees it: the refusal to fork from a threaded
//! process, and the JSON and text shapes of a report. (The real measurement runs through the
//! binary, `procpool ipc-bench`, which can call it while still single-threaded; a test
//! harness never is.)

use procpool::lab::ipc_bench::{
    IpcBenchOptions, IpcBenchReport, Latency, Throughput, percentile, run,
};
use procpool::report::ipc_bench::render_text;

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
    });
    drop(stop_tx);
    helper.join().unwrap();
    let err = result.expect_err("run must refuse to fork with two threads");
    assert!(err.is_invalid_input(), "{err}");
    assert!(err.to_string().contains("threads"), "{err}");
}

fn report() -> IpcBenchReport {
    IpcBenchReport {
        cores_logical: 4,
        latency: vec![Latency {
            placement: "unpinned".into(),
            samples: 3,
            p50_us: 10.0,
            p90_us: 12.0,
            p99_us: 12.8,
            max_us: 13.0,
            mean_us: 11.0,
        }],
        throughput: vec![Throughput {
            placement: "unpinned".into(),
            size_bytes: 1 << 20,
            channel_mb_s: 1000.0,
            shm_mb_s: 4000.0,
            messages: 16,
        }],
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
    assert_eq!(json["note"], "made up");
}

#[test]
fn ipc_bench_text_ends_with_the_comparison() {
    let text = render_text(&report());
    let last = text.lines().last().unwrap();
    assert_eq!(
        last,
        "a chunk message costs ~10 µs round trip; 1 MiB through the channel takes 1.05 ms, \
         through shared memory 262.1 µs: send ranges, not data"
    );
    // The samples behind the made-up latency: 10, 12, 13 µs.
    let sorted = [10.0, 12.0, 13.0];
    assert_eq!(percentile(&sorted, 50.0), 12.0);
    assert!((percentile(&sorted, 90.0) - 12.8).abs() < 1e-9);
}
