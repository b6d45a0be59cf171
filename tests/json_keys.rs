//! Every key of `procpool --json` that docs/json.md documents is printed,
//! with the right type and a plausible value; and every key procpool prints is documented
//! there, so a new key cannot appear without docs/json.md saying what it means.
//!
//! The runs are chosen so that each key carries a meaningful value at least once: a plain
//! run (queue dispatch), `--dispatch channel`, `--repeat`, `--chunk-size auto`, `--output`, a
//! worker death, `--mode threads` and `single`, a corrupted result, `--no-baseline`, and a
//! pinned `sleep` run over the channels.

mod common;

use std::collections::BTreeSet;

use common::{EXIT_FAILED, EXIT_OK, Outcome, Sandbox, close, squares_checksum};
use serde_json::Value;

/// The top-level keys (`src/report/mod.rs`, struct `Report`, in its order).
const TOP: &[&str] = &[
    "schema_version",
    "procpool_version",
    "started_at",
    "machine",
    "workload",
    "params",
    "mode",
    "start",
    "schedule",
    "transport",
    "dispatch",
    "pinned",
    "n",
    "workers",
    "workers_from",
    "chunk_size",
    "chunks",
    "auto_chunk",
    "inflight",
    "cores_logical",
    "cores_physical",
    "baseline_wall_s",
    "baseline_estimated",
    "baseline_os",
    "pool_wall_s",
    "spawn_s",
    "start_per_worker_s",
    "run_s",
    "compute_s",
    "compute_max_s",
    "breakdown",
    "chunk_rtt_mean_s",
    "chunk_compute_mean_s",
    "dispatch_per_chunk_s",
    "speedup",
    "efficiency",
    "caveats",
    "contention",
    "verified",
    "mismatch",
    "tolerance",
    "checksum",
    "ipc_messages",
    "ipc_bytes",
    "channel_result_bytes",
    "shm_bytes",
    "input_bytes",
    "param_bytes",
    "claims",
    "worker_sleeps",
    "parent_sleeps",
    "wake_messages",
    "per_worker",
    "restarts",
    "recycles",
    "retried_chunks",
    "deaths",
    "reduction",
    "baseline_reduction",
    "repeat",
    "output",
    "parent_peak_rss_bytes",
    "advice",
    "warnings",
];
/// The keys every JSON document starts with (a run, a sweep, ipc-bench).
const COMMON: &[&str] = &[
    "schema_version",
    "procpool_version",
    "started_at",
    "machine",
];
/// `machine`, in every document.
const MACHINE: &[&str] = &[
    "kernel",
    "cpu_model",
    "cpus_online",
    "cores_physical",
    "cpus_allowed",
    "cpu_quota",
    "cpus_effective",
    "cores_decided_by",
    "memory_total_bytes",
    "memory_available_bytes",
    "cgroup_memory_limit_bytes",
    "cgroup_memory_usage_bytes",
];
/// `procpool sweep --json`: the top level, a row, the Amdahl fit.
const SWEEP: &[&str] = &[
    "schema_version",
    "procpool_version",
    "started_at",
    "machine",
    "workload",
    "n",
    "cores_logical",
    "baseline_s",
    "rows",
    "amdahl",
    "oversubscribed_workers",
];
const SWEEP_ROW: &[&str] = &[
    "workers",
    "chunk_size",
    "pool_s",
    "speedup",
    "efficiency",
    "karp_flatt",
    "verified",
    "fitted",
];
/// `procpool compare-modes --json`: the top level, and each mode's side.
const COMPARE: &[&str] = &[
    "schema_version",
    "procpool_version",
    "started_at",
    "machine",
    "workload",
    "n",
    "workers",
    "cores_logical",
    "rounds",
    "processes",
    "threads",
    "ratio",
    "why",
    "framing",
];
const COMPARE_SIDE: &[&str] = &[
    "wall_s",
    "spawn_s",
    "compute_s",
    "dispatch_s",
    "minor_faults",
    "verified",
];
const AMDAHL: &[&str] = &["serial_fraction", "ceiling", "rmse", "points"];
/// `procpool ipc-bench --json`: the top level, a latency entry, the queue, a futex entry,
/// a throughput entry.
const IPC: &[&str] = &[
    "schema_version",
    "procpool_version",
    "started_at",
    "machine",
    "cores_logical",
    "latency",
    "queue",
    "throughput",
    "worker_start",
    "note",
];
const LATENCY: &[&str] = &[
    "placement",
    "samples",
    "p50_us",
    "p90_us",
    "p99_us",
    "max_us",
    "mean_us",
];
const QUEUE: &[&str] = &[
    "claims",
    "solo_claims_per_s",
    "contended_claims_per_s",
    "peer_share",
    "futex",
];
const FUTEX: &[&str] = &[
    "placement",
    "samples",
    "p50_us",
    "p90_us",
    "p99_us",
    "max_us",
    "mean_us",
    "slept_share",
];
const THROUGHPUT: &[&str] = &[
    "placement",
    "size_bytes",
    "messages",
    "channel_mb_s",
    "shm_mb_s",
];
/// Each `worker_start` entry of ipc-bench.
const WORKER_START: &[&str] = &[
    "method",
    "samples",
    "build_p50_us",
    "build_p90_us",
    "start_p50_us",
    "skipped",
];
const BREAKDOWN: &[&str] = &[
    "total_s",
    "spawn_s",
    "compute_s",
    "ipc_wait_s",
    "imbalance_idle_s",
    "verify_s",
];
const WORKER: &[&str] = &[
    "id",
    "pid",
    "chunks",
    "compute_s",
    "cpu_s",
    "peak_rss_bytes",
    "idle_end_s",
    "cpu",
    "claims",
    "dispatch_s",
    "sleeps",
    "setup_s",
    "minor_faults",
    "major_faults",
    "voluntary_switches",
    "involuntary_switches",
];
/// `contention`: what other processes took from the run.
const CONTENTION: &[&str] = &[
    "cpu_share_per_worker",
    "cpu_share_mean",
    "baseline_cpu_share",
    "load_start",
    "load_end",
    "steal_share",
];
/// `baseline_os`: what the kernel counted for the single-process run.
const BASELINE_OS: &[&str] = &[
    "cpu_s",
    "minor_faults",
    "major_faults",
    "voluntary_switches",
    "involuntary_switches",
];
const DEATH: &[&str] = &["id", "pid", "cause", "chunk", "replaced_by"];
const AUTO_CHUNK: &[&str] = &[
    "chosen",
    "probe_size",
    "per_element_s",
    "overhead_s",
    "reason",
];
const REPEAT: &[&str] = &["runs", "warmup", "baseline_s", "pool_s", "speedup"];
/// `repeat.baseline_s` and `repeat.pool_s`.
const SUMMARY: &[&str] = &["mean", "sd", "min", "max", "runs"];
/// `repeat.speedup`.
const RATIO: &[&str] = &["value", "sd"];
const OUTPUT: &[&str] = &["path", "bytes", "windows", "window_bytes", "write_s"];
const MISMATCH: &[&str] = &["index", "pool", "baseline", "lane", "difference", "ulps"];
/// `tolerance`, from a library workload.
const TOLERANCE: &[&str] = &["lane", "abs", "rel", "ulps"];
const ADVICE: &[&str] = &["limit", "text"];
/// Every value `advice[].limit` may take.
const LIMITS: &[&str] = &[
    "start-dominated",
    "ipc-bound",
    "oversubscribed",
    "imbalanced",
    "memory-bound",
    "io-bound",
    "large-params",
    "scaling",
    "contended",
    "short-chunks",
];
/// Names docs/json.md puts in backticks that are values, not keys (besides `LIMITS`).
const VALUES: &[&str] = &[
    "processes",
    "threads",
    "single",
    "spawn",
    "fork",
    "forkserver",
    "static",
    "dynamic",
    "guided",
    "shm",
    "channel",
    "queue",
    "null",
    "sleep",
    "given",
    "env",
    "cpus",
    "unpinned",
    "f32",
    "f64",
    "sha256sum",
];

