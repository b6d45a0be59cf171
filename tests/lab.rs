//! The measurement lab: where the time went, repeats, schedules, transports, pinning,
//! `--chunk-size auto`, advice, `procpool sweep` and its outputs. Shapes and consistency,
//! never speed.

mod common;

use common::{EXIT_OK, EXIT_USAGE, Sandbox, procpool};
use serde_json::Value;

fn run_json(args: &[&str]) -> Value {
    let sandbox = Sandbox::new();
    let mut all = args.to_vec();
    all.push("--json");
    let out = sandbox.run(&all);
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    out.json()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn breakdown_parts_add_up_to_the_pool_time() {
    for args in [
        &["--workers", "2", "primes", "20001"][..],
        &[
            "--workers",
            "3",
            "squares",
            "100001",
            "--schedule",
            "static",
        ],
        &["--workers", "2", "--mode", "threads", "collatz", "20001"],
    ] {
        let r = run_json(args);
        let b = &r["breakdown"];
        let sum =
            f(&b["spawn_s"]) + f(&b["compute_s"]) + f(&b["ipc_wait_s"]) + f(&b["imbalance_idle_s"]);
        let total = f(&b["total_s"]);
        assert!(
            (sum - total).abs() <= 1e-9 * total.max(1.0),
            "{args:?}: {b}"
        );
        assert!(f(&b["verify_s"]) >= 0.0);
        for key in ["compute_s", "ipc_wait_s", "imbalance_idle_s"] {
            assert!(f(&b[key]) >= 0.0, "{key}: {b}");
        }
        // The core keys keep their meaning.
        assert!((f(&r["pool_wall_s"]) - total).abs() < 1e-12, "{r}");
        assert!(f(&r["compute_max_s"]) <= f(&r["compute_s"]) + 1e-12, "{r}");
        assert!(r["advice"].as_array().is_some_and(|a| !a.is_empty()), "{r}");
    }
}

#[test]
fn per_worker_table_has_cpu_memory_and_idle_time() {
    let r = run_json(&["--workers", "2", "hash", "2001", "--rounds", "5"]);
    for w in r["per_worker"].as_array().unwrap() {
        assert!(f(&w["cpu_s"]) >= 0.0, "{w}");
        assert!(w["peak_rss_bytes"].as_u64().unwrap() > 0, "{w}");
        assert!(f(&w["idle_end_s"]) >= 0.0, "{w}");
    }
    assert!(f(&r["chunk_rtt_mean_s"]) > 0.0, "{r}");
    assert!(f(&r["chunk_compute_mean_s"]) > 0.0, "{r}");
}

#[test]
fn every_schedule_is_verified() {
    for schedule in ["static", "dynamic", "guided"] {
        for workers in ["1", "3"] {
            let r = run_json(&[
                "--workers",
                workers,
                "--schedule",
                schedule,
                "primes",
                "10007",
            ]);
            assert_eq!(r["verified"], true, "{r}");
            assert_eq!(r["schedule"], schedule, "{r}");
            let r = run_json(&[
                "--workers",
                workers,
                "--schedule",
                schedule,
                "--chunk-size",
                "7",
                "squares",
                "1001",
            ]);
            assert_eq!(r["verified"], true, "{r}");
        }
    }
    // static without a chunk size: one block per worker.
    let r = run_json(&["--workers", "3", "--schedule", "static", "squares", "3000"]);
    assert_eq!(r["chunks"], 3, "{r}");
}

#[test]
fn channel_transport_is_verified_and_counts_the_result_bytes() {
    let r = run_json(&[
        "--workers",
        "2",
        "--transport",
        "channel",
        "squares",
        "100001",
    ]);
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["transport"], "channel", "{r}");
    assert_eq!(r["channel_result_bytes"], 800_008, "{r}");
    assert_eq!(r["shm_bytes"], 0, "{r}");
    assert!(r["ipc_bytes"].as_u64().unwrap() > 800_008, "{r}");
    let shm = run_json(&["--workers", "2", "squares", "100001"]);
    assert_eq!(shm["shm_bytes"], 800_008, "{shm}");
    assert!(shm["ipc_bytes"].as_u64().unwrap() < 10_000, "{shm}");
    assert_eq!(shm["checksum"], r["checksum"]);
}