const N: u64 = 100_000;
const N_ARG: &str = "1e5";
/// `squares` writes one `u64` per element.
const ELEM: u64 = 8;

// ---- docs/json.md ------------------------------------------------------------------------

/// docs/json.md, from its title to its next heading (the MPI run's keys follow).
fn readme_json_section() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json.md");
    let doc = std::fs::read_to_string(path).expect("read docs/json.md");
    let body = doc
        .strip_prefix("# The JSON report\n")
        .expect("docs/json.md starts with `# The JSON report`");
    let end = body.find("\n#").map_or(body.len(), |i| i + 1);
    body[..end].to_string()
}

/// The names in backticks in docs/json.md that could be keys (a lowercase letter,
/// then lowercase letters, digits and underscores: options, expressions and kebab-case
/// values are left out).
fn documented() -> BTreeSet<String> {
    let section = readme_json_section();
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with(|c: char| c.is_ascii_lowercase())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

fn all_schema_keys() -> BTreeSet<&'static str> {
    [
        TOP,
        COMMON,
        MACHINE,
        BREAKDOWN,
        WORKER,
        BASELINE_OS,
        CONTENTION,
        DEATH,
        AUTO_CHUNK,
        REPEAT,
        SUMMARY,
        RATIO,
        OUTPUT,
        MISMATCH,
        TOLERANCE,
        ADVICE,
        SWEEP,
        SWEEP_ROW,
        COMPARE,
        COMPARE_SIDE,
        AMDAHL,
        IPC,
        LATENCY,
        QUEUE,
        FUTEX,
        THROUGHPUT,
        WORKER_START,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect()
}

#[test]
fn docs_json_documents_every_key_and_no_other() {
    let documented = documented();
    let schema = all_schema_keys();
    let undocumented: Vec<_> = schema
        .iter()
        .filter(|k| !documented.contains(**k))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/json.md does not name these keys: {undocumented:?}"
    );
    let unknown: Vec<_> = documented
        .iter()
        .filter(|d| {
            let d = d.as_str();
            !schema.contains(d) && !VALUES.contains(&d) && !LIMITS.contains(&d)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/json.md names keys procpool does not print: {unknown:?}"
    );
    let section = readme_json_section();
    for limit in LIMITS {
        assert!(
            section.contains(&format!("`{limit}`")),
            "docs/json.md does not list the advice limit `{limit}`"
        );
    }
}

/// Every key in `report`, at any depth (inside `params`, which belongs to the workload,
/// excepted), is named in docs/json.md.
fn assert_documented(report: &Value) {
    fn walk(v: &Value, path: &str, documented: &BTreeSet<String>, missing: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let here = format!("{path}.{k}");
                    if !documented.contains(k) {
                        missing.push(here.clone());
                    }
                    if here != ".params" {
                        walk(child, &here, documented, missing);
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), documented, missing);
                }
            }
            _ => {}
        }
    }
    let mut missing = Vec::new();
    walk(report, "", &documented(), &mut missing);
    assert!(
        missing.is_empty(),
        "procpool prints keys docs/json.md does not document: {missing:?}"
    );
}

// ---- typed access ----------------------------------------------------------------------

/// Asserts that `v` is an object with exactly the keys `expected`.
fn assert_keys(v: &Value, expected: &[&str], what: &str) {
    let map = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {v}"));
    let got: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing keys {missing:?}, unexpected keys {extra:?} (update this test and \
         docs/json.md together)\n{v}"
    );
}

fn uint(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not an unsigned integer: {}", v[key]))
}

/// A duration or other non-negative, finite number.
fn secs(v: &Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number: {}", v[key]));
    assert!(
        x.is_finite() && x >= 0.0,
        "`{key}` is not a finite non-negative number: {x}"
    );
    x
}

fn boolean(v: &Value, key: &str) -> bool {
    v[key]
        .as_bool()
        .unwrap_or_else(|| panic!("`{key}` is not a boolean: {}", v[key]))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    let s = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string: {}", v[key]));
    assert!(!s.trim().is_empty(), "`{key}` is an empty string");
    s
}

fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not an array: {}", v[key]))
}

fn null(v: &Value, key: &str) {
    assert!(v[key].is_null(), "`{key}` should be null here: {}", v[key]);
}

/// Two measurements of the same time that procpool adds up itself: equal up to rounding.
fn about(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 + 1e-6 * a.abs().max(b.abs())
}

// ---- what holds for every document -----------------------------------------------------

/// The keys every JSON document (`out`'s stdout) starts with: versions, start time, machine.
fn check_common(out: &Outcome) {
    let r = &out.json();
    let raw = out.stdout.replace(' ', "");
    let mut at = 1;
    for key in COMMON {
        let quoted = format!("\"{key}\":");
        assert!(
            raw[at..].starts_with(&quoted),
            "the document's keys must start with {COMMON:?}: {raw}"
        );
        at += quoted.len();
        // Skip this key's value: up to the next top-level key.
        if let Some(next) = COMMON.iter().skip_while(|k| *k != key).nth(1) {
            at += raw[at..]
                .find(&format!(",\"{next}\":"))
                .expect("the next common key")
                + 1;
        }
    }
    assert_eq!(uint(r, "schema_version"), 1);
    assert_eq!(text(r, "procpool_version"), env!("CARGO_PKG_VERSION"));
    let started = text(r, "started_at");
    let b = started.as_bytes();
    assert!(
        b.len() == 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'Z'
            && started.starts_with("20"),
        "started_at is not RFC 3339 UTC: {started}"
    );
    let m = &r["machine"];
    assert_keys(m, MACHINE, "machine");
    assert!(m["kernel"].is_null() || !text(m, "kernel").is_empty());
    assert!(m["cpu_model"].is_null() || !text(m, "cpu_model").is_empty());
    let online = uint(m, "cpus_online");
    let allowed = uint(m, "cpus_allowed");
    let effective = uint(m, "cpus_effective");
    assert!(
        1 <= effective && effective <= allowed && allowed <= online,
        "{m}"
    );
    assert!(m["cores_physical"].is_null() || uint(m, "cores_physical") >= 1);
    assert!(m["cpu_quota"].is_null() || secs(m, "cpu_quota") > 0.0);
    text(m, "cores_decided_by");
    assert!(uint(m, "memory_total_bytes") >= uint(m, "memory_available_bytes"));
    assert_eq!(
        m["cgroup_memory_limit_bytes"].is_null(),
        m["cgroup_memory_usage_bytes"].is_null(),
        "{m}"
    );
}

#[test]
fn a_sweep_prints_every_key() {
    let out = run(
        &["sweep", "--workers", "1,2", "squares", N_ARG, "--json"],
        EXIT_OK,
    );
    let r = out.json();
    assert_keys(&r, SWEEP, "the sweep");
    assert_documented(&r);
    check_common(&out);
    assert_eq!(uint(&r, "n"), N);
    let rows = array(&r, "rows");
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_keys(row, SWEEP_ROW, "a sweep row");
        assert_keys(&row["pool_s"], SUMMARY, "a row's pool_s");
    }
    assert_keys(&r["baseline_s"], SUMMARY, "baseline_s");
    assert_keys(&r["amdahl"], AMDAHL, "amdahl");
}

#[test]
fn ipc_bench_prints_every_key() {
    let out = run(
        &[
            "ipc-bench",
            "--round-trips",
            "200",
            "--sizes",
            "1KiB",
            "--json",
        ],
        EXIT_OK,
    );
    let r = out.json();
    assert_keys(&r, IPC, "ipc-bench");
    assert_documented(&r);
    check_common(&out);
    for l in array(&r, "latency") {
        assert_keys(l, LATENCY, "a latency entry");
    }
    assert_keys(&r["queue"], QUEUE, "queue");
    for f in array(&r["queue"], "futex") {
        assert_keys(f, FUTEX, "a futex entry");
    }
    let throughput = array(&r, "throughput");
    assert!(!throughput.is_empty());
    for t in throughput {
        assert_keys(t, THROUGHPUT, "a throughput entry");
        assert_eq!(uint(t, "size_bytes"), 1024);
    }
    let starts = array(&r, "worker_start");
    assert_eq!(starts.len(), 3, "spawn, fork, forkserver");
    for s in starts {
        assert_keys(s, WORKER_START, "a worker_start entry");
    }
}

// ---- what holds for every report -------------------------------------------------------

/// What a run was asked to do, to check the report against.
struct Asked {
    workers: u64,
    mode: &'static str,
}