#[test]
fn auto_chunk_size_says_what_it_chose_and_why() {
    let r = run_json(&[
        "--workers",
        "2",
        "--chunk-size",
        "auto",
        "collatz",
        "200001",
    ]);
    assert_eq!(r["verified"], true, "{r}");
    let auto = &r["auto_chunk"];
    assert!(auto["chosen"].as_u64().unwrap() >= 1, "{auto}");
    assert!(auto["probe_size"].as_u64().unwrap() >= 1, "{auto}");
    assert!(!auto["reason"].as_str().unwrap().is_empty(), "{auto}");
    assert_eq!(r["chunk_size"], auto["chosen"], "{r}");
}

#[test]
fn pinning_is_reported_per_worker() {
    let r = run_json(&["--workers", "2", "--pin", "squares", "10001"]);
    assert_eq!(r["pinned"], true, "{r}");
    assert_eq!(r["verified"], true, "{r}");
    for w in r["per_worker"].as_array().unwrap() {
        assert!(w["cpu"].as_u64().is_some(), "{w}");
    }
}

#[test]
fn repeats_report_mean_spread_and_verify_every_round() {
    let r = run_json(&[
        "--workers",
        "2",
        "--repeat",
        "3",
        "--warmup",
        "1",
        "primes",
        "5001",
    ]);
    let rep = &r["repeat"];
    assert_eq!(rep["runs"], 3, "{rep}");
    assert_eq!(rep["warmup"], 1, "{rep}");
    for side in ["baseline_s", "pool_s"] {
        let s = &rep[side];
        assert_eq!(s["runs"], 3, "{s}");
        assert!(
            f(&s["min"]) <= f(&s["mean"]) && f(&s["mean"]) <= f(&s["max"]),
            "{s}"
        );
        assert!(f(&s["sd"]) >= 0.0, "{s}");
    }
    assert!((f(&r["pool_wall_s"]) - f(&rep["pool_s"]["mean"])).abs() < 1e-12);
    assert!(f(&rep["speedup"]["sd"]) >= 0.0);
    assert_eq!(r["verified"], true, "{r}");
    // A corrupt result in any round fails the run.
    let sandbox = Sandbox::new();
    let out = sandbox.run(&[
        "--workers",
        "2",
        "--repeat",
        "2",
        "squares",
        "1000",
        "--inject",
        "corrupt@0",
    ]);
    out.assert_code(common::EXIT_FAILED);
}

#[test]
fn text_report_ends_with_advice_and_shows_the_breakdown() {
    let out = procpool(&["--workers", "2", "squares", "10001"]);
    out.assert_code(EXIT_OK);
    assert!(out.stdout.contains("where "), "{}", out.stdout);
    assert!(out.stdout.contains("per chunk"), "{}", out.stdout);
    let last = out.stdout.lines().last().unwrap();
    assert!(last.starts_with("advice: "), "{}", out.stdout);
    // No progress bar when stderr is not a terminal.
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn sweep_prints_a_row_per_point_and_fits_amdahl() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["sweep", "--workers", "1,2,3", "squares", "20001", "--json"]);
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    let t = out.json();
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{t}");
    let workers: Vec<u64> = rows
        .iter()
        .map(|r| r["workers"].as_u64().unwrap())
        .collect();
    assert_eq!(workers, [1, 2, 3]);
    // One chunk size for the whole sweep, so only the worker count varies.
    assert!(
        rows.iter()
            .all(|r| r["chunk_size"] == rows[0]["chunk_size"]),
        "{t}"
    );
    for r in rows {
        assert_eq!(r["verified"], true, "{r}");
        let s = f(&r["speedup"]["value"]);
        assert!(
            (f(&r["efficiency"]) - s / f(&r["workers"])).abs() < 1e-9,
            "{r}"
        );
    }
    assert!(rows[0]["karp_flatt"].is_null());
    // Only worker counts up to the cores are fitted; the others are named.
    let cores = t["cores_logical"].as_u64().unwrap();
    let left: Vec<u64> = workers.iter().copied().filter(|&w| w > cores).collect();
    let named: Vec<u64> = t["oversubscribed_workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_u64().unwrap())
        .collect();
    assert_eq!(named, left, "{t}");
    if cores >= 2 {
        assert!(t["amdahl"].is_object(), "{t}");
        for r in rows {
            let fits = r["workers"].as_u64().unwrap() <= cores;
            assert_eq!(r["fitted"], fits, "{r}");
        }
        assert_eq!(
            t["amdahl"]["points"].as_u64().unwrap(),
            workers.len() as u64 - left.len() as u64
        );
    }

    let out = sandbox.run(&[
        "sweep",
        "--workers",
        "1,2",
        "--chunk-size",
        "100,1000",
        "squares",
        "5001",
    ]);
    out.assert_code(EXIT_OK);
    assert!(out.stdout.contains("Amdahl fit"), "{}", out.stdout);
    let table_lines = out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(['1', '2']))
        .count();
    assert_eq!(table_lines, 4, "{}", out.stdout);
}