/// Checks every key's type and the relations that hold in any run; returns the report.
fn check_report(out: &Outcome, asked: &Asked) -> Value {
    let r = out.json();
    assert_keys(&r, TOP, "the report");
    assert_documented(&r);
    check_common(out);
    assert!(
        ["given", "env", "cpus"].contains(&text(&r, "workers_from")),
        "workers_from: {}",
        r["workers_from"]
    );

    // What ran.
    text(&r, "workload");
    assert!(r["params"].is_object(), "params: {}", r["params"]);
    let mode = text(&r, "mode");
    assert_eq!(mode, asked.mode);
    let processes = mode == "processes";
    if processes {
        assert!(
            ["spawn", "fork", "forkserver"].contains(&text(&r, "start")),
            "start: {}",
            r["start"]
        );
        assert!(
            ["shm", "channel"].contains(&text(&r, "transport")),
            "transport: {}",
            r["transport"]
        );
        assert!(
            ["queue", "channel"].contains(&text(&r, "dispatch")),
            "dispatch: {}",
            r["dispatch"]
        );
    } else {
        null(&r, "start");
        null(&r, "transport");
        null(&r, "dispatch");
    }
    let queue = r["dispatch"] == "queue";
    assert!(
        ["static", "dynamic", "guided"].contains(&text(&r, "schedule")),
        "schedule: {}",
        r["schedule"]
    );
    let pinned = boolean(&r, "pinned");
    let n = uint(&r, "n");
    let workers = uint(&r, "workers");
    assert_eq!(workers, asked.workers, "workers");
    let chunk_size = uint(&r, "chunk_size");
    let chunks = uint(&r, "chunks");
    assert!(
        chunk_size >= 1 && chunks >= 1,
        "{chunks} chunks of {chunk_size}"
    );
    assert!(
        u128::from(chunks) * u128::from(chunk_size) >= u128::from(n),
        "{chunks} chunks of {chunk_size} cannot cover n = {n}"
    );
    assert!(r["auto_chunk"].is_null() || r["auto_chunk"].is_object());
    let inflight = uint(&r, "inflight");
    if queue {
        assert_eq!(inflight, 1, "nothing is in flight with queue dispatch");
    } else {
        assert!(inflight >= 1, "inflight {inflight}");
    }
    assert!(uint(&r, "cores_logical") >= 1);
    assert!(r["cores_physical"].is_null() || uint(&r, "cores_physical") >= 1);

    // The times.
    let baseline = (!r["baseline_wall_s"].is_null()).then(|| secs(&r, "baseline_wall_s"));
    boolean(&r, "baseline_estimated");
    // `null` without a baseline, for a baseline known without running it, and with
    // `--output` (the baseline is computed window by window).
    if !r["baseline_os"].is_null() {
        assert_keys(&r["baseline_os"], BASELINE_OS, "baseline_os");
        secs(&r["baseline_os"], "cpu_s");
        for key in &BASELINE_OS[1..] {
            uint(&r["baseline_os"], key);
        }
    }
    let pool = secs(&r, "pool_wall_s");
    assert!(pool > 0.0, "pool_wall_s is 0");
    let spawn = secs(&r, "spawn_s");
    if processes {
        // The start over the workers it started: all of them, or (spawn in the background)
        // as many as the pool waited for, at least one.
        let each = secs(&r, "start_per_worker_s");
        assert!(
            each >= spawn / workers as f64 * (1.0 - 1e-9) && each <= spawn * (1.0 + 1e-9),
            "start_per_worker_s {each} is not spawn_s {spawn} over 1 to {workers} workers"
        );
    } else {
        null(&r, "start_per_worker_s");
    }
    let run = secs(&r, "run_s");
    let compute = secs(&r, "compute_s");
    let compute_max = secs(&r, "compute_max_s");
    let rtt = secs(&r, "chunk_rtt_mean_s");
    let chunk_compute = secs(&r, "chunk_compute_mean_s");
    let dispatch_cost = secs(&r, "dispatch_per_chunk_s");
    if processes {
        // Both dispatches: a chunk's round trip is its compute plus the cost of handing it
        // out (the channel's clamped at 0 when a round trip measured shorter).
        assert!(
            rtt <= chunk_compute + dispatch_cost + 1e-9 + 1e-6 * rtt,
            "round trip {rtt} > compute {chunk_compute} + dispatch {dispatch_cost}"
        );
    } else {
        assert_eq!(dispatch_cost, 0.0, "nothing dispatched outside processes");
    }

    let b = &r["breakdown"];
    assert_keys(b, BREAKDOWN, "breakdown");
    let total = secs(b, "total_s");
    for key in BREAKDOWN {
        secs(b, key);
    }
    assert!(close(secs(b, "spawn_s"), spawn), "breakdown.spawn_s: {b}");
    assert!(
        about(spawn + run, total),
        "spawn_s + run_s = {} but breakdown.total_s = {total}",
        spawn + run
    );
    let parts = secs(b, "spawn_s")
        + secs(b, "compute_s")
        + secs(b, "ipc_wait_s")
        + secs(b, "imbalance_idle_s");
    assert!(
        (parts - total).abs() <= 1e-6 + 0.01 * total,
        "the breakdown's parts add up to {parts}, not total_s = {total}: {b}"
    );

    match baseline {
        Some(baseline) => {
            let speedup = secs(&r, "speedup");
            assert!(close(speedup, baseline / pool), "speedup {speedup}");
            let efficiency = secs(&r, "efficiency");
            assert!(
                close(efficiency, speedup / workers as f64),
                "efficiency {efficiency}"
            );
            boolean(&r, "verified");
        }
        None => {
            null(&r, "speedup");
            null(&r, "efficiency");
            null(&r, "verified");
        }
    }
    for c in array(&r, "caveats") {
        assert!(
            c.as_str().is_some_and(|s| !s.trim().is_empty()),
            "caveats are sentences: {c}"
        );
    }
    let c = &r["contention"];
    assert_keys(c, CONTENTION, "contention");
    let shares = array(c, "cpu_share_per_worker");
    assert_eq!(
        shares.len() as u64,
        workers,
        "one CPU share per worker: {c}"
    );
    for share in shares {
        assert!(
            share.is_null() || share.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0),
            "a CPU share is a non-negative number or null: {c}"
        );
    }
    for key in [
        "cpu_share_mean",
        "baseline_cpu_share",
        "load_start",
        "load_end",
    ] {
        assert!(c[key].is_null() || secs(c, key) >= 0.0, "{key}: {c}");
    }
    // Linux has a load average.
    secs(c, "load_start");
    secs(c, "load_end");
    assert!(
        c["steal_share"].is_null() || secs(c, "steal_share") <= 1.0,
        "{c}"
    );
    if r["verified"] == false {
        assert_keys(&r["mismatch"], MISMATCH, "mismatch");
    } else {
        null(&r, "mismatch");
    }
    // The built-in workloads ask for identical bytes.
    null(&r, "tolerance");

    // Messages and memory.
    let checksum = r["checksum"].as_str().expect("checksum is a string");
    assert!(
        checksum.len() == 16 && checksum.bytes().all(|b| b.is_ascii_hexdigit()),
        "checksum: 16 hex digits of SHA-256, got {checksum}"
    );
    let messages = uint(&r, "ipc_messages");
    let bytes = uint(&r, "ipc_bytes");
    let channel = uint(&r, "channel_result_bytes");
    let shm = uint(&r, "shm_bytes");
    assert_eq!(
        uint(&r, "input_bytes"),
        0,
        "built-in workloads share no input"
    );
    let claims = uint(&r, "claims");
    let counters = [
        ("worker_sleeps", uint(&r, "worker_sleeps")),
        ("parent_sleeps", uint(&r, "parent_sleeps")),
        ("wake_messages", uint(&r, "wake_messages")),
    ];
    if queue {
        // Every chunk claimed once, plus once per retry; the chunk messages are gone, the
        // control channel still carries the job and the wake-ups.
        assert!(claims >= chunks, "{claims} claims for {chunks} chunks");
        assert!(messages >= 1, "{messages} messages");
        let wakes = uint(&r, "wake_messages");
        assert!(
            wakes <= messages,
            "{wakes} wake messages among {messages} messages"
        );
    } else {
        assert_eq!(claims, 0, "claims without the queue");
        for (key, value) in counters {
            assert_eq!(value, 0, "`{key}` without the queue");
        }
    }
    if processes {
        if !queue {
            assert!(
                messages >= 2 * chunks,
                "{messages} messages for {chunks} chunks"
            );
        }
        assert!(bytes >= messages, "{bytes} bytes in {messages} messages");
        assert!(
            channel <= bytes,
            "channel_result_bytes {channel} > ipc_bytes {bytes}"
        );
    } else {
        assert_eq!((messages, bytes, channel, shm), (0, 0, 0, 0), "no IPC");
    }
    assert!(uint(&r, "parent_peak_rss_bytes") > 0);

    // What each worker did.
    let per_worker = array(&r, "per_worker");
    assert_eq!(
        per_worker.len() as u64,
        workers,
        "one per_worker entry per worker"
    );
    let mut chunk_sum = 0;
    let mut claim_sum = 0;
    let mut compute_sum = 0.0;
    let mut compute_top: f64 = 0.0;
    for (i, w) in per_worker.iter().enumerate() {
        assert_keys(w, WORKER, &format!("per_worker[{i}]"));
        assert_eq!(uint(w, "id"), i as u64, "per_worker ids are 0..workers");
        assert!(uint(w, "pid") > 0);
        chunk_sum += uint(w, "chunks");
        let c = secs(w, "compute_s");
        compute_sum += c;
        compute_top = compute_top.max(c);
        secs(w, "idle_end_s");
        claim_sum += uint(w, "claims");
        secs(w, "dispatch_s");
        let sleeps = uint(w, "sleeps");
        if !queue {
            assert_eq!(uint(w, "claims"), 0, "per_worker[{i}].claims");
            assert_eq!(secs(w, "dispatch_s"), 0.0, "per_worker[{i}].dispatch_s");
            assert_eq!(sleeps, 0, "per_worker[{i}].sleeps");
        }
        // CPU time: the worker process's, or the thread's in threads and single modes.
        secs(w, "cpu_s");
        if processes {
            assert!(uint(w, "peak_rss_bytes") > 0);
        } else {
            null(w, "peak_rss_bytes");
        }
        // Counted around each posting with queue dispatch, from /proc by the parent with
        // channel dispatch, around the thread's loop in threads and single modes.
        for key in [
            "minor_faults",
            "major_faults",
            "voluntary_switches",
            "involuntary_switches",
        ] {
            uint(w, key);
        }
        if pinned {
            uint(w, "cpu");
        } else {
            null(w, "cpu");
        }
    }
    assert_eq!(chunk_sum, chunks, "the workers' chunks add up to `chunks`");
    assert_eq!(claim_sum, claims, "the workers' claims add up to `claims`");
    assert!(
        about(compute, compute_sum),
        "compute_s {compute} ≠ {compute_sum}"
    );
    assert!(
        close(compute_max, compute_top),
        "compute_max_s {compute_max}"
    );

    // Supervision.
    let restarts = uint(&r, "restarts");
    let retried = uint(&r, "retried_chunks");
    let deaths = array(&r, "deaths");
    assert_eq!(
        deaths.len() as u64,
        restarts,
        "one `deaths` entry per restart"
    );
    if restarts == 0 {
        assert_eq!(retried, 0, "no chunk retried without a death");
    }
    for (i, d) in deaths.iter().enumerate() {
        assert_keys(d, DEATH, &format!("deaths[{i}]"));
        assert!(uint(d, "id") < workers);
        uint(d, "pid");
        text(d, "cause");
    }

    // The rest. `squares` reduces to the sum of its output (wrapping), in the pool and in
    // one process; a run that streams (`--output`) does not reduce.
    if r["output"].is_null() && !r["baseline_reduction"].is_null() {
        let sum = (0..N).fold(0u64, |s, i| s.wrapping_add(i * i));
        assert_eq!(uint(&r, "reduction"), sum);
        assert_eq!(uint(&r, "baseline_reduction"), sum);
    } else if !r["output"].is_null() {
        null(&r, "reduction");
        null(&r, "baseline_reduction");
    }
    assert!(r["repeat"].is_null() || r["repeat"].is_object());
    assert!(r["output"].is_null() || r["output"].is_object());
    let advice = array(&r, "advice");
    assert!(
        !advice.is_empty(),
        "there is always advice (`scaling` at least)"
    );
    for (i, a) in advice.iter().enumerate() {
        assert_keys(a, ADVICE, &format!("advice[{i}]"));
        let limit = text(a, "limit");
        assert!(LIMITS.contains(&limit), "unknown advice limit `{limit}`");
        text(a, "text");
    }
    for w in array(&r, "warnings") {
        assert!(
            w.as_str().is_some_and(|s| !s.trim().is_empty()),
            "warnings are sentences: {w}"
        );
    }
    r
}

/// Runs `args` in a fresh sandbox, expects `code`, and checks that nothing was left behind.
fn run(args: &[&str], code: i32) -> Outcome {
    let sandbox = Sandbox::new();
    let out = sandbox.run(args);
    out.assert_code(code);
    sandbox.assert_nothing_left(&out);
    out
}

/// Runs procpool (exit 0, nothing left), checks every key of its report, and that it is a
/// verified `squares` run on 2 worker processes; returns the report.
fn verified_two_workers(args: &[&str]) -> Value {
    let out = run(args, EXIT_OK);
    let r = check_report(
        &out,
        &Asked {
            workers: 2,
            mode: "processes",
        },
    );
    assert_squares_verified(&r);
    r
}

/// A `squares` run that verified, with the right checksum.
fn assert_squares_verified(r: &Value) {
    assert_eq!(r["workload"], "squares");
    assert_eq!(r["params"], serde_json::json!({}));
    assert_eq!(uint(r, "n"), N);
    assert_eq!(r["verified"], true);
    assert_eq!(r["checksum"], squares_checksum(N));
}

// ---- the runs --------------------------------------------------------------------------

#[test]
fn a_plain_run_prints_every_key() {
    let out = run(&["--workers", "2", "squares", N_ARG, "--json"], EXIT_OK);
    let r = check_report(
        &out,
        &Asked {
            workers: 2,
            mode: "processes",
        },
    );
    assert_squares_verified(&r);
    assert_eq!(r["start"], "forkserver");
    // The fork server starts every worker before the job: the start is theirs, halved.
    assert!(close(
        secs(&r, "start_per_worker_s") * 2.0,
        secs(&r, "spawn_s")
    ));
    assert_eq!(r["transport"], "shm");
    assert_eq!(r["dispatch"], "queue", "the default dispatch");
    assert_eq!(r["schedule"], "dynamic");
    assert_eq!(r["pinned"], false);
    assert_eq!(
        uint(&r, "claims"),
        uint(&r, "chunks"),
        "no retries, one claim each"
    );
    assert_eq!(r["baseline_estimated"], false);
    assert!(secs(&r, "baseline_wall_s") > 0.0);
    // One round: the pool's wall time is that round's.
    assert!(close(
        secs(&r, "pool_wall_s"),
        secs(&r["breakdown"], "total_s")
    ));
    assert!(secs(&r, "compute_s") > 0.0);
    assert_eq!(uint(&r, "shm_bytes"), N * ELEM, "every result through shm");
    assert_eq!(uint(&r, "channel_result_bytes"), 0);
    assert_eq!(uint(&r, "restarts"), 0);
    assert!(array(&r, "deaths").is_empty());
    for key in ["auto_chunk", "repeat", "output", "mismatch"] {
        null(&r, key);
    }
}