#[test]
fn sweep_exports_csv_markdown_json_and_an_svg_plot() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (csv, md, json, svg) = (path("s.csv"), path("s.md"), path("s.json"), path("s.svg"));
    for export in [&csv, &md, &json] {
        let sandbox = Sandbox::new();
        let out = sandbox.run(&[
            "sweep",
            "--workers",
            "1,2",
            "squares",
            "5001",
            "--export",
            export,
            "--plot",
            &svg,
        ]);
        out.assert_code(EXIT_OK);
    }
    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "workers,chunk_size,pool_mean_s,pool_sd_s,pool_min_s,pool_max_s,runs,speedup,speedup_sd,efficiency,karp_flatt,verified"
    );
    assert_eq!(lines.count(), 2);
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.lines().filter(|l| l.starts_with('|')).count() >= 4,
        "{md}"
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 2);
    let svg = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the plot is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(svg.contains("squares"), "the title names the workload");

    let out = procpool(&[
        "sweep",
        "--workers",
        "1,2",
        "squares",
        "100",
        "--export",
        "x.xyz",
    ]);
    out.assert_code(EXIT_USAGE);
    assert!(out.stderr.contains(".xyz"), "{}", out.stderr);
}

#[test]
fn lists_are_only_for_sweep() {
    let out = procpool(&["--workers", "1,2", "squares", "100"]);
    out.assert_code(EXIT_USAGE);
    assert!(out.stderr.contains("sweep"), "{}", out.stderr);
    let out = procpool(&[
        "--mode",
        "threads",
        "--transport",
        "channel",
        "squares",
        "100",
    ]);
    out.assert_code(EXIT_USAGE);
    let out = procpool(&["--repeat", "0", "squares", "100"]);
    out.assert_code(EXIT_USAGE);
}