#[test]
fn channel_dispatch_sends_every_chunk_and_claims_nothing() {
    let r = verified_two_workers(&[
        "--workers",
        "2",
        "--dispatch",
        "channel",
        "squares",
        N_ARG,
        "--json",
    ]);
    assert_eq!(r["dispatch"], "channel");
    let depth = uint(&r, "inflight");
    assert!(
        (2..=16).contains(&depth),
        "the depth --inflight auto chose: {depth}"
    );
    // A chunk message out and a `Done` back per chunk: check_report saw those; the queue's
    // counters stay at 0.
    assert_eq!(uint(&r, "claims"), 0);
    assert!(secs(&r, "chunk_rtt_mean_s") > 0.0);
}

#[test]
fn repeat_reports_runs_warmup_and_spreads() {
    let r = verified_two_workers(&[
        "--workers",
        "2",
        "--repeat",
        "3",
        "--warmup",
        "1",
        "squares",
        N_ARG,
        "--json",
    ]);
    let rep = &r["repeat"];
    assert_keys(rep, REPEAT, "repeat");
    assert_eq!(uint(rep, "runs"), 3);
    assert_eq!(uint(rep, "warmup"), 1);
    for side in ["baseline_s", "pool_s"] {
        let s = &rep[side];
        assert_keys(s, SUMMARY, &format!("repeat.{side}"));
        assert_eq!(uint(s, "runs"), 3, "repeat.{side}.runs");
        let (mean, min, max) = (secs(s, "mean"), secs(s, "min"), secs(s, "max"));
        secs(s, "sd");
        assert!(
            min > 0.0 && min <= mean * (1.0 + 1e-9) && mean <= max * (1.0 + 1e-9),
            "repeat.{side}: min {min}, mean {mean}, max {max}"
        );
    }
    let ratio = &rep["speedup"];
    assert_keys(ratio, RATIO, "repeat.speedup");
    let value = secs(ratio, "value");
    secs(ratio, "sd");
    let (b, p) = (
        secs(&rep["baseline_s"], "mean"),
        secs(&rep["pool_s"], "mean"),
    );
    assert!(close(value, b / p), "repeat.speedup.value {value}");
    // The top-level wall times are the means over the rounds.
    assert!(close(secs(&r, "pool_wall_s"), p));
    assert!(close(secs(&r, "baseline_wall_s"), b));
    assert!(close(secs(&r, "speedup"), value));
}

#[test]
fn chunk_size_auto_says_what_it_chose_and_why() {
    let r = verified_two_workers(&[
        "--workers",
        "2",
        "--chunk-size",
        "auto",
        "squares",
        N_ARG,
        "--json",
    ]);
    let a = &r["auto_chunk"];
    assert_keys(a, AUTO_CHUNK, "auto_chunk");
    assert_eq!(uint(a, "chosen"), uint(&r, "chunk_size"));
    let probe = uint(a, "probe_size");
    assert!((1..=N).contains(&probe), "probe_size {probe}");
    secs(a, "per_element_s");
    secs(a, "overhead_s");
    text(a, "reason");
}

#[test]
fn output_says_where_the_stream_went() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("squares.bin");
    let path = file.to_str().unwrap();
    let r = verified_two_workers(&[
        "--workers",
        "2",
        "squares",
        N_ARG,
        "--window-size",
        "64KiB",
        "--output",
        path,
        "--json",
    ]);
    let o = &r["output"];
    assert_keys(o, OUTPUT, "output");
    assert_eq!(text(o, "path"), path);
    let bytes = uint(o, "bytes");
    assert_eq!(bytes, N * ELEM);
    let window = uint(o, "window_bytes");
    assert!(
        window > 0 && window <= 64 << 10 && window.is_multiple_of(ELEM),
        "window_bytes {window}"
    );
    assert_eq!(uint(o, "windows"), bytes.div_ceil(window), "windows");
    secs(o, "write_s");
    // The file holds what the report says.
    let data = std::fs::read(&file).expect("the output file exists");
    assert_eq!(data.len() as u64, bytes);
    assert_eq!(
        common::checksum_of(&data),
        squares_checksum(N),
        "the file's bytes"
    );
}

#[test]
fn a_death_names_the_worker_its_pid_cause_chunk_and_replacement() {
    let out = run(
        &[
            "--workers",
            "2",
            "squares",
            N_ARG,
            "--inject",
            "kill@1",
            "--json",
        ],
        EXIT_OK,
    );
    let r = check_report(
        &out,
        &Asked {
            workers: 2,
            mode: "processes",
        },
    );
    assert_squares_verified(&r);
    assert_eq!(uint(&r, "restarts"), 1);
    assert!(
        uint(&r, "retried_chunks") >= 1,
        "chunk 1 was handed out again"
    );
    let deaths = array(&r, "deaths");
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    let d = &deaths[0];
    let id = uint(d, "id") as usize;
    let dead = uint(d, "pid");
    assert!(
        text(d, "cause").contains("SIGKILL"),
        "cause: {}",
        d["cause"]
    );
    assert_eq!(uint(d, "chunk"), 1);
    let replacement = uint(d, "replaced_by");
    let per_worker = array(&r, "per_worker");
    assert_eq!(
        uint(&per_worker[id], "pid"),
        replacement,
        "the replacement keeps the worker's id"
    );
    assert!(
        per_worker.iter().all(|w| uint(w, "pid") != dead),
        "the dead pid is no worker any more"
    );
    assert!(
        out.stderr.contains(&format!("pid {dead}")),
        "stderr names the death:\n{}",
        out.stderr
    );
}

#[test]
fn threads_and_single_have_no_processes_to_report() {
    let out = run(
        &[
            "--mode",
            "threads",
            "--workers",
            "2",
            "squares",
            N_ARG,
            "--json",
        ],
        EXIT_OK,
    );
    let r = check_report(
        &out,
        &Asked {
            workers: 2,
            mode: "threads",
        },
    );
    assert_squares_verified(&r);
    assert_eq!(r["pinned"], false);

    let out = run(&["--mode", "single", "squares", N_ARG, "--json"], EXIT_OK);
    let r = check_report(
        &out,
        &Asked {
            workers: 1,
            mode: "single",
        },
    );
    assert_squares_verified(&r);
}

#[test]
fn more_threads_than_cores_is_a_warning() {
    let probe = run(&["--mode", "single", "squares", "10", "--json"], EXIT_OK);
    let cores = uint(&probe.json(), "cores_logical");
    let workers = (cores + 1).to_string();
    let out = run(
        &[
            "--mode",
            "threads",
            "--workers",
            &workers,
            "squares",
            N_ARG,
            "--json",
        ],
        EXIT_OK,
    );
    let r = check_report(
        &out,
        &Asked {
            workers: cores + 1,
            mode: "threads",
        },
    );
    assert_squares_verified(&r);
    let warnings = array(&r, "warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains(&format!("{workers} workers"))),
        "{workers} workers on {cores} cores: {warnings:?}"
    );
}