#[test]
fn ipc_bench_reports_latency_percentiles_and_throughput_per_size() {
    let sandbox = Sandbox::new();
    // Small sizes keep it quick in a debug build; the defaults go up to 1 MiB.
    let out = sandbox.run(&[
        "ipc-bench",
        "--round-trips",
        "500",
        "--sizes",
        "64,4KiB",
        "--json",
    ]);
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    let r = out.json();
    let latency = r["latency"].as_array().unwrap();
    assert!(latency.iter().any(|l| l["placement"] == "unpinned"), "{r}");
    for l in latency {
        assert_eq!(l["samples"], 500, "{l}");
        let (p50, p90, p99, max) = (
            f(&l["p50_us"]),
            f(&l["p90_us"]),
            f(&l["p99_us"]),
            f(&l["max_us"]),
        );
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{l}");
    }
    let sizes: Vec<u64> = r["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["placement"] == "unpinned")
        .map(|t| t["size_bytes"].as_u64().unwrap())
        .collect();
    // Pinned to two CPUs too, where the machine has two.
    if r["cores_logical"].as_u64().unwrap() >= 2 {
        assert!(
            r["throughput"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["placement"] == "cross-cpu"),
            "{r}"
        );
    }
    assert_eq!(sizes, [64, 4096]);
    for t in r["throughput"].as_array().unwrap() {
        assert!(
            f(&t["channel_mb_s"]) > 0.0 && f(&t["shm_mb_s"]) > 0.0,
            "{t}"
        );
    }
    let out = procpool(&[
        "ipc-bench",
        "--round-trips",
        "200",
        "--no-pin",
        "--sizes",
        "1KiB",
    ]);
    out.assert_code(EXIT_OK);
    assert!(
        out.stdout.contains("send ranges, not data") || out.stdout.contains("kept up"),
        "{}",
        out.stdout
    );
}

#[test]
fn progress_bar_shows_on_a_terminal_only_and_never_with_json() {
    // `script` gives procpool a pseudo-terminal, as a user's shell would.
    // Without it there is no terminal to test with: fail, rather than pass having checked
    // nothing.
    assert!(
        std::process::Command::new("script")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success()),
        "this test needs `script` from util-linux (Debian: bsdutils) to give procpool a terminal"
    );
    let run = |extra: &str| {
        let command = format!(
            "{} --workers 2 sleep 24 --ms 100 --no-baseline{extra}",
            common::EXE
        );
        let out = std::process::Command::new("timeout")
            .args(["60", "script", "-qec", &command, "/dev/null"])
            .output()
            .expect("script runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let terminal = run("");
    assert!(
        terminal.contains("elements") && terminal.contains("ETA"),
        "{terminal}"
    );
    let json = run(" --json");
    assert!(!json.contains("ETA"), "{json}");
    // And without a terminal (the other tests): stderr stays empty.
}

#[test]
fn inflight_auto_queues_more_when_chunks_are_tiny_and_a_fixed_depth_stays() {
    // One-element chunks of a kernel that computes nothing: a round trip costs far more
    // than a chunk, so `auto` queues more per worker; a fixed depth is kept as given.
    let args = [
        "--dispatch",
        "channel",
        "--workers",
        "2",
        "--chunk-size",
        "1",
        "spin",
        "20000",
        "--us",
        "0",
    ];
    let auto = run_json(&args);
    assert_eq!(auto["verified"], true, "{auto}");
    let depth = auto["inflight"].as_u64().expect("inflight");
    assert!((4..=16).contains(&depth), "auto chose {depth}");
    let mut fixed_args = args.to_vec();
    fixed_args.extend(["--inflight", "3"]);
    let fixed = run_json(&fixed_args);
    assert_eq!(fixed["verified"], true, "{fixed}");
    assert_eq!(fixed["inflight"], 3, "{fixed}");
    // The shared-memory queue sends no chunk messages: a depth means nothing there.
    let refused = procpool(&["--inflight", "3", "squares", "10"]);
    refused.assert_code(EXIT_USAGE);
    let line = refused.one_line_error();
    assert!(
        line.contains("--inflight 3") && line.contains("--dispatch channel"),
        "{line}"
    );
    let refused = procpool(&["--inflight", "0", "squares", "10"]);
    refused.assert_code(EXIT_USAGE);
    assert!(
        refused.one_line_error().contains("or auto"),
        "{:?}",
        refused.stderr
    );
}

#[test]
fn static_primes_advice_names_the_imbalance_and_the_schedule() {
    // The upper half of the primes costs more than the lower one, so a static split of two
    // leaves one worker computing about 20 % longer than the mean: more than starting and
    // dispatch cost, so the advice names it instead of "no single limit". Compute times
    // are wall-clock: on a machine busy with other tests a run can blur the gap, so up to
    // five runs are tried and one must name it. A run whose workers got less than 0.8 of a
    // core is told it was `contended` instead (its compute times measure the neighbours),
    // so it does not count; when every run was, that is what each must have said.
    let mut seen = Vec::new();
    let mut contended = 0;
    for _ in 0..5 {
        let r = run_json(&[
            "--workers",
            "2",
            "--schedule",
            "static",
            "primes",
            "3000000",
        ]);
        let advice = r["advice"].as_array().unwrap();
        if let Some(imbalance) = advice.iter().find(|a| a["limit"] == "imbalanced") {
            let text = imbalance["text"].as_str().unwrap();
            assert!(text.contains("more than the mean of"), "{text}");
            assert!(text.contains("%) more than"), "{text}");
            assert!(text.ends_with("try --schedule dynamic."), "{text}");
            return;
        }
        let share = r["contention"]["cpu_share_mean"].as_f64();
        if advice[0]["limit"] == "contended" {
            assert!(share.is_some_and(|s| s < 0.8), "{r}");
            contended += 1;
        }
        seen.push(r["advice"].clone());
    }
    assert_eq!(
        contended,
        seen.len(),
        "no run named the imbalance: {seen:?}"
    );
}

#[test]
fn page_faults_and_switches_are_counted_per_worker_and_for_the_baseline() {
    // 8 MB of output: first touches of fresh pages, in the workers (the shared region) and
    // in the single-process run (a fresh mapping) alike.
    for mode in ["processes", "threads"] {
        let r = run_json(&["--workers", "2", "--mode", mode, "squares", "1000001"]);
        let workers = r["per_worker"].as_array().unwrap();
        let faults: u64 = workers
            .iter()
            .map(|w| w["minor_faults"].as_u64().unwrap_or_else(|| panic!("{w}")))
            .sum();
        assert!(faults > 0, "{mode}: {r}");
        for w in workers {
            for key in ["major_faults", "voluntary_switches", "involuntary_switches"] {
                assert!(w[key].is_u64(), "{mode} {key}: {w}");
            }
            assert!(f(&w["cpu_s"]) >= 0.0, "{w}");
        }
        let base = &r["baseline_os"];
        assert!(base["minor_faults"].as_u64().unwrap() > 0, "{mode}: {base}");
        assert!(f(&base["cpu_s"]) > 0.0, "{base}");
    }
    // The text shows both.
    let out = procpool(&["--workers", "2", "squares", "1000001"]);
    out.assert_code(EXIT_OK);
    assert!(
        out.stdout.contains("  os counts    id  minor faults"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("minor + "), "{}", out.stdout);
}

/// Free huge pages and their size, from /proc/meminfo.
fn huge_pages_free() -> (u64, u64) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("HugePages_Free:"), field("Hugepagesize:") * 1024)
}

#[test]
fn huge_pages_refused_in_one_line_naming_nr_hugepages_when_none_are_free() {
    let (free, _) = huge_pages_free();
    if free > 0 {
        println!("skipped: this machine has {free} huge pages free");
        return;
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .unwrap_or_default();
    if ["[advise]", "[within_size]", "[always]", "[force]"]
        .iter()
        .any(|w| thp.contains(w))
    {
        println!(
            "skipped: shared memory gets transparent huge pages here ({})",
            thp.trim()
        );
        return;
    }
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["--workers", "2", "--huge-pages", "squares", "1e7"]);
    out.assert_code(EXIT_USAGE);
    sandbox.assert_nothing_left(&out);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    if huge_pages_free().1 == 2 << 20 {
        // 80 MB of results: 39 pages of 2 MiB, and one for the control area.
        assert!(
            out.stderr.contains(
                "--huge-pages needs 40 free huge pages of 2 MiB but 0 are free: reserve them \
                 as root with `echo 40 > /proc/sys/vm/nr_hugepages`"
            ),
            "{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("/proc/sys/vm/nr_hugepages"),
        "{}",
        out.stderr
    );
    // No results: the control area's one page, in the singular.
    let out = sandbox.run(&["--workers", "1", "--huge-pages", "squares", "0"]);
    out.assert_code(EXIT_USAGE);
    let line = out.one_line_error();
    assert!(
        line.contains("needs 1 free huge page of ")
            && line.contains("but 0 are free: reserve it as root with `echo 1 >"),
        "{line}"
    );
    // Threads have no shared region to back.
    let out = sandbox.run(&["--huge-pages", "--mode", "threads", "squares", "100"]);
    out.assert_code(EXIT_USAGE);
}

#[test]
fn huge_pages_back_the_region_when_reserved() {
    let (free, page) = huge_pages_free();
    // 1e6 squares: 8 MB of results, plus the control area's page.
    let needed = if page > 0 {
        8_000_000u64.div_ceil(page) + 1
    } else {
        u64::MAX
    };
    if free < needed {
        println!("skipped: {free} huge pages free, {needed} needed");
        return;
    }
    let r = run_json(&["--workers", "2", "--huge-pages", "squares", "1000000"]);
    assert_eq!(r["verified"], true, "{r}");
    // One fault per huge page rather than per 4 KiB page: far fewer than 8 MB / 4 KiB.
    let faults: u64 = r["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["minor_faults"].as_u64().unwrap())
        .sum();
    assert!(faults < 8_000_000 / 4096 / 2, "{faults} faults: {r}");
}