#[test]
fn a_corrupted_result_reports_the_first_mismatch() {
    let out = run(
        &[
            "--workers",
            "2",
            "squares",
            N_ARG,
            "--inject",
            "corrupt@1",
            "--json",
        ],
        EXIT_FAILED,
    );
    let r = check_report(
        &out,
        &Asked {
            workers: 2,
            mode: "processes",
        },
    );
    assert_eq!(r["verified"], false);
    let m = &r["mismatch"];
    assert_keys(m, MISMATCH, "mismatch");
    let index = uint(m, "index");
    assert!(index < N, "index {index}");
    let chunk_size = uint(&r, "chunk_size");
    assert!(
        (chunk_size..2 * chunk_size).contains(&index),
        "the mismatch is in chunk 1: index {index}, chunk size {chunk_size}"
    );
    // Both values, as the element's Debug shows them (strings); no tolerance, no lane.
    assert_eq!(
        m["baseline"],
        (index * index).to_string(),
        "the single-process value"
    );
    assert!(m["pool"].as_str().is_some(), "{m}");
    assert_ne!(m["pool"], m["baseline"]);
    for key in ["lane", "difference", "ulps"] {
        assert!(m[key].is_null(), "{key}: {m}");
    }
}

#[test]
fn without_a_baseline_speedup_and_verified_are_null() {
    let out = run(
        &[
            "--workers",
            "2",
            "squares",
            N_ARG,
            "--no-baseline",
            "--json",
        ],
        EXIT_OK,
    );
    let r = check_report(
        &out,
        &Asked {
            workers: 2,
            mode: "processes",
        },
    );
    for key in ["baseline_wall_s", "speedup", "efficiency", "verified"] {
        null(&r, key);
    }
    assert_eq!(r["baseline_estimated"], false);
    assert_eq!(r["checksum"], squares_checksum(N));
}

#[test]
fn a_pinned_sleep_over_the_channels() {
    let out = run(
        &[
            "--workers",
            "2",
            "--pin",
            "--transport",
            "channel",
            "sleep",
            "4",
            "--ms",
            "2",
            "--json",
        ],
        EXIT_OK,
    );
    let r = check_report(
        &out,
        &Asked {
            workers: 2,
            mode: "processes",
        },
    );
    assert_eq!(r["workload"], "sleep");
    assert_eq!(uint(&r, "n"), 4);
    assert_eq!(
        r["params"]["ms"].as_f64(),
        Some(2.0),
        "params: {}",
        r["params"]
    );
    assert_eq!(r["verified"], true);
    assert_eq!(
        r["checksum"],
        common::checksum_of(&[0u64, 1, 2, 3]),
        "sleep writes i"
    );
    assert_eq!(r["baseline_estimated"], true);
    assert!(
        close(secs(&r, "baseline_wall_s"), 4.0 * 0.002),
        "n × ms: {}",
        r["baseline_wall_s"]
    );
    assert_eq!(r["pinned"], true);
    assert_eq!(r["transport"], "channel");
    assert_eq!(
        uint(&r, "channel_result_bytes"),
        4 * 8,
        "every result by channel"
    );
    assert_eq!(uint(&r, "shm_bytes"), 0);
    let cores = uint(&r, "cores_logical");
    let cpus: BTreeSet<u64> = array(&r, "per_worker")
        .iter()
        .map(|w| uint(w, "cpu"))
        .collect();
    assert_eq!(
        cpus.len() as u64,
        cores.min(2),
        "distinct CPUs while there are enough: {cpus:?}"
    );
}

#[test]
fn compare_modes_prints_every_key_and_verifies_both_modes() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&[
        "compare-modes",
        "--workers",
        "2",
        "hash",
        "2001",
        "--rounds",
        "5",
        "--repeat",
        "2",
        "--json",
    ]);
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    let r = out.json();
    assert_keys(&r, COMPARE, "compare-modes");
    assert_keys(&r["machine"], MACHINE, "machine");
    assert_documented(&r);
    assert_eq!(r["rounds"], 2);
    assert_eq!(r["workers"], 2);
    for mode in ["processes", "threads"] {
        let side = &r[mode];
        assert_keys(side, COMPARE_SIDE, mode);
        assert_eq!(side["verified"], true, "{mode}: {side}");
        for key in [
            "wall_s",
            "spawn_s",
            "compute_s",
            "dispatch_s",
            "minor_faults",
        ] {
            assert_keys(&side[key], SUMMARY, key);
            assert_eq!(side[key]["runs"], 2, "{mode}.{key}");
        }
    }
    assert_keys(&r["ratio"], RATIO, "ratio");
    assert!(r["ratio"]["value"].as_f64().unwrap() > 0.0);
    assert!(r["why"].as_array().unwrap().len() >= 4, "{r}");
    assert!(r["framing"].as_array().unwrap().len() >= 3, "{r}");

    // The text, with the default of 3 rounds; --mode is refused (it runs both).
    let out = sandbox.run(&["compare-modes", "--workers", "2", "hash", "101"]);
    out.assert_code(EXIT_OK);
    assert!(
        out.stdout
            .contains("3 rounds (processes, threads, alternating)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\n  ratio "), "{}", out.stdout);
    assert!(out.stdout.contains("\nwhen each wins:\n"), "{}", out.stdout);
    let out = sandbox.run(&["compare-modes", "--mode", "threads", "hash", "101"]);
    out.assert_code(common::EXIT_USAGE);
}
